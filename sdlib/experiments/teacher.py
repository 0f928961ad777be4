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
from sdlib.experiments.sdpo_grpo import compare

NAME = "04_fixed_vs_moving_teacher"
FIXED = "SDPO fixed teacher"


@timed
def run(cfg: TeacherConfig) -> Results:
    res = Results(Path(cfg.out) / NAME)
    # the fixed-teacher runs are notebook 03's SDPO runs when the parameters agree: the
    # content-addressed run folders then make them free here
    sdpo = (cfg.train, cfg.sdpo)
    runs = {FIXED: training.configs(cfg, "sdpo", cfg.data, *sdpo, {"teacher": "initial"})}
    for rate in cfg.ema_rates:
        runs[f"SDPO EMA {rate:g}"] = training.configs(
            cfg, "sdpo", cfg.data, *sdpo, {"teacher": "ema", "ema_rate": rate}
        )
    evals = compare(cfg, res, runs, "Fixed vs moving (EMA) teacher")
    moving = res.table(
        "ema_vs_fixed", tables.by_benchmark({label: evals[label] for label in runs}, base=FIXED)
    )
    lines = [f"- {line}" for line in tables.notes(moving)]
    res.notes(
        ["EMA teachers against the fixed teacher, out of distribution:", *lines, "", res.text]
    )
    return res
