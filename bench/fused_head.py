"""SDPO's distillation head, fused against streamed-and-recomputed, in one process.

The loss part of an SDPO update with a frozen head (LoRA): from the student's and the
teacher's hidden states at N response tokens, the top-100 + tail JSD and its gradient in
the student's hidden states. "recomputing" is sdlib's path before the fusion, and still its
path where the head trains (full fine-tuning): the student's stats chunk by chunk in a
custom autograd function whose backward recomputes each chunk's logits, then the teacher's.
"fused" (``Head.distill``): both models' logits reduced in one pass each into buffers
reused across chunks, the gradient taken in the forward. Both see the same tensors; the
table checks they give the same gradient.

    python bench/fused_head.py                    # CPU: about 2 min on 2 cores
    python bench/fused_head.py --device cuda --tokens 4096 16384
"""

from __future__ import annotations

import argparse
import functools

import torch
from _common import (
    MIB,
    add_threads_option,
    apply_threads,
    clock,
    device_name,
    markdown_table,
    peak_bytes,
    reset_peak,
)

from sdlib.head import Head
from sdlib.losses import topk_tail_loss


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocabs", type=int, nargs="+", default=[49152, 151936])
    p.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--hidden", type=int, default=64, help="hidden size of the states")
    p.add_argument("--chunk", type=int, default=1024, help="tokens per chunk (loss_chunk)")
    p.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    add_threads_option(p)
    return p.parse_args(argv)


def recomputing(head: Head, hidden, teacher, tokens, divergence):
    student = head.student(hidden, tokens, 100, with_entropy=True)
    return divergence(student, head.teacher(teacher, tokens, student.topk_index))


def fused(head: Head, hidden, teacher, tokens, divergence):
    return head.distill(hidden, teacher, tokens, 100, divergence)[0]


def measure(path, head, hidden, teacher, tokens, device: str, repeats: int):
    """(best seconds of forward + backward, peak bytes of one, gradient)."""
    divergence = functools.partial(topk_tail_loss, alpha=0.5)
    best, peak, grad = float("inf"), 0, None
    for _ in range(repeats + 1):  # the first is a warm-up
        x = hidden.detach().clone().requires_grad_(True)
        base = reset_peak(device)
        start = clock(device)
        path(head, x, teacher, tokens, divergence).sum().backward()
        seconds = clock(device) - start
        best, peak, grad = min(best, seconds), max(peak, peak_bytes(device) - base), x.grad
    return best, peak, grad


def main(argv=None) -> None:
    args = parse_args(argv)
    apply_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    print(f"# SDPO's distillation head, fused vs recomputing ({device_name(args.device)})")
    print(f"hidden {args.hidden}, {args.dtype}, chunks of {args.chunk}, top-100 + tail, "
          f"best of {args.repeats} after a warm-up\n")  # fmt: skip
    rows = []
    for vocab in args.vocabs:
        gen = torch.Generator().manual_seed(0)
        weight = (0.05 * torch.randn(vocab, args.hidden, generator=gen)).to(args.device, dtype)
        head = Head(weight, chunk_size=args.chunk)
        for n in args.tokens:
            hidden = torch.randn(n, args.hidden, generator=gen).to(args.device, dtype)
            teacher = hidden + (0.3 * torch.randn(n, args.hidden, generator=gen)).to(hidden)
            tokens = torch.randint(0, vocab, (n,), generator=gen).to(args.device)
            old = measure(recomputing, head, hidden, teacher, tokens, args.device, args.repeats)
            new = measure(fused, head, hidden, teacher, tokens, args.device, args.repeats)
            gap = float((old[2].float() - new[2].float()).abs().max())
            scale = float(old[2].float().abs().max())
            rows.append([
                f"{vocab:,}", f"{n:,}", f"{old[0]:.2f}", f"{new[0]:.2f}", f"{old[0] / new[0]:.2f}x",
                f"{old[1] / MIB:,.0f}", f"{new[1] / MIB:,.0f}", f"{gap / scale:.1e}",
            ])  # fmt: skip
            print(f"  V {vocab:,}, N {n:,}: {old[0]:.2f} s -> {new[0]:.2f} s", flush=True)
    columns = ["vocab", "tokens", "recomputing s", "fused s", "speed-up", "recomputing peak MiB",
               "fused peak MiB", "gradient gap / max"]  # fmt: skip
    print("\n" + markdown_table(columns, rows))


if __name__ == "__main__":
    main()
