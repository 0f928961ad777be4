"""Notebook 03, SDPO vs GRPO on the same problems (PAPER.md Sec. 5).

Runs GRPO, SDPO (demonstrations with their thinking) and, optionally, SDPO with
demonstrations stripped of thinking, from the same base model on the same problems, then:
    curves over steps: training reward, response length, epistemic count, divergence
    OOD evaluation of the base model and of each final adapter
    per-word change of epistemic counts, after minus before (the study's "wait" figure)
``compare`` is shared with notebook 04.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sdlib import plots
from sdlib.behavior import EPISTEMIC_WORDS
from sdlib.config import OnPolicyConfig
from sdlib.datasets import load_benchmarks
from sdlib.experiments import training
from sdlib.experiments.evaluation import evaluate_policy
from sdlib.experiments.results import Results

NAME = "03_sdpo_vs_grpo"
CURVES = ["rollout/reward_mean", "rollout/len_tokens", "rollout/epi_total", "train/divergence"]


def compare(cfg, res: Results, runs: dict, title: str) -> dict[str, pd.DataFrame]:
    """Train each named TrainConfig, evaluate base and finals OOD, write tables/figures."""
    trained = {label: training.train(cfg, t) for label, t in runs.items()}
    frames = {label: r.metrics for label, r in trained.items()}
    benchmarks = load_benchmarks(cfg.eval_data, cfg.eval_limit)
    evals = {"base": evaluate_policy(cfg, "base", benchmarks)}
    for label, r in trained.items():
        evals[label] = evaluate_policy(cfg, label.replace(" ", "_"), benchmarks, adapter=r.adapter)
    subtitle = f"{cfg.model} · preset {cfg.preset}"
    res.table("training_summary", training_summary(frames))
    ood = res.table("ood", ood_table(evals))
    shift = res.table("epistemic_word_shift", word_shift(evals))
    res.figure("curves", plots.training_curves(frames, CURVES, subtitle, title))
    res.figure("word_shift", plots.word_shift(shift, subtitle))
    res.figure(
        "ood_accuracy",
        plots.accuracy_bars(
            ood[[c for c in ood.columns if c.startswith("acc:")]].rename(
                columns=lambda c: c.removeprefix("acc:")
            ),
            subtitle,
            "OOD accuracy before/after",
        ),
    )
    return frames


def training_summary(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """First and last step of the curves, per run."""
    rows = {}
    for label, f in frames.items():
        for key in CURVES:
            if key in f and f[key].notna().any():
                series = f[key].dropna()
                rows.setdefault(label, {})[f"{key} first"] = series.iloc[0]
                rows[label][f"{key} last"] = series.iloc[-1]
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("run")


def ood_table(evals: dict) -> pd.DataFrame:
    rows = {}
    for label, ev in evals.items():
        t, s = ev.table, ev.samples
        row = {f"acc:{b}": v for b, v in t["eval/accuracy"].items() if b != "overall"}
        row.update(
            {
                "accuracy": s["correct"].mean(),
                "len_tokens": s["len_tokens"].mean(),
                "epi_total": s["epi_total"].mean(),
                "epi_total_word": s["epi_total_word"].mean(),
            }
        )
        rows[label] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")


def word_shift(evals: dict) -> pd.DataFrame:
    """Mean count per response of each epistemic word, trained minus base: [word, run]."""
    base = evals["base"].samples
    out = {
        label: {w: ev.samples[f"epi/{w}"].mean() - base[f"epi/{w}"].mean() for w in EPISTEMIC_WORDS}
        for label, ev in evals.items()
        if label != "base"
    }
    return pd.DataFrame(out).rename_axis("word")


def run(cfg: OnPolicyConfig) -> Results:
    res = Results(Path(cfg.out) / NAME)
    runs = {
        "GRPO": training.config(cfg, "grpo", cfg.data, cfg.train, cfg.grpo),
        "SDPO": training.config(cfg, "sdpo", cfg.data, cfg.train, cfg.sdpo),
    }
    if cfg.strip_variant:
        runs["SDPO w/o thinking"] = training.config(
            cfg, "sdpo", cfg.data, cfg.train, cfg.sdpo, {"strip_demo_thinking": True}
        )
    compare(cfg, res, runs, "SDPO vs GRPO during training")
    return res
