"""Losses of the study as small pure tensor functions.

Distillation (SDPO): the generalized JSD between student and teacher next-token
distributions, over the full vocabulary, over the student's top-k tokens plus one tail
bucket (or top-k renormalised), or on the sampled token only. Policy gradient (GRPO): group
advantages and the clipped surrogate. Both: the detached importance weight and a masked
aggregation that is exact under gradient accumulation.

The losses take what ``sdlib.head`` computes from the output layer chunk by chunk (per-token
top-k, tail and token log-probs), so no [B, T, V] tensor ever exists. Each choice a config
makes among them is a key of a registry here: ``DISTILLATION_LOSSES``, ``AGGREGATIONS``.
Conventions:

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
from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from sdlib.head import Head, HeadStats, chunks, complement_logsumexp, compute_dtype

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
    s_tail = complement_logsumexp(student_logp, index)
    t_tail = complement_logsumexp(teacher_logp, index)
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
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    dual_clip: float | None = None,
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token PPO/GRPO clipped surrogate (to minimise) and, per token, its clip events.

        r = exp(log pi - log pi_old)
        L = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))
        dual clip c > 1 (Ye et al. 2020): L = min(L, -A c) where A < 0
        entropy bonus: L - entropy_coef * H

    Shapes: logp, logp_old [B, T]; advantages [B] (one per sequence) or [B, T]. Returns the
    per-token loss [B, T] (aggregate it with ``aggregate``) and detached per-token [B, T]
    statistics, to be averaged over the loss tokens by the caller: ``clip`` (the clipped
    branch is taken), ``clip_low`` (r < 1 - eps_low with A < 0), ``clip_high``
    (r > 1 + eps_high with A > 0), ``dual_clip`` (the dual bound is taken), ``ratio``.
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
    with torch.no_grad():
        stats = {
            "clip": (clipped > unclipped).to(logp),
            "clip_low": ((ratio < 1 - eps_low) & (advantages < 0)).to(logp),
            "clip_high": ((ratio > 1 + eps_high) & (advantages > 0)).to(logp),
            "dual_clip": dual_active.to(logp),
            "ratio": ratio.detach(),
        }
    return loss, stats


# ---------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------


def _token_sum(values: Tensor, sequence: Tensor) -> Tensor:
    return values.sum()


def _sequence_means(values: Tensor, sequence: Tensor) -> Tensor:
    """sum over sequences of each one's token-mean (``sequence``: each token's sequence)."""
    if values.numel() == 0:
        return values.sum()
    n = int(sequence.max()) + 1
    sums = values.new_zeros(n).index_add(0, sequence, values)
    counts = torch.bincount(sequence, minlength=n).to(values)
    return (sums / counts.clamp(min=1)).sum()


# mode -> (numerator over a batch's tokens, what the numerator is divided by)
AGGREGATIONS: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], str]] = {
    "token-mean": (_token_sum, "tokens"),
    "seq-mean-token-mean": (_sequence_means, "sequences"),
    "seq-mean-token-sum": (_token_sum, "sequences"),
}


def _aggregation(mode: str):
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; choose from {sorted(AGGREGATIONS)}")
    return AGGREGATIONS[mode]


def loss_normalizer(mask: Tensor, mode: str = "token-mean") -> Tensor:
    """What ``aggregate`` divides by: the number of unmasked tokens (token-mean) or of
    sequences with at least one unmasked token (seq-mean-*). Shapes: mask [B, T] -> [].

    For gradient accumulation compute it once on the whole batch and pass it to every
    micro-batch's ``aggregate``: the micro-batch losses then sum to the full-batch loss.
    """
    _, unit = _aggregation(mode)
    mask = mask.bool()
    return mask.sum() if unit == "tokens" else mask.any(-1).sum()


def aggregate_tokens(
    values: Tensor, sequence: Tensor, mode: str, normalizer: Tensor | float
) -> Tensor:
    """A per-token loss over the selected tokens of a batch, reduced to a scalar:

        token-mean:          sum_i x_i / N_tokens
        seq-mean-token-mean: sum_s (sum_{i in s} x_i / |s|) / N_sequences
        seq-mean-token-sum:  sum_i x_i / N_sequences

    ``sequence`` [N] numbers each token's sequence (any layout: padded rows or sequences
    packed back to back), ``normalizer`` the N of the whole mini-batch when micro-batches
    accumulate (``loss_normalizer``). Shapes: values, sequence [N] -> []."""
    total, _ = _aggregation(mode)
    normalizer = torch.as_tensor(normalizer, dtype=values.dtype, device=values.device)
    return total(values, sequence) / normalizer.clamp(min=1)


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    mode: str = "token-mean",
    normalizer: Tensor | float | None = None,
) -> Tensor:
    """``aggregate_tokens`` of a padded batch: each row is a sequence, ``mask`` its loss
    tokens. N defaults to ``loss_normalizer(mask, mode)`` of this batch. Masked entries are
    dropped with a select (not multiplied by 0), so NaN or inf there cannot leak; an
    all-masked batch gives 0. Shapes: per_token, mask [B, T] -> []."""
    mask = mask.bool()
    if normalizer is None:
        normalizer = loss_normalizer(mask, mode)
    rows = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)
    return aggregate_tokens(per_token[mask], rows[mask], mode, normalizer)


def select_tokens(values: Tensor, mask: Tensor) -> Tensor:
    """The unmasked positions, flattened: values [B, T, ...], mask [B, T] -> [N, ...]."""
    return values[mask.bool()]


def scatter_tokens(values: Tensor, mask: Tensor) -> Tensor:
    """Inverse of ``select_tokens`` for per-token values: [N] -> [B, T], zeros elsewhere."""
    out = values.new_zeros(mask.shape)
    return out.masked_scatter(mask.bool(), values)


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


class Distilled(NamedTuple):
    """Per response token: the divergence (differentiable in the student) and, detached,
    the student's log-prob of the sampled token (for the IS weight) and its entropy."""

    divergence: Tensor  # [N]
    token_logp: Tensor  # [N]
    entropy: Tensor  # [N]


def _from_head_stats(divergence: Callable[[HeadStats, HeadStats, float], Tensor], topk: bool):
    """A ``DistillLoss.compute`` that reduces both models' heads to HeadStats first."""

    def compute(student_hidden, teacher_hidden, head: Head, tokens, *, k, alpha, teacher_head=None):
        d, token, entropy = head.distill(
            student_hidden,
            teacher_hidden,
            tokens,
            k if topk else 1,
            partial(divergence, alpha=alpha),
            teacher_head,
        )
        return Distilled(d, token, entropy)

    return compute


def _full_chunk(h_student, h_teacher, head: Head, tokens, alpha, teacher_head: Head):
    logp = head.log_probs(h_student)  # [C, V]
    with torch.no_grad():
        t_logp = teacher_head.log_probs(h_teacher)
        token = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp.exp() * logp).sum(-1)
    return generalized_jsd(logp, t_logp, alpha), token, entropy


def full_vocab_distill(
    student_hidden, teacher_hidden, head: Head, tokens, *, k=None, alpha, teacher_head=None
):
    """Generalized JSD over the whole vocabulary, per token, from hidden states: Distilled.

    Each chunk of ``head.chunk_size`` tokens is activation-checkpointed: the forward keeps
    only the hidden states, the backward recomputes that chunk's log-probs [C, V], so no
    [N, V] tensor outlives its chunk. ``k`` is ignored (every token is a bucket).
    Shapes: hidden [N, H], tokens [N] -> three [N].
    """
    pieces = [
        checkpoint(
            _full_chunk,
            student_hidden[rows],
            teacher_hidden[rows],
            head,
            tokens[rows],
            alpha,
            head if teacher_head is None else teacher_head,
            use_reentrant=False,
        )
        for rows in chunks(student_hidden.shape[0], head.chunk_size)
    ]
    if not pieces:
        empty = student_hidden.new_zeros(0, dtype=compute_dtype(student_hidden.dtype))
        return Distilled(empty, empty, empty)
    return Distilled(*(torch.cat(p) for p in zip(*pieces, strict=True)))


class DistillLoss(NamedTuple):
    """One way of measuring D(student || teacher) per token; ``compute(student_hidden,
    teacher_hidden, head, tokens, k=, alpha=, teacher_head=) -> Distilled`` (the teacher's
    logits from ``teacher_head``, the student's head when None). ``uses_topk``: works on the
    student's top-k tokens (``TrainConfig.topk``); ``alpha``: the only alpha it is defined
    for, when it is restricted."""

    compute: Callable[..., Distilled]
    uses_topk: bool
    alpha: float | None = None


# The registry ``TrainConfig.distill_loss`` chooses from (its allowed values are these keys).
DISTILLATION_LOSSES: dict[str, DistillLoss] = {
    "topk-tail": DistillLoss(_from_head_stats(topk_tail_loss, topk=True), uses_topk=True),
    "topk-renorm": DistillLoss(_from_head_stats(topk_renorm_loss, topk=True), uses_topk=True),
    "sampled-token": DistillLoss(
        _from_head_stats(sampled_token_loss, topk=False), uses_topk=False, alpha=1.0
    ),
    "full": DistillLoss(full_vocab_distill, uses_topk=False),
}


def sdpo_token_loss(
    student_hidden: Tensor,
    teacher_hidden: Tensor,
    head: Head,
    tokens: Tensor,
    logp_old: Tensor | None = None,
    *,
    loss: str = "topk-tail",
    k: int = 100,
    alpha: float = 0.5,
    is_clip: float | None = 2.0,
    teacher_head: Head | None = None,
) -> tuple[Tensor, Distilled, Tensor]:
    """Per-token SDPO loss from both models' hidden states at the response positions.

        l_t = w_t * D_alpha(student_t, teacher_t),  w_t = min(pi(y_t) / pi_old(y_t), is_clip)

    D is ``DISTILLATION_LOSSES[loss]`` (top-k over the student's ``k`` largest tokens where
    it uses top-k); w is detached and is 1 when ``logp_old`` or ``is_clip`` is None.
    Defaults are the paper's (top-100 + tail, alpha 0.5, clip 2). Shapes: hidden [N, H],
    tokens and logp_old [N] -> (l [N], Distilled, w [N]).
    """
    distilled = DISTILLATION_LOSSES[loss].compute(
        student_hidden, teacher_hidden, head, tokens, k=k, alpha=alpha, teacher_head=teacher_head
    )
    if logp_old is None or is_clip is None:
        weight = torch.ones_like(distilled.divergence).detach()
    else:
        weight = importance_weight(distilled.token_logp, logp_old, is_clip)
    return weight * distilled.divergence, distilled, weight
