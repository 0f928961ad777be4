"""Notebook 01, context richness (PAPER.md Sec. 3).

1. Screen candidate problems with ``select_k`` unguided samples; keep those solved
   ``band[0]..band[1]`` times (the paper: 1-4 of 8). Each keeps its first correct sample
   as *the* correct solution s (a problem never solved, possible only with band[0] = 0,
   falls back to its reference solution when it has one).
2. Sample ``samples`` responses per problem under four contexts c:
       unguided                 c = none
       full solution            c = s
       solution w/o thinking    c = s without its thinking part
       regeneration             c = a response generated under "full solution"
   with the hint prompt ``{question}\\n\\nCorrect solution: {c}\\n\\nCorrectly solve ...``.
3. Table 1: score (avg@k), length (tokens), epistemic count per condition.
4. D_ug (correct unguided responses) and D_sg (correct full-solution responses), each
   paired with the *plain* student prompt, for notebook 02's SFT.

A model without a thinking block (the bundled SmolLM2) has nothing to strip: there the
"without thinking" solution keeps only its final sentence (``prompts.without_thinking``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from sdlib import plots
from sdlib.config import ContextConfig
from sdlib.datasets import pooled
from sdlib.experiments.evaluation import evaluate_policy
from sdlib.experiments.results import Results
from sdlib.prompts import hint_prompt, student_prompt, without_thinking
from sdlib.rollout import Sampling

NAME = "01_context_richness"
CONDITIONS = ("unguided", "full solution", "solution w/o thinking", "regeneration")


class NoProblemsInBand(RuntimeError):
    """No candidate was solved band[0]..band[1] times: nothing to compare."""


def first_correct(samples: pd.DataFrame) -> dict[str, str]:
    ok = samples[samples["correct"]].sort_values("sample")
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


def run(cfg: ContextConfig) -> Results:
    res = Results(Path(cfg.out) / NAME)
    pool = pooled(cfg.data, cfg.pool_limit)
    sampling = Sampling(cfg.max_new_tokens, cfg.temperature, cfg.top_p, seed=cfg.seed)
    ask = lambda p: student_prompt(p.question)  # noqa: E731
    screen = evaluate_policy(
        cfg, "screen", {"pool": pool}, k=cfg.select_k, sampling=sampling, prompt_fn=ask
    ).samples
    solution = {p.id: p.solution for p in pool if p.solution} | first_correct(screen)
    problems = select(cfg, pool, screen, solution)
    contexts = {
        "full solution": solution,
        "solution w/o thinking": {k: without_thinking(v) for k, v in solution.items()},
    }
    runs = {
        "unguided": evaluate_policy(
            cfg, "unguided", {"selected": problems}, k=cfg.samples, sampling=sampling, prompt_fn=ask
        )
    }
    for cond, ctx in contexts.items():
        runs[cond] = evaluate_policy(
            cfg,
            cond.replace(" ", "_").replace("/", ""),
            {"selected": problems},
            k=cfg.samples,
            sampling=sampling,
            prompt_fn=lambda p, c=ctx: hint_prompt(ask(p), c[p.id]),
        )
    guided = runs["full solution"].samples
    regen = first_correct(guided) | {
        k: v
        for k, v in guided.groupby("problem_id")["text"].first().items()
        if k not in first_correct(guided)
    }
    runs["regeneration"] = evaluate_policy(
        cfg,
        "regeneration",
        {"selected": problems},
        k=cfg.samples,
        sampling=sampling,
        prompt_fn=lambda p: hint_prompt(ask(p), regen[p.id]),
    )
    table = res.table("table1", condition_table(runs))
    res.figure("conditions", plots.condition_bars(table, f"{cfg.model} · preset {cfg.preset}"))
    write_sft_sets(res.folder, problems, runs, ask, cfg.sft_correct_only)
    res.table(
        "selection",
        pd.DataFrame(
            {
                "candidates": [len(pool)],
                "selected": [len(problems)],
                "screen_avg": [float(screen["correct"].mean())],
            },
            index=pd.Index(["screening"], name="stage"),
        ),
    )
    return res


def condition_table(runs: dict) -> pd.DataFrame:
    rows = {}
    for cond in CONDITIONS:
        s = runs[cond].samples
        rows[cond] = {
            "score": s["correct"].mean(),
            "len_tokens": s["len_tokens"].mean(),
            "epi_total": s["epi_total"].mean(),
            "epi_total_word": s["epi_total_word"].mean(),
            "boxed_frac": s["pred"].notna().mean(),
            "samples": len(s),
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("condition")


def write_sft_sets(folder: Path, problems, runs, ask, correct_only=True) -> dict[str, Path]:
    """D_ug / D_sg: correct responses under no context / the full solution, each paired
    with the plain student prompt (the SFT model never sees the solution)."""
    by_id = {p.id: p for p in problems}
    paths = {}
    for name, cond in (("D_ug", "unguided"), ("D_sg", "full solution")):
        s = runs[cond].samples
        s = s[s["correct"]] if correct_only else s
        rows = [
            {
                "prompt": ask(by_id[r.problem_id]),
                "response": r.text,
                "problem_id": r.problem_id,
                "correct": r.correct,
            }
            for r in s.itertuples()
        ]
        paths[name] = folder / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths
