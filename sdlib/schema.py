"""Typed, documented parameter dataclasses: the machinery, not the schemas themselves.

A schema is a dataclass whose fields carry a one-line help text (``doc(...)``). ``from_dict``
builds one from a plain mapping (a YAML preset, CLI overrides, a notebook's parameters),
rejecting unknown keys with a suggestion and values of the wrong type with a message that
names the field, the value and what is expected, then calls the schema's ``validate``.
sdlib's own schemas live in ``sdlib.config`` (and the organism's in ``sdlib.organism``).
This module imports nothing else from sdlib, so every layer can use it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A parameter is unknown or has a value of the wrong type or range."""


def doc(help: str, default: Any = dataclasses.MISSING, **kwargs) -> Any:
    """A dataclass field with its documentation attached (lists get a factory)."""
    if isinstance(default, list | dict):
        kwargs["default_factory"] = lambda d=default: type(d)(d)
    elif default is not dataclasses.MISSING:
        kwargs["default"] = default
    return field(metadata={"help": help}, **kwargs)


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
            bad = not all(
                isinstance(v, _expected(item)) and not (isinstance(v, bool) and item is not bool)
                for v in value
            )
        if bad:
            name = getattr(tp, "__name__", str(tp))
            raise ConfigError(
                f"{type(cfg).__name__}.{f.name} = {value!r} "
                f"({type(value).__name__}); expected {name}: {f.metadata.get('help')}"
            )
        if (where := non_finite(value)) is not None:
            raise ConfigError(
                f"{type(cfg).__name__}.{f.name}{where} is not a finite number; give a finite "
                f"value: {f.metadata.get('help')}"
            )


def non_finite(value: Any, where: str = "") -> str | None:
    """Where in ``value`` (a number, or lists and mappings of them) a NaN or an infinity
    sits (``""`` for the value itself, ``"[2]"``, ``".lr"``), or None when there is none."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where} = {value!r}"
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, item in items:
        found = non_finite(item, f"{where}.{key}" if isinstance(value, dict) else f"{where}[{key}]")
        if found is not None:
            return found
    return None


def from_dict(cls, values: dict[str, Any]):
    """Build, type-check and validate ``cls`` from a mapping; unknown keys are errors."""
    if not isinstance(values, dict):
        raise ConfigError(f"{cls.__name__}: expected a mapping of parameter: value, got {values!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
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
    return key.strip(), read_yaml(raw, f"override {text!r}")


def read_yaml(text: str, where: str) -> Any:
    """YAML text, or one line naming ``where`` and the position of the error."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML{at} ({problem})") from None


def load(cls, path: str | Path | None = None, overrides: dict[str, Any] | None = None):
    """Defaults <- YAML file <- overrides, then validated."""
    values: dict[str, Any] = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        loaded = read_yaml(path.read_text(encoding="utf-8", errors="replace"), str(path)) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of parameter: value, got {loaded!r}")
        values.update(loaded)
    values.update(overrides or {})
    return from_dict(cls, values)


def save(cfg, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    tmp.replace(path)
    return path
