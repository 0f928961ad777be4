"""The study's tables, every number with its 95% interval (``sdlib.stats``).

Inputs are samples tables: one row per sample with ``seed``, ``benchmark``, ``problem_id``,
``sample`` and the measures (``correct``, ``len_tokens``, ``epi_total``, ...). Every function
returns numeric columns ``m``, ``m_lo``, ``m_hi`` (``results.compact`` shows them as
``v [lo, hi]``) and the sample sizes; comparisons are paired differences over the problems
and samples two runs share, ``notes`` says in words which of them exceed noise, and
``finding`` words an experiment's headline differences (its notes' findings).
"""

from __future__ import annotations

import html
import re

import pandas as pd

from sdlib import stats
from sdlib.behavior import EPISTEMIC_WORDS

# what a table reports of a set of samples: column name -> samples column
MEASURES = {
    "accuracy": "correct",
    "length": "len_tokens",
    "epistemic": "epi_total",
    "epistemic_word": "epi_total_word",
    "truncated": "truncated",  # cut at max_new_tokens: a short cap flatters short answers
}
SIZES = ("seeds", "problems", "samples")


def _cubes(a: pd.DataFrame, b: pd.DataFrame, column: str):
    """Two samples tables as aligned cubes over the problems both hold."""
    problems = sorted(set(a["problem_id"]) & set(b["problem_id"]))
    return stats.cube(a, column, problems), stats.cube(b, column, problems)


def _row(samples: pd.DataFrame, measures: dict[str, str]) -> dict:
    row = {}
    for name, column in measures.items():
        est = stats.estimate(stats.cube(samples, column))
        row.update(est.columns(name))
    row.update(seeds=est.seeds, problems=est.problems, samples=est.samples)
    return row


def _diff_row(a: pd.DataFrame, b: pd.DataFrame, measures: dict[str, str]) -> dict:
    row = {}
    for name, column in measures.items():
        est = stats.paired_difference(*_cubes(a, b, column))
        row.update(est.columns(f"Δ{name}"))
    return row


def summary(samples: pd.DataFrame, measures: dict[str, str] = MEASURES) -> dict:
    """One row: each measure with its interval, and the sizes it rests on."""
    return _row(samples, measures)


def by_benchmark(
    evals: dict[str, pd.DataFrame], base: str | None = "base", measures: dict = MEASURES
) -> pd.DataFrame:
    """Rows (model, benchmark): each measure, and its paired difference from ``base``."""
    rows = {}
    for label, samples in evals.items():
        for bench, part in samples.groupby("benchmark", sort=False):
            row = _row(part, measures)
            if base is not None and label != base:
                ref = evals[base][evals[base]["benchmark"] == bench]
                row.update(_diff_row(part, ref, measures))
            rows[(label, bench)] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(["model", "benchmark"])


def conditions(runs: dict[str, pd.DataFrame], base: str, measures: dict = MEASURES) -> pd.DataFrame:
    """Rows per condition (one problem set): measures, and paired differences from ``base``."""
    rows = {}
    for label, samples in runs.items():
        row = _row(samples, measures)
        if label != base:
            row.update(_diff_row(samples, runs[base], measures))
        rows[label] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("condition")


def word_shift(evals: dict[str, pd.DataFrame], base: str = "base") -> pd.DataFrame:
    """Rows (word, run): change of the word's count per response from ``base``, paired."""
    rows = {}
    for label, samples in evals.items():
        if label == base:
            continue
        for w in EPISTEMIC_WORDS:
            est = stats.paired_difference(*_cubes(samples, evals[base], f"epi/{w}"))
            rows[(w, label)] = {**est.columns("change"), "problems": est.problems}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(["word", "run"])


def over_steps(evals: dict[tuple[str, int], pd.DataFrame], measures: dict = MEASURES):
    """Rows (run, step): the measures of each run's checkpoint evaluations."""
    rows = {key: _row(samples, measures) for key, samples in evals.items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(["run", "step"]).sort_index()


def curves(frames: dict[str, list[pd.DataFrame]], keys: list[str]) -> pd.DataFrame:
    """Training metrics per run and step: the mean over seeds and its interval over seeds.

    ``frames[run]`` holds one metrics table per seed. Rows (run, step)."""
    rows = {}
    for label, per_seed in frames.items():
        long = pd.concat([f.assign(seed=i) for i, f in enumerate(per_seed)], ignore_index=True)
        for step, at in long.groupby("step"):
            row = {}
            for key in keys:
                values = at[key].dropna() if key in at else []
                if len(values):
                    row.update(stats.across_seeds(values.to_numpy()).columns(key))
            rows[(label, int(step))] = {**row, "seeds": len(at)}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(["run", "step"])


def sentence(what: str, est: stats.Estimate) -> str:
    """``what: +0.12 [+0.05, +0.19], exceeds noise`` (or ``within noise``), with sizes."""
    verdict = "exceeds noise (the interval excludes 0)" if est.excludes(0) else "within noise"
    return (
        f"{what}: {est.value:+.3f} [{est.low:+.3f}, {est.high:+.3f}], {verdict} "
        f"({est.problems} problems, {est.samples} samples, {est.seeds} seeds)"
    )


_MARKDOWN_ACTIVE = re.compile(r"([\\`*_{}\[\]()#+!|~>-])")


def markdown_text(text: str) -> str:
    """``text`` shown as itself in Markdown: HTML escaped, Markdown's active characters
    backslash-escaped (a set named ``<img onerror=..>`` or ``![x](y)`` stays text)."""
    return _MARKDOWN_ACTIVE.sub(r"\\\1", html.escape(text, quote=False))


def notes(table: pd.DataFrame, measures=("accuracy", "length", "epistemic")) -> list[str]:
    """One sentence per row and measure of a table's paired differences (``Δm`` columns)."""
    lines = []
    for index, row in table.iterrows():
        name = " / ".join(map(str, index)) if isinstance(index, tuple) else str(index)
        name = markdown_text(name)  # problem-set names come from file names: data
        for m in measures:
            if pd.notna(row.get(f"Δ{m}")):
                sizes = (int(row[k]) for k in SIZES)
                est = stats.Estimate(row[f"Δ{m}"], row[f"Δ{m}_lo"], row[f"Δ{m}_hi"], *sizes)
                lines.append(sentence(f"{name}, {m} minus the reference", est))
    return lines


def specificity(evals: dict[str, pd.DataFrame], base: str = "base", top: int = 30) -> pd.DataFrame:
    """The study's specificity check (Appendix B.4): the change in mean count per response
    of *every* word of the responses, trained minus base, so a reader can see whether the
    epistemic words move far more than the rest of the vocabulary.

    Rows (run, word), the ``top`` largest absolute changes of each run plus every epistemic
    word, with ``rank`` (1 = largest |change| among all words) and ``epistemic``."""
    base_counts = word_counts(evals[base]["text"])
    rows = {}
    for label, samples in evals.items():
        if label == base:
            continue
        counts = word_counts(samples["text"])
        change = counts.reindex(counts.index.union(base_counts.index), fill_value=0)
        change = change - base_counts.reindex(change.index, fill_value=0)
        order = change.abs().sort_values(ascending=False)
        rank = pd.Series(range(1, len(order) + 1), index=order.index)
        keep = list(order.index[:top]) + [w for w in EPISTEMIC_WORDS if w in change.index]
        for w in dict.fromkeys(keep):
            rows[(label, w)] = {
                "change": float(change[w]),
                "rank": int(rank[w]),
                "of_words": len(order),
                "epistemic": w in EPISTEMIC_WORDS,
            }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(["run", "word"])


def word_counts(texts: pd.Series) -> pd.Series:
    """Mean count per response of each lowercase word (letters only) in ``texts``."""
    words = texts.str.lower().str.findall(r"[a-z]+")
    return words.explode().value_counts() / max(len(texts), 1)


NOUNS = {"accuracy": "accuracy", "length": "length (tokens)", "epistemic": "epistemic words"}


def rows(table: pd.DataFrame, label) -> dict[str, pd.Series]:
    """The rows of ``label`` by what tells them apart: one per benchmark of a (model,
    benchmark) table, ``{"": row}`` for a table with one index level."""
    if table.index.nlevels == 1:
        return {"": table.loc[label]} if label in table.index else {}
    if label not in table.index.get_level_values(0):
        return {}
    part = table.xs(label, level=0)
    return {
        " / ".join(map(str, k)) if isinstance(k, tuple) else str(k): r for k, r in part.iterrows()
    }


def finding(what: str, labelled: dict[str, pd.Series], column: str) -> str:
    """One line of an experiment's findings: ``what``, then each row's ``column`` with its
    95% interval (the row's label in brackets), whether it exceeds noise, and the sizes:

        SDPO minus GRPO, held-out accuracy: -0.527 [-0.650, -0.400] (affine), -0.580
        [-0.693, -0.460] (bracket); each exceeds noise (the intervals exclude 0; 50
        problems, 300 samples, 3 seeds each).

    Where the verdicts differ each value carries its own. Rows without a value are left
    out; "" when none is left. Labels are data: escaped."""
    ests = {}
    for label, row in labelled.items():
        if pd.notna(row.get(column)):
            sizes = (int(row[k]) for k in SIZES)
            ests[label] = stats.Estimate(
                row[column], row[f"{column}_lo"], row[f"{column}_hi"], *sizes
            )
    if not ests:
        return ""
    mixed = len({e.excludes(0) for e in ests.values()}) > 1
    same = len({(e.problems, e.samples, e.seeds) for e in ests.values()}) == 1
    items = []
    for label, est in ests.items():
        said = [markdown_text(label)] if label else []
        said += [_verdict(est)] if mixed else []
        said += [] if same else [_sizes(est)]
        shown = f"{_signed(est.value)} [{_signed(est.low)}, {_signed(est.high)}]"
        items.append(shown + (f" ({', '.join(said)})" if said else ""))
    many, est = len(ests) > 1, next(iter(ests.values()))
    tail = (_sizes(est) + (" each" if many else "")) if same else ""
    if not mixed:  # one verdict for all
        why = ""
        if est.excludes(0):
            why = "the intervals exclude 0" if many else "the interval excludes 0"
        inside = "; ".join(x for x in (why, tail) if x)
        tail = ("each " if many else "") + _verdict(est) + (f" ({inside})" if inside else "")
    return f"{what}: {', '.join(items)}" + (f"; {tail}" if tail else "") + "."


def _verdict(est: stats.Estimate) -> str:
    return "exceeds noise" if est.excludes(0) else "within noise"


def _sizes(est: stats.Estimate) -> str:
    seeds = f"{est.seeds} seed" + ("s" if est.seeds != 1 else "")
    return f"{est.problems} problems, {est.samples} samples, {seeds}"


def _signed(v: float) -> str:
    return f"{v:+.3f}" if abs(v) < 10 else f"{v:+.1f}"
