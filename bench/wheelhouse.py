"""Wheels for a GPU machine that reaches no package registry: sdlib's dependencies beyond
what such a machine already has (torch, transformers, peft, accelerate and everything they
need), at the versions installed here, downloaded for that machine's Python into ``.whl/``
(ignored by git), checked against a size limit so they travel with the repository.

    python bench/wheelhouse.py                      # Python 3.11, x86-64 Linux, 64 MiB
    python bench/wheelhouse.py --python 3.12

Left out on purpose: ``datasets`` and ``pyarrow`` (together far above the limit), which
sdlib imports only to read Hub datasets and parquet files, never for the synthetic and
organism problems of the checks. On the GPU machine, from the repository copy:

    pip install --no-index --no-deps .whl/*.whl
    PYTHONPATH=$PWD python bench/gpu_check.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PRESENT = ["torch", "transformers", "peft", "accelerate"]  # the GPU image's own
LEFT_OUT = ["datasets", "pyarrow"]
PLATFORMS = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64"]


def requirements(name: str) -> list[str]:
    """The distributions ``name`` needs (its extras' not included), as installed here."""
    found = []
    for text in metadata.requires(name) or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            found.append(canonicalize_name(req.name))
    return found


def closure(roots: list[str]) -> set[str]:
    """``roots`` and everything they need, transitively (only what is installed here)."""
    seen, todo = set(), [canonicalize_name(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            needs = requirements(name)
        except metadata.PackageNotFoundError:
            continue  # a marker for another platform, or an optional backend
        seen.add(name)
        todo += needs
    return seen


def declared() -> list[str]:
    """sdlib's own dependencies, from pyproject.toml (an editable install's metadata can be
    older than the file)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [canonicalize_name(Requirement(r).name) for r in project["dependencies"]]


def wanted() -> dict[str, str]:
    """name -> installed version of what the GPU machine lacks."""
    left_out = {canonicalize_name(n) for n in LEFT_OUT}
    need = closure([r for r in declared() if r not in left_out]) - closure(PRESENT)
    return {name: metadata.version(name) for name in sorted(need)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default="3.11", help="the GPU machine's Python (X.Y)")
    parser.add_argument("--dest", default=".whl")
    parser.add_argument("--limit-mib", type=float, default=64.0)
    args = parser.parse_args(argv)
    pins = wanted()
    dest = Path(args.dest)
    dest.mkdir(exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    tag = args.python.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", args.python, "--implementation", "cp", "--abi", f"cp{tag}"]
    cmd += [arg for p in PLATFORMS for arg in ("--platform", p)]
    cmd += ["--dest", str(dest), *(f"{n}=={v}" for n, v in pins.items())]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        print(done.stderr[-2000:], file=sys.stderr)
        return done.returncode
    wheels = sorted(dest.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels) / 2**20
    for w in wheels:
        print(f"{w.stat().st_size / 2**20:7.2f} MiB  {w.name}")
    print(f"{len(wheels)} wheels, {total:.1f} MiB in {dest} (limit {args.limit_mib:.0f} MiB)")
    return 0 if total <= args.limit_mib else 1


if __name__ == "__main__":
    sys.exit(main())
