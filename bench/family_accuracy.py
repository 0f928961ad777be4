"""avg@k of a policy on each synthetic family and level, with and without the format hint.

The tiny preset trains on problems the model solves sometimes (the study keeps problems
solved 1 to 4 times out of 8), so GRPO/SDPO groups hold both successes and failures. This
script measures, per (family, level, few-shot) cell, how often the policy is right, and
prints one markdown table of all cells and a pivot of avg@k.

Each cell is one benchmark of ``sdlib.evaluate.evaluate``, named like
``addition/L1/fewshot`` or ``addition/L1/plain``. Samples go to
``<out>/<setting>/samples.jsonl`` (one sub-folder per temperature, top-p, token budget,
dtype and seed), so an interrupted run resumes where it stopped.

    python bench/family_accuracy.py --families addition --levels 1 --problems 2 --k 2
    python bench/family_accuracy.py --levels 1 2 --batch-size 64
    python bench/family_accuracy.py --temperature 1.0 0.6     # one table per temperature

Columns: ``avg@k`` mean correctness over all samples; ``in band`` fraction of problems
solved ``--band LO HI`` times (default 1-4) of k; ``0/k`` and ``k/k`` fractions of problems
never / always solved; ``boxed`` fraction of responses with an extracted answer; ``trunc``
fraction cut at the token budget; ``len`` mean response tokens; ``epi`` mean epistemic
word count (the paper's substring mode).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import pandas as pd
import torch

from sdlib.evaluate import evaluate
from sdlib.models import load_policy
from sdlib.problems import Problem
from sdlib.rollout import Sampling, TransformersBackend
from sdlib.settings import DEFAULT_MODEL
from sdlib.synthetic import FAMILIES, LEVELS, generate

MODES = {"on": ("fewshot",), "off": ("plain",), "both": ("plain", "fewshot")}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="policy spec (load_policy)")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--levels", nargs="+", type=int, default=[1, 2, 3], choices=LEVELS)
    parser.add_argument("--problems", type=int, default=6, help="problems per (family, level)")
    parser.add_argument("--k", type=int, default=8, help="samples per problem")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument(
        "--temperature",
        type=float,
        nargs="+",
        default=[1.0],
        help="one or more; 1.0 is the training rollout temperature, 0.6 the paper's eval",
    )
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--few-shot", choices=list(MODES), default="both")
    parser.add_argument("--band", type=int, nargs=2, default=[1, 4], metavar=("LO", "HI"))
    parser.add_argument("--seed", type=int, default=0, help="problem and sampling seed")
    parser.add_argument("--out", default="runs/bench/family_accuracy")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences decoded at once")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.problems < 1 or args.k < 1 or args.batch_size < 1:
        parser.error("--problems, --k and --batch-size must be positive")
    if not 0 <= args.band[0] <= args.band[1]:
        parser.error(f"--band needs 0 <= LO <= HI, got {args.band}")
    args.band = [min(args.band[0], args.k), min(args.band[1], args.k)]  # small k: clip
    return args


def cell_name(family: str, level: int, mode: str) -> str:
    return f"{family}/L{level}/{mode}"


def benchmarks(args) -> dict[str, list[Problem]]:
    """One benchmark per (family, level, mode); few-shot copies carry ids of their own."""
    cells = {}
    for family in args.families:
        for level in args.levels:
            problems = generate(family, level, args.problems, seed=args.seed)
            for mode in MODES[args.few_shot]:
                cells[cell_name(family, level, mode)] = [
                    dataclasses.replace(p, id=f"{p.id}-{mode}") for p in problems
                ]
    return cells


def setting_dir(args, temperature: float) -> Path:
    name = (
        f"t{temperature:g}-p{args.top_p:g}-n{args.max_new_tokens}-{args.dtype}-s{args.seed}"
        f"-{args.model.replace('/', '_').replace(':', '_')}"
    )
    return Path(args.out) / name


def cell_table(samples: pd.DataFrame, cells: dict[str, list[Problem]], args) -> pd.DataFrame:
    """One row per cell from the samples of exactly its problems, first k samples each."""
    lo, hi = args.band
    rows = []
    for name, problems in cells.items():
        ids = {p.id for p in problems}
        g = samples[
            (samples["benchmark"] == name)
            & samples["problem_id"].isin(ids)
            & (samples["sample"] < args.k)
        ]
        if g.empty:
            continue
        solved = g.groupby("problem_id")["correct"].sum()
        family, level, mode = name.split("/")
        rows.append(
            {
                "family": family,
                "level": int(level[1:]),
                "few-shot": mode == "fewshot",
                "problems": len(solved),
                f"avg@{args.k}": g["correct"].mean(),
                "in band": solved.between(lo, hi).mean(),
                f"0/{args.k}": (solved == 0).mean(),
                f"{args.k}/{args.k}": (solved == args.k).mean(),
                "boxed": g["pred"].notna().mean(),
                "trunc": (g["finish"] == "length").mean(),
                "len": g["len_tokens"].mean(),
                "epi": g["epi_total"].mean(),
            }
        )
    return pd.DataFrame(rows)


def pivot(table: pd.DataFrame, k: int) -> pd.DataFrame:
    """Rows family, columns ``L<level> plain|fewshot``, values avg@k (families in order)."""
    wide = table.assign(
        column=[
            f"L{lv} {'fewshot' if fs else 'plain'}"
            for lv, fs in zip(table["level"], table["few-shot"], strict=True)
        ]
    ).pivot(index="family", columns="column", values=f"avg@{k}")
    order = sorted(wide.columns, key=lambda c: (c.split()[0], c.split()[1] != "plain"))
    families = [f for f in FAMILIES if f in wide.index]
    return wide.loc[families, order].reset_index()


def markdown(frame: pd.DataFrame) -> str:
    """A github markdown table; floats to 2 decimals, booleans as yes/no."""

    def cell(v) -> str:
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return "-" if pd.isna(v) else (f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}")
        return str(v)

    head = [str(c) for c in frame.columns]
    body = [[cell(v) for v in row] for row in frame.itertuples(index=False)]
    width = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    numeric = [
        pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
        for c in frame.columns
    ]

    def line(values) -> str:
        padded = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, width, numeric, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if n else ("-" * (w + 2))
            for w, n in zip(width, numeric, strict=True)
        )
        + "|"
    )
    return "\n".join([line(head), rule, *(line(r) for r in body)])


def run_temperature(policy, backend, cells, args, temperature: float) -> str:
    out_dir = setting_dir(args, temperature)
    out_dir.mkdir(parents=True, exist_ok=True)
    sampling = Sampling(
        max_new_tokens=args.max_new_tokens,
        temperature=temperature,
        top_p=args.top_p,
        seed=args.seed,
    )
    settings = {k: v for k, v in vars(args).items() if k not in ("temperature", "no_progress")}
    (out_dir / "settings.json").write_text(
        json.dumps({**settings, "temperature": temperature}, indent=1) + "\n"
    )
    start = time.perf_counter()
    frames = []
    for mode in MODES[args.few_shot]:  # the hint is a chat turn: one evaluation per mode
        chosen = {name: ps for name, ps in cells.items() if name.endswith(f"/{mode}")}
        result = evaluate(
            backend,
            policy.tokenizer,
            chosen,
            k=args.k,
            sampling=sampling,
            out_dir=out_dir / mode,
            problems_per_batch=max(1, args.batch_size // args.k),
            few_shot=mode == "fewshot",
            progress=not args.no_progress,
        )
        frames.append(result.samples)
    samples = pd.concat(frames, ignore_index=True)
    table = cell_table(samples, cells, args)
    report = "\n".join(
        [
            f"## {args.model} T={temperature:g} top-p={args.top_p:g} "
            f"max_new_tokens={args.max_new_tokens} k={args.k} problems/cell={args.problems} "
            f"({time.perf_counter() - start:.0f} s this run)",
            "",
            markdown(table),
            "",
            f"avg@{args.k} pivot (rows family, columns level x few-shot):",
            "",
            markdown(pivot(table, args.k)),
            "",
        ]
    )
    table.to_csv(out_dir / "cells.csv", index=False)
    (out_dir / "table.md").write_text(report)
    return report


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    policy = load_policy(args.model, dtype=args.dtype, device=args.device)
    backend = TransformersBackend(
        policy.model, policy.tokenizer, batch_size=args.batch_size, progress=False
    )
    cells = benchmarks(args)
    for temperature in args.temperature:
        print(run_temperature(policy, backend, cells, args, temperature), flush=True)


if __name__ == "__main__":
    main()
