"""Problem records and every way of getting them: reference parquet, SciKnowEval json,
our own jsonl, Hugging Face Hub ids, synthetic families; plus the task-coverage subsets.

All formats go through one function, ``parse_row``, steered by a ``Layout`` (where the
question, answer, id ... sit in a row). Bad data never throws good data away: a row that
cannot be used (undecodable line, wrong types, a field over its size bound, an id already
taken by a different question) is logged with its file, 1-based row/line number, id and
reason, counted in ``ProblemSet.skipped`` and left out, and the other rows go on. A file
with no usable row is a ``ValueError`` naming the file and the accepted layouts.

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

# Size bounds, checked before any per-character work. Far above the reference data (longest
# question 2,222 characters, answer 53, solution 3,356, meta 407) and above the study's
# lengths (prompts <= 2,048 tokens, responses <= 20,480), yet small enough that one hostile
# row cannot stall tokenizing or grading or fill memory. A row over a bound is skipped.
MAX_QUESTION_CHARS = 100_000
MAX_ANSWER_CHARS = 10_000
MAX_SOLUTION_CHARS = 200_000  # a solution may be a full model response (context hints)
MAX_ID_CHARS = 1_000  # ids, and other short text fields (source)
MAX_META_CHARS = 100_000  # ``meta`` written as JSON
MAX_CELL_CHARS = 1_000_000  # a JSON-encoded cell (chat prompt, extra_info), before decoding
MAX_LINE_BYTES = 8 * 2**20  # one JSON line, before decoding (8 MiB)
MAX_LOGGED_SKIPS = 20  # skipped rows logged one by one per file; all are in ``skipped``

ACCEPTED_LAYOUTS = (
    "accepted layouts: .parquet in the reference layout (columns prompt = chat list with a "
    "user turn, reward_model.ground_truth, optional extra_info.index); .jsonl with one JSON "
    "object per line holding question and answer (optional id, solution, source, level, "
    "meta = object); .json SciKnowEval rows holding prompt and answer A-D (optional idx), "
    "one object per line or one JSON array"
)


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
    """A row left out: its 1-based number in the file (``unit``: row, or line of a JSON
    lines file), its id when it has one, why, and the reason's short kind for counting."""

    row: int
    id: str | None
    reason: str
    kind: str = "bad field"
    unit: str = "row"

    def describe(self) -> str:
        where = f"{self.unit} {self.row}" + ("" if self.id is None else f" (id {self.id!r})")
        return f"{where}: {self.reason}"


def skip_counts(skipped: Iterable[Skipped]) -> str:
    """``2 no answer, 1 not UTF-8``: skipped rows counted by kind, most frequent first."""
    counts = Counter(s.kind for s in skipped)
    return ", ".join(f"{n} {kind}" for kind, n in counts.most_common())


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
            text += (
                f", {len(self.skipped)} rows skipped ({skip_counts(self.skipped)}; "
                f"first: {self.skipped[0].describe()})"
            )
        return text


class RowError(ValueError):
    """A row that cannot become a Problem; the message names the field and what was expected,
    ``kind`` is the short reason it is counted under (``no answer``, ``too large`` ...)."""

    def __init__(self, message: str, kind: str = "bad field", row: Any = None):
        super().__init__(message)
        self.kind = kind
        self.row = row  # what could be read of an undecodable line, to report its id


class DataUnavailableError(OSError):
    """A dataset that is neither on disk nor reachable on the Hub."""


# A blank line of a JSON lines file: not a row, but it keeps the line numbers right.
BLANK: Any = object()


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
# SciKnowEval's own instruction (its prompts end with it), which sdlib's prompts restore in
# place of the study's boxed-answer one: the set answers in <answer> tags (its system message)
SCIKNOWEVAL_INSTRUCTION = "Please reason step by step."
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
    id gets ``{name}-{index}``. Every text field must be valid UTF-8 within its size bound.
    """
    if not isinstance(row, dict):
        raise RowError(f"expected a mapping of fields, got {type(row).__name__}", "not a mapping")
    question = _question_text(row, layout)
    answer = _answer_text(_get(row, layout.answer), layout)
    source = _optional_text(row, layout.source, MAX_ID_CHARS)
    return Problem(
        id=_row_id(row, index, name, layout),
        question=question,
        answer=answer,
        solution=_optional_text(row, layout.solution, MAX_SOLUTION_CHARS),
        source=name if source is None else source,
        level=_level(row, layout.level),
        meta=_meta(row, layout),
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
        value = _decode_json(value, path)
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return None if _missing(value) else value


def _missing(value: Any) -> bool:
    # pandas and pyarrow spell an absent cell as None or NaN
    return value is None or (isinstance(value, float) and math.isnan(value))


def _decode_json(value: Any, path: str) -> Any:
    # Some reference files store nested columns as JSON strings, others as structs.
    if not isinstance(value, str):
        return value
    if len(value) > MAX_CELL_CHARS:  # bounded before json.loads, the only costly step
        raise _too_large(path, len(value), MAX_CELL_CHARS)
    if value.lstrip()[:1] in ("{", "["):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):  # JSONDecodeError, too many digits, too deep
            return value
    return value


def _too_large(path: str, size: int, limit: int) -> RowError:
    return RowError(f"{path!r} has {size:,} characters; the limit is {limit:,}", "too large")


def check_text(text: str, path: str, limit: int) -> str:
    """``text`` if within ``limit`` characters and valid UTF-8, else ``RowError``."""
    if len(text) > limit:
        raise _too_large(path, len(text), limit)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # undecodable bytes kept as surrogates, or a \ud800
        msg = f"{path!r} is not valid UTF-8 text (character {err.start + 1})"
        raise RowError(msg, "not UTF-8") from None
    return text


def _question_text(row: dict[str, Any], layout: Layout) -> str:
    raw = _get(row, layout.question)
    text = _user_turn(raw, layout.question) if layout.chat else raw
    if isinstance(text, str):
        text = strip_boilerplate(check_text(text, layout.question, MAX_QUESTION_CHARS))
    if not isinstance(text, str) or not text:
        shape = "a chat list with a user turn" if layout.chat else "non-empty question text"
        raise RowError(f"{layout.question!r} = {short_repr(raw)}; expected {shape}", "no question")
    return text


def _user_turn(messages: Any, path: str) -> str | None:
    messages = _plain(_decode_json(messages, path))
    if not isinstance(messages, list):
        return None
    users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return users[-1] if users else None


def _answer_text(value: Any, layout: Layout) -> str:
    value = _plain(value)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        msg = f"{layout.answer!r} = {short_repr(value)}; expected an answer string or number"
        raise RowError(msg, "no answer")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RowError(f"{layout.answer!r} = {value!r}; expected a finite number", "no answer")
        value = str(int(value)) if value.is_integer() else repr(value)
    text = check_text(str(value), layout.answer, MAX_ANSWER_CHARS).strip()
    if not text:
        raise RowError(f"{layout.answer!r} is empty; expected a reference answer", "no answer")
    if layout.choices and text not in tuple(layout.choices):
        msg = f"{layout.answer!r} = {short_repr(text)}; expected one of {list(layout.choices)}"
        raise RowError(msg, "no answer")
    return text


def _row_id(row: dict[str, Any], index: int, name: str, layout: Layout) -> str:
    raw = _plain(_get(row, layout.id)) if layout.id else None
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)  # pandas reads an integer column with gaps as float
    if raw is None or raw == "":
        return f"{name}-{index}"
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        msg = f"{layout.id!r} = {short_repr(raw)}; expected a string or integer id"
        raise RowError(msg, "bad id")
    text = f"{name}-{raw}" if isinstance(raw, int) else raw
    return check_text(text, str(layout.id), MAX_ID_CHARS)


def _optional_text(row: dict[str, Any], path: str | None, limit: int) -> str | None:
    value = _get(row, path) if path else None
    if value is None:
        return None
    if not isinstance(value, str):
        raise RowError(f"{path!r} = {short_repr(value)}; expected text")
    return check_text(value, str(path), limit)


def _level(row: dict[str, Any], path: str | None) -> int | None:
    value = _plain(_get(row, path)) if path else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RowError(f"{path!r} = {short_repr(value)}; expected an integer level")
    return value


def _meta(row: dict[str, Any], layout: Layout) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if layout.meta_dict:
        whole = _plain(_get(row, layout.meta_dict))
        if whole is not None and not isinstance(whole, dict):
            msg = f"{layout.meta_dict!r} = {short_repr(whole)}; expected a mapping (JSON object)"
            raise RowError(msg, "bad meta")
        meta.update(whole or {})
    for path in layout.meta:
        value = _plain(_get(row, path))
        if value is not None:
            meta[path.rsplit(".", 1)[-1]] = value
    if meta:
        _check_meta(meta, layout.meta_dict or "meta")
    return meta


_META_ENCODER = json.JSONEncoder(ensure_ascii=False)  # made once: a row's meta is small


def _check_meta(meta: dict[str, Any], path: str) -> None:
    # meta is written back with save_jsonl: it must be JSON (no bytes, dates) and bounded.
    try:
        text = _META_ENCODER.encode(meta)
    except (TypeError, ValueError) as err:
        raise RowError(f"{path!r} cannot be written as JSON ({err})", "bad meta") from None
    check_text(text, path, MAX_META_CHARS)


def _plain(value: Any) -> Any:
    """numpy arrays and scalars (from pandas) to lists and Python numbers, recursively."""
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def short_repr(value: Any) -> str:
    """At most ~80 characters of ``repr(value)``, for messages."""
    # repr of a prefix: a 50 MB cell must not be copied whole into a message
    if isinstance(value, str | bytes) and len(value) > 80:
        return repr(value[:60]) + f"... ({len(value):,} characters)"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------------------------
# Rows -> ProblemSet


def parse_rows(
    rows: Iterable[Any],
    name: str,
    layout: Layout,
    *,
    origin: str | None = None,
    unit: str = "row",
    expected: str = ACCEPTED_LAYOUTS,
) -> ProblemSet:
    """Parse every row; report and skip the bad ones; mark true repeats ``#r{k}``.

    ``rows`` may hold ``RowError`` (a line the reader could not decode) and ``BLANK`` (a
    blank line: no row, but counted so numbers stay line numbers). ``origin`` names the
    data in reports (the file, or the Hub id; default ``name``), ``unit`` says what the
    1-based numbers count (``line`` for JSON lines). A second row with a taken id is a true
    repeat when its question and answer are the same (seen_1x64 holds one problem 64 times)
    and is skipped otherwise: keeping the first is the only choice that leaves every id
    meaning one problem. No usable row at all is a ``ValueError`` that ends in ``expected``.
    """
    origin = origin or name
    kept: list[Problem] = []
    numbers: list[int] = []  # kept[i] came from row numbers[i] (parallel lists: no tuples)
    skipped: list[Skipped] = []
    first: dict[str, int] = {}  # id -> position in kept of its first row
    index = 0  # position among non-blank rows: the default id, as before line numbers
    for number, row in enumerate(rows, start=1):
        if row is BLANK:
            continue
        try:
            if isinstance(row, RowError):  # a line the reader could not decode
                raise row
            problem = parse_row(row, index, name, layout)
            at = first.setdefault(problem.id, len(kept))
            if at < len(kept):
                _check_repeat(problem, kept[at], f"{unit} {numbers[at]}")
            kept.append(problem)
            numbers.append(number)
        except (RowError, RecursionError) as err:
            skipped.append(_skipped(row, number, layout, err, unit))
        index += 1
    if len(first) < len(kept):  # true repeats: give every copy its own id
        kept = _mark_repeats(kept, numbers, skipped, unit)
    skipped.sort(key=lambda s: s.row)
    report_skipped(origin, skipped, index)
    if not kept:
        raise ValueError(no_usable_rows(origin, skipped, expected))
    return ProblemSet(name, kept, skipped)


def _check_repeat(problem: Problem, earlier: Problem, where: str) -> None:
    if earlier.question == problem.question and earlier.answer == problem.answer:
        return  # a true repeat
    differs = "question" if earlier.question != problem.question else "answer"
    raise RowError(
        f"id {problem.id!r} is already used by {where} with a different {differs}; "
        "the first is kept",
        "conflicting id",
    )


def _skipped(row: Any, number: int, layout: Layout, err: Exception, unit: str) -> Skipped:
    if isinstance(row, RowError):
        row = row.row
    if isinstance(err, RecursionError):  # structures nested thousands deep
        return Skipped(number, _report_id(row, layout), "nested too deeply", "too deep", unit)
    return Skipped(number, _report_id(row, layout), str(err), getattr(err, "kind", ""), unit)


def _report_id(row: Any, layout: Layout) -> str | None:
    """The row's own id as the file spells it, shortened; None when it has none."""
    if not (layout.id and isinstance(row, dict)):
        return None
    try:
        raw = _plain(_get(row, layout.id))
    except (RowError, RecursionError):
        return None
    if raw is None or raw == "":
        return None
    text = raw if isinstance(raw, str) else short_repr(raw)
    text = text if len(text) <= 80 else text[:77] + "..."
    # undecodable bytes (kept as surrogates) as \udcff, so the report itself is valid text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _mark_repeats(
    kept: list[Problem], numbers: list[int], skipped: list[Skipped], unit: str
) -> list[Problem]:
    # seen_1x64 / seen_8x8 repeat the same index; every copy gets its own id.
    counts = Counter(p.id for p in kept)
    copies: Counter[str] = Counter()
    taken: set[str] = set()
    out = []
    for number, p in zip(numbers, kept, strict=True):
        if counts[p.id] > 1:
            copies[p.id] += 1
            p = replace(p, id=f"{p.id}{REPEAT_MARK}{copies[p.id] - 1}")
        if p.id in taken:  # a file id such as "a#r1" next to two repeats of "a"
            reason = f"id {p.id!r} is also the repeat mark of another row; the first is kept"
            skipped.append(Skipped(number, p.id, reason, "conflicting id", unit))
            continue
        taken.add(p.id)
        out.append(p)
    return out


def report_skipped(
    origin: str, skipped: list[Skipped], rows: int, see: str = "ProblemSet.skipped"
) -> None:
    """One log line per skipped row (the first ``MAX_LOGGED_SKIPS``: a file of a million bad
    rows must not print a million lines), then one warning with the counts by kind."""
    if not skipped:
        return
    for s in skipped[:MAX_LOGGED_SKIPS]:
        log.warning("%s: skipped %s", origin, s.describe())
    more = len(skipped) - MAX_LOGGED_SKIPS
    tail = f"; {more} more not logged one by one" if more > 0 else ""
    warnings.warn(
        f"{origin}: skipped {len(skipped)} malformed rows of {rows} ({skip_counts(skipped)}; "
        f"first: {skipped[0].describe()}{tail}); see {see}",
        stacklevel=3,
    )


def no_usable_rows(origin: str, skipped: list[Skipped], expected: str) -> str:
    """The one-line error for data without a usable row."""
    if not skipped:
        return f"{origin}: no rows; {expected}"
    return (
        f"{origin}: no usable row, all {len(skipped)} skipped ({skip_counts(skipped)}; "
        f"first: {skipped[0].describe()}); {expected}"
    )


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
    ``reward_model.ground_truth``, ``extra_info.index``; nested columns as structs or JSON.

    Read in batches, so memory follows one batch, not the whole table; a file that is not
    parquet, or lacks the layout's columns, is a ``ValueError`` naming it."""
    path = Path(path)
    return parse_rows(_parquet_rows(path), name or path.stem, REFERENCE, origin=str(path))


def _parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise ValueError(
            f"{path}: not a readable parquet file ({err}); {ACCEPTED_LAYOUTS}"
        ) from err
    columns = file.schema_arrow.names
    missing = [c for c in ("prompt", "reward_model") if c not in columns]
    if missing:
        raise ValueError(
            f"{path}: no column {' or '.join(missing)} (columns: {', '.join(columns)}), so not "
            f"the reference layout; {ACCEPTED_LAYOUTS}"
        )
    return _parquet_batches(file, path)


def _parquet_batches(file: Any, path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow as pa

    try:
        for batch in file.iter_batches(batch_size=4096):
            yield from batch.to_pylist()
    except (pa.ArrowException, OSError) as err:  # a damaged page past the footer
        raise ValueError(f"{path}: damaged parquet data ({err})") from err


def load_sciknoweval(path: str | Path, name: str | None = None) -> ProblemSet:
    """SciKnowEval multiple choice (one JSON object per line, or one JSON array).

    The question keeps its lettered options; the answer is the letter; the set's own
    system instruction is kept in ``meta["system"]``. Ids are ``{folder}-{idx}``
    (``chemistry-1522``): train and test share one ``idx`` numbering without overlap.
    """
    path = Path(path)
    array = _is_json_array(path)
    rows = read_json_records(path, array)
    unit = "row" if array else "line"
    loaded = parse_rows(rows, path.parent.name, SCIKNOWEVAL, origin=str(path), unit=unit)
    loaded.name = name or f"{path.parent.name}-{path.stem}"
    for p in loaded.problems:
        p.meta["instruction"] = SCIKNOWEVAL_INSTRUCTION
    return loaded


def load_jsonl(path: str | Path, name: str | None = None) -> ProblemSet:
    """Our own jsonl (``Problem.to_dict`` per line); ``id`` defaults to ``{name}-{index}``
    (0-based among non-blank lines)."""
    path = Path(path)
    rows = read_json_records(path, array=False)
    return parse_rows(rows, name or path.stem, JSONL, origin=str(path), unit="line")


def save_jsonl(problems: Iterable[Problem], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
    return path


UTF8_BOM = b"\xef\xbb\xbf"


def read_json_records(path: str | Path, array: bool | None = None) -> list[Any]:
    """The rows of a JSON lines file, or of one JSON array (``array``; ``None``: when the
    file's first non-blank character is ``[``).

    JSON lines are decoded one line at a time, so a bad line costs only itself: a line that
    is not UTF-8, not JSON, or over ``MAX_LINE_BYTES`` becomes a ``RowError`` (never held in
    memory whole), a blank line ``BLANK``; list position + 1 is the line number. An array is
    one document: a syntax error in it is a ``ValueError`` naming the file and position;
    bytes that are not UTF-8 are kept as surrogates, so ``parse_row`` skips just the rows
    that hold them.
    """
    path = Path(path)
    if array is None:
        array = _is_json_array(path)
    if array:
        return _json_array(path)
    with path.open("rb") as f:
        return [_decode_line(line, number) for number, line in enumerate(_bounded_lines(f), 1)]


def _is_json_array(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(4096).removeprefix(UTF8_BOM).lstrip()
    return head[:1] == b"["


def _json_array(path: Path) -> list[Any]:
    text = path.read_bytes().removeprefix(UTF8_BOM).decode("utf-8", errors="surrogateescape")
    shape = "expected one JSON array of objects, or one JSON object per line"
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        where = f"{err.msg} at line {err.lineno} column {err.colno}"
        raise ValueError(f"{path}: not a valid JSON array ({where}); {shape}") from None
    except (ValueError, RecursionError) as err:  # a number of 4,300+ digits; nesting too deep
        raise ValueError(f"{path}: cannot decode ({str(err)[:100]}); {shape}") from None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: a JSON {type(rows).__name__}, not an array; {shape}")
    return rows


def _bounded_lines(f: Any, limit: int = MAX_LINE_BYTES) -> Iterator[bytes | int]:
    """The lines of a binary file with at most ``limit`` + 1 bytes in memory at once. A line
    over ``limit`` is read past in chunks and yielded as its length in bytes instead."""
    while line := f.readline(limit + 1):
        if line.endswith(b"\n") or len(line) <= limit:
            yield line
            continue
        size = len(line)
        while not line.endswith(b"\n") and (line := f.readline(2**20)):
            size += len(line)
        yield size


def _decode_line(line: bytes | int, number: int) -> Any:
    if isinstance(line, int):
        return RowError(f"line of {line:,} bytes; the limit is {MAX_LINE_BYTES:,}", "too large")
    if number == 1:
        line = line.removeprefix(UTF8_BOM)
    if not line.strip():
        return BLANK
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        msg = f"not valid UTF-8 (byte 0x{line[err.start]:02x} at byte {err.start + 1})"
        # the line is skipped either way; decoding it leniently only finds its id to report
        lenient = _decode_json_line(line.decode("utf-8", "surrogateescape"))
        return RowError(msg, "not UTF-8", None if isinstance(lenient, RowError) else lenient)
    return _decode_json_line(text)


def _decode_json_line(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        return RowError(f"not valid JSON ({err.msg} at column {err.colno})", "not JSON")
    except (ValueError, RecursionError) as err:  # a number of 4,300+ digits; nesting too deep
        return RowError(f"not valid JSON ({str(err)[:100]})", "not JSON")
