"""Data parallelism for the trainers, as ``accelerate launch`` (or torchrun) sets it up.

Each process rolls out its share of the step's problems (problem i goes to process
i mod world), with per-sequence seeds keyed by the problem's position in the step, so the
samples are those a single process would draw. Loss normalisers are summed over processes
and gradients summed before clipping: the update equals the single-process update.
Only the main process writes metrics, samples and checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from sdlib.schema import ConfigError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls, device: str) -> Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        if not tdist.is_initialized():
            backend = "nccl" if str(device).startswith("cuda") else "gloo"
            tdist.init_process_group(backend)
        return cls(tdist.get_rank(), tdist.get_world_size())

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> list[int]:
        """The indices of ``n`` items this process handles."""
        return list(range(self.rank, n, self.world))

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            value = value.clone()
            tdist.all_reduce(value)
        return value

    def sum_grads(self, params) -> None:
        if self.world == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            tdist.all_reduce(p.grad)

    def mean_row(self, row: dict) -> dict:
        """Average a metrics row over the processes that computed each value (each holds an
        equal share of the samples)."""
        if self.world == 1:
            return row
        rows = [None] * self.world
        tdist.all_gather_object(rows, row)
        out = {}
        for k in row:
            values = [r[k] for r in rows if r[k] is not None]  # None: not computed there
            out[k] = row[k] if k == "step" else (sum(values) / len(values) if values else None)
        return out

    def check(self, cfg) -> None:
        for name in ("prompts_per_step", "prompts_per_update"):
            value = getattr(cfg, name)
            if value % self.world:
                raise ValueError(
                    f"{name} = {value} must be a multiple of the {self.world} processes"
                )


SINGLE = Dist()  # one process: every collective is the identity


def check_launch() -> None:
    """Refuse, in one line, a launch that asks for FSDP: sdlib replicates the model in each
    process and sums the gradients itself (``Dist``); it never wraps the model, so an FSDP
    config would be ignored, each process holding every weight while the user believes
    them sharded (and full fine-tuning's teacher views swap whole weights, which sharding
    would break)."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        raise ConfigError(
            "accelerate launch was given an FSDP config, but sdlib does not shard the model: "
            "its data parallelism replicates it and sums gradients (sdlib.train.dist); launch "
            "without the FSDP config (accelerate launch --num_processes N ...)"
        )
