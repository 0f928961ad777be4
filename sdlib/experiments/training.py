"""Training runs of an experiment: a TrainConfig from the experiment's shared knobs, run
(or found finished) in its content-addressed folder, and what the notebooks read of it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

import sdlib.train as trainers
from sdlib.config import TrainConfig, from_dict
from sdlib.experiments import cache
from sdlib.grading import VERSION as GRADING
from sdlib.runfolder import RunFolder, file_digest, verify, weights_folder
from sdlib.train.core import resolve_finetune
from sdlib.train.loop import METRICS_FILE, TRAIN_ADDED, finished

# what a training run inherits from the experiment it belongs to
SHARED = (
    "model",
    "dtype",
    "device",
    "few_shot",
    "thinking",
    "gen_batch",
    "backend",
    "max_new_tokens",
    "grader",
)
# fields that do not change what a run computes, left out of its key
UNKEYED = ("out", "save_every", "sample_every", "log_to")


def config(cfg, algo: str, data: list[str], *overrides: dict, seed: int = 0) -> TrainConfig:
    """A TrainConfig from the experiment's shared knobs and ``seed``, then each override."""
    values = {"algo": algo, "data": data, "seed": seed, **{k: getattr(cfg, k) for k in SHARED}}
    for o in overrides:
        values.update(o)
    return from_dict(TrainConfig, values)


def configs(cfg, algo: str, data: list[str], *overrides: dict) -> list[TrainConfig]:
    """``config`` once per seed of the experiment (``cfg.seeds``)."""
    return [config(cfg, algo, data, *overrides, seed=s) for s in cfg.seeds]


@dataclass
class Trained:
    """A finished training run: its folder and the configuration it ran."""

    run: RunFolder
    config: TrainConfig

    @property
    def weights(self) -> Path:
        """The weights of the final checkpoint (LoRA adapter or whole model), verified
        against its manifest."""
        final = finished(self.run, self.config)
        if final is None:
            raise FileNotFoundError(
                f"run {self.run.path} is not finished or its final checkpoint is damaged; "
                f"training it again resumes from its newest intact checkpoint"
            )
        return weights_folder(final)

    @property
    def checkpoints(self) -> list[tuple[int, Path]]:
        """(step, weights) of every intact checkpoint, oldest first (curves over training)."""
        return [
            (step, weights_folder(folder))
            for step, folder in self.run.checkpoints()
            if verify(folder) is None
        ]

    @property
    def metrics(self) -> pd.DataFrame:
        """One row per step (``sdlib.metrics``)."""
        return pd.DataFrame(self.run.read(METRICS_FILE))


def train(cfg, tcfg: TrainConfig) -> Trained:
    """Train (or resume, or find finished) ``tcfg`` in ``<out>/train/<algo>-<key>``: one
    folder per distinct configuration and code revision, whichever notebook asks for it
    (``finetune: auto`` resolved first, so the key names what runs)."""
    tcfg = resolve_finetune(tcfg)
    out = cache.folder(cfg.out, "train", tcfg.algo, identity(tcfg))
    tcfg = dataclasses.replace(tcfg, out=str(out))
    return Trained(trainers.train(tcfg), tcfg)


def identity(tcfg: TrainConfig) -> dict:
    """What names a run: every field that changes what it computes (a field added since
    runs existed counts only away from the value they had), the code revision and the
    grading version."""
    keyed = {
        k: v
        for k, v in dataclasses.asdict(tcfg).items()
        if k not in UNKEYED and not (k in TRAIN_ADDED and v == TRAIN_ADDED[k])
    }
    keyed["data"] = [data_key(d) for d in tcfg.data]
    return {"revision": trainers.revision(tcfg), "grading": GRADING, **keyed}


def data_key(spec: str):
    """What a training set contributes to its run's key: a file by its content (another
    notebook may write it again, differently, at the same path; a moved run folder keeps its
    runs), anything else by its spec."""
    path = Path(spec)
    return {"file": file_digest(path)} if path.is_file() else spec


def train_seeds(cfg, tcfgs: list[TrainConfig]) -> list[Trained]:
    """``train`` each configuration (one per seed)."""
    return [train(cfg, t) for t in tcfgs]
