"""Decoding: sdlib's loop on ``sdlib.llama``'s forward against the loop of 2026-12-01, in
one process, on the same prompts and seeds; and one decode thread against torch's count.

    python bench/decode.py [--model organism bundled:smollm2-135m-instruct] [--repeats 2]

Paths, each a ``TransformersBackend.generate`` call of ``rows`` rollouts (8 per prompt, the
organism's problems or short arithmetic questions for other models; T 1, up to 256 new
tokens for the organism, 64 for the bundled model; a fresh LoRA adapter attached):

    2026-12-01     the loop as it was (kept below as ``legacy_decode``): transformers'
                   forward with its cache grown in place, Python lists per row
    transformers   today's loop on transformers' forward (what models sdlib.llama does
                   not reproduce decode with)
    sdlib.llama    today's loop on the lean forward over a block cache (plain Llamas)

Rows: the organism preset's batches (64: a training step's rollouts, 8 x 8; 256: an
evaluation call, 128 problems x 2); 32 and 64 for the bundled model. "same tokens" compares
every sampled token with the 2026-12-01 loop's. Seconds are the best of ``--repeats``
calls. Run it alone, with OMP_WAIT_POLICY=PASSIVE exported as ``make bench`` does.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from _common import markdown_table

from sdlib import llama, prompts, rollout
from sdlib.datasets import pooled
from sdlib.models import LoraSpec, load_policy
from sdlib.rollout import Sampling, TransformersBackend, decode_threads


def legacy_decode(self, prompt_ids, s, gens):
    """``TransformersBackend._decode`` as of 2026-12-01 (commit 7cdfbb8), the baseline."""
    device = self.model.device
    unique = list(dict.fromkeys(map(tuple, prompt_ids)))
    copy_of = torch.tensor([unique.index(tuple(p)) for p in prompt_ids], device=device)
    width = max(map(len, unique))
    pad = self.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in unique], device=device)
    lengths = torch.tensor([len(p) for p in unique], device=device)
    prompt_mask = (torch.arange(width, device=device) >= (width - lengths)[:, None]).long()
    out = self.model(
        input_ids=ids,
        attention_mask=prompt_mask,
        position_ids=(prompt_mask.cumsum(-1) - 1).clamp(min=0),
        use_cache=True,
        logits_to_keep=1,
    )
    cache = getattr(out, rollout._CACHE_KW)
    cache.batch_select_indices(copy_of)
    rollout.grow_in_place(cache)
    logits = out.logits[copy_of, -1]
    mask = prompt_mask[copy_of]
    mask = torch.cat([mask, mask.new_ones(len(mask), s.max_new_tokens)], dim=1)
    position = lengths[copy_of][:, None]
    uniform = None if s.temperature == 0 else rollout.RowUniform(gens, device)
    stop = torch.tensor(self.stop_ids, device=device)
    row = torch.arange(len(prompt_ids), device=device)
    alive = torch.ones(len(prompt_ids), dtype=torch.bool, device=device)
    tokens = [[] for _ in prompt_ids]
    logps = [[] for _ in prompt_ids]
    reasons = ["length"] * len(prompt_ids)
    for step in range(s.max_new_tokens):
        token, logp = rollout.sample_next(logits, s, None if uniform is None else uniform.next())
        rows = zip(row.tolist(), token.tolist(), logp.tolist(), alive.tolist(), strict=True)
        for r, t, lp, live in rows:
            if live:
                tokens[r].append(t)
                logps[r].append(lp)
        stopped = alive & torch.isin(token, stop)
        for r in row[stopped].tolist():
            reasons[r] = "stop"
        alive &= ~stopped
        left = int(alive.sum())
        if left == 0 or step == s.max_new_tokens - 1:
            break
        if len(row) - left >= max(1, len(row) // rollout.COMPACT_EVERY):
            keep = alive.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            row, token, mask, position, alive = (
                t[keep] for t in (row, token, mask, position, alive)
            )
            if uniform is not None:
                uniform.keep(keep)
        out = self.model(
            input_ids=token[:, None],
            attention_mask=mask[:, : width + step + 1],
            position_ids=position,
            use_cache=True,
            **{rollout._CACHE_KW: cache},
        )
        logits, position = out.logits[:, -1], position + 1
    return list(zip(tokens, logps, reasons, strict=True))


class Path:
    """Run ``generate`` as one of the three paths."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, backend, *args):
        take, decode = llama.Snapshot.take, TransformersBackend._decode
        if self.name != "sdlib.llama":
            llama.Snapshot.take = classmethod(lambda cls, model: None)
        if self.name == "2026-12-01":
            TransformersBackend._decode = legacy_decode
        try:
            return backend.generate(*args)
        finally:
            llama.Snapshot.take, TransformersBackend._decode = take, decode


PATHS = [Path("2026-12-01"), Path("transformers"), Path("sdlib.llama")]


def texts_for(spec: str, tok, count: int) -> list[str]:
    if spec.startswith("organism"):
        questions = [p.question for p in pooled([f"organism:all:train:{count}"])]
    else:
        questions = [f"What is {i} + {2 * i + 1}? Then double it." for i in range(count)]
    return [prompts.chat(tok, prompts.student_prompt(q)) for q in questions]


def best(fn, repeats: int) -> tuple[float, object]:
    seconds, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        seconds = min(seconds, time.perf_counter() - start)
    return seconds, out


def paths_table(specs, repeats: int) -> None:
    rows = []
    for spec in specs:
        organism = spec.startswith("organism")
        policy = load_policy(spec, lora=LoraSpec())
        tok = policy.tokenizer
        sampling = Sampling(max_new_tokens=256 if organism else 64, temperature=1.0, seed=0)
        for n in (64, 256) if organism else (32, 64):
            texts = texts_for(spec, tok, n // 8)
            backend = TransformersBackend(policy.model, tok, 256, progress=False)
            Path("sdlib.llama")(backend, texts[:1], 2, sampling)  # warm-up
            base, base_out = None, None
            for path in PATHS:
                seconds, out = best(lambda: path(backend, texts, 8, sampling), repeats)  # noqa: B023
                if base is None:
                    base, base_out = seconds, out
                rows.append(
                    [
                        spec,
                        n,
                        path.name,
                        f"{seconds:.2f}",
                        f"{sum(out.lengths) / seconds:,.0f}",
                        f"{base / seconds:.2f}x",
                        "yes" if out.token_ids == base_out.token_ids else "no",
                    ]
                )
    cols = ["model", "rows", "path", "s", "tokens/s", "vs 2026-12-01", "same tokens"]
    print(markdown_table(cols, rows))


def threads_table(specs, repeats: int) -> None:
    default = torch.get_num_threads()
    rows = []
    for spec in specs:
        policy = load_policy(spec, lora=LoraSpec())
        tok = policy.tokenizer
        texts = texts_for(spec, tok, 8)
        sampling = Sampling(max_new_tokens=128, temperature=1.0, seed=0)
        times = {}
        for n in (1, default):
            backend = TransformersBackend(policy.model, tok, 256, progress=False, n_threads=n)
            backend.generate(texts[:1], 2, sampling)
            times[n] = best(lambda: backend.generate(texts, 8, sampling), repeats)[0]  # noqa: B023
        rows.append(
            [
                spec,
                policy.model.config.hidden_size,
                f"{times[1]:.2f}",
                f"{times[default]:.2f}",
                f"{times[default] / times[1]:.2f}x",
                decode_threads(policy.model),
            ]
        )
    cols = ["model", "hidden", "1 thread s", f"{default} threads s", "ratio", "decode_threads"]
    print(markdown_table(cols, rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs="+", default=["organism", "bundled:smollm2-135m-instruct"])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    wait = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(f"torch {torch.__version__}, OMP_WAIT_POLICY {wait}, {torch.get_num_threads()} threads")
    paths_table(args.model, args.repeats)
    print()
    threads_table(args.model, args.repeats)


if __name__ == "__main__":
    main()
