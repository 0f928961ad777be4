"""Notebook 03, SDPO vs GRPO on the same problems (PAPER.md Sec. 5).

Runs GRPO, SDPO (demonstrations with their thinking) and, optionally, SDPO with
demonstrations stripped of thinking, from the same base model on the same problems, once
per seed, then:
    training curves: reward, length, epistemic count, divergence (mean and band over seeds)
    every saved checkpoint evaluated out of distribution: accuracy, length and epistemic
    count against step, step 0 being the base model (the study's figures)
    the final adapters against the base model: per benchmark, paired differences
    per-word change of epistemic counts, after minus before (the study's "wait" figure),
    and of every word of the responses (its specificity check, Appendix B.4)
``compare`` is shared with notebook 04.
"""

from __future__ import annotations

from pathlib import Path

from sdlib import plots
from sdlib.config import OnPolicyConfig
from sdlib.datasets import load_benchmarks
from sdlib.experiments import tables, training
from sdlib.experiments.evaluation import checkpoint_evals, evaluate_seeds
from sdlib.experiments.results import Results, timed

NAME = "03_sdpo_vs_grpo"
CURVES = ["rollout/reward_mean", "rollout/len_tokens", "rollout/epi_total", "train/divergence"]
STEP_MEASURES = ["accuracy", "length", "epistemic"]


def compare(cfg, res: Results, runs: dict[str, list], title: str, notes=()) -> dict:
    """Train each run's configurations (one per seed), evaluate base, checkpoints and
    finals out of distribution, and write the tables, figures and notes (``notes``: more
    lines to put first). Returns the final evaluations' samples by run."""
    subtitle = f"{cfg.model} · preset {cfg.preset} · seeds {cfg.seeds}"
    trained = {label: training.train_seeds(cfg, tcfgs) for label, tcfgs in runs.items()}
    benchmarks = load_benchmarks(cfg.eval_data, cfg.eval_limit)
    base = evaluate_seeds(cfg, "base", benchmarks)
    steps, evals = {}, {"base": base}
    for label, runs_of_label in trained.items():
        steps.update(points := checkpoint_evals(cfg, label, runs_of_label, benchmarks, base))
        evals[label] = points[max(points)]  # the final checkpoint
    metrics = {label: [t.metrics for t in ts] for label, ts in trained.items()}
    curves = res.table("training_curves", tables.curves(metrics, CURVES))
    over = res.table("ood_over_training", tables.over_steps(steps))
    ood = res.table("ood", tables.by_benchmark(evals))
    shift = res.table("epistemic_word_shift", tables.word_shift(evals))
    specific = res.table("specificity", tables.specificity(evals))
    res.figure("curves", plots.training_curves(curves, CURVES, subtitle, title))
    checkpoints = "Out-of-distribution evaluation of the checkpoints"
    res.figure(
        "ood_over_training", plots.training_curves(over, STEP_MEASURES, subtitle, checkpoints)
    )
    res.figure("word_shift", plots.word_shift(shift, subtitle))
    res.figure("specificity", plots.specificity(specific, subtitle))
    res.figure("ood_accuracy", plots.accuracy_bars(ood, subtitle, "OOD accuracy, final"))
    lines = [f"- {line}" for line in tables.notes(ood)]
    res.notes([*notes, "Final adapters against the base model, out of distribution:", *lines])
    return evals


@timed
def run(cfg: OnPolicyConfig) -> Results:
    res = Results(Path(cfg.out) / NAME)
    runs = {
        "GRPO": training.configs(cfg, "grpo", cfg.data, cfg.train, cfg.grpo),
        "SDPO": training.configs(cfg, "sdpo", cfg.data, cfg.train, cfg.sdpo),
    }
    if cfg.strip_variant:
        runs["SDPO w/o thinking"] = training.configs(
            cfg, "sdpo", cfg.data, cfg.train, cfg.sdpo, {"strip_demo_thinking": True}
        )
    evals = compare(cfg, res, runs, "SDPO vs GRPO during training")
    # the study's comparison itself: each SDPO run against GRPO on the same samples
    finals = {label: evals[label] for label in ("GRPO", *(k for k in runs if k != "GRPO"))}
    versus = res.table("sdpo_vs_grpo", tables.by_benchmark(finals, base="GRPO"))
    lines = [f"- {line}" for line in tables.notes(versus)]
    res.notes([res.text.rstrip("\n"), "", "Each SDPO run against GRPO, final adapters:", *lines])
    return res
