import pytest
import torch

from sdlib.prompts import chat, student_prompt
from sdlib.rollout import (
    Rollouts,
    RowUniform,
    Sampling,
    TransformersBackend,
    VLLMBackend,
    decode_threads,
    row_seed,
    sample_next,
)

QUESTIONS = ["What is 3 + 4?", "Compute 12 - 5.", "What is the capital of France? Answer briefly."]


def prompts(tok):
    return [chat(tok, student_prompt(q)) for q in QUESTIONS]


def reference_greedy(model, ids: list[int], steps: int, stop: list[int]) -> list[int]:
    """No cache, no batch, no padding: a full forward per token."""
    seq, out = list(ids), []
    for _ in range(steps):
        with torch.no_grad():
            nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax())
        out.append(nxt)
        seq.append(nxt)
        if nxt in stop:
            break
    return out


def test_greedy_equals_token_by_token_reference(bundled):
    backend = TransformersBackend(bundled.model, bundled.tokenizer, batch_size=3, progress=False)
    got = backend.generate(prompts(bundled.tokenizer), n=1, sampling=Sampling(24, temperature=0))
    for ids, toks in zip(got.prompt_ids, got.token_ids, strict=True):
        assert toks == reference_greedy(bundled.model, ids, 24, backend.stop_ids)
    assert got.prompt_index == [0, 1, 2]


def test_batch_size_and_padding_change_nothing(bundled):
    p = prompts(bundled.tokenizer)
    s = Sampling(16, temperature=0)
    one = TransformersBackend(bundled.model, bundled.tokenizer, 1, False).generate(p, 2, s)
    many = TransformersBackend(bundled.model, bundled.tokenizer, 8, False).generate(p, 2, s)
    assert one.token_ids == many.token_ids
    assert one.prompt_index == [0, 0, 1, 1, 2, 2]


def test_same_seed_repeats_other_seed_differs(tiny):
    b = TransformersBackend(tiny.model, tiny.tokenizer, 4, False)
    p = prompts(tiny.tokenizer)
    a = b.generate(p, 2, Sampling(12, temperature=1.0, seed=7))
    again = b.generate(p, 2, Sampling(12, temperature=1.0, seed=7))
    other = b.generate(p, 2, Sampling(12, temperature=1.0, seed=8))
    assert a.token_ids == again.token_ids and a.logprobs == again.logprobs
    assert a.token_ids != other.token_ids


def test_logprobs_equal_a_separate_forward(bundled):
    b = TransformersBackend(bundled.model, bundled.tokenizer, 4, False)
    got = b.generate(prompts(bundled.tokenizer), 2, Sampling(16, temperature=1.0, seed=1))
    for ids, toks, lps in zip(got.prompt_ids, got.token_ids, got.logprobs, strict=True):
        with torch.no_grad():
            logits = bundled.model(torch.tensor([ids + toks])).logits[0, len(ids) - 1 : -1]
        ref = torch.log_softmax(logits.double(), -1).gather(1, torch.tensor(toks)[:, None])
        assert torch.allclose(torch.tensor(lps, dtype=torch.float64), ref.squeeze(1), atol=1e-4)


def test_sampled_tokens_do_not_depend_on_batching_order_or_split(tiny):
    p = prompts(tiny.tokenizer)
    s = Sampling(10, temperature=1.0, seed=3)
    one = TransformersBackend(tiny.model, tiny.tokenizer, 1, False).generate(p, 2, s)
    many = TransformersBackend(tiny.model, tiny.tokenizer, 8, False).generate(p, 2, s)
    assert one.token_ids == many.token_ids
    # the last prompt alone, keyed as in the full call: as if another process sampled it
    alone = TransformersBackend(tiny.model, tiny.tokenizer, 8, False).generate(
        p[2:], 2, s, keys=[2]
    )
    assert alone.token_ids == many.token_ids[4:]


def test_small_models_decode_on_one_thread_only_with_passive_openmp(tiny, monkeypatch):
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert tiny.model.config.hidden_size <= 256 and decode_threads(tiny.model) == 1
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert decode_threads(tiny.model) == 2
    monkeypatch.setattr(tiny.model.config, "hidden_size", 4096)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert decode_threads(tiny.model) == 2


def test_decoding_on_one_thread_restores_the_count_and_keeps_greedy_tokens(tiny):
    torch.set_num_threads(2)
    s = Sampling(max_new_tokens=6, temperature=0.0)
    seen = []
    one = TransformersBackend(tiny.model, tiny.tokenizer, progress=False, n_threads=1)
    real = one._decode
    one._decode = lambda *a: seen.append(torch.get_num_threads()) or real(*a)
    a = one.generate(prompts(tiny.tokenizer), sampling=s)
    b = TransformersBackend(tiny.model, tiny.tokenizer, progress=False, n_threads=2)
    assert seen == [1] and torch.get_num_threads() == 2
    assert a.token_ids == b.generate(prompts(tiny.tokenizer), sampling=s).token_ids


def test_stop_and_length_finish_reasons(tiny):
    b = TransformersBackend(tiny.model, tiny.tokenizer, 4, False)
    got = b.generate(prompts(tiny.tokenizer), 1, Sampling(5, temperature=1.0))
    for toks, why in zip(got.token_ids, got.finish_reason, strict=True):
        assert why == ("stop" if toks[-1] in b.stop_ids else "length")
        assert len(toks) <= 5


def test_top_k_and_top_p_only_sample_allowed_tokens():
    gen = None  # the plain multinomial path
    torch.manual_seed(0)
    logits = torch.tensor([[4.0, 3.0, 0.0, -1.0, -2.0]]).repeat(500, 1)
    tok, _ = sample_next(logits, Sampling(1, temperature=1.0, top_k=2), gen)
    assert set(tok.tolist()) == {0, 1}
    # p(0) = 0.70, p(1) = 0.26: top-p 0.5 keeps only token 0; 0.9 keeps 0 and 1
    tok, _ = sample_next(logits, Sampling(1, temperature=1.0, top_p=0.5), gen)
    assert set(tok.tolist()) == {0}
    tok, _ = sample_next(logits, Sampling(1, temperature=1.0, top_p=0.9), gen)
    assert set(tok.tolist()) == {0, 1}
    uniform = RowUniform([torch.Generator().manual_seed(i) for i in range(500)], "cpu").next()
    tok, _ = sample_next(logits, Sampling(1, temperature=1.0, top_p=0.9), uniform)
    assert set(tok.tolist()) == {0, 1}
    # inverse-CDF sampling per row draws from the same distribution: p(0 | top-p 0.9) = 0.73
    assert abs((tok == 0).float().mean().item() - 0.7311) < 0.06


def test_inverse_cdf_draws_match_the_exact_distribution_and_never_a_dropped_token():
    logits = torch.tensor([[2.0, -30.0, 1.0, 0.5, -1.0, 0.0]]).repeat(40_000, 1)
    s = Sampling(1, temperature=0.8, top_k=4)
    uniform = torch.rand(40_000, generator=torch.Generator().manual_seed(0))
    tok, logp = sample_next(logits, s, uniform)
    # float64 reference: softmax at T 0.8 over the top 4 logits (2, 1, 0.5, 0), renormalised
    scaled = logits[0].double() / 0.8
    kept = torch.tensor([0, 2, 3, 5])
    p = torch.zeros(6, dtype=torch.float64)
    p[kept] = torch.softmax(scaled[kept], 0)
    freq = torch.bincount(tok, minlength=6).double() / len(tok)
    assert freq[1] == 0 and freq[4] == 0  # below the top 4: never drawn
    sd = (p * (1 - p) / len(tok)).sqrt()
    assert ((freq - p).abs() <= 4 * sd + 1e-12).all(), (freq, p)
    # the log-prob returned is the unfiltered one at temperature (pi_old)
    full = torch.log_softmax(scaled, 0)
    assert torch.allclose(logp.double(), full[tok], atol=1e-6)
    # u near 1 lands on the last kept token, u = 0 on the first
    edge, _ = sample_next(logits[:2], s, torch.tensor([0.0, 1 - 1e-12]))
    assert edge.tolist() == [0, 5]


@pytest.mark.parametrize(
    "bad", [dict(max_new_tokens=0), dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=-2)]
)
def test_sampling_rejects_bad_values(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        Sampling(**bad)


class FakeCompletion:
    def __init__(self, ids, text, reason):
        self.token_ids, self.text, self.finish_reason = ids, text, reason
        self.logprobs = [{t: type("L", (), {"logprob": -0.5 * t})()} for t in ids]


class FakeRequest:
    def __init__(self, prompt_ids, completions):
        self.prompt_token_ids, self.outputs = prompt_ids, completions


class FakeEngine:
    def __init__(self):
        self.calls = []

    def generate(self, requests, params, lora_request=None, use_tqdm=True):
        self.calls.append((requests, params, lora_request))
        return [
            FakeRequest(
                r["prompt_token_ids"],
                [FakeCompletion([1, 2], "ab", "stop"), FakeCompletion([3], "c", "length")],
            )
            for r in requests
        ]


def test_vllm_result_conversion_with_a_fake_engine(tiny):
    outputs = FakeEngine().generate([{"prompt_token_ids": [7, 8]}, {"prompt_token_ids": [9]}], None)
    r = VLLMBackend.to_rollouts(outputs, seconds=1.5)
    assert isinstance(r, Rollouts) and len(r) == 4
    assert r.prompt_index == [0, 0, 1, 1]
    assert r.prompt_ids == [[7, 8], [7, 8], [9], [9]]
    assert r.token_ids == [[1, 2], [3], [1, 2], [3]]
    assert r.logprobs[0] == [-0.5, -1.0]
    assert r.finish_reason == ["stop", "length", "stop", "length"]


def test_vllm_builds_requests_from_token_ids(tiny, monkeypatch):
    engine = FakeEngine()
    backend = VLLMBackend(engine, tiny.tokenizer)
    monkeypatch.setattr(backend, "sampling_params", lambda n, s, seed: (n, s.max_new_tokens, seed))
    got = backend.generate(["hello", "hi there"], n=2, sampling=Sampling(9), keys=[5, 6])
    requests, params, lora = engine.calls[0]
    assert [r["prompt_token_ids"] for r in requests] == [
        tiny.tokenizer("hello", add_special_tokens=False)["input_ids"],
        tiny.tokenizer("hi there", add_special_tokens=False)["input_ids"],
    ]
    assert params == [(2, 9, row_seed(0, 5, 0)), (2, 9, row_seed(0, 6, 0))] and lora is None
    assert len(got) == 4


class OneEachEngine(FakeEngine):
    """Answers every request with one completion (vLLM's greedy sampling)."""

    def generate(self, requests, params, lora_request=None, use_tqdm=True):
        self.calls.append((requests, params, lora_request))
        return [
            FakeRequest(r["prompt_token_ids"], [FakeCompletion([4], "d", "stop")]) for r in requests
        ]


def test_vllm_several_greedy_samples_are_one_request_repeated(tiny, monkeypatch):
    # vLLM refuses n > 1 at temperature 0, which an evaluation at k = 4, T = 0 asks for
    engine = OneEachEngine()
    backend = VLLMBackend(engine, tiny.tokenizer)
    monkeypatch.setattr(backend, "sampling_params", lambda n, s, seed: n)
    got = backend.generate(["a", "b"], n=4, sampling=Sampling(9, temperature=0.0))
    assert engine.calls[0][1] == [1, 1]  # one greedy sample asked per prompt
    assert got.prompt_index == [0] * 4 + [1] * 4 and got.token_ids == [[4]] * 8
    backend.generate(["a"], n=4, sampling=Sampling(9, temperature=1.0))
    assert engine.calls[1][1] == [4]  # sampled: four draws asked for


@pytest.mark.parametrize("reason", ["abort", "error"])
def test_vllm_an_aborted_or_failed_request_is_an_error_not_a_truncation(reason):
    request = FakeRequest([7], [FakeCompletion([1], "a", reason)])
    with pytest.raises(RuntimeError, match=reason):
        VLLMBackend.to_rollouts([request], seconds=1.0)


def test_vllm_serves_each_new_adapter_under_a_new_id(tiny, tmp_path):
    engine = FakeEngine()
    backend = VLLMBackend(engine, tiny.tokenizer)
    backend.lora_request = lambda: (backend.lora_path, backend.lora_id)  # no vllm here
    backend.sampling_params = lambda n, s, seed: None
    backend.generate(["a"], 1, Sampling(4))
    backend.set_adapter(tmp_path / "step1")
    backend.generate(["a"], 1, Sampling(4))
    backend.set_adapter(tmp_path / "step2")
    backend.generate(["a"], 1, Sampling(4))
    served = [call[2] for call in engine.calls]
    assert served[0] == (None, 1)
    assert served[1] == (str(tmp_path / "step1"), 2) and served[2] == (str(tmp_path / "step2"), 3)


def test_vllm_engine_records_log_probs_after_temperature(tiny, monkeypatch):
    # vLLM returns log-probs from before temperature unless asked for processed ones: at
    # T != 1 the importance ratio would then not start at 1 on that backend
    import sys
    import types

    seen = {}
    fake = types.SimpleNamespace(LLM=lambda **kw: seen.update(kw) or "engine")
    monkeypatch.setitem(sys.modules, "vllm", fake)
    backend = VLLMBackend.from_model("some/model", tiny.tokenizer)
    assert backend.engine == "engine" and seen["logprobs_mode"] == "processed_logprobs"
    assert seen["enable_lora"] is True


def test_vllm_serves_fully_fine_tuned_weights_read_from_safetensors(tiny, tmp_path, monkeypatch):
    # the trainer writes the whole model each step; the engine's workers read it back
    # (safetensors, no pickle) and the prefix cache of the old weights is dropped
    import sys
    import types

    import torch

    from sdlib.rollout import VLLMWeightLoader
    from sdlib.train.onpolicy import sync_backend

    seen = {}
    monkeypatch.setitem(
        sys.modules, "vllm", types.SimpleNamespace(LLM=lambda **kw: seen.update(kw))
    )
    VLLMBackend.from_model("some/model", tiny.tokenizer, lora=False)
    assert seen["enable_lora"] is False
    module, name = seen["worker_extension_cls"].rsplit(".", 1)
    assert getattr(sys.modules[module], name) is VLLMWeightLoader

    loaded = {}
    worker = VLLMWeightLoader()
    worker.model_runner = types.SimpleNamespace(
        model=types.SimpleNamespace(load_weights=lambda weights: loaded.update(weights))
    )

    class Engine(FakeEngine):
        def collective_rpc(self, method, args=()):
            self.calls.append(("rpc", method))
            getattr(worker, method)(*args)

        def reset_prefix_cache(self):
            self.calls.append(("reset",))

    engine = Engine()
    backend = VLLMBackend(engine, tiny.tokenizer)
    sync_backend(backend, tiny.model, tmp_path, step=0)  # the engine starts on these weights
    assert engine.calls == [] and not loaded
    sync_backend(backend, tiny.model, tmp_path, step=1)
    assert engine.calls == [("rpc", "sdlib_load_weights"), ("reset",)]
    state = tiny.model.state_dict()
    assert loaded and all(torch.equal(value, state[name]) for name, value in loaded.items())


@pytest.mark.parametrize(
    "bad, match",
    [({"top_p": 0.95}, "top_p"), ({"lora_r": 4}, "lora_r")],
)
def test_training_refuses_what_the_vllm_backend_cannot_serve(bad, match):
    from sdlib.config import TrainConfig, from_dict
    from sdlib.schema import ConfigError

    with pytest.raises(ConfigError, match=match):
        from_dict(TrainConfig, {"backend": "vllm", **bad})
    from_dict(TrainConfig, {"backend": "transformers", **bad})  # the CPU backend takes them
