"""sdlib.experiments.tables: the notes a reader sees carry data-derived names as text."""

import math

import pandas as pd
import pytest

from sdlib.experiments.tables import markdown_text, notes


def _table(index):
    row = {"Δaccuracy": 0.1, "Δaccuracy_lo": 0.05, "Δaccuracy_hi": 0.2}
    row |= {"seeds": 3, "problems": 50, "samples": 300}
    return pd.DataFrame([row], index=pd.MultiIndex.from_tuples([index]))


def test_a_problem_set_named_like_html_or_markdown_stays_text_in_the_notes():
    hostile = "<img src=x onerror=alert(1)>![p](javascript:alert(2))**bold**"
    (line,) = notes(_table(("SDPO", hostile)), measures=("accuracy",))
    assert "<img" not in line and "](" not in line and "**" not in line
    assert "&lt;img src=x onerror=alert\\(1\\)&gt;" in line
    assert markdown_text("organism:affine:heldout:50") == "organism:affine:heldout:50"


def test_efficiency_measure_against_a_hand_computed_run():
    from sdlib.experiments.coverage import efficiency

    metrics = pd.DataFrame(
        {
            "step": [0, 1, 2, 3],  # steps count from 0 in metrics.jsonl
            "rollout/reward_mean": [0.5, 0.8, 0.95, 1.0],
            "rollout/len_tokens": [100.0, 80.0, 50.0, 40.0],
        }
    )
    got = efficiency(metrics, responses_per_step=4, reach=0.9)
    assert got["steps to reach"] == 3  # three steps ran, the third the first at or above 0.9
    assert got["tokens to reach"] == (100 + 80 + 50) * 4
    # correct responses (0.5 + 0.8 + 0.95 + 1.0) * 4 over (100 + 80 + 50 + 40) * 4 tokens
    assert got["correct per 1k tokens"] == pytest.approx(1000 * 3.25 / 270)
    never = efficiency(metrics, responses_per_step=4, reach=1.01)
    assert math.isnan(never["steps to reach"]) and math.isnan(never["tokens to reach"])
    assert efficiency(metrics, 4, 0.5)["steps to reach"] == 1  # reached at once
