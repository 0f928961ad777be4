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


def _run(rewards, lengths):
    from types import SimpleNamespace

    metrics = pd.DataFrame({"rollout/reward_mean": rewards, "rollout/len_tokens": lengths})
    return SimpleNamespace(
        metrics=metrics, config=SimpleNamespace(prompts_per_step=2, rollouts_per_prompt=2)
    )


def test_efficiency_notes_say_where_a_regime_starts_and_which_intervals_are_apart():
    from sdlib.experiments.coverage import efficiency_notes, efficiency_row, efficiency_table

    short = [_run([0.4, 0.95, 1.0], [20.0, 10.0, 10.0]) for _ in range(3)]
    long = [_run([0.5, 0.6, 0.92 + 0.01 * i], [100.0, 100.0, 90.0]) for i in range(3)]
    easy = [_run([0.95, 1.0, 1.0], [50.0, 50.0, 50.0]) for _ in range(3)]
    table = efficiency_table(
        {
            ("SDPO", "|D|=1, 64 tokens"): efficiency_row(short, 0.9),
            ("GRPO", "|D|=1, 64 tokens"): efficiency_row(long, 0.9),
            ("SDPO", "|D|=8"): efficiency_row(easy, 0.9),
        }
    )
    row = table.loc[("GRPO", "|D|=1, 64 tokens")]
    assert row["start reward"] == pytest.approx(0.5)  # the untrained policy's first step
    assert row["steps to reach"] == 3 and row["tokens to reach"] == (100 + 100 + 90) * 4
    # the last half of the steps (steps 2 and 3), averaged over the seeds' 0.92, 0.93, 0.94
    assert row["late reward"] == pytest.approx((0.6 + 0.93) / 2)
    budget, easy_line = efficiency_notes(table, 0.9)
    assert budget.startswith("|D|=1, 64 tokens: starts at reward 0.45 (below 0.9)")
    # SDPO: 2 steps and 120 tokens in every seed, GRPO 3 steps and 1,160: apart
    assert "their intervals of tokens to reach are apart (exceeds noise" in budget
    assert easy_line.startswith("|D|=8: starts at reward 0.95 (already at or above 0.9)")
    # one seed reaching it on a side: no interval there, so no comparison of them is made
    lone = [_run([0.5, 0.6, 0.7], [100.0] * 3)] * 2 + [_run([0.5, 0.95, 1.0], [90.0] * 3)]
    table = efficiency_table(
        {("SDPO", "x"): efficiency_row(short, 0.9), ("GRPO", "x"): efficiency_row(lone, 0.9)}
    )
    (line,) = efficiency_notes(table, 0.9)
    assert "GRPO 1/3 seeds reached 0.9 (one seed: after 2 steps and 720 generated tokens)" in line
    assert "intervals of tokens to reach" not in line
