"""Data parallelism for the trainers, as ``accelerate launch`` (or torchrun) sets it up.

Each process rolls out its share of the step's problems (problem i goes to process
i mod world), with per-sequence seeds keyed by the problem's position in the step, so the
samples are those a single process would draw. Loss normalisers are summed over processes
and gradients summed before clipping: the update equals the single-process update.
Only the main process writes metrics, samples and checkpoints.

Launched with an FSDP config (``accelerate launch --use_fsdp``), the decoder layers are
also sharded (torch's FSDP2, ``fully_shard``): each process holds 1/world of their
weights, gradients and optimizer state, and the update is still the single-process one.
What that takes, and what it costs:

- rollouts and every forward of phases 1-4 run on the gathered layers (``gathered``):
  processes decode different lengths, so per-layer all-gathers inside generation would
  not pair up. The whole model is in memory while rolling out, as ZeRO-3's gather for
  generation; the update (activations, gradients, optimizer state) is sharded;
- in the update every process runs as many micro-batches as the busiest one (idle ones
  forward sample 0 at weight 0), since each layer's forward and backward is a collective;
- the embeddings, final norm and output head stay whole in every process (the losses
  read the head's weight outside its module's forward), their gradients summed as in
  plain data parallelism;
- checkpoints are gathered to the single-process layout, so either kind of run resumes
  the other's;
- a teacher or reference policy made of a copy of the weights swapped into the modules
  (the EMA teacher; with full fine-tuning the initial one, trust region and KL to the
  start) is refused: FSDP re-registers the sharded parameters at every gather, so the
  swap would not hold (``check_fsdp``).
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch.distributed.tensor import DTensor, distribute_tensor

from sdlib.schema import ConfigError
from sdlib.settings import fsdp_launch


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    fsdp: bool = False  # the decoder layers are sharded (``shard_model``)
    reshard: bool = True  # FULL_SHARD: a layer's weights sharded again after its forward

    @classmethod
    def from_env(cls, device: str) -> Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        if str(device).startswith("cuda"):
            if device != "cuda":
                raise ConfigError(
                    f"device = {device!r} with {world} processes would put all of them on one "
                    "GPU; use device: cuda (each process takes the GPU of its LOCAL_RANK)"
                )
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        if not tdist.is_initialized():
            # NCCL for tensors on the GPU; gloo for those on the CPU (normalizers, counts)
            gpu = str(device).startswith("cuda")
            tdist.init_process_group("cpu:gloo,cuda:nccl" if gpu else "gloo")
        reshard = fsdp_launch()
        return cls(
            tdist.get_rank(), tdist.get_world_size(), reshard is not None, reshard is not False
        )

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

    def most(self, n: int) -> int:
        """The largest ``n`` of any process (FSDP: how many collective forwards to run)."""
        if not self.fsdp:
            return n
        value = torch.tensor(n)
        tdist.all_reduce(value, op=tdist.ReduceOp.MAX)
        return int(value)

    def sum_grads(self, params) -> None:
        """Sum the whole weights' gradients over processes (FSDP has already summed the
        sharded ones while scattering them)."""
        if self.world == 1:
            return
        for p in params:
            if isinstance(p, DTensor):
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            tdist.all_reduce(p.grad)

    def clip(self, params, max_norm: float) -> float:
        """``torch.nn.utils.clip_grad_norm_``: the norm of every gradient, whole or
        sharded, each counted once; the gradients scaled to at most ``max_norm``."""
        if not self.fsdp:
            return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        grads = [p.grad for p in params if p.grad is not None]
        sharded = sum(g.to_local().double().square().sum() for g in grads if isinstance(g, DTensor))
        whole = sum(g.double().square().sum() for g in grads if not isinstance(g, DTensor))
        norm = math.sqrt(float(self.sum(torch.as_tensor(sharded, dtype=torch.float64))) + whole)
        scale = min(max_norm / (norm + 1e-6), 1.0)
        if scale < 1.0:
            for g in grads:
                g.mul_(scale)
        return norm

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
        if self.fsdp:
            check_fsdp(cfg)

    # FSDP ---------------------------------------------------------------------------
    def shard_model(self, model) -> str | None:
        """Shard each decoder layer of ``model`` over the processes (FSDP2), under the
        decoder as the root; its embeddings and norm, and the output head, stay whole.
        Gradients are summed, not averaged, as ``sum_grads`` does. Returns a line saying
        what share of the weights this process holds."""
        if not self.fsdp:
            return None
        from torch.distributed.fsdp import FSDPModule, fully_shard

        from sdlib.train.core import unwrap

        body = unwrap(model).get_decoder()
        for layer in body.layers:
            fully_shard(layer, reshard_after_forward=self.reshard)
        in_layers = {id(p) for p in body.layers.parameters()}
        whole = {p for p in body.parameters() if id(p) not in in_layers}
        fully_shard(body, reshard_after_forward=self.reshard, ignored_params=whole)
        for module in body.modules():
            if isinstance(module, FSDPModule):
                module.set_gradient_divide_factor(1.0)
                module.set_force_sum_reduction_for_comms(True)
        total = sum(p.numel() for p in model.parameters())
        held = sum(
            p.to_local().numel() if isinstance(p, DTensor) else p.numel()
            for p in model.parameters()
        )
        return (
            f"FSDP: each of {self.world} processes holds {held:,} of the {total:,} weights "
            f"({held / total:.0%}: {len(body.layers)} decoder layers sharded; embeddings, "
            "norm and output head whole)"
        )

    @contextlib.contextmanager
    def gathered(self, model):
        """Every sharded layer whole in every process for the context (nothing is
        collective inside it, so each process may run its own number of forwards)."""
        if not self.fsdp:
            yield model
            return
        from torch.distributed.fsdp import FSDPModule

        shards = [m for m in model.modules() if isinstance(m, FSDPModule)]
        for m in shards:
            m.set_reshard_after_forward(False, recurse=False)
            m.unshard()
        try:
            yield model
        finally:
            for m in shards:
                m.reshard()
                m.set_reshard_after_forward(self.reshard, recurse=False)

    @staticmethod
    def whole(value):
        """A sharded tensor gathered whole in every process (collective), or ``value``."""
        return value.full_tensor() if isinstance(value, DTensor) else value

    @staticmethod
    def like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        """A whole tensor (a checkpoint's) laid out as ``param``: this process's shard."""
        if not isinstance(param, DTensor):
            return value
        value = value.to(param.dtype)
        return distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)


SINGLE = Dist()  # one process: every collective is the identity


def check_fsdp(cfg) -> None:
    """Refuse, in one line, what sdlib cannot run with sharded layers."""
    from sdlib.train.core import reads_initial

    if cfg.backend == "vllm":
        raise ConfigError(
            "backend vllm with FSDP: the engine would need the gathered weights every step; "
            "use backend: transformers, or launch without FSDP"
        )
    if cfg.load_in_4bit:
        raise ConfigError(
            "load_in_4bit with FSDP: 4-bit weights cannot be sharded; use load_in_4bit: "
            "false, or launch without FSDP"
        )
    if cfg.algo == "sdpo" and cfg.teacher == "ema":
        raise ConfigError(
            "teacher ema with FSDP: the EMA teacher is a copy of the trainable weights "
            "swapped into the modules, which sharded parameters do not allow; use teacher: "
            "initial, live or trust-region, or launch without FSDP"
        )
    if cfg.finetune == "full" and reads_initial(cfg):
        raise ConfigError(
            "finetune full with FSDP reads the initial policy (the SDPO teacher, track_kl or "
            "kl_coef) from a copy of every weight swapped into the modules, which sharded "
            "parameters do not allow; use finetune: lora (the initial policy is the adapter "
            "switched off), or teacher: live with track_kl: false and kl_coef: 0, or launch "
            "without FSDP"
        )


def check_launch(cfg) -> None:
    """Refuse an FSDP launch sdlib cannot follow before anything loads (``finetune: auto``
    is checked again once resolved)."""
    if fsdp_launch() is not None:
        check_fsdp(cfg)
