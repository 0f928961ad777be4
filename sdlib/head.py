"""The language-model head applied in chunks of tokens, never as a whole [N, V] tensor.

Every loss of the study needs only a few numbers per response token from each model's
next-token distribution softmax((h W^T + b) / T): the student's top-k token indices, the
log-probs there, the log of the mass outside them (the tail bucket), the sampled token's
log-prob and the entropy. ``student_head_stats`` computes them ``chunk_size`` tokens at a
time inside a custom autograd function whose backward recomputes each chunk's logits, so
the extra memory is a few [chunk, V] buffers; ``teacher_head_stats`` does the same without
gradient at given indices. ``Head`` bundles the weights with how they are applied (rollout
temperature, chunk size), so a trainer passes one object.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def complement_logsumexp(values: Tensor, index: Tensor) -> Tensor:
    """logsumexp of ``values`` over the last dim, leaving out ``index``; -inf if nothing is left.

    Shapes: values [..., V], index [..., k] -> [...]. Differentiable; never in place.
    """
    if index.shape[-1] >= values.shape[-1]:
        return values.new_full(values.shape[:-1], -math.inf)
    return torch.logsumexp(values.scatter(-1, index, -math.inf), -1)


class HeadStats(NamedTuple):
    """What the losses need from one model's next-token distribution, per selected token.

    topk_index [N, k] (int64, the student's top-k), topk_logp [N, k], tail_logp [N]
    (log of the mass outside topk_index), token_logp [N] (sampled token), entropy [N] or
    None. Log-probs are float32 (float64 for float64 inputs), whatever the hidden dtype.
    """

    topk_index: Tensor
    topk_logp: Tensor
    tail_logp: Tensor
    token_logp: Tensor
    entropy: Tensor | None = None


def chunks(n: int, chunk_size: int | None) -> list[slice]:
    size = max(n, 1) if chunk_size is None else chunk_size
    return [slice(start, start + size) for start in range(0, n, size)]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def chunk_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, temperature: float):
    """Logits of one chunk in the compute dtype, owned by the caller (safe to modify)."""
    logits = F.linear(hidden, weight, bias)  # [C, V]
    logits = logits.to(compute_dtype(logits.dtype))
    return logits.div_(temperature) if temperature != 1.0 else logits


def _reduce_chunk(
    logits: Tensor, tokens: Tensor, k: int, index: Tensor | None, with_entropy: bool
) -> tuple[Tensor, ...]:
    """Reduce one chunk of logits [C, V] to per-token stats; overwrites ``logits``.

    Returns index [C, k], topk_logp [C, k], tail_logp [C], token_logp [C], entropy [C]
    (or None) and lse [C] = logsumexp over the vocabulary.
    """
    lse = torch.logsumexp(logits, -1)  # [C]
    logp = logits.sub_(lse.unsqueeze(-1))  # [C, V], in place
    if index is None:
        index = logp.topk(k, dim=-1).indices  # [C, k]
    topk_logp = logp.gather(-1, index)
    token_logp = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        # H = -sum_v p_v log p_v as a batched dot product, to avoid another [C, V] buffer.
        entropy = -(logp.exp().unsqueeze(-2) @ logp.unsqueeze(-1)).flatten()
    if index.shape[-1] < logp.shape[-1]:
        tail_logp = torch.logsumexp(logp.scatter_(-1, index, -math.inf), -1)
    else:
        tail_logp = torch.full_like(lse, -math.inf)
    return index, topk_logp, tail_logp, token_logp, entropy, lse


class _ChunkSaved(NamedTuple):
    index: Tensor  # [C, k]
    tokens: Tensor  # [C]
    lse: Tensor  # [C]
    tail: Tensor  # [C]
    entropy: Tensor | None  # [C]


class _ChunkGrads(NamedTuple):
    topk: Tensor | None  # [C, k]
    tail: Tensor | None  # [C]
    token: Tensor | None  # [C]
    entropy: Tensor | None  # [C]


def _rows(values: tuple, rows: slice) -> list:
    return [None if value is None else value[rows] for value in values]


def _logit_grad(logits: Tensor, saved: _ChunkSaved, grads: _ChunkGrads) -> Tensor:
    """d loss / d logits for one chunk [C, V]; overwrites ``logits``, at most 3 [C, V] buffers.

    With p = softmax(z), q the softmax restricted to the complement of the top-k
    (q_v = exp(log p_v - tail), 0 on the top-k) and e_v the one-hot of token v:
        d topk_logp_i / dz = e_{index_i} - p      d tail / dz = q - p
        d token_logp / dz = e_y - p               d entropy / dz = -p (log p + H)
    """
    logp = logits.sub_(saved.lse.unsqueeze(-1))  # [C, V]
    coef = torch.zeros_like(saved.lse)  # [C]: minus the total weight on "- p"
    for grad in (grads.topk, grads.tail, grads.token):
        if grad is not None:
            coef -= grad.sum(-1) if grad.dim() == 2 else grad
    coef = coef.unsqueeze(-1)  # [C, 1]
    tail_part = None
    if grads.tail is not None and saved.index.shape[-1] < logp.shape[-1]:
        tail_part = (logp - saved.tail.unsqueeze(-1)).exp_()  # [C, V]
        tail_part.scatter_(-1, saved.index, 0.0).mul_(grads.tail.unsqueeze(-1))
    if grads.entropy is not None:
        coef = (logp + saved.entropy.unsqueeze(-1)).mul_(-grads.entropy.unsqueeze(-1)).add_(coef)
    grad = logp.exp_().mul_(coef)  # [C, V]
    if tail_part is not None:
        grad.add_(tail_part)
    if grads.topk is not None:
        grad.scatter_add_(-1, saved.index, grads.topk)
    if grads.token is not None:
        grad.scatter_add_(-1, saved.tokens.unsqueeze(-1), grads.token.unsqueeze(-1))
    return grad


class _ChunkedHead(torch.autograd.Function):
    """Student head stats computed chunk by chunk; the backward recomputes each chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, tokens, k, temperature, chunk_size, with_entropy):
        ctx.set_materialize_grads(False)
        n, dtype = hidden.shape[0], compute_dtype(hidden.dtype)
        index = torch.empty((n, k), dtype=torch.long, device=hidden.device)
        topk_logp = torch.empty((n, k), dtype=dtype, device=hidden.device)
        tail, token, lse, entropy = (hidden.new_zeros(n, dtype=dtype) for _ in range(4))
        for rows in chunks(n, chunk_size):
            logits = chunk_logits(hidden[rows], weight, bias, temperature)  # [C, V]
            out = _reduce_chunk(logits, tokens[rows], k, None, with_entropy)
            index[rows], topk_logp[rows], tail[rows], token[rows] = out[:4]
            lse[rows] = out[5]
            if with_entropy:
                entropy[rows] = out[4]
            del logits, out  # free this chunk before the next one is allocated
        ctx.save_for_backward(hidden, weight, bias, tokens, index, lse, tail, entropy)
        ctx.config = (temperature, chunk_size)
        ctx.mark_non_differentiable(index)
        return index, topk_logp, tail, token, entropy

    @staticmethod
    def backward(ctx, _g_index, *output_grads):
        hidden, weight, bias, tokens, index, lse, tail, entropy = ctx.saved_tensors
        temperature, chunk_size = ctx.config
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        acc = compute_dtype(weight.dtype)  # accumulate the head's gradient in fp32 at least
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=acc) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=acc) if need_b else None
        n = hidden.shape[0] if any(g is not None for g in output_grads) else 0
        for rows in chunks(n, chunk_size):
            h = hidden[rows]
            saved = _ChunkSaved(*_rows((index, tokens, lse, tail, entropy), rows))
            logits = chunk_logits(h, weight, bias, temperature)  # [C, V]
            grad = _logit_grad(logits, saved, _ChunkGrads(*_rows(output_grads, rows)))
            del logits  # now the same buffer as grad
            if temperature != 1.0:
                grad.div_(temperature)
            grad = grad.to(hidden.dtype)  # [C, V]
            if need_h:
                grad_h[rows] = grad @ weight  # [C, H]
            if need_w and grad_w.dtype == grad.dtype:
                grad_w.addmm_(grad.T, h)  # [V, H]
            elif need_w:
                grad_w.add_(grad.T @ h)
            if need_b:
                grad_b.add_(grad.sum(0))
            del grad  # free this chunk before the next one is allocated
        grad_w = None if grad_w is None else grad_w.to(weight.dtype)
        grad_b = None if grad_b is None else grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None, None, None


def _naive_student_stats(hidden, weight, tokens, k, bias, temperature, with_entropy):
    """The same stats through whole [N, V] log-probs and autograd (reference and benchmark)."""
    logits = F.linear(hidden, weight, bias)
    logp = (logits.to(compute_dtype(logits.dtype)) / temperature).log_softmax(-1)  # [N, V]
    index = logp.detach().topk(k, dim=-1).indices  # [N, k]
    entropy = -(logp.exp() * logp).sum(-1) if with_entropy else None
    token = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    tail = complement_logsumexp(logp, index)
    return HeadStats(index, logp.gather(-1, index), tail, token, entropy)


def student_head_stats(
    hidden: Tensor,
    weight: Tensor,
    tokens: Tensor,
    k: int | None = 100,
    *,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = 1024,
    with_entropy: bool = False,
) -> HeadStats:
    """Per-token stats of softmax((hidden @ weight.T + bias) / temperature), with gradients.

    For each token: the indices of its k largest logits, their log-probs, the tail
    log-prob log sum_{v not in top-k} p_v (exact logsumexp over the complement), the
    sampled token's log-prob and (optionally) the entropy H = -sum_v p_v log p_v.
    Gradients reach ``hidden``, ``weight`` and ``bias`` through all of them (the indices
    are constants). Logits exist only ``chunk_size`` tokens at a time: the backward
    recomputes each chunk, so the extra memory is a few chunk x V buffers plus N x k,
    at the cost of one more head matmul. ``chunk_size`` None: whole [N, V] log-probs with
    autograd (the naive reference). Select response tokens first (``select_tokens``) so
    padding costs nothing.

    Shapes: hidden [N, H], weight [V, H], bias [V], tokens [N] -> HeadStats with
    topk_index/topk_logp [N, k], the rest [N]. k None: the whole vocabulary.
    """
    k = weight.shape[0] if k is None else min(k, weight.shape[0])
    if chunk_size is None:
        return _naive_student_stats(hidden, weight, tokens, k, bias, temperature, with_entropy)
    index, topk_logp, tail, token, entropy = _ChunkedHead.apply(
        hidden, weight, bias, tokens, k, temperature, chunk_size, with_entropy
    )
    return HeadStats(index, topk_logp, tail, token, entropy if with_entropy else None)


@torch.no_grad()
def teacher_head_stats(
    hidden: Tensor,
    weight: Tensor,
    tokens: Tensor,
    topk_index: Tensor,
    *,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = 1024,
    with_entropy: bool = False,
) -> HeadStats:
    """The teacher's stats at the student's top-k indices, without gradient.

    Same quantities as ``student_head_stats`` with the indices given: teacher log-probs
    gathered at ``topk_index``, the teacher's own mass outside those indices, its log-prob
    of the sampled token and entropy. Shapes: hidden [N, H], weight [V, H], tokens [N],
    topk_index [N, k] -> HeadStats. ``chunk_size`` None: one chunk of all N tokens.
    """
    n, k = hidden.shape[0], topk_index.shape[-1]
    pieces = []
    for rows in chunks(n, chunk_size):
        logits = chunk_logits(hidden[rows], weight, bias, temperature)  # [C, V]
        pieces.append(_reduce_chunk(logits, tokens[rows], k, topk_index[rows], with_entropy)[:5])
        del logits
    if not pieces:
        empty = hidden.new_empty(0, dtype=compute_dtype(hidden.dtype))
        return HeadStats(
            topk_index, empty.reshape(0, k), empty, empty, empty if with_entropy else None
        )
    index, topk_logp, tail, token, entropy = zip(*pieces, strict=True)
    return HeadStats(
        topk_index,
        torch.cat(topk_logp),
        torch.cat(tail),
        torch.cat(token),
        torch.cat(entropy) if with_entropy else None,
    )


class Head(NamedTuple):
    """A model's output layer and how the losses apply it: scores at ``temperature``, the
    rollout temperature, so pi / pi_old starts at 1; logits ``chunk_size`` tokens at a time."""

    weight: Tensor  # [V, H]
    bias: Tensor | None = None  # [V]
    temperature: float = 1.0
    chunk_size: int | None = 1024

    @property
    def vocab_size(self) -> int:
        return self.weight.shape[0]

    def student(self, hidden: Tensor, tokens: Tensor, k: int | None = 1, **kw) -> HeadStats:
        """``student_head_stats`` with this head (gradients flow)."""
        return student_head_stats(
            hidden,
            self.weight,
            tokens,
            k,
            bias=self.bias,
            temperature=self.temperature,
            chunk_size=self.chunk_size,
            **kw,
        )

    def teacher(self, hidden: Tensor, tokens: Tensor, index: Tensor, **kw) -> HeadStats:
        """``teacher_head_stats`` with this head (no gradient)."""
        return teacher_head_stats(
            hidden,
            self.weight,
            tokens,
            index,
            bias=self.bias,
            temperature=self.temperature,
            chunk_size=self.chunk_size,
            **kw,
        )

    def log_probs(self, hidden: Tensor) -> Tensor:
        """Whole log-probs of a chunk [C, V] in the compute dtype (for full-vocabulary losses)."""
        return chunk_logits(hidden, self.weight, self.bias, self.temperature).log_softmax(-1)
