"""Evaluate a policy: k samples per problem, graded, measured, written, tabulated.

Per problem with n samples of which c are correct:
    avg@k   = c / n                                  (the paper's avg@16, k = n)
    pass@k  = 1 - C(n - c, k) / C(n, k)              (unbiased; Chen et al. 2021)
    maj@k   = 1 if the most frequent extracted answer is correct (ties: the first given)
Benchmark figures are means over its problems; "overall" is the mean over all samples.
Column names are documented in ``sdlib.metrics`` (``eval/...``).

Every sample is appended to ``<out>/samples.jsonl`` as soon as its batch is graded, and
sample j of a problem is drawn with a seed of (seed, benchmark, problem id, j) alone, so an
interrupted evaluation resumes on the same folder without redoing or losing samples and
ends with exactly the samples an uninterrupted one draws. A damaged line is reported and
its problem sampled again; the folder is locked against a second writer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sdlib.behavior import EPISTEMIC_WORDS, behavior_row
from sdlib.clock import phase
from sdlib.grading import VERSION, extract_answer, grade_response
from sdlib.metrics import check_row
from sdlib.problems import Problem
from sdlib.progress import status, tqdm
from sdlib.prompts import chat, student_turn, system_of
from sdlib.rollout import Sampling
from sdlib.runfolder import (
    RunFolder,
    append_jsonl,
    file_digest,
    read_jsonl,
    rewrite_jsonl,
    write_atomic,
)

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
    prefill: str = "",
) -> list[str]:
    """Chat-templated student prompts (or ``prompt_fn``'s user turns) for ``problems``, with
    ``prefill`` already written as the start of the assistant's reply."""
    make = prompt_fn or student_turn
    return [chat(tokenizer, make(p), thinking, few_shot, system_of(p)) + prefill for p in problems]


def within_context(problems, texts, tokenizer, max_new_tokens: int, context: int | None, where):
    """Indices of the problems whose prompt text leaves ``max_new_tokens`` in the context;
    the others are reported by id and skipped (a row to skip, not a generation to hang on)."""
    if context is None:
        return list(range(len(problems)))
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    kept = [i for i, n in enumerate(lengths) if n + max_new_tokens <= context]
    if len(kept) < len(problems):
        first = next(i for i in range(len(problems)) if i not in set(kept))
        warnings.warn(
            f"{where}: skipped {len(problems) - len(kept)} problems whose prompt leaves no room "
            f"for max_new_tokens = {max_new_tokens} in the {context}-token context (first: "
            f"{problems[first].id}, a {lengths[first]}-token prompt)",
            stacklevel=2,
        )
    return kept


def sample_records(
    problems: list[Problem],
    rollouts,
    tokenizer,
    benchmark: str | list[str],
    extra: dict | None = None,
    prefill: str = "",
    rules: str = "careful",
) -> list[dict]:
    """Grade and measure each sample of ``rollouts`` (which answer ``problems`` in order).

    ``benchmark`` names them all, or each problem (a list aligned with ``problems``). A
    response is ``prefill`` + what was generated (lengths count the generated tokens);
    ``rules``: the grader's (``sdlib.grading``)."""
    names = [benchmark] * len(problems) if isinstance(benchmark, str) else benchmark
    rows = []
    seen = Counter()
    for i, generated in enumerate(rollouts.text):
        text = prefill + generated
        problem = problems[rollouts.prompt_index[i]]
        grade = grade_response(text, problem.answer, rules=rules)
        rows.append(
            {
                "benchmark": names[rollouts.prompt_index[i]],
                "problem_id": problem.id,
                "sample": seen[problem.id],
                "gold": problem.answer,
                "pred": extract_answer(text),
                "correct": bool(grade.correct),
                "grade": grade.reason,
                "grader": grader_tag(rules),
                "finish": rollouts.finish_reason[i],
                "truncated": rollouts.finish_reason[i] == "length",
                **behavior_row(text, tokenizer=tokenizer, token_ids=rollouts.token_ids[i]),
                "text": text,
                **(extra or {}),
            }
        )
        seen[problem.id] += 1
    return rows


def problem_key(benchmark: str, problem_id: str) -> int:
    """The sampling key of a problem: a function of its identity alone, not of its place in
    a batch or in what is left to do (``TransformersBackend.generate``'s ``keys``)."""
    digest = hashlib.sha256(f"{benchmark}\0{problem_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


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
    context: int | None = None,
    prefill: str = "",
    rules: str = "careful",
) -> EvalResult:
    """Sample ``k`` responses per problem of each benchmark and summarise them.

    Problems whose k samples are already in ``out_dir`` are skipped (resume); problems
    whose prompt leaves no room for the answer in ``context`` tokens are reported, skipped.
    ``prefill`` starts every reply (a forced mode, e.g. a direct answer: ``"x ="``).
    ``rules``: the grader's; samples stored under other rules or by another version of the
    grader are graded again from their text (``regraded``)."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    folder = None if out_dir is None else RunFolder(out_dir)
    with folder.lock() if folder else contextlib.nullcontext(), phase("evaluate"):
        path = None if folder is None else folder.file(SAMPLES_FILE)
        rows = [] if path is None else regraded(_complete(read_jsonl(path), k, path), rules, path)
        counts = Counter((r["benchmark"], r["problem_id"]) for r in rows)
        todo = [(n, p) for n, ps in benchmarks.items() for p in ps if counts[(n, p.id)] < k]
        if folder is not None and not todo and progress:
            found = sum(map(len, benchmarks.values()))
            status(f"evaluate: {found} problems x {k} samples found in {folder.path}")
        texts = render([p for _, p in todo], tokenizer, prompt_fn, thinking, few_shot, prefill)
        keep = within_context(
            [p for _, p in todo], texts, tokenizer, sampling.max_new_tokens, context, "evaluate"
        )
        todo, texts = [todo[i] for i in keep], [texts[i] for i in keep]
        bar = tqdm(total=len(todo), desc="evaluate", unit="problem", disable=not progress)
        for lo in range(0, len(todo), problems_per_batch):
            batch = todo[lo : lo + problems_per_batch]
            problems = [p for _, p in batch]
            rollouts = backend.generate(
                texts[lo : lo + problems_per_batch],
                n=k,
                sampling=sampling,
                keys=[problem_key(n, p.id) for n, p in batch],
            )
            names = [n for n, _ in batch]
            new = sample_records(problems, rollouts, tokenizer, names, prefill=prefill, rules=rules)
            if path is not None:
                append_jsonl(path, new)
            rows += new
            bar.update(len(batch))
        bar.close()
    samples = pd.DataFrame(rows)
    where = None if folder is None else folder.path
    return EvalResult(samples=samples, table=summarize(samples, k), out_dir=where)


def grader_tag(rules: str) -> str:
    """What graded a sample: the rules and the grader's version (``sdlib.grading``)."""
    return f"{rules}-{VERSION}"


def regraded(rows: list[dict], rules: str, path: Path) -> list[dict]:
    """``rows`` with every sample graded by ``rules`` and this grader: rows another grader
    marked are graded again from their text, and the file is rewritten, so a stored grade
    is never served under other rules."""
    tag = grader_tag(rules)
    stale = [r for r in rows if r.get("grader") != tag]
    for r in stale:
        grade = grade_response(r.get("text"), r.get("gold", ""), rules=rules)
        r.update(
            pred=extract_answer(r.get("text") or ""),
            correct=bool(grade.correct),
            grade=grade.reason,
        )
        r["grader"] = tag
    if stale:
        rewrite_jsonl(path, rows)
    return rows


def _complete(rows: list[dict], k: int, path: Path) -> list[dict]:
    """The rows of problems with all k samples; partial problems (a cut batch, a damaged
    line) are dropped from the file, to be sampled again whole."""
    counts = Counter((r.get("benchmark"), r.get("problem_id")) for r in rows)
    whole = [r for r in rows if counts[(r.get("benchmark"), r.get("problem_id"))] >= k]
    if len(whole) < len(rows) or rows.damaged:
        rewrite_jsonl(path, whole)
    return whole


def summarize(samples: pd.DataFrame, k: int | None = None) -> pd.DataFrame:
    """Per-benchmark table (plus "overall") from per-sample rows."""
    if samples.empty:
        return pd.DataFrame()
    parts = {name: _summary_row(g, k) for name, g in samples.groupby("benchmark", sort=False)}
    if len(parts) > 1:
        parts["overall"] = _summary_row(samples, k)
    return pd.DataFrame.from_dict(parts, orient="index").rename_axis("benchmark")


def _summary_row(g: pd.DataFrame, k: int | None) -> dict:
    # a problem is (benchmark, id): two sets may both have a problem "1"
    per_problem = g.groupby(["benchmark", "problem_id"])
    n = int(per_problem.size().min())
    k = min(k or n, n)
    c = per_problem["correct"].sum()
    mean = lambda col: float(g[col].mean())  # noqa: E731
    row = {
        "eval/problems": per_problem.ngroups,
        "eval/k": n,
        "eval/accuracy": mean("correct"),
        "eval/pass@1": float(c.map(lambda ci: pass_at_k(n, int(ci), 1)).mean()),
        "eval/pass@k": float(c.map(lambda ci: pass_at_k(n, int(ci), k)).mean()),
        "eval/maj@k": float(per_problem.apply(_majority_correct, include_groups=False).mean()),
        "eval/len_tokens": mean("len_tokens"),
        "eval/think_tokens": mean("think_tokens") if "think_tokens" in g else math.nan,
        "eval/epi_total": mean("epi_total"),
        "eval/epi_total_word": mean("epi_total_word"),
        "eval/boxed_frac": float(g["pred"].notna().mean()),
        "eval/truncated_frac": float((g["finish"] == "length").mean()),
        **{f"eval/epi/{w}": mean(f"epi/{w}") for w in EPISTEMIC_WORDS},
    }
    return check_row(row, "eval")


def _majority_correct(g: pd.DataFrame) -> bool:
    # missing answers are None or NaN depending on the pandas version: keep strings only
    answers = g["pred"].map(lambda p: p.strip() if isinstance(p, str) else None)
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return False
    top = votes.most_common(1)[0][0]  # a tie goes to the answer given first
    return bool(g.loc[answers == top, "correct"].any())


def run_eval(cfg) -> EvalResult:
    """``sdlib eval``: check, load, sample k per problem, grade, print and return the table."""
    from sdlib.datasets import load_benchmarks
    from sdlib.models import check_limits, load_policy, model_limits
    from sdlib.prompts import THINKING
    from sdlib.rollout import TransformersBackend
    from sdlib.schema import save
    from sdlib.settings import check_device

    check_device(cfg.device)
    check_limits(cfg.model, cfg.max_new_tokens)
    benchmarks = load_benchmarks(cfg.data, cfg.limit)
    out = Path(cfg.out) if cfg.out else None
    if out is not None:
        with RunFolder(out).lock():  # a busy folder is refused here, before any loading
            claim_eval_folder(out, eval_identity(cfg))
    policy = load_policy(cfg.model, dtype=cfg.dtype, device=cfg.device, adapter=cfg.lora or None)
    if out is not None:
        save(cfg, out / "params.yaml")
    backend = TransformersBackend(policy.model, policy.tokenizer, batch_size=cfg.gen_batch)
    sampling = Sampling(cfg.max_new_tokens, cfg.temperature, cfg.top_p, seed=cfg.seed)
    result = evaluate(
        backend,
        policy.tokenizer,
        benchmarks,
        k=cfg.k,
        sampling=sampling,
        out_dir=out,
        thinking=THINKING[cfg.thinking],
        few_shot=cfg.few_shot,
        context=model_limits(cfg.model)[1],
        rules=cfg.grader,
    )
    if out is not None:
        result.table.to_csv(out / "table.csv")
    print(format_table(result.table))
    return result


# what may change between runs on one ``sdlib eval`` folder: none changes a sample (stored
# samples are graded again under other rules)
EVAL_RESUMABLE = {"out", "gen_batch", "grader"}
IDENTITY = "identity.json"


def eval_identity(cfg) -> dict:
    """What decides an ``sdlib eval`` folder's samples: every parameter but
    ``EVAL_RESUMABLE``, the adapter's bytes (not its path) and the sampler's version."""
    from sdlib.rollout import SAMPLER

    fields = {k: v for k, v in vars(cfg).items() if k not in EVAL_RESUMABLE}
    fields["lora"] = file_digest(Path(cfg.lora)) if cfg.lora else ""
    return {**fields, "sampler": SAMPLER}


def claim_eval_folder(out: Path, identity: dict) -> None:
    """Record ``identity`` in ``out``; refuse (ConfigError) a folder whose samples were made
    by another evaluation, or by one that recorded nothing (an older sdlib)."""
    from sdlib.schema import ConfigError

    record = out / IDENTITY
    if read_jsonl(out / SAMPLES_FILE):
        try:
            before = json.loads(record.read_text())
        except (OSError, ValueError):
            before = None
        if not isinstance(before, dict):
            raise ConfigError(
                f"{out} holds samples with no record of what made them; give another --out "
                "(or delete the folder)"
            )
        changed = sorted(
            k for k in identity.keys() | before.keys() if identity.get(k) != before.get(k)
        )
        if changed:
            raise ConfigError(
                f"{out} holds samples of another evaluation ({', '.join(changed)} differ); "
                "give another --out, or the same parameters to resume"
            )
    write_atomic(record, json.dumps(identity, indent=1, sort_keys=True) + "\n")


def format_table(table: pd.DataFrame) -> str:
    """The table without its per-word columns, for a terminal."""
    cols = [c for c in table.columns if not c.startswith("eval/epi/")]
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        return table[cols].round(3).to_string()
