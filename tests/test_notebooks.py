"""Notebooks stay thin and in step with the schemas and presets."""

import ast
import json
import re
from pathlib import Path

import pytest

from sdlib import config as cfgmod
from sdlib.runner import (
    NOTEBOOK_DIR,
    NOTEBOOKS,
    PARAMS_DIR,
    defines,
    notebook_params,
    preset_values,
    resolve,
)
from sdlib.settings import REPO_ROOT

MAKEFILE = (REPO_ROOT / "Makefile").read_text()

PRESETS = sorted(p.name for p in PARAMS_DIR.iterdir() if p.is_dir())


def cells(name):
    return json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text())["cells"]


def parameters(name) -> dict:
    tagged = [c for c in cells(name) if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1, f"{name}: exactly one cell must be tagged 'parameters'"
    tree = ast.parse("".join(tagged[0]["source"]))
    out = {}
    for node in tree.body:
        assert isinstance(node, ast.Assign), f"{name}: parameters cell holds only assignments"
        out[node.targets[0].id] = ast.literal_eval(node.value)  # plain literals only
    return out


def notebook(name) -> dict:
    return json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text())


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_cell_is_the_schema_at_the_organism_preset(name):
    schema = cfgmod.EXPERIMENTS[name]
    params = parameters(name)
    assert set(params) == set(schema.__dataclass_fields__)
    assert cfgmod.from_namespace(schema, params) == cfgmod.preset("organism", name)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_cell_agrees_with_itself_and_reuses_the_demo_runs(name):
    params = parameters(name)
    assert params["preset"] == "organism"  # the preset of `make demo` and `sdlib run`
    assert params["model"] == preset_values(name, params["preset"])["model"]
    assert Path(params["out"]).parts[:2] == ("runs", params["preset"])
    # `make demo` writes there: the notebook opened in JupyterLab finds its runs
    assert params["out"] == cfgmod.demo_folder("organism")
    assert "--out runs/$(PRESET)/demo" in MAKEFILE and "PRESET  ?= organism" in MAKEFILE


def test_every_notebook_opens_in_the_kernel_make_setup_registers():
    found = re.search(r'ipykernel install .*--name (\S+) --display-name "([^"]+)"', MAKEFILE)
    name, display = found.groups()
    assert (name, display) == ("sdlib", "Python (sdlib)")
    for nb in NOTEBOOKS:
        spec = notebook(nb)["metadata"]["kernelspec"]
        assert (spec["name"], spec["display_name"], spec["language"]) == (name, display, "python")


def test_the_runner_kernel_is_the_interpreter_that_runs_it():
    """`sdlib run` names jupyter_client's native kernel, which runs sys.executable: it exists
    wherever ipykernel does, so papermill needs no registered "sdlib" kernel."""
    import sys

    from jupyter_client.kernelspec import NATIVE_KERNEL_NAME, KernelSpecManager
    from jupyter_client.manager import KernelManager

    from sdlib.runner import KERNEL

    assert KERNEL == NATIVE_KERNEL_NAME
    assert KERNEL in KernelSpecManager().find_kernel_specs()
    command = KernelManager(kernel_name=KERNEL).format_kernel_cmd()
    assert command[0] == sys.executable


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_config_preset_is_what_the_runner_injects(name, tmp_path):
    short = name[:2]
    injected = notebook_params(name, "organism", tmp_path, {"eval_k": 3})
    cfg = cfgmod.preset("organism", short, tmp_path, eval_k=3)
    assert vars(cfg) == injected and type(cfg) is cfgmod.EXPERIMENTS[name]
    assert cfgmod.preset("organism", short).out == str(REPO_ROOT / "runs" / "organism" / "demo")
    with pytest.raises(cfgmod.ConfigError, match="eval_k = 0"):
        cfgmod.preset("organism", short, eval_k=0)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_config_cell_shows_how_to_load_a_preset(name):
    source = next(
        "".join(c["source"]) for c in cells(name) if "from_namespace(" in "".join(c["source"])
    )
    call = re.search(r'# .*config\.preset\("([\w-]+)", "(\d\d)"', source)
    assert call and call.group(2) == name[:2] and defines(call.group(1), name)


def test_a_relative_out_is_under_the_repository_not_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # as a kernel JupyterLab starts in notebooks/
    cfg = cfgmod.from_dict(cfgmod.OnPolicyConfig, {"out": "runs/mine"})
    assert cfg.out == str(REPO_ROOT / "runs" / "mine")
    assert cfgmod.from_dict(cfgmod.OnPolicyConfig, {"out": str(tmp_path)}).out == str(tmp_path)


def test_make_lab_serves_the_repository_so_runs_are_in_reach():
    recipe = MAKEFILE.split("\nlab:", 1)[1].split("\n\n", 1)[0]
    assert "jupyter lab" in recipe and "root_dir=$(CURDIR)" in recipe


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_are_thin_and_cleared(name):
    for c in cells(name):
        if c["cell_type"] != "code":
            continue
        assert not c.get("outputs") and c.get("execution_count") is None
        tree = ast.parse("".join(c["source"]))
        banned = (ast.FunctionDef, ast.ClassDef, ast.For, ast.While, ast.Lambda)
        assert not any(isinstance(n, banned) for n in ast.walk(tree)), f"logic in {name}"


@pytest.mark.parametrize(
    "preset, name", [(p, n) for p in PRESETS for n in NOTEBOOKS if defines(p, n)]
)
def test_every_preset_validates(preset, name, tmp_path):
    notebook_params(name, preset, tmp_path, {})  # raises ConfigError naming the value


def test_all_runs_what_a_preset_defines():
    assert resolve(["all"], "organism") == NOTEBOOKS
    assert resolve(["all"], "smoke") == NOTEBOOKS
    organism_only = ["06_mechanism"]  # its variants exist for the organism alone
    for preset in ("tiny", "paper", "paper-qwen3-8b"):
        assert resolve(["all"], preset) == [n for n in NOTEBOOKS if n not in organism_only]
    assert resolve(["06"], "organism") == ["06_mechanism"]


def test_what_a_preset_leaves_out_is_the_schema_default_not_the_cell(tmp_path):
    name = "04_fixed_vs_moving_teacher"
    assert "seeds" not in preset_values(name, "smoke")
    assert parameters(name)["seeds"] != [0]  # the cell holds the organism preset's seeds
    assert notebook_params(name, "smoke", tmp_path, {})["seeds"] == [0]  # the default


def test_a_preset_can_extend_another():
    base = preset_values("05_task_coverage", "paper")
    thinking = preset_values("05_task_coverage", "paper-qwen3-8b-thinking")
    assert thinking["thinking"] == "on" and base["thinking"] == "off"
    assert {k: v for k, v in thinking.items() if k not in ("thinking", "eval_temperature",
            "eval_top_p")} == {k: v for k, v in base.items() if k not in ("thinking",
            "eval_temperature", "eval_top_p")}  # fmt: skip


@pytest.mark.parametrize("path", sorted(PARAMS_DIR.glob("*/train_*.yaml")))
def test_training_presets_validate(path):
    cfgmod.load(cfgmod.TrainConfig, path)
