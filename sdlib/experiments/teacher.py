"""Notebook 04, fixed vs moving teacher (PAPER.md Sec. 5.4).

SDPO with the teacher frozen at the initial policy (update rate 0: the LoRA adapter
disabled) against EMA teachers theta_T <- (1 - rate) theta_T + rate theta. The study: the
EMA teacher compresses responses faster and degrades OOD accuracy more; a fixed teacher
mitigates but does not remove the drop.
"""

from __future__ import annotations

from pathlib import Path

from sdlib.config import TeacherConfig
from sdlib.experiments import tables, training
from sdlib.experiments.results import Results, timed
from sdlib.experiments.sdpo_grpo import CAPTIONS as CAPTIONS_03
from sdlib.experiments.sdpo_grpo import compare

NAME = "04_fixed_vs_moving_teacher"
FIXED = "SDPO fixed teacher"
CAPTIONS = CAPTIONS_03 | {
    "ood_over_training": "Held-out accuracy, length and epistemic words of each teacher's "
    "SDPO checkpoints, step 0 being the base model (mean over seeds, 95% bands). The study: "
    "an EMA teacher falls faster than the fixed one; where the curves lie on top of each "
    "other, the moving teacher adds nothing to the drop.",
}


def runs_of(cfg: TeacherConfig) -> dict[str, list]:
    """label -> the TrainConfigs (one per seed) of each teacher. The fixed-teacher runs are
    notebook 03's SDPO runs when the parameters agree: the content-addressed run folders
    then make them free here."""
    sdpo = (cfg.train, cfg.sdpo)
    out = {FIXED: training.configs(cfg, "sdpo", cfg.data, *sdpo, {"teacher": "initial"})}
    for rate in cfg.ema_rates:
        out[f"SDPO EMA {rate:g}"] = training.configs(
            cfg, "sdpo", cfg.data, *sdpo, {"teacher": "ema", "ema_rate": rate}
        )
    return out


@timed
def run(cfg: TeacherConfig) -> Results:
    res = Results(Path(cfg.out) / NAME)
    runs = runs_of(cfg)
    evals = compare(cfg, res, runs, "Fixed vs moving (EMA) teacher", captions=CAPTIONS)
    moving = res.table(
        "ema_vs_fixed", tables.by_benchmark({label: evals[label] for label in runs}, base=FIXED)
    )
    lines = [f"- {line}" for line in tables.notes(moving)]
    res.notes(
        ["EMA teachers against the fixed teacher, out of distribution:", *lines, "", res.text],
        findings=findings(res.tables),
    )
    return res


def findings(found: dict) -> list[str]:
    """The headline of notebook 04, from its tables: each EMA teacher minus the fixed one,
    and the fixed teacher minus the base model (held-out accuracy)."""
    moving, ood = found["ema_vs_fixed"], found["ood"]
    lines = [
        tables.finding(
            f"{label} minus the fixed teacher, held-out accuracy",
            tables.rows(moving, label),
            "Δaccuracy",
        )
        for label in moving.index.unique(0)
        if label != FIXED
    ]
    lines.append(
        tables.finding(
            "SDPO with the fixed teacher minus the base model, held-out accuracy",
            tables.rows(ood, FIXED),
            "Δaccuracy",
        )
    )
    return [line for line in lines if line]
