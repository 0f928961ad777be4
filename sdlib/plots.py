"""Figures of the study, one function each, every value drawn with its 95% interval.

Inputs are the tables of ``sdlib.experiments.tables``: a value column ``m`` beside
``m_lo`` and ``m_hi``. Bars carry error bars, curves a band; every figure names its model
and preset. A method keeps one colour in every figure (``PALETTE``), legends list numbered
labels in numeric order, and a figure keeps its text legible at a notebook's width.
"""

from __future__ import annotations

import re
import textwrap
import zlib

import matplotlib

matplotlib.use("Agg")  # files, not windows: papermill and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

# at a notebook's width (~950 px) a figure of three panels is shown at ~60% of its pixels:
# these sizes keep its smallest text (tick labels) at >= 10 px there
sns.set_theme(style="whitegrid", context="notebook", font_scale=1.15)

_DEEP = sns.color_palette("deep").as_hex()  # blue orange green red purple brown pink grey ...
_DARK = sns.color_palette("dark").as_hex()
GREY = _DEEP[7]
# One colour per method, condition, way to start a reply and organism, in every figure: a
# label that extends a name here ("SDPO |D|=8", "SDPO EMA 0.05", "GRPO on chemistry") takes
# its colour, in shades when a figure holds several such labels (``colours``).
PALETTE = {
    # what nothing trained or guided: the untrained model, the unguided sample, a free
    # reply, the default organism
    "base": GREY,
    "unguided": GREY,
    "free": GREY,
    "default": GREY,
    "GRPO": _DEEP[0],
    "SDPO": _DEEP[1],
    "SDPO fixed teacher": _DEEP[1],  # notebook 03's SDPO: the initial policy teaches
    "SDPO w/o thinking": _DEEP[2],
    "SDPO EMA": _DEEP[3],
    "SFT on D_ug": _DEEP[4],
    "SFT on D_sg": _DEEP[5],
    "full solution": _DEEP[6],
    "solution w/o thinking": _DEEP[8],
    "regeneration": _DEEP[9],
    "search": _DARK[9],
    "direct": _DARK[6],
    "silent": _DARK[8],
    "decorative": _DARK[4],
    "checking": _DARK[2],
    # notebook 07's remedies: hues apart from GRPO's blue and SDPO's orange
    "trust region": "#7570b3",
    "GRPO+SDPO mix": "#1b9e77",
    "SRPO": "#e7298a",
    "SC-SDPO": "#66a61e",
    "half context": "#a6761d",
}
# labels no name covers: a colour each, picked by the label's own hash (so the same in every
# figure) among these, the next free one when two labels of a figure meet
SPARE = ["#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#2f4b7c", "#ff7c43"]
EPISTEMIC, OTHER_WORD = "tab:red", "0.6"  # notebook 03's specificity bars
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def ordered(labels) -> list[str]:
    """``labels`` (once each) in their order, except that labels differing only in their
    numbers follow those numbers: ``|D|=1, |D|=8, |D|=1200``, not ``1, 1200, 8``."""
    labels = list(dict.fromkeys(labels))
    stems: dict[str, int] = {}
    for label in labels:
        stems.setdefault(_NUMBER.sub("#", label), len(stems))
    return sorted(
        labels,
        key=lambda x: (stems[_NUMBER.sub("#", x)], [float(v) for v in _NUMBER.findall(x)]),
    )


def family(label: str) -> str | None:
    """The name of ``PALETTE`` that ``label`` is or extends (the longest), else None."""
    if label in PALETTE:
        return label
    names = [name for name in PALETTE if label.startswith(name + " ")]
    return max(names, key=len, default=None)


def _shades(colour: str, n: int) -> list:
    """``n`` shades of ``colour``, darker to lighter (``colour`` itself when n is 1)."""
    rgb = np.array(to_rgb(colour))
    if n == 1:
        return [tuple(rgb)]
    shades = []
    for t in np.linspace(-0.35, 0.45, n):  # < 0 towards black, > 0 towards white
        shades.append(tuple(rgb * (1 + t) if t < 0 else rgb + (1 - rgb) * t))
    return shades


def colours(labels) -> dict:
    """Each label's colour in one figure: its ``PALETTE`` name's; labels that extend one
    name share its hue in shades, darker to lighter in ``ordered`` order; any other label
    a ``SPARE`` colour of its own."""
    labels = ordered(labels)
    out: dict = {}
    names = {label: family(label) for label in labels}
    for name in dict.fromkeys(n for n in names.values() if n is not None):
        members = [x for x in labels if names[x] == name and x != name]
        out |= dict(zip(members, _shades(PALETTE[name], len(members)), strict=True))
        if name in labels:
            out[name] = PALETTE[name]
    for label in (x for x in labels if names[x] is None):
        start = zlib.crc32(label.encode()) % len(SPARE)
        free = [SPARE[(start + i) % len(SPARE)] for i in range(len(SPARE))]
        out[label] = next((c for c in free if c not in out.values()), free[0])
    return out


def _panels(n: int, width: float = 4.4, height: float = 3.5):
    """A figure of ``n`` panels, at most three a row (four as 2 x 2), each ``width`` x
    ``height`` inches; the axes in reading order."""
    cols = 2 if n == 4 else min(n, 3)
    rows = -(-n // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in grid.flat[n:]:
        ax.remove()
    return fig, list(grid.flat[:n])


LABELS = {
    "accuracy": "accuracy (avg@k)",
    "length": "response length (tokens)",
    "epistemic": "epistemic words per response",
    "rollout/reward_mean": "training reward (mean)",
    "rollout/len_tokens": "response length (tokens)",
    "rollout/epi_total": "epistemic words per response",
    "train/divergence": "teacher-student divergence (per token)",
    "train/entropy": "token entropy (nats)",
    "train/loss": "training loss",
    "change": "change in count per response\n(after - before training)",
    "train_score": "in-domain training reward (last half)",
}
CI = "error bars / bands: 95% intervals"


def _title(fig, text: str, subtitle: str) -> None:
    fig.suptitle(f"{text}\n{subtitle} · {CI}", fontsize=plt.rcParams["axes.titlesize"])


def _yerr(frame: pd.DataFrame, col: str) -> np.ndarray:
    """[2, n] distances from the value to its interval's ends (matplotlib's yerr)."""
    return np.vstack([frame[col] - frame[f"{col}_lo"], frame[f"{col}_hi"] - frame[col]])


def _grouped_bars(ax, frame: pd.DataFrame, group: str, hue: str, col: str) -> None:
    """Bars of ``col`` per ``group`` (x) and ``hue`` (colour), with error bars."""
    groups, hues = list(dict.fromkeys(frame[group])), ordered(frame[hue])
    width, colour = 0.8 / len(hues), colours(hues)
    for i, h in enumerate(hues):
        part = frame[frame[hue] == h].set_index(group).reindex(groups)
        x = np.arange(len(groups)) + (i - (len(hues) - 1) / 2) * width
        ax.bar(x, part[col], width, yerr=_yerr(part, col), capsize=3, label=h, color=colour[h])
    ax.set_xticks(np.arange(len(groups)), groups)


def _ylabel(ax, text: str) -> None:
    """An axis label wrapped to the panel's height."""
    ax.set_ylabel("\n".join(textwrap.fill(line, 26) for line in text.split("\n")))


def _finish(fig, axes, legend: bool = True) -> None:
    """Lay the panels out (room between them for their axis labels), then, with
    ``legend``, one legend for the figure under them, its labels in ``ordered`` order."""
    fig.tight_layout(w_pad=1.5, h_pad=1.0)
    if not legend:
        return
    found: dict = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            found.setdefault(label, handle)
    labels = ordered(found)
    stems = len({_NUMBER.sub("#", x) for x in labels})
    # one row; or, when more, a column per method (its |D| = 1, 8, 1200 down the column)
    columns = len(labels) if len(labels) <= 4 else min(stems if stems > 1 else len(labels), 4)
    fig.legend(
        [found[x] for x in labels],
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=columns,
        frameon=False,
    )


def condition_bars(table: pd.DataFrame, subtitle: str):
    """Notebook 01: accuracy, length and epistemic count per context condition."""
    cols = ["accuracy", "length", "epistemic"]
    fig, axes = _panels(len(cols))
    colour = colours(table.index)
    for ax, col in zip(axes, cols, strict=True):
        for i, (name, row) in enumerate(table.iterrows()):
            yerr = [[row[col] - row[f"{col}_lo"]], [row[f"{col}_hi"] - row[col]]]
            ax.bar(i, row[col], yerr=yerr, capsize=3, color=colour[name], label=name)
        ax.set_xticks([])  # the legend names the conditions, by colour
        ax.set_xlabel("context condition")
        _ylabel(ax, LABELS[col])
    _title(fig, "Context richness: accuracy, length and epistemic verbalization", subtitle)
    _finish(fig, axes)
    return fig


def training_curves(curves: pd.DataFrame, keys: list[str], subtitle: str, title: str):
    """Metrics over steps (rows run, step), one line per run, a band across seeds."""
    keys = [k for k in keys if k in curves and curves[k].notna().any()]
    fig, axes = _panels(len(keys))
    runs = ordered(curves.index.get_level_values("run"))
    colour = colours(runs)
    for ax, key in zip(axes, keys, strict=True):
        for run in runs:
            part = curves.loc[run].dropna(subset=[key])
            ax.plot(part.index, part[key], marker="o", label=run, color=colour[run])
            ax.fill_between(
                part.index,
                part[f"{key}_lo"],
                part[f"{key}_hi"],
                color=colour[run],
                alpha=0.2,
                linewidth=0,
            )
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _ylabel(ax, LABELS.get(key, key))
    _title(fig, title, subtitle)
    _finish(fig, axes)
    return fig


def word_shift(shift: pd.DataFrame, subtitle: str):
    """Change of each epistemic word's count per response, after minus before training."""
    fig, (ax,) = _panels(1, width=11, height=4.2)
    _grouped_bars(ax, shift.reset_index(), "word", "run", "change")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.tick_params(axis="x", rotation=30)  # "actually" and "alternatively" side by side
    ax.set_xlabel("epistemic word")
    _ylabel(ax, LABELS["change"])
    _title(fig, "Per-word change of epistemic verbalization (OOD evaluation)", subtitle)
    _finish(fig, [ax])
    return fig


def accuracy_bars(table: pd.DataFrame, subtitle: str, title: str, col: str = "accuracy"):
    """``col`` per model (colour) and benchmark (x), from rows (model, benchmark)."""
    fig, (ax,) = _panels(1, width=11, height=4.2)
    _grouped_bars(ax, table.reset_index(), "benchmark", "model", col)
    ax.tick_params(axis="x", rotation=10)
    ax.set_xlabel("evaluation set")
    _ylabel(ax, LABELS.get(col, col))
    _title(fig, title, subtitle)
    _finish(fig, [ax])
    return fig


def coverage_lines(table: pd.DataFrame, base: pd.DataFrame, subtitle: str):
    """Notebook 05: training score, OOD accuracy and length against |D| (rows algo, size);
    ``base`` holds the untrained model's OOD accuracy and length (one row)."""
    cols = ["train_score", "accuracy", "length"]
    fig, axes = _panels(len(cols))
    frame = table.reset_index()
    sizes = sorted(frame["size"].unique())
    colour = colours([*frame["algo"], "base"])
    for ax, col in zip(axes, cols, strict=True):
        for algo, part in frame.groupby("algo", sort=False):
            part = part.sort_values("size")
            ax.errorbar(
                part["size"],
                part[col],
                yerr=_yerr(part, col),
                marker="o",
                capsize=3,
                label=algo,
                color=colour[algo],
            )
        if col in base:
            b = base.iloc[0]
            ax.axhline(b[col], color=colour["base"], linestyle="--", label="base")
            ax.axhspan(b[f"{col}_lo"], b[f"{col}_hi"], color=colour["base"], alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, labels=[str(s) for s in sizes])
        ax.set_xlabel("distinct training problems |D|")
        _ylabel(ax, LABELS.get(col, col))
    _title(fig, "Task coverage: training score vs OOD accuracy", subtitle)
    _finish(fig, axes)
    return fig


def specificity(table: pd.DataFrame, subtitle: str, top: int = 15):
    """The words whose count per response changed most, per run (epistemic words in red),
    each panel titled in its run's colour."""
    runs = ordered(table.index.get_level_values("run"))
    fig, axes = _panels(len(runs), width=4.6, height=0.3 * top + 1.2)
    colour = colours(runs)
    for ax, run in zip(axes, runs, strict=True):
        part = table.loc[run].sort_values("rank").head(top).iloc[::-1]
        bars = [EPISTEMIC if e else OTHER_WORD for e in part["epistemic"]]
        ax.barh(part.index, part["change"], color=bars)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(run, color=colour[run], fontweight="bold")
        ax.set_xlabel("change in count per response")
    fig.suptitle(
        f"Which words moved most (red: the study's epistemic words)\n{subtitle}",
        fontsize=plt.rcParams["axes.titlesize"],
    )
    _finish(fig, axes, legend=False)
    return fig


def effect_panels(table: pd.DataFrame, subtitle: str, measures=("accuracy", "length", "epistemic")):
    """Notebook 06: SDPO minus GRPO per organism (rows; ``Δm`` columns), one panel per
    measure, a bar per organism with its interval, the default organism first in grey."""
    fig, axes = _panels(len(measures))
    names = list(table.index)
    colour = colours(names)
    for ax, m in zip(axes, measures, strict=True):
        x = np.arange(len(names))
        ax.bar(
            x,
            table[f"Δ{m}"],
            0.7,
            yerr=_yerr(table, f"Δ{m}"),
            capsize=3,
            color=[colour[n] for n in names],
        )
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(x, names, rotation=15)
        _ylabel(ax, f"SDPO - GRPO\n{LABELS.get(m, m)}")
    _title(fig, "What SDPO does relative to GRPO, by organism (held-out problems)", subtitle)
    _finish(fig, axes, legend=False)
    return fig


def remedy_bench(table: pd.DataFrame, subtitle: str):
    """Each method a point (rows: method): in-domain efficiency (``correct per 1k tokens``,
    x, 95% interval across seeds) against held-out accuracy minus the base model's
    (``Δaccuracy``, y, paired 95% interval); the base model at (-, 0) as a line."""
    fig, (ax,) = _panels(1, width=9, height=5.2)
    colour = colours(table.index)
    for label in ordered(table.index):
        row = table.loc[[label]]
        reference = label in ("GRPO", "SDPO")  # hollow squares, so a remedy on top shows both
        ax.errorbar(
            row["correct per 1k tokens"],
            row["Δaccuracy"],
            xerr=_yerr(row, "correct per 1k tokens"),
            yerr=_yerr(row, "Δaccuracy"),
            fmt="s" if reference else "o",
            markersize=14 if reference else 7,
            markerfacecolor="none" if reference else colour[label],
            markeredgewidth=2,
            capsize=3,
            color=colour[label],
            label=label,
            zorder=2 if reference else 3,
        )
    ax.axhline(0, color=GREY, linewidth=1, linestyle="--")
    ax.text(ax.get_xlim()[1], 0, "base model ", va="bottom", ha="right", color=GREY)
    ax.set_xlabel("in-domain efficiency: correct responses per 1k generated tokens")
    _ylabel(ax, "held-out accuracy minus the base model's")
    _title(fig, "Every method on one bench", subtitle)
    _finish(fig, [ax])
    return fig
