"""The one run loop SFT, GRPO and SDPO share: resume, step, metrics row, checkpoint.

One step (DESIGN.md's data flow), ``one_step``:
    1. take the step's data (a pure function of seed and step: resumes exactly)
    2. on-policy: roll out ``rollouts_per_prompt`` responses each with the current policy
    3. on-policy: grade them: reward r = 1 if the final answer is right, else 0
    4. the algorithm builds its loss inputs (GRPO: advantages; SDPO: demonstrations and
       teacher prompts; SFT: the packed pairs)
    5. optimizer updates over mini-batches of prompts, micro-batches accumulated
    6. one metrics row (``sdlib.metrics``), samples; checkpoint every ``save_every`` steps

Phases 1-4 are the algorithm's ``batch``, phase 5's loss its ``micro_loss``; the loop and
the update are the same code for all three (``Algorithm`` says what they provide).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from sdlib.clock import phase
from sdlib.losses import loss_normalizer
from sdlib.metrics import check_row, token_metrics
from sdlib.progress import status, tqdm
from sdlib.runfolder import RunFolder, flatten, unflatten, write_atomic
from sdlib.schema import ConfigError, read_yaml, save
from sdlib.train import core
from sdlib.train.dist import SINGLE, Dist

METRICS_FILE, SAMPLES_FILE, DONE_FILE = "metrics.jsonl", "samples.jsonl", "done.json"
# TrainConfig fields added after runs existed, with the value those runs had: a field at
# this value is left out of a run's key and may be missing from its params.yaml, so the
# runs made before it stay found and resumable.
TRAIN_ADDED = {
    "distillation_weight": 1.0,
    "route": "none",
    "teacher_entropy_weight": 0.0,
    "demo_prefix": 1.0,
    "variance_weight": False,
}

# parameters a resumed run may change: they do not alter what the steps compute
RESUMABLE = {"steps", "save_every", "sample_every", "out", "log_to"}


class NonFiniteUpdate(RuntimeError):
    """An update's loss or gradient norm was NaN or infinite: the run stops there, before
    the step is written, so its folder ends at the last good checkpoint."""


@dataclass(kw_only=True)
class Batch:
    """One step's samples as the update sees them (N samples, G update groups)."""

    student: core.Packed  # [N, T]
    group: torch.Tensor  # [N] the update group (problem or pair) of each sample
    groups: int  # G, the groups this process holds
    active: torch.Tensor  # [N] bool: the sample is forwarded in the loss
    extra: dict = field(default_factory=dict)


class Algorithm(Protocol):
    """What the run loop asks of a training algorithm (``sdlib.train.ALGORITHMS``)."""

    def __init__(self, cfg, policy, data: list) -> None: ...

    def steps(self) -> int: ...  # how many steps the run has

    def batch(self, step: int, dist: Dist) -> Batch: ...  # phases 1-4

    # [N] samples in the normaliser, or [K, N] for a loss of K terms each with its own
    def counted(self, batch: Batch) -> torch.Tensor: ...

    # the loss of micro-batch ``rows`` and, per forwarded token, its ``token_metrics``
    def micro_loss(self, model, batch: Batch, rows, norm) -> tuple[torch.Tensor, dict]: ...

    def after_step(self, model) -> None: ...  # after the step's last update

    def row(self, batch: Batch) -> dict: ...  # the step's own metrics

    def samples(self, batch: Batch, step: int) -> list[dict]: ...  # rows of samples.jsonl

    def state(self) -> dict: ...  # what a checkpoint keeps beyond weights and optimizer

    def load_state(self, state: dict) -> None: ...


def normalizers(counted: torch.Tensor, in_update, batch: Batch, mode: str) -> torch.Tensor:
    """What an update's loss terms are divided by (``loss_normalizer``) over this process's
    samples of the update: [] for a [N] ``counted`` mask, [K] for K terms' masks [K, N]."""
    norms = [
        loss_normalizer(batch.student.loss_mask[in_update & mask], mode).float()
        for mask in counted.reshape(-1, counted.shape[-1])
    ]
    return torch.stack(norms).reshape(counted.shape[:-1])


def update_phase(algo, model, batch: Batch, opt, sched, cfg, dist: Dist = SINGLE) -> dict:
    """Phase 5: one optimizer update per mini-batch of groups, micro-batches accumulated.

    Each micro-batch loss is divided by its mini-batch's normalizer (summed over
    processes), so the accumulated gradient, and the summed loss, equal those of the whole
    mini-batch's aggregated loss whatever ``micro_batch`` is. Per-token statistics are
    gathered over the step and averaged once, so they do not depend on it either.
    """
    device = next(model.parameters()).device
    tokens: dict[str, list[torch.Tensor]] = {k: [] for k in token_metrics(cfg.algo, cfg)}
    updates: dict[str, list[float]] = {"train/loss": [], "train/grad_norm": [], "train/lr": []}
    forwarded = 0
    model.train()
    size = (cfg.prompts_per_update or cfg.prompts_per_step) // dist.world  # this process's
    for lo in range(0, batch.groups, size):
        in_update = (batch.group >= lo) & (batch.group < lo + size)
        norm = dist.sum(normalizers(algo.counted(batch), in_update, batch, cfg.loss_agg))
        rows = (in_update & batch.active).nonzero().squeeze(1)
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        parts = core.micro_batches(len(rows), cfg.micro_batch)
        # FSDP: each forward is collective, so every process runs as many micro-batches
        for _ in range(dist.most(len(parts)) - len(parts)):
            parts.append(None)  # sample 0 at weight 0
        for part in parts:
            if part is None:
                sample = torch.zeros(1, dtype=torch.long)
                idle, _ = algo.micro_loss(model, batch, sample, torch.ones_like(norm).to(device))
                (idle * 0).backward()
                continue
            micro, per_token = algo.micro_loss(model, batch, rows[part], norm.to(device))
            micro.backward()
            loss += float(micro.detach())
            forwarded += int(batch.student.loss_mask[rows[part]].sum())
            if per_token.keys() != tokens.keys():
                raise RuntimeError(
                    f"micro_loss returned {sorted(per_token)}, not {algo.token_stats}"
                )
            for name, values in per_token.items():
                tokens[name].append(values.detach().double().cpu())
        params = [p for p in model.parameters() if p.requires_grad]
        dist.sum_grads(params)
        norm_before = dist.clip(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        if len(rows) and not (math.isfinite(loss) and math.isfinite(norm_before)):
            raise NonFiniteUpdate(
                f"the loss is {loss} and the gradient norm {norm_before} at learning rate "
                f"{sched.get_last_lr()[0]:.3g}"
            )
        # the update's loss is its processes' shares summed: nan when no process had one
        total, shares = dist.sum(torch.tensor([loss, len(rows)], dtype=torch.float64)).tolist()
        updates["train/grad_norm"].append(norm_before)
        updates["train/lr"].append(sched.get_last_lr()[0])
        updates["train/loss"].append(total if shares else math.nan)
        opt.step()
        sched.step()
    row = {k: _mean(torch.tensor(v, dtype=torch.float64)) for k, v in updates.items()}
    row.update(token_means(tokens, dist))
    row["train/tokens"] = int(dist.sum(torch.tensor(forwarded)))
    return row


def _mean(values: torch.Tensor) -> float | None:
    """Mean of the finite values; None when there are none (nothing was computed)."""
    values = values[values.isfinite()]
    return float(values.mean()) if values.numel() else None


def token_means(tokens: dict[str, list[torch.Tensor]], dist: Dist = SINGLE) -> dict:
    """Each per-token statistic's mean over the finite values of every process's tokens
    (one mean over all of them, as a single process computes it); None where there are
    none."""
    sums = torch.zeros(len(tokens), 2, dtype=torch.float64)
    for i, values in enumerate(tokens.values()):
        values = torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)
        values = values[values.isfinite()]
        sums[i] = torch.stack([values.sum(), torch.tensor(float(values.numel()))])
    sums = dist.sum(sums)
    return {k: float(s / n) if n else None for k, (s, n) in zip(tokens, sums.tolist(), strict=True)}


def one_step(algo, model, cfg, step, opt, sched, run: RunFolder, dist: Dist = SINGLE) -> dict:
    """Phases 1-6 of one step (module docstring); returns its checked metrics row."""
    start = time.perf_counter()
    with phase("train: rollouts and grading"), dist.gathered(model):
        batch = algo.batch(step, dist)  # 1-4
    ready = time.perf_counter()
    with phase("train: update"):
        stats = update_phase(algo, model, batch, opt, sched, cfg, dist)  # 5
        algo.after_step(model)  # the EMA teacher moves once per step, as in the reference
    done = time.perf_counter()
    sampled = dist.main and cfg.sample_every and step % cfg.sample_every == 0
    if sampled and (samples := algo.samples(batch, step)):  # 6
        run.append(SAMPLES_FILE, samples)
    row = {
        "step": step,
        **algo.row(batch),
        **stats,
        "time/update": done - ready,
        "time/step": time.perf_counter() - start,
    }
    return check_row(dist.mean_row(row), cfg.algo, cfg)


def train_loop(cfg, algo_cls, data: list) -> RunFolder:
    """Run (or resume exactly) the training run ``cfg`` describes in ``cfg.out``."""
    dist = Dist.from_env(cfg.device)
    dist.check(cfg)
    run = RunFolder(cfg.out)
    with run.lock() if dist.main else contextlib.nullcontext():
        if finished(run, cfg) is not None:
            if dist.main:
                status(f"{cfg.algo}: {cfg.steps} steps found finished in {run.path}")
            return run  # nothing to compute, so nothing to load
        cfg = core.resolve_finetune(cfg)
        dist.check(cfg)  # again: finetune auto is now resolved
        policy = core.load_training_policy(cfg)
        if (sharded := dist.shard_model(policy.model)) and dist.main:
            status(sharded)
        algo = algo_cls(cfg, policy, data)
        opt, sched = core.make_optimizer(policy.model, cfg)
        start = resume(run, cfg, policy.model, opt, sched, algo, dist)
        total = algo.steps()
        bar = tqdm(
            range(start, total),
            desc=f"{cfg.algo} steps",
            initial=start,
            total=total,
            disable=not dist.main,
        )
        for step in bar:
            try:
                row = one_step(algo, policy.model, cfg, step, opt, sched, run, dist)
            except NonFiniteUpdate as err:
                kept = run.latest()
                last = f"last checkpoint: step {kept[0]}" if kept else "no checkpoint yet"
                raise NonFiniteUpdate(
                    f"{cfg.algo} step {step}: {err}; the run stops with nothing of this step "
                    f"written ({last}): lower lr or raise warmup_steps, then rerun on {cfg.out}"
                ) from None
            if dist.main:
                run.append(METRICS_FILE, [row])
                log_row(cfg, run, row)
            if (step + 1) % cfg.save_every == 0 or step + 1 == total:
                with phase("train: checkpoints"):
                    save_checkpoint(run, step + 1, policy.model, opt, sched, algo, dist)
        if dist.main:
            done = {"steps": total, "requested_steps": cfg.steps}
            write_atomic(run.file(DONE_FILE), json.dumps(done))
    return run


def finished(run: RunFolder, cfg) -> Path | None:
    """The final checkpoint of a finished run, verified; None when there is work left
    (never run, interrupted, more steps asked for, or the final checkpoint is damaged)."""
    try:
        done = json.loads(run.file(DONE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    found = run.latest()
    if done.get("requested_steps") != cfg.steps or found is None or found[0] != done["steps"]:
        return None
    if intact_steps(run) < done["steps"]:  # a row lost, repeated or garbled: redo from there
        return None
    return found[1]


def intact_steps(run: RunFolder) -> int:
    """How many steps from the first have whole rows on disk: metrics rows 0, 1, 2, ...
    each once; the step of a garbled line in either file, or of a sample row written twice,
    ends the count there."""
    metrics, samples = run.read(METRICS_FILE), run.read(SAMPLES_FILE)
    whole = next(
        (i for i, r in enumerate(metrics[: metrics.intact]) if r.get("step") != i), metrics.intact
    )
    # a repeated or out-of-order row, or rows after a garbled line: redo from the least step
    later = [r.get("step") for r in metrics[whole:]]
    whole = min([whole, *(step for step in later if isinstance(step, int))])
    if samples.damaged:  # the step of the last good row before the damage may be partial
        whole = min(whole, samples[samples.intact - 1]["step"] if samples.intact else 0)
    seen = set()
    for r in samples:
        name = (r.get("step"), r.get("sample"))
        if name in seen:
            whole = min(whole, r["step"] if isinstance(r.get("step"), int) else 0)
            break
        seen.add(name)
    return whole


# ---------------------------------------------------------------------------------------
# Resume and checkpoints


def resume(run: RunFolder, cfg, model, opt, sched, algo, dist: Dist = SINGLE) -> int:
    """The first step to compute: that of the newest intact checkpoint no later than the
    rows on disk, whose state is loaded; rows after it are dropped (they are recomputed)."""
    if dist.main:
        check_params(run, cfg)
    whole = intact_steps(run)
    found = run.latest(at_most=whole)
    start = 0
    if found is not None:
        start, folder = found
        load_checkpoint(run, folder, model, opt, sched, algo, dist)
    if dist.main:
        for name in (METRICS_FILE, SAMPLES_FILE):
            run.truncate(name, start)
    return start


def check_params(run: RunFolder, cfg) -> None:
    """Write params.yaml; a folder that holds work must have been run with the same ones."""
    saved = run.file("params.yaml")
    has_work = bool(run.checkpoints()) or bool(run.read(METRICS_FILE))
    if saved.exists() and has_work:
        before = {**TRAIN_ADDED, **(read_yaml(saved.read_text(), str(saved)) or {})}
        changed = sorted(
            k for k, v in vars(cfg).items() if k not in RESUMABLE and before.get(k) != v
        )
        if changed:
            raise ConfigError(
                f"{run.path} holds a run with other parameters ({', '.join(changed)}); "
                f"use a new out folder, or the same parameters to resume"
            )
    save(cfg, saved)


def trainable_state(model, dist: Dist = SINGLE) -> dict[str, torch.Tensor]:
    """The trainable weights, whole (gathered from the processes' shards under FSDP)."""
    return {
        n: dist.whole(p.detach()).clone() for n, p in model.named_parameters() if p.requires_grad
    }


def save_checkpoint(run: RunFolder, step: int, model, opt, sched, algo, dist: Dist = SINGLE):
    """The weights for eval and vLLM (a peft adapter, or the whole model) plus everything
    exact resumption needs: trainable weights (and float32 masters), optimizer and
    scheduler, RNG states, the algorithm's state. Every process takes part (FSDP gathers
    the shards: the checkpoint is the single-process one); the main one writes it."""
    masters = opt.masters if isinstance(opt, core.MasterAdamW) else []
    trainable, weights = trainable_state(model, dist), None
    if dist.fsdp:  # peft and transformers save what they are handed, not the shards
        lora = hasattr(model, "peft_config")  # the adapter: its weights are the trainable
        weights = trainable if lora else {k: dist.whole(v) for k, v in model.state_dict().items()}
    state = {
        "step": step,
        "trainable": trainable,
        "masters": [dist.whole(m.detach()) for m in masters],
        "optimizer": _whole_state(opt.state_dict(), dist),
        "scheduler": sched.state_dict(),
        "rng": {
            "python": random.getstate(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
        "algo": algo.state(),
    }
    if not dist.main:
        return None
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten(state, tensors)
    return run.save_checkpoint(step, model, tensors, skeleton, weights)


def _whole_state(value, dist: Dist):
    """An optimizer's state dict with its sharded tensors gathered (the same order in
    every process: the collectives pair)."""
    if isinstance(value, dict):
        return {k: _whole_state(v, dist) for k, v in value.items()}
    return dist.whole(value) if isinstance(value, torch.Tensor) else value


def load_checkpoint(run: RunFolder, folder, model, opt, sched, algo, dist: Dist = SINGLE) -> dict:
    tensors, skeleton = run.load_checkpoint(folder)
    state = unflatten(skeleton, tensors)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["trainable"].items():
            params[name].copy_(dist.like(value, params[name]))
    if isinstance(opt, core.MasterAdamW):
        masters = zip(state["masters"], opt.masters, strict=True)
        opt.load_masters([dist.like(value, m) for value, m in masters])
    opt.load_state_dict(state["optimizer"])
    for group in opt.param_groups:  # FSDP: each process keeps its shard of the moments
        for p in group["params"]:
            for k, v in opt.state.get(p, {}).items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape:
                    opt.state[p][k] = dist.like(v, p)
    sched.load_state_dict(state["scheduler"])
    random.setstate(state["rng"]["python"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    algo.load_state(state["algo"])
    return state


def log_row(cfg, run: RunFolder, row: dict) -> None:
    """Stream a metrics row to the trackers named in ``cfg.log_to`` (``LOGGERS``)."""
    from sdlib.train.trackers import tracker

    for name in cfg.log_to:
        tracker(name, run.path, cfg).log(row)
