import pytest
import torch

from sdlib.models import (
    LoraSpec,
    ModelNotFoundError,
    bundled_folder,
    count_parameters,
    initial_policy,
    load_policy,
)


def test_bundled_is_converted_once_to_safetensors(bundled):
    folder = bundled_folder()
    assert (folder / "model.safetensors").exists()
    assert (folder / "tokenizer.json").exists()
    config = (folder / "config.json").read_text()
    assert "quantization_config" not in config  # loads as a plain model, offline
    assert bundled.model.config.vocab_size == 49152
    assert bundled.tokenizer.padding_side == "left"


def test_bundled_answers_sensibly_greedy(bundled):
    from sdlib.prompts import chat

    text = chat(bundled.tokenizer, "What is the capital of France?")
    ids = bundled.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = bundled.model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in bundled.tokenizer.decode(out[0, ids.shape[1] :])


def test_bf16_at_load_keeps_rotary_in_fp32():
    policy = load_policy("bundled:smollm2-135m-instruct", dtype="bf16")
    assert policy.model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert policy.model.model.rotary_emb.inv_freq.dtype == torch.float32


def test_tiny_random_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = load_policy("tiny-random:2x64")
    after = torch.rand(1)
    b = load_policy("tiny-random:2x64")
    assert torch.equal(before, after)
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert a.model.config.num_hidden_layers == 2 and a.model.config.hidden_size == 64


def test_a_tiny_random_spec_may_name_a_larger_vocabulary():
    from sdlib.models import model_limits

    big = load_policy("tiny-random:1x64x151936")
    assert big.model.config.vocab_size == 151936
    assert big.model.lm_head.weight.shape == (151936, 64)
    assert big.model(torch.tensor([[1, 2, 3]])).logits.shape[-1] == 151936
    assert model_limits("tiny-random:1x64x151936")[0] == 151936
    assert model_limits("tiny-random:1x64")[0] == len(big.tokenizer)


def test_local_folder_round_trip(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    again = load_policy(str(tmp_path))
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.allclose(tiny.model(ids).logits, again.model(ids).logits)


def test_offline_hub_id_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="hf download nobody/no-such-model"):
        load_policy("nobody/no-such-model")


@pytest.mark.parametrize(
    "spec, err",
    [
        (3, TypeError),
        ("", TypeError),
        ("tiny-random:two", ValueError),
        ("tiny-random:2x64x1000", ValueError),  # a head smaller than the tokenizer
        ("tiny-random:2x64x60000x3", ValueError),
        ("bundled:gpt-17", ModelNotFoundError),
        ("./not/here", ModelNotFoundError),
    ],
)
def test_bad_specs_are_named(spec, err):
    with pytest.raises(err, match="spec|model"):
        load_policy(spec)


def test_bad_dtype_is_named():
    with pytest.raises(ValueError, match="'fp8'"):
        load_policy("tiny-random:2x64", dtype="fp8")


def test_lora_trains_only_adapter_and_disabling_it_is_the_initial_policy():
    base = load_policy("tiny-random:2x64")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    reference = base.model(ids).logits
    policy = load_policy("tiny-random:2x64", lora=LoraSpec(r=4, alpha=8))
    trainable, total = count_parameters(policy.model)
    assert 0 < trainable < total / 10
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)  # move the adapter away from its zero start
    assert not torch.allclose(policy.model(ids).logits, reference, atol=1e-4)
    with initial_policy(policy.model) as teacher:
        assert torch.allclose(teacher(ids).logits, reference, atol=1e-6)
    assert not torch.allclose(policy.model(ids).logits, reference, atol=1e-4)
