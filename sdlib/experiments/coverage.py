"""Notebook 05, task coverage (PAPER.md Sec. 6).

SDPO and GRPO trained on nested subsets of |D| distinct problems. With few problems SDPO
reaches a high training score fast with much shorter answers; as |D| grows its advantage
fades and OOD accuracy falls below the base model, while GRPO improves with |D|.

    train_score   mean training reward over the last half of the steps (in-domain)
    ood_accuracy  avg@k of the final adapter on the evaluation sets
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sdlib import plots
from sdlib.config import CoverageConfig
from sdlib.datasets import coverage_subset, load_benchmarks, pooled
from sdlib.experiments import training
from sdlib.experiments.evaluation import evaluate_policy
from sdlib.experiments.results import Results
from sdlib.problems import save_jsonl

NAME = "05_task_coverage"


def subset_files(cfg: CoverageConfig, folder: Path) -> dict[int, Path]:
    """Nested subsets of the pool (|D| = each size), written as jsonl training sets."""
    pool = pooled(cfg.data)
    if max(cfg.sizes) > len(pool):
        raise ValueError(
            f"sizes = {cfg.sizes} need {max(cfg.sizes)} distinct problems but "
            f"data = {cfg.data} holds {len(pool)}; enlarge the pool or cut sizes"
        )
    paths = {}
    for size in cfg.sizes:
        paths[size] = save_jsonl(
            coverage_subset(pool, size, seed=cfg.seed), folder / "subsets" / f"D{size}.jsonl"
        )
    return paths


def run(cfg: CoverageConfig) -> Results:
    res = Results(Path(cfg.out) / NAME)
    files = subset_files(cfg, res.folder)
    benchmarks = load_benchmarks(cfg.eval_data, cfg.eval_limit)
    base = evaluate_policy(cfg, "base", benchmarks).samples
    rows, frames = [], {}
    for algo in cfg.algos:
        extra = cfg.sdpo if algo == "sdpo" else cfg.grpo
        for size, path in files.items():
            tcfg = training.config(cfg, algo, [str(path)], cfg.train, extra)
            run_dir = training.train(cfg, tcfg)
            metrics = run_dir.metrics
            frames[f"{algo.upper()} |D|={size}"] = metrics
            ood = evaluate_policy(
                cfg, f"{algo}-D{size}", benchmarks, adapter=run_dir.adapter
            ).samples
            late = metrics["rollout/reward_mean"].iloc[len(metrics) // 2 :]
            rows.append(
                {
                    "algo": algo.upper(),
                    "size": size,
                    "train_score": late.mean(),
                    "ood_accuracy": ood["correct"].mean(),
                    "len_tokens": ood["len_tokens"].mean(),
                    "train_len_tokens": metrics["rollout/len_tokens"].iloc[-1],
                    "epi_total": ood["epi_total"].mean(),
                    "base_ood_accuracy": base["correct"].mean(),
                    "base_len_tokens": base["len_tokens"].mean(),
                }
            )
    table = res.table("coverage", pd.DataFrame(rows).set_index(["algo", "size"]))
    subtitle = f"{cfg.model} · preset {cfg.preset}"
    res.figure("coverage", plots.coverage_lines(table.reset_index(), subtitle))
    res.figure(
        "curves",
        plots.training_curves(
            frames,
            ["rollout/reward_mean", "rollout/len_tokens"],
            subtitle,
            "Training curves per |D|",
        ),
    )
    return res
