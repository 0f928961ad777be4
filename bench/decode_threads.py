"""Decoding with one intra-op thread against torch's default, per model size (CPU); and
the decode loop's KV cache written in place against transformers' concatenating one.

    python bench/decode_threads.py [--model organism] [--rollouts 64] [--max-new-tokens 256]

Under OMP_WAIT_POLICY=PASSIVE (sdlib's default) every op wakes the thread pool; a small
model's per-token ops are too short to repay it. Prints seconds per generate call with 1
thread and with torch's count, the ratio, and which one ``decode_threads`` picks.

Second table, at ``decode_threads``' choice: the cache as sdlib decodes (``GrowingLayer``:
each token written in place; finished rows leave once they are an eighth of the batch)
against the loop with transformers' ``DynamicLayer`` (every token concatenated onto a
copy of the cache; finished rows dropped as they finish), same tokens, same process. Run it
as ``make bench`` does (OMP_WAIT_POLICY=PASSIVE exported): this script loads torch before
sdlib could set the policy.
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import torch

from sdlib import prompts, rollout
from sdlib.datasets import pooled
from sdlib.models import LoraSpec, load_policy
from sdlib.rollout import Sampling, TransformersBackend, decode_threads


def seconds(backend, texts, sampling, repeats: int) -> float:
    backend.generate(texts[:2], n=2, sampling=sampling)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        backend.generate(texts, n=8, sampling=sampling)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs="+", default=["organism", "bundled:smollm2-135m-instruct"])
    ap.add_argument("--data", default="organism:all:train:32")
    ap.add_argument("--rollouts", type=int, default=64, help="per generate call (8 per prompt)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    pool = pooled([args.data])
    problems = pool[: args.rollouts // 8]
    default = torch.get_num_threads()
    wait = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(f"torch {torch.__version__}, OMP_WAIT_POLICY {wait}, default threads {default}")
    print("| model | hidden | 1 thread s | default s | default / 1 | decode_threads picks |")
    print("|---|---|---|---|---|---|")
    for spec in args.model:
        policy = load_policy(spec, lora=LoraSpec())
        tok = policy.tokenizer
        texts = [prompts.chat(tok, prompts.student_prompt(p.question)) for p in problems]
        sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=1.0, seed=0)
        times = {}
        for n in (1, default):
            backend = TransformersBackend(policy.model, tok, 256, progress=False, n_threads=n)
            times[n] = seconds(backend, texts, sampling, args.repeats)
        hidden = policy.model.config.hidden_size
        print(
            f"| {spec} | {hidden} | {times[1]:.2f} | {times[default]:.2f} | "
            f"{times[default] / times[1]:.2f}x | {decode_threads(policy.model)} |"
        )

    print()
    cache_table(args, pool)


def concatenating(fn):
    """``fn`` run with the decode loop on transformers' concatenating cache, dropping each
    finished row at once: the loop as it was before ``GrowingLayer``."""
    saved = rollout.grow_in_place, rollout.COMPACT_EVERY
    rollout.grow_in_place, rollout.COMPACT_EVERY = (lambda cache: None), 10**9
    try:
        return fn()
    finally:
        rollout.grow_in_place, rollout.COMPACT_EVERY = saved


def cache_table(args, problems) -> None:
    print("| model | rollouts | in place s | concatenating s | ratio | same tokens |")
    print("|---|---|---|---|---|---|")
    for spec in args.model:
        policy = load_policy(spec, lora=LoraSpec())
        tok = policy.tokenizer
        sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=1.0, seed=0)
        for n in (8, 25):  # prompts: 64 and 200 rollouts
            texts = [prompts.chat(tok, prompts.student_prompt(p.question)) for p in problems[:n]]
            backend = TransformersBackend(policy.model, tok, 256, progress=False)
            timed = functools.partial(seconds, backend, texts, sampling, args.repeats)
            drawn = functools.partial(backend.generate, texts, 8, sampling)
            mine, theirs = timed(), concatenating(timed)
            a, b = drawn().token_ids, concatenating(drawn).token_ids
            print(
                f"| {spec} | {8 * n} | {mine:.2f} | {theirs:.2f} | {theirs / mine:.2f}x | "
                f"{'yes' if a == b else 'no'} |"
            )


if __name__ == "__main__":
    main()
