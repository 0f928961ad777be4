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
# each figure's caption: what it shows and what to look for
CAPTIONS = {
    "curves": "Training curves, mean over seeds with a 95% band: reward, response length, "
    "epistemic words and the divergence to the teacher, per step. Look for a run whose "
    "length and epistemic words fall while its reward holds: it learns to answer without "
    "checking.",
    "ood_over_training": "Held-out accuracy, length and epistemic words of each run's saved "
    "checkpoints, step 0 being the base model (mean over seeds, 95% bands). In the study, "
    "self-distillation (SDPO) drives all three down together while GRPO holds them: look "
    "for that shape.",
    "word_shift": "Change of each epistemic word's count per response, final adapter minus "
    "the base model, with 95% intervals. Bars left of 0: the word is suppressed; look for "
    "every word moving, not one.",
    "specificity": "The words whose count per response changed most, trained minus base "
    "(epistemic words marked). If the epistemic words rank among the largest changes, the "
    "training targets them rather than shortening everything alike.",
    "ood_accuracy": "Held-out accuracy of the final adapters per evaluation set, with 95% "
    "intervals; compare each run's bar with the base model's.",
}


def compare(
    cfg, res: Results, runs: dict[str, list], title: str, notes=(), captions=CAPTIONS
) -> dict:
    """Train each run's configurations (one per seed), evaluate base, checkpoints and
    finals out of distribution, and write the tables, figures (with ``captions``) and notes
    (``notes``: more lines to put first). Returns the final evaluations' samples by run."""
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
    checkpoints = "Out-of-distribution evaluation of the checkpoints"
    figures = {
        "curves": plots.training_curves(curves, CURVES, subtitle, title),
        "ood_over_training": plots.training_curves(over, STEP_MEASURES, subtitle, checkpoints),
        "word_shift": plots.word_shift(shift, subtitle),
        "specificity": plots.specificity(specific, subtitle),
        "ood_accuracy": plots.accuracy_bars(ood, subtitle, "OOD accuracy, final"),
    }
    for name, fig in figures.items():
        res.figure(name, fig, captions[name])
    lines = [f"- {line}" for line in tables.notes(ood)]
    res.notes([*notes, "Final adapters against the base model, out of distribution:", *lines])
    return evals


def runs_of(cfg: OnPolicyConfig) -> dict[str, list]:
    """label -> the TrainConfigs (one per seed): GRPO, SDPO, and SDPO with the thinking
    stripped from its demonstrations when ``strip_variant``."""
    runs = {
        "GRPO": training.configs(cfg, "grpo", cfg.data, cfg.train, cfg.grpo),
        "SDPO": training.configs(cfg, "sdpo", cfg.data, cfg.train, cfg.sdpo),
    }
    if cfg.strip_variant:
        runs["SDPO w/o thinking"] = training.configs(
            cfg, "sdpo", cfg.data, cfg.train, cfg.sdpo, {"strip_demo_thinking": True}
        )
    return runs


@timed
def run(cfg: OnPolicyConfig) -> Results:
    res = Results(Path(cfg.out) / NAME)
    runs = runs_of(cfg)
    evals = compare(cfg, res, runs, "SDPO vs GRPO during training")
    # the study's comparison itself: each SDPO run against GRPO on the same samples
    finals = {label: evals[label] for label in ("GRPO", *(k for k in runs if k != "GRPO"))}
    versus = res.table("sdpo_vs_grpo", tables.by_benchmark(finals, base="GRPO"))
    lines = [f"- {line}" for line in tables.notes(versus)]
    res.notes(
        [res.text.rstrip("\n"), "", "Each SDPO run against GRPO, final adapters:", *lines],
        findings=findings(res.tables),
    )
    return res


def findings(found: dict) -> list[str]:
    """The headline of notebook 03, from its tables: each SDPO run minus GRPO on held-out
    problems (accuracy; epistemic words of the SDPO run with thinking)."""
    versus = found["sdpo_vs_grpo"]
    lines = [
        tables.finding(
            "SDPO minus GRPO, held-out accuracy", tables.rows(versus, "SDPO"), "Δaccuracy"
        ),
        tables.finding(
            "SDPO minus GRPO, epistemic words per response",
            tables.rows(versus, "SDPO"),
            "Δepistemic",
        ),
        tables.finding(
            "SDPO with demonstrations stripped of thinking minus GRPO, held-out accuracy",
            tables.rows(versus, "SDPO w/o thinking"),
            "Δaccuracy",
        ),
    ]
    return [line for line in lines if line]
