"""Typed parameter schemas, validated before any work starts.

Each schema is a dataclass whose fields carry their one-line documentation (``doc(...)``);
the CLI's ``--help``, the YAML presets and the notebooks' parameters all come from here.
A preset is a plain YAML mapping of field names to values; ``load`` rejects unknown keys and
values of the wrong type with a message that names the field, the value and what is expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sdlib.models import DEFAULT_MODEL


class ConfigError(ValueError):
    """A parameter is unknown or has a value of the wrong type or range."""


def doc(help: str, default: Any = dataclasses.MISSING, **kwargs) -> Any:
    """A dataclass field with its documentation attached (lists get a factory)."""
    if isinstance(default, list | dict):
        kwargs["default_factory"] = lambda d=default: type(d)(d)
    elif default is not dataclasses.MISSING:
        kwargs["default"] = default
    return field(metadata={"help": help}, **kwargs)


@dataclass
class EvalConfig:
    """``sdlib eval``: k samples per problem on one or more problem sets."""

    model: str = doc("policy spec: bundled:NAME, tiny-random:LxH, local folder or Hub id",
                     DEFAULT_MODEL)
    data: list[str] = doc("problem sets: short names (aime24, math500, seen_64, chemistry), "
                          "paths (.parquet/.jsonl/.json) or synthetic:FAMILY[:LEVEL[:COUNT]]",
                          ["synthetic:addition:1:8"])
    limit: int = doc("evaluate at most this many problems per set; 0 = all", 0)
    k: int = doc("samples per problem (avg@k, pass@k)", 4)
    max_new_tokens: int = doc("most tokens generated per response", 256)
    temperature: float = doc("sampling temperature; 0 = greedy", 0.6)
    top_p: float = doc("nucleus sampling mass", 0.95)
    seed: int = doc("random seed of the sampler", 0)
    dtype: str = doc("weights and compute precision: fp32 or bf16", "fp32")
    device: str = doc("torch device: cpu, cuda, cuda:1 ...", "cpu")
    batch_size: int = doc("sequences decoded together", 32)
    lora: str = doc("folder of a saved LoRA adapter to apply; empty = none", "")
    thinking: str = doc("chat template thinking switch: on, off or default", "default")
    out: str = doc("output folder (resumes when it holds samples.jsonl); empty = none", "")


def fields_help(cls) -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def _expected(tp) -> tuple[type, ...]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for a in typing.get_args(tp) for t in _expected(a))
    if tp is float:
        return (float, int)
    if tp is type(None):
        return (type(None),)
    return (origin or tp,)


def check_types(cfg) -> None:
    """Raise ConfigError for the first field whose value does not match its annotation."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, tp = getattr(cfg, f.name), hints[f.name]
        ok = _expected(tp)
        bad = not isinstance(value, ok) or (isinstance(value, bool) and bool not in ok)
        if not bad and typing.get_origin(tp) is list:
            (item,) = typing.get_args(tp)
            bad = not all(isinstance(v, _expected(item)) for v in value)
        if bad:
            name = getattr(tp, "__name__", str(tp))
            raise ConfigError(f"{type(cfg).__name__}.{f.name} = {value!r} "
                              f"({type(value).__name__}); expected {name}: {f.metadata.get('help')}")


def from_dict(cls, values: dict[str, Any]):
    """Build and type-check ``cls`` from a mapping; unknown keys are errors with suggestions."""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            near = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; known: {', '.join(names)}"
            raise ConfigError(f"unknown parameter {key!r} for {cls.__name__}{hint}")
    cfg = cls(**values)
    check_types(cfg)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as YAML (so 3 is an int, [a, b] a list)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like key=value")
    return key.strip(), yaml.safe_load(raw)


def load(cls, path: str | Path | None = None, overrides: dict[str, Any] | None = None):
    """Defaults <- YAML file <- overrides, then validated."""
    values: dict[str, Any] = {}
    if path:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of parameter: value, got {type(loaded)}")
        values.update(loaded)
    values.update(overrides or {})
    return from_dict(cls, values)


def save(cfg, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    return path
