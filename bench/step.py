"""Seconds, tokens/s, peak memory and achieved FLOP/s of one GRPO and one SDPO step.

One measurement = ``rollout_phase`` (sample and grade ``prompts_per_step x
rollouts_per_prompt`` responses), then the rewards are FORCED to 1, 0, 1, 0, ... so every
group has successes and failures (GRPO: no zero advantages; SDPO: every sample has another
successful sibling as its demonstration), then ``algo.prepare`` + ``update_phase`` with a
fresh optimizer: one optimizer update, micro-batches accumulated. The LoRA adapter is reset
to its initial weights before each measurement, so both algorithms see the same rollouts.
Algorithms run interleaved, once per repeat, after an untimed tiny warm-up step each;
seconds, tokens and FLOPs are summed.

FLOP estimate (attention scores and LoRA's share of the rollout ignored; padding not
counted). P = frozen matmul weights of the decoder, L = LoRA weights, E = V x H head,
S = student tokens (prompt + response) of the forwarded rows, R = their response tokens
(the loss positions; the head runs on those only), Q = teacher tokens (SDPO):
    student forward   2 (P + L) S + 2 E R
    student backward  2 (P + L) S + 2 E R      gradients of the activations
                      + 2 L S                  weight gradients, LoRA only (base frozen)
    SDPO teacher      2 P Q + 2 E R            forward, adapter off, no gradient
    rollout           2 P (prompt + generated tokens) + 2 E (generated tokens)
so the update is ~ 4 P S (+ 2 P Q for SDPO), not the 6 P S of full fine-tuning. The peak is
the best of a ``--matmul-size`` square matmul loop in bf16 and fp32, measured in the same
process once per repeat. "tokens" are response tokens. "peak MiB" is the memory growth
during the phase (see bench/_common.py: resident set on CPU, allocated on CUDA); the
resident set on CPU can reuse what the rollout freed, so the update's growth is a floor.

    python bench/step.py                      # CPU defaults, a few minutes
    python bench/step.py --quick              # smoke check
    python bench/step.py --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile

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
from sdlib.config import TrainConfig, from_dict
from sdlib.models import resolve_dtype
from sdlib.settings import DEFAULT_MODEL
from sdlib.train import core, loop, onpolicy
from sdlib.train.grpo import GRPO
from sdlib.train.sdpo import SDPO

ALGOS = {"grpo": GRPO, "sdpo": SDPO}
PHASES = ("rollout", "update", "rollout + update")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=list(ALGOS))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=4, help="prompts_per_step")
    parser.add_argument("--rollouts", type=int, default=8, help="rollouts_per_prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--matmul-size", type=int, default=None, help="2048 CPU, 8192 CUDA")
    parser.add_argument("--quick", action="store_true", help="tiny configuration, smoke check")
    add_threads_option(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.rollouts, args.max_new_tokens, args.micro_batch = 2, 4, 8, 4
        args.repeats, args.matmul_size = 1, args.matmul_size or 512
    if args.matmul_size is None:
        args.matmul_size = 8192 if args.device.startswith("cuda") else 2048
    return args


def make_config(args, algo: str) -> TrainConfig:
    values = {
        "algo": algo,
        "model": args.model,
        "data": ["synthetic:addition:1:16"],
        "out": tempfile.gettempdir(),  # nothing is written: no run loop
        "steps": 1,
        "prompts_per_step": args.prompts,
        "rollouts_per_prompt": args.rollouts,
        "prompts_per_update": args.prompts,  # one optimizer update per step
        "micro_batch": args.micro_batch,
        "max_new_tokens": args.max_new_tokens,
        "gen_batch": args.prompts * args.rollouts,
        "few_shot": True,
        "dtype": args.dtype,
        "device": args.device,
    }
    return from_dict(TrainConfig, values)


def matmul_gflops(dtype: str, device: str, size: int, budget_s: float = 1.5) -> float:
    """Best-case dense throughput: back-to-back ``size``-square matmuls for ~``budget_s``."""
    gen = torch.Generator(device).manual_seed(0)
    a, b = (
        torch.randn(size, size, generator=gen, device=device).to(resolve_dtype(dtype))
        for _ in range(2)
    )
    a @ b  # warm-up
    iters, start = 0, clock(device)
    while iters < 3 or clock(device) - start < budget_s:
        a @ b
        iters += 1
    return 2 * size**3 * iters / (clock(device) - start) / 1e9


def weight_counts(model) -> dict[str, int]:
    """P: frozen decoder matmul weights; L: trainable (LoRA); E: output head."""
    decoder = core.unwrap(model).get_decoder()
    frozen = sum(
        p.numel()
        for n, p in decoder.named_parameters()
        if p.ndim == 2 and not p.requires_grad and "embed_tokens" not in n
    )
    lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"P": frozen, "L": lora, "E": core.unwrap(model).get_output_embeddings().weight.numel()}


def flop_estimate(w: dict, sb) -> dict[str, float]:
    """FLOPs of the rollout and the update (module docstring), from the step's batches."""
    rows = sb.active
    student = float(sb.student.attention_mask[rows].sum())
    response = float(sb.student.loss_mask[rows].sum())
    update = 4 * (w["P"] + w["L"]) * student + 4 * w["E"] * response + 2 * w["L"] * student
    if "teacher" in sb.extra:
        teacher = float(sb.extra["teacher"].attention_mask[rows].sum())
        update += 2 * w["P"] * teacher + 2 * w["E"] * response
    generated = sum(sb.rollouts.lengths)
    prompts = sum(map(len, sb.rollouts.prompt_ids))
    rollout = 2 * w["P"] * (prompts + generated) + 2 * w["E"] * generated
    return {"rollout": rollout, "update": update, "response": response, "generated": generated}


def forced_rewards(n: int) -> torch.Tensor:
    return torch.tensor([1.0 - i % 2 for i in range(n)])


def measure(policy, backend, problems, initial, name, cfg, step, device) -> dict:
    """One rollout, forced rewards, one update from a fresh optimizer, adapter reset first."""
    params = dict(policy.model.named_parameters())
    with torch.no_grad():
        for n, value in initial.items():
            params[n].copy_(value)
    base = reset_peak(device)
    t0 = clock(device)
    sb = onpolicy.rollout_phase(policy, backend, problems, cfg, step)
    t1 = clock(device)
    rollout_peak = peak_bytes(device)
    graded = float(sb.rewards.mean())
    sb.rewards = forced_rewards(len(sb.rewards))
    algo = ALGOS[name](cfg, policy)
    opt, sched = core.make_optimizer(policy.model, cfg)
    update_base = reset_peak(device)
    t2 = clock(device)
    algo.prepare(sb)
    stats = loop.update_phase(algo, policy.model, sb, opt, sched, cfg)
    t3 = clock(device)
    update_peak = peak_bytes(device)
    flops = flop_estimate(weight_counts(policy.model), sb)
    return {
        "seconds": {"rollout": t1 - t0, "update": t3 - t2},
        "peak": {
            "rollout": rollout_peak - base,
            "update": update_peak - update_base,
            "rollout + update": max(rollout_peak, update_peak) - base,
        },
        "flops": flops,
        "graded": graded,
        "active": float(sb.active.float().mean()),
        "loss": stats.get("train/loss", float("nan")),
    }


def accumulate(total: dict, m: dict) -> None:
    seconds = {**m["seconds"], "rollout + update": sum(m["seconds"].values())}
    flops = {
        "rollout": m["flops"]["rollout"],
        "update": m["flops"]["update"],
        "rollout + update": m["flops"]["rollout"] + m["flops"]["update"],
    }
    tokens = {p: m["flops"]["response"] for p in PHASES}
    tokens["rollout"] = m["flops"]["generated"]
    for phase in PHASES:
        row = total.setdefault(phase, {"seconds": 0.0, "tokens": 0.0, "flops": 0.0, "peak": 0})
        row["seconds"] += seconds[phase]
        row["tokens"] += tokens[phase]
        row["flops"] += flops[phase]
        row["peak"] = max(row["peak"], m["peak"][phase])
    total.setdefault("notes", []).append(m)


def table_rows(totals: dict, peaks: dict, dtype: str) -> list[list[str]]:
    rows = []
    for name, total in totals.items():
        for phase in PHASES:
            r = total[phase]
            gflops = r["flops"] / r["seconds"] / 1e9
            rows.append(
                [
                    name,
                    phase,
                    f"{r['seconds']:.2f}",
                    f"{r['tokens']:.0f}",
                    f"{r['tokens'] / r['seconds']:,.1f}",
                    f"{r['peak'] / MIB:,.0f}",
                    f"{r['flops'] / 1e9:,.1f}",
                    f"{gflops:,.1f}",
                    *(f"{100 * gflops / peaks[d]:.1f}%" for d in _peak_dtypes(dtype)),
                ]
            )
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    apply_threads(args.threads)
    cfgs = {name: make_config(args, name) for name in args.algos}
    cfg = cfgs[args.algos[0]]
    policy = core.load_training_policy(cfg)
    backend = onpolicy.make_backend(cfg, policy)
    initial = loop.trainable_state(policy.model)
    problems = synthetic.generate("addition", 1, 16, cfg.seed)
    for name in args.algos:  # first calls pay one-time costs (allocator, lazy init): not timed
        tiny = dataclasses.replace(
            cfgs[name],
            prompts_per_step=1,
            prompts_per_update=1,
            rollouts_per_prompt=2,
            max_new_tokens=4,
        )
        measure(policy, backend, problems[:1], initial, name, tiny, 0, args.device)
    peaks = {"bf16": 0.0, "fp32": 0.0}
    totals: dict = {}
    for repeat in range(args.repeats):
        for dtype in peaks:
            peaks[dtype] = max(peaks[dtype], matmul_gflops(dtype, args.device, args.matmul_size))
        batch = core.step_items(problems, repeat, args.prompts, cfg.seed)
        for name in args.algos:
            m = measure(policy, backend, batch, initial, name, cfgs[name], repeat, args.device)
            accumulate(totals.setdefault(name, {}), m)
    print_report(args, totals, peaks)


def print_report(args, totals: dict, peaks: dict) -> None:
    print(f"{args.model} + LoRA r16 on {device_name(args.device)}, {args.dtype}; "
          f"{args.prompts} prompts x {args.rollouts} rollouts, max_new_tokens "
          f"{args.max_new_tokens}, micro_batch {args.micro_batch}, {args.repeats} "
          f"repeat(s) summed")  # fmt: skip
    print(f"measured matmul peak ({args.matmul_size}^2): bf16 {peaks['bf16']:,.1f} GFLOP/s, "
          f"fp32 {peaks['fp32']:,.1f} GFLOP/s")  # fmt: skip
    print("rewards FORCED to 1,0,1,0,... after grading so every group has a success and a "
          "failure (the loss is never empty)")  # fmt: skip
    for name, total in totals.items():
        notes = total["notes"]
        print(f"  {name}: graded reward mean {_mean(n['graded'] for n in notes):.3f} "
              f"(before forcing), rows in the loss {_mean(n['active'] for n in notes):.0%}, "
              f"train/loss {_mean(n['loss'] for n in notes):.4g}")  # fmt: skip
    columns = ["algo", "phase", "seconds", "tokens", "tokens/s", "peak MiB", "GFLOP"]
    columns += ["GFLOP/s"] + [f"% {d} peak" for d in _peak_dtypes(args.dtype)]
    print("\n" + markdown_table(columns, table_rows(totals, peaks, args.dtype)))


def _peak_dtypes(dtype: str) -> list[str]:
    """Percentages against the bf16 peak and, when training in another dtype, its own."""
    return ["bf16"] if dtype == "bf16" else ["bf16", dtype]


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


if __name__ == "__main__":
    main()
