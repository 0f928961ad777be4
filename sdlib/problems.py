"""Problem records and every way of getting them: reference parquet, SciKnowEval json,
our own jsonl, Hugging Face Hub ids, synthetic families; plus the task-coverage subsets.

All formats go through one function, ``parse_row``, steered by a ``Layout`` (where the
question, answer, id ... sit in a row). A row that cannot be parsed is logged with its id
and reason, counted in ``ProblemSet.skipped`` and left out; nothing is dropped silently.

Questions are stored bare: the prompt boilerplate that the reference files and Hub sets
bake into the user turn (``BOILERPLATE_SUFFIXES`` / ``BOILERPLATE_PREFIXES``) is removed, so
``sdlib.prompts`` can add the study's own instruction exactly once.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sdlib.prompts import STUDENT_SUFFIX

log = logging.getLogger(__name__)

# Removed from the end / start of a question (one pass, whitespace trimmed around them).
BOILERPLATE_SUFFIXES = (
    STUDENT_SUFFIX,  # every reference parquet file (evaluation and coverage)
    "Please reason step by step.",  # SciKnowEval chemistry prompts
    'Remember to put your answer on its own line after "Answer:".',  # DAPO-Math-17k on the Hub
)
BOILERPLATE_PREFIXES = (
    "Solve the following math problem step by step. The last line of your response should be"
    " of the form Answer: $Answer (without quotes) where $Answer is the answer to the problem.",
)

REPEAT_MARK = "#r"  # id of the k-th copy of a repeated problem: f"{id}#r{k}"


@dataclass(frozen=True)
class Problem:
    """One question with its reference answer. ``meta`` is left out of the hash (dicts are
    not hashable) but still compared, so equal problems always hash alike."""

    id: str
    question: str
    answer: str
    solution: str | None = None
    source: str = ""  # dataset name, or the synthetic family
    level: int | None = None  # synthetic difficulty, or a dataset's own level when numeric
    meta: dict[str, Any] = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "question": self.question,
            "answer": self.answer,
            "solution": self.solution,
            "source": self.source,
            "level": self.level,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Problem:
        """Inverse of ``to_dict``; raises ``RowError`` naming the bad field."""
        return parse_row(row, 0, "", JSONL)


def base_id(problem_id: str) -> str:
    """The id without its repeat mark: ``abc#r3`` -> ``abc``."""
    return problem_id.split(REPEAT_MARK, 1)[0]


@dataclass
class Skipped:
    row: int
    id: str | None
    reason: str


@dataclass
class ProblemSet:
    name: str
    problems: list[Problem]
    skipped: list[Skipped] = field(default_factory=list)
    duplicates: int = 0  # rows dropped by ``dedupe`` while loading (DAPO repeats its rows)

    def __len__(self) -> int:
        return len(self.problems)

    def __iter__(self) -> Iterator[Problem]:
        return iter(self.problems)

    def __getitem__(self, index: int) -> Problem:
        return self.problems[index]

    def summary(self) -> str:
        text = f"{self.name}: {len(self)} problems"
        if self.duplicates:
            text += f", {self.duplicates} duplicate rows removed"
        if self.skipped:
            first = self.skipped[0]
            text += f", {len(self.skipped)} rows skipped (first: row {first.row}: {first.reason})"
        return text


class RowError(ValueError):
    """A row that cannot become a Problem; the message names the field and what was expected."""


class DataUnavailableError(OSError):
    """A dataset that is neither on disk nor reachable on the Hub."""


# ---------------------------------------------------------------------------------------
# One row -> Problem


@dataclass(frozen=True)
class Layout:
    """Where each field sits in a row: dotted paths (``reward_model.ground_truth``).

    ``chat``: the question field is a list of chat messages (possibly JSON-encoded, as in
    some reference files); the last user turn is the question. ``choices``: for multiple
    choice, the letters an answer may be.
    """

    question: str
    answer: str
    id: str | None = None
    solution: str | None = None
    level: str | None = None
    source: str | None = None
    meta: tuple[str, ...] = ()  # copied into ``meta`` under their last path component
    meta_dict: str | None = None  # a dict merged into ``meta`` whole (our own jsonl)
    chat: bool = False
    choices: str = ""


REFERENCE = Layout(
    question="prompt",
    answer="reward_model.ground_truth",
    id="extra_info.index",
    solution="extra_info.solution",
    meta=("data_source", "extra_info.subject", "extra_info.level", "extra_info.url"),
    chat=True,
)
SCIKNOWEVAL = Layout(
    question="prompt", answer="answer", id="idx", meta=("kind", "system"), choices="ABCD"
)
JSONL = Layout(
    question="question",
    answer="answer",
    id="id",
    solution="solution",
    level="level",
    source="source",
    meta_dict="meta",
)


def parse_row(row: dict[str, Any], index: int, name: str, layout: Layout) -> Problem:
    """Build a Problem from one row of any supported format, or raise ``RowError``.

    Integer ids are prefixed with ``name`` (``aime24-2``); string ids (DAPO uuids, MATH-500
    paths) are kept as they are, so one problem has one id across files; a row without an
    id gets ``{name}-{index}``.
    """
    if not isinstance(row, dict):
        raise RowError(f"expected a mapping of fields, got {type(row).__name__}")
    raw = _get(row, layout.question)
    text = _user_turn(raw) if layout.chat else raw
    question = strip_boilerplate(text) if isinstance(text, str) else ""
    if not question:
        raise RowError(f"{layout.question!r} = {_short(raw)}; expected non-empty question text")
    answer = _answer_text(_get(row, layout.answer), layout)
    raw_id = _plain(_get(row, layout.id)) if layout.id else None
    if raw_id is None or raw_id == "":
        problem_id = f"{name}-{index}"
    else:
        problem_id = f"{name}-{raw_id}" if isinstance(raw_id, int) else str(raw_id)
    source = _optional_text(row, layout.source)
    meta = dict(_plain(_get(row, layout.meta_dict)) or {}) if layout.meta_dict else {}
    for path in layout.meta:
        value = _plain(_get(row, path))
        if value is not None:
            meta[path.rsplit(".", 1)[-1]] = value
    return Problem(
        id=problem_id,
        question=question,
        answer=answer,
        solution=_optional_text(row, layout.solution),
        source=name if source is None else source,
        level=_level(row, layout.level),
        meta=meta,
    )


def strip_boilerplate(text: str) -> str:
    """The bare question: known instruction prefixes/suffixes removed, whitespace trimmed."""
    text = text.strip()
    for prefix in BOILERPLATE_PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix) :].lstrip()
    for suffix in BOILERPLATE_SUFFIXES:
        if text.endswith(suffix):
            text = text[: -len(suffix)].rstrip()
    return text


def _get(row: dict[str, Any], path: str) -> Any:
    value: Any = row
    for key in path.split("."):
        value = _decode_json(value)
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return None if _missing(value) else value


def _missing(value: Any) -> bool:
    # pandas and pyarrow spell an absent cell as None or NaN
    return value is None or (isinstance(value, float) and math.isnan(value))


def _decode_json(value: Any) -> Any:
    # Some reference files store nested columns as JSON strings, others as structs.
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _user_turn(messages: Any) -> str | None:
    messages = _plain(_decode_json(messages))
    if not isinstance(messages, list):
        return None
    users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return users[-1] if users else None


def _answer_text(value: Any, layout: Layout) -> str:
    value = _plain(value)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise RowError(f"{layout.answer!r} = {_short(value)}; expected an answer string or number")
    if isinstance(value, float):
        value = str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip()
    if not text:
        raise RowError(f"{layout.answer!r} is empty; expected a reference answer")
    if layout.choices and text not in tuple(layout.choices):
        raise RowError(f"{layout.answer!r} = {text!r}; expected one of {list(layout.choices)}")
    return text


def _optional_text(row: dict[str, Any], path: str | None) -> str | None:
    value = _get(row, path) if path else None
    if value is not None and not isinstance(value, str):
        raise RowError(f"{path!r} = {_short(value)}; expected text")
    return value


def _level(row: dict[str, Any], path: str | None) -> int | None:
    value = _plain(_get(row, path)) if path else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RowError(f"{path!r} = {_short(value)}; expected an integer level")
    return value


def _plain(value: Any) -> Any:
    """numpy arrays and scalars (from pandas) to lists and Python numbers, recursively."""
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------------------------
# Rows -> ProblemSet


def parse_rows(rows: Iterable[dict[str, Any] | RowError], name: str, layout: Layout) -> ProblemSet:
    """Parse every row; report and skip the bad ones; mark repeated ids ``#r{k}``.

    A ``RowError`` in ``rows`` stands for a row the reader could not decode (bad JSON line).
    """
    problems: list[Problem] = []
    skipped: list[Skipped] = []
    for index, row in enumerate(rows):
        try:
            if isinstance(row, RowError):
                raise row
            problems.append(parse_row(row, index, name, layout))
        except RowError as err:
            raw_id = _get(row, layout.id) if layout.id and isinstance(row, dict) else None
            skipped.append(Skipped(index, None if raw_id is None else str(raw_id), str(err)))
            log.warning("%s: skipped row %d (id %s): %s", name, index, raw_id, err)
    if skipped:
        first = skipped[0]
        warnings.warn(
            f"{name}: skipped {len(skipped)} malformed rows (first: row {first.row}, "
            f"id {first.id}: {first.reason}); see ProblemSet.skipped",
            stacklevel=3,
        )
    return ProblemSet(name, _mark_repeats(problems), skipped)


def _mark_repeats(problems: list[Problem]) -> list[Problem]:
    # seen_1x64 / seen_8x8 repeat the same index; every copy gets its own id.
    counts = Counter(p.id for p in problems)
    seen: Counter[str] = Counter()
    out = []
    for p in problems:
        if counts[p.id] > 1:
            k = seen[p.id]
            seen[p.id] += 1
            p = replace(p, id=f"{p.id}{REPEAT_MARK}{k}")
        out.append(p)
    return out


def dedupe(problems: Iterable[Problem]) -> list[Problem]:
    """Keep the first problem of each question text (compared ignoring case and spacing)."""
    seen: set[str] = set()
    out = []
    for p in problems:
        key = " ".join(p.question.lower().split())
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


# ---------------------------------------------------------------------------------------
# Files


def load_reference_parquet(path: str | Path, name: str | None = None) -> ProblemSet:
    """A parquet file in the reference (verl) layout: ``prompt`` chat list,
    ``reward_model.ground_truth``, ``extra_info.index``; nested columns as structs or JSON."""
    import pyarrow.parquet as pq

    path = Path(path)
    rows = pq.read_table(path).to_pylist()
    return parse_rows(rows, name or path.stem, REFERENCE)


def load_sciknoweval(path: str | Path, name: str | None = None) -> ProblemSet:
    """SciKnowEval multiple choice (one JSON object per line, or one JSON array).

    The question keeps its lettered options; the answer is the letter; the set's own
    system instruction is kept in ``meta["system"]``. Ids are ``{folder}-{idx}``
    (``chemistry-1522``): train and test share one ``idx`` numbering without overlap.
    """
    path = Path(path)
    loaded = parse_rows(read_json_records(path), path.parent.name, SCIKNOWEVAL)
    loaded.name = name or f"{path.parent.name}-{path.stem}"
    return loaded


def load_jsonl(path: str | Path, name: str | None = None) -> ProblemSet:
    """Our own jsonl (``Problem.to_dict`` per line); ``id`` defaults to ``{name}-{line}``."""
    path = Path(path)
    return parse_rows(read_json_records(path), name or path.stem, JSONL)


def save_jsonl(problems: Iterable[Problem], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
    return path


def read_json_records(path: Path) -> list[dict[str, Any] | RowError]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            msg = f"{path}: not a valid JSON array ({err}); expected JSON or JSON lines"
            raise ValueError(msg) from err
    records: list[dict[str, Any] | RowError] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            records.append(RowError(f"line {number} is not valid JSON ({err.msg})"))
    return records
