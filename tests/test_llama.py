"""sdlib.llama: the lean training forward and the lean decode path, each against transformers'
own forward (float64 references) and against the decode loop on transformers' forward."""

import copy

import peft
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sdlib import llama, rollout
from sdlib.prompts import chat, student_prompt
from sdlib.rollout import Sampling, TransformersBackend


def _llama(kv_heads: int, dtype=torch.float64, seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        tie_word_embeddings=True,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(dtype)


def _lora(model, seed: int = 1, **extra):
    spec = peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(llama.PROJECTIONS), **extra)
    wrapped = peft.get_peft_model(model, spec)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # B starts at 0: move it so the adapter changes the outputs
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.05)
    return wrapped


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_lean_forward_and_its_gradients_equal_transformers_in_float64(kv_heads):
    model = _llama(kv_heads)
    ids = torch.randint(0, 97, (3, 19), generator=torch.Generator().manual_seed(0))
    probe = torch.randn(3, 19, 64, dtype=torch.float64)
    grads = []
    forwards = (
        lambda: model.model(input_ids=ids).last_hidden_state,
        lambda: llama.hidden_states(model, ids),
    )
    for forward in forwards:
        model.zero_grad()
        out = forward()
        (out * probe).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        grads[-1]["out"] = out.detach()
    ref, got = grads
    assert ref.keys() == got.keys()
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-12, atol=1e-12, msg=name)


def test_supports_only_what_it_reproduces():
    assert llama.supports(_llama(4))
    biased = _llama(4)
    biased.config.attention_bias = True
    scaled = _llama(4)
    scaled.config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}
    assert not llama.supports(biased) and not llama.supports(scaled)
    assert not llama.supports(torch.nn.Linear(2, 2))


def test_snapshot_holds_the_weights_peft_applies():
    model = _lora(_llama(2))
    merged = copy.deepcopy(model).merge_and_unload()
    snap = llama.Snapshot.take(model)
    for layer, ref in zip(snap.layers, merged.model.layers, strict=True):
        a, m = ref.self_attn, ref.mlp
        qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
        torch.testing.assert_close(layer["qkv"], qkv, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer["down"], m.down_proj.weight, rtol=1e-12, atol=1e-12)
    with model.disable_adapter():  # the initial policy: the base weights, no delta
        plain = llama.Snapshot.take(model)
    base = model.get_base_model().model.layers[0].self_attn.o_proj.base_layer.weight
    assert torch.equal(plain.layers[0]["o"], base)
    assert not torch.equal(snap.layers[0]["o"], base)


def test_snapshot_refuses_what_it_cannot_reproduce():
    assert llama.Snapshot.take(_lora(_llama(2), use_dora=True)) is None
    # bf16: peft adds the adapter in float32 beside the bf16 weight; merged it would round
    assert llama.Snapshot.take(_lora(_llama(2, torch.bfloat16))) is None
    assert llama.Snapshot.take(_llama(2, torch.float32)) is not None
    biased = _llama(2)
    biased.model.layers[0].mlp.up_proj.bias = torch.nn.Parameter(
        torch.zeros(96, dtype=torch.float64)
    )
    assert llama.Snapshot.take(biased) is None


def _decode_both(model, tok, texts, n, sampling, monkeypatch, stop_midway=False):
    """(lean, transformers) rollouts of the same call; the lean one checked to be lean.
    ``stop_midway``: a token the first call writes halfway also stops rows (a random
    model rarely writes its end token), so rows leave the batch at different steps."""
    calls = []
    real = llama.forward
    monkeypatch.setattr(llama, "forward", lambda *a: calls.append(1) or real(*a))
    backend = TransformersBackend(model, tok, batch_size=16, progress=False)
    lean = backend.generate(texts, n, sampling)
    if stop_midway:

        def ends(token):  # where each row would stop on ``token``
            return {t.index(token) if token in t else len(t) for t in lean.token_ids}

        token = max(set(lean.token_ids[0][1:]), key=lambda t: (len(ends(t)), -t))
        backend.stop_ids = sorted({*backend.stop_ids, token})
        lean = backend.generate(texts, n, sampling)
    assert calls, "the lean path was not taken"
    monkeypatch.setattr(llama.Snapshot, "take", classmethod(lambda cls, m: None))
    calls.clear()
    plain = backend.generate(texts, n, sampling)
    assert not calls
    return lean, plain


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_lean_decoding_draws_the_tokens_of_transformers_decoding(tiny, monkeypatch, temperature):
    """GQA, a LoRA adapter that moves the outputs, left padding, groups sharing a prefill,
    rows leaving the batch as they finish: the same tokens, finish reasons and log-probs."""
    model = _lora(copy.deepcopy(tiny.model).float())
    tok = tiny.tokenizer
    questions = ["What is 3 + 4?", "Compute 12 - 5.", "Name a prime above ten, then stop."]
    texts = [chat(tok, student_prompt(q)) for q in questions]
    s = Sampling(40, temperature=temperature, seed=5)
    lean, plain = _decode_both(model, tok, texts, 6, s, monkeypatch, stop_midway=True)
    assert lean.token_ids == plain.token_ids
    assert lean.finish_reason == plain.finish_reason
    if temperature:  # (greedy, a random model repeats one token)
        assert len({len(t) for t in lean.token_ids}) > 1  # some rows finished early
    for a, b in zip(lean.logprobs, plain.logprobs, strict=True):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=0, atol=1e-4)


def test_lean_decoding_of_the_organism_with_stop_tokens(tmp_path, monkeypatch):
    from sdlib.models import LoraSpec, load_policy

    monkeypatch.setenv("SDLIB_CACHE", str(tmp_path))
    policy = load_policy("organism:smoke", lora=LoraSpec())
    model = policy.model
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(2))
    tok = policy.tokenizer
    texts = [chat(tok, student_prompt(f"find x : {a} * x + 1 = {a * 3 + 1}")) for a in (2, 5, 7)]
    lean, plain = _decode_both(model, tok, texts, 8, Sampling(48, 1.0, seed=1), monkeypatch)
    assert lean.token_ids == plain.token_ids and lean.finish_reason == plain.finish_reason
    assert "stop" in lean.finish_reason


def test_block_cache_grows_without_losing_what_it_holds():
    snap = llama.Snapshot.take(_llama(2, torch.float32))
    cache = llama.BlockCache(snap, rows=3, dtype=torch.float32, device="cpu")
    cache.reserve(5)
    assert cache.width == llama.BlockCache.BLOCK
    cache.k[0][:, :, :5] = 1.0
    cache.reserve(llama.BlockCache.BLOCK + 1)
    assert cache.width == 2 * llama.BlockCache.BLOCK
    assert bool((cache.k[0][:, :, :5] == 1).all()) and bool((cache.k[0][:, :, 5:] == 0).all())
    cache.select(torch.tensor([2, 0]))
    assert cache.k[1].shape[0] == 2 and cache.rows == 2


def test_the_sampler_is_bit_identical_with_and_without_dividing_by_temperature_one():
    logits = torch.randn(64, 509, generator=torch.Generator().manual_seed(0))
    u = torch.rand(64, generator=torch.Generator().manual_seed(1))
    tok, lp = rollout.sample_next(logits, Sampling(1, temperature=1.0), u)
    ref = torch.log_softmax(logits / 1.0, dim=-1)
    cdf = ref.double().exp().cumsum(-1)
    want = torch.searchsorted(cdf, (u.double() * cdf[:, -1])[:, None], right=True).squeeze(1)
    assert torch.equal(tok, want) and torch.equal(lp, ref.gather(1, want[:, None]).squeeze(1))
