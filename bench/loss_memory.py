"""Peak memory and time of the SDPO loss from hidden states: chunked head vs naive head.

One measurement = forward and backward (to the hidden states and the head weight) of the
paper's distillation loss: student top-100 + tail bucket, generalized JSD alpha 0.5,
importance weight clipped at 2, token-mean; teacher stats at the student's indices without
gradient. "naive" materialises [T, V] log-probs and lets autograd keep them; "chunked"
holds chunk x V logits at a time and recomputes them in the backward.

Peak memory is the growth over what the inputs already hold: on CUDA from
``torch.cuda.max_memory_allocated``; on CPU each measurement runs in a fresh subprocess and
reads its peak resident set (``ru_maxrss``) against the resident set before the loss.
Naive configurations whose estimated peak would not fit in the free memory are skipped.

    python bench/loss_memory.py                        # CPU defaults, a few minutes
    python bench/loss_memory.py --device cuda --dtype bfloat16 --hidden 1024
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time

import torch

from sdlib import losses
from sdlib.head import Head

NAIVE_BUFFERS = 6.2  # measured on CPU: naive peak ~ 6.1 x T x V x 4 bytes (fp32 logits, grads)
MIB = 2**20


def parse_args(argv=None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--dtype", default="bfloat16" if cuda else "float32")
    parser.add_argument("--hidden", type=int, default=1024 if cuda else 256)
    parser.add_argument("--vocab", type=int, nargs="+", default=[49_152, 151_936])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 16_384])
    parser.add_argument("--chunk", type=int, default=1024, help="tokens per chunk")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5 if cuda else 1)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # "mode,V,T" (child)
    return parser.parse_args(argv)


def make_inputs(args, vocab: int, tokens: int):
    """Student and teacher hidden states, head weight, sampled tokens, old log-probs."""
    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    gen = torch.Generator(device).manual_seed(0)
    hidden = torch.randn(tokens, args.hidden, generator=gen, dtype=dtype, device=device)
    t_hidden = torch.randn(tokens, args.hidden, generator=gen, dtype=dtype, device=device)
    weight = torch.randn(vocab, args.hidden, generator=gen, dtype=dtype, device=device)
    weight.mul_(args.hidden**-0.5 * 3)  # logits of order 3: a peaked, LM-like softmax
    ids = torch.randint(0, vocab, (tokens,), generator=gen, device=device)
    old = torch.full((tokens,), -1.0, device=device)
    return hidden.requires_grad_(True), t_hidden, weight.requires_grad_(True), ids, old


def loss_step(inputs, chunk: int | None, k: int) -> None:
    """Forward and backward of the paper's SDPO loss (top-k + tail, alpha 0.5, IS clip 2)."""
    hidden, t_hidden, weight, ids, old = inputs
    head = Head(weight, chunk_size=chunk)
    per_token, _, _ = losses.sdpo_token_loss(hidden, t_hidden, head, ids, old, k=k)
    per_token.mean().backward()
    hidden.grad = weight.grad = None


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_cpu_child(args, mode: str, vocab: int, tokens: int) -> dict:
    """Runs in a fresh process: peak RSS growth and seconds of one loss step."""
    torch.set_num_threads(os.cpu_count() or 1)
    inputs = make_inputs(args, vocab, tokens)
    gc.collect()
    before = _resident_bytes()
    start = time.perf_counter()
    loss_step(inputs, None if mode == "naive" else args.chunk, args.k)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"peak_mib": (peak - before) / MIB, "seconds": seconds}


def measure_cuda(args, mode: str, vocab: int, tokens: int) -> dict:
    inputs = make_inputs(args, vocab, tokens)
    chunk = None if mode == "naive" else args.chunk
    loss_step(inputs, chunk, args.k)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    for _ in range(args.repeats):
        loss_step(inputs, chunk, args.k)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.repeats
    return {"peak_mib": (torch.cuda.max_memory_allocated() - before) / MIB, "seconds": seconds}


def free_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


def measure(args, mode: str, vocab: int, tokens: int) -> dict | None:
    """One measurement, or None where the naive peak would not fit in 70% of free memory."""
    if mode == "naive" and NAIVE_BUFFERS * tokens * vocab * 4 > 0.7 * free_bytes(args.device):
        return None
    if args.device.startswith("cuda"):
        result = measure_cuda(args, mode, vocab, tokens)
        torch.cuda.empty_cache()
        return result
    child = [sys.executable, __file__, "--one", f"{mode},{vocab},{tokens}"]
    child += ["--device", args.device, "--dtype", args.dtype, "--hidden", str(args.hidden)]
    child += ["--chunk", str(args.chunk), "--k", str(args.k)]
    done = subprocess.run(child, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def table_row(vocab: int, tokens: int, naive: dict | None, chunked: dict | None) -> str:
    def mib(result):
        return "-" if result is None else f"{result['peak_mib']:,.0f}"

    def msec(result):
        return "-" if result is None else f"{1000 * result['seconds']:,.1f}"

    both = naive is not None and chunked is not None
    memory = f"{chunked['peak_mib'] / naive['peak_mib']:.0%}" if both else "-"
    speed = f"{chunked['seconds'] / naive['seconds']:.2f}x" if both else "-"
    naive_mib = mib(naive) if naive is not None else "skipped (would not fit)"
    cells = [f"{vocab:,}", f"{tokens:,}", naive_mib, mib(chunked), memory]
    cells += [msec(naive), msec(chunked), speed]
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.one is not None:
        mode, vocab, tokens = args.one.split(",")
        print(json.dumps(measure_cpu_child(args, mode, int(vocab), int(tokens))))
        return
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"device {device_name}, {args.dtype}, hidden {args.hidden}, k {args.k}, "
          f"chunk {args.chunk} tokens, batch 1; peak = growth over the inputs")  # fmt: skip
    columns = ["V", "T", "naive peak MiB", "chunked peak MiB", "memory ratio"]
    columns += ["naive ms", "chunked ms", "time ratio"]
    print("\n| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for vocab in args.vocab:
        for tokens in args.tokens:
            chunked = measure(args, "chunked", vocab, tokens)
            naive = measure(args, "naive", vocab, tokens)
            print(table_row(vocab, tokens, naive, chunked), flush=True)


if __name__ == "__main__":
    main()
