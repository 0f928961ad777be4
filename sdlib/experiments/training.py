"""Training runs of an experiment: a TrainConfig from the experiment's shared knobs, run
(or found finished) in its content-addressed folder, and what the notebooks read of it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

import sdlib.train as trainers
from sdlib.config import TrainConfig, from_dict
from sdlib.experiments import cache
from sdlib.runfolder import RunFolder
from sdlib.train.loop import METRICS_FILE

# what a training run inherits from the experiment it belongs to
SHARED = ("model", "dtype", "device", "seed", "few_shot", "thinking", "gen_batch", "backend",
          "max_new_tokens")  # fmt: skip
# fields that do not change what a run computes, left out of its key
UNKEYED = ("out", "save_every", "sample_every", "log_to")


def config(cfg, algo: str, data: list[str], *overrides: dict) -> TrainConfig:
    """A TrainConfig from the experiment's shared knobs, then each override in turn."""
    values = {"algo": algo, "data": data, **{k: getattr(cfg, k) for k in SHARED}}
    for o in overrides:
        values.update(o)
    return from_dict(TrainConfig, values)


def train(cfg, tcfg: TrainConfig) -> RunFolder:
    """Train (or resume, or find finished) ``tcfg`` in ``<out>/train/<algo>-<key>``: one
    folder per distinct configuration and code revision, whichever notebook asks for it."""
    keyed = {k: v for k, v in dataclasses.asdict(tcfg).items() if k not in UNKEYED}
    out = cache.folder(cfg.out, "train", tcfg.algo, {"revision": trainers.REVISION, **keyed})
    return trainers.train(dataclasses.replace(tcfg, out=str(out)))


def final_adapter(run: RunFolder) -> Path:
    """The adapter of the run's newest intact checkpoint."""
    found = run.latest()
    if found is None:
        raise FileNotFoundError(f"run {run.path} has no intact checkpoint; rerun it to finish")
    return found[1] / "adapter"


def metrics(run: RunFolder) -> pd.DataFrame:
    return pd.DataFrame(run.read(METRICS_FILE))
