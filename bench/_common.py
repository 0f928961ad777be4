"""Helpers the generation and step benchmarks share: clocks, peak memory, markdown tables.

Peak memory on CPU is the resident set's high-water mark (``VmHWM``), reset before each
measurement by writing 5 to ``/proc/self/clear_refs`` (Linux >= 4.0), after handing freed
heap back to the system (``malloc_trim``) so that memory an earlier measurement freed but
glibc kept does not hide the growth. Where the reset is not allowed, the process-wide
``ru_maxrss`` stands in; it never goes down, so a later measurement then reads 0 growth
unless it exceeds an earlier peak. On CUDA it is ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import resource
import time
from collections.abc import Sequence
from pathlib import Path

import torch

MIB = 2**20


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def clock(device: str) -> float:
    """``perf_counter`` after the device has finished its queued work."""
    sync(device)
    return time.perf_counter()


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    wait = os.environ.get("OMP_WAIT_POLICY", "unset")
    return f"CPU, {torch.get_num_threads()} torch threads, OMP_WAIT_POLICY {wait}"


def add_threads_option(parser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's). On a shared machine OpenMP threads that "
        "spin-wait for a busy core can run 10x slower: use 1, or OMP_WAIT_POLICY=PASSIVE",
    )


def apply_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def _status_kib(field: str) -> int | None:
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def reset_peak(device: str) -> int:
    """Start a peak-memory window; returns the bytes in use now (the baseline)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: growth may be hidden
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError):  # not allowed: ru_maxrss stands in (docstring)
        Path("/proc/self/clear_refs").write_text("5")
    return (_status_kib("VmRSS") or 0) * 1024


def peak_bytes(device: str) -> int:
    """High-water mark since the last ``reset_peak`` (see the module docstring on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    hwm = _status_kib("VmHWM")
    return 1024 * (hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
