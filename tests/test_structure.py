"""The shape of the code: each layer imports only layers below it, and nothing imports in
a cycle (DESIGN.md, "Layers import only downward")."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Lowest first. A module may import modules of its own layer or below, never above. (The
# figures sit below the experiments that draw them; config reads the registries of the
# layers above it only when it validates, never when it is imported.)
LAYERS = [
    ("sdlib.settings", "sdlib.schema", "sdlib.prompts", "sdlib.behavior", "sdlib.grading",
     "sdlib.metrics", "sdlib.progress", "sdlib.clock", "sdlib.llama"),
    ("sdlib.config",),
    ("sdlib.problems", "sdlib.synthetic", "sdlib.rollout", "sdlib.organism"),
    ("sdlib.datasets",),
    ("sdlib.models", "sdlib.head", "sdlib.losses", "sdlib.runfolder", "sdlib.stats"),
    ("sdlib.evaluate", "sdlib.plots"),
    ("sdlib.train",),
    ("sdlib.experiments",),
    ("sdlib.plan", "sdlib.report", "sdlib.runner", "sdlib.cli"),
]  # fmt: skip


def modules() -> list[str]:
    found = []
    for path in sorted((ROOT / "sdlib").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found.append(name.removesuffix(".__init__"))
    return found


def layer(module: str) -> int:
    for i, group in enumerate(LAYERS):
        if any(module == g or module.startswith(g + ".") for g in group):
            return i
    raise AssertionError(f"{module} is in no layer of tests/test_structure.py: add it")


def test_every_module_has_a_layer():
    for name in modules():
        if name != "sdlib":
            layer(name)


# One fresh interpreter imports the heavy third-party libraries once, then forks a child per
# module that imports that module alone and reports what of sdlib it loaded.
PROBE = """
import json, os, sys, importlib
import torch, transformers, pandas, peft, safetensors, yaml, tqdm  # noqa: F401
for name in sys.argv[1:]:
    read, write = os.pipe()
    if os.fork() == 0:
        importlib.import_module(name)
        loaded = sorted(m for m in sys.modules if m.startswith("sdlib."))
        os.write(write, json.dumps(loaded).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        print(json.dumps([name, json.loads(f.read() or "null")]))
    os.wait()
"""


@pytest.fixture(scope="module")
def loaded_alone() -> dict[str, list[str]]:
    names = [m for m in modules() if m != "sdlib"]
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *names], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(line) for line in done.stdout.splitlines())


@pytest.mark.parametrize("module", [m for m in modules() if m != "sdlib"])
def test_importing_a_module_alone_loads_only_its_layer_and_below(loaded_alone, module):
    assert loaded_alone[module] is not None, f"{module} failed to import on its own"
    above = [m for m in loaded_alone[module] if layer(m) > layer(module)]
    assert not above, f"importing {module} loads higher layers: {above}"


def static_imports(path: Path, known: set[str]) -> set[str]:
    """Every sdlib module ``path`` imports anywhere, function bodies included."""
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                deps.add(name)
    return deps


def test_no_import_cycles_even_through_lazy_imports():
    known = set(modules())
    graph = {}
    for path in (ROOT / "sdlib").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        # a package's own modules and its __init__ may refer to each other freely
        graph[name] = {
            d
            for d in static_imports(path, known)
            if d != name and not name.startswith(d + ".") and not d.startswith(name + ".")
        }

    def reaches(a, b, seen):
        return any(
            n == b or (n not in seen and reaches(n, b, seen | {n})) for n in graph.get(a, ())
        )

    cycles = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if reaches(b, a, {b})})
    assert not cycles, f"import cycles: {cycles}"
