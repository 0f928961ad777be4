"""Notebook 05, task coverage (PAPER.md Sec. 6).

SDPO and GRPO trained on |D| distinct problems: the reference's own subsets (``subsets``:
seen_1x64, seen_8x8, seen_64, ...) or nested subsets drawn from a pool. With few problems
SDPO reaches a high training score fast with much shorter answers; as |D| grows its
advantage fades and OOD accuracy falls below the base model, while GRPO improves with |D|.

    train_score   mean training reward over the last half of the steps (in-domain), per
                  seed, then across seeds
    accuracy ...  the final adapter on each evaluation set, paired with the base model
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sdlib import plots, stats
from sdlib.config import CoverageConfig
from sdlib.datasets import coverage_subset, load_benchmarks, pooled
from sdlib.experiments import tables, training
from sdlib.experiments.evaluation import checkpoint_evals, evaluate_seeds
from sdlib.experiments.results import Results, timed
from sdlib.problems import save_jsonl

NAME = "05_task_coverage"


def training_sets(cfg: CoverageConfig, folder: Path) -> dict[int, str]:
    """One training set per size: the named ``subsets``, or nested subsets of the pool
    written as jsonl files."""
    if cfg.subsets:
        return dict(zip(cfg.sizes, cfg.subsets, strict=True))
    pool = pooled(cfg.data)
    if max(cfg.sizes) > len(pool):
        raise ValueError(
            f"sizes = {cfg.sizes} need {max(cfg.sizes)} distinct problems but "
            f"data = {cfg.data} holds {len(pool)}; enlarge the pool or cut sizes"
        )
    sets = {}
    for size in cfg.sizes:
        if size == len(pool) and len(cfg.data) == 1:
            sets[size] = cfg.data[0]  # the whole pool: the very runs of notebook 03
        else:
            subset = coverage_subset(pool, size, seed=cfg.seeds[0])
            sets[size] = str(save_jsonl(subset, folder / "subsets" / f"D{size}.jsonl"))
    return sets


def train_score(trained) -> stats.Estimate:
    """Mean training reward over the last half of the steps, per seed, across seeds."""
    late = [t.metrics["rollout/reward_mean"].iloc[len(t.metrics) // 2 :].mean() for t in trained]
    return stats.across_seeds(late)


@timed
def run(cfg: CoverageConfig) -> Results:
    res = Results(Path(cfg.out) / NAME)
    sets = training_sets(cfg, res.folder)
    benchmarks = load_benchmarks(cfg.eval_data, cfg.eval_limit)
    base = evaluate_seeds(cfg, "base", benchmarks)
    evals, steps, metrics, scores = {"base": base}, {}, {}, {}
    for algo in cfg.algos:
        extra = cfg.sdpo if algo == "sdpo" else cfg.grpo
        for size, data in sets.items():
            label = f"{algo.upper()} |D|={size}"
            trained = training.train_seeds(
                cfg, training.configs(cfg, algo, [data], cfg.train, extra)
            )
            steps.update(points := checkpoint_evals(cfg, label, trained, benchmarks, base))
            evals[label], metrics[label] = points[max(points)], [t.metrics for t in trained]
            scores[(algo.upper(), size)] = train_score(trained)
    subtitle = f"{cfg.model} · preset {cfg.preset} · seeds {cfg.seeds}"
    ood = res.table("ood", tables.by_benchmark(evals))
    first = next(iter(benchmarks))  # the figure's evaluation set (the study reads AIME24)
    table = res.table("coverage", coverage_table(ood, scores, first))
    figure = plots.coverage_lines(table, ood.loc[[("base", first)]], f"{subtitle} · OOD {first}")
    res.figure("coverage", figure)
    curves = res.table(
        "training_curves", tables.curves(metrics, ["rollout/reward_mean", "rollout/len_tokens"])
    )
    res.figure(
        "curves",
        plots.training_curves(
            curves,
            ["rollout/reward_mean", "rollout/len_tokens"],
            subtitle,
            "Training curves per |D|",
        ),
    )
    over = res.table("ood_over_training", tables.over_steps(steps))
    res.figure(
        "ood_over_training",
        plots.training_curves(
            over,
            ["accuracy", "length"],
            subtitle,
            "Out-of-distribution evaluation of the checkpoints",
        ),
    )
    lines = [f"- {line}" for line in tables.notes(ood)]
    narrow = narrow_rows(cfg, benchmarks, base) if cfg.narrow_train else None
    if narrow is not None:
        res.table("narrow", narrow)
        lines += [
            "Narrow-coverage runs, in domain and out of it, against the base model:",
            *(f"- {line}" for line in tables.notes(narrow)),
        ]
    res.notes(["Final adapters against the base model, per evaluation set:", *lines])
    return res


def narrow_rows(cfg: CoverageConfig, benchmarks: dict, base) -> pd.DataFrame:
    """The study's cross-domain row: each algo trained on a narrow set (a few templated
    question types), evaluated in domain on its test set and out of domain on
    ``eval_data``, each paired with the base model on the same problems."""
    frames = []
    for train_set, test_set in zip(cfg.narrow_train, cfg.narrow_test, strict=True):
        domain = load_benchmarks([test_set], cfg.eval_limit)
        evals = {"base": pd.concat([evaluate_seeds(cfg, "base", domain), base])}
        for algo in cfg.algos:
            extra = cfg.sdpo if algo == "sdpo" else cfg.grpo
            trained = training.train_seeds(
                cfg, training.configs(cfg, algo, [train_set], cfg.train, extra)
            )
            label = f"{algo.upper()} on {train_set}"
            adapters = [t.weights for t in trained]
            evals[label] = pd.concat(
                [
                    evaluate_seeds(cfg, label, domain, adapters),
                    evaluate_seeds(cfg, label, benchmarks, adapters),
                ]
            )
        frames.append(tables.by_benchmark(evals))
    return pd.concat(frames)


def coverage_table(ood: pd.DataFrame, scores: dict, benchmark: str) -> pd.DataFrame:
    """Rows (algo, size): training score and, on ``benchmark`` (the figure's; every set is
    in the ``ood`` table), the final accuracy, length and their change from the base."""
    rows = {}
    for (algo, size), score in scores.items():
        row = ood.loc[(f"{algo} |D|={size}", benchmark)]
        rows[(algo, size)] = {**score.columns("train_score"), **row.to_dict()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(["algo", "size"])
