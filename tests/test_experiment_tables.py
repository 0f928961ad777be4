"""sdlib.experiments.tables: the notes a reader sees carry data-derived names as text."""

import pandas as pd

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
