"""Pretraining from scratch: length-bucketed token-budget batches, loss on trained tokens.

Batches: documents are shuffled, cut into pools of ``POOL`` batches' worth, each pool is
sorted by length and cut into batches of at most ``batch_tokens`` tokens (rows x longest
row), and all batches are shuffled. Rows are right-padded and no attention mask is
passed: with causal attention a real token never sees the padding after it, so the fast
``is_causal`` kernel serves, and padding stays a few percent of the tokens.

Loss: mean cross-entropy over trained target tokens:

    L = -1/|S| sum_{(i,t) in S} log p(ids[i, t+1] | ids[i, <=t]),  S = trained next tokens

The forward is ``sdlib.llama.hidden_states`` (transformers' Llama formulas in plain tensor
ops, on the model's own weights); the head runs on every position (vocabulary ~500, so
that costs ~3% and keeps every shape static but B and T).

AdamW (betas 0.9/0.95, weight decay on matrices only), linear warm-up then cosine decay
to ``lr_min_ratio * lr``, gradients clipped at 1.0, optional bf16 autocast (weights stay
fp32). With ``compile`` the loss (forward and backward) and the clipped AdamW step run
through ``torch.compile`` (inductor: fused C++ kernels on CPU; shapes dynamic, so each
batch shape reuses one graph): ~2x the eager tokens/s on 2 cores (bench/organism_build.py),
at the price of a C++ compiler and ~40 s of compiling on a cold cache. Compiled and eager
kernels round differently, so the flag is part of the organism's key. Everything is
seeded, so one config, seed and thread count give the same weights either way.
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sdlib import llama
from sdlib.organism.corpus import Encoded
from sdlib.progress import tqdm

POOL = 64  # batches per length-sorting pool: little padding, varied neighbours
IGNORE = -100


@dataclass(frozen=True)
class Schedule:
    """Optimizer and schedule knobs of one pretraining run."""

    lr: float = 2e-3
    lr_min_ratio: float = 0.05
    warmup: int = 50
    weight_decay: float = 0.1
    batch_tokens: int = 4096
    bf16: bool = False
    seed: int = 0
    compile: bool = False


class NonFiniteLoss(FloatingPointError):
    """A pretraining step's loss was NaN or infinite: the schedule diverged."""


def compiler_missing() -> str | None:
    """Why ``torch.compile`` cannot build CPU kernels here, or None when it can."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "clang++"]
    if any(shutil.which(n) for n in names):
        return None
    return (
        f"the organism's compile: true needs a C++ compiler for torch.compile's CPU kernels "
        f"and none of {names} is on PATH: install g++ (Debian: apt install g++) or set "
        "compile: false (eager kernels; a different organism, built about 2x slower)"
    )


def make_batches(lengths, batch_tokens: int, rng: random.Random) -> list[list[int]]:
    """Document indices grouped into batches of at most ``batch_tokens`` padded tokens."""
    lengths = [int(n) for n in lengths]
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mean = max(1, sum(lengths) // max(1, len(lengths)))
    pool = POOL * max(1, batch_tokens // mean)
    batches = []
    for lo in range(0, len(order), pool):
        chunk = sorted(order[lo : lo + pool], key=lambda i: lengths[i])
        batch: list[int] = []
        for i in chunk:
            if batch and (len(batch) + 1) * lengths[i] > batch_tokens:
                batches.append(batch)
                batch = []
            batch.append(i)
        if batch:
            batches.append(batch)
    rng.shuffle(batches)
    return batches


def collate(data: Encoded, rows: list[int], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs [B, T], targets [B, T]): right-padded rows; ``targets[i, t]`` is the next
    token when the loss covers it, else ``IGNORE``."""
    spans = [(int(data.starts[r]), int(data.starts[r + 1])) for r in rows]
    width = max(hi - lo for lo, hi in spans)
    inputs = np.full((len(rows), width), pad, dtype=np.int64)
    targets = np.full((len(rows), width), IGNORE, dtype=np.int64)
    for j, (lo, hi) in enumerate(spans):
        inputs[j, : hi - lo] = data.ids[lo:hi]
        nxt = data.ids[lo + 1 : hi].astype(np.int64)
        targets[j, : hi - lo - 1] = np.where(data.trained[lo + 1 : hi], nxt, IGNORE)
    return torch.from_numpy(inputs), torch.from_numpy(targets)


def loss_on(model, inputs: torch.Tensor, targets: torch.Tensor, bf16: bool) -> torch.Tensor:
    """Mean next-token cross-entropy over the trained targets (see the module docstring)."""
    return loss_from(model, model.model.embed_tokens(inputs), targets, bf16)


def loss_from(model, x: torch.Tensor, targets: torch.Tensor, bf16: bool) -> torch.Tensor:
    """``loss_on`` from the token embeddings ``x`` [B, T, H] on: the part that is compiled.
    (The lookup stays eager: inductor's embedding backward adds rows with atomics across
    threads, so its sums, and the weights, would change from run to run.)"""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        hidden = llama.decoder(model, x)  # [B, T, H]
        logits = model.lm_head(hidden)  # [B, T, V]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> float32
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


def _optimizer(model, s: Schedule) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": rest}]
    # a tensor learning rate: the compiled step reads it, so a new rate is no new graph
    return torch.optim.AdamW(groups, lr=torch.tensor(s.lr), betas=(0.9, 0.95), weight_decay=0.0)


class Stepper:
    """One pretraining step: loss, backward, clip at 1.0, AdamW; compiled when asked."""

    def __init__(self, model, s: Schedule):
        if s.compile and not llama.supports(model):
            raise ValueError(f"compile needs a plain Llama; got {type(model).__name__}")
        self.model, self.s = model, s
        self.opt = _optimizer(model, s)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if s.compile:  # a fresh start: graphs compiled for an earlier model are not reused
            torch._dynamo.reset()
            # AdamW.step's profiler hook is skipped when traced, and dynamo says so
            logging.getLogger("torch._dynamo.variables.ctx_manager").setLevel(logging.ERROR)
        self.loss = torch.compile(loss_from, dynamic=True) if s.compile else loss_from
        self.update = torch.compile(self._update) if s.compile else self._update

    def _update(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()

    def __call__(self, step: int, total: int, inputs, targets) -> float:
        lr = lr_at(step, total, self.s)
        for group in self.opt.param_groups:
            group["lr"].fill_(lr)
        x = self.model.model.embed_tokens(inputs)  # [B, T, H]
        loss = self.loss(self.model, x, targets, self.s.bf16)
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLoss(
                f"pretraining step {step}: loss is {value} at lr {lr:.3g}; lower `lr` or raise "
                "`warmup` (nothing was saved)"
            )
        loss.backward()
        self.update()
        self.opt.zero_grad(set_to_none=True)
        return value


def lr_at(step: int, total: int, s: Schedule) -> float:
    """Linear warm-up over ``s.warmup`` steps, then cosine from lr to lr * lr_min_ratio."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    done = (step - s.warmup) / max(1, total - s.warmup)
    return s.lr * (s.lr_min_ratio + (1 - s.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * done)))


def pretrain(
    model,
    data: Encoded,
    pad: int,
    s: Schedule,
    progress: bool = True,
    on_step: Callable[[int, dict], None] | None = None,
) -> dict:
    """One pass over the corpus; returns figures: steps, tokens, seconds, tokens/s, loss."""
    lengths = data.lengths()
    batches = make_batches(lengths, s.batch_tokens, random.Random(s.seed))
    stepper = Stepper(model, s)
    model.train()
    tokens = int(lengths.sum())
    bar = tqdm(total=tokens, unit="tok", unit_scale=True, desc="pretrain", disable=not progress)
    start, seen, smooth = time.perf_counter(), 0, None
    device = next(model.parameters()).device
    for step, rows in enumerate(batches):
        inputs, targets = (x.to(device) for x in collate(data, rows, pad))
        loss = stepper(step, len(batches), inputs, targets)
        n = int(lengths[rows].sum())
        seen += n
        smooth = loss if smooth is None else 0.98 * smooth + 0.02 * loss
        bar.update(n)
        bar.set_postfix(loss=f"{smooth:.3f}", refresh=False)
        if on_step is not None:
            on_step(step, {"loss": smooth, "tokens": seen})
    bar.close()
    seconds = time.perf_counter() - start
    model.eval()
    return {
        "steps": len(batches),
        "tokens": tokens,
        "padded_tokens": int(sum(len(rows) * lengths[rows].max() for rows in batches)),
        "seconds": round(seconds, 1),
        "tokens_per_s": round(tokens / seconds),
        "threads": torch.get_num_threads(),
        "compiled": s.compile,
        "final_loss": round(smooth or float("nan"), 4),
    }
