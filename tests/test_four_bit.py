"""4-bit base weights (``load_in_4bit``: bitsandbytes NF4) on the CPU: every projection is
quantized, the model computes with the weights it holds (forward and the LoRA gradients
against float64 on the dequantized weights), and a training run resumes exactly
(``test_train``'s kill-and-resume test)."""

import pytest
import torch

from sdlib.models import LLAMA_LINEAR, LoraSpec, load_policy
from sdlib.schema import ConfigError

SPEC = "tiny-random:2x64"


def four_bit():
    """bitsandbytes with its CPU backend, or a skip saying why not."""
    return pytest.importorskip("bitsandbytes", minversion="0.48", reason="4-bit needs it")


@pytest.mark.filterwarnings(
    "ignore:.*is_gradient_checkpointing:FutureWarning"
)  # peft on transformers 5
def test_every_projection_is_quantized_and_computes_with_its_dequantized_weights():
    bnb = four_bit()
    import peft

    torch.manual_seed(0)
    spec = LoraSpec(r=4, alpha=8)
    policy = load_policy(SPEC, lora=spec, load_in_4bit=True)
    model = policy.model
    layers = {n: m for n, m in model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)}
    assert len(layers) == 2 * len(LLAMA_LINEAR)  # both decoder layers, every projection
    for name, module in layers.items():
        assert isinstance(module.base_layer, bnb.nn.Linear4bit), name
        torch.nn.init.normal_(module.lora_B["default"].weight, std=0.5)  # peft starts at 0

    # float64 reference: plain Linears holding the dequantized weights, the same adapter
    ref = load_policy(SPEC, dtype="fp64").model
    for name, module in layers.items():
        base = module.base_layer
        weight = bnb.functional.dequantize_4bit(base.weight.data, base.weight.quant_state)
        target = name.removeprefix("base_model.model.")
        ref.get_submodule(target).weight.data.copy_(weight.double())
    config = peft.LoraConfig(
        r=spec.r, lora_alpha=spec.alpha, target_modules=list(spec.target_modules)
    )
    ref = peft.get_peft_model(ref, config)
    adapter = {k: v.double() for k, v in model.state_dict().items() if "lora_" in k}
    assert not ref.load_state_dict(adapter, strict=False).unexpected_keys

    ids = torch.tensor([[1, 17, 240, 3001, 9, 44, 512, 2]])
    probe = torch.randn(1, ids.shape[1], model.config.vocab_size, dtype=torch.float64)
    got = model(ids).logits
    want = ref(ids).logits
    scale = want.abs().max()
    assert (got.double() - want).abs().max() <= 1e-5 * scale
    (got.double() * probe).sum().backward()
    (want * probe).sum().backward()
    mine = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    theirs = {n: p.grad for n, p in ref.named_parameters() if p.requires_grad}
    assert mine.keys() == theirs.keys() and len(mine) == 4 * len(LLAMA_LINEAR)
    for n, g in mine.items():
        assert g is not None and g.abs().max() > 0, n
        torch.testing.assert_close(
            g.double(), theirs[n], rtol=1e-4, atol=1e-5 * theirs[n].abs().max()
        )


def test_four_bit_refuses_a_cpu_bitsandbytes_without_its_backend(monkeypatch):
    import importlib.metadata
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: object() if n == "bitsandbytes" else real(n, *a)
    )
    monkeypatch.setattr(importlib.metadata, "version", lambda n: "0.45.5")
    with pytest.raises(ConfigError, match=r"bitsandbytes 0\.48 or newer.*0\.45\.5 is installed"):
        load_policy(SPEC, lora=LoraSpec(r=4), load_in_4bit=True)
    with pytest.raises(ConfigError, match="load_in_4bit on device 'mps'"):
        load_policy(SPEC, lora=LoraSpec(r=4), load_in_4bit=True, device="mps")
