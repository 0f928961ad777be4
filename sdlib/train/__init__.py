"""LoRA trainers: SFT, GRPO and SDPO. ``train(cfg)`` dispatches on ``cfg.algo``."""

from __future__ import annotations

# Bumped whenever an update's arithmetic changes, so that content-addressed runs
# (experiments/common.py) trained by older code are not found and reused as if current.
# 2: tokens scored at the rollout temperature.
REVISION = 2


def train(cfg):
    """Run (or resume) the training run ``cfg`` describes; returns its RunDir."""
    from sdlib.experiments.common import load_benchmarks
    from sdlib.train import grpo, sdpo, sft
    from sdlib.train.onpolicy import train_on_policy

    if cfg.algo == "sft":
        return sft.train_sft(cfg)
    problems = [p for ps in load_benchmarks(cfg.data).values() for p in ps]
    algo = {"grpo": grpo.GRPO, "sdpo": sdpo.SDPO}[cfg.algo]
    return train_on_policy(cfg, problems, algo)
