"""Optional experiment trackers for the training metrics: TensorBoard and W&B.

``TrainConfig.log_to`` names any of ``LOGGERS``; each documented metrics row is then also
streamed there, keyed by its step. Both are optional dependencies imported on first use;
W&B runs offline (files under the run folder, ``wandb sync`` uploads them later) unless
``WANDB_MODE`` says otherwise, so it works on machines without a network.
"""

from __future__ import annotations

import os
from pathlib import Path


class TensorBoard:
    def __init__(self, folder: Path, cfg):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise RuntimeError("log_to: tensorboard needs pip install tensorboard") from err
        self.writer = SummaryWriter(str(folder / "tensorboard"))

    def log(self, row: dict) -> None:
        for key, value in row.items():
            if key != "step" and value is not None:
                self.writer.add_scalar(key, value, row["step"])
        self.writer.flush()


class WandB:
    def __init__(self, folder: Path, cfg):
        try:
            import wandb
        except ImportError as err:
            raise RuntimeError("log_to: wandb needs pip install wandb") from err
        os.environ.setdefault("WANDB_MODE", "offline")
        self.run = wandb.init(
            project="sdlib", name=folder.name, dir=str(folder), config=vars(cfg), resume="allow"
        )

    def log(self, row: dict) -> None:
        values = {k: v for k, v in row.items() if k != "step" and v is not None}
        self.run.log(values, step=row["step"])


LOGGERS = {"tensorboard": TensorBoard, "wandb": WandB}


_OPEN: dict[tuple[str, str], TensorBoard | WandB] = {}


def tracker(name: str, folder: Path, cfg):
    """The one tracker ``name`` of the run in ``folder`` (opened on first use)."""
    key = (name, str(folder))
    if key not in _OPEN:
        _OPEN[key] = LOGGERS[name](Path(folder), cfg)
    return _OPEN[key]
