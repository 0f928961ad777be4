"""Notebook 01, context richness (PAPER.md Sec. 3).

1. Screen candidate problems with ``select_k`` unguided samples (the first seed); keep
   those solved ``band[0]..band[1]`` times (the paper: 1-4 of 8). Each keeps its first
   correct sample as *the* correct solution s (a problem never solved, possible only with
   band[0] = 0, falls back to its reference solution when it has one).
2. Per seed, sample ``samples`` responses per problem under four contexts c:
       unguided                 c = none
       full solution            c = s
       solution w/o thinking    c = s without its thinking part
       regeneration             c = a response generated under "full solution"
   with the hint prompt ``{question}\\n\\nCorrect solution: {c}\\n\\nCorrectly solve ...``.
3. Table 1: accuracy, length (tokens), epistemic count per condition, each with its 95%
   interval, and each condition's paired difference from "unguided".
4. D_ug and D_sg for notebook 02's SFT: over the same problems (those with a correct
   response under both no context and the full solution), one pair per problem each, the
   response paired with the *plain* student prompt.

A model without a thinking block (the bundled SmolLM2) has nothing to strip: there, as in
the reference, the "without thinking" solution is the full solution (``prompts.strip_thinking``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from sdlib import plots, stats
from sdlib.config import ContextConfig
from sdlib.datasets import pooled
from sdlib.experiments import tables
from sdlib.experiments.evaluation import evaluate_policy
from sdlib.experiments.results import Results, timed
from sdlib.prompts import hint_prompt, strip_thinking, student_turn
from sdlib.rollout import Sampling

NAME = "01_context_richness"
CONDITIONS = ("unguided", "full solution", "solution w/o thinking", "regeneration")
CAPTIONS = {
    "conditions": "Accuracy, response length and epistemic words per response under each "
    "context, with 95% intervals, on the same problems and seeds. The richer the context, "
    "the shorter and less hedged the answers: compare each bar with the unguided one.",
}


class NoProblemsInBand(RuntimeError):
    """No candidate was solved band[0]..band[1] times: nothing to compare."""


def ask(p) -> str:
    return student_turn(p)


def first_correct(samples: pd.DataFrame, correct_only: bool = True) -> dict[str, str]:
    """Each problem's first correct response (in seed, then sample order)."""
    ok = samples[samples["correct"]] if correct_only else samples
    ok = ok.sort_values([c for c in ("seed", "sample") if c in ok])
    return ok.groupby("problem_id")["text"].first().to_dict()


def select(cfg: ContextConfig, pool, screen: pd.DataFrame, solution: dict[str, str]):
    solved = screen.groupby("problem_id")["correct"].sum()
    low, high = cfg.band
    keep = [p for p in pool if low <= solved.get(p.id, 0) <= high and p.id in solution]
    keep = keep[: cfg.max_problems]
    if not keep:
        histogram = solved.value_counts().sort_index().to_dict()
        raise NoProblemsInBand(
            f"no candidate was solved {low}-{high} of {cfg.select_k} times (solved-count: "
            f"problems = {histogram}); use an easier or larger pool (data), widen band, or "
            f"set few_shot: true"
        )
    return keep


def sample_conditions(cfg, problems, solution, seed: int) -> dict[str, pd.DataFrame]:
    """The four conditions' samples at one seed."""
    sampling = Sampling(cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k, seed)
    sets = {"selected": problems}

    def condition(label, context=None):
        hint = None if context is None else (lambda p: hint_prompt(ask(p), context[p.id]))
        name = label.replace(" ", "_").replace("/", "")
        result = evaluate_policy(
            cfg, name, sets, k=cfg.samples, sampling=sampling, prompt_fn=hint or ask, seed=seed
        )
        return result.samples.assign(seed=seed)

    runs = {
        "unguided": condition("unguided"),
        "full solution": condition("full solution", solution),
    }
    stripped = {k: strip_thinking(v) for k, v in solution.items()}
    runs["solution w/o thinking"] = condition("solution w/o thinking", stripped)
    guided = runs["full solution"]
    regen = first_correct(guided, correct_only=False) | first_correct(guided)
    runs["regeneration"] = condition("regeneration", regen)
    return runs


@timed
def run(cfg: ContextConfig) -> Results:
    res = Results(Path(cfg.out) / NAME)
    pool = pooled(cfg.data, cfg.pool_limit)
    screening = Sampling(cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k, cfg.seeds[0])
    screen = evaluate_policy(
        cfg, "screen", {"pool": pool}, k=cfg.select_k, sampling=screening, prompt_fn=ask
    ).samples
    solution = {p.id: p.solution for p in pool if p.solution} | first_correct(screen)
    problems = select(cfg, pool, screen, solution)
    per_seed = [sample_conditions(cfg, problems, solution, s) for s in cfg.seeds]
    runs = {c: pd.concat([r[c] for r in per_seed], ignore_index=True) for c in CONDITIONS}
    table = res.table("table1", tables.conditions(runs, base="unguided"))
    subtitle = f"{cfg.model} · preset {cfg.preset} · seeds {cfg.seeds}"
    res.figure("conditions", plots.condition_bars(table, subtitle), CAPTIONS["conditions"])
    sizes = write_sft_sets(res.folder, problems, runs, cfg.sft_correct_only)
    screened = stats.estimate(stats.cube(screen, "correct")).columns("screen_accuracy")
    selection = {"candidates": len(pool), "selected": len(problems), **screened, **sizes}
    res.table("selection", pd.DataFrame([selection], index=pd.Index(["screening"], name="stage")))
    lines = [f"- {line}" for line in tables.notes(table)]
    res.notes(
        ["Each context against the unguided condition (same problems and seeds):", *lines],
        findings=findings(res.tables),
    )
    return res


def findings(found: dict) -> list[str]:
    """The headline of notebook 01, from its tables: the full solution in context minus no
    context, in accuracy and in epistemic words."""
    full = tables.rows(found["table1"], "full solution")
    lines = [
        tables.finding("Full solution in context minus no context, accuracy", full, "Δaccuracy"),
        tables.finding(
            "Full solution in context minus no context, epistemic words per response",
            full,
            "Δepistemic",
        ),
    ]
    return [line for line in lines if line]


def write_sft_sets(folder: Path, problems, runs, correct_only=True) -> dict[str, int]:
    """D_ug / D_sg: over the problems with a usable response under both no context and the
    full solution, each problem's first such response (one pair per problem, as the
    reference writes them), paired with the plain student prompt (the SFT model never sees
    the solution). Returns the pairs and response characters of each set."""
    by_id = {p.id: p for p in problems}
    sources = {"D_ug": "unguided", "D_sg": "full solution"}
    chosen = {name: first_correct(runs[c], correct_only) for name, c in sources.items()}
    shared = [p for p in by_id if all(p in c for c in chosen.values())]
    sizes = {}
    for name, responses in chosen.items():
        rows = [
            {"prompt": ask(by_id[p]), "response": responses[p], "problem_id": p} for p in shared
        ]
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        sizes[f"{name} pairs"] = len(rows)
        sizes[f"{name} response chars"] = sum(len(r["response"]) for r in rows)
    return sizes
