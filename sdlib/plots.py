"""Figures of the study, one function each; every figure names its model and preset."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files, not windows: papermill and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")

LABELS = {
    "score": "score (avg@k)",
    "len_tokens": "response length (tokens)",
    "epi_total": "epistemic words per response",
    "rollout/reward_mean": "training reward (mean)",
    "rollout/len_tokens": "response length (tokens)",
    "rollout/epi_total": "epistemic words per response",
    "train/divergence": "teacher-student divergence (per token)",
    "train/entropy": "token entropy (nats)",
}


def _title(fig, text: str, subtitle: str) -> None:
    fig.suptitle(f"{text}\n{subtitle}", fontsize=11)


def condition_bars(table: pd.DataFrame, subtitle: str):
    """Notebook 01: score, length and epistemic count per context condition."""
    cols = ["score", "len_tokens", "epi_total"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, col in zip(axes, cols, strict=True):
        sns.barplot(
            x=table.index, y=table[col], ax=ax, hue=table.index, palette="deep", legend=False
        )
        ax.set_xlabel("context condition")
        ax.set_ylabel(LABELS[col])
        ax.tick_params(axis="x", rotation=20)
    _title(fig, "Context richness: score, length and epistemic verbalization", subtitle)
    fig.tight_layout()
    return fig


def training_curves(frames: dict[str, pd.DataFrame], keys: list[str], subtitle: str, title: str):
    """Notebooks 03-05: metrics over steps, one line per run."""
    long = pd.concat([f.assign(run=name) for name, f in frames.items()], ignore_index=True)
    keys = [k for k in keys if k in long and long[k].notna().any()]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        sns.lineplot(data=long, x="step", y=key, hue="run", marker="o", ax=ax)
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(LABELS.get(key, key))
        handles, labels = ax.get_legend_handles_labels()
        ax.get_legend().remove()
    # one legend for all panels, beside them, so no line hides behind it
    fig.legend(handles, labels, title="run", loc="center left", bbox_to_anchor=(1.0, 0.5))
    _title(fig, title, subtitle)
    fig.tight_layout()
    return fig


def word_shift(shift: pd.DataFrame, subtitle: str):
    """Change of each epistemic word's count per response, after minus before training."""
    long = shift.reset_index(names="word").melt(id_vars="word", var_name="run", value_name="change")
    fig, ax = plt.subplots(figsize=(9, 3.8))
    sns.barplot(data=long, x="word", y="change", hue="run", ax=ax)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("epistemic word")
    ax.set_ylabel("change in count per response\n(after - before training)")
    _title(fig, "Per-word change of epistemic verbalization (OOD evaluation)", subtitle)
    fig.tight_layout()
    return fig


def accuracy_bars(table: pd.DataFrame, subtitle: str, title: str):
    """Accuracy (avg@k) per model and benchmark: Table 2-style comparison."""
    long = table.reset_index(names="model").melt(
        id_vars="model", var_name="benchmark", value_name="accuracy"
    )
    fig, ax = plt.subplots(figsize=(10, 3.8))
    sns.barplot(data=long, x="benchmark", y="accuracy", hue="model", ax=ax)
    ax.tick_params(axis="x", rotation=10)
    ax.set_xlabel("evaluation set")
    ax.set_ylabel("accuracy (avg@k)")
    sns.move_legend(ax, "center left", bbox_to_anchor=(1.0, 0.5))
    _title(fig, title, subtitle)
    fig.tight_layout()
    return fig


def coverage_lines(table: pd.DataFrame, subtitle: str):
    """Notebook 05: in-domain training score, OOD accuracy and length against |D|."""
    cols = [
        ("train_score", "in-domain training reward (last steps)"),
        ("ood_accuracy", "OOD accuracy (avg@k)"),
        ("len_tokens", "response length (tokens)"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (col, label) in zip(axes, cols, strict=True):
        sns.lineplot(data=table, x="size", y=col, hue="algo", marker="o", ax=ax)
        if "base_" + col in table:
            base = float(table["base_" + col].iloc[0])
            ax.axhline(base, color="gray", linestyle="--", label="base model")
            low, high = ax.get_ylim()  # keep the base line inside the panel
            ax.set_ylim(min(low, base * 0.95), max(high, base * 1.05))
        ax.set_xscale("log", base=2)
        sizes = sorted(table["size"].unique())
        ax.set_xticks(sizes, labels=[str(s) for s in sizes])
        ax.set_xlabel("distinct training problems |D|")
        ax.set_ylabel(label)
    handles, labels = axes[1].get_legend_handles_labels()  # the panel with the base line
    for ax in axes:
        ax.get_legend().remove()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5))
    _title(fig, "Task coverage: training score vs OOD accuracy", subtitle)
    fig.tight_layout()
    return fig
