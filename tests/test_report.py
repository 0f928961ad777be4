"""sdlib.report: the run's report reads like a results section. Findings first, lifted from
the notes; compact main tables; notes rendered as Markdown with nothing data-derived passed
through as HTML; captions under the figures; report.md holds the same sections."""

import re
from html.parser import HTMLParser

import pandas as pd
import pytest

from sdlib.experiments import tables
from sdlib.experiments.results import (
    MAX_COLUMNS,
    Results,
    compact,
    read_table,
    split_findings,
)
from sdlib.report import SECTIONS, markdown_table, render_markdown, tidy_notes, write_report

MEASURES = ("accuracy", "length", "epistemic", "epistemic_word", "truncated")
HOSTILE = "<script>alert(1)</script>"


def wide_table(benchmark: str = "organism:affine:heldout:50") -> pd.DataFrame:
    """A (model, benchmark) table as ``tables.by_benchmark`` writes one: 33 columns."""
    rows = {}
    for model, value, delta in (("GRPO", 0.84, None), ("SDPO", 0.313, -0.527)):
        row = {}
        for i, m in enumerate(MEASURES):
            v = value * (1 + 100 * (m == "length")) + i
            row |= {m: v, f"{m}_lo": v - 0.1, f"{m}_hi": v + 0.1}
        row |= {"seeds": 3, "problems": 50, "samples": 300}
        if delta is not None:
            for m in MEASURES:
                row |= {f"Δ{m}": delta, f"Δ{m}_lo": delta - 0.123, f"Δ{m}_hi": delta + 0.127}
        rows[(model, benchmark)] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(["model", "benchmark"])


def figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [1, 0])
    return fig


@pytest.fixture
def run(tmp_path):
    """A run folder of two notebooks' results: 03 (known, with findings, a caption, an
    uncaptioned figure and a hostile note) and 08 (unknown to the report, no findings)."""
    res = Results(tmp_path / "03_sdpo_vs_grpo")
    table = res.table("sdpo_vs_grpo", wide_table())
    res.table("hostile", wide_table(benchmark="<img src=x onerror=alert(1)>"))
    res.figure("ood_over_training", figure(), caption="SDPO's curves fall; GRPO's hold.")
    res.figure("word_shift", figure())
    found = tables.finding("SDPO minus GRPO", tables.rows(table, "SDPO"), "Δaccuracy")
    lines = ["Each run against GRPO:", *(f"- {x}" for x in tables.notes(table)), "**bold**"]
    res.notes([*lines, "", HOSTILE, "![x](javascript:alert(2))"], findings=[found])
    other = Results(tmp_path / "08_sketch")
    other.table("small", pd.DataFrame({"x": [1.0]}, index=pd.Index(["a"], name="run")))
    other.notes(["Nothing to see."])
    return tmp_path


class Page(HTMLParser):
    """The html's visible text, its h2 headings, and its tables' rows (cells per row)
    outside and inside <details>."""

    def __init__(self, html: str):
        super().__init__()
        self.text, self.h2, self.rows = [], [], {"main": [], "details": []}
        self._details, self._in, self._skip = 0, None, 0
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "details":
            self._details += 1
        elif tag in ("style", "script"):
            self._skip += 1
        elif tag == "h2":
            self._in = "h2"
            self.h2.append("")
        elif tag == "tr":
            self.rows["details" if self._details else "main"].append(0)
        elif tag in ("td", "th") and self.rows["details" if self._details else "main"]:
            self.rows["details" if self._details else "main"][-1] += 1

    def handle_endtag(self, tag):
        if tag == "details":
            self._details -= 1
        elif tag in ("style", "script"):
            self._skip -= 1
        elif tag == "h2":
            self._in = None

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)
            if self._in == "h2":
                self.h2[-1] += data


def report(root):
    md, html = write_report(root, ["00_model_organism", "03_sdpo_vs_grpo", "08_sketch"])
    return md.read_text(), html.read_text()


def test_the_findings_open_the_report_and_are_lifted_from_the_notes(run):
    md, html = report(run)
    page = Page(html)
    assert page.h2[:2] == ["Findings", "Contents"]
    top = html[html.index("<h2>Findings") : html.index("<h2>Contents")]
    assert "SDPO minus GRPO: -0.527 [-0.650, -0.400]" in top and "exceeds noise" in top
    assert "50 problems, 300 samples, 3 seeds" in top
    assert md.index("-0.527 [-0.650, -0.400]") < md.index("## Contents")
    # change a number in the notes: the findings say the new one
    notes = run / "03_sdpo_vs_grpo" / "notes.md"
    notes.write_text(notes.read_text().replace("-0.527 [", "-0.611 [", 1))
    md, html = report(run)
    top = html[html.index("<h2>Findings") : html.index("<h2>Contents")]
    assert "-0.611 [-0.650, -0.400]" in top and "-0.527" not in top
    assert "-0.611 [-0.650, -0.400]" in md.split("## Contents")[0]


def test_no_table_in_the_main_body_is_wider_than_eight_columns(run):
    _, html = report(run)
    page = Page(html)
    assert page.rows["main"] and max(page.rows["main"]) <= MAX_COLUMNS
    assert max(page.rows["details"]) > MAX_COLUMNS  # the full tables, collapsed
    assert "0.313 [0.213, 0.413]" in html  # a value and its interval in one cell
    assert "<th>epistemic_word</th>" not in html.split("<details>")[0]  # a detail column


def test_notes_are_rendered_as_markdown(run):
    _, html = report(run)
    text = "".join(Page(html).text)
    assert "**" not in text and "<strong>bold</strong>" in html
    assert "<li>SDPO / organism:affine:heldout:50, accuracy minus the reference" in html
    assert not [x for x in text.splitlines() if x.lstrip().startswith(("- ", "# "))]


def test_data_derived_text_is_escaped(run):
    _, html = report(run)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "javascript:" not in html
    md_html = render_markdown("a <b onclick=x>b</b>\n\n<div>c</div>")
    assert "<b " not in md_html and "<div>" not in md_html
    md = markdown_table(compact(wide_table(benchmark="![p](javascript:x)|<b>_i_")))
    assert "| ![p\\](javascript:x)\\|\\<b\\>\\_i\\_ |" in md  # shown as text
    assert "| 0.313 [0.213, 0.413] |" in md  # numbers as they are


def test_figures_carry_their_captions_first_the_headline(run):
    _, html = report(run)
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", html)
    assert captions == ["SDPO&#x27;s curves fall; GRPO&#x27;s hold.", "Word shift"]
    assert (run / "03_sdpo_vs_grpo" / "figures" / "ood_over_training.txt").exists()
    assert html.count("src='data:image/png;base64,") == 2 and "figures/" not in html


def test_sections_have_titles_questions_and_the_markdown_report_the_same_sections(run):
    md, html = report(run)
    page = Page(html)
    about = SECTIONS["03_sdpo_vs_grpo"]
    assert page.h2 == ["Findings", "Contents", about.title, "08 · sketch"]
    assert re.findall(r"^## (.*)$", md, flags=re.M) == page.h2
    assert about.question in html and f"*{about.question}*" in md
    assert (
        "![SDPO's curves fall; GRPO's hold.](03_sdpo_vs_grpo/figures/ood_over_training.png)" in md
    )
    header = next(x for x in md.splitlines() if x.startswith("| model"))
    assert header.count(" | ") + 1 <= MAX_COLUMNS
    assert "(03_sdpo_vs_grpo/tables/sdpo_vs_grpo.csv)" in md  # the full tables, linked


def test_view_shows_the_compact_table_and_the_full_one_on_request(run):
    res = Results.load(run / "03_sdpo_vs_grpo")
    small = res.view("sdpo_vs_grpo")
    assert small.index.nlevels + small.shape[1] <= MAX_COLUMNS
    assert list(small.columns) == ["accuracy", "Δaccuracy", "Δlength", "Δepistemic", "n"]
    assert small.loc[("SDPO", "organism:affine:heldout:50"), "Δaccuracy"] == (
        "-0.527 [-0.650, -0.400]"
    )
    assert small.loc[("GRPO", "organism:affine:heldout:50"), "n"] == "50 · 300 · 3"
    full = res.view("sdpo_vs_grpo", full=True)
    assert {"epistemic_word", "Δtruncated", "length"} <= set(full.columns)
    assert res.tables["sdpo_vs_grpo"].shape[1] == 33  # the numbers themselves, kept


def test_tables_read_back_with_their_index_and_compact_keeps_short_ones_whole(tmp_path):
    res = Results(tmp_path)
    res.table("t", wide_table())
    back = read_table(tmp_path / "tables" / "t.csv")
    assert back.index.names == ["model", "benchmark"] and back.shape == (2, 33)
    short = pd.DataFrame({"steps": [3, 40], "share": [0.25, 0.5]}, index=["a", "b"])
    assert compact(short).to_dict("list") == {"steps": ["3", "40"], "share": ["0.250", "0.500"]}


def test_findings_round_trip_through_notes_md(tmp_path):
    res = Results(tmp_path)
    res.notes(["- a note", "more"], findings=["first.", "second."])
    assert split_findings(res.text) == (["first.", "second."], "- a note\nmore\n")
    res.notes(["- a note"])
    assert split_findings(res.text) == ([], "- a note\n")


def test_a_finding_says_each_verdict_and_the_sizes_once():
    table = pd.concat([wide_table(), wide_table("organism:bracket:heldout:50")])
    table.loc[("SDPO", "organism:bracket:heldout:50"), ["Δaccuracy_lo", "Δaccuracy_hi"]] = [
        -0.6,
        0.2,
    ]
    both = tables.finding("SDPO minus GRPO", tables.rows(table, "SDPO"), "Δaccuracy")
    assert "(organism:affine:heldout:50, exceeds noise)" in both
    assert "(organism:bracket:heldout:50, within noise)" in both
    assert both.endswith("; 50 problems, 300 samples, 3 seeds each.")
    one = tables.finding("x", {"": table.iloc[1]}, "Δaccuracy")
    assert one == (
        "x: -0.527 [-0.650, -0.400]; exceeds noise (the interval excludes 0; "
        "50 problems, 300 samples, 3 seeds)."
    )
    assert tables.finding("x", {"": table.iloc[0]}, "Δaccuracy") == ""  # no difference


def test_prose_after_a_list_becomes_its_own_paragraph_code_untouched():
    notes = "Intro:\n- one\n- two\nNext part:\n- three\n```\n- code\nsaid\n```\n"
    assert (
        tidy_notes(notes) == "Intro:\n- one\n- two\n\nNext part:\n- three\n```\n- code\nsaid\n```\n"
    )
    assert "<p>Next part:</p>" in render_markdown(tidy_notes(notes))
