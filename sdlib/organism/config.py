"""The organism's configuration and its named variants (``organism``, ``organism:<name>``).

Every knob that changes the built weights is a field here, documented once; the cache key
is a hash of all fields but ``name`` plus ``REVISION`` (bump it when code changes what a
config builds). Variants are the default with a few fields replaced, so an ablation is
one parameter away from the organism it is compared with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from sdlib.organism.corpus import KINDS, CorpusSpec
from sdlib.organism.gate import GateSpec
from sdlib.organism.language import FAMILIES, MAX_NUMBER, Language
from sdlib.organism.pretrain import Schedule
from sdlib.schema import ConfigError, doc, from_dict

REVISION = 2  # bump when the code changes what a config builds
# fields added since REVISION 2, with the value that builds what came before: at that value
# they stay out of the key, so existing builds keep their folders
ADDED = {"ood_verdicts": False, "device": "cpu"}
GATE_MODES = ("require", "record", "skip")


@dataclass
class OrganismConfig:
    """One organism: reasoning language, corpus mix, model size, pretraining, premise gate."""

    name: str = doc("variant name (not part of the cache key)", "organism")
    # the language
    families: list[str] = doc(
        "families whose training problems the corpus holds (affine, bracket, mirror)",
        ["affine", "bracket"],
    )
    ood_families: list[str] = doc(
        "families seen only as forward-fact drills, never as problems: unseen problem types",
        [],
    )
    ood_verdicts: bool = doc(
        "also state the OOD families' training problems in verdict drills (checked against "
        "hypotheses, never searched or answered in a chat): a weaker sense of unseen",
        False,
    )
    heldout: int = doc("held-out problems per family; they never appear in the corpus", 200)
    split_seed: int = doc("seed of the train / held-out split", 0)
    a_values: list[int] = doc("[low, high] of the coefficient a", [2, 9])
    b_values: list[int] = doc("[low, high] of the offset b", [0, 9])
    x_values: list[int] = doc(
        "[low, high] of x: the hypothesis space a search steps through", [0, 9]
    )
    verbalize: bool = doc("hedge with the study's epistemic words (False: silent ablation)", True)
    checks: str = doc(
        "computed, or decorative (ablation: a check writes no value, so it cannot pay)",
        "computed",
    )
    slip_rate: float = doc("chance that a check first writes a wrong value, then corrects it", 0.0)
    # the corpus mix (shares of documents)
    student_share: float = doc("share of documents that answer the student prompt", 0.49)
    confident_share: float = doc("of those, the share answered confidently (no check)", 0.08)
    recall_share: float = doc("bare question -> answer: training answers stated as facts", 0.05)
    context_share: float = doc("teacher reprompt / hint holding a correct solution", 0.15)
    facts_share: float = doc("drills of forward facts (check 7 * 3 = 21 , 21 + 2 = 23)", 0.15)
    verdicts_share: float = doc(
        "drills of verdicts: a problem, then checks half of them right", 0.2
    )
    verify_after_trace: float = doc("with a full trace in context: share that checks first", 0.0)
    verify_after_answer: float = doc("with a bare answer in context: share that checks first", 0.8)
    drill_items: int = doc("facts per drill document", 8)
    # the model (a LlamaForCausalLM with tied embeddings)
    hidden: int = doc("hidden size", 128)
    layers: int = doc("transformer layers", 3)
    heads: int = doc("attention heads (hidden must divide by it)", 4)
    ffn: int = doc("MLP inner size", 384)
    # pretraining
    tokens: int = doc("token budget: corpus tokens seen once (prompts included)", 12_000_000)
    batch_tokens: int = doc("most padded tokens per batch", 4096)
    lr: float = doc("peak AdamW learning rate (cosine decay after a linear warm-up)", 2e-3)
    warmup: int = doc("warm-up steps", 50)
    weight_decay: float = doc("AdamW weight decay on matrices", 0.1)
    bf16: bool = doc(
        "bf16 autocast in pretraining (weights stay fp32). Off by default: on a CPU without "
        "native bf16 (AVX-512 BF16 or AMX; e.g. an AVX2-only EPYC) its matrix products are "
        "emulated and the build runs ~50x slower, and with it on it was no faster elsewhere",
        False,
    )
    compile: bool = doc(
        "pretrain through torch.compile (needs a C++ compiler; ~2x faster on CPU, and its "
        "kernels round differently from eager ones, so the weights differ)",
        True,
    )
    seed: int = doc("seed of the corpus, its order and the initial weights", 0)
    device: str = doc(
        "where it pretrains and is gated: cpu, or cuda (minutes for a 20M-parameter one; "
        "other arithmetic, so other weights and another cache key)",
        "cpu",
    )
    # the premise gate
    gate: str = doc(
        "require (refuse a failing build), record (measure only: ablations), skip (smoke)",
        "require",
    )
    gate_problems: int = doc("held-out problems per family the gate samples", 200)
    gate_temperature: float = doc("sampling temperature of the gate (the rollouts' 1.0)", 1.0)
    gate_min_gain: float = doc("least search - direct held-out accuracy gain to pass", 0.5)
    gate_max_new_tokens: int = doc("most tokens per gate response", 320)

    def validate(self) -> None:
        _check(set(self.families + self.ood_families) <= set(FAMILIES), "families", FAMILIES)
        _check(self.families and not set(self.families) & set(self.ood_families), "families")
        _check(self.checks in ("computed", "decorative"), "checks", ("computed", "decorative"))
        _check(self.gate in GATE_MODES, "gate", GATE_MODES)
        for name in ("a_values", "b_values", "x_values"):
            lo_hi = getattr(self, name)
            _check(len(lo_hi) == 2 and 0 <= lo_hi[0] <= lo_hi[1], name)
        _check(self.a_values[0] >= 1, "a_values")
        top = self.a_values[1] * (self.x_values[1] + self.b_values[1])
        _check(top <= MAX_NUMBER, "a_values", f"largest value {top} must be <= {MAX_NUMBER}")
        _check(self.hidden % self.heads == 0, "heads", "hidden must divide by heads")
        for name in ("heldout", "drill_items", "hidden", "layers", "heads", "ffn", "tokens"):
            _check(getattr(self, name) >= 1, name, ">= 1")

    def language(self) -> Language:
        return Language(
            a_values=tuple(self.a_values),
            b_values=tuple(self.b_values),
            x_values=tuple(self.x_values),
            verbalize=self.verbalize,
            checks=self.checks,
            slip_rate=self.slip_rate,
        )

    def corpus(self) -> CorpusSpec:
        student = self.student_share
        shares = {
            "search": student * (1 - self.confident_share),
            "confident": student * self.confident_share,
            "recall": self.recall_share,
            "context": self.context_share,
            "facts": self.facts_share,
            "verdicts": self.verdicts_share,
        }
        assert set(shares) == set(KINDS)
        return CorpusSpec(
            language=self.language(),
            shares=shares,
            verify_after_trace=self.verify_after_trace,
            verify_after_answer=self.verify_after_answer,
            drill_items=self.drill_items,
            drill_families=tuple(self.families + self.ood_families),
        )

    def schedule(self) -> Schedule:
        return Schedule(
            lr=self.lr,
            warmup=self.warmup,
            weight_decay=self.weight_decay,
            batch_tokens=self.batch_tokens,
            bf16=self.bf16,
            seed=self.seed,
            compile=self.compile,
        )

    def gate_spec(self) -> GateSpec:
        return GateSpec(
            problems=min(self.gate_problems, self.heldout),
            temperature=self.gate_temperature,
            min_gain=self.gate_min_gain,
            max_new_tokens=self.gate_max_new_tokens,
            seed=self.seed,
        )

    def key(self) -> str:
        """The cache key: a hash of every field but ``name`` (and of the fields in ``ADDED``
        only where they differ from the value that reproduces older builds), and
        ``REVISION``."""
        fields = {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k != "name" and not (k in ADDED and v == ADDED[k])
        }
        text = json.dumps({"revision": REVISION, **fields}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check(ok, field: str, allowed=None) -> None:
    if not ok:
        hint = f"; expected {allowed}" if allowed is not None else ""
        raise ConfigError(f"OrganismConfig.{field} is invalid{hint}")


# name -> the fields that differ from the default
VARIANTS: dict[str, dict] = {
    "organism": {},
    # seconds on CPU, for tests and CI: too small to learn the premise, so not gated
    "smoke": {
        "hidden": 32,
        "layers": 1,
        "heads": 2,
        "ffn": 64,
        "tokens": 40_000,
        "heldout": 20,
        "gate": "skip",
        "compile": False,
    },
    # The mechanism's variants (notebook 06), each one property away from the default; their
    # gates record (a variant may remove the premise on purpose, and the notebook says so).
    # the same search, hedged with no epistemic word: nothing for SDPO to suppress
    # a larger organism built on a GPU (bench/gpu_check.py): 20M parameters, minutes there
    "gpu": {
        "hidden": 512,
        "layers": 6,
        "heads": 8,
        "ffn": 1536,
        "batch_tokens": 16384,
        "device": "cuda",
    },  # fmt: skip
    "silent": {"verbalize": False, "gate": "record"},
    # checks that compute nothing: search cannot beat a guess
    "decorative": {"checks": "decorative", "gate": "record"},
    # a teacher that keeps checking: with a full correct trace in context it still verifies
    # the answer before stating it (the default answers such a context confidently)
    "checking": {"verify_after_trace": 1.0, "gate": "record"},
    # an unseen problem type: mirror, ( x + b ) * a = y, appears only as forward-fact drills
    # (the gate reports whether search still pays on it)
    "unseen": {"ood_families": ["mirror"], "gate": "record"},
    # the same, its problems also stated in verdict drills (checked, never searched)
    "unseen_stated": {"ood_families": ["mirror"], "ood_verdicts": True, "gate": "record"},
}


def variant(name: str = "organism", **overrides) -> OrganismConfig:
    """A registered variant (``VARIANTS``), or several joined by ``+`` (their fields in
    order, later ones winning: ``silent+smoke`` is the silent variant at smoke scale),
    optionally with fields replaced."""
    fields: dict = {}
    for part in name.split("+"):
        if part not in VARIANTS:
            raise ConfigError(f"no organism variant {part!r}; known: {', '.join(VARIANTS)}")
        fields |= VARIANTS[part]
    return from_dict(OrganismConfig, {"name": name, **fields, **overrides})


def variant_spec(model: str, name: str) -> str:
    """The spec of variant ``name`` at the scale of the organism ``model``: ``organism`` ->
    ``organism:silent``, ``organism:smoke`` -> ``organism:silent+smoke``."""
    base = model.partition(":")[2]
    return f"organism:{name}" if base in ("", "organism") else f"organism:{name}+{base}"


def from_spec(spec: str) -> OrganismConfig:
    """``organism`` or ``organism:<variant>`` -> its config."""
    head, _, name = spec.partition(":")
    if head != "organism":
        raise ConfigError(f"model spec {spec!r} is not organism or organism:<variant>")
    return variant(name or "organism")
