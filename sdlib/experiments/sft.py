"""Notebook 02, off-policy SFT on guided vs unguided responses (PAPER.md Sec. 4).

Two LoRA SFT runs from the same base model, on notebook 01's
    D_ug  correct responses sampled without context (long, more epistemic words)
    D_sg  correct responses sampled with the full solution in context (short, fewer)
each paired with the plain student prompt. Then base, SFT(D_ug) and SFT(D_sg) are
evaluated on the out-of-distribution sets: the study's Table 2.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sdlib import plots
from sdlib.config import SFTExperimentConfig
from sdlib.datasets import load_benchmarks
from sdlib.experiments import context, training
from sdlib.experiments.evaluation import evaluate_policy
from sdlib.experiments.results import Results

NAME = "02_sft_guided_vs_unguided"


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
                f"{path} holds no correct responses to train on ({name}); rerun "
                f"notebook 01 with more problems or samples"
            )
    return paths


def run(cfg: SFTExperimentConfig) -> Results:
    res = Results(Path(cfg.out) / NAME)
    data = sft_sets(cfg)
    sizes = {n: len(p.read_text().splitlines()) for n, p in data.items()}
    runs = {
        f"SFT on {n}": training.train(cfg, training.config(cfg, "sft", [str(p)], cfg.train))
        for n, p in data.items()
    }
    benchmarks = load_benchmarks(cfg.eval_data, cfg.eval_limit)
    evals = {"base": evaluate_policy(cfg, "base", benchmarks)}
    for label, r in runs.items():
        evals[label] = evaluate_policy(cfg, label.replace(" ", "_"), benchmarks, adapter=r.adapter)
    table = res.table("table2", accuracy_table(evals))
    res.table("behaviour", behaviour_table(evals))
    res.table("sft_data", pd.DataFrame({"pairs": sizes}).rename_axis("set"))
    subtitle = f"{cfg.model} · preset {cfg.preset}"
    res.figure("accuracy", plots.accuracy_bars(table, subtitle, "SFT on guided vs unguided"))
    res.figure(
        "sft_loss",
        plots.training_curves(
            {k: r.metrics for k, r in runs.items()},
            ["train/loss"],
            subtitle,
            "SFT training loss",
        ),
    )
    return res


def accuracy_table(evals: dict) -> pd.DataFrame:
    """avg@k per model (rows) and benchmark (columns)."""
    out = {}
    for model, ev in evals.items():
        out[model] = ev.table["eval/accuracy"].to_dict()
    return pd.DataFrame.from_dict(out, orient="index").rename_axis("model")


def behaviour_table(evals: dict) -> pd.DataFrame:
    rows = {
        m: {
            "len_tokens": ev.samples["len_tokens"].mean(),
            "epi_total": ev.samples["epi_total"].mean(),
            "epi_total_word": ev.samples["epi_total_word"].mean(),
            "boxed_frac": ev.samples["pred"].notna().mean(),
        }
        for m, ev in evals.items()
    }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")
