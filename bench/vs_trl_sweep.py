"""sdlib against TRL where the study lives: long answers and a 152k vocabulary.

The update of ``bench/vs_trl.py`` (same knobs, same LoRA, same loaders; its cross-check
holds the two frameworks to the same loss) on one fixed batch per size, swept over the
response length and the vocabulary, for SDPO and GRPO, with and without gradient
checkpointing. The model is a random Llama (``tiny-random:LxHxV``: a narrow body, so the
head over the vocabulary is what grows); the batch is ``--rows`` responses of exactly L
tokens (a real solution's tokens repeated; SDPO's teacher prompt holds another response,
so the teacher reads about 2L). Each measurement runs in a fresh process under a memory
cap (``--memory-gib``, below the machine's): a framework that needs more gets an
allocation error, recorded as "out of memory", and the sweep goes on.

Per measurement: one warm-up update, then one timed update (SDPO: teacher forward and
update; TRL computes its teacher inside ``compute_loss`` too). sdlib's ``track_kl`` (an extra
forward for the KL to the initial policy, which TRL at beta 0 does not compute) is off. Peak
= resident-set growth during the timed update (bench/_common.py). sdlib's teacher share = its
teacher forwards (the body only; both heads run in the loss) / the whole update. One
measurement per cell: on this machine repeated updates differ by a few percent
(bench/vs_trl.py's pairs), far less than most ratios here.

    python bench/vs_trl_sweep.py                       # CPU: ~25 min on 2 cores
    python bench/vs_trl_sweep.py --lengths 48 256 --vocabs 49152 --algos sdpo  # a slice
    python bench/vs_trl_sweep.py --device cuda --dtype bf16 --lengths 1024 4096 16384
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import vs_trl
from _common import MIB, clock, device_name, markdown_table, peak_bytes, reset_peak

from sdlib.prompts import student_prompt
from sdlib.rollout import Rollouts
from sdlib.train import core, loop

RESULT = "RESULT "
# a worked solution, repeated to the response length: real tokens that decode and
# re-encode to themselves, so both frameworks build the same SDPO teacher prompt
FILLER = (
    "Let x be the number of apples. Then 3x + 5 = 20, so 3x = 15 and x = 5. "
    "Check: 3 * 5 + 5 = 20, which matches. Wait, let me verify once more: 15 + 5 = 20. "
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[48, 256, 1024, 2048, 4096])
    p.add_argument("--vocabs", type=int, nargs="+", default=[49152, 151936])
    p.add_argument("--algos", nargs="+", default=["sdpo", "grpo"], choices=["sdpo", "grpo"])
    p.add_argument("--checkpointing", nargs="+", default=["off", "on"], choices=["off", "on"])
    p.add_argument("--body", default="2x64", help="layers x hidden of the random model")
    p.add_argument("--rows", type=int, default=4, help="responses in the batch (>= 3)")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--memory-gib", type=float, default=18.0, help="per-process cap (CPU)")
    p.add_argument("--figure", default="docs/vs_trl_scaling.png")
    p.add_argument("--save", default=None, help="also write the measurements to this JSON")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # json of one cell
    return p.parse_args(argv)


def bench_args(cell: dict, args) -> argparse.Namespace:
    """The namespace ``vs_trl``'s builders take, for one cell of the sweep."""
    argv = [
        "--model", f"tiny-random:{args.body}x{cell['vocab']}",
        "--device", args.device, "--dtype", args.dtype,
        "--prompts", "1", "--rollouts", str(args.rows),
        "--max-new-tokens", str(cell["length"]), "--micro-batch", str(args.micro_batch),
    ] + (["--gradient-checkpointing"] if cell["checkpointing"] == "on" else [])  # fmt: skip
    return vs_trl.parse_args(argv)


def write_batch(b, tokenizer, path: Path) -> None:
    """``rows`` responses of exactly ``length`` filler tokens to one student prompt."""
    problem = vs_trl.problems_of(b)[0]
    text = vs_trl.chat(tokenizer, student_prompt(problem.question), few_shot=True)
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    unit = tokenizer(FILLER, add_special_tokens=False)["input_ids"]
    tokens = (unit * (b.max_new_tokens // len(unit) + 1))[: b.max_new_tokens]
    rows = b.rollouts
    ro = Rollouts(
        prompt_index=[0] * rows,
        prompt_ids=[prompt] * rows,
        token_ids=[tokens] * rows,
        logprobs=[[-1.0] * len(tokens)] * rows,
        text=[tokenizer.decode(tokens)] * rows,
        finish_reason=["length"] * rows,
    )
    path.write_text(json.dumps(ro.__dict__))


def measure(cell: dict, args) -> dict:
    """One cell in this (fresh) process: warm-up update, timed update, peak memory."""
    b = bench_args(cell, args)
    cfg = vs_trl.sdlib_config(b, cell["algo"], b.dtype)  # track_kl off, as TRL at beta 0
    policy = core.load_training_policy(cfg)
    vs_trl.perturb_lora(policy.model, 0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "batch.json"
        write_batch(b, policy.tokenizer, path)
        if cell["framework"] == "sdlib":
            return sdlib_update(b, cfg, policy, path)
        return trl_update(b, cell["algo"], cfg, policy, path, tmp)


# Where sdlib's update spends its time: the parts timed by wrapping the functions that do
# them (``profiled``); "other" is the update less their sum (packing, the IS weights, the
# aggregation, the gradient clip).
PARTS = ("body forward", "teacher forward", "loss head", "backward", "optimizer")


def profiled(device: str, spent: dict, opt) -> None:
    """Wrap the update's parts so each adds its seconds to ``spent`` (this process only):
    the body forward (with gradient: the student's; without: the teacher's), the loss
    head (its forward; a fused head's gradient is taken there too), every backward
    (body and any recomputing head), the optimizer step."""
    from sdlib.head import Head

    def wrap(owner, name, part):
        real = getattr(owner, name)

        def timed(*a, **kw):
            start = clock(device)
            try:
                return real(*a, **kw)
            finally:
                key = part() if callable(part) else part
                spent[key] = spent.get(key, 0.0) + clock(device) - start

        setattr(owner, name, timed)

    body = lambda: "body forward" if torch.is_grad_enabled() else "teacher forward"  # noqa: E731
    wrap(core, "hidden_states", body)
    for name in ("student", "distill"):
        wrap(Head, name, "loss head")
    wrap(torch.Tensor, "backward", "backward")
    wrap(opt, "step", "optimizer")


def sdlib_update(b, cfg, policy, path: Path) -> dict:
    algo = vs_trl.ALGOS[cfg.algo](cfg, policy, [])
    opt, sched = core.make_optimizer(policy.model, cfg)
    out, spent = {}, {}
    for _ in ("warm-up", "timed"):
        sb = vs_trl.load_step_batch(b, path, policy.tokenizer)
        spent.clear()
        base = reset_peak(b.device)
        t0 = clock(b.device)
        algo.prepare(sb)
        loop.update_phase(algo, policy.model, sb, opt, sched, cfg)
        seconds = clock(b.device) - t0
        teacher = getattr(algo, "teacher_seconds", 0.0)  # SDPO: its teacher forwards
        out = {"seconds": seconds, "teacher_s": teacher, "peak": peak_bytes(b.device) - base}
        if not spent:  # wrapped after the warm-up, so that it runs as it always does
            profiled(b.device, spent, opt)
    profile = {part: spent.get(part, 0.0) for part in PARTS}
    profile["other"] = max(out["seconds"] - sum(profile.values()), 0.0)
    return {**out, "tokens": sum(sb.rollouts.lengths), "profile": profile}


def trl_update(b, algo: str, cfg, policy, path: Path, tmp: str) -> dict:
    n = b.prompts * b.rollouts
    trainer = vs_trl.trl_trainer(
        b, algo, policy, per_device=b.micro_batch, accumulation=n // b.micro_batch, out=tmp
    )
    trainer.current_gradient_accumulation_steps = n // b.micro_batch
    trainer.create_optimizer()
    out = {}
    for _ in ("warm-up", "timed"):
        sb = vs_trl.load_step_batch(b, path, policy.tokenizer)
        if algo == "grpo":
            vs_trl.GRPO(cfg, policy, []).prepare(sb)  # the advantages
        inputs = vs_trl.trl_inputs(trainer, sb, algo, policy.device, with_old=False)
        base = reset_peak(b.device)
        t0 = clock(b.device)
        vs_trl.trl_update(trainer, policy.model, inputs, b.micro_batch)
        out = {"seconds": clock(b.device) - t0, "peak": peak_bytes(b.device) - base}
    return {**out, "tokens": sum(sb.rollouts.lengths)}


def worker(args) -> None:
    cell = json.loads(args.worker)
    if args.device == "cpu":
        cap = int(args.memory_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    vs_trl.quiet()
    try:
        result = measure(cell, args)
    except (RuntimeError, MemoryError) as err:
        if "memory" not in str(err).lower() and not isinstance(err, MemoryError):
            raise
        result = {"oom": True, "error": str(err).splitlines()[0][:160]}
    print(RESULT + json.dumps({**cell, **result}), flush=True)


def spawn(cell: dict, args) -> dict:
    argv = [sys.executable, __file__, *sys.argv[1:], "--worker", json.dumps(cell)]
    done = subprocess.run(argv, capture_output=True, text=True, env=os.environ.copy())
    lines = [x for x in done.stdout.splitlines() if x.startswith(RESULT)]
    if not lines:  # killed (the kernel's OOM killer) or crashed
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])[:200]
        return {**cell, "oom": done.returncode in (-9, 137), "error": tail or "no result"}
    return json.loads(lines[-1][len(RESULT) :])


def cells(args) -> list[dict]:
    return [
        {"algo": a, "checkpointing": g, "vocab": v, "length": n, "framework": f}
        for a in args.algos
        for g in args.checkpointing
        for v in args.vocabs
        for n in args.lengths
        for f in ("sdlib", "trl")
    ]


def fmt(r: dict | None, key: str, scale: float = 1.0, spec: str = ".2f") -> str:
    if r is None:
        return "-"
    if r.get("oom"):
        return "out of memory"
    if "error" in r:
        return "failed"
    return format(r[key] / scale, spec)


def table(results: list[dict]) -> str:
    rows = []
    key = lambda r: (r["algo"], r["checkpointing"], r["vocab"], r["length"])  # noqa: E731
    by = {(key(r), r["framework"]): r for r in results}
    for k in dict.fromkeys(key(r) for r in results):
        ours, theirs = by.get((k, "sdlib")), by.get((k, "trl"))
        ok = all(r is not None and "seconds" in r for r in (ours, theirs))
        speed = f"{theirs['seconds'] / ours['seconds']:.2f}x" if ok else "-"
        memory = f"{ours['peak'] / max(theirs['peak'], 1):.2f}x" if ok else "-"
        share = fmt(ours, "teacher_s", spec=".2f") if k[0] == "sdpo" else "-"
        if k[0] == "sdpo" and ours is not None and "seconds" in ours:
            share = f"{ours['teacher_s'] / ours['seconds']:.0%}"
        rows.append([
            k[0].upper(), k[1], f"{k[2]:,}", k[3],
            fmt(ours, "seconds"), fmt(theirs, "seconds"),
            fmt(ours, "tokens_per_s", spec=",.0f"), fmt(theirs, "tokens_per_s", spec=",.0f"),
            speed, fmt(ours, "peak", MIB, ",.0f"), fmt(theirs, "peak", MIB, ",.0f"), memory, share,
        ])  # fmt: skip
    columns = [
        "algo", "checkpointing", "vocab", "tokens/answer", "sdlib s", "TRL s", "sdlib tok/s",
        "TRL tok/s", "speed sdlib/TRL", "sdlib peak MiB", "TRL peak MiB", "memory sdlib/TRL",
        "teacher share",
    ]  # fmt: skip
    return markdown_table(columns, rows)


def profile_table(results: list[dict]) -> str:
    """sdlib's update, part by part, as shares of its time (``PARTS``)."""
    rows = []
    for r in results:
        if r["framework"] != "sdlib" or "profile" not in r:
            continue
        shares = [f"{r['profile'][p] / r['seconds']:.0%}" for p in (*PARTS, "other")]
        rows.append([r["algo"].upper(), r["checkpointing"], f"{r['vocab']:,}", r["length"],
                     f"{r['seconds']:.2f}", *shares])  # fmt: skip
    return markdown_table(["algo", "checkpointing", "vocab", "tokens/answer", "update s",
                           *PARTS, "other"], rows)  # fmt: skip


def figure(results: list[dict], path: str, title: str) -> None:
    """Update tokens/s and peak memory against answer length, log-log: one line per
    framework and vocabulary (gradient checkpointing off), a panel per algorithm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    algos = list(dict.fromkeys(r["algo"] for r in results))
    fig, axes = plt.subplots(2, len(algos), figsize=(5.5 * len(algos), 7), squeeze=False)
    for j, algo in enumerate(algos):
        for framework, style in (("sdlib", "-o"), ("trl", "--s")):
            for vocab in sorted({r["vocab"] for r in results}):
                mine = [r for r in results if (r["algo"], r["framework"], r["vocab"]) ==
                        (algo, framework, vocab) and r["checkpointing"] == "off"]  # fmt: skip
                done = sorted((r for r in mine if "seconds" in r), key=lambda r: r["length"])
                if not done:
                    continue
                label = f"{'sdlib' if framework == 'sdlib' else 'TRL'} V={vocab // 1000}k"
                xs = [r["length"] for r in done]
                axes[0, j].plot(xs, [r["tokens_per_s"] for r in done], style, label=label)
                axes[1, j].plot(xs, [r["peak"] / MIB for r in done], style, label=label)
                for r in mine:
                    if r.get("oom"):
                        axes[1, j].annotate("OOM", (r["length"], done[-1]["peak"] / MIB))
        axes[0, j].set_title(f"{algo.upper()} update")
        axes[0, j].set_ylabel("response tokens / s")
        axes[1, j].set_ylabel("peak memory (MiB)")
        for ax in axes[:, j]:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("tokens per answer")
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:  # a panel whose runs all failed has none
                ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    start = time.perf_counter()
    print(f"# sdlib vs TRL over answer length and vocabulary ({time.strftime('%Y-%m-%d')})")
    print(f"{device_name(args.device)}; {vs_trl.versions()}")
    print(
        f"tiny-random:{args.body}xV, {args.dtype}, {args.rows} responses, micro-batch "
        f"{args.micro_batch}, LoRA r 16, memory cap {args.memory_gib:g} GiB per process\n"
    )
    results = []
    for cell in cells(args):
        t = time.perf_counter()
        r = spawn(cell, args)
        if "seconds" in r:
            r["tokens_per_s"] = r["tokens"] / r["seconds"]
        results.append(r)
        what = (
            "out of memory"
            if r.get("oom")
            else r.get("error") or (f"{r['seconds']:.2f} s, peak {r['peak'] / MIB:,.0f} MiB")
        )
        print(f"  {cell} -> {what} ({time.perf_counter() - t:.0f} s)", flush=True)
    print("\n" + table(results))
    print("\nsdlib's update, part by part (shares of its time)\n\n" + profile_table(results))
    if args.save:
        Path(args.save).write_text(json.dumps(results, indent=1))
    title = f"sdlib vs TRL update, tiny-random:{args.body}xV, {args.dtype}, {args.rows} answers"
    figure(results, args.figure, f"{title}, {device_name(args.device)}")
    print(f"\nfigure: {args.figure}\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
