"""Notebook 00, the model organism: what it is, and whether checking pays in it.

The organism (``sdlib.organism``) is a small Llama trained from scratch on a reasoning
language in which a forward check is cheap and the inverse cannot be shortcut. The study's
dynamics can only emerge in it if its premise holds: searching with checks, the mode that
verbalizes doubt, must beat a direct answer on unseen problems. This notebook shows

    the build      parameters, corpus tokens by kind, time, the build's own premise gate
    the corpus     one document of each kind
    the premise    held-out accuracy when replies are free, opened as a search, or opened
                   as a direct answer, measured by sdlib's own evaluation, each mode's
                   paired difference from the direct answer with its 95% interval; the
                   checks' values and verdicts; epistemic words and length per response
"""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

from sdlib import plots, stats
from sdlib.config import OrganismExperimentConfig
from sdlib.datasets import load_benchmarks
from sdlib.experiments import tables
from sdlib.experiments.evaluation import evaluate_seeds
from sdlib.experiments.results import Results, timed
from sdlib.models import local_folder
from sdlib.organism import build, checker, corpus
from sdlib.organism.config import from_spec
from sdlib.prompts import THINK_OPEN

NAME = "00_model_organism"
PREFILLS = {"free": "", "search": THINK_OPEN, "direct": "x ="}
CAPTIONS = {
    "premise": "Held-out accuracy when a reply is left free, opened as a search (a thinking "
    "block that checks each guess) or opened as a direct answer, with 95% intervals. The "
    "premise holds when the search bars stand clearly above the direct ones.",
    "length": "Response length (tokens) by how a reply starts, with 95% intervals: searching "
    "costs tokens, a direct answer almost none.",
    "epistemic": "Epistemic words per response by how a reply starts, with 95% intervals: "
    "the organism hedges while it searches, so the words mark the checking mode.",
}


def build_table(premise: dict) -> pd.DataFrame:
    """What the build made and what it cost."""
    b = premise["build"]
    row = {
        "parameters": b["parameters"],
        "weights MiB": round(b["weights_bytes"] / 2**20, 2),
        "tokens": b.get("tokens"),
        "seconds": b.get("seconds"),
        "tokens/s": b.get("tokens_per_s"),
        "threads": b.get("threads"),
        "gate passed": premise["gate"].get("passed"),
    }
    return pd.DataFrame([row], index=pd.Index([premise["name"]], name="organism"))


def corpus_table(premise: dict) -> pd.DataFrame:
    kinds = premise["build"]["tokens_by_kind"]
    total = sum(kinds.values())
    rows = {k: {"tokens": n, "share": n / total} for k, n in kinds.items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("kind")


def examples(spec: str, per_kind: int) -> list[str]:
    """``per_kind`` corpus documents of each kind, as the model reads them (markdown)."""
    cfg = from_spec(spec)
    parts = build.splits(cfg)
    train = [p for n in cfg.families for p in parts[n]["train"]]
    drawn = corpus.documents(cfg.corpus(), train, 400, random.Random(0))
    lines, shown = [], {}
    for kind, doc in drawn:
        if shown.get(kind, 0) < per_kind:
            shown[kind] = shown.get(kind, 0) + 1
            text = "".join(t for t, _ in doc)
            lines += [f"**{kind}**", "", "```", text.strip(), "```", ""]
    return lines


def checks_table(samples: pd.DataFrame, problems: dict) -> pd.DataFrame:
    """Over the checks the model wrote: how often its value, target and verdict are right,
    each share with its 95% interval over responses (bootstrap of a ratio of sums)."""
    rows = {}
    for bench, part in samples.groupby("benchmark", sort=False):
        counts = pd.DataFrame(
            [
                checker.step_stats(problems[bench][pid], text)
                for pid, text in zip(part["problem_id"], part["text"], strict=True)
            ]
        )
        row = {"responses": len(part), "checks": int(counts["steps"].sum())}
        row["checks per response"] = row["checks"] / len(part)
        for key, name in (("values", "value"), ("targets", "target"), ("verdicts", "verdict")):
            share = stats.ratio(counts[f"{key}_right"], counts["steps"])
            row |= share.columns(f"{name} right")
        rows[bench] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("benchmark")


@timed
def run(cfg: OrganismExperimentConfig) -> Results:
    res = Results(Path(cfg.out) / NAME)
    premise = build.read_premise(local_folder(cfg.model))  # builds on first use (minutes)
    res.table("build", build_table(premise))
    res.table("corpus", corpus_table(premise))
    benchmarks = load_benchmarks(cfg.eval_data, cfg.eval_limit)
    evals = {m: evaluate_seeds(cfg, m, benchmarks, prefill=PREFILLS[m]) for m in cfg.modes}
    modes = res.table("premise", tables.by_benchmark(evals, base="direct"))
    by_id = {name: {p.id: p for p in ps} for name, ps in benchmarks.items()}
    first = "search" if "search" in evals else cfg.modes[0]
    res.table("checks", checks_table(evals[first], by_id))
    subtitle = f"{cfg.model} · preset {cfg.preset} · seeds {cfg.seeds}"
    titles = {
        "premise": ("Held-out accuracy by how a reply starts", "accuracy"),
        "length": ("Response length", "length"),
        "epistemic": ("Epistemic words", "epistemic"),
    }
    for name, (title, col) in titles.items():
        figure = plots.accuracy_bars(modes, subtitle, title, col=col)
        res.figure(name, figure, CAPTIONS[name])
    gate = premise["gate"]
    verdict = {True: "passed", None: "was skipped (a smoke build: its figures mean nothing)"}.get(
        gate.get("passed"), f"did not pass: {gate.get('reasons')}"
    )
    res.notes(
        [
            f"The build's own premise gate {verdict}.",
            "Each way of starting a reply against the direct answer, on held-out problems:",
            *(f"- {line}" for line in tables.notes(modes)),
            "",
            "One corpus document of each kind:",
            "",
            *examples(cfg.model, cfg.examples),
        ],
        findings=findings(res.tables),
    )
    return res


def findings(found: dict) -> list[str]:
    """The headline of notebook 00, from its tables: a search's held-out accuracy minus a
    direct answer's (the premise), and whether the build's own gate passed."""
    premise = found["premise"]
    modes = [m for m in premise.index.unique(0) if m != "direct"]
    lines = []
    if modes:
        mode = "search" if "search" in modes else modes[0]
        what = f"Replies opened as a {mode} minus direct answers, held-out accuracy"
        lines.append(tables.finding(what, tables.rows(premise, mode), "Δaccuracy"))
    passed = found["build"]["gate passed"].iloc[0] if "build" in found else None
    gate = {True: "passed", False: "did not pass"}.get(passed, "was skipped (a smoke build)")
    lines.append(f"The build's premise gate {gate}.")
    return [line for line in lines if line]
