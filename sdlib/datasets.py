"""One spec string -> problems: files, short names of the reference sets, Hub ids and
synthetic families; plus the task-coverage subsets and the named sets of an experiment.

    load_problems(spec)        a file (.parquet reference layout, .jsonl ours, .json
                               SciKnowEval), a short name in LOCAL_SETS (read under
                               ``settings.data_root()``), a Hub set or id, or
                               ``synthetic:<family|mix|a+b>[:<level|1-3>][:<count>][:<seed>]``
    load_benchmarks(specs)     several specs -> {set name: problems}
    coverage_subset(...)       nested |D|-problem subsets (the study's task coverage)

Row parsing and the file formats live in ``sdlib.problems``; this module decides which of
them a spec means.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sdlib import synthetic
from sdlib.problems import (
    BLANK,
    REFERENCE,
    REPEAT_MARK,
    DataUnavailableError,
    Layout,
    Problem,
    ProblemSet,
    RowError,
    Skipped,
    base_id,
    check_text,
    dedupe,
    load_jsonl,
    load_reference_parquet,
    load_sciknoweval,
    no_usable_rows,
    parse_rows,
    read_json_records,
    report_skipped,
    short_repr,
)
from sdlib.settings import data_root

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
    expected = f"expected rows with {layout.question!r} and {layout.answer!r}"
    origin = f"Hub dataset {hub_id} ({split})"
    loaded = parse_rows(_iter_rows(table), name, layout, origin=origin, expected=expected)
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
    - ``synthetic:<family|mix|a+b>[:<level|1-3>][:<count>][:<seed>]``;
    - ``organism:<family|all>:<train|heldout>[:<count>][:<variant>]``: the model
      organism's problems (``sdlib.organism``), e.g. ``organism:affine:heldout:100``;
      ``all`` is its problem families, an unseen (OOD) family is named on its own.
    """
    text = str(spec)
    if text.startswith("synthetic:"):
        return _load_synthetic(text)
    if text.startswith("organism:"):
        return _load_organism(text)
    path = Path(text).expanduser()
    if path.is_dir():
        raise ValueError(f"{spec!r} is a folder; expected one data file. {_ACCEPTED}")
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


def _load_organism(spec: str) -> ProblemSet:
    from sdlib.organism.build import splits
    from sdlib.organism.config import variant

    parts = spec.split(":")[1:]
    form = "organism:<family|all>:<train|heldout>[:<count>][:<variant>]"
    if not 2 <= len(parts) <= 4 or parts[1] not in ("train", "heldout"):
        raise ValueError(f"{spec!r}: expected {form}")
    family, split = parts[0], parts[1]
    cfg = variant(parts[3] if len(parts) > 3 else "organism")
    sets = splits(cfg)
    # "all" is the problem families: an OOD family is named on its own, never trained by default
    names = cfg.families if family == "all" else [family]
    if not set(names) <= set(sets):
        raise ValueError(f"{spec!r}: no family {family!r}; the organism has {sorted(sets)}")
    problems = [p for n in names for p in sets[n][split]]
    if len(parts) > 2 and parts[2]:
        if not parts[2].isdigit():
            raise ValueError(f"{spec!r}: the count {parts[2]!r} is not a whole number; {form}")
        problems = problems[: int(parts[2])]
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


# ---------------------------------------------------------------------------------------
# An experiment's named sets


def load_benchmarks(specs: list[str], limit: int = 0) -> dict[str, list[Problem]]:
    """Problem sets by name; malformed rows were reported by the loader and are left out."""
    sets = {}
    for spec in specs:
        loaded = load_problems(spec)
        problems = list(loaded)
        sets[loaded.name] = problems[:limit] if limit else problems
    return sets


def check_specs(specs: list[str]) -> None:
    """Load each problem set once, so a bad or missing one is named before any work."""
    for spec in dict.fromkeys(specs):
        load_problems(spec)


def pooled(specs: list[str], limit: int = 0) -> list[Problem]:
    """Every problem of ``specs`` in one list (``limit`` per set)."""
    return [p for ps in load_benchmarks(specs, limit).values() for p in ps]


PAIR_KEYS = ("prompt", "response")
# Each of prompt and response: above the study's 20,480-token responses and 22,528-token
# teacher prompts (~4 characters a token), below what would stall tokenizing one pair.
MAX_PAIR_CHARS = 400_000
PAIRS_EXPECTED = (
    "expected jsonl rows of prompt/response strings, as the context-richness experiment "
    "writes them (D_ug / D_sg)"
)


def load_pairs(paths: list[str]) -> list[dict]:
    """SFT (prompt, response) pairs from jsonl files, in order.

    Read like problem jsonl (one line at a time, ``MAX_LINE_BYTES`` a line): a line that is
    not UTF-8 JSON, or lacks string ``prompt`` and ``response`` (each valid UTF-8 and at
    most ``MAX_PAIR_CHARS``), is reported by file, line and ``problem_id``, counted and
    skipped; a file without a usable row is an error naming it."""
    if not paths:
        raise ValueError(f"no SFT data files given; {PAIRS_EXPECTED}")
    pairs = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"SFT data {str(path)!r}: no such file")
        pairs += _file_pairs(path)
    return pairs


def _file_pairs(path: Path) -> list[dict]:
    pairs, skipped, rows = [], [], 0
    for number, row in enumerate(read_json_records(path, array=False), 1):
        if row is BLANK:
            continue
        rows += 1
        try:
            pairs.append(_pair(row))
        except RowError as err:
            row_id = _problem_id(err.row if isinstance(row, RowError) else row)
            skipped.append(Skipped(number, row_id, str(err), err.kind, "line"))
    report_skipped(str(path), skipped, rows, see="the lines above")
    if not pairs:
        raise ValueError(no_usable_rows(str(path), skipped, PAIRS_EXPECTED))
    return pairs


def _pair(row: Any) -> dict:
    if isinstance(row, RowError):
        raise row
    if not isinstance(row, dict):
        raise RowError(f"expected a mapping of fields, got {type(row).__name__}", "not a mapping")
    for key in PAIR_KEYS:
        value = row.get(key)
        if not isinstance(value, str):
            raise RowError(f"{key!r} = {short_repr(value)}; expected a string", f"no {key}")
        check_text(value, key, MAX_PAIR_CHARS)
    return row


def _problem_id(row: Any) -> str | None:
    # the context-richness experiment writes the problem's id with each pair
    value = row.get("problem_id") if isinstance(row, dict) else None
    if not isinstance(value, str):
        return None
    return value[:80].encode("utf-8", "backslashreplace").decode("utf-8")
