"""Packed against padded update micro-batches on realistic length spreads (CPU or CUDA).

    python bench/packing.py [--layers 4 --hidden 256 --vocab 49152] [--sequences 32]

The update's forward and backward (a LoRA'd random Llama, the chunked head's token
log-probs summed over the loss tokens, backward) on one micro-batch whose response lengths
are drawn from a lognormal, once as right-padded rows and once packed (``Packed.packed_rows``,
first-fit decreasing into rows no longer than the longest sequence). Spreads: the tiny run's
(median 48 tokens, sigma 0.4), the organism's (median 120, sigma 0.3) and a paper-like one
(median 512, sigma 1.0, cut at ``--cap``: a few long answers among many short ones). Prints
per spread the padded and packed tokens/s (real tokens only), their ratio, the share of
padded positions that were padding, and the loss and gradient agreement of the two paths.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _common import add_threads_option, apply_threads, clock, device_name, markdown_table

from sdlib.models import LoraSpec, load_policy
from sdlib.train import core

SPREADS = {"tiny": (48, 0.4), "organism": (120, 0.3), "paper-like": (512, 1.0)}


def batch(lengths: list[int], vocab: int, prompt: int, seed: int) -> core.Packed:
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(5, vocab, (prompt,), generator=g).tolist() for _ in lengths]
    responses = [torch.randint(5, vocab, (n,), generator=g).tolist() for n in lengths]
    return core.pack(prompts, responses, pad_id=0)


def update(model, head, micro: core.Packed) -> tuple[float, torch.Tensor]:
    """Forward, summed token log-prob, backward; returns the loss and the flat gradient."""
    model.zero_grad(set_to_none=True)
    h, tokens = core.selected(model, micro)
    stats = head.student(h, tokens, k=1)
    loss = -stats.token_logp.sum()
    loss.backward()
    grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
    return loss.item(), torch.cat(grads)


def timed(model, head, micro, repeats: int, device: str) -> tuple[float, float, torch.Tensor]:
    update(model, head, micro)  # warm-up
    start = clock(device)
    for _ in range(repeats):
        loss, grad = update(model, head, micro)
    return (clock(device) - start) / repeats, loss, grad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--sequences", type=int, default=32, help="sequences per micro-batch")
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens per sequence")
    ap.add_argument("--cap", type=int, default=2048, help="longest response (max_new_tokens)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    add_threads_option(ap)
    args = ap.parse_args()
    apply_threads(args.threads)
    policy = load_policy(
        f"tiny-random:{args.layers}x{args.hidden}", device=args.device, lora=LoraSpec()
    )
    model = policy.model
    vocab = model.config.vocab_size

    class Cfg:  # what ``core.output_head`` reads
        temperature, loss_chunk = 1.0, 1024

    head = core.output_head(model, Cfg)
    print(f"{device_name(args.device)}; random Llama {args.layers}x{args.hidden}, vocab {vocab}")
    print(f"{args.sequences} sequences per micro-batch, {args.prompt}-token prompts, LoRA r 16")
    rows = []
    for name, (median, sigma) in SPREADS.items():
        rng = np.random.default_rng(0)
        lengths = np.clip(rng.lognormal(np.log(median), sigma, args.sequences), 1, args.cap)
        lengths = [int(n) for n in lengths]
        full = batch(lengths, vocab, args.prompt, seed=0)
        idx = torch.arange(len(lengths))
        padded, packed = full.rows(idx), full.packed_rows(idx)
        real = int(full.attention_mask.sum())
        t_pad, loss_pad, g_pad = timed(
            model, head, padded.to(args.device), args.repeats, args.device
        )
        t_pack, loss_pack, g_pack = timed(
            model, head, packed.to(args.device), args.repeats, args.device
        )
        padding = 1 - real / padded.input_ids.numel()
        rel_loss = abs(loss_pack - loss_pad) / abs(loss_pad)
        rel_grad = float((g_pack - g_pad).norm() / g_pad.norm())
        rows.append(
            (
                name,
                f"{median} / {sigma}",
                f"{min(lengths)}-{max(lengths)}",
                f"{padding:.0%}",
                f"{packed.input_ids.shape[0]} x {packed.input_ids.shape[1]}",
                f"{real / t_pad:,.0f}",
                f"{real / t_pack:,.0f}",
                f"{t_pad / t_pack:.2f}x",
                f"{rel_loss:.1e} / {rel_grad:.1e}",
            )
        )
    cols = (
        "spread",
        "median / sigma",
        "lengths",
        "padding (padded)",
        "packed rows",
        "padded tok/s",
        "packed tok/s",
        "packed / padded",
        "rel. diff loss / grad",
    )
    print(markdown_table(cols, rows))


if __name__ == "__main__":
    main()
