"""Check a CUDA machine end to end in minutes: one table of checks with their figures; the
exit status is 1 when any check fails.

    python bench/gpu_check.py                       # on a GPU: every check (~5-8 minutes)
    python bench/gpu_check.py --device cpu --quick  # the dry run CI makes: small sizes

Checks (``--skip`` leaves some out):
  head       the distillation head, fused (frozen head: LoRA) and recomputing (trained head:
             full fine-tuning), on the device in fp32 and bf16, against the float64 CPU
             formula at a 152k vocabulary: the divergence and its gradient in the hidden
             states (bf16: the formula on the same bf16 inputs, its logits rounded to bf16
             as the device's matrix product returns them)
  update     one SDPO and one GRPO update of a random Llama with a 152k vocabulary on
             responses of 1k-2k tokens: tokens/s and peak memory; where bitsandbytes is
             installed, the SDPO update again on 4-bit (NF4) base weights
  full       two SDPO steps training every weight in bf16 (float32 master weights): the loss
             finite, the weights moved, the masters float32, and the peak memory against the
             floor ``finetune: auto`` counts (weights, gradients, moments, masters, copies)
  notebooks  notebooks 00-05 at the smoke preset on the device (``sdlib run``)
  organism   a 20M-parameter organism (``organism:gpu``) pretrained and gated on the GPU, then
             notebook 03 at the organism preset on it (one seed): SDPO - GRPO held out, with
             95% intervals over problems and samples (GPU only)
  fsdp       SDPO's first step with the decoder layers sharded over two processes
             (``accelerate launch --use_fsdp``: two GPUs over NCCL; the dry run, two CPU
             processes) against one process (not run with fewer than two GPUs)

What the device machine needs beyond torch, transformers, peft and accelerate travels with
the repository as wheels: ``make wheelhouse`` here, then there
``pip install --no-index --no-deps wheelhouse/*.whl && pip install --no-deps -e .``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import pandas as pd
import torch
from _common import MIB, device_name, peak_bytes, reset_peak, sync
from safetensors.torch import load_file

from sdlib import synthetic
from sdlib.config import TrainConfig, from_dict
from sdlib.head import Head
from sdlib.losses import topk_tail_loss
from sdlib.models import count_parameters, full_finetune_bytes, resolve_dtype
from sdlib.runfolder import RunFolder
from sdlib.train import ALGORITHMS, core, loop, onpolicy, train

REPO = Path(__file__).resolve().parents[1]
VOCAB = 152_064  # Qwen2.5 / R1-Distill-Qwen's padded vocabulary


@dataclasses.dataclass
class Row:
    check: str
    case: str
    figures: str
    ok: bool


# ---------------------------------------------------------------------------------------
# head


def reference_divergence(h, th, weight, tokens, k, dtype, alpha=0.5):
    """The float64 formula: full log-softmax, the student's top-k plus the tail bucket,
    J = alpha KL(t || m) + (1 - alpha) KL(s || m), m = (1 - alpha) s + alpha t; [N]. The
    logits are rounded to ``dtype`` as the device's matrix product returns them (bf16
    logits carry 8 bits), everything after them is float64."""
    s = (h @ weight.T).to(dtype).double().log_softmax(-1)
    t = (th @ weight.T).to(dtype).double().log_softmax(-1).detach()
    index = s.detach().topk(k, dim=-1).indices
    s_top, t_top = s.gather(-1, index), t.gather(-1, index)
    s_b = torch.cat([s_top, torch.log1p(-s_top.exp().sum(-1, keepdim=True))], -1)
    t_b = torch.cat([t_top, torch.log1p(-t_top.exp().sum(-1, keepdim=True))], -1)
    m = torch.logaddexp(s_b + math.log(1 - alpha), t_b + math.log(alpha))
    kl = lambda p, q: (p.exp() * (p - q)).sum(-1)  # noqa: E731
    return alpha * kl(t_b, m) + (1 - alpha) * kl(s_b, m)


def check_head(args) -> list[Row]:
    n, hid, vocab = (128, 64, 4096) if args.quick else (1024, 1024, VOCAB)
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(n, hid, generator=gen, dtype=torch.float64)
    th = h + 0.3 * torch.randn(n, hid, generator=gen, dtype=torch.float64)
    weight = torch.randn(vocab, hid, generator=gen, dtype=torch.float64) / math.sqrt(hid)
    tokens = torch.randint(vocab, (n,), generator=gen)
    upstream = torch.rand(n, generator=gen, dtype=torch.float64)  # a loss's token weights
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        # the formula on the inputs as the device sees them, rounded to its dtype
        r_h, r_th, r_w = (x.to(dtype).double() for x in (h, th, weight))
        r_h.requires_grad_(True)
        ref = reference_divergence(r_h, r_th, r_w, tokens, 100, dtype)
        (ref * upstream).sum().backward()
        for mode, trained in (("fused", False), ("recomputing", True)):
            x = r_h.detach().to(args.device, dtype).requires_grad_(True)
            w = r_w.to(args.device, dtype).requires_grad_(trained)
            head = Head(w, None, 1.0, 1024)
            divergence = partial(topk_tail_loss, alpha=0.5)
            start = time.perf_counter()
            d, _, _ = head.distill(
                x, r_th.to(args.device, dtype), tokens.to(args.device), 100, divergence
            )
            (d.double() * upstream.to(args.device)).sum().backward()
            sync(args.device)
            seconds = time.perf_counter() - start
            value = (d.double().cpu() - ref.detach()).abs().max() / ref.detach().abs().max()
            grad = x.grad.double().cpu()
            g_err = (grad - r_h.grad).norm() / r_h.grad.norm()
            # bf16: the hidden-state gradient is a bf16 product (8 bits), the value is not
            limit, g_limit = (1e-4, 1e-4) if dtype == torch.float32 else (1e-3, 1e-2)
            rows.append(
                Row(
                    "head",
                    f"{mode}, {str(dtype).removeprefix('torch.')}",
                    f"{n} tokens x {vocab:,} vocabulary: max value error {value:.1e} (limit "
                    f"{limit:.0e}), gradient error {g_err:.1e} (limit {g_limit:.0e}); "
                    f"{seconds:.2f} s",
                    bool(value < limit and g_err < g_limit),
                )
            )
    return rows


# ---------------------------------------------------------------------------------------
# updates


def config(args, algo: str, **kw) -> TrainConfig:
    quick = args.quick
    values = {
        "algo": algo,
        "model": "tiny-random:2x64" if quick else f"tiny-random:4x512x{VOCAB}",
        "data": ["synthetic:addition:1:16"],
        "out": tempfile.mkdtemp(prefix="gpu-check-"),
        "steps": 1,
        "prompts_per_step": 2,
        "rollouts_per_prompt": 2 if quick else 4,
        "micro_batch": 4,
        "max_new_tokens": 16 if quick else 2048,
        "gen_batch": 16,
        "few_shot": True,
        "dtype": "fp32" if quick else "bf16",
        "device": args.device,
        "topk": 8 if quick else 100,
        "loss_chunk": 1024,
        **kw,
    }
    return from_dict(TrainConfig, values)


def check_update(args) -> list[Row]:
    rows = []
    cases = [("sdpo", False), ("grpo", False)]
    if importlib.util.find_spec("bitsandbytes"):
        cases.append(("sdpo", True))
    else:
        print("  update: the 4-bit case not run (bitsandbytes is not installed)", file=sys.stderr)
    for algo, four_bit in cases:
        cfg = config(args, algo, load_in_4bit=four_bit)
        policy = core.load_training_policy(cfg)
        quantized = 0
        if four_bit:
            from bitsandbytes.nn import Linear4bit

            quantized = sum(isinstance(m, Linear4bit) for m in policy.model.modules())
        backend = onpolicy.make_backend(cfg, policy)
        problems = onpolicy.fitting(synthetic.generate("addition", 1, 4, 0), policy, cfg)
        sb = onpolicy.rollout_phase(policy, backend, problems[: cfg.prompts_per_step], cfg, 0)
        sb.rewards = torch.tensor([1.0 - i % 2 for i in range(len(sb.rewards))])  # both kinds
        algo_obj = ALGORITHMS[algo](cfg, policy, [])
        opt, sched = core.make_optimizer(policy.model, cfg)
        base = reset_peak(args.device)
        start = time.perf_counter()
        algo_obj.prepare(sb)
        stats = loop.update_phase(algo_obj, policy.model, sb, opt, sched, cfg)
        sync(args.device)
        seconds = time.perf_counter() - start
        tokens = int(sb.student.loss_mask.sum())
        lengths = [len(t) for t in sb.rollouts.token_ids]
        finite = math.isfinite(stats["train/loss"]) and math.isfinite(stats["train/grad_norm"])
        peak = (peak_bytes(args.device) - base) / MIB
        rows.append(
            Row(
                "update",
                f"{algo.upper()}, {cfg.dtype}, LoRA" + (" on 4-bit weights" if four_bit else ""),
                f"{cfg.model}: {len(lengths)} responses of {min(lengths)}-{max(lengths)} tokens; "
                f"{tokens / seconds:,.0f} tokens/s, peak {peak:,.0f} MiB, "
                f"loss {stats['train/loss']:.4g}"
                + (f"; {quantized} projections in NF4" if four_bit else ""),
                finite and (quantized > 0) == four_bit,
            )
        )
        del policy, backend, opt
    return rows


def check_full(args) -> list[Row]:
    base = reset_peak(args.device)
    cfg = config(
        args, "sdpo", finetune="full", dtype="bf16", steps=2, lr=1e-4, save_every=2,
        max_new_tokens=16 if args.quick else 512, feedback=True,  # a random model is never right
    )  # fmt: skip
    run = train(cfg)
    peak = peak_bytes(args.device) - base
    rows = RunFolder(run.path).read(loop.METRICS_FILE)
    state, _ = RunFolder(run.path).load_checkpoint(run.path / "checkpoints" / "step_2")
    masters = [v for k, v in state.items() if k.startswith(".masters.")]
    policy = core.load_training_policy(cfg)
    weights = count_parameters(policy.model)[1]
    floor = full_finetune_bytes(weights, resolve_dtype(cfg.dtype), copies=1)
    start = {n: p.detach().float().cpu() for n, p in policy.model.named_parameters()}
    moved = any(
        not torch.equal(start[k.removeprefix(".trainable.")], v.float())
        for k, v in state.items()
        if k.startswith(".trainable.") and k.removeprefix(".trainable.") in start
    )
    finite = all(r["train/loss"] is not None and math.isfinite(r["train/loss"]) for r in rows)
    fp32 = bool(masters) and all(m.dtype == torch.float32 for m in masters)
    cuda = args.device.startswith("cuda")
    within = peak >= 0.9 * floor if cuda else True  # the CPU's resident set is no measure
    return [
        Row(
            "full",
            "SDPO, every weight, bf16 + float32 masters",
            f"{weights / 1e6:.1f}M weights, 2 steps: loss finite {finite}, weights moved "
            f"{moved}, masters float32 {fp32}; peak {peak / MIB:,.0f} MiB against the "
            f"estimate's floor {floor / MIB:,.0f} MiB"
            + ("" if cuda else " (CPU: resident set, not checked)"),
            finite and moved and fp32 and within,
        )
    ]


# ---------------------------------------------------------------------------------------
# notebooks


def check_notebooks(args) -> list[Row]:
    out = tempfile.mkdtemp(prefix="gpu-check-notebooks-")
    cmd = [sys.executable, "-m", "sdlib.cli", "run", "00", "01", "02", "03", "04", "05"]
    cmd += ["--preset", "smoke", "--out", out, "-p", "device", args.device]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    minutes = (time.perf_counter() - start) / 60
    tail = done.stderr.strip().splitlines()[-1:] if done.returncode else []
    return [
        Row(
            "notebooks",
            "00-05, smoke preset",
            f"exit {done.returncode} in {minutes:.1f} min; report in {out}" + "".join(tail),
            done.returncode == 0,
        )
    ]


def check_organism(args) -> list[Row]:
    out = tempfile.mkdtemp(prefix="gpu-check-organism-")
    cmd = [sys.executable, "-m", "sdlib.cli", "run", "03", "--preset", "organism", "--out", out]
    cmd += ["-p", "model", "organism:gpu", "-p", "device", args.device, "-p", "seeds", "[0]"]
    cmd += ["-p", "strip_variant", "false"]
    model = "organism:gpu"
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    minutes = (time.perf_counter() - start) / 60
    if done.returncode:
        tail = " ".join(done.stderr.strip().splitlines()[-1:])
        return [Row("organism", model, f"exit {done.returncode}: {tail}"[:400], False)]
    table = pd.read_csv(Path(out) / "03_sdpo_vs_grpo" / "tables" / "sdpo_vs_grpo.csv")
    said = [
        f"{r.benchmark} {r['Δaccuracy']:+.3f} [{r['Δaccuracy_lo']:+.3f}, {r['Δaccuracy_hi']:+.3f}]"
        for _, r in table[table["model"] == "SDPO"].iterrows()
    ]
    figures = f"built and 03 run in {minutes:.1f} min (seed 0); SDPO - GRPO held out: "
    return [Row("organism", model, figures + "; ".join(said), True)]


def check_fsdp(args) -> list[Row]:
    """SDPO's first step under ``accelerate launch --use_fsdp`` on two processes (two GPUs
    over NCCL; the dry run: two CPU processes over gloo) against one process: the trained
    weights and AdamW moments of the gathered checkpoint."""
    step = REPO / "tests" / "helpers" / "dist_step.py"  # the step the test suite launches
    fields = json.dumps({"device": args.device.split(":")[0], "dtype": "float32"})
    out = Path(tempfile.mkdtemp(prefix="gpu-check-fsdp-"))
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp"]
    accelerate += ["--num_processes=2", "--num_machines=1", "--mixed_precision=no"]
    runs = {
        "one": [sys.executable, str(step), "sdpo", str(out / "one"), fields],
        "two": [*accelerate, "--dynamo_backend=no", str(step), "sdpo", str(out / "two"), fields],
    }
    start = time.perf_counter()
    for name, cmd in runs.items():
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if done.returncode:
            tail = " ".join(done.stderr.strip().splitlines()[-1:])
            return [
                Row("fsdp", f"{name} process(es)", f"exit {done.returncode}: {tail}"[:400], False)
            ]
    held = next(line for line in done.stderr.splitlines() if "processes holds" in line)
    state = {n: load_file(out / n / "checkpoints/step_1/state.safetensors") for n in runs}
    kept = [k for k in state["one"] if k.startswith((".trainable.", ".optimizer.state."))]
    gap = max(float((state["one"][k] - state["two"][k]).abs().max()) for k in kept)
    seconds = time.perf_counter() - start
    figures = (
        f"{len(kept)} tensors, largest gap {gap:.1e} (at most 1e-4: 1% of one step); "
        f"{held.split('FSDP: ')[-1].split(' (')[0]}; {seconds:.0f} s"
    )
    return [Row("fsdp", "SDPO step, 2 processes vs 1", figures, bool(kept) and gap <= 1e-4)]


CHECKS = {
    "head": check_head,
    "update": check_update,
    "full": check_full,
    "notebooks": check_notebooks,
    "organism": check_organism,
    "fsdp": check_fsdp,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small sizes (the CPU dry run)")
    parser.add_argument("--skip", nargs="*", default=[], choices=list(CHECKS))
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"device {args.device}: this torch ({torch.__version__}) sees no CUDA GPU; "
              f"use --device cpu for the dry run")  # fmt: skip
        return 2
    print(f"sdlib GPU check on {device_name(args.device)}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}")  # fmt: skip
    rows: list[Row] = []
    for name, check in CHECKS.items():
        if name in args.skip:
            continue
        if name == "fsdp" and args.device.startswith("cuda") and torch.cuda.device_count() < 2:
            print("  fsdp: not run (needs two GPUs)", file=sys.stderr)
            continue
        if name == "organism" and (args.quick or not args.device.startswith("cuda")):
            # the smoke organism solves nothing (03 needs right answers), the real one
            # takes minutes a seed on a CPU: this check is the GPU's
            print("  organism: not run (a GPU check; needs --device cuda)", file=sys.stderr)
            continue
        start = time.perf_counter()
        try:
            found = check(args)
        except Exception as err:  # a check that crashes fails, and the others still run
            found = [Row(name, "crashed", f"{type(err).__name__}: {err}"[:300], False)]
        rows += found
        print(f"  {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    print("\n| check | case | figures | result |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r.check} | {r.case} | {r.figures} | {'pass' if r.ok else 'FAIL'} |")
    failed = [r for r in rows if not r.ok]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
