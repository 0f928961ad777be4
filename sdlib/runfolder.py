"""A run's output folder: what it guarantees, in one place.

    <out>/.lock              held (flock) by the one process writing here; names its PID
    <out>/params.yaml        the resolved parameters, written before the first step
    <out>/*.jsonl            append-only rows (metrics, samples), one JSON object per line
    <out>/checkpoints/step_N adapter/ (peft), state.safetensors + state.json, manifest.json

Guarantees:
- one writer: ``lock()`` takes an exclusive lock; a second writer gets ``RunFolderBusy``
  naming the holder's PID, or, with ``SDLIB_WAIT_FOR_LOCKS=1`` (``sdlib run --jobs``, where
  two notebooks may ask for one shared run), waits for the holder and then finds its work
  done. The lock dies with its process, so a killed run never blocks.
- nothing is unpickled: tensors live in safetensors, everything else in JSON or YAML.
- every file is written atomically (temp file, then rename) or appended line by line, and a
  checkpoint folder appears whole (built under a temp name, renamed last). Its manifest
  holds the size and SHA-256 of every file; ``verify`` checks them, so a truncated or
  altered checkpoint is found and skipped with a warning naming it.
- a damaged line of a jsonl file is reported with the file and line number, never dropped
  silently; the caller decides what to recompute.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
# set to "1": a busy lock is waited for instead of refused
WAIT_FOR_LOCKS = "SDLIB_WAIT_FOR_LOCKS"
MANIFEST = "manifest.json"


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder's lock."""


class DamagedFile(RuntimeError):
    """A file of a run folder is truncated or altered; the message names it."""


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# ---------------------------------------------------------------------------------------
# jsonl


class Rows(list):
    """Parsed rows of a jsonl file. ``damaged``: the 1-based numbers of bad lines;
    ``intact``: how many rows precede the first bad line (all of them when none is bad)."""

    damaged: list[int]
    intact: int


def read_jsonl(path: Path) -> Rows:
    """Every line that is a JSON object; bad lines are counted and warned about by name."""
    rows, damaged, intact = Rows(), [], 0
    if path.exists():
        with path.open(encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    row = None
                if isinstance(row, dict) and line.endswith("\n"):
                    rows.append(row)
                else:
                    damaged.append(number)
                    intact = len(rows) if len(damaged) == 1 else intact
    if damaged:
        warnings.warn(
            f"{path}: {len(damaged)} damaged line(s) (first: line {damaged[0]}); "
            f"they are left out and their work is redone",
            stacklevel=2,
        )
    rows.damaged, rows.intact = damaged, intact if damaged else len(rows)
    return rows


def append_jsonl(path: Path, rows: list[dict]) -> None:
    """Append rows as whole lines and flush them to disk (a kill leaves at most one cut
    line, which ``read_jsonl`` reports)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.writelines(json.dumps(r, default=_plain) + "\n" for r in rows)
        f.flush()
        os.fsync(f.fileno())


def file_digest(path: Path) -> str:
    """SHA-256 of a folder's files (names and bytes) or of one file: a run's identity that
    survives moving the folder. A peft ``adapter_config.json`` counts by its content, keys
    and ``target_modules`` sorted (peft writes that set in an order that varies by process,
    so two identical adapters would otherwise differ)."""
    path = Path(path)
    paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for p in paths:
        digest.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
        if p.name == "adapter_config.json":
            digest.update(_canonical_adapter_config(p))
            continue
        with p.open("rb") as f:  # in blocks: a whole model's weights need not fit in memory
            for block in iter(lambda f=f: f.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _canonical_adapter_config(path: Path) -> bytes:
    try:
        config = json.loads(path.read_text())
    except ValueError:
        return path.read_bytes()  # not JSON: its bytes, as any other file
    if isinstance(config, dict) and isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(map(str, config["target_modules"]))
    return json.dumps(config, sort_keys=True).encode()


def rewrite_jsonl(path: Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, default=_plain) + "\n" for r in rows))


def _plain(value):
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


# ---------------------------------------------------------------------------------------
# The folder


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"run folder {self.path} exists and is not a folder")
        self.path.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def lock(self):
        """Hold the folder's exclusive lock for the block (see the module docstring)."""
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        holder = None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            if os.environ.get(WAIT_FOR_LOCKS) == "1":
                print(f"[sdlib] waiting for process {holder}, which is writing {self.path}")
                fcntl.flock(fd, fcntl.LOCK_EX)
                holder = None
        if holder is not None:
            os.close(fd)
            raise RunFolderBusy(
                f"run folder {self.path} is in use by process {holder} (lock "
                f"{self.path / '.lock'}); wait for it to finish or use another out folder"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield self
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def file(self, name: str) -> Path:
        return self.path / name

    def read(self, name: str) -> Rows:
        return read_jsonl(self.file(name))

    def append(self, name: str, rows: list[dict]) -> None:
        append_jsonl(self.file(name), rows)

    def truncate(self, name: str, before_step: int) -> None:
        """Keep the intact rows of steps before ``before_step`` (the rest is recomputed)."""
        rows = [r for r in self.read(name) if r.get("step", 0) < before_step]
        rewrite_jsonl(self.file(name), rows)

    # -- checkpoints ------------------------------------------------------------------

    def checkpoints(self) -> list[tuple[int, Path]]:
        """(step, folder) of every complete checkpoint folder, oldest first."""
        found = []
        for p in (self.path / CHECKPOINTS).glob("step_*"):
            step = p.name.removeprefix("step_")
            if step.isdigit() and p.is_dir():
                found.append((int(step), p))
        return sorted(found)

    def latest(self, at_most: int | None = None) -> tuple[int, Path] | None:
        """The newest checkpoint that passes ``verify`` (at or before step ``at_most``);
        each newer damaged one is named in a warning."""
        for step, folder in reversed(self.checkpoints()):
            if at_most is not None and step > at_most:
                continue
            problem = verify(folder)
            if problem is None:
                return step, folder
            warnings.warn(f"{problem}; falling back to an earlier checkpoint", stacklevel=2)
        return None

    def save_checkpoint(
        self, step: int, model, tensors: dict, state: dict, weights: dict | None = None
    ) -> Path:
        """``checkpoints/step_N``: the weights (``adapter/``, peft's, for a LoRA policy, or
        ``model/``, the whole model; ``weights``: the state dict to save instead of the
        model's own), ``tensors`` in safetensors, ``state`` in JSON, and the manifest;
        built aside, renamed whole."""
        target = self.path / CHECKPOINTS / f"step_{step}"
        tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
        for stale in target.parent.glob("step_*.tmp*"):  # the lock is ours: none is live
            shutil.rmtree(stale, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            if hasattr(model, "save_pretrained"):
                folder = tmp / ("adapter" if hasattr(model, "peft_config") else "model")
                if weights is None:
                    model.save_pretrained(folder)
                else:
                    model.save_pretrained(folder, state_dict=weights)
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                tmp / "state.safetensors",
            )
            write_atomic(tmp / "state.json", json.dumps(state, allow_nan=True))
            write_manifest(tmp)
        except (OSError, SafetensorError) as err:
            shutil.rmtree(tmp, ignore_errors=True)
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise OSError(
                f"checkpoint step_{step} could not be written under {self.path} ({reason}); "
                "nothing of it was kept: free space, then rerun to resume from the last one"
            ) from None
        if target.exists():  # a damaged checkpoint of this step: replaced by the new one
            shutil.rmtree(target)
        tmp.rename(target)
        return target

    def load_checkpoint(self, folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
        problem = verify(folder)
        if problem is not None:
            raise DamagedFile(problem)
        return load_file(folder / "state.safetensors"), json.loads(
            (folder / "state.json").read_text()
        )


def weights_folder(checkpoint: Path) -> Path:
    """A checkpoint's weights: its LoRA ``adapter/`` or its whole ``model/``."""
    adapter = Path(checkpoint) / "adapter"
    return adapter if adapter.is_dir() else Path(checkpoint) / "model"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """Size and SHA-256 of every file under ``folder`` (the manifest itself aside)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {
        str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files
    }
    write_atomic(folder / MANIFEST, json.dumps(entries, indent=1))


def verify(folder: Path) -> str | None:
    """None when every file of the manifest is there with its size and hash; otherwise
    one line naming the first bad file."""
    manifest = folder / MANIFEST
    try:
        entries = json.loads(manifest.read_bytes())
        if not (isinstance(entries, dict) and entries):
            raise ValueError("not a mapping of files")
        entries = {str(n): (int(e["bytes"]), str(e["sha256"])) for n, e in entries.items()}
    except (OSError, ValueError, TypeError, KeyError):  # absent, not JSON, or not ours
        return f"{folder}: no readable {MANIFEST} (an interrupted or foreign checkpoint)"
    for name, (size_written, digest) in entries.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != size_written:
            return f"{path} has {size:,} bytes where {size_written:,} were written"
        if _sha256(path) != digest:
            return f"{path} does not match the hash written with it"
    return None


# ---------------------------------------------------------------------------------------
# Nested state <-> (tensors, JSON): what a checkpoint holds, without pickle


def flatten(value: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """A JSON-able skeleton of ``value`` whose tensors move into ``tensors`` by path.

    Dicts keep their keys' types (optimizer states are keyed by int), tuples stay tuples."""
    if isinstance(value, torch.Tensor):
        tensors[path] = value
        return {"tensor": path}
    if isinstance(value, dict):
        return {"dict": [[k, flatten(v, tensors, f"{path}.{k}")] for k, v in value.items()]}
    if isinstance(value, tuple | list):
        kind = "tuple" if isinstance(value, tuple) else "list"
        return {kind: [flatten(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]}
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    raise TypeError(f"cannot checkpoint a {type(value).__name__} at {path!r}")


def unflatten(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of ``flatten``."""
    if not isinstance(skeleton, dict):
        return skeleton
    (kind, body), *_ = skeleton.items()
    if kind == "tensor":
        return tensors[body]
    if kind == "dict":
        return {k: unflatten(v, tensors) for k, v in body}
    if kind == "float":
        return float(body)
    items = [unflatten(v, tensors) for v in body]
    return tuple(items) if kind == "tuple" else items
