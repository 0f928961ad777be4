"""Tokens/s of ``TransformersBackend.generate`` by batch size against plain ``model.generate``.

Each row samples ``n`` responses to a few chat-templated student prompts of level-1 addition
(few-shot hint on), temperature 1 with a fixed seed, at most ``--max-new-tokens`` each.
EOS ends rows early, so tokens are counted as generated (the EOS token included), never
assumed to be ``rows x max_new_tokens``. The baseline is plain unbatched
``model.generate(do_sample=True)``, one prompt at a time, top-k off (transformers' default
is 50; the backend has none), same ``max_new_tokens``, no ``min_new_tokens``. Every
configuration runs once per repeat, baseline first, so background load hits them alike;
sums over repeats are reported. "peak MiB" is the memory growth during a measurement
(resident set on CPU, ``max_memory_allocated`` on CUDA), the largest over repeats.

    python bench/generation.py                    # CPU defaults, a few minutes
    python bench/generation.py --quick            # smoke check, seconds
    python bench/generation.py --device cuda --model bundled:smollm2-135m-instruct \\
        --batches 1 32 128 512 --max-new-tokens 256
"""

from __future__ import annotations

import argparse
import math

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

from sdlib import synthetic
from sdlib.models import LoraSpec, load_policy
from sdlib.prompts import chat, student_prompt
from sdlib.rollout import Sampling, TransformersBackend
from sdlib.settings import DEFAULT_MODEL

PLAIN = "plain"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=4, help="distinct problems")
    parser.add_argument("--min-rows", type=int, default=8, help="samples per batched row, min")
    parser.add_argument("--plain-rows", type=int, default=8, help="samples of the baseline")
    parser.add_argument("--lora", action="store_true", help="attach a fresh LoRA (as in training)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny configuration, smoke check")
    add_threads_option(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.dtypes, args.batches, args.max_new_tokens = args.dtypes[:1], [1, 4], 8
        args.repeats, args.prompts, args.min_rows, args.plain_rows = 1, 2, 2, 2
    return args


def chat_prompts(tokenizer, count: int, seed: int) -> list[str]:
    problems = synthetic.generate("addition", 1, count, seed)
    return [chat(tokenizer, student_prompt(p.question), few_shot=True) for p in problems]


def plain_generate(policy, prompts: list[str], rows: int, args, seed: int) -> dict:
    """``rows`` single-prompt ``model.generate`` calls, cycling through ``prompts``."""
    tok, model = policy.tokenizer, policy.model
    torch.manual_seed(seed)
    tokens = 0
    start = clock(args.device)
    for i in range(rows):
        enc = tok(prompts[i % len(prompts)], add_special_tokens=False, return_tensors="pt")
        enc = enc.to(args.device)
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=args.max_new_tokens,
            pad_token_id=tok.pad_token_id,
        )
        tokens += out.shape[1] - enc["input_ids"].shape[1]  # one row: no padding after EOS
    return {"rows": rows, "tokens": tokens, "seconds": clock(args.device) - start}


def backend_generate(policy, prompts: list[str], batch: int, args, seed: int) -> dict:
    """At least ``max(batch, min_rows)`` samples, ``n`` per prompt, decoded ``batch`` at once."""
    n = math.ceil(max(batch, args.min_rows) / len(prompts))
    backend = TransformersBackend(policy.model, policy.tokenizer, batch, progress=False)
    sampling = Sampling(args.max_new_tokens, temperature=1.0, seed=seed)
    start = clock(args.device)
    ro = backend.generate(prompts, n=n, sampling=sampling)
    return {"rows": len(ro), "tokens": sum(ro.lengths), "seconds": clock(args.device) - start}


def measure(policy, prompts, batch, args, seed) -> dict:
    before = reset_peak(args.device)
    if batch == PLAIN:
        result = plain_generate(policy, prompts, args.plain_rows, args, seed)
    else:
        result = backend_generate(policy, prompts, batch, args, seed)
    return {**result, "peak": peak_bytes(args.device) - before}


def warm_up(policy, prompts, args) -> None:
    """First calls pay for kernel selection and allocator growth; keep that out of the rows."""
    quick = argparse.Namespace(**{**vars(args), "max_new_tokens": 4, "min_rows": 1})
    plain_generate(policy, prompts, 1, quick, 0)
    backend_generate(policy, prompts[:1], 2, quick, 0)


def accumulate(total: dict, result: dict) -> None:
    for key in ("rows", "tokens", "seconds"):
        total[key] = total.get(key, 0) + result[key]
    total["peak"] = max(total.get("peak", 0), result["peak"])


def table_rows(totals: dict, args) -> list[list[str]]:
    rows = []
    for dtype in args.dtypes:
        base_rate = _rate(totals[dtype, PLAIN])
        for batch in [PLAIN, *args.batches]:
            t = totals[dtype, batch]
            rate = _rate(t)
            label = "plain generate (1)" if batch == PLAIN else str(batch)
            rows.append(
                [
                    dtype,
                    label,
                    t["rows"],
                    t["tokens"],
                    f"{t['tokens'] / t['rows']:.1f}",
                    f"{t['seconds']:.2f}",
                    f"{rate:,.1f}",
                    f"{rate / base_rate:.2f}x",
                    f"{t['peak'] / MIB:,.0f}",
                ]
            )
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    apply_threads(args.threads)
    lora = LoraSpec() if args.lora else None
    policies = {
        d: load_policy(args.model, dtype=d, device=args.device, lora=lora) for d in args.dtypes
    }
    prompts = chat_prompts(policies[args.dtypes[0]].tokenizer, args.prompts, args.seed)
    for dtype in args.dtypes:
        warm_up(policies[dtype], prompts, args)
    totals: dict = {}
    for repeat in range(args.repeats):
        for dtype in args.dtypes:
            for batch in [PLAIN, *args.batches]:
                result = measure(policies[dtype], prompts, batch, args, args.seed + repeat)
                accumulate(totals.setdefault((dtype, batch), {}), result)
    print(f"{args.model}{' + LoRA r16' if lora else ''} on {device_name(args.device)}; "
          f"{args.prompts} prompts, max_new_tokens {args.max_new_tokens}, temperature 1, "
          f"{args.repeats} repeat(s) summed; tokens = generated, EOS included")  # fmt: skip
    columns = ["dtype", "batch", "rows", "tokens", "mean len", "seconds", "tokens/s"]
    columns += ["vs plain", "peak MiB"]
    print("\n" + markdown_table(columns, table_rows(totals, args)))
    if 32 in args.batches:
        ratios = [f"{d} {_rate(totals[d, 32]) / _rate(totals[d, PLAIN]):.2f}x" for d in args.dtypes]
        print(f"\nbatch 32 vs plain unbatched: {', '.join(ratios)} (issue target: >= 4x)")


def _rate(total: dict) -> float:
    return total["tokens"] / total["seconds"]


if __name__ == "__main__":
    main()
