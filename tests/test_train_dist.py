"""Two processes under ``accelerate launch``, replicated or with the decoder layers sharded
(FSDP), make the same update, and report the same metrics, as one process."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HELPER = Path(__file__).parent / "helpers" / "dist_step.py"
# metrics a process computes over its own share and the loop combines over processes
COMBINED = (
    "rollout/reward_mean",
    "rollout/reward_std",
    "rollout/len_tokens",
    "train/grad_norm",
    "train/loss",
    "train/tokens",
    "train/entropy",
    "train/kl_initial",
    "train/divergence",
    "train/is_weight_mean",
    "train/ratio_mean",
)
LORA_SDPO = {}
FULL_SDPO = {"finetune": "full", "teacher": "live", "track_kl": False}


def launch(algo, out: Path, processes: int, fsdp: bool = False, **fields) -> str:
    args = [algo, str(out), json.dumps(fields)]
    if processes == 1:
        cmd = [sys.executable, str(HELPER), *args]
    else:
        accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
        # --multi_gpu starts the processes through torchrun; without a GPU they run on
        # the CPU (gloo). --cpu would quietly start a single process.
        kind = ["--use_fsdp", "--fsdp_sharding_strategy=FULL_SHARD"] if fsdp else ["--multi_gpu"]
        cmd = [
            accelerate,
            "launch",
            *kind,
            f"--num_processes={processes}",
            "--num_machines=1",
            "--mixed_precision=no",
            "--dynamo_backend=no",
            str(HELPER),
            *args,
        ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = sorted(out.parent.glob(f"{out.name}.rank*"))
    assert [p.read_text() for p in ranks] == [str(processes)] * processes
    return done.stdout + done.stderr


def assert_same_run(one: Path, two: Path, step: int = 1) -> None:
    state = {
        n: load_file(p / f"checkpoints/step_{step}/state.safetensors")
        for n, p in (("one", one), ("two", two))
    }
    kept = {
        n: {k: v for k, v in s.items() if k.startswith((".trainable.", ".optimizer."))}
        for n, s in state.items()
    }
    assert kept["one"].keys() == kept["two"].keys() and kept["one"]
    # Adam's first step moves each weight by about lr (1e-2) whatever the gradient's size,
    # so a near-zero gradient entry may land 1e-5 apart: allow 1% of one step
    for name in kept["one"]:
        assert torch.allclose(kept["one"][name], kept["two"][name], atol=1e-4), name
    adapter = f"checkpoints/step_{step}/adapter/adapter_model.safetensors"
    if (one / adapter).exists():  # the adapter eval and vLLM read, saved from the processes
        saved = {n: load_file(p / adapter) for n, p in (("one", one), ("two", two))}
        assert saved["one"].keys() == saved["two"].keys() and saved["one"]
        for name in saved["one"]:
            assert torch.allclose(saved["one"][name], saved["two"][name], atol=1e-4), name
    rows = {
        n: [json.loads(x) for x in (p / "metrics.jsonl").read_text().splitlines()]
        for n, p in (("one", one), ("two", two))
    }
    assert len(rows["one"]) == len(rows["two"]) == step
    for a, b in zip(rows["one"], rows["two"], strict=True):
        for key in COMBINED:
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-9), key


@pytest.mark.parametrize("algo", ["grpo", "sdpo"])
def test_two_processes_match_one(tmp_path, algo):
    launch(algo, tmp_path / "one", 1)
    launch(algo, tmp_path / "two", 2)
    assert_same_run(tmp_path / "one", tmp_path / "two")


@pytest.mark.parametrize(
    "algo, fields",
    [("grpo", {}), ("sdpo", LORA_SDPO), ("sdpo", FULL_SDPO)],
    ids=["grpo-lora", "sdpo-lora", "sdpo-full"],
)
def test_fsdp_matches_one_process(tmp_path, algo, fields):
    launch(algo, tmp_path / "one", 1, **fields)
    said = launch(algo, tmp_path / "two", 2, fsdp=True, **fields)
    assert_same_run(tmp_path / "one", tmp_path / "two")
    # the layers were sharded: each process held half of them; the embeddings (49,152 x
    # 64, tied to the head) and the final norm (64) stay whole
    held = re.search(r"each of 2 processes holds ([\d,]+) of the ([\d,]+) weights", said)
    assert held, said[-2000:]
    held, total = (int(x.replace(",", "")) for x in held.groups())
    whole = 49_152 * 64 + 64
    assert held == whole + (total - whole) // 2
    # the layers were sharded: the whole model saved from the shards loads as one
    if fields.get("finetune") == "full":
        saved = load_file(tmp_path / "two/checkpoints/step_1/model/model.safetensors")
        trainable = load_file(tmp_path / "two/checkpoints/step_1/state.safetensors")
        name = "model.layers.0.mlp.up_proj.weight"
        assert torch.equal(saved[name], trainable[f".trainable.{name}"])


def test_fsdp_resumes_from_its_gathered_checkpoint(tmp_path):
    # one step sharded, then a second one resumed from that checkpoint: the shards are
    # rebuilt from the whole tensors, optimizer moments included
    launch("sdpo", tmp_path / "one", 1, steps=2)
    launch("sdpo", tmp_path / "two", 2, fsdp=True, steps=1)
    launch("sdpo", tmp_path / "two", 2, fsdp=True, steps=2)
    assert_same_run(tmp_path / "one", tmp_path / "two", step=2)


@pytest.mark.parametrize(
    "fields, env, match",
    [
        ({"algo": "sdpo", "teacher": "ema"}, {}, "teacher ema"),
        ({"algo": "sdpo", "finetune": "full"}, {}, "finetune full"),
        ({"algo": "grpo", "finetune": "full", "kl_coef": 0.1}, {}, "finetune full"),
        ({"backend": "vllm"}, {}, "backend vllm"),
        ({}, {"FSDP_SHARDING_STRATEGY": "HYBRID_SHARD"}, "HYBRID_SHARD"),
        ({}, {"FSDP_OFFLOAD_PARAMS": "true"}, "offload"),
    ],
)
def test_what_fsdp_cannot_run_is_refused_before_anything_loads(
    tmp_path, monkeypatch, fields, env, match
):
    # full fine-tuning's initial teacher, an EMA teacher and KL to the start swap a copy of
    # the weights into the modules, which FSDP re-registers at every gather
    from sdlib.config import TrainConfig, from_dict
    from sdlib.schema import ConfigError
    from sdlib.train import train

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg = from_dict(
        TrainConfig, {"model": "tiny-random:2x64", "out": str(tmp_path / "run"), **fields}
    )
    with pytest.raises(ConfigError, match=match):
        train(cfg)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_the_fsdp_settings_sdlib_follows(monkeypatch):
    from sdlib.settings import fsdp_launch

    assert fsdp_launch() is None
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert fsdp_launch() is True  # FULL_SHARD, accelerate's default
    monkeypatch.setenv("FSDP_SHARDING_STRATEGY", "SHARD_GRAD_OP")
    assert fsdp_launch() is False  # kept whole from forward to backward (ZeRO-2)
    monkeypatch.setenv("FSDP_SHARDING_STRATEGY", "1")
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "false")
    assert fsdp_launch() is False


def test_each_process_takes_the_gpu_of_its_local_rank_and_reduces_cpu_tensors(monkeypatch):
    # device: cuda is the current GPU, cuda:0 unless set: every process would share it
    import torch.distributed as tdist

    from sdlib.schema import ConfigError
    from sdlib.train.dist import Dist

    picked, backends = [], []
    monkeypatch.setattr(torch.cuda, "set_device", picked.append)
    monkeypatch.setattr(tdist, "is_initialized", lambda: False)
    monkeypatch.setattr(tdist, "init_process_group", backends.append)
    monkeypatch.setattr(tdist, "get_rank", lambda: 1)
    monkeypatch.setattr(tdist, "get_world_size", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert Dist.from_env("cuda").rank == 1 and picked == [1]
    # the loop's counts and normalizers are CPU tensors, which NCCL alone cannot reduce
    assert backends == ["cpu:gloo,cuda:nccl"]
    with pytest.raises(ConfigError, match="all of them on one GPU"):
        Dist.from_env("cuda:0")
