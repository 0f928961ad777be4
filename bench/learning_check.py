"""Does training move the bundled model? GRPO and SDPO on a family it solves sometimes.

Trains each algorithm from the same start on level-1 word problems (with the hint,
rollouts at T 0.7 / top-p 0.95, where the model solves about 35% of them) and
prints, per algorithm: the training reward over the first and second half of the steps,
and avg@k on fresh problems of the same family (another seed; the level-1 space is small, so
some may also occur in training) before and after.
It prints figures; it asserts nothing.

    python bench/learning_check.py                 # ~15 min on 2 CPU cores
    python bench/learning_check.py --steps 4 --quick
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import add_threads_option, apply_threads, markdown_table

from sdlib.config import CoverageConfig, from_dict
from sdlib.datasets import load_benchmarks
from sdlib.experiments import training
from sdlib.experiments.evaluation import evaluate_policy


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled:smollm2-135m-instruct")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--prompts", type=int, default=4, help="problems per step")
    p.add_argument("--rollouts", type=int, default=8, help="samples per problem")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--eval-problems", type=int, default=24)
    p.add_argument("--eval-k", type=int, default=4)
    p.add_argument("--out", default="runs/bench/learning_check")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke configuration")
    add_threads_option(p)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    apply_threads(args.threads)
    if args.quick:
        args.model, args.steps, args.rollouts, args.eval_problems = "tiny-random:2x64", 2, 2, 2
        args.max_new_tokens, args.eval_k = 8, 2
    # an experiment config carries the shared knobs (model, hint, budget, evaluation)
    cfg = from_dict(
        CoverageConfig,
        {
            "model": args.model,
            "dtype": args.dtype,
            "few_shot": True,
            "out": args.out,
            "max_new_tokens": args.max_new_tokens,
            "gen_batch": 64,
            "eval_k": args.eval_k,
            "eval_data": [f"synthetic:word_problem:1:{args.eval_problems}:7"],  # another seed
        },
    )
    held_out = load_benchmarks(cfg.eval_data)
    train = {
        "steps": args.steps,
        "prompts_per_step": args.prompts,
        "rollouts_per_prompt": args.rollouts,
        "micro_batch": 8,
        "lr": args.lr,
        "temperature": 0.7,
        "top_p": 0.95,
        "save_every": args.steps,
    }
    start = time.perf_counter()
    before = evaluate_policy(cfg, "base", held_out).samples["correct"].mean()
    rows = []
    for algo in ("grpo", "sdpo"):
        run = training.train(
            cfg, training.config(cfg, algo, ["synthetic:word_problem:1:64"], train)
        )
        m = run.metrics
        after = evaluate_policy(cfg, f"{algo}-final", held_out, adapter=run.weights)
        half = max(1, len(m) // 2)
        rows.append(
            [
                algo.upper(),
                f"{m['rollout/reward_mean'].iloc[:half].mean():.3f}",
                f"{m['rollout/reward_mean'].iloc[half:].mean():.3f}",
                f"{before:.3f}",
                f"{after.samples['correct'].mean():.3f}",
                f"{m['rollout/len_tokens'].iloc[0]:.1f} -> {m['rollout/len_tokens'].iloc[-1]:.1f}",
                f"{m['time/step'].mean():.1f}",
            ]
        )
    print(
        f"{args.model} ({args.dtype}), {args.steps} steps x {args.prompts} problems x "
        f"{args.rollouts} rollouts, lr {args.lr}, LoRA r16; evaluated on {cfg.eval_data[0]} "
        f"x {args.eval_k} samples; {time.perf_counter() - start:.0f} s in all"
    )
    print(
        markdown_table(
            [
                "algo",
                "train reward, first half",
                "train reward, second half",
                "same-family avg@k before",
                "after",
                "train length (tokens)",
                "s/step",
            ],
            rows,
        )
    )
    print(f"run folders under {Path(args.out).resolve()}")


if __name__ == "__main__":
    main()
