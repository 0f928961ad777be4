"""An experiment's results folder: its tables (csv), figures (png, each with a caption beside
it) and notes (markdown, opening with the experiment's findings).

    <out>/<name>/tables/<table>.csv       written as computed; ``read_table`` reads one back
    <out>/<name>/figures/<figure>.png     and ``<figure>.txt``, its caption (plain text)
    <out>/<name>/notes.md                 ``**Findings**``, a blank line, one ``- `` line per
                                          finding, a blank line, then the rest of the notes

The findings are a few lines an experiment writes from its own tables (its ``findings``
function: the headline differences, each with its 95% interval, its verdict against noise
and its sizes; ``tables.finding`` words them), the first being its headline. The run's
report (``sdlib.report``) puts every experiment's headline at its top and all its findings
at the head of its section. A caption says what to see in the figure, in a sentence or
two. ``compact`` is the one place that decides what a table shows when space is short:
the report's main tables and ``Results.view``.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pandas as pd

from sdlib import clock

TIMINGS = "timings.json"
FINDINGS = "**Findings**"  # the first line of notes.md when the notes open with findings
CAPTION = ".txt"  # a figure's caption: figures/<name>.txt beside figures/<name>.png

MAX_COLUMNS = 8  # a compact table's columns, its index's levels included
SIZES = ("problems", "samples", "seeds")
SIZE_COLUMN = "n"  # "problems · samples · seeds": what each interval rests on
# A compact table shows these first, in this order, then the table's other columns; a
# measure's own value gives way to its paired difference where the table has one (accuracy
# stays: it is the headline, and the reference rows have no difference).
HEADLINE = (
    "accuracy", "train_score", "Δaccuracy", "Δlength", "Δepistemic", "GRPO accuracy",
    "SDPO accuracy", "ΔΔ", "measured", "value", "verdict", "change",
)  # fmt: skip
GIVES_WAY = ("length", "epistemic")
DETAIL = ("epistemic_word", "Δepistemic_word", "truncated", "Δtruncated")  # full table only
# the index levels the experiments' tables use: ``read_table`` restores them from a csv
INDEX_NAMES = (
    "model", "benchmark", "condition", "stage", "set", "word", "run", "step", "algo", "size",
    "regime", "organism", "kind", "variant", "prediction", "measure",
)  # fmt: skip


def timed(run):
    """An experiment's ``run(cfg) -> Results``, its seconds per phase (``sdlib.clock``)
    written beside its results as ``timings.json`` (``sdlib run`` prints them)."""

    @functools.wraps(run)
    def wrapper(cfg, *args, **kwargs):
        clock.reset()
        with clock.phase("other"):
            res = run(cfg, *args, **kwargs)
        res.folder.mkdir(parents=True, exist_ok=True)
        seconds = {k: round(v, 2) for k, v in clock.totals().items()}
        (res.folder / TIMINGS).write_text(json.dumps(seconds, indent=1) + "\n")
        return res

    return wrapper


class Results:
    """Tables and figures of one experiment, written to ``<out>/<name>/`` as they are made,
    and kept by name for the notebook to show (``res.view(...)``, ``res.tables[...]``,
    ``res.figures[...]``)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.tables: dict[str, pd.DataFrame] = {}
        self.figures: dict[str, Path] = {}
        self.text = ""

    @classmethod
    def load(cls, folder: str | Path) -> Results:
        """A results folder read back: its tables, figures and notes."""
        res = cls(folder)
        res.tables = {p.stem: read_table(p) for p in sorted(res.folder.glob("tables/*.csv"))}
        res.figures = {p.stem: p for p in sorted(res.folder.glob("figures/*.png"))}
        notes = res.folder / "notes.md"
        res.text = notes.read_text() if notes.exists() else ""
        return res

    def table(self, name: str, frame: pd.DataFrame) -> pd.DataFrame:
        (self.folder / "tables").mkdir(parents=True, exist_ok=True)
        frame.to_csv(self.folder / "tables" / f"{name}.csv")
        self.tables[name] = frame
        return frame

    def view(self, name: str, full: bool = False) -> pd.DataFrame:
        """Table ``name`` for reading: each value beside its 95% interval, ``v [lo, hi]``,
        the headline columns only (``compact``: at most ``MAX_COLUMNS``, as in the report);
        ``full=True`` shows every column (the numbers themselves: ``res.tables[name]``)."""
        return compact(self.tables[name], None if full else MAX_COLUMNS)

    def notes(self, lines: list[str], findings: list[str] = ()) -> Path:
        """``notes.md``: what the tables show, in words (which differences exceed noise),
        opening with ``findings`` (a few lines, the headline numbers) when there are any."""
        self.folder.mkdir(parents=True, exist_ok=True)
        head = [FINDINGS, "", *(f"- {f}" for f in findings), ""] if findings else []
        self.text = "\n".join([*head, *lines]) + "\n"
        path = self.folder / "notes.md"
        path.write_text(self.text)
        return path

    def figure(self, name: str, fig, caption: str = "") -> Path:
        """``figures/<name>.png`` and its ``caption`` (what to see in it) beside it."""
        import matplotlib.pyplot as plt

        (self.folder / "figures").mkdir(parents=True, exist_ok=True)
        path = self.folder / "figures" / f"{name}.png"
        with clock.phase("figures"):
            fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        if caption:
            path.with_suffix(CAPTION).write_text(caption.strip() + "\n")
        self.figures[name] = path
        return path


def split_findings(text: str) -> tuple[list[str], str]:
    """notes.md's findings (its leading ``**Findings**`` list, markers dropped) and the
    rest of the notes; no findings when the notes do not open with that line."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != FINDINGS:
        return [], text
    found, i = [], 1
    while i < len(lines) and not lines[i].strip():
        i += 1
    while i < len(lines) and lines[i].startswith("- "):
        found.append(lines[i][2:].strip())
        i += 1
    return found, "\n".join(lines[i:]).strip("\n") + "\n"


def caption(png: Path) -> str:
    """A figure's caption (``<name>.txt`` beside it), or a title made of its name."""
    text = png.with_suffix(CAPTION)
    if text.exists() and text.read_text().strip():
        return text.read_text().strip()
    title = png.stem.replace("_", " ").strip()
    return title[:1].upper() + title[1:]


def read_table(path: Path) -> pd.DataFrame:
    """A table written by ``Results.table``, its index restored: the first column and the
    columns after it named like an index level (``INDEX_NAMES``)."""
    header = pd.read_csv(path, nrows=0).columns
    levels = 1
    while levels < len(header) - 1 and header[levels] in INDEX_NAMES:
        levels += 1
    return pd.read_csv(path, index_col=list(range(levels)))


def compact(frame: pd.DataFrame, max_columns: int | None = MAX_COLUMNS) -> pd.DataFrame:
    """A table for reading, every cell text: each ``m``/``m_lo``/``m_hi`` triple as one
    column ``m`` holding ``v [lo, hi]`` (the 95% interval), the sizes (problems, samples,
    seeds) in one column, and, unless ``max_columns`` is None, at most that many columns
    counting the index's levels: the ``HEADLINE`` ones first, the sizes last (column
    ``n``, each cell ``problems · samples · seeds``)."""
    triples = [c for c in frame.columns if f"{c}_lo" in frame and f"{c}_hi" in frame]
    bounds = {f"{c}{end}" for c in triples for end in ("_lo", "_hi")}
    columns = [c for c in frame.columns if c not in bounds]
    sized = all(s in frame for s in SIZES)
    if sized:
        columns = [c for c in columns if c not in SIZES]
    if max_columns is not None:
        columns = _headline(columns, max_columns - frame.index.nlevels - sized)
    out = {c: _cells(frame, c, c in triples) for c in columns}
    if sized:
        out[SIZE_COLUMN] = [
            " · ".join(_count(v) for v in row) for row in frame[list(SIZES)].itertuples(False)
        ]
    return pd.DataFrame(out, index=frame.index)


def _headline(columns: list[str], room: int) -> list[str]:
    """At most ``room`` of ``columns``: the headline ones first, details left out."""
    kept = [c for c in columns if c not in DETAIL]
    kept = [c for c in kept if not (c in GIVES_WAY and f"Δ{c}" in kept)]
    first = [c for c in HEADLINE if c in kept]
    return (first + [c for c in kept if c not in first])[: max(room, 1)]


def _cells(frame: pd.DataFrame, column: str, interval: bool) -> list[str]:
    values = frame[column]
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return ["" if _missing(v) else str(v) for v in values]
    parts = [values, frame[f"{column}_lo"], frame[f"{column}_hi"]] if interval else [values]
    # a difference (named so, or with a value below 0): every value signed
    sign = "+" if str(column).startswith("Δ") or (pd.concat(parts) < 0).any() else ""
    if not interval:
        digits = _digits(values, pd.api.types.is_integer_dtype(values))
        return [_number(v, sign, digits) for v in values]
    cells = []
    for triple in zip(*parts, strict=True):
        digits = _digits(pd.Series(triple, dtype=float))  # each row by its own size
        v, lo, hi = (_number(x, sign, digits) for x in triple)
        cells.append(v and f"{v} [{lo}, {hi}]")
    return cells


def _digits(numbers: pd.Series, whole: bool = False) -> int:
    """Decimals for numbers of this size: 3 below 10, 1 below 1,000, else none (counts none)."""
    finite = numbers[numbers.map(lambda v: not _missing(v) and math.isfinite(v))]
    largest = finite.abs().max() if len(finite) else 0.0
    return 0 if whole or largest >= 1000 else 1 if largest >= 10 else 3


def _number(v, sign: str, digits: int) -> str:
    return "" if _missing(v) else format(float(v), f"{sign},.{digits}f")


def _count(v) -> str:
    return "" if _missing(v) else f"{int(v):,}"


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))
