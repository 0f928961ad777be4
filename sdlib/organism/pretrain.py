"""Pretraining from scratch: length-bucketed token-budget batches, loss on trained tokens.

Batches: documents are shuffled, cut into pools of ``POOL`` batches' worth, each pool is
sorted by length and cut into batches of at most ``batch_tokens`` tokens (rows x longest
row), and all batches are shuffled. Rows are right-padded and no attention mask is
passed: with causal attention a real token never sees the padding after it, so the fast
``is_causal`` kernel serves, and padding stays a few percent of the tokens.

Loss: mean cross-entropy over trained target tokens, computed on their hidden states only
(the LM head never runs on prompts or padding):

    L = -1/|S| sum_{(i,t) in S} log p(ids[i, t+1] | ids[i, <=t]),  S = trained next tokens

AdamW (betas 0.9/0.95, weight decay on matrices only), linear warm-up then cosine decay
to ``lr_min_ratio * lr``, gradients clipped at 1.0, optional bf16 autocast (weights stay
fp32). Everything is seeded, so one config, seed and thread count give the same weights.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

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
    bf16: bool = True
    seed: int = 0


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
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        hidden = model.model(input_ids=inputs).last_hidden_state  # [B, T, H]
        keep = targets != IGNORE
        logits = model.lm_head(hidden[keep])  # [N, V]
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def _optimizer(model, s: Schedule) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": rest}]
    return torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, 0.95), weight_decay=0.0)


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
    opt = _optimizer(model, s)
    model.train()
    tokens = int(lengths.sum())
    bar = tqdm(total=tokens, unit="tok", unit_scale=True, desc="pretrain", disable=not progress)
    start, seen, smooth = time.perf_counter(), 0, None
    for step, rows in enumerate(batches):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, len(batches), s)
        inputs, targets = collate(data, rows, pad)
        loss = loss_on(model, inputs, targets, s.bf16)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        n = int(lengths[rows].sum())
        seen += n
        smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
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
        "final_loss": round(smooth or float("nan"), 4),
    }
