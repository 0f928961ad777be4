"""The organism's pretraining: tokens/s of each training path, achieved GFLOP/s against a
matmul roofline measured in the same run, and where a step's time goes.

    python bench/organism_build.py [--steps 60] [--tokens 1500000]

Every path trains the default organism (its config, schedule and seed) from the same
initial weights on the same batches of its real corpus (the first ``--tokens`` of it):

    transformers   the model's own forward (sdpa attention), the head on trained tokens,
                   eager AdamW: the build as it was until 2026-12-01
    lean           ``sdlib.llama``'s forward, head on every token, eager AdamW
    lean+compile   the same through torch.compile: what ``build`` runs (compile: true)

Useful FLOPs per step: 6 x (matrix parameters + head) x real tokens, plus the causal half of
attention's two products (6 x 2 x layers x hidden x T^2 / 2 per row); padding and the masked
half are not counted. The roofline is torch's matmul on this machine, fp32 and bf16, at the
organism's widest projection ([4096, 128] x [128, 384]) and at 2048^3. Run it alone
(OMP_WAIT_POLICY=PASSIVE, as ``make bench`` exports).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from _common import markdown_table
from torch.profiler import ProfilerActivity, profile

from sdlib.organism import pretrain as P
from sdlib.organism.build import make_corpus, new_model, resolve
from sdlib.organism.tokenizer import build_tokenizer


def transformers_loss(model, inputs, targets, bf16):
    """The loss as the build computed it until 2026-12-01 (kept here as the baseline)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        hidden = model.model(input_ids=inputs).last_hidden_state  # [B, T, H]
        keep = targets != P.IGNORE
        logits = model.lm_head(hidden[keep])  # [N, V]
    return F.cross_entropy(logits.float(), targets[keep])


class Baseline(P.Stepper):
    """``Stepper`` on transformers' forward with eager clipping and AdamW."""

    def __call__(self, step, total, inputs, targets):
        for group in self.opt.param_groups:
            group["lr"].fill_(P.lr_at(step, total, self.s))
        loss = transformers_loss(self.model, inputs, targets, self.s.bf16)
        loss.backward()
        self.update()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()


def matmul_gflops(m: int, k: int, n: int, dtype, seconds: float = 1.0) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        a @ b
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        calls += 1
    return 2 * m * k * n * calls / (time.perf_counter() - start) / 1e9


def useful_flops(model, rows_lengths) -> float:
    c = model.config
    matrix = sum(p.numel() for n, p in model.named_parameters() if p.ndim == 2 and "embed" not in n)
    head = c.vocab_size * c.hidden_size
    tokens = sum(rows_lengths)
    attention = 2 * c.num_hidden_layers * c.hidden_size * sum(t * t / 2 for t in rows_lengths)
    return 6 * (matrix + head) * tokens + 6 * attention


def timed(name, stepper, batches, data, pad, lengths, warmup, steps):
    """(tokens/s, useful GFLOP/s, phase ms per step) over ``steps`` after ``warmup``."""
    phases = defaultdict(float)
    clock = time.perf_counter
    total = warmup + steps
    for i, rows in enumerate(batches[:warmup]):
        stepper(i, total, *P.collate(data, rows, pad))
    tokens, flops, start = 0, 0.0, clock()
    for i, rows in enumerate(batches[warmup:total], start=warmup):
        t0 = clock()
        inputs, targets = P.collate(data, rows, pad)
        t1 = clock()
        stepper(i, total, inputs, targets)
        phases["collate"] += t1 - t0
        tokens += int(lengths[rows].sum())
        flops += useful_flops(stepper.model, [int(lengths[r]) for r in rows])
    seconds = clock() - start
    phases["step"] = seconds - phases["collate"]
    return tokens / seconds, flops / seconds / 1e9, {k: 1e3 * v / steps for k, v in phases.items()}


CATEGORIES = (
    ("attention (flash kernel)", ("flash_attention", "_scaled_dot_product")),
    ("matmul", ("aten::mm", "aten::bmm", "aten::addmm", "aten::matmul")),
    ("compiled kernels (fused elementwise, softmax, norms)", ("CompiledFxGraph",)),
    ("dtype casts and copies", ("aten::copy_", "aten::_to_copy", "aten::to")),
    ("optimizer and clipping", ("Optimizer", "_foreach", "lerp", "addcdiv", "addcmul", "sqrt")),
)


def profile_shares(stepper, batches, data, pad, start, steps) -> dict[str, float]:
    """Share of self CPU time per category over ``steps`` profiled steps."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i, rows in enumerate(batches[start : start + steps], start=start):
            stepper(i, start + steps, *P.collate(data, rows, pad))
    shares: dict[str, float] = defaultdict(float)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    for e in events:
        cat = next((c for c, keys in CATEGORIES if any(k in e.key for k in keys)), None)
        shares[cat or "other elementwise and framework"] += e.self_cpu_time_total / total
    return shares


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="timed steps per path")
    ap.add_argument("--warmup", type=int, default=8, help="untimed steps first (compiling)")
    ap.add_argument("--tokens", type=int, default=1_500_000, help="corpus tokens to draw")
    args = ap.parse_args()
    cfg = resolve("organism")
    tok = build_tokenizer()
    data, _ = make_corpus(dataclasses.replace(cfg, tokens=args.tokens), tok)
    lengths = data.lengths()
    batches = P.make_batches(lengths, cfg.batch_tokens, random.Random(cfg.seed))
    need = args.warmup + args.steps + 10
    if len(batches) < need:
        raise SystemExit(f"--tokens {args.tokens} gives {len(batches)} batches; need {need}")
    pad = tok.pad_token_id
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; default organism")
    peaks = {
        (dt, shape): matmul_gflops(*shape, dt)
        for dt in (torch.float32, torch.bfloat16)
        for shape in ((4096, 128, 384), (2048, 2048, 2048))
    }
    peak = max(v for (dt, _), v in peaks.items() if dt == torch.bfloat16)
    print(
        markdown_table(
            ["matmul", "fp32 GFLOP/s", "bf16 GFLOP/s"],
            [
                [f"{m} x {k} x {n}"]
                + [f"{peaks[(dt, (m, k, n))]:.0f}" for dt in (torch.float32, torch.bfloat16)]
                for m, k, n in ((4096, 128, 384), (2048, 2048, 2048))
            ],
        )
    )
    paths = {
        "transformers": lambda m: Baseline(m, cfg.schedule()),
        "lean": lambda m: P.Stepper(m, dataclasses.replace(cfg.schedule(), compile=False)),
        "lean+compile": lambda m: P.Stepper(m, dataclasses.replace(cfg.schedule(), compile=True)),
    }
    rows, shares, base = [], {}, None
    for name, make in paths.items():
        stepper = make(new_model(cfg, tok))
        rate, gflops, phases = timed(
            name, stepper, batches, data, pad, lengths, args.warmup, args.steps
        )
        base = base or rate
        rows.append(
            [
                name,
                f"{rate:,.0f}",
                f"{rate / base:.2f}x",
                f"{phases['step']:.1f}",
                f"{gflops:.0f}",
                f"{gflops / peak:.0%}",
            ]
        )
        shares[name] = profile_shares(stepper, batches, data, pad, args.warmup + args.steps, 10)
    print()
    cols = ["path", "tokens/s", "vs transformers", "ms/step", "useful GFLOP/s", "of bf16 peak"]
    print(markdown_table(cols, rows))
    print()
    cats = [c for c, _ in CATEGORIES] + ["other elementwise and framework"]
    print(
        markdown_table(
            ["share of self CPU time"] + list(shares),
            [[c] + [f"{shares[p].get(c, 0):.0%}" for p in shares] for c in cats],
        )
    )


if __name__ == "__main__":
    main()
