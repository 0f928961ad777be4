"""sdlib's parameter schemas, validated before any work starts.

Each schema is a dataclass whose fields carry their one-line documentation (``doc(...)``);
the CLI's ``--help``, the YAML presets and the notebooks' parameters all come from here.
A preset is a plain YAML mapping of field names to values; ``load`` rejects unknown keys and
values of the wrong type or range with a message that names the field, the value and what is
allowed (the machinery is ``sdlib.schema``). Every value a schema can check without loading
a model is checked here; the few that depend on the model (its vocabulary and context
length) are checked by ``sdlib.models.check_limits`` before its weights load.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdlib.prompts import THINKING
from sdlib.schema import ConfigError, doc, from_dict, load, parse_override, read_yaml, save
from sdlib.settings import DEFAULT_MODEL, REPO_ROOT, repo_path

__all__ = ["ConfigError", "doc", "from_dict", "load", "parse_override", "read_yaml", "save"]

# Fields several schemas share: each documented once, here; ``shared(name, default)``.
SHARED_HELP = {
    "model": "policy spec: bundled:NAME, organism[:NAME], tiny-random:LxH, local folder or Hub id",
    "dtype": "weights and compute precision, set at load time: fp32, bf16 (fp64 for tests)",
    "device": "torch device: cpu, cuda, cuda:1 ...",
    "seed": "seed of problem order, sampling and LoRA init",
    "thinking": "chat template thinking switch: on, off or default",
    "few_shot": "put one worked exchange before the question as an earlier chat turn "
    "(tiny scale: the bundled model seldom writes \\boxed{} without it)",
    "backend": "generation backend: transformers or vllm (GPU)",
    "gen_batch": "sequences decoded together (transformers backend)",
    "max_new_tokens": "most tokens generated per response",
    "grader": "answer grading rules: careful (hedges, dropped units and near-miss decimals are "
    "wrong) or reference (the study's numeric tolerance, relative 1e-4; sdlib.grading)",
}


def shared(name: str, default: Any) -> Any:
    """A field whose documentation lives in ``SHARED_HELP``."""
    return doc(SHARED_HELP[name], default)


@functools.cache
def choices() -> dict[str, tuple[str, ...]]:
    """Allowed values, by field name, of every field that picks an implementation: the keys
    of the registry that holds the implementations. Read when a schema is validated, not
    when this module is imported, so importing config stays light (no torch)."""
    from sdlib.grading import RULES
    from sdlib.losses import AGGREGATIONS, DISTILLATION_LOSSES
    from sdlib.models import DTYPES, FINETUNE, TEACHERS
    from sdlib.rollout import BACKENDS
    from sdlib.train import ALGORITHMS, LOGGERS
    from sdlib.train.onpolicy import ROLLOUT_IS
    from sdlib.train.sdpo import ROUTES

    return {
        "algo": tuple(ALGORITHMS),
        "teacher": tuple(TEACHERS),
        "finetune": FINETUNE,
        "backend": tuple(BACKENDS),
        "thinking": tuple(THINKING),
        "dtype": tuple(DTYPES),
        "loss_agg": tuple(AGGREGATIONS),
        "distill_loss": tuple(DISTILLATION_LOSSES),
        "log_to": tuple(LOGGERS),
        "rollout_is": tuple(ROLLOUT_IS),
        "route": tuple(ROUTES),
        "grader": RULES,
    }


def _range(low=None, high=None, *, low_open=False, high_open=False, zero=False):
    """(test, description) of a numeric range; ``zero`` also allows exactly 0 (= off)."""

    def test(v):
        inside = (low is None or (v > low if low_open else v >= low)) and (
            high is None or (v < high if high_open else v <= high)
        )
        return inside or (zero and v == 0)

    lo = "" if low is None else f"{'(' if low_open else '['}{low}"
    hi = "" if high is None else f"{high}{')' if high_open else ']'}"
    text = f"in {lo or '(-inf'}, {hi or 'inf)'}" + (" or 0 (off)" if zero else "")
    return test, text


_COUNT = _range(1)
_NON_NEGATIVE = _range(0)
_UNIT = _range(0, 1)
# Numeric ranges, by field name, for every schema that has the field.
RANGES = {
    **dict.fromkeys(
        (
            "k",
            "eval_k",
            "steps",
            "prompts_per_step",
            "rollouts_per_prompt",
            "micro_batch",
            "lora_r",
            "lora_alpha",
            "gen_batch",
            "max_new_tokens",
            "loss_chunk",
            "save_every",
            "epochs",
            "select_k",
            "max_problems",
            "samples",
        ),
        _COUNT,
    ),  # fmt: skip
    **dict.fromkeys(
        (
            "limit",
            "eval_limit",
            "pool_limit",
            "prompts_per_update",
            "warmup_steps",
            "sample_every",
            "seed",
            "weight_decay",
            "grad_clip",
            "entropy_coef",
            "kl_coef",
            "temperature",
            "eval_temperature",
            "topk",
            "top_k",
            "max_teacher_prompt_tokens",
            "eps_high",
        ),
        _NON_NEGATIVE,
    ),  # fmt: skip
    **dict.fromkeys(
        ("alpha", "ema_rate", "success_threshold", "reach", "distillation_weight"), _UNIT
    ),
    "demo_prefix": _range(0, 1, low_open=True),
    "teacher_entropy_weight": _range(0),
    "top_p": _range(0, 1, low_open=True),
    "eval_top_p": _range(0, 1, low_open=True),
    "lr": _range(0, low_open=True),
    "lora_lr_scale": _range(0, low_open=True),
    "lora_dropout": _range(0, 1, high_open=True),
    "eps_low": _range(0, 1, high_open=True),
    "is_clip": _range(0, low_open=True, zero=True),
    "rollout_is_clip": _range(1),
    "dual_clip": _range(1, low_open=True, zero=True),
}
_DEVICE = re.compile(r"cpu|cuda(:\d+)?|mps")


def check_values(cfg) -> None:
    """Raise ConfigError for the first field outside its choices or its range."""
    for name, allowed in choices().items():
        if not hasattr(cfg, name):
            continue
        value = getattr(cfg, name)
        for v in value if isinstance(value, list) else [value]:
            if v not in allowed:
                raise ConfigError(f"{name} = {value!r}; expected one of {list(allowed)}")
    for name, (test, allowed) in RANGES.items():
        if hasattr(cfg, name) and not test(getattr(cfg, name)):
            raise ConfigError(f"{name} = {getattr(cfg, name)!r}; expected a number {allowed}")
    if hasattr(cfg, "device") and not _DEVICE.fullmatch(cfg.device):
        raise ConfigError(f"device = {cfg.device!r}; expected cpu, cuda, cuda:N or mps")
    for name in ("data", "eval_data"):
        if hasattr(cfg, name) and not getattr(cfg, name):
            raise ConfigError(f"{name} = []; expected at least one problem set")


@dataclass
class EvalConfig:
    """``sdlib eval``: k samples per problem on one or more problem sets."""

    model: str = shared("model", DEFAULT_MODEL)
    data: list[str] = doc(
        "problem sets: short names (aime24, math500, seen_64, chemistry), "
        "paths (.parquet/.jsonl/.json) or synthetic:FAMILY[:LEVEL[:COUNT]]",
        ["synthetic:addition:1:8"],
    )
    limit: int = doc("evaluate at most this many problems per set; 0 = all", 0)
    k: int = doc("samples per problem (avg@k, pass@k)", 4)
    max_new_tokens: int = shared("max_new_tokens", 256)
    grader: str = shared("grader", "careful")
    temperature: float = doc("sampling temperature; 0 = greedy", 0.6)
    top_p: float = doc("nucleus sampling mass", 0.95)
    seed: int = shared("seed", 0)
    dtype: str = shared("dtype", "fp32")
    device: str = shared("device", "cpu")
    gen_batch: int = shared("gen_batch", 32)
    lora: str = doc("folder of a saved LoRA adapter to apply; empty = none", "")
    thinking: str = shared("thinking", "default")
    few_shot: bool = shared("few_shot", False)
    out: str = doc("output folder (resumes when it holds samples.jsonl); empty = none", "")

    def validate(self) -> None:
        check_values(self)


# the LoRA ranks every vLLM from 0.20 serves (its max_lora_rank choices)
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


@dataclass
class TrainConfig:
    """``sdlib train sft|grpo|sdpo``: one training run (LoRA or every weight), written to
    ``out``.

    Batch sizes count prompts, as in the reference runs: each step samples
    ``prompts_per_step`` problems, ``rollouts_per_prompt`` responses each, and makes
    ``prompts_per_step / prompts_per_update`` optimizer updates (one when it is 0).
    """

    algo: str = doc("grpo, sdpo or sft", "sdpo")
    model: str = shared("model", DEFAULT_MODEL)
    data: list[str] = doc(
        "training problem sets (see eval's data); sft: a samples jsonl", ["synthetic:addition:1:64"]
    )
    out: str = doc("run folder; a rerun on the same folder resumes", "runs/train")
    steps: int = doc("on-policy steps (sft: optimizer steps)", 10)
    prompts_per_step: int = doc("problems sampled per step", 8)
    rollouts_per_prompt: int = doc("responses sampled per problem (the group)", 8)
    prompts_per_update: int = doc("problems per optimizer update (mini-batch); 0 = all", 0)
    micro_batch: int = doc("sequences per forward/backward (gradient accumulation)", 8)
    lr: float = doc("AdamW learning rate (paper: GRPO 1e-6, SDPO 1e-5 on full weights)", 1e-4)
    finetune: str = doc(
        "lora (an adapter of rank lora_r), full (every weight, as the reference; float32 "
        "master weights below 32 bits) or auto (full when it takes at most half the "
        "device's memory, else lora)",
        "lora",
    )
    lora_lr_scale: float = doc(
        "with LoRA the learning rate is lr x this (LoRA usually wants about 10x full "
        "fine-tuning's rate; one factor for GRPO and SDPO keeps their ratio)",
        1.0,
    )
    weight_decay: float = doc("AdamW weight decay", 0.01)
    warmup_steps: int = doc("linear warm-up, in optimizer updates; constant afterwards", 0)
    grad_clip: float = doc("clip the global gradient norm to this; 0 = off", 1.0)
    lora_r: int = doc("LoRA rank", 16)
    lora_alpha: int = doc("LoRA scale numerator (scale = alpha / r)", 32)
    lora_dropout: float = doc("LoRA dropout", 0.0)
    dtype: str = shared("dtype", "fp32")
    device: str = shared("device", "cpu")
    gradient_checkpointing: bool = doc("recompute activations in backward to save memory", False)
    packing: bool = doc(
        "pack each micro-batch's sequences into rows no longer than its longest (first-fit "
        "decreasing): no compute on padding, the same loss and gradient (block-causal "
        "attention from restarting position ids)",
        True,
    )
    load_in_4bit: bool = doc(
        "4-bit (NF4) base weights through bitsandbytes: CUDA, or CPU with 0.48+", False
    )
    backend: str = shared("backend", "transformers")
    gen_batch: int = shared("gen_batch", 32)
    max_new_tokens: int = shared("max_new_tokens", 128)
    grader: str = shared("grader", "careful")
    temperature: float = doc("rollout sampling temperature", 1.0)
    top_p: float = doc("rollout nucleus mass", 1.0)
    few_shot: bool = shared("few_shot", False)
    thinking: str = shared("thinking", "default")
    seed: int = shared("seed", 0)
    loss_agg: str = doc("token-mean, seq-mean-token-mean or seq-mean-token-sum", "token-mean")
    rollout_is: str = doc(
        "pi_old of the ratios: sampler (the rollout log-probs) or token (recomputed by the "
        "trainer before the updates; each token then weighs min(pi_old / pi_sampler, "
        "rollout_is_clip), as the reference, so a sampler/trainer numerics gap stays out "
        "of the clip)",
        "sampler",
    )
    rollout_is_clip: float = doc("clip of the rollout importance weight (rollout_is: token)", 2.0)
    loss_chunk: int = doc("tokens per chunk of the output head in the loss", 1024)
    # GRPO
    eps_low: float = doc("GRPO clip range below 1", 0.2)
    eps_high: float = doc("GRPO clip range above 1", 0.28)
    dual_clip: float = doc("GRPO dual clip constant (> 1); 0 = off", 0.0)
    std_normalize: bool = doc("divide GRPO advantages by the group std", False)
    entropy_coef: float = doc("entropy bonus weight", 0.0)
    kl_coef: float = doc("GRPO: weight of KL(policy || initial) per token (k3); 0 = off", 0.0)
    track_kl: bool = doc(
        "log train/kl_initial, how far the policy moved from its start (one extra forward "
        "without gradient per micro-batch), for GRPO and SDPO alike",
        True,
    )
    # SDPO
    alpha: float = doc("generalized JSD: 0 forward KL, 1 reverse KL, 0.5 JSD", 0.5)
    topk: int = doc("student top-k tokens of the topk-* distillation losses", 100)
    distill_loss: str = doc(
        "topk-tail (top-k + tail bucket), topk-renorm, sampled-token (alpha 1) or full "
        "(whole vocabulary, chunked)",
        "topk-tail",
    )
    is_clip: float = doc("clip of the detached per-token ratio pi / pi_old; 0 = no weight", 2.0)
    teacher: str = doc(
        "initial (the frozen start: LoRA off, or a copy of the initial weights), live, ema, "
        "or trust-region (logits lerp(initial, current, ema_rate): the reference's "
        "teacher_regularization)",
        "initial",
    )
    ema_rate: float = doc(
        "the teacher's update rate (the reference's teacher_update_rate): ema's per step "
        "(after its updates), trust-region's mix of current into initial logits",
        0.05,
    )
    success_threshold: float = doc("reward at which a rollout can be a demonstration", 0.5)
    dont_reprompt_on_self_success: bool = doc(
        "a rollout never serves as its own demonstration (the first *other* success)", True
    )
    strip_demo_thinking: bool = doc(
        "demonstrations without their thinking (prompts.strip_thinking)", False
    )
    feedback: bool = doc("teach rollouts with no successful sibling from a feedback text", False)
    max_teacher_prompt_tokens: int = doc(
        "teacher prompts longer than this lose the start of their demonstration; 0 = no limit "
        "(the reference: 22,528)",
        0,
    )
    # remedies (notebook 07; each off at its default)
    distillation_weight: float = doc(
        "w in L = (1 - w) GRPO surrogate + w distillation on the same rollouts, each its "
        "own token-mean (TRL's SDPOConfig.distillation_weight); 1 = SDPO, 0 = GRPO",
        1.0,
    )
    route: str = doc(
        "none, or outcome (SRPO): a wrong rollout with a right sibling is distilled, every "
        "other rollout takes GRPO's update, one token-mean over both",
        "none",
    )
    teacher_entropy_weight: float = doc(
        "beta: each distilled token weighs exp(-beta H_teacher), over the step's mean "
        "(SRPO: 1); 0 = off",
        0.0,
    )
    demo_prefix: float = doc(
        "share of the demonstration's tokens the teacher sees, from its start (a "
        "partial-context teacher after PAINT); 1 = all",
        1.0,
    )
    variance_weight: bool = doc(
        "weigh each question's distillation by sqrt(p (1 - p)) of its group's success "
        "rate p, over the step's mean (SC-SDPO)",
        False,
    )
    # SFT
    epochs: int = doc("SFT passes over the data (steps caps it)", 1)
    # run management
    save_every: int = doc("checkpoint every N steps (and at the end)", 5)
    sample_every: int = doc("write rollouts to samples.jsonl every N steps; 0 = never", 1)
    log_to: list[str] = doc(
        "also stream the metrics to: tensorboard, wandb (offline unless WANDB_MODE is set)", []
    )

    def validate(self) -> None:
        check_values(self)
        if self.prompts_per_update and self.prompts_per_step % self.prompts_per_update:
            raise ConfigError(
                f"prompts_per_step = {self.prompts_per_step} is not a multiple of "
                f"prompts_per_update = {self.prompts_per_update}"
            )
        if self.load_in_4bit and self.finetune != "lora":
            raise ConfigError(
                f"finetune = {self.finetune!r} with load_in_4bit: 4-bit weights cannot be "
                f"trained; use finetune: lora, or load_in_4bit: false"
            )
        self._check_distillation()
        self._check_vllm()
        if self.route != "none" and self.distillation_weight != 1.0:
            raise ConfigError(
                f"route = {self.route!r} with distillation_weight = {self.distillation_weight}: "
                f"routing sends each rollout to one loss; set distillation_weight: 1"
            )

    @property
    def policy_loss(self) -> bool:
        """The run takes GRPO's clipped surrogate on some samples (GRPO, or SDPO mixed or
        routed with it)."""
        return self.algo == "grpo" or (
            self.algo == "sdpo" and (self.distillation_weight < 1 or self.route != "none")
        )

    def _check_vllm(self) -> None:
        """What the vllm backend cannot train with (tests/test_vllm_contract.py)."""
        if self.backend != "vllm":
            return
        if self.top_p < 1:
            raise ConfigError(
                f"top_p = {self.top_p} with backend vllm: vLLM reports each sampled token's "
                f"log-prob renormalised over the nucleus, not under the tempered distribution "
                f"the trainer scores, so pi / pi_old would not start at 1; use top_p: 1 (the "
                f"reference's), or backend: transformers"
            )
        if self.finetune != "full" and self.lora_r not in VLLM_LORA_RANKS:
            raise ConfigError(
                f"lora_r = {self.lora_r} with backend vllm: vLLM serves LoRA ranks "
                f"{list(VLLM_LORA_RANKS)} only"
            )

    def _check_distillation(self) -> None:
        from sdlib.losses import DISTILLATION_LOSSES

        loss = DISTILLATION_LOSSES[self.distill_loss]
        if loss.uses_topk and self.topk < 1:
            raise ConfigError(
                f"topk = {self.topk}: distill_loss {self.distill_loss!r} works on the student's "
                f"top-k tokens, so topk must be >= 1; for the whole vocabulary set "
                f"distill_loss: full"
            )
        if loss.alpha is not None and self.alpha != loss.alpha:
            raise ConfigError(
                f"alpha = {self.alpha}: distill_loss {self.distill_loss!r} is defined for "
                f"alpha = {loss.alpha} only; set alpha: {loss.alpha} or pick another loss"
            )


@dataclass
class ExperimentConfig:
    """What every experiment notebook shares: the policy, the run folder, evaluation."""

    model: str = shared("model", DEFAULT_MODEL)
    dtype: str = shared("dtype", "fp32")
    device: str = shared("device", "cpu")
    seeds: list[int] = doc(
        "one training run and one evaluation sampling per seed; tables aggregate across "
        "seeds (95% intervals over seeds, problems and samples)",
        [0],
    )
    out: str = doc(
        "run folder shared by the notebooks, a relative one under the repository root "
        "(wherever the kernel starts); reruns resume",
        "runs/lab",
    )
    preset: str = doc("preset the values come from, shown in figure titles", "none")
    few_shot: bool = shared("few_shot", True)
    thinking: str = shared("thinking", "default")
    gen_batch: int = shared("gen_batch", 32)
    backend: str = shared("backend", "transformers")
    max_new_tokens: int = shared("max_new_tokens", 128)
    grader: str = shared("grader", "careful")
    eval_data: list[str] = doc(
        "out-of-distribution evaluation sets", ["synthetic:multiplication:2:16"]
    )
    eval_limit: int = doc("problems per evaluation set; 0 = all", 0)
    eval_k: int = doc("samples per evaluation problem (avg@k)", 4)
    eval_temperature: float = doc("evaluation temperature (paper: 0.6)", 0.6)
    eval_top_p: float = doc("evaluation nucleus mass (paper: 0.95)", 0.95)
    eval_checkpoints: bool = doc(
        "also evaluate every saved checkpoint on eval_data: curves over training", True
    )

    def validate(self) -> None:
        check_values(self)
        # JupyterLab starts a kernel in the notebook's folder, `sdlib run` in the repository
        self.out = str(repo_path(self.out))
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ConfigError(f"seeds = {self.seeds!r}; expected distinct ints >= 0, at least one")
        for name in ("train", "grpo", "sdpo"):
            if hasattr(self, name):
                check_train_overrides(name, getattr(self, name))


def check_train_overrides(name: str, values: dict) -> None:
    """A ``train``/``grpo``/``sdpo`` mapping must hold valid TrainConfig parameters."""
    if not isinstance(values, dict):
        raise ConfigError(f"{name} = {values!r}; expected a mapping of TrainConfig parameters")
    try:
        from_dict(TrainConfig, values)
    except ConfigError as err:
        raise ConfigError(f"in {name}: {err}") from None


@dataclass
class OrganismExperimentConfig(ExperimentConfig):
    """Notebook 00: the model organism and its premise (checking pays in it)."""

    model: str = shared("model", "organism")
    eval_data: list[str] = doc(
        "held-out problems the premise is measured on",
        ["organism:affine:heldout", "organism:bracket:heldout"],
    )
    modes: list[str] = doc(
        "how a reply starts: free (the model picks its mode), search (opened with <think>), "
        "direct (opened with 'x =', the confident mode: no check)",
        ["free", "search", "direct"],
    )
    examples: int = doc("corpus documents shown per kind", 1)

    def validate(self) -> None:
        super().validate()
        if not set(self.modes) <= {"free", "search", "direct"} or "direct" not in self.modes:
            raise ConfigError(
                f"modes = {self.modes!r}; expected free, search and direct (direct is the "
                f"reference every other mode is compared with)"
            )


@dataclass
class ContextConfig(ExperimentConfig):
    """Notebook 01: how rich context changes score, length and epistemic words (Sec. 3)."""

    data: list[str] = doc("candidate problems", ["synthetic:addition:2:48"])
    pool_limit: int = doc("candidates screened for the 1-4 of 8 band; 0 = all", 0)
    select_k: int = doc("unguided samples per candidate used to select it", 8)
    band: list[int] = doc("keep problems solved [low, high] times of select_k (paper 1-4)", [1, 4])
    max_problems: int = doc("most problems kept (paper: 100)", 16)
    samples: int = doc("samples per problem and condition (paper: 8)", 8)
    temperature: float = doc("sampling temperature of the conditions", 0.6)
    top_p: float = doc("nucleus mass of the conditions", 0.95)
    top_k: int = doc("top-k of the conditions' sampling; 0 = off (the reference: 20)", 0)
    sft_correct_only: bool = doc(
        "D_ug/D_sg keep correct responses only (paper); false keeps "
        "all (the smoke model is never right)",
        True,
    )

    def validate(self) -> None:
        super().validate()
        if len(self.band) != 2 or not 0 <= self.band[0] <= self.band[1] <= self.select_k:
            raise ConfigError(
                f"band = {self.band!r}; expected [low, high] with "
                f"0 <= low <= high <= select_k = {self.select_k}"
            )


@dataclass
class SFTExperimentConfig(ExperimentConfig):
    """Notebook 02: SFT on unguided (D_ug) vs solution-guided (D_sg) responses (Sec. 4)."""

    train: dict = doc("TrainConfig parameters of both SFT runs", {"steps": 8, "lr": 2e-4})


@dataclass
class OnPolicyConfig(ExperimentConfig):
    """Notebook 03: SDPO vs GRPO on the same problems (Sec. 5)."""

    data: list[str] = doc("training problems", ["synthetic:addition:2:64"])
    train: dict = doc("TrainConfig parameters shared by every run", {"steps": 6})
    grpo: dict = doc("TrainConfig parameters of the GRPO run only", {})
    sdpo: dict = doc("TrainConfig parameters of the SDPO runs only", {})
    strip_variant: bool = doc("also run SDPO with demonstrations stripped of thinking", True)


@dataclass
class MechanismConfig(ExperimentConfig):
    """Notebook 06: notebook 03's GRPO and SDPO on organisms that differ from ``model`` in
    one property each (``sdlib.organism.config.VARIANTS``): the study's account, tested."""

    model: str = shared("model", "organism")
    data: list[str] = doc("training problems", ["organism:all:train"])
    train: dict = doc("TrainConfig parameters shared by every run", {"steps": 6})
    grpo: dict = doc("TrainConfig parameters of the GRPO runs only", {})
    sdpo: dict = doc("TrainConfig parameters of the SDPO runs only", {})
    variants: list[str] = doc(
        "organism variants, each trained like the default and paired against it: silent, "
        "decorative, checking",
        ["silent", "decorative", "checking"],
    )

    def validate(self) -> None:
        super().validate()
        from sdlib.organism.config import VARIANTS

        if not self.model.startswith("organism"):
            raise ConfigError(f"model = {self.model!r}; notebook 06 needs an organism spec")
        scales = ("organism", "smoke", "gpu")  # sizes of the default, not one-property variants
        unknown = [v for v in self.variants if v not in VARIANTS or v in scales]
        if unknown or not self.variants or len(set(self.variants)) != len(self.variants):
            raise ConfigError(
                f"variants = {self.variants!r}; expected distinct names among "
                f"{[v for v in VARIANTS if v not in scales]}"
            )


@dataclass
class TeacherConfig(ExperimentConfig):
    """Notebook 04: SDPO with a fixed (initial) vs moving (EMA) teacher (Sec. 5.4)."""

    data: list[str] = doc("training problems", ["synthetic:addition:2:64"])
    train: dict = doc("TrainConfig parameters shared by every run", {"steps": 6})
    sdpo: dict = doc("TrainConfig parameters of the SDPO runs", {})
    ema_rates: list[float] = doc("EMA teacher update rates to compare with the fixed one", [0.05])


@dataclass
class CoverageConfig(ExperimentConfig):
    """Notebook 05: task coverage |D|: in-domain score vs OOD accuracy (Sec. 6)."""

    data: list[str] = doc("the pool the nested subsets are drawn from", ["synthetic:addition:2:64"])
    sizes: list[int] = doc("numbers of distinct training problems |D| (nested subsets)", [1, 8, 64])
    algos: list[str] = doc("algorithms to compare", ["sdpo", "grpo"])
    train: dict = doc("TrainConfig parameters shared by every run", {"steps": 4})
    grpo: dict = doc("TrainConfig parameters of the GRPO runs only", {})
    sdpo: dict = doc("TrainConfig parameters of the SDPO runs only", {})
    subsets: list[str] = doc(
        "training sets, one per size (the reference: seen_1x64, seen_8x8, seen_64, seen_128, "
        "seen_512); empty = nested subsets of data",
        [],
    )

    reach: float = doc(
        "training reward the efficiency measure waits for: steps and generated tokens until "
        "a step's mean reward first reaches it",
        0.9,
    )
    budget: int = doc(
        "the narrow regime where compression should pay: the budget_sizes sets trained again "
        "with responses cut at this many tokens, so the base's searches fit only part of the "
        "time and a short recalled answer is worth more (0: no such runs)",
        0,
    )
    budget_sizes: list[int] = doc("sizes |D| trained again under budget (each one of sizes)", [1])
    narrow_train: list[str] = doc(
        "narrow-coverage training sets, each trained on with every algo (the study's "
        "chemistry row: chemistry_train)",
        [],
    )
    narrow_test: list[str] = doc(
        "their in-domain test sets, one per narrow_train set (chemistry)", []
    )

    def validate(self) -> None:
        super().validate()
        if len(self.narrow_train) != len(self.narrow_test):
            raise ConfigError(
                f"narrow_train = {self.narrow_train} and narrow_test = {self.narrow_test} "
                f"must pair up: one test set per training set"
            )
        if self.subsets and len(self.subsets) != len(self.sizes):
            raise ConfigError(
                f"subsets = {self.subsets} names {len(self.subsets)} sets for the "
                f"{len(self.sizes)} sizes {self.sizes}; give one per size, or none"
            )
        if not set(self.algos) <= {"sdpo", "grpo"}:
            raise ConfigError(f"algos = {self.algos!r}; expected a list of sdpo and grpo")
        if self.budget < 0 or (self.budget and not set(self.budget_sizes) <= set(self.sizes)):
            raise ConfigError(
                f"budget = {self.budget}, budget_sizes = {self.budget_sizes}: the budget is a "
                f"token count >= 0 and its sizes must be among sizes = {self.sizes}"
            )


# notebook 07's remedies at their sources' defaults where a source gives one (route and
# entropy weight: SRPO; trust region's rate: the reference's teacher_update_rate), and the
# midpoint where it does not (TRL's mix defaults to 1, pure distillation; PAINT's own
# masking rule was not pinned down, so half the demonstration): chosen before any run
REMEDIES = {
    "trust region": {"teacher": "trust-region"},
    "GRPO+SDPO mix": {"distillation_weight": 0.5},
    "SRPO": {"route": "outcome", "teacher_entropy_weight": 1.0},
    "SC-SDPO": {"variance_weight": True},
    "half context": {"demo_prefix": 0.5},
}


@dataclass
class RemediesConfig(ExperimentConfig):
    """Notebook 07: the remedies proposed since the study against SDPO and GRPO, the same
    steps, seeds, problems and evaluation for all."""

    data: list[str] = doc("training problems", ["synthetic:addition:2:64"])
    train: dict = doc("TrainConfig parameters shared by every run", {"steps": 6})
    grpo: dict = doc("TrainConfig parameters of the GRPO run only", {})
    sdpo: dict = doc("TrainConfig parameters of SDPO and every remedy", {})
    remedies: dict = doc(
        "label -> TrainConfig parameters over SDPO's: one run per seed each (sdlib.train.sdpo)",
        REMEDIES,
    )
    reach: float = doc("training reward whose first step counts as reaching it (efficiency)", 0.9)

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.remedies, dict) or not self.remedies:
            raise ConfigError(f"remedies = {self.remedies!r}; expected a mapping label -> params")
        for label, values in self.remedies.items():
            if label in ("base", "GRPO", "SDPO"):
                raise ConfigError(f"remedies: the label {label!r} names a reference run; rename it")
            check_train_overrides(f"remedies[{label!r}]", values)


EXPERIMENTS = {
    "00_model_organism": OrganismExperimentConfig,
    "01_context_richness": ContextConfig,
    "02_sft_guided_vs_unguided": SFTExperimentConfig,
    "03_sdpo_vs_grpo": OnPolicyConfig,
    "04_fixed_vs_moving_teacher": TeacherConfig,
    "05_task_coverage": CoverageConfig,
    "06_mechanism": MechanismConfig,
    "07_remedies": RemediesConfig,
}


def from_namespace(cls, namespace: dict):
    """The schema's fields picked by name out of a notebook's globals (its parameters cell)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return from_dict(cls, {k: v for k, v in namespace.items() if k in names})


# Presets: params/<preset>/<notebook>.yaml, or a folder holding only _preset.yaml that
# derives one preset from another (extends: <preset>, set: {...}).
PARAMS_DIR = REPO_ROOT / "params"


def demo_folder(preset: str) -> str:
    """The run folder ``make demo`` writes at ``preset`` (the Makefile's ``--out``): the
    notebooks' parameters cells and ``preset()`` point there, so they reuse its runs."""
    return f"runs/{preset}/demo"


def notebook_name(name: str) -> str:
    """A notebook's full name from itself or a unique prefix ("03")."""
    found = [n for n in EXPERIMENTS if n == name or n.startswith(name)]
    if len(found) != 1:
        raise ConfigError(
            f"notebook {name!r} is not one of {list(EXPERIMENTS)} (or 'all'; a unique prefix "
            f"such as '03' works too)"
        )
    return found[0]


def presets() -> list[str]:
    return sorted(p.name for p in PARAMS_DIR.iterdir() if p.is_dir())


def defines(preset: str, name: str, seen: tuple[str, ...] = ()) -> bool:
    """Whether ``preset`` (or a preset it extends) holds ``<name>.yaml``."""
    folder = PARAMS_DIR / preset
    if (folder / f"{name}.yaml").exists():
        return True
    if preset in seen or not (folder / "_preset.yaml").exists():
        return False
    try:
        spec = read_yaml((folder / "_preset.yaml").read_text(), preset)
    except ConfigError:
        return True  # preset_values names what is wrong with it
    parent = spec.get("extends") if isinstance(spec, dict) else None
    return not isinstance(parent, str) or defines(parent, name, (*seen, preset))


def preset_values(name: str, preset: str, seen: tuple[str, ...] = ()) -> dict:
    """The YAML values of notebook ``name`` at ``preset``. A preset folder may hold
    ``_preset.yaml`` with ``extends: <preset>`` and ``set: {...}``: the other preset's values
    with these on top (then the folder's own ``<name>.yaml``, if any)."""
    folder = PARAMS_DIR / preset
    if not folder.is_dir():
        raise ConfigError(f"no preset {preset!r}; presets: {presets()}")
    if preset in seen:
        raise ConfigError(f"presets extend each other in a circle: {' -> '.join([*seen, preset])}")
    values, own, where = {}, folder / f"{name}.yaml", folder / "_preset.yaml"
    if where.exists():
        spec = read_yaml(where.read_text(), str(where))
        if not isinstance(spec, dict) or not isinstance(spec.get("extends"), str):
            raise ConfigError(
                f"{where}: expected a mapping with extends: <preset> and set: {{...}}, got {spec!r}"
            )
        if not isinstance(spec.get("set") or {}, dict):
            raise ConfigError(f"{where}: set must be a mapping of parameter: value")
        values = preset_values(name, spec["extends"], (*seen, preset))
        values.update({k: v for k, v in (spec.get("set") or {}).items()
                       if k in EXPERIMENTS[name].__dataclass_fields__})  # fmt: skip
    elif not own.exists():
        raise ConfigError(f"preset {preset!r} has no {own.name}; presets: {presets()}")
    if own.exists():
        values.update(read_yaml(own.read_text(), str(own)) or {})
    return values


def preset(name: str, notebook: str, out: str | Path | None = None, **overrides):
    """The configuration of ``notebook`` (its name or a unique prefix) at preset ``name``:
    what ``sdlib run --preset <name>`` injects into its parameters cell, checked by its
    schema, with the schema's defaults for what the preset leaves out. ``out`` defaults to
    ``make demo``'s folder at that preset, so a notebook finds the runs it made.

        cfg = config.preset("organism", "03", eval_k=4)
    """
    notebook = notebook_name(notebook)
    values = {**preset_values(notebook, name), **overrides}
    values.update(out=str(out or demo_folder(name)), preset=name)
    try:
        return from_dict(EXPERIMENTS[notebook], values)
    except ConfigError as err:
        raise ConfigError(f"{notebook} (preset {name}): {err}") from None
