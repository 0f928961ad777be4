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
import random
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sdlib.prompts import STUDENT_SUFFIX
from sdlib.settings import data_root

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
    loaded = parse_rows(_read_json_records(path), path.parent.name, SCIKNOWEVAL)
    loaded.name = name or f"{path.parent.name}-{path.stem}"
    return loaded


def load_jsonl(path: str | Path, name: str | None = None) -> ProblemSet:
    """Our own jsonl (``Problem.to_dict`` per line); ``id`` defaults to ``{name}-{line}``."""
    path = Path(path)
    return parse_rows(_read_json_records(path), name or path.stem, JSONL)


def save_jsonl(problems: Iterable[Problem], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
    return path


def _read_json_records(path: Path) -> list[dict[str, Any] | RowError]:
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


# ---------------------------------------------------------------------------------------
# Hugging Face Hub


@dataclass(frozen=True)
class HubSource:
    hub_id: str
    split: str
    layout: Layout
    dedupe: bool = False


# Short name -> Hub dataset. Field names are those of each dataset card.
HUB_DATASETS: dict[str, HubSource] = {
    # ~1.79M rows holding ~17k problems (each repeated); same layout as the reference files.
    "dapo": HubSource("BytedTsinghua-SIA/DAPO-Math-17k", "train", REFERENCE, dedupe=True),
    "math500": HubSource(
        "HuggingFaceH4/MATH-500",
        "test",
        Layout("problem", "answer", id="unique_id", solution="solution", meta=("subject",)),
    ),
    "aime24": HubSource(
        "HuggingFaceH4/aime_2024",
        "train",
        Layout("problem", "answer", id="id", solution="solution", meta=("url",)),
    ),
    "aime25": HubSource("math-ai/aime25", "test", Layout("problem", "answer", id="id")),
    "amc23": HubSource("math-ai/amc23", "test", Layout("question", "answer", id="id")),
}


def load_hub(name_or_id: str, split: str | None = None) -> ProblemSet:
    """A registered short name (``HUB_DATASETS``) or any Hub id ``owner/name``.

    An unregistered id is read with the reference layout when it has ``prompt`` and
    ``reward_model`` columns, else from ``problem``/``question`` and ``answer`` columns.
    """
    import datasets

    source = HUB_DATASETS.get(name_or_id)
    hub_id = source.hub_id if source else name_or_id
    split = split or (source.split if source else "train")
    try:
        table = datasets.load_dataset(hub_id, split=split)
    except OSError as err:  # ConnectionError, DatasetNotFoundError, missing cache entries
        raise DataUnavailableError(_unavailable_message(hub_id, split, err)) from err
    layout = source.layout if source else _guess_layout(table.column_names, hub_id)
    name = name_or_id if source else hub_id.rsplit("/", 1)[-1]
    loaded = parse_rows(_iter_rows(table), name, layout)
    if source and source.dedupe:
        kept = dedupe(loaded.problems)
        loaded.duplicates = len(loaded.problems) - len(kept)
        loaded.problems = kept
    return loaded


def _unavailable_message(hub_id: str, split: str, err: Exception) -> str:
    return (
        f"could not load Hub dataset {hub_id!r} (split {split!r}): {err}. It is not in the "
        "local Hugging Face cache and the Hub could not be reached. Fetch it once with "
        f"network access: python -c \"import datasets; datasets.load_dataset('{hub_id}', "
        f"split='{split}')\"; or pass a local .parquet/.jsonl path, or set SDLIB_DATA_ROOT "
        "to a folder holding the reference files."
    )


def _guess_layout(columns: list[str], hub_id: str) -> Layout:
    if {"prompt", "reward_model"} <= set(columns):
        return REFERENCE
    question = next((c for c in ("problem", "question", "Problem") if c in columns), None)
    answer = next((c for c in ("answer", "Answer") if c in columns), None)
    if question is None or answer is None:
        raise ValueError(
            f"Hub dataset {hub_id!r} has columns {columns}; expected prompt + reward_model "
            "(reference layout) or problem/question + answer"
        )
    solution = next((c for c in ("solution", "Solution") if c in columns), None)
    row_id = next((c for c in ("id", "unique_id", "ID") if c in columns), None)
    return Layout(question, answer, id=row_id, solution=solution)


def _iter_rows(table: Any) -> Iterator[dict[str, Any]]:
    # Batched reads: row-by-row indexing of a 1.8M-row Arrow table is far slower.
    for batch in table.iter(batch_size=4096):
        columns = list(batch)
        for i in range(len(batch[columns[0]])):
            yield {c: batch[c][i] for c in columns}


# ---------------------------------------------------------------------------------------
# One entry point

# Short name -> file under data_root(). Evaluation sets fall back to the Hub when missing.
LOCAL_SETS = {
    **{n: f"math/evaluation/{n}.parquet" for n in ("aime24", "aime25", "amc23", "math500")},
    **{f"seen_{n}": f"math/coverage/seen_{n}.parquet" for n in ("1x64", "8x8", "64", "128", "512")},
    "chemistry": "sciknoweval/chemistry/test.json",
    "chemistry_train": "sciknoweval/chemistry/train.json",
}
_FILE_LOADERS = {
    ".parquet": load_reference_parquet,
    ".jsonl": load_jsonl,
    ".json": load_sciknoweval,
}


def load_problems(spec: str | Path) -> ProblemSet:
    """Problems from one spec string (the CLI's and the configs' only way in):

    - a file: ``.parquet`` (reference layout), ``.jsonl`` (ours), ``.json`` (SciKnowEval);
    - a short name in ``LOCAL_SETS``, read under ``data_root()`` (``aime24``, ``seen_64``,
      ``chemistry``);
    - a short name in ``HUB_DATASETS`` (``dapo``) or a Hub id ``owner/name``;
    - ``synthetic:<family|mix|a+b>[:<level|1-3>][:<count>][:<seed>]``.
    """
    text = str(spec)
    if text.startswith("synthetic:"):
        return _load_synthetic(text)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix not in _FILE_LOADERS:
            raise ValueError(f"{spec!r}: unknown file type {path.suffix!r}; {_ACCEPTED}")
        return _FILE_LOADERS[path.suffix](path)
    if text in LOCAL_SETS:
        local = data_root() / LOCAL_SETS[text]
        if local.is_file():
            return _FILE_LOADERS[local.suffix](local, name=text)
        if text not in HUB_DATASETS:
            raise FileNotFoundError(
                f"{spec!r}: expected {local}; set SDLIB_DATA_ROOT to the shared data folder"
            )
    if path.suffix in _FILE_LOADERS:
        raise FileNotFoundError(f"{spec!r}: no such file")
    if text in HUB_DATASETS or "/" in text:
        return load_hub(text)
    raise ValueError(
        f"cannot load problems from {spec!r}: not a file and not a known name; {_ACCEPTED}"
    )


_ACCEPTED = (
    "accepted: a .parquet/.jsonl/.json path, a local set "
    f"({', '.join(LOCAL_SETS)}), a Hub set ({', '.join(HUB_DATASETS)}) or Hub id owner/name, "
    "or synthetic:<family|mix>[:<level>][:<count>][:<seed>]"
)


def _load_synthetic(spec: str) -> ProblemSet:
    from sdlib import synthetic

    parts = spec.split(":")[1:]
    if not 1 <= len(parts) <= 4 or not all(parts[1:]):
        raise ValueError(f"{spec!r}: expected synthetic:<family|mix>[:<level>][:<count>][:<seed>]")
    families = None if parts[0] in ("mix", "all") else parts[0].split("+")
    try:
        levels = _int_range(parts[1]) if len(parts) > 1 else [1]
        count = int(parts[2]) if len(parts) > 2 else 64
        seed = int(parts[3]) if len(parts) > 3 else 0
    except ValueError as err:
        raise ValueError(f"{spec!r}: level, count and seed must be integers ({err})") from err
    problems = synthetic.generate_mix(families, levels, count, seed)
    return ProblemSet(spec, problems)


def _int_range(text: str) -> list[int]:
    low, _, high = text.partition("-")
    return list(range(int(low), int(high or low) + 1))


# ---------------------------------------------------------------------------------------
# Task-coverage subsets

# The paper's |D| settings: name -> (distinct problems, copies of each).
COVERAGE_VARIANTS = {
    "1x64": (1, 64),
    "8x8": (8, 8),
    "64": (64, 1),
    "128": (128, 1),
    "512": (512, 1),
}


def coverage_subset(
    problems: Iterable[Problem], size: int, repeat: int = 1, seed: int = 0
) -> list[Problem]:
    """``size`` distinct problems, each repeated ``repeat`` times, nested across sizes.

    Problems are deduplicated, sorted by id (so the loader's row order does not matter)
    and shuffled once by ``seed``; a subset is a prefix of that order, hence for one seed
    the 8 problems of 8x8 lie inside the 64, the 64 inside the 128, and so on. Copies are
    laid out round-robin (a..h, a..h, ...) with ids ``{id}#r{k}``, as in ``seen_8x8``.
    """
    distinct = sorted(dedupe(problems), key=lambda p: p.id)
    if not 1 <= size <= len(distinct) or repeat < 1:
        raise ValueError(
            f"coverage_subset(size={size}, repeat={repeat}): expected 1 <= size <= "
            f"{len(distinct)} distinct problems and repeat >= 1"
        )
    random.Random(seed).shuffle(distinct)
    chosen = distinct[:size]
    if repeat == 1:
        return chosen
    return [
        replace(p, id=f"{base_id(p.id)}{REPEAT_MARK}{k}") for k in range(repeat) for p in chosen
    ]


def coverage_suite(problems: Iterable[Problem], seed: int = 0) -> dict[str, list[Problem]]:
    """Every variant of ``COVERAGE_VARIANTS`` from one pool and seed (hence nested)."""
    pool = list(problems)
    return {name: coverage_subset(pool, n, r, seed) for name, (n, r) in COVERAGE_VARIANTS.items()}


def coverage_family_subset(
    problems: Iterable[Problem], n_families: int, size: int, seed: int = 0, key=None
) -> list[Problem]:
    """``size`` problems spread evenly over ``n_families`` problem types (|D| = types).

    ``key`` gives a problem's type (default: ``source``, the synthetic family). Families
    are shuffled once by ``seed`` and the first ``n_families`` taken, so smaller |D| are
    nested in larger ones; problems are then drawn round-robin across those families.
    """
    key = key or (lambda p: p.source)
    groups: dict[str, list[Problem]] = {}
    for p in dedupe(problems):
        groups.setdefault(key(p), []).append(p)
    names = sorted(groups)
    if not 1 <= n_families <= len(names):
        raise ValueError(f"n_families={n_families}: expected 1..{len(names)} (types: {names})")
    random.Random(seed).shuffle(names)
    queues = []
    for name in names[:n_families]:
        members = sorted(groups[name], key=lambda p: p.id)
        # str seeds are hashed with sha512 by random, so this is stable across processes
        random.Random(f"{seed}-{name}").shuffle(members)
        queues.append(members)
    chosen = [p for row in _round_robin(queues) for p in row][:size]
    if len(chosen) < size:
        raise ValueError(f"size={size}: only {len(chosen)} problems in {names[:n_families]}")
    return chosen


def _round_robin(queues: list[list[Problem]]) -> Iterator[list[Problem]]:
    for depth in range(max(len(q) for q in queues)):
        yield [q[depth] for q in queues if depth < len(q)]
