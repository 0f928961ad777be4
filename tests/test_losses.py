"""sdlib.losses against independent float64 references written in probability space."""

import math

import pytest
import torch

from sdlib import head as head_mod
from sdlib import losses as L
from sdlib.head import Head

ALPHAS = [0.0, 0.25, 0.5, 1.0]
KS = [1, 5, 100, None]  # None: the whole vocabulary
V, H = 500, 16


# ---------------------------------------------------------------------------------------
# Brute-force references: probabilities, float64, no log-space tricks
# ---------------------------------------------------------------------------------------


def ref_kl(p, q):
    """sum_i p_i log(p_i / q_i), with 0 log 0 = 0 (and no NaN gradient from it)."""
    support = p > 0
    p_safe, q_safe = torch.where(support, p, 1.0), torch.where(support, q, 1.0)
    return torch.where(support, p * torch.log(p_safe / q_safe), 0.0).sum(-1)


def ref_jsd(ps, pt, alpha):
    """Generalized JSD of probability vectors, endpoints as the closed-form KLs."""
    pt = pt.detach()
    if alpha == 0:
        return ref_kl(pt, ps)
    if alpha == 1:
        return ref_kl(ps, pt)
    m = (1 - alpha) * ps + alpha * pt
    return alpha * ref_kl(pt, m) + (1 - alpha) * ref_kl(ps, m)


def ref_buckets(z_student, z_teacher, k, tail):
    """Student-top-k buckets (plus the summed complement) from logits, in float64 probs."""
    ps, pt = z_student.double().softmax(-1), z_teacher.double().softmax(-1)
    k = ps.shape[-1] if k is None else k
    index = torch.argsort(z_student.detach().double(), dim=-1, descending=True)[..., :k]
    top_s, top_t = ps.gather(-1, index), pt.gather(-1, index)
    if not tail:
        return top_s / top_s.sum(-1, keepdim=True), top_t / top_t.sum(-1, keepdim=True)
    outside = torch.ones_like(ps).scatter(-1, index, 0.0)
    rest_s, rest_t = (ps * outside).sum(-1, keepdim=True), (pt * outside).sum(-1, keepdim=True)
    return torch.cat([top_s, rest_s], -1), torch.cat([top_t, rest_t], -1)


def ref_masked_mean(values, mask):
    return values[mask].sum() / max(int(mask.sum()), 1)


def close(actual, expected, rtol=1e-5, atol=1e-7):
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol)


def rand_mask(b, t, gen):
    lengths = torch.randint(1, t + 1, (b,), generator=gen)
    return torch.arange(t)[None, :] < lengths[:, None]  # [B, T]


def head_inputs(n=24, seed=0, dtype=torch.float32, bias=False, v=V):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, H, generator=gen, dtype=dtype)
    t_hidden = hidden + 0.7 * torch.randn(n, H, generator=gen, dtype=dtype)
    weight = torch.randn(v, H, generator=gen, dtype=dtype) * 0.5
    b = torch.randn(v, generator=gen, dtype=dtype) if bias else None
    tokens = torch.randint(0, v, (n,), generator=gen)
    return hidden, t_hidden, weight, b, tokens


# ---------------------------------------------------------------------------------------
# Divergences against the reference
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("tail", [True, False])
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_topk_jsd_from_log_probs_matches_reference(alpha, k, tail):
    gen = torch.Generator().manual_seed(1)
    z_s, z_t = 2 * torch.randn(3, 7, V, generator=gen), 2 * torch.randn(3, 7, V, generator=gen)
    mask = rand_mask(3, 7, gen)
    s, t = L.topk_buckets(z_s.log_softmax(-1), z_t.log_softmax(-1), k, tail)
    loss = L.aggregate(L.generalized_jsd(s, t, alpha), mask)
    expected = ref_masked_mean(ref_jsd(*ref_buckets(z_s, z_t, k, tail), alpha), mask)
    close(loss, expected)


@pytest.mark.parametrize("frozen_head", [False, True], ids=["trained-head", "frozen-head"])
@pytest.mark.parametrize("tail", [True, False])
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_sdpo_loss_from_hidden_matches_reference_values_and_grads(alpha, k, tail, frozen_head):
    # a frozen head (LoRA) takes the fused path: the gradient in the forward pass
    hidden, t_hidden, weight, _, tokens = head_inputs(seed=2)
    hidden.requires_grad_(True)
    weight.requires_grad_(not frozen_head)
    name = "topk-tail" if tail else "topk-renorm"
    per_token, _, weights = L.sdpo_token_loss(
        hidden, t_hidden, Head(weight, chunk_size=10), tokens, loss=name, k=k or V, alpha=alpha
    )
    assert torch.equal(weights, torch.ones(24))  # no old log-probs: no importance weight
    mask = torch.arange(24) % 5 != 3
    loss = L.aggregate(per_token[None], mask[None])
    loss.backward()

    h64 = hidden.detach().double().requires_grad_(True)
    w64 = weight.detach().double().requires_grad_(True)
    z_s, z_t = h64 @ w64.T, (t_hidden.double() @ w64.T).detach()
    expected = ref_masked_mean(ref_jsd(*ref_buckets(z_s, z_t, k, tail), alpha), mask)
    expected.backward()
    close(loss, expected)
    close(hidden.grad, h64.grad, rtol=1e-5, atol=1e-7)
    if not frozen_head:
        close(weight.grad, w64.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("loss", ["topk-tail", "topk-renorm", "sampled-token"])
def test_fused_distillation_matches_float64_with_weights_temperature_and_a_vanishing_tail(loss):
    # peaked rows whose mass outside the top-5 underflows float32's summed tail take the
    # exact logsumexp; importance weights and the temperature scale value and gradient
    hidden, t_hidden, weight, _, tokens = head_inputs(n=30, seed=21)
    hidden[:4] *= 60.0  # tail mass below 1e-30
    hidden.requires_grad_(True)
    alpha = 1.0 if loss == "sampled-token" else 0.5
    old = -torch.rand(30, generator=torch.Generator().manual_seed(3)) * 4
    head = Head(weight, temperature=0.7, chunk_size=7)
    per_token, distilled, w = L.sdpo_token_loss(
        hidden, t_hidden, head, tokens, old, loss=loss, k=5, alpha=alpha, is_clip=2.0
    )
    per_token.sum().backward()

    h64 = hidden.detach().double().requires_grad_(True)
    ref = L.sdpo_token_loss(
        h64, t_hidden.double(), Head(weight.double(), temperature=0.7, chunk_size=None),
        tokens, old.double(), loss=loss, k=5, alpha=alpha, is_clip=2.0,
    )[0]  # fmt: skip
    ref.sum().backward()
    assert torch.isfinite(hidden.grad).all()
    close(per_token, ref, rtol=1e-4, atol=1e-6)
    close(hidden.grad, h64.grad, rtol=1e-4, atol=1e-6)
    assert not distilled.token_logp.requires_grad and not distilled.entropy.requires_grad


def test_fused_distillation_computes_no_logits_in_the_backward(monkeypatch):
    hidden, t_hidden, weight, _, tokens = head_inputs(n=24, seed=4)
    hidden.requires_grad_(True)
    calls = []
    for owner, name in ((head_mod, "chunk_logits"), (head_mod._Workspace, "scores")):
        real = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, real=real: calls.append(1) or real(*a))
    per_token, _, _ = L.sdpo_token_loss(hidden, t_hidden, Head(weight, chunk_size=8), tokens, k=5)
    assert len(calls) == 2 * 3  # student and teacher, three chunks
    per_token.sum().backward()
    assert len(calls) == 6 and hidden.grad.abs().sum() > 0


@pytest.mark.parametrize("alpha", ALPHAS)
def test_full_vocab_jsd_matches_reference(alpha):
    gen = torch.Generator().manual_seed(3)
    z_s, z_t = torch.randn(4, 6, V, generator=gen), torch.randn(4, 6, V, generator=gen)
    expected = ref_jsd(z_s.double().softmax(-1), z_t.double().softmax(-1), alpha)
    close(L.generalized_jsd(z_s.log_softmax(-1), z_t.log_softmax(-1), alpha), expected)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_full_vocab_distill_chunked_matches_reference(alpha):
    hidden, t_hidden, weight, bias, tokens = head_inputs(seed=4, bias=True)
    params = [hidden.requires_grad_(True), weight.requires_grad_(True), bias.requires_grad_(True)]
    head = Head(weight, bias, temperature=0.8, chunk_size=5)
    out = L.full_vocab_distill(hidden, t_hidden, head, tokens, alpha=alpha)
    grads = torch.autograd.grad(out.divergence.sum(), params)
    h64, w64, b64 = (p.detach().double().requires_grad_(True) for p in params)
    z_s = (h64 @ w64.T + b64) / 0.8
    z_t = ((t_hidden.double() @ w64.T + b64) / 0.8).detach()
    expected = ref_jsd(z_s.softmax(-1), z_t.softmax(-1), alpha)
    expected_grads = torch.autograd.grad(expected.sum(), (h64, w64, b64))
    close(out.divergence, expected)
    p_s = z_s.detach().softmax(-1)
    close(out.token_logp, p_s.log().gather(-1, tokens[:, None]).squeeze(-1))
    close(out.entropy, -(p_s * p_s.log()).sum(-1))
    assert not out.token_logp.requires_grad and not out.entropy.requires_grad
    for got, want in zip(grads, expected_grads, strict=True):
        close(got, want, rtol=1e-4, atol=1e-6)


def test_sampled_token_estimator_value_and_gradient():
    hidden, t_hidden, weight, _, tokens = head_inputs(seed=5)
    weight.requires_grad_(True)
    student = head_mod.student_head_stats(hidden, weight, tokens, 5)
    teacher = head_mod.teacher_head_stats(t_hidden, weight, tokens, student.topk_index)
    per_token = L.sampled_token_loss(student, teacher, 1.0)
    via_registry = L.DISTILLATION_LOSSES["sampled-token"].compute(
        hidden, t_hidden, Head(weight), tokens, k=5, alpha=1.0
    )
    close(via_registry.divergence, per_token)
    z_s, z_t = (hidden.double() @ weight.double().T), (t_hidden.double() @ weight.double().T)
    s_tok = z_s.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)
    t_tok = z_t.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)
    close(per_token, s_tok - t_tok)
    s_leaf = s_tok.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(L.sampled_token_kl(s_leaf, t_tok).sum(), s_leaf)
    close(grad, s_tok - t_tok)  # score-function gradient: (log s - log t) * grad log s
    with pytest.raises(ValueError):
        L.sampled_token_loss(student, teacher, 0.5)


# ---------------------------------------------------------------------------------------
# Gradients: gradcheck and chunked == unchunked
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_gradcheck_generalized_jsd_with_tail(alpha):
    gen = torch.Generator().manual_seed(6)
    z_s = torch.randn(3, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    z_t = torch.randn(3, 9, generator=gen, dtype=torch.float64)

    def fn(z):
        s, t = L.topk_buckets(z.log_softmax(-1), z_t.log_softmax(-1), 4, tail=True)
        return L.generalized_jsd(s, t, alpha) + L.with_tail(z.log_softmax(-1)[:, :3]).sum(-1)

    assert torch.autograd.gradcheck(fn, (z_s,))


@pytest.mark.parametrize("with_entropy", [False, True])
def test_gradcheck_chunked_head(with_entropy):
    gen = torch.Generator().manual_seed(7)
    hidden = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(11, generator=gen, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 11, (5,), generator=gen)

    def fn(h, w, b):
        stats = head_mod.student_head_stats(
            h, w, tokens, 3, bias=b, temperature=0.7, chunk_size=2, with_entropy=with_entropy
        )
        return tuple(x for x in stats[1:] if x is not None)

    assert torch.autograd.gradcheck(fn, (hidden, weight, bias))


@pytest.mark.parametrize("k", [1, 7, None])
def test_chunked_head_equals_naive_values_and_grads(k):
    hidden, _, weight, bias, tokens = head_inputs(n=37, seed=8, bias=True)
    gen = torch.Generator().manual_seed(9)
    # Random output weights; the top-k ones are per vocabulary entry, so order does not matter.
    per_vocab, per_token = torch.randn(37, V, generator=gen), torch.randn(3, 37, generator=gen)
    results = []
    for chunk_size in (8, None):
        params = [p.detach().clone().requires_grad_(True) for p in (hidden, weight, bias)]
        stats = head_mod.student_head_stats(
            params[0], params[1], tokens, k, bias=params[2], temperature=1.3,
            chunk_size=chunk_size, with_entropy=True,
        )  # fmt: skip
        tail = torch.where(stats.tail_logp.isfinite(), stats.tail_logp, 0)  # k = V: -inf
        total = (stats.topk_logp * per_vocab.gather(-1, stats.topk_index)).sum()
        total = total + (torch.stack([tail, stats.token_logp, stats.entropy]) * per_token).sum()
        results.append((stats, torch.autograd.grad(total, params)))
    (chunked, chunked_grads), (naive, naive_grads) = results
    # Near-ties deep in a whole-vocabulary sort may come out in either order: compare by index.
    c_order, n_order = chunked.topk_index.argsort(-1), naive.topk_index.argsort(-1)
    assert torch.equal(chunked.topk_index.gather(-1, c_order), naive.topk_index.gather(-1, n_order))
    close(chunked.topk_logp.gather(-1, c_order), naive.topk_logp.gather(-1, n_order), atol=1e-5)
    for got, want in zip(chunked[2:], naive[2:], strict=True):
        close(got, want, rtol=1e-5, atol=1e-5)
    for got, want in zip(chunked_grads, naive_grads, strict=True):
        close(got, want, rtol=1e-5, atol=1e-5)


def test_teacher_stats_chunked_equals_naive_and_has_no_grad():
    hidden, t_hidden, weight, _, tokens = head_inputs(seed=10)
    t_hidden.requires_grad_(True)
    index = head_mod.student_head_stats(hidden, weight, tokens, 20).topk_index
    chunked = head_mod.teacher_head_stats(
        t_hidden, weight, tokens, index, chunk_size=5, with_entropy=True
    )
    naive = head_mod.teacher_head_stats(
        t_hidden, weight, tokens, index, chunk_size=None, with_entropy=True
    )
    for got, want in zip(chunked[1:], naive[1:], strict=True):
        close(got, want)
        assert not got.requires_grad


def test_bfloat16_head_runs_and_agrees_with_float32():
    hidden, _, weight, _, tokens = head_inputs(seed=11)
    h16 = hidden.bfloat16().requires_grad_(True)
    stats = head_mod.student_head_stats(h16, weight.bfloat16(), tokens, 5, chunk_size=8)
    stats.topk_logp.sum().backward()
    ref = head_mod.student_head_stats(
        hidden.bfloat16().float(), weight.bfloat16().float(), tokens, 5
    )
    assert stats.topk_logp.dtype == torch.float32 and h16.grad.dtype == torch.bfloat16
    torch.testing.assert_close(stats.topk_logp, ref.topk_logp, rtol=0.02, atol=0.05)


# ---------------------------------------------------------------------------------------
# Edge cases
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", ALPHAS)
def test_identical_distributions_give_zero(alpha):
    hidden, _, weight, _, tokens = head_inputs(seed=12)
    stats = head_mod.student_head_stats(hidden, weight, tokens, 10)
    same = head_mod.teacher_head_stats(hidden, weight, tokens, stats.topk_index)
    for loss in (L.topk_tail_loss, L.topk_renorm_loss):
        close(loss(stats, same, alpha), torch.zeros(24), atol=1e-6)
    for loss in L.DISTILLATION_LOSSES.values():
        a = loss.alpha if loss.alpha is not None else alpha
        out = loss.compute(hidden, hidden, Head(weight), tokens, k=10, alpha=a)
        close(out.divergence, torch.zeros(24), atol=1e-6)
    logp = torch.randn(4, V).log_softmax(-1)
    close(L.generalized_jsd(logp, logp, alpha), torch.zeros(4), atol=1e-6)
    close(L.sampled_token_kl(stats.token_logp, same.token_logp), torch.zeros(24))


def test_tail_plus_topk_sums_to_one():
    hidden, _, weight, _, tokens = head_inputs(seed=13)
    stats = head_mod.student_head_stats(hidden, weight, tokens, 30, chunk_size=7)
    close(L.with_tail(stats.topk_logp, stats.tail_logp).logsumexp(-1), torch.zeros(24), atol=1e-6)
    close(L.with_tail(stats.topk_logp).logsumexp(-1), torch.zeros(24), atol=1e-6)
    s, t = L.topk_buckets(torch.randn(6, V).log_softmax(-1), torch.randn(6, V).log_softmax(-1), 30)
    close(s.logsumexp(-1), torch.zeros(6), atol=1e-6)
    close(t.logsumexp(-1), torch.zeros(6), atol=1e-6)


def test_endpoints_are_the_closed_form_kls_and_the_limits_of_the_scaled_jsd():
    gen = torch.Generator().manual_seed(14)
    s = torch.randn(5, 40, generator=gen, dtype=torch.float64).log_softmax(-1)
    t = torch.randn(5, 40, generator=gen, dtype=torch.float64).log_softmax(-1)
    forward = (t.exp() * (t - s)).sum(-1)  # KL(teacher || student)
    reverse = (s.exp() * (s - t)).sum(-1)  # KL(student || teacher)
    close(L.generalized_jsd(s, t, 0.0), forward, rtol=1e-12)
    close(L.generalized_jsd(s, t, 1.0), reverse, rtol=1e-12)
    close(L.kl(t, s), forward, rtol=1e-12)
    a = 1e-6  # the general formula vanishes at the ends; its slope there is the KL
    close(L.generalized_jsd(s, t, a) / a, forward, rtol=1e-4)
    close(L.generalized_jsd(s, t, 1 - a) / a, reverse, rtol=1e-4)
    with pytest.raises(ValueError):
        L.generalized_jsd(s, t, 1.5)


def test_teacher_is_detached_inside_the_loss():
    s = torch.randn(3, 8).log_softmax(-1).requires_grad_(True)
    t = torch.randn(3, 8).log_softmax(-1).requires_grad_(True)
    for alpha in ALPHAS:
        L.generalized_jsd(s, t, alpha).sum().backward()
        s_b, t_b = L.topk_buckets(s, t, 3)
        L.generalized_jsd(s_b, t_b, alpha).sum().backward()
    assert s.grad is not None and t.grad is None


def test_importance_weight_is_clipped_and_carries_no_gradient():
    logp = torch.tensor([-1.0, -2.0, -0.1, -30.0], requires_grad=True)
    old = torch.tensor([-1.5, -2.0, -3.0, -1.0])
    w = L.importance_weight(logp, old, is_clip=2.0)
    assert not w.requires_grad
    close(w, torch.tensor([0.5, 0.0, 2.0, -20.0]).exp().clamp(max=2.0))
    hidden, t_hidden, weight, _, tokens = head_inputs(seed=15)
    hidden.requires_grad_(True)
    student = head_mod.student_head_stats(hidden, weight, tokens, 10)
    old = student.token_logp.detach() + torch.linspace(-1, 1, 24)
    head = Head(weight)
    weighted, _, w_used = L.sdpo_token_loss(hidden, t_hidden, head, tokens, old, k=10, is_clip=2.0)
    plain, _, _ = L.sdpo_token_loss(hidden, t_hidden, head, tokens, None, k=10)
    w = L.importance_weight(student.token_logp, old, 2.0)
    close(w_used, w)
    (g_weighted,) = torch.autograd.grad(weighted.sum(), hidden, retain_graph=True)
    (g_plain,) = torch.autograd.grad((plain * w).sum(), hidden)
    close(weighted, plain * w)
    close(g_weighted, g_plain)


@pytest.mark.parametrize("mode", sorted(L.AGGREGATIONS))
def test_all_masked_batch_gives_zero_loss_and_no_nan(mode):
    values = torch.randn(3, 5, requires_grad=True)
    poisoned = values + torch.full((3, 5), float("nan"))
    mask = torch.zeros(3, 5, dtype=torch.bool)
    loss = L.aggregate(poisoned, mask, mode)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(values.grad, torch.zeros(3, 5))
    # The chunked head on an empty selection: nothing to compute, loss 0, grads 0.
    hidden, t_hidden, weight, _, tokens = head_inputs(n=0, seed=16)
    weight.requires_grad_(True)
    for name in L.DISTILLATION_LOSSES:
        empty, _, _ = L.sdpo_token_loss(
            hidden, t_hidden, Head(weight), tokens, torch.zeros(0), loss=name, k=10, alpha=1.0
        )
        assert empty.shape == (0,)
    per_token, _, _ = L.sdpo_token_loss(hidden, t_hidden, Head(weight), tokens, torch.zeros(0))
    total = L.aggregate(L.scatter_tokens(per_token, mask), mask, mode)
    total.backward()
    assert total.item() == 0.0 and torch.equal(weight.grad, torch.zeros_like(weight))


@pytest.mark.parametrize("alpha", ALPHAS)
def test_extreme_logits_stay_finite(alpha):
    gen = torch.Generator().manual_seed(17)
    vocab = 64
    weight = torch.eye(vocab, requires_grad=True)  # logits = hidden
    hidden = (1e4 * torch.randn(20, vocab, generator=gen).sign()).requires_grad_(True)
    t_hidden = 1e4 * torch.randn(20, vocab, generator=gen).sign()
    tokens = torch.randint(0, vocab, (20,), generator=gen)
    student = head_mod.student_head_stats(
        hidden, weight, tokens, 5, chunk_size=6, with_entropy=True
    )
    old = student.token_logp.detach() - 3
    loss, _, _ = L.sdpo_token_loss(
        hidden, t_hidden, Head(weight, chunk_size=6), tokens, old, k=5, alpha=alpha
    )
    (loss.sum() + student.entropy.sum()).backward()
    for value in (loss, student.tail_logp, hidden.grad, weight.grad):
        assert torch.isfinite(value).all()
    s, t = L.topk_buckets(hidden.log_softmax(-1), t_hidden.log_softmax(-1), 5)
    assert torch.isfinite(L.generalized_jsd(s, t, alpha)).all()
    assert torch.isfinite(L.with_tail(hidden.log_softmax(-1)[:, :5])).all()


# ---------------------------------------------------------------------------------------
# Aggregation and gradient accumulation
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", sorted(L.AGGREGATIONS))
def test_aggregate_matches_reference(mode):
    gen = torch.Generator().manual_seed(18)
    values, mask = torch.randn(4, 6, generator=gen), rand_mask(4, 6, gen)
    mask[2] = False
    rows = [values[b][mask[b]] for b in range(4) if mask[b].any()]
    expected = {
        "token-mean": torch.cat(rows).mean(),
        "seq-mean-token-mean": torch.stack([r.mean() for r in rows]).mean(),
        "seq-mean-token-sum": torch.stack([r.sum() for r in rows]).mean(),
    }[mode]
    close(L.aggregate(values, mask, mode), expected)
    with pytest.raises(ValueError):
        L.aggregate(values, mask, "token-sum")


@pytest.mark.parametrize("mode", sorted(L.AGGREGATIONS))
def test_micro_batches_give_the_full_batch_gradient(mode):
    gen = torch.Generator().manual_seed(19)
    logits = torch.randn(6, 5, 40, generator=gen, requires_grad=True)
    teacher = torch.randn(6, 5, 40, generator=gen).log_softmax(-1)
    mask = rand_mask(6, 5, gen)

    def loss_of(rows, normalizer=None):
        s, t = L.topk_buckets(logits[rows].log_softmax(-1), teacher[rows], 8)
        return L.aggregate(L.generalized_jsd(s, t, 0.5), mask[rows], mode, normalizer)

    (full,) = torch.autograd.grad(loss_of(slice(0, 6)), logits)
    norm = L.loss_normalizer(mask, mode)
    micro = sum(loss_of(rows, norm) for rows in (slice(0, 1), slice(1, 4), slice(4, 6)))
    (accumulated,) = torch.autograd.grad(micro, logits)
    close(accumulated, full, rtol=1e-6, atol=1e-8)


def test_select_and_scatter_tokens_round_trip():
    gen = torch.Generator().manual_seed(20)
    values, mask = torch.randn(3, 4, generator=gen), rand_mask(3, 4, gen)
    picked = L.select_tokens(values, mask)
    assert picked.shape == (int(mask.sum()),)
    close(L.scatter_tokens(picked, mask), torch.where(mask, values, 0))


# ---------------------------------------------------------------------------------------
# GRPO
# ---------------------------------------------------------------------------------------


def test_group_advantages_two_layouts_and_std():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    adv = L.group_advantages(rewards)
    close(adv, rewards - rewards.mean(-1, keepdim=True))
    std = rewards.std(-1, keepdim=True)
    close(
        L.group_advantages(rewards, std_normalize=True),
        (rewards - rewards.mean(-1, keepdim=True)) / (std + 1e-6),
    )
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    ids = torch.arange(3).repeat_interleave(4)
    close(L.group_advantages(rewards.flatten()[order], ids[order]), adv.flatten()[order])
    close(
        L.group_advantages(torch.tensor([3.0]), torch.tensor([7]), std_normalize=True),
        torch.zeros(1),
    )


def ref_surrogate(lp, old, adv, eps_low, eps_high, dual):
    ratio = math.exp(lp - old)
    loss = max(-adv * ratio, -adv * min(max(ratio, 1 - eps_low), 1 + eps_high))
    return min(loss, -adv * dual) if dual is not None and adv < 0 else loss


@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_clipped_surrogate_matches_reference(dual_clip):
    gen = torch.Generator().manual_seed(21)
    logp = torch.randn(4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    old = logp.detach() + 1.5 * torch.randn(4, 6, generator=gen, dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 0.5, -2.0], dtype=torch.float64)
    mask = rand_mask(4, 6, gen)
    loss, stats = L.clipped_surrogate(logp, old, adv, dual_clip=dual_clip)
    expected = torch.tensor(
        [
            [
                ref_surrogate(
                    logp[b, t].item(), old[b, t].item(), adv[b].item(), 0.2, 0.28, dual_clip
                )
                for t in range(6)
            ]
            for b in range(4)
        ],
        dtype=torch.float64,
    )
    close(loss, expected, rtol=1e-12)
    ratio = (logp - old).exp().detach()
    clipped = ((ratio < 0.8) & (adv[:, None] < 0)) | ((ratio > 1.28) & (adv[:, None] > 0))
    close(ref_masked_mean(stats["clip"], mask), ref_masked_mean(clipped.double(), mask))
    low = (ratio < 0.8) & (adv[:, None] < 0)
    close(stats["clip_low"], low.double())
    close(stats["clip_high"], (clipped & ~low).double())
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    assert torch.all(grad[clipped] == 0)  # clipped tokens pass no gradient
    assert not any(v.requires_grad for v in stats.values())


def test_clipped_surrogate_entropy_bonus():
    logp = torch.zeros(2, 3)
    entropy = torch.full((2, 3), 2.0)
    plain, _ = L.clipped_surrogate(logp, logp, torch.ones(2))
    bonus, _ = L.clipped_surrogate(logp, logp, torch.ones(2), entropy=entropy, entropy_coef=0.1)
    close(bonus, plain - 0.2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_chunked_head_on_cuda_matches_cpu():
    hidden, t_hidden, weight, bias, tokens = head_inputs(n=40, seed=22, bias=True)
    results = []
    for device in ("cpu", "cuda"):
        params = [p.to(device).requires_grad_(True) for p in (hidden, weight, bias)]
        head = Head(params[1], params[2], chunk_size=16)
        per_token, distilled, _ = L.sdpo_token_loss(
            params[0], t_hidden.to(device), head, tokens.to(device), k=20
        )
        student = head.student(params[0], tokens.to(device), 20, with_entropy=True)
        loss = per_token.mean() - 0.01 * student.entropy.mean()
        results.append((loss, torch.autograd.grad(loss, params)))
    (cpu_loss, cpu_grads), (cuda_loss, cuda_grads) = results
    close(cuda_loss.cpu(), cpu_loss, rtol=1e-4, atol=1e-6)
    for got, want in zip(cuda_grads, cpu_grads, strict=True):
        close(got.cpu(), want, rtol=1e-4, atol=1e-6)
