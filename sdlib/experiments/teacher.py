"""Notebook 04, fixed vs moving teacher (PAPER.md Sec. 5.4).

SDPO with the teacher frozen at the initial policy (update rate 0: the LoRA adapter
disabled) against EMA teachers theta_T <- (1 - rate) theta_T + rate theta. The study: the
EMA teacher compresses responses faster and degrades OOD accuracy more; a fixed teacher
mitigates but does not remove the drop.
"""

from __future__ import annotations

from pathlib import Path

from sdlib.config import TeacherConfig
from sdlib.experiments import training
from sdlib.experiments.results import Results
from sdlib.experiments.sdpo_grpo import compare

NAME = "04_fixed_vs_moving_teacher"


def run(cfg: TeacherConfig) -> Results:
    res = Results(Path(cfg.out) / NAME)
    # the fixed-teacher run is notebook 03's SDPO run when the parameters agree: the
    # content-addressed run folder then makes it free here
    runs = {
        "SDPO fixed teacher": training.config(
            cfg, "sdpo", cfg.data, cfg.train, cfg.sdpo, {"teacher": "initial"}
        )
    }
    for rate in cfg.ema_rates:
        runs[f"SDPO EMA {rate:g}"] = training.config(
            cfg, "sdpo", cfg.data, cfg.train, cfg.sdpo, {"teacher": "ema", "ema_rate": rate}
        )
    compare(cfg, res, runs, "Fixed vs moving (EMA) teacher")
    return res
