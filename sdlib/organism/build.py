"""Build an organism: corpus -> pretraining from scratch -> premise gate -> cached HF folder.

    folder = build("organism")          # or an OrganismConfig; trains on first use only

The folder is ``sdlib.settings.cache_dir() / "organism" / <config.key()>`` and holds an
ordinary Hugging Face model (config.json, model.safetensors, generation_config.json, the
tokenizer files) plus ``premise.json``: the gate's figures, the build's token counts,
seconds and tokens/s, the config and a hash of the weights. It is written to a temporary
folder and renamed into place, so a reader never sees half a build and two concurrent
builders leave one result. A build whose gate is ``require`` and fails is kept (so the
verdict is not recomputed) but never handed out: ``build`` raises ``PremiseError`` with
the figures and what to change.

Determinism: the corpus, its order and the initial weights come from ``config.seed``; one
config gives the same weights on one machine with one thread count (float reductions may
differ across CPUs and thread counts). Threads are torch's setting; for speed on a shared
machine set ``OMP_WAIT_POLICY=PASSIVE`` before torch starts.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from sdlib.clock import phase
from sdlib.organism import corpus, gate, language
from sdlib.organism.config import REVISION, OrganismConfig, from_spec, variant
from sdlib.organism.pretrain import compiler_missing, pretrain
from sdlib.organism.tokenizer import build_tokenizer
from sdlib.settings import cache_dir, check_device

log = logging.getLogger(__name__)
CHUNK = 4000  # documents drawn and tokenized at a time


class PremiseError(RuntimeError):
    """A built organism in which checking does not pay (see its premise.json)."""


def resolve(config: OrganismConfig | str) -> OrganismConfig:
    """A config, a variant name (``silent``) or a spec (``organism:silent``)."""
    if isinstance(config, OrganismConfig):
        return config
    return from_spec(config) if config.startswith("organism") else variant(config)


def folder_of(config: OrganismConfig | str) -> Path:
    return cache_dir() / "organism" / resolve(config).key()


def build(config: OrganismConfig | str = "organism", progress: bool = True) -> Path:
    """The built organism's folder: from the cache (its weights checked against the hash
    the build recorded), else built now (minutes)."""
    cfg = resolve(config)
    target = folder_of(cfg)
    if not (target / "premise.json").exists():
        check_device(cfg.device)
        if cfg.compile and (why := compiler_missing()):
            raise RuntimeError(why)
        _clear_abandoned(target)
        tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        with phase("build organism"):
            _build_into(cfg, tmp, progress)
        if target.exists() and not (target / "premise.json").exists():
            shutil.rmtree(target)  # a folder that lost its record: the new build replaces it
        try:
            tmp.rename(target)
        except OSError:  # another process finished first; its build is the same config
            shutil.rmtree(tmp, ignore_errors=True)
    premise = _current_verdict(cfg, read_premise(target), target)
    _check_weights(target, premise["build"]["weights_sha256"])
    passed = premise["gate"]["passed"]
    if passed not in (True, False, None):
        raise OrganismDamaged(
            f"{target / 'premise.json'}: gate.passed = {passed!r} is not true, false or null; "
            f"the record is damaged: delete {target} to build it again"
        )
    if cfg.gate == "require" and passed is not True:
        raise PremiseError(refusal(cfg, premise, target))
    return target


def _current_verdict(cfg: OrganismConfig, premise: dict, folder: Path) -> dict:
    """The premise with its gate verdict derived again from its stored figures when the
    pass rule changed since the build (``gate.RULES``), and written back."""
    figures = premise["gate"]
    if figures.get("skipped") or figures.get("rules") == gate.RULES:
        return premise
    try:
        figures |= gate.verdict(figures, cfg.families, cfg.ood_families, cfg.gate_spec())
    except (KeyError, TypeError, IndexError) as err:
        raise OrganismDamaged(
            f"{folder / 'premise.json'}: its gate figures lack {err}; delete {folder} to build "
            "it again"
        ) from None
    tmp = folder / f"premise.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(premise, indent=1) + "\n")
    tmp.replace(folder / "premise.json")  # whole or not at all
    log.info("organism %s: gate verdict derived again under rules %d", cfg.name, gate.RULES)
    return premise


class OrganismDamaged(RuntimeError):
    """A cached organism whose files do not match what its build recorded."""


def read_premise(folder: Path) -> dict:
    path = Path(folder) / "premise.json"
    try:
        premise = json.loads(path.read_text())
        premise["gate"]["passed"], premise["build"]["weights_sha256"]  # noqa: B018
    except (ValueError, KeyError, TypeError) as err:
        raise OrganismDamaged(
            f"{path} is not a build record ({type(err).__name__}: {err}); delete {folder} "
            "to build it again"
        ) from None
    return premise


def _check_weights(folder: Path, expected: str) -> None:
    """The folder's weights hash as recorded (checked once per process and file state)."""
    weights = folder / "model.safetensors"
    try:
        stat = weights.stat()
        found = _weights_digest(str(weights), stat.st_size, stat.st_mtime_ns)
    except Exception as err:  # noqa: BLE001 - any failure to read them is damage, said in one line
        raise OrganismDamaged(
            f"{weights} cannot be read ({type(err).__name__}: {str(err)[:120]}); delete "
            f"{folder} to build it again"
        ) from None
    if found != expected:
        raise OrganismDamaged(
            f"{weights} is not the build's weights (SHA-256 {found[:16]}..., recorded "
            f"{expected[:16]}...): the file was changed or damaged; delete {folder} to build "
            "it again"
        )


@functools.lru_cache(maxsize=16)
def _weights_digest(path: str, size: int, mtime_ns: int) -> str:
    """``weights_hash`` of the weights in ``path``, read as the model reads them (tied
    weights included); size and time are the cache key: a changed file is read again."""
    model = LlamaForCausalLM.from_pretrained(Path(path).parent, dtype=torch.float32)
    return weights_hash(model)


def _clear_abandoned(target: Path) -> None:
    """Remove the temporary folders of builds whose process is gone (killed midway)."""
    for tmp in target.parent.glob(f"{target.name}.tmp*"):
        pid = tmp.name.rsplit(".tmp", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def splits(cfg: OrganismConfig) -> dict[str, dict[str, list]]:
    """family -> {"train", "heldout"} for the problem and OOD families."""
    lang = cfg.language()
    names = cfg.families + cfg.ood_families
    return {
        n: language.split_problems(language.FAMILIES[n], lang, cfg.heldout, cfg.split_seed)
        for n in names
    }


def problems(
    config: OrganismConfig | str = "organism", split: str = "heldout", families=None
) -> list:
    """The organism's problems of one split (``train`` or ``heldout``) for ``families``
    (default: its problem families, then its OOD families), as sdlib ``Problem``s; no
    build needed. Held-out problems never appear in the corpus."""
    cfg = resolve(config)
    if split not in ("train", "heldout"):
        raise ValueError(f"split={split!r}: expected 'train' or 'heldout'")
    parts = splits(cfg)
    names = families or list(parts)
    unknown = [n for n in names if n not in parts]
    if unknown:
        raise ValueError(f"families {unknown} are not in organism {cfg.name!r}: {list(parts)}")
    return [p for n in names for p in parts[n][split]]


def corpus_examples(config: OrganismConfig | str = "organism", seed: int = 0) -> dict:
    """One document of each kind as text (trained pieces in ``[[...]]``), for display."""
    cfg = resolve(config)
    parts = splits(cfg)
    train = [p for n in cfg.families for p in parts[n]["train"]]
    stated = [p for n in cfg.ood_families * cfg.ood_verdicts for p in parts[n]["train"]]
    rng, out = random.Random(seed), {}
    while len(out) < len([k for k, v in cfg.corpus().shares.items() if v > 0]):
        for kind, doc in corpus.documents(cfg.corpus(), train, 50, rng, stated):
            out.setdefault(kind, "".join(f"[[{t}]]" if on else t for t, on in doc))
    return {k: out[k] for k in corpus.KINDS if k in out}


def make_corpus(cfg: OrganismConfig, tokenizer) -> tuple[corpus.Encoded, dict]:
    """Documents until the token budget, tokenized; and their token count per kind."""
    parts = splits(cfg)
    train = [p for n in cfg.families for p in parts[n]["train"]]
    spec, rng = cfg.corpus(), random.Random(cfg.seed)
    stated = [p for n in cfg.ood_families * cfg.ood_verdicts for p in parts[n]["train"]]
    chunks, kinds, total = [], [], 0
    while total < cfg.tokens:
        drawn = corpus.documents(spec, train, CHUNK, rng, stated)
        encoded = corpus.encode(tokenizer, [doc for _, doc in drawn])
        # the fewest documents that reach the budget: starts[n] >= what is still missing
        need = int(np.searchsorted(encoded.starts, cfg.tokens - total))
        keep = max(1, min(len(encoded), need))
        chunks.append(encoded.head(keep))
        kinds += [kind for kind, _ in drawn[:keep]]
        total += int(chunks[-1].starts[-1])
    data = corpus.Encoded.join(chunks)
    per_kind: dict[str, int] = {}
    for kind, n in zip(kinds, data.lengths(), strict=True):
        per_kind[kind] = per_kind.get(kind, 0) + int(n)
    return data, per_kind


def new_model(cfg: OrganismConfig, tokenizer) -> LlamaForCausalLM:
    """A freshly initialised Llama of the config's size (seeded; global RNG untouched)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden,
        intermediate_size=cfg.ffn,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=tokenizer.model_max_length,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return model


def weights_hash(model) -> str:
    """SHA-256 over the state dict's names and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def _build_into(cfg: OrganismConfig, folder: Path, progress: bool) -> None:
    tokenizer = build_tokenizer()
    start = time.perf_counter()
    data, per_kind = make_corpus(cfg, tokenizer)
    corpus_s = time.perf_counter() - start
    model = new_model(cfg, tokenizer).to(cfg.device)
    log.info("organism %s: pretraining on %d tokens", cfg.name, len(data.ids))
    stats = pretrain(model, data, tokenizer.pad_token_id, cfg.schedule(), progress)
    start = time.perf_counter()
    if cfg.gate == "skip":
        figures = {"passed": None, "skipped": True, "reasons": []}
    else:
        figures = gate.run_gate(
            model,
            tokenizer,
            splits(cfg),
            cfg.language(),
            cfg.gate_spec(),
            cfg.families,
            cfg.ood_families,
        )
    figures["seconds"] = round(time.perf_counter() - start, 1)
    folder.mkdir(parents=True)
    model.to("cpu").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    premise = {
        "name": cfg.name,
        "key": cfg.key(),
        "revision": REVISION,
        "gate": figures,
        "build": {
            **stats,
            "corpus_seconds": round(corpus_s, 1),
            "documents": len(data),
            "tokens_by_kind": per_kind,
            "trained_tokens": int(data.trained.sum()),
            "parameters": sum(p.numel() for p in model.parameters()),
            "weights_bytes": (folder / "model.safetensors").stat().st_size,
            "weights_sha256": weights_hash(model),
            "torch": torch.__version__,
        },
        "config": dataclasses.asdict(cfg),
    }
    (folder / "premise.json").write_text(json.dumps(premise, indent=1) + "\n")


def refusal(cfg: OrganismConfig, premise: dict, folder: Path) -> str:
    """Why a build is refused, and what to change."""
    reasons = "; ".join(premise["gate"]["reasons"])
    return (
        f"organism {cfg.name!r} fails its premise gate: {reasons}. Checking does not pay "
        "enough in this build, so the study's experiments would mean nothing on it. Raise "
        "`tokens` (the verdict skill appears late and suddenly), raise `verdicts_share` or "
        "`facts_share` when verdicts or values are often wrong, or grow the model (`hidden`, "
        f"`layers`); figures in {folder / 'premise.json'}. An ablation that is meant to fail "
        "sets gate='record'."
    )
