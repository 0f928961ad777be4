"""Trainers of a LoRA adapter or of every weight: SFT, GRPO and SDPO on one run loop
(``loop``). ``train(cfg)`` runs one.

``ALGORITHMS`` is the registry ``TrainConfig.algo`` chooses from; ``LOGGERS`` the one of
``TrainConfig.log_to``.
"""

from __future__ import annotations

from sdlib.train.grpo import GRPO
from sdlib.train.sdpo import SDPO
from sdlib.train.sft import SFT
from sdlib.train.trackers import LOGGERS

# Bumped whenever an update's arithmetic changes, so that content-addressed runs
# (sdlib.experiments.training) trained by older code are not found and reused as current.
# 2: tokens scored at the rollout temperature. 3: the EMA teacher moves once per step.
# 4: rollouts sampled by inverse CDF (``sdlib.rollout.SAMPLER``), not Gumbel-max.
# 5: SDPO's distillation with a frozen head fused (``sdlib.head.Head.distill``): the same
# arithmetic in another order, so values differ in the last bits.
# 6: rollouts of a plain Llama decoded by ``sdlib.llama``'s forward (last bits differ).
# 7, full fine-tuning only: a teacher or KL view reads the output layer inside the view (the
# initial and EMA teachers had used the live head); LoRA never adapts the head, so its runs
# are unchanged and keep revision 6.
REVISION = 6
FULL_REVISION = 7


def revision(cfg) -> int:
    """The code revision a run of ``cfg`` (``finetune`` resolved) is keyed by."""
    return FULL_REVISION if cfg.finetune == "full" else REVISION


ALGORITHMS = {"grpo": GRPO, "sdpo": SDPO, "sft": SFT}

__all__ = ["ALGORITHMS", "LOGGERS", "REVISION", "revision", "train"]


def train(cfg):
    """Run (or resume) the training run ``cfg`` describes; returns its RunFolder.

    Everything that can be checked without the weights is checked before anything is
    loaded or written: the device, the model's context and vocabulary, the data."""
    from sdlib.datasets import load_pairs, pooled
    from sdlib.models import check_limits
    from sdlib.settings import check_device
    from sdlib.train.dist import check_launch
    from sdlib.train.loop import train_loop

    check_launch(cfg)
    check_device(cfg.device)
    check_limits(cfg.model, cfg.max_new_tokens, cfg.topk if cfg.algo == "sdpo" else 0)
    data = load_pairs(cfg.data) if cfg.algo == "sft" else pooled(cfg.data)
    return train_loop(cfg, ALGORITHMS[cfg.algo], data)
