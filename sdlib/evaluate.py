"""Evaluate a policy: k samples per problem, graded, measured, written, tabulated.

Per problem with n samples of which c are correct:
    avg@k   = c / n                                  (the paper's avg@16, k = n)
    pass@k  = 1 - C(n - c, k) / C(n, k)              (unbiased; Chen et al. 2021)
    maj@k   = 1 if the most frequent extracted answer is correct (ties: the first given)
Benchmark figures are means over its problems; "overall" is the mean over all samples.

Every sample is appended to ``<out>/samples.jsonl`` as soon as its batch is graded, so an
interrupted evaluation resumes on the same folder without redoing or losing samples.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from sdlib.behavior import EPISTEMIC_WORDS, behavior_row
from sdlib.grading import extract_answer, grade_response
from sdlib.problems import Problem
from sdlib.prompts import chat, student_prompt
from sdlib.rollout import Sampling

SAMPLES_FILE = "samples.jsonl"
# the paper's evaluation sampling (R1-Distill): T 0.6, top-p 0.95
EVAL_SAMPLING = Sampling(temperature=0.6, top_p=0.95)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@dataclass
class EvalResult:
    samples: pd.DataFrame  # one row per sample
    table: pd.DataFrame  # one row per benchmark, plus "overall"
    out_dir: Path | None = None


def render(
    problems: Iterable[Problem],
    tokenizer,
    prompt_fn: Callable[[Problem], str] | None = None,
    thinking: bool | None = None,
    few_shot: bool = False,
) -> list[str]:
    """Chat-templated student prompts (or ``prompt_fn``'s user turns) for ``problems``."""
    make = prompt_fn or (lambda p: student_prompt(p.question))
    return [chat(tokenizer, make(p), thinking, few_shot) for p in problems]


def sample_records(
    problems: list[Problem],
    rollouts,
    tokenizer,
    benchmark: str | list[str],
    extra: dict | None = None,
) -> list[dict]:
    """Grade and measure each sample of ``rollouts`` (which answer ``problems`` in order).

    ``benchmark`` names them all, or each problem (a list aligned with ``problems``)."""
    names = [benchmark] * len(problems) if isinstance(benchmark, str) else benchmark
    rows = []
    seen = Counter()
    for i, text in enumerate(rollouts.text):
        problem = problems[rollouts.prompt_index[i]]
        grade = grade_response(text, problem.answer)
        rows.append(
            {
                "benchmark": names[rollouts.prompt_index[i]],
                "problem_id": problem.id,
                "sample": seen[problem.id],
                "gold": problem.answer,
                "pred": extract_answer(text),
                "correct": bool(grade.correct),
                "grade": grade.reason,
                "finish": rollouts.finish_reason[i],
                **behavior_row(text, tokenizer=tokenizer, token_ids=rollouts.token_ids[i]),
                "text": text,
                **(extra or {}),
            }
        )
        seen[problem.id] += 1
    return rows


def read_samples(out_dir: Path | None) -> list[dict]:
    path = None if out_dir is None else Path(out_dir) / SAMPLES_FILE
    if path is None or not path.exists():
        return []
    rows = []
    with path.open() as f:
        for line in f:
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut by an interruption: its batch is redone
    return rows


def append_samples(out_dir: Path | None, rows: list[dict]) -> None:
    if out_dir is None:
        return
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with (Path(out_dir) / SAMPLES_FILE).open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def evaluate(
    backend,
    tokenizer,
    benchmarks: dict[str, list[Problem]],
    *,
    k: int = 4,
    sampling: Sampling = EVAL_SAMPLING,
    out_dir: str | Path | None = None,
    problems_per_batch: int = 8,
    prompt_fn: Callable[[Problem], str] | None = None,
    thinking: bool | None = None,
    few_shot: bool = False,
    progress: bool = True,
) -> EvalResult:
    """Sample ``k`` responses per problem of each benchmark and summarise them.

    Problems whose k samples are already in ``out_dir`` are skipped (resume).
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    out_dir = Path(out_dir) if out_dir is not None else None
    rows = read_samples(out_dir)
    counts = Counter((r["benchmark"], r["problem_id"]) for r in rows)
    todo = [
        (name, p) for name, probs in benchmarks.items() for p in probs if counts[(name, p.id)] < k
    ]
    if out_dir is not None and any(0 < counts[(n, p.id)] < k for n, p in todo):
        # a batch cut mid-write: drop its partial rows so each problem has exactly k
        rows = [r for r in rows if counts[(r["benchmark"], r["problem_id"])] >= k]
        _rewrite(out_dir, rows)
    bar = tqdm(total=len(todo), desc="evaluate", unit="problem", disable=not progress)
    for lo in range(0, len(todo), problems_per_batch):
        batch = todo[lo : lo + problems_per_batch]
        problems = [p for _, p in batch]
        seed = sampling.seed + lo  # fixed per batch position, so a resume samples the same
        rollouts = backend.generate(
            render(problems, tokenizer, prompt_fn, thinking, few_shot),
            n=k,
            sampling=_reseed(sampling, seed),
        )
        new = sample_records(problems, rollouts, tokenizer, [n for n, _ in batch])
        append_samples(out_dir, new)
        rows += new
        bar.update(len(batch))
    bar.close()
    samples = pd.DataFrame(rows)
    return EvalResult(samples=samples, table=summarize(samples, k), out_dir=out_dir)


def _reseed(s: Sampling, seed: int) -> Sampling:
    return Sampling(s.max_new_tokens, s.temperature, s.top_p, s.top_k, seed)


def _rewrite(out_dir: Path, rows: list[dict]) -> None:
    tmp = out_dir / (SAMPLES_FILE + ".tmp")
    with tmp.open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    tmp.replace(out_dir / SAMPLES_FILE)


def summarize(samples: pd.DataFrame, k: int | None = None) -> pd.DataFrame:
    """Per-benchmark table (plus "overall") from per-sample rows."""
    if samples.empty:
        return pd.DataFrame()
    parts = {name: _summary_row(g, k) for name, g in samples.groupby("benchmark", sort=False)}
    if len(parts) > 1:
        parts["overall"] = _summary_row(samples, k)
    return pd.DataFrame.from_dict(parts, orient="index").rename_axis("benchmark")


def _summary_row(g: pd.DataFrame, k: int | None) -> dict:
    per_problem = g.groupby("problem_id")
    n = int(per_problem.size().min())
    k = min(k or n, n)
    c = per_problem["correct"].sum()
    row = {
        "problems": per_problem.ngroups,
        "samples": len(g),
        f"avg@{n}": float(g["correct"].mean()),
        "pass@1": float(c.map(lambda ci: pass_at_k(n, int(ci), 1)).mean()),
        f"pass@{k}": float(c.map(lambda ci: pass_at_k(n, int(ci), k)).mean()),
        f"maj@{n}": float(per_problem.apply(_majority_correct, include_groups=False).mean()),
        "len_tokens": float(g["len_tokens"].mean()),
        "think_tokens": float(g["think_tokens"].mean()) if "think_tokens" in g else math.nan,
        "epi_total": float(g["epi_total"].mean()),
        "epi_total_word": float(g["epi_total_word"].mean()),
        "boxed_frac": float(g["pred"].notna().mean()),
        "truncated_frac": float((g["finish"] == "length").mean()),
    }
    row.update({f"epi/{w}": float(g[f"epi/{w}"].mean()) for w in EPISTEMIC_WORDS})
    return row


def _majority_correct(g: pd.DataFrame) -> bool:
    # missing answers are None or NaN depending on the pandas version: keep strings only
    answers = g["pred"].map(lambda p: p.strip() if isinstance(p, str) else None)
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return False
    top = votes.most_common(1)[0][0]  # a tie goes to the answer given first
    return bool(g.loc[answers == top, "correct"].any())
