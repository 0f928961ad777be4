"""The language-model head applied in chunks of tokens, never as a whole [N, V] tensor.

Every loss of the study needs only a few numbers per response token from each model's
next-token distribution softmax((h W^T + b) / T): the student's top-k token indices, the
log-probs there, the log of the mass outside them (the tail bucket), the sampled token's
log-prob and the entropy. ``student_head_stats`` computes them ``chunk_size`` tokens at a
time inside a custom autograd function whose backward recomputes each chunk's logits, so
the extra memory is a few [chunk, V] buffers; ``teacher_head_stats`` does the same without
gradient at given indices. ``Head`` bundles the weights with how they are applied (rollout
temperature, chunk size), so a trainer passes one object.

SDPO's distillation with a frozen head (LoRA), ``Head.distill``, is fused: both models'
logits of a chunk are reduced in one pass each into buffers reused across chunks, the
divergence's gradient in the student's hidden state is taken there and then, and the
backward only scales it, so no chunk's logits are computed twice.
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


# Below this many smallest normals a tail mass summed from exp(z - max) may have lost
# underflowed terms; such rows take the exact logsumexp instead.
TAIL_FLOOR = 2.0**24


class _Workspace:
    """The [C, V] buffers a fused call reuses for every chunk. A buffer allocated per chunk
    is fresh memory from the system each time (far beyond what malloc keeps), and its page
    faults cost more than the arithmetic done on it."""

    def __init__(self, rows: int, weight: Tensor, dtype: torch.dtype):
        self.logits = weight.new_empty((rows, weight.shape[0]), dtype=dtype)
        self.p = torch.empty_like(self.logits)
        self.narrow = (
            None if weight.dtype == dtype else torch.empty_like(self.logits, dtype=weight.dtype)
        )

    def scores(self, hidden: Tensor, weight: Tensor, bias: Tensor | None, temperature: float):
        """(hidden W^T + b) / T in the compute dtype, rounded as ``chunk_logits``: [C, V]."""
        c = hidden.shape[0]
        out = self.logits[:c]
        target = out if self.narrow is None else self.narrow[:c]
        if bias is None:
            torch.mm(hidden, weight.T, out=target)
        else:
            torch.addmm(bias, hidden, weight.T, out=target)
        if self.narrow is not None:
            out.copy_(target)
        return out.div_(temperature) if temperature != 1.0 else out

    def in_weight_dtype(self, grad: Tensor) -> Tensor:
        return grad if self.narrow is None else self.narrow[: grad.shape[0]].copy_(grad)


def _student_chunk(z: Tensor, p: Tensor, tokens: Tensor, k: int):
    """Student stats of one chunk from its logits ``z`` [C, V] (left as z - max) and, in
    ``p``, exp(z - max) with the top-k zeroed: (HeadStats, mass, total, top_p), where mass
    and total sum exp(z - max) outside the top-k and over everything, top_p at the top-k.
    No log-probs are materialized: log p = z - max - log total."""
    zm = z.sub_(z.amax(-1, keepdim=True))
    index = zm.topk(k, dim=-1).indices
    torch.exp(zm, out=p)
    dot = (p.unsqueeze(-2) @ zm.unsqueeze(-1)).flatten()  # sum exp(z - max) (z - max)
    top_p = p.gather(-1, index)
    mass = p.scatter_(-1, index, 0.0).sum(-1)  # positive terms only: no cancellation
    total = mass + top_p.sum(-1)
    log_total = total.log()
    stats = HeadStats(
        index,
        zm.gather(-1, index) - log_total.unsqueeze(-1),
        mass.log() - log_total,
        zm.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - log_total,
        log_total - dot / total,  # H = -sum p log p
    )
    return stats, mass, total, top_p


def _teacher_chunk(z: Tensor, index: Tensor, tokens: Tensor):
    """The teacher's stats at the student's top-k from its logits ``z`` (overwritten):
    (HeadStats without entropy, mass outside the top-k)."""
    zm = z.sub_(z.amax(-1, keepdim=True))
    top, token = zm.gather(-1, index), zm.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    mass = zm.exp_().scatter_(-1, index, 0.0).sum(-1)
    log_total = (mass + top.exp().sum(-1)).log()
    tail = mass.log() - log_total
    return HeadStats(index, top - log_total.unsqueeze(-1), tail, token - log_total), mass


def _exact_tails(stats: HeadStats, mass: Tensor, hidden: Tensor, tokens: Tensor, head):
    """Rows whose tail mass may have underflowed get the exact logsumexp tail (their
    logits recomputed: such rows are rare). Returns those rows and their log-probs [r, V]
    with -inf on the top-k."""
    low = (mass < TAIL_FLOOR * torch.finfo(mass.dtype).tiny).nonzero().squeeze(1)
    if not low.numel():
        return low, None
    logp = chunk_logits(hidden[low], *head)
    stats.tail_logp[low] = _reduce_chunk(logp, tokens[low], 0, stats.topk_index[low], False)[2]
    return low, logp


class _FusedDistillation(torch.autograd.Function):
    """A per-token divergence D(student || teacher) over the student's top-k and the tail
    from both models' hidden states, with its gradient in the student's hidden state
    computed in the same pass over each chunk's logits: the backward only scales the kept
    [N, H] gradient by the upstream one, so no chunk's logits are computed twice. For a
    frozen head (LoRA): the head's own gradient would need each token's upstream weight,
    which is not known until the loss is aggregated (``Head.distill`` falls back there)."""

    @staticmethod
    def forward(ctx, hidden, teacher_hidden, weight, bias, teacher_weight, teacher_bias, tokens,
                k, temperature, chunk_size, divergence, want_grad):  # fmt: skip
        n, dtype = hidden.shape[0], compute_dtype(hidden.dtype)
        out = [hidden.new_zeros(n, dtype=dtype) for _ in range(3)]  # D, token_logp, entropy
        grad_h = torch.zeros_like(hidden) if want_grad else None
        ws, head = _Workspace(min(n, chunk_size), weight, dtype), (weight, bias, temperature)
        t_head = (teacher_weight, teacher_bias, temperature)
        for rows in chunks(n, chunk_size):
            h, tok, t_h = hidden[rows], tokens[rows], teacher_hidden[rows]
            p = ws.p[: h.shape[0]]
            st, mass, total, top_p = _student_chunk(ws.scores(h, *head), p, tok, k)
            tt, t_mass = _teacher_chunk(ws.scores(t_h, *t_head), st.topk_index, tok)
            low, low_logp = _exact_tails(st, mass, h, tok, head)
            _exact_tails(tt, t_mass, t_h, tok, t_head)
            with torch.enable_grad():
                leaves = [x.detach().requires_grad_(want_grad) for x in st[1:4]]
                d = divergence(HeadStats(st.topk_index, *leaves, st.entropy), tt)  # [C]
                grads = torch.autograd.grad(d.sum(), leaves, allow_unused=True) if want_grad else ()
            out[0][rows], out[1][rows], out[2][rows] = d.detach(), st.token_logp, st.entropy
            if want_grad:
                g = _fused_logit_grad(p, mass, total, top_p, st, tok, grads, low, low_logp)
                grad_h[rows] = ws.in_weight_dtype(g) @ weight
                if temperature != 1.0:
                    grad_h[rows] /= temperature
        ctx.save_for_backward(grad_h)
        ctx.mark_non_differentiable(out[1], out[2])
        ctx.set_materialize_grads(False)
        return tuple(out)

    @staticmethod
    def backward(ctx, grad_d, _grad_token, _grad_entropy):
        (grad_h,) = ctx.saved_tensors
        grad = None if grad_d is None else grad_h * grad_d.unsqueeze(-1).to(grad_h.dtype)
        return (grad,) + (None,) * 11


def _fused_logit_grad(p, mass, total, top_p, st: HeadStats, tokens, grads, low, low_logp):
    """d D / d logits of one chunk [C, V] from the stats' gradients, ``_logit_grad``'s
    formulas on the forward's p' = exp(z - max) (zero on the top-k), p = p' / total;
    overwrites ``p``. Outside the top-k: p_v coef + g_tail q_v with q_v = p_v / tail mass,
    that is p'_v (coef / total + g_tail / mass); at the top-k: p_i coef + g_topk_i."""
    g_topk, g_tail, g_token = (
        torch.zeros_like(x) if g is None else g for g, x in zip(grads, st[1:4], strict=True)
    )
    coef = -(g_topk.sum(-1) + g_tail + g_token)  # [C]: the weight on "- p"
    scale = coef / total + g_tail / mass.clamp(min=torch.finfo(mass.dtype).tiny)
    grad = p.mul_(scale.unsqueeze(-1))
    if low.numel():  # underflowed tails: q_v = exp(log p_v - tail), from exact log-probs
        q = (low_logp - st.tail_logp[low].unsqueeze(-1)).exp_()  # each term <= 1
        grad[low] = (
            low_logp.exp_().mul_(coef[low].unsqueeze(-1)).add_(q * g_tail[low].unsqueeze(-1))
        )
    grad.scatter_(-1, st.topk_index, (top_p / total.unsqueeze(-1)) * coef.unsqueeze(-1) + g_topk)
    return grad.scatter_add_(-1, tokens.unsqueeze(-1), g_token.unsqueeze(-1))


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

    def distill(
        self,
        hidden: Tensor,
        teacher_hidden: Tensor,
        tokens: Tensor,
        k: int,
        divergence,
        teacher_head: Head | None = None,
    ):
        """(D [N], token_logp [N], entropy [N]) of ``divergence(student, teacher)`` over the
        student's top-k and the tail, D differentiable in ``hidden``: fused, the gradient
        taken in the forward pass over each chunk (``_FusedDistillation``), where the head
        is frozen and k leaves a tail; otherwise the student's stats with a recomputing
        backward, then the teacher's. The teacher's logits come from ``teacher_head`` (this
        head when None): a teacher view may hold other output weights (full fine-tuning's
        initial copy) or several views' weights side by side (``combine``)."""
        t = self if teacher_head is None else teacher_head
        frozen = not (
            self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad)
        )
        if frozen and k < self.vocab_size and self.chunk_size is not None:
            want = torch.is_grad_enabled() and hidden.requires_grad
            detach = lambda x: None if x is None else x.detach()  # noqa: E731
            d, token, entropy = _FusedDistillation.apply(
                hidden, teacher_hidden.detach(), self.weight.detach(), detach(self.bias),
                t.weight.detach(), detach(t.bias), tokens, k,
                self.temperature, self.chunk_size, divergence, want,
            )  # fmt: skip
            return d, token, entropy
        st = self.student(hidden, tokens, k, with_entropy=True)
        tt = t.teacher(teacher_hidden, tokens, st.topk_index)
        return divergence(st, tt), st.token_logp.detach(), st.entropy.detach()

    def log_probs(self, hidden: Tensor) -> Tensor:
        """Whole log-probs of a chunk [C, V] in the compute dtype (for full-vocabulary losses)."""
        return chunk_logits(hidden, self.weight, self.bias, self.temperature).log_softmax(-1)


def combine(parts: list[tuple[float, Tensor, Head]]) -> tuple[Tensor, Head]:
    """One teacher from several views of it: hidden states and a head whose logits are
    sum_j c_j (h_j W_j^T + b_j), for ``parts`` = [(c_j, h_j [N, H], head_j)], detached.

    Views that share their output weights (LoRA: the head is never adapted) combine their
    hidden states, sum_j c_j h_j, with that head (its bias scaled by sum_j c_j); views with
    different output weights (full fine-tuning with a trained head) are put side by side:
    hidden [c_1 h_1, c_2 h_2, ...] [N, jH] against the weights [W_1, W_2, ...] [V, jH]. The
    logits are the same either way; the first costs no memory."""
    first = parts[0][2]
    if all(head.weight is first.weight and head.bias is first.bias for _, _, head in parts):
        total = sum(c for c, _, _ in parts)
        single = len(parts) == 1 and total == 1.0
        hidden = parts[0][1] if single else sum(c * h for c, h, _ in parts)
        weight, bias = first.weight, first.bias
        if bias is not None and total != 1.0:
            bias = bias * total
    else:
        hidden = torch.cat([c * h for c, h, _ in parts], dim=-1)
        weight = torch.cat([head.weight for _, _, head in parts], dim=-1)
        biases = [c * head.bias for c, _, head in parts if head.bias is not None]
        bias = sum(biases) if biases else None
    bias = None if bias is None else bias.detach()
    return hidden.detach(), first._replace(weight=weight.detach(), bias=bias)
