"""Notebook 02, off-policy SFT on guided vs unguided responses (PAPER.md Sec. 4).

Two LoRA SFT runs from the same base model, once per seed, on notebook 01's
    D_ug  correct responses sampled without context (long, more epistemic words)
    D_sg  correct responses sampled with the full solution in context (short, fewer)
both over the same problems, one pair per problem, each paired with the plain student
prompt, and trained for the same number of optimizer steps (their token counts differ:
that difference is the treatment, and the table shows it). Then base, SFT(D_ug) and
SFT(D_sg) are evaluated on the out-of-distribution sets: the study's Table 2, with paired
differences from the base model and between the two SFT runs.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sdlib import plots
from sdlib.config import SFTExperimentConfig
from sdlib.datasets import load_benchmarks
from sdlib.experiments import context, tables, training
from sdlib.experiments.evaluation import evaluate_seeds
from sdlib.experiments.results import Results, timed

NAME = "02_sft_guided_vs_unguided"
CAPTIONS = {
    "accuracy": "Held-out accuracy of the base model and of SFT on each set, per evaluation "
    "set, with 95% intervals. The study's finding: SFT on the guided responses (D_sg, short "
    "and confident) lowers accuracy where SFT on the unguided ones (D_ug) does not.",
    "sft_loss": "SFT training loss per step (mean over seeds, 95% band). Both runs should "
    "fit their data; a gap in held-out accuracy then comes from what the data teaches, not "
    "from one run failing to train.",
}


def sft_sets(cfg: SFTExperimentConfig) -> dict[str, Path]:
    folder = Path(cfg.out) / context.NAME
    paths = {name: folder / f"{name}.jsonl" for name in ("D_ug", "D_sg")}
    for name, path in paths.items():
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: run notebook 01 (context richness) with out = {cfg.out!r} "
                f"first, e.g. `sdlib run 01_context_richness --out {cfg.out}`"
            )
        if not path.read_text().strip():
            raise ValueError(
                f"{path} holds no pairs to train on ({name}): no problem had a correct response "
                f"both without context and with the solution; rerun notebook 01 with more "
                f"problems or samples"
            )
    return paths


def data_table(data: dict[str, Path], trained: dict[str, list]) -> pd.DataFrame:
    """Pairs, optimizer steps and response tokens each SFT run trained on (per seed)."""
    rows = {}
    for label, path in data.items():
        m = trained[label][0].metrics
        rows[label] = {
            "pairs": len(path.read_text().splitlines()),
            "steps": len(m),
            "tokens": int(m["train/tokens"].sum()),
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("set")


@timed
def run(cfg: SFTExperimentConfig) -> Results:
    res = Results(Path(cfg.out) / NAME)
    data = sft_sets(cfg)
    runs = {
        f"SFT on {n}": training.configs(cfg, "sft", [str(p)], cfg.train) for n, p in data.items()
    }
    trained = {label: training.train_seeds(cfg, tcfgs) for label, tcfgs in runs.items()}
    benchmarks = load_benchmarks(cfg.eval_data, cfg.eval_limit)
    evals = {"base": evaluate_seeds(cfg, "base", benchmarks)}
    for label, ts in trained.items():
        evals[label] = evaluate_seeds(
            cfg, label.replace(" ", "_"), benchmarks, [t.weights for t in ts]
        )
    table = res.table("table2", tables.by_benchmark(evals))
    guided = res.table(
        "guided_vs_unguided",
        tables.by_benchmark(
            {k: evals[k] for k in ("SFT on D_ug", "SFT on D_sg")}, base="SFT on D_ug"
        ),
    )
    res.table("sft_data", data_table(dict(zip(runs, data.values(), strict=True)), trained))
    subtitle = f"{cfg.model} · preset {cfg.preset} · seeds {cfg.seeds}"
    res.figure(
        "accuracy",
        plots.accuracy_bars(table, subtitle, "SFT on guided vs unguided"),
        CAPTIONS["accuracy"],
    )
    losses = tables.curves(
        {k: [t.metrics for t in ts] for k, ts in trained.items()}, ["train/loss"]
    )
    res.figure(
        "sft_loss",
        plots.training_curves(losses, ["train/loss"], subtitle, "SFT training loss"),
        CAPTIONS["sft_loss"],
    )
    res.notes(
        [
            "SFT on D_sg against SFT on D_ug (same problems, same steps):",
            *(f"- {line}" for line in tables.notes(guided)),
            "",
            "Each against the base model:",
            *(f"- {line}" for line in tables.notes(table)),
        ],
        findings=findings(res.tables),
    )
    return res


def findings(found: dict) -> list[str]:
    """The headline of notebook 02, from its tables: SFT on D_sg minus SFT on D_ug, held
    out, in accuracy and in epistemic words."""
    guided = tables.rows(found["guided_vs_unguided"], "SFT on D_sg")
    lines = [
        tables.finding("SFT on D_sg minus SFT on D_ug, held-out accuracy", guided, "Δaccuracy"),
        tables.finding(
            "SFT on D_sg minus SFT on D_ug, epistemic words per response", guided, "Δepistemic"
        ),
    ]
    return [line for line in lines if line]
