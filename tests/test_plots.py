"""Figures: one colour per method everywhere, numbered legends in numeric order, text that
stays legible at a notebook's width."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.container import BarContainer
from matplotlib.text import Text

from sdlib import plots

SUBTITLE = "organism · preset organism · seeds [0, 1, 2]"
SHOWN_PX = 950  # a JupyterLab notebook's output width; wider images are scaled down to it
DPI = 120  # sdlib.experiments.results.Results.figure saves at this


def estimates(index, columns, seed=0) -> pd.DataFrame:
    """A table of values with their intervals (``m``, ``m_lo``, ``m_hi``)."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(index=index)
    for col in columns:
        value = rng.uniform(0.2, 0.8, len(frame))
        frame[col], frame[f"{col}_lo"], frame[f"{col}_hi"] = value, value - 0.1, value + 0.1
    return frame


def curves(runs, keys, steps=(0, 5, 10)) -> pd.DataFrame:
    index = pd.MultiIndex.from_product([runs, steps], names=["run", "step"])
    return estimates(index, keys)


def by_model(models, benchmarks=("organism:affine:heldout:50", "organism:bracket:heldout:50")):
    index = pd.MultiIndex.from_product([models, benchmarks], names=["model", "benchmark"])
    return estimates(index, ["accuracy", "length", "epistemic"])


def coverage(algos=("SDPO", "GRPO"), sizes=(1, 8, 1200)):
    index = pd.MultiIndex.from_product([algos, sizes], names=["algo", "size"])
    table = estimates(index, ["train_score", "accuracy", "length"])
    return table, estimates(pd.Index(["base"]), ["accuracy", "length"])


def word_shift(runs):
    words = ["wait", "hmm", "perhaps", "maybe", "actually"]
    index = pd.MultiIndex.from_product([words, runs], names=["word", "run"])
    return estimates(index, ["change"])


def specificity(runs, top=15):
    rows = {
        (run, f"word{i}"): {"change": 0.1 * i, "rank": i + 1, "epistemic": i % 4 == 0}
        for run in runs
        for i in range(top)
    }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(["run", "word"])


def drawn_colours(fig) -> dict[str, str]:
    """label -> colour of every labelled line and bar series of the figure, and of every
    panel titled with a label."""
    found = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            if not line.get_label().startswith("_"):
                found[line.get_label()] = to_hex(line.get_color())
        for bars in ax.containers:
            if isinstance(bars, BarContainer) and not bars.get_label().startswith("_"):
                found[bars.get_label()] = to_hex(bars.patches[0].get_facecolor())
        if ax.get_title():
            found[ax.get_title()] = to_hex(ax.title.get_color())
    plt.close(fig)
    return found


def legend(fig) -> list[str]:
    (shown,) = fig.legends
    labels = [t.get_text() for t in shown.get_texts()]
    plt.close(fig)
    return labels


def test_a_method_has_one_colour_in_every_figure():
    runs = ["GRPO", "SDPO", "SDPO w/o thinking"]
    figures = [
        plots.training_curves(curves(runs, ["accuracy"]), ["accuracy"], SUBTITLE, "curves"),
        # another order, with the base model first, in bars
        plots.accuracy_bars(by_model(["base", "SDPO w/o thinking", "SDPO", "GRPO"]), SUBTITLE, "x"),
        plots.word_shift(word_shift(["SDPO", "GRPO"]), SUBTITLE),
        plots.coverage_lines(*coverage(), SUBTITLE),
        plots.specificity(specificity(["SDPO", "GRPO"]), SUBTITLE),
        plots.training_curves(
            curves(["SDPO fixed teacher", "SDPO EMA 0.05"], ["a"]), ["a"], "", ""
        ),
    ]
    seen: dict[str, set] = {}
    for fig in figures:
        for label, colour in drawn_colours(fig).items():
            seen.setdefault(label, set()).add(colour)
    assert all(len(c) == 1 for c in seen.values()), seen
    colour = {label: c.pop() for label, c in seen.items()}
    assert len({colour[m] for m in ("base", "GRPO", "SDPO", "SDPO w/o thinking")}) == 4
    assert colour["SDPO fixed teacher"] == colour["SDPO"]  # the same method, notebook 04
    assert colour["SDPO EMA 0.05"] not in {colour["SDPO"], colour["GRPO"]}


def test_numbered_runs_share_their_method_hue_in_numeric_order():
    runs = [f"{algo} |D|={n}" for algo in ("SDPO", "GRPO") for n in (1, 1200, 8)]
    fig = plots.training_curves(curves(runs, ["accuracy"]), ["accuracy"], SUBTITLE, "curves")
    shades = drawn_colours(fig)
    fig = plots.training_curves(curves(runs, ["accuracy"]), ["accuracy"], SUBTITLE, "curves")
    assert legend(fig) == [f"{algo} |D|={n}" for algo in ("SDPO", "GRPO") for n in (1, 8, 1200)]
    assert len(set(shades.values())) == len(runs)
    for algo in ("SDPO", "GRPO"):  # each shade of the method's own colour: the same hue
        base = plt.matplotlib.colors.rgb_to_hsv(plt.matplotlib.colors.to_rgb(plots.PALETTE[algo]))
        for n in (1, 8, 1200):
            rgb = plt.matplotlib.colors.to_rgb(shades[f"{algo} |D|={n}"])
            assert plt.matplotlib.colors.rgb_to_hsv(rgb)[0] == pytest.approx(base[0], abs=0.02)
    assert plots.ordered(["b 10", "a", "b 2", "b 1.5"]) == ["b 1.5", "b 2", "b 10", "a"]


def smallest_text_px(fig) -> float:
    """The smallest text of ``fig`` in pixels as a notebook shows its png: saved at ``DPI``
    (``bbox_inches="tight"``), then scaled down to ``SHOWN_PX`` when wider."""
    fig.set_dpi(DPI)
    width = fig.get_tightbbox(fig.canvas.get_renderer()).width * DPI
    scale = min(1.0, SHOWN_PX / width)
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    plt.close(fig)
    return min(t.get_fontsize() * DPI / 72 * scale for t in texts)


CURVES = ["rollout/reward_mean", "rollout/len_tokens", "rollout/epi_total", "train/divergence"]
MEASURES = ["accuracy", "length", "epistemic"]
FIGURES = {
    "training curves, 4 panels": lambda: plots.training_curves(
        curves(["GRPO", "SDPO", "SDPO w/o thinking"], CURVES), CURVES, SUBTITLE, "x"
    ),
    "training curves, 3 panels": lambda: plots.training_curves(
        curves(["GRPO", "SDPO"], MEASURES), MEASURES, SUBTITLE, "x"
    ),
    "conditions": lambda: plots.condition_bars(
        estimates(
            pd.Index(["unguided", "full solution", "solution w/o thinking", "regeneration"]),
            ["accuracy", "length", "epistemic"],
        ),
        SUBTITLE,
    ),
    "coverage": lambda: plots.coverage_lines(*coverage(), SUBTITLE),
    "effects": lambda: plots.effect_panels(
        estimates(
            pd.Index(["default", "silent", "decorative", "checking"]),
            ["Δaccuracy", "Δlength", "Δepistemic"],
        ),
        SUBTITLE,
    ),
    "specificity": lambda: plots.specificity(
        specificity(["GRPO", "SDPO", "SDPO w/o thinking"]), SUBTITLE
    ),
    "accuracy": lambda: plots.accuracy_bars(by_model(["base", "GRPO", "SDPO"]), SUBTITLE, "x"),
    "word shift": lambda: plots.word_shift(word_shift(["GRPO", "SDPO"]), SUBTITLE),
}


@pytest.mark.parametrize("name", FIGURES)
def test_figures_keep_their_text_legible_at_a_notebooks_width(name):
    assert smallest_text_px(FIGURES[name]()) >= 10
