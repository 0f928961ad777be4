"""Notebooks stay thin and in step with the schemas and presets."""

import ast
import json

import pytest
import yaml

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


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_cell_is_the_schema_at_the_organism_preset(name):
    schema = cfgmod.EXPERIMENTS[name]
    params = parameters(name)
    assert set(params) == set(schema.__dataclass_fields__)
    preset = yaml.safe_load((PARAMS_DIR / "organism" / f"{name}.yaml").read_text())
    expected = vars(cfgmod.from_dict(schema, preset))
    assert params == expected


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
