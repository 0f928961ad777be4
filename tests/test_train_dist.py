"""Two processes under ``accelerate launch`` make the same update as one process."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HELPER = Path(__file__).parent / "helpers" / "dist_step.py"


def launch(args, processes):
    if processes == 1:
        cmd = [sys.executable, str(HELPER), *args]
    else:
        accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
        cmd = [
            accelerate,
            "launch",
            "--cpu",
            f"--num_processes={processes}",
            "--num_machines=1",
            "--mixed_precision=no",
            "--dynamo_backend=no",
            str(HELPER),
            *args,
        ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("algo", ["grpo", "sdpo"])
def test_two_processes_match_one(tmp_path, algo):
    launch([algo, str(tmp_path / "one")], 1)
    launch([algo, str(tmp_path / "two")], 2)
    state = {
        n: load_file(tmp_path / n / "checkpoints/step_1/state.safetensors") for n in ("one", "two")
    }
    one, two = (
        {k: v for k, v in state[n].items() if k.startswith(".trainable.")} for n in ("one", "two")
    )
    assert one.keys() == two.keys() and one
    # Adam's first step moves each weight by about lr (1e-2) whatever the gradient's size,
    # so a near-zero gradient entry may land 1e-5 apart: allow 1% of one step
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-4), name
    rows = {n: json.loads((tmp_path / n / "metrics.jsonl").read_text()) for n in state}
    for key in ("rollout/reward_mean", "rollout/len_tokens", "train/grad_norm"):
        assert rows["one"][key] == pytest.approx(rows["two"][key], rel=1e-4), key


def test_an_fsdp_launch_is_refused_before_anything_loads(tmp_path, monkeypatch):
    # accelerate launch with an FSDP config sets this; sdlib never wraps the model, so the
    # weights would not be sharded: one line says so instead
    from sdlib.config import TrainConfig, from_dict
    from sdlib.schema import ConfigError
    from sdlib.train import train

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    cfg = from_dict(TrainConfig, {"model": "tiny-random:2x64", "out": str(tmp_path / "run")})
    with pytest.raises(ConfigError, match="FSDP"):
        train(cfg)
    assert not (tmp_path / "run").exists()  # refused before anything was written
