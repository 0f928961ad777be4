"""Figures of the study, one function each, every value drawn with its 95% interval.

Inputs are the tables of ``sdlib.experiments.tables``: a value column ``m`` beside
``m_lo`` and ``m_hi``. Bars carry error bars, curves a band; every figure names its model
and preset.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files, not windows: papermill and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")

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
    fig.suptitle(f"{text}\n{subtitle} · {CI}", fontsize=11)


def _yerr(frame: pd.DataFrame, col: str) -> np.ndarray:
    """[2, n] distances from the value to its interval's ends (matplotlib's yerr)."""
    return np.vstack([frame[col] - frame[f"{col}_lo"], frame[f"{col}_hi"] - frame[col]])


def _grouped_bars(ax, frame: pd.DataFrame, group: str, hue: str, col: str) -> None:
    """Bars of ``col`` per ``group`` (x) and ``hue`` (colour), with error bars."""
    groups, hues = list(dict.fromkeys(frame[group])), list(dict.fromkeys(frame[hue]))
    width = 0.8 / len(hues)
    colours = sns.color_palette("deep", len(hues))
    for i, h in enumerate(hues):
        part = frame[frame[hue] == h].set_index(group).reindex(groups)
        x = np.arange(len(groups)) + (i - (len(hues) - 1) / 2) * width
        ax.bar(x, part[col], width, yerr=_yerr(part, col), capsize=3, label=h, color=colours[i])
    ax.set_xticks(np.arange(len(groups)), groups)


def _legend_beside(fig, ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    for a in fig.axes:
        if a.get_legend():
            a.get_legend().remove()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5))


def condition_bars(table: pd.DataFrame, subtitle: str):
    """Notebook 01: accuracy, length and epistemic count per context condition."""
    cols = ["accuracy", "length", "epistemic"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    colours = sns.color_palette("deep", len(table))
    for ax, col in zip(axes, cols, strict=True):
        ax.bar(table.index, table[col], yerr=_yerr(table, col), capsize=3, color=colours)
        ax.set_xlabel("context condition")
        ax.set_ylabel(LABELS[col])
        ax.tick_params(axis="x", rotation=20)
    _title(fig, "Context richness: accuracy, length and epistemic verbalization", subtitle)
    fig.tight_layout()
    return fig


def training_curves(curves: pd.DataFrame, keys: list[str], subtitle: str, title: str):
    """Metrics over steps (rows run, step), one line per run, a band across seeds."""
    keys = [k for k in keys if k in curves and curves[k].notna().any()]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    runs = list(dict.fromkeys(curves.index.get_level_values("run")))
    colours = dict(zip(runs, sns.color_palette("deep", len(runs)), strict=True))
    for ax, key in zip(axes[0], keys, strict=True):
        for run in runs:
            part = curves.loc[run].dropna(subset=[key])
            ax.plot(part.index, part[key], marker="o", label=run, color=colours[run])
            ax.fill_between(
                part.index,
                part[f"{key}_lo"],
                part[f"{key}_hi"],
                color=colours[run],
                alpha=0.2,
                linewidth=0,
            )
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(LABELS.get(key, key))
    _legend_beside(fig, axes[0][0])
    _title(fig, title, subtitle)
    fig.tight_layout()
    return fig


def word_shift(shift: pd.DataFrame, subtitle: str):
    """Change of each epistemic word's count per response, after minus before training."""
    fig, ax = plt.subplots(figsize=(10, 3.8))
    _grouped_bars(ax, shift.reset_index(), "word", "run", "change")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("epistemic word")
    ax.set_ylabel(LABELS["change"])
    _legend_beside(fig, ax)
    _title(fig, "Per-word change of epistemic verbalization (OOD evaluation)", subtitle)
    fig.tight_layout()
    return fig


def accuracy_bars(table: pd.DataFrame, subtitle: str, title: str, col: str = "accuracy"):
    """``col`` per model (colour) and benchmark (x), from rows (model, benchmark)."""
    fig, ax = plt.subplots(figsize=(10, 3.8))
    _grouped_bars(ax, table.reset_index(), "benchmark", "model", col)
    ax.tick_params(axis="x", rotation=10)
    ax.set_xlabel("evaluation set")
    ax.set_ylabel(LABELS.get(col, col))
    _legend_beside(fig, ax)
    _title(fig, title, subtitle)
    fig.tight_layout()
    return fig


def coverage_lines(table: pd.DataFrame, base: pd.DataFrame, subtitle: str):
    """Notebook 05: training score, OOD accuracy and length against |D| (rows algo, size);
    ``base`` holds the untrained model's OOD accuracy and length (one row)."""
    cols = ["train_score", "accuracy", "length"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    frame = table.reset_index()
    sizes = sorted(frame["size"].unique())
    for ax, col in zip(axes, cols, strict=True):
        for i, (algo, part) in enumerate(frame.groupby("algo", sort=False)):
            ax.errorbar(
                part["size"],
                part[col],
                yerr=_yerr(part, col),
                marker="o",
                capsize=3,
                label=algo,
                color=sns.color_palette("deep")[i],
            )
        if col in base:
            b = base.iloc[0]
            ax.axhline(b[col], color="gray", linestyle="--", label="base model")
            ax.axhspan(b[f"{col}_lo"], b[f"{col}_hi"], color="gray", alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, labels=[str(s) for s in sizes])
        ax.set_xlabel("distinct training problems |D|")
        ax.set_ylabel(LABELS.get(col, col))
    _legend_beside(fig, axes[1])
    _title(fig, "Task coverage: training score vs OOD accuracy", subtitle)
    fig.tight_layout()
    return fig


def specificity(table: pd.DataFrame, subtitle: str, top: int = 15):
    """The words whose count per response changed most, per run (epistemic words in red)."""
    runs = list(dict.fromkeys(table.index.get_level_values("run")))
    fig, axes = plt.subplots(
        1, len(runs), figsize=(4.5 * len(runs), 0.28 * top + 1.6), squeeze=False
    )
    for ax, run in zip(axes[0], runs, strict=True):
        part = table.loc[run].sort_values("rank").head(top).iloc[::-1]
        colours = ["tab:red" if e else "tab:gray" for e in part["epistemic"]]
        ax.barh(part.index, part["change"], color=colours)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(run, fontsize=10)
        ax.set_xlabel("change in count per response")
    fig.suptitle(
        f"Which words moved most (red: the study's epistemic words)\n{subtitle}", fontsize=11
    )
    fig.tight_layout()
    return fig


def effect_panels(table: pd.DataFrame, subtitle: str, measures=("accuracy", "length", "epistemic")):
    """Notebook 06: SDPO minus GRPO per organism (rows; ``Δm`` columns), one panel per
    measure, a bar per organism with its interval, the default organism first in grey."""
    fig, axes = plt.subplots(1, len(measures), figsize=(13, 3.8))
    names = list(table.index)
    colours = ["0.55", *sns.color_palette("deep", max(1, len(names) - 1))]
    for ax, m in zip(axes, measures, strict=True):
        x = np.arange(len(names))
        ax.bar(x, table[f"Δ{m}"], 0.7, yerr=_yerr(table, f"Δ{m}"), capsize=3, color=colours)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(x, names, rotation=10)
        ax.set_ylabel(f"SDPO - GRPO\n{LABELS.get(m, m)}")
    _title(fig, "What SDPO does relative to GRPO, by organism (held-out problems)", subtitle)
    fig.tight_layout()
    return fig
