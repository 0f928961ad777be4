"""Notebook 05, task coverage (PAPER.md Sec. 6).

SDPO and GRPO trained on |D| distinct problems: the reference's own subsets (``subsets``:
seen_1x64, seen_8x8, seen_64, ...) or nested subsets drawn from a pool. With few problems
SDPO reaches a high training score fast with much shorter answers; as |D| grows its
advantage fades and OOD accuracy falls below the base model, while GRPO improves with |D|.

    train_score   mean training reward over the last half of the steps (in-domain), per
                  seed, then across seeds
    efficiency    the "sometimes" side: per run, the steps and generated tokens until a step's
                  mean training reward first reaches ``cfg.reach`` (``efficiency``), and
                  correct responses per 1,000 generated tokens over the whole run; across seeds
    accuracy ...  the final adapter on each evaluation set, paired with the base model
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from sdlib import plots, stats
from sdlib.config import CoverageConfig
from sdlib.datasets import coverage_subset, load_benchmarks, pooled
from sdlib.experiments import tables, training
from sdlib.experiments.evaluation import checkpoint_evals, evaluate_seeds
from sdlib.experiments.results import Results, timed
from sdlib.problems import save_jsonl

NAME = "05_task_coverage"
CAPTIONS = {
    "coverage": "Against the number of distinct training problems |D|: in-domain training "
    "reward, held-out accuracy and response length of the final adapters (95% intervals; "
    "the dashed line and band: the base model). The study: SDPO's held-out accuracy falls "
    "below the base model's as |D| grows while GRPO's does not.",
    "curves": "Training reward and response length per step for each |D| (mean over seeds, "
    "95% bands): where a run climbs fast on few problems while its answers shorten, it is "
    "fitting them, not learning to check.",
    "ood_over_training": "Held-out accuracy and length of each run's saved checkpoints, step "
    "0 being the base model (mean over seeds, 95% bands): look for the runs whose curves "
    "fall below step 0.",
}


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


def efficiency(metrics: pd.DataFrame, responses_per_step: int, reach: float) -> dict:
    """One run's training efficiency from its metrics (one row per step).

    ``steps to reach`` / ``tokens to reach``: how many steps ran until the first whose mean
    training reward reaches ``reach`` (it included), and the response tokens generated in them
    (mean length x ``responses_per_step``, summed); NaN when no step reaches it.
    ``correct per 1k tokens``: correct responses per 1,000 generated tokens over all steps."""
    reward = metrics["rollout/reward_mean"].to_numpy(np.float64)
    tokens = metrics["rollout/len_tokens"].to_numpy(np.float64) * responses_per_step
    hit = np.flatnonzero(reward >= reach)
    first = int(hit[0]) if hit.size else None
    return {
        "steps to reach": math.nan if first is None else float(first + 1),
        "tokens to reach": math.nan if first is None else float(tokens[: first + 1].sum()),
        "correct per 1k tokens": 1000 * float((reward * responses_per_step).sum() / tokens.sum()),
    }


def efficiency_row(trained, reach: float) -> dict:
    """``efficiency`` of each seed's run, across seeds: how many seeds reached ``reach``, the
    mean (95% interval over those seeds) of their steps and tokens to reach it, correct
    responses per 1k tokens over every seed, the untrained policy's reward (``start
    reward``: the first step's) and ``train_score`` (``late reward``)."""
    per_seed = [
        efficiency(t.metrics, t.config.prompts_per_step * t.config.rollouts_per_prompt, reach)
        for t in trained
    ]
    reached = [e for e in per_seed if not math.isnan(e["steps to reach"])]
    row = {"seeds reached": len(reached), "seeds": len(per_seed)}
    for key in ("steps to reach", "tokens to reach"):
        values = [e[key] for e in reached]
        row |= stats.across_seeds(values).columns(key) if values else {key: math.nan}
    row |= stats.across_seeds([e["correct per 1k tokens"] for e in per_seed]).columns(
        "correct per 1k tokens"
    )
    # the first step's rollouts come from the untrained policy: how far from ``reach`` it starts
    first = [float(t.metrics["rollout/reward_mean"].iloc[0]) for t in trained]
    row |= stats.across_seeds(first).columns("start reward")
    return row | train_score(trained).columns("late reward")


@timed
def run(cfg: CoverageConfig) -> Results:
    res = Results(Path(cfg.out) / NAME)
    sets = training_sets(cfg, res.folder)
    benchmarks = load_benchmarks(cfg.eval_data, cfg.eval_limit)
    base = evaluate_seeds(cfg, "base", benchmarks)
    evals, steps, metrics, scores, spent = {"base": base}, {}, {}, {}, {}
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
            spent[(algo.upper(), f"|D|={size}")] = efficiency_row(trained, cfg.reach)
        for size in cfg.budget_sizes if cfg.budget else []:
            regime = f"|D|={size}, {cfg.budget} tokens"
            cut = {"max_new_tokens": cfg.budget}
            trained = training.train_seeds(
                cfg, training.configs(cfg, algo, [sets[size]], cfg.train, extra, cut)
            )
            label = f"{algo.upper()} {regime}"
            evals[label] = evaluate_seeds(cfg, label, benchmarks, [t.weights for t in trained])
            spent[(algo.upper(), regime)] = efficiency_row(trained, cfg.reach)
    subtitle = f"{cfg.model} · preset {cfg.preset} · seeds {cfg.seeds}"
    ood = res.table("ood", tables.by_benchmark(evals))
    first = next(iter(benchmarks))  # the figure's evaluation set (the study reads AIME24)
    table = res.table("coverage", coverage_table(ood, scores, first))
    figure = plots.coverage_lines(table, ood.loc[[("base", first)]], f"{subtitle} · OOD {first}")
    res.figure("coverage", figure, CAPTIONS["coverage"])
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
        CAPTIONS["curves"],
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
        CAPTIONS["ood_over_training"],
    )
    table = res.table("efficiency", efficiency_table(spent))
    lines = [f"- {line}" for line in tables.notes(ood)]
    lines += ["", f"Training efficiency (a step's mean training reward reaching {cfg.reach}):"]
    lines += [f"- {line}" for line in efficiency_notes(table, cfg.reach)]
    narrow = narrow_rows(cfg, benchmarks, base) if cfg.narrow_train else None
    if narrow is not None:
        res.table("narrow", narrow)
        lines += [
            "",
            "Narrow-coverage runs, in domain and out of it, against the base model:",
            *(f"- {line}" for line in tables.notes(narrow)),
        ]
    res.notes(
        ["Final adapters against the base model, per evaluation set:", *lines],
        findings=findings(res.tables),
    )
    return res


def findings(found: dict) -> list[str]:
    """The headline of notebook 05, from its tables: each algorithm's final adapter minus
    the base model in held-out accuracy at every |D|, on the first evaluation set."""
    ood, sizes = found["ood"], found["coverage"].index
    first = ood.index.get_level_values("benchmark")[0]
    lines = []
    for algo in sizes.unique(0):
        labelled = {
            f"|D|={size}": ood.loc[(f"{algo} |D|={size}", first)]
            for size in sizes[sizes.get_level_values(0) == algo].get_level_values(1)
            if (f"{algo} |D|={size}", first) in ood.index
        }
        shown = tables.markdown_text(first)  # a problem set's name: data
        what = f"{algo} minus the base model by |D|, held-out accuracy on {shown}"
        lines.append(tables.finding(what, labelled, "Δaccuracy"))
    return [line for line in lines if line]


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


def efficiency_table(spent: dict) -> pd.DataFrame:
    """Rows (algo, regime: ``|D|=8``, or ``|D|=8, 128 tokens`` under a budget):
    ``efficiency_row`` of each algorithm's runs."""
    return pd.DataFrame.from_dict(spent, orient="index").rename_axis(["algo", "regime"])


def span(row, key: str, digits: int = 0) -> str:
    """``row[key]`` and its interval: ``v [lo, hi]``."""
    return (
        f"{row[key]:,.{digits}f} [{row[key + '_lo']:,.{digits}f}, {row[key + '_hi']:,.{digits}f}]"
    )


def efficiency_notes(table: pd.DataFrame, reach: float) -> list[str]:
    """One sentence per regime: where its runs start (the untrained policy's first-step
    reward: a regime that starts at ``reach`` cannot show who gets there sooner), each
    algorithm's seeds reaching ``reach`` with their steps and tokens to get there, its
    correct responses per 1k tokens and its reward over the last half of the steps, and
    which of the two algorithms' intervals are apart (across seeds: runs are not paired)."""
    lines = []
    for regime, part in table.groupby(level="regime", sort=False):
        start = part["start reward"].mean()
        room = "below" if start < reach else "already at or above"
        said = [f"starts at reward {start:.2f} ({room} {reach})"]
        for (algo, _), row in part.iterrows():
            seeds = f"{int(row['seeds reached'])}/{int(row['seeds'])} seeds reached {reach}"
            if row["seeds reached"] == 1:  # one value: no interval to give
                seeds += (
                    f" (one seed: after {row['steps to reach']:.0f} steps and "
                    f"{row['tokens to reach']:,.0f} generated tokens)"
                )
            elif row["seeds reached"]:
                seeds += (
                    f" after {span(row, 'steps to reach', 1)} steps and "
                    f"{span(row, 'tokens to reach')} generated tokens"
                )
            said.append(
                f"{algo} {seeds}; {span(row, 'correct per 1k tokens', 2)} correct per 1k "
                f"tokens; reward {span(row, 'late reward', 2)} over the last half of the steps"
            )
        if len(part) == 2:
            a, b = part.iloc[0], part.iloc[1]
            compared = ["correct per 1k tokens", "late reward"]
            if min(a["seeds reached"], b["seeds reached"]) >= 2:  # an interval on each side
                compared.insert(0, "tokens to reach")
            for key in compared:
                verdict = "are apart (exceeds" if _apart(a, b, key) else "overlap (within"
                said.append(f"their intervals of {key} {verdict} noise across seeds)")
        lines.append(f"{regime}: " + "; ".join(said) + ".")
    return lines


def _apart(a, b, key: str) -> bool:
    return bool(a[f"{key}_lo"] > b[f"{key}_hi"] or b[f"{key}_lo"] > a[f"{key}_hi"])
