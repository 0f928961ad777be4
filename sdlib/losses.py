"""Losses of the study as small pure tensor functions.

Distillation (SDPO): the generalized JSD between student and teacher next-token
distributions, over the full vocabulary, over the student's top-k tokens plus one tail
bucket (or top-k renormalised), or on the sampled token only. Policy gradient (GRPO): group
advantages and the clipped surrogate. Both: the detached importance weight and a masked
aggregation that is exact under gradient accumulation.

The language-model head is applied here in chunks of tokens (``student_head_stats``,
``teacher_head_stats``): each chunk of logits [C, V] is reduced at once to the few numbers
per token the losses need, and the backward pass recomputes it, so no [B, T, V] tensor ever
exists. Conventions:

- everything is in log-probabilities; the last dimension is the distribution (vocabulary or
  buckets), and per-token losses come back with it reduced;
- the teacher is detached inside every loss (stop-grad), whatever the caller passes;
- alpha = 0 is forward KL(teacher || student), alpha = 1 reverse KL(student || teacher), in
  between the generalized JSD with mixture m = (1 - alpha) student + alpha teacher
  (PAPER.md, "alpha convention").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

# exp(x - old) is clamped to this log-ratio range before exponentiating, as the reference
# verl code does, so a stale token cannot overflow the ratio.
LOG_RATIO_CLAMP = 20.0


# ---------------------------------------------------------------------------------------
# Divergences on log-probabilities
# ---------------------------------------------------------------------------------------


def _finite(logp: Tensor) -> Tensor:
    """Replace -inf (an empty bucket) by a huge finite negative so 0 * log 0 terms stay 0.

    The clamp passes no gradient to the replaced entries, so no NaN reaches the backward.
    """
    return logp.clamp(min=torch.finfo(logp.dtype).min / 4)


def kl(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(p || q) over the last dimension.

    KL(p || q) = sum_i p_i (log p_i - log q_i); entries with p_i = 0 contribute 0.
    Shapes: logp, logq [..., K] -> [...]. Gradients flow into both arguments.
    """
    logp, logq = _finite(logp), _finite(logq)
    return (logp.exp() * (logp - logq)).sum(-1)


def generalized_jsd(student: Tensor, teacher: Tensor, alpha: float) -> Tensor:
    """Generalized Jensen-Shannon divergence, per token, teacher detached.

    With s, t the student and teacher distributions and m = (1 - a) s + a t (mixed in log
    space: log m = logaddexp(log s + log(1 - a), log t + log a)):

        J_a = a KL(t || m) + (1 - a) KL(s || m)         for 0 < a < 1
        J_0 = KL(t || s)   (forward KL)                  J_1 = KL(s || t)   (reverse KL)

    Why the endpoints are special-cased: expanding near a = 0, m = s + a (t - s), so
    a KL(t || m) = a KL(t || s) + O(a^2) and KL(s || m) = (a^2 / 2) chi2(t || s) + O(a^3);
    likewise near a = 1. J_a itself therefore goes to 0 at both ends, and the KLs are its
    slopes there: J_a / a -> KL(t || s) and J_a / (1 - a) -> KL(s || t). The reference SDPO
    code (verl ``compute_self_distillation_loss``) uses the closed-form KLs at a in {0, 1}
    and J_a in between; so do we, so the loss scale jumps at the endpoints by the factor a
    (or 1 - a), which matters when comparing learning rates across alpha.

    Shapes: student, teacher [..., K] log-probabilities over the same K outcomes (full
    vocabulary or k+1 buckets) -> [...]. Reference: Huang et al. 2020 / SDPO (Hübotter et
    al. 2026); PAPER.md alpha convention.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    teacher = teacher.detach()
    if alpha == 0.0:
        return kl(teacher, student)
    if alpha == 1.0:
        return kl(student, teacher)
    student, teacher = _finite(student), _finite(teacher)
    mixture = torch.logaddexp(student + math.log1p(-alpha), teacher + math.log(alpha))
    return alpha * kl(teacher, mixture) + (1.0 - alpha) * kl(student, mixture)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, accurate over the whole range (Maechler 2012)."""
    near_zero = x > -math.log(2.0)
    # Each branch is evaluated only where it is accurate; the other gets a harmless value.
    small = torch.log(-torch.expm1(torch.where(near_zero, x, -1.0)))
    large = torch.log1p(-torch.exp(torch.where(near_zero, -1.0, x)))
    return torch.where(near_zero, small, large)


def tail_log_prob(topk_logp: Tensor) -> Tensor:
    """Log of the probability mass outside the top-k tokens, from their log-probs alone.

        tail = log(1 - sum_i exp(l_i)) = log1mexp(logsumexp(l))

    The top-k log-mass is clamped to <= -eps(dtype) first, as the reference clamps it to
    <= -1e-7: rounding can push the top-k mass to 1, and the tail then stays tiny but
    finite. When the whole-vocabulary logits are at hand, ``topk_buckets`` and the head
    stats compute the tail exactly from the complement instead.
    Shapes: [..., k] -> [...].
    """
    eps = torch.finfo(topk_logp.dtype).eps
    return _log1mexp(torch.logsumexp(topk_logp, -1).clamp(max=-eps))


def with_tail(topk_logp: Tensor, tail_logp: Tensor | None = None) -> Tensor:
    """Append the tail bucket: [..., k] (+ [...]) -> [..., k+1] log-probs summing to 1.

    ``tail_logp`` defaults to ``tail_log_prob(topk_logp)``.
    """
    if tail_logp is None:
        tail_logp = tail_log_prob(topk_logp)
    return torch.cat([topk_logp, tail_logp.unsqueeze(-1)], dim=-1)  # [..., k+1]


def renormalize(topk_logp: Tensor) -> Tensor:
    """Top-k log-probs renormalised over the k tokens: l_i - logsumexp(l). [..., k] -> [..., k]."""
    return topk_logp - torch.logsumexp(topk_logp, -1, keepdim=True)


def _complement_logsumexp(values: Tensor, index: Tensor) -> Tensor:
    """logsumexp of ``values`` over the last dim, leaving out ``index``; -inf if nothing is left.

    Shapes: values [..., V], index [..., k] -> [...]. Differentiable; never in place.
    """
    if index.shape[-1] >= values.shape[-1]:
        return values.new_full(values.shape[:-1], -math.inf)
    return torch.logsumexp(values.scatter(-1, index, -math.inf), -1)


def topk_buckets(
    student_logp: Tensor, teacher_logp: Tensor, k: int | None, tail: bool = True
) -> tuple[Tensor, Tensor]:
    """Student and teacher log-probs on the student's top-k tokens, plus a tail bucket.

    Indices are the student's top-k (no gradient through the choice); the teacher is
    gathered at the same indices and detached. With ``tail`` each side gets a (k+1)-th
    bucket log(1 - top-k mass), computed exactly as the logsumexp over the complement;
    without it both are renormalised over the k tokens. k = None means the whole vocabulary.
    Shapes: [..., V] -> ([..., k+1], [..., k+1]) (or [..., k] without tail).
    """
    k = student_logp.shape[-1] if k is None else min(k, student_logp.shape[-1])
    teacher_logp = teacher_logp.detach()
    index = student_logp.detach().topk(k, dim=-1).indices  # [..., k]
    s_top, t_top = student_logp.gather(-1, index), teacher_logp.gather(-1, index)
    if not tail:
        return renormalize(s_top), renormalize(t_top)
    s_tail = _complement_logsumexp(student_logp, index)
    t_tail = _complement_logsumexp(teacher_logp, index)
    return with_tail(s_top, s_tail), with_tail(t_top, t_tail)  # [..., k+1]


def sampled_token_kl(student_token_logp: Tensor, teacher_token_logp: Tensor) -> Tensor:
    """Single-sample reverse-KL estimator on the sampled token y ~ student.

    Value: the k1 estimate log s(y) - log t(y) (its mean over y ~ s is KL(s || t)).
    Gradient: (log s(y) - log t(y)).detach() * grad log s(y), the score-function gradient
    the reference uses (``log_ratio.detach() * student_log_probs``); its mean over y ~ s
    is grad KL(s || t). Shapes: [...] -> [...].
    """
    log_ratio = (student_token_logp - teacher_token_logp).detach()
    return log_ratio + log_ratio * (student_token_logp - student_token_logp.detach())


def importance_weight(logp: Tensor, logp_old: Tensor, is_clip: float | None = 2.0) -> Tensor:
    """Per-token importance weight, detached: w = min(exp(log pi - log pi_old), is_clip).

    The log-ratio is clamped to +-20 before exp (as in verl). ``is_clip`` None: no clip.
    Shapes: [...] -> [...]; the result never carries a gradient.
    """
    with torch.no_grad():
        weight = (logp - logp_old).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp()
        return weight if is_clip is None else weight.clamp(max=is_clip)


# ---------------------------------------------------------------------------------------
# GRPO
# ---------------------------------------------------------------------------------------


def group_advantages(
    rewards: Tensor,
    group_ids: Tensor | None = None,
    std_normalize: bool = False,
    eps: float = 1e-6,
) -> Tensor:
    """Group-relative advantages: A_i = r_i - mean_{j in g(i)} r_j, optionally / (std_g + eps).

    ``rewards`` is [G, n] (one group per row) or flat [N] with integer ``group_ids`` [N].
    std is the unbiased one (as torch.std, verl); a group of one gets advantage 0 (verl
    instead passes its raw reward). The paper's GRPO runs use no std division.
    Shapes: same as ``rewards``.
    """
    flat = rewards.reshape(-1).to(torch.float64)
    if group_ids is None:
        if rewards.dim() != 2:
            raise ValueError("rewards must be [G, n] when no group_ids are given")
        group_ids = torch.arange(rewards.shape[0], device=rewards.device)
        group_ids = group_ids.repeat_interleave(rewards.shape[1])
    _, inverse = torch.unique(group_ids.reshape(-1), return_inverse=True)  # [N]
    count = torch.bincount(inverse).to(flat)  # [G]
    mean = torch.zeros_like(count).index_add_(0, inverse, flat) / count
    centred = flat - mean[inverse]
    if std_normalize:
        var = torch.zeros_like(count).index_add_(0, inverse, centred.square())
        std = (var / (count - 1).clamp(min=1)).sqrt()
        centred = centred / (std[inverse] + eps)
    return centred.to(rewards.dtype).reshape(rewards.shape)


def clipped_surrogate(
    logp: Tensor,
    logp_old: Tensor,
    advantages: Tensor,
    mask: Tensor | None = None,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    dual_clip: float | None = None,
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token PPO/GRPO clipped surrogate (to minimise) and its clip statistics.

        r = exp(log pi - log pi_old)
        L = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))
        dual clip c > 1 (Ye et al. 2020): L = min(L, -A c) where A < 0
        entropy bonus: L - entropy_coef * H

    Shapes: logp, logp_old [B, T]; advantages [B] (one per sequence) or [B, T]; mask
    [B, T] (statistics only; aggregate the loss with ``aggregate``). Returns the per-token
    loss [B, T] and detached scalar statistics: clip_frac (either bound active),
    clip_frac_low, clip_frac_high, dual_clip_frac, ratio_mean.
    """
    if advantages.dim() == logp.dim() - 1:
        advantages = advantages.unsqueeze(-1)  # [B, 1]
    ratio = (logp - logp_old).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    loss = torch.maximum(unclipped, clipped)
    dual_active = torch.zeros_like(loss, dtype=torch.bool)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        dual_active = (advantages < 0) & (loss > -advantages * dual_clip)
        loss = torch.where(dual_active, -advantages * dual_clip, loss)
    if entropy is not None and entropy_coef:
        loss = loss - entropy_coef * entropy
    mask = torch.ones_like(logp, dtype=torch.bool) if mask is None else mask.bool()
    with torch.no_grad():
        stats = {
            "clip_frac": _masked_mean((clipped > unclipped).to(logp), mask),
            "clip_frac_low": _masked_mean(
                ((ratio < 1 - eps_low) & (advantages < 0)).to(logp), mask
            ),
            "clip_frac_high": _masked_mean(
                ((ratio > 1 + eps_high) & (advantages > 0)).to(logp), mask
            ),
            "dual_clip_frac": _masked_mean(dual_active.to(logp), mask),
            "ratio_mean": _masked_mean(ratio, mask),
        }
    return loss, stats


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask, values, 0).sum() / mask.sum().clamp(min=1)


# ---------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------


def _token_mean_total(values: Tensor, mask: Tensor) -> Tensor:
    return values.sum()


def _seq_mean_token_mean_total(values: Tensor, mask: Tensor) -> Tensor:
    return (values.sum(-1) / mask.sum(-1).clamp(min=1)).sum()


def _seq_mean_token_sum_total(values: Tensor, mask: Tensor) -> Tensor:
    return values.sum()


# mode -> (numerator over a batch, what the numerator is divided by)
AGGREGATIONS: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], str]] = {
    "token-mean": (_token_mean_total, "tokens"),
    "seq-mean-token-mean": (_seq_mean_token_mean_total, "sequences"),
    "seq-mean-token-sum": (_seq_mean_token_sum_total, "sequences"),
}


def loss_normalizer(mask: Tensor, mode: str = "token-mean") -> Tensor:
    """What ``aggregate`` divides by: the number of unmasked tokens (token-mean) or of
    sequences with at least one unmasked token (seq-mean-*). Shapes: mask [B, T] -> [].

    For gradient accumulation compute it once on the whole batch and pass it to every
    micro-batch's ``aggregate``: the micro-batch losses then sum to the full-batch loss.
    """
    _, unit = AGGREGATIONS[mode]
    mask = mask.bool()
    return mask.sum() if unit == "tokens" else mask.any(-1).sum()


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    mode: str = "token-mean",
    normalizer: Tensor | float | None = None,
) -> Tensor:
    """Masked reduction of a per-token loss to a scalar.

        token-mean:          sum_{b,t} m x / N_tokens
        seq-mean-token-mean: sum_b (sum_t m x / sum_t m) / N_sequences
        seq-mean-token-sum:  sum_b sum_t m x / N_sequences

    N defaults to ``loss_normalizer(mask, mode)`` of this batch; pass the whole batch's N
    when accumulating gradients over micro-batches. Masked entries are dropped with a
    select (not multiplied by 0), so NaN or inf there cannot leak; an all-masked batch
    gives 0. Shapes: per_token, mask [B, T] -> [].
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; choose from {sorted(AGGREGATIONS)}")
    total, _ = AGGREGATIONS[mode]
    mask = mask.bool()
    if normalizer is None:
        normalizer = loss_normalizer(mask, mode)
    values = torch.where(mask, per_token, 0)
    normalizer = torch.as_tensor(normalizer, dtype=values.dtype, device=values.device)
    return total(values, mask) / normalizer.clamp(min=1)


def select_tokens(values: Tensor, mask: Tensor) -> Tensor:
    """The unmasked positions, flattened: values [B, T, ...], mask [B, T] -> [N, ...]."""
    return values[mask.bool()]


def scatter_tokens(values: Tensor, mask: Tensor) -> Tensor:
    """Inverse of ``select_tokens`` for per-token values: [N] -> [B, T], zeros elsewhere."""
    out = values.new_zeros(mask.shape)
    return out.masked_scatter(mask.bool(), values)


# ---------------------------------------------------------------------------------------
# Language-model head in chunks of tokens
# ---------------------------------------------------------------------------------------


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


def _chunks(n: int, chunk_size: int | None) -> list[slice]:
    size = max(n, 1) if chunk_size is None else chunk_size
    return [slice(start, start + size) for start in range(0, n, size)]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _chunk_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, temperature: float):
    """Logits of one chunk in the compute dtype, owned by the caller (safe to modify)."""
    logits = F.linear(hidden, weight, bias)  # [C, V]
    logits = logits.to(_compute_dtype(logits.dtype))
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
        n, dtype = hidden.shape[0], _compute_dtype(hidden.dtype)
        index = torch.empty((n, k), dtype=torch.long, device=hidden.device)
        topk_logp = torch.empty((n, k), dtype=dtype, device=hidden.device)
        tail, token, lse, entropy = (hidden.new_zeros(n, dtype=dtype) for _ in range(4))
        for rows in _chunks(n, chunk_size):
            logits = _chunk_logits(hidden[rows], weight, bias, temperature)  # [C, V]
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
        acc = _compute_dtype(weight.dtype)  # accumulate the head's gradient in fp32 at least
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=acc) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=acc) if need_b else None
        n = hidden.shape[0] if any(g is not None for g in output_grads) else 0
        for rows in _chunks(n, chunk_size):
            h = hidden[rows]
            saved = _ChunkSaved(*_rows((index, tokens, lse, tail, entropy), rows))
            logits = _chunk_logits(h, weight, bias, temperature)  # [C, V]
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
    logp = (logits.to(_compute_dtype(logits.dtype)) / temperature).log_softmax(-1)  # [N, V]
    index = logp.detach().topk(k, dim=-1).indices  # [N, k]
    entropy = -(logp.exp() * logp).sum(-1) if with_entropy else None
    token = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    tail = _complement_logsumexp(logp, index)
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
    for rows in _chunks(n, chunk_size):
        logits = _chunk_logits(hidden[rows], weight, bias, temperature)  # [C, V]
        pieces.append(_reduce_chunk(logits, tokens[rows], k, topk_index[rows], with_entropy)[:5])
        del logits
    if not pieces:
        empty = hidden.new_empty(0, dtype=_compute_dtype(hidden.dtype))
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


# ---------------------------------------------------------------------------------------
# Distillation losses on head stats
# ---------------------------------------------------------------------------------------


def distillation_buckets(
    student: HeadStats, teacher: HeadStats, tail: bool = True
) -> tuple[Tensor, Tensor]:
    """Student and teacher bucket log-probs: top-k plus tail [N, k+1], or top-k renormalised
    [N, k] when ``tail`` is False. The teacher side is detached."""
    t_topk, t_tail = teacher.topk_logp.detach(), teacher.tail_logp.detach()
    if not tail:
        return renormalize(student.topk_logp), renormalize(t_topk)
    return with_tail(student.topk_logp, student.tail_logp), with_tail(t_topk, t_tail)


def topk_tail_loss(student: HeadStats, teacher: HeadStats, alpha: float) -> Tensor:
    """Generalized JSD over the student's top-k tokens plus the tail bucket: [N]."""
    return generalized_jsd(*distillation_buckets(student, teacher, tail=True), alpha)


def topk_renorm_loss(student: HeadStats, teacher: HeadStats, alpha: float) -> Tensor:
    """Generalized JSD over the student's top-k tokens, both sides renormalised: [N]."""
    return generalized_jsd(*distillation_buckets(student, teacher, tail=False), alpha)


def sampled_token_loss(student: HeadStats, teacher: HeadStats, alpha: float) -> Tensor:
    """The single-sample reverse-KL estimator (``sampled_token_kl``); alpha must be 1: [N]."""
    if alpha != 1.0:
        raise ValueError("the sampled-token estimator is reverse KL only (alpha = 1)")
    return sampled_token_kl(student.token_logp, teacher.token_logp)


DISTILLATION_LOSSES: dict[str, Callable[[HeadStats, HeadStats, float], Tensor]] = {
    "topk-tail": topk_tail_loss,
    "topk-renorm": topk_renorm_loss,
    "sampled-token": sampled_token_loss,
}


def sdpo_token_loss(
    student: HeadStats,
    teacher: HeadStats,
    logp_old: Tensor | None = None,
    *,
    loss: str = "topk-tail",
    alpha: float = 0.5,
    is_clip: float | None = 2.0,
) -> Tensor:
    """Per-token SDPO distillation loss with its importance weight: [N].

        l_t = w_t * D_alpha(student_t, teacher_t),  w_t = min(pi(y_t) / pi_old(y_t), is_clip)

    D is ``DISTILLATION_LOSSES[loss]``; w is detached and left out when ``logp_old`` or
    ``is_clip`` is None. Defaults are the paper's (top-100 + tail, alpha 0.5, clip 2).
    """
    per_token = DISTILLATION_LOSSES[loss](student, teacher, alpha)
    if logp_old is None or is_clip is None:
        return per_token
    return per_token * importance_weight(student.token_logp, logp_old, is_clip)


def _chunk_full_jsd(h_student, h_teacher, weight, bias, t_weight, t_bias, alpha, temperature):
    logp = _chunk_logits(h_student, weight, bias, temperature).log_softmax(-1)  # [C, V]
    with torch.no_grad():
        t_logp = _chunk_logits(h_teacher, t_weight, t_bias, temperature).log_softmax(-1)
    return generalized_jsd(logp, t_logp, alpha)


def full_vocab_jsd_from_hidden(
    student_hidden: Tensor,
    teacher_hidden: Tensor,
    weight: Tensor,
    alpha: float,
    *,
    bias: Tensor | None = None,
    teacher_weight: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = 1024,
) -> Tensor:
    """Generalized JSD over the whole vocabulary, per token, from hidden states: [N].

    Each chunk of tokens is activation-checkpointed: the forward keeps only the hidden
    states, the backward recomputes that chunk's student and teacher log-probs [C, V].
    The teacher head defaults to the student's. Shapes: hidden [N, H], weight [V, H].
    """
    t_weight = weight if teacher_weight is None else teacher_weight
    t_bias = bias if teacher_weight is None else teacher_bias
    pieces = [
        checkpoint(
            _chunk_full_jsd,
            student_hidden[rows],
            teacher_hidden[rows],
            weight,
            bias,
            t_weight,
            t_bias,
            alpha,
            temperature,
            use_reentrant=False,
        )
        for rows in _chunks(student_hidden.shape[0], chunk_size)
    ]
    return torch.cat(pieces) if pieces else student_hidden.new_zeros(0)
