"""The run's report, written like a paper's results section: ``report.md`` (figures linked)
and ``report.html`` (one self-contained file, figures embedded, to mail or attach), from
each notebook's results folder (``sdlib.experiments.results``).

    Findings    each experiment's findings (the list opening its notes.md), lifted as they are
    Contents    one line per section: its title and its question
    a section per notebook, in the study's order: its title and question (``SECTIONS``),
                its findings, the headline figure and its caption, the headline table in
                compact form (``results.compact``: at most 8 columns, ``v [lo, hi]`` cells),
                the rest of its notes, then its other figures and every table in full
                (collapsed in the html; csv links in the markdown)

The html renders the same Markdown the .md file holds. Everything read from the run is
escaped: notes are rendered with raw HTML shown as text, never passed through; table
cells, names and captions are HTML-escaped.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import io
import re
from html import escape
from pathlib import Path

import pandas as pd

from sdlib.experiments.results import SIZE_COLUMN, caption, compact, read_table, split_findings
from sdlib.runfolder import write_atomic


@dataclasses.dataclass(frozen=True)
class About:
    """What a section says before its data: a title, the question it asks, and which of its
    figures and tables lead it (their names; empty: the first)."""

    title: str
    question: str = ""
    figure: str = ""
    table: str = ""


SECTIONS = {
    "00_model_organism": About(
        "00 · The model organism",
        "Does checking pay in the organism: does a reply that searches with checks beat a "
        "direct answer on unseen problems?",
        "premise",
        "premise",
    ),
    "01_context_richness": About(
        "01 · Context richness",
        "How does what the model sees in its context (nothing, a full solution, the solution "
        "without its thinking, a regenerated one) change the accuracy, length and epistemic "
        "words of its answers?",
        "conditions",
        "table1",
    ),
    "02_sft_guided_vs_unguided": About(
        "02 · SFT on guided vs unguided responses",
        "Does fine-tuning on the short, confident answers written with the solution in "
        "context (D_sg) cost held-out accuracy that fine-tuning on unguided answers (D_ug) "
        "does not?",
        "accuracy",
        "guided_vs_unguided",
    ),
    "03_sdpo_vs_grpo": About(
        "03 · SDPO vs GRPO",
        "Trained on the same problems, does self-distillation (SDPO) lose held-out accuracy, "
        "length and epistemic words where GRPO does not?",
        "ood_over_training",
        "sdpo_vs_grpo",
    ),
    "04_fixed_vs_moving_teacher": About(
        "04 · Fixed vs moving teacher",
        "Does a teacher that follows the student (an EMA of its weights) cost more held-out "
        "accuracy than a teacher fixed at the initial policy?",
        "ood_over_training",
        "ema_vs_fixed",
    ),
    "05_task_coverage": About(
        "05 · Task coverage",
        "Does SDPO's cost depend on how many distinct problems it trains on, and does it "
        "win anything when they are few?",
        "coverage",
        "coverage",
    ),
    "06_mechanism": About(
        "06 · The mechanism",
        "Which link of the study's account does the accuracy cost depend on: the epistemic "
        "words themselves, checks that pay, or a teacher that stops checking?",
        "effects",
        "verdicts",
    ),
    "07_remedies": About(
        "07 · The remedies, on one bench",
        "Of the teachers and losses proposed since the study, which keep held-out accuracy, "
        "which keep self-distillation's efficiency, and which do neither, trained and "
        "evaluated alike?",
        "bench",
        "bench",
    ),
}


@dataclasses.dataclass
class Section:
    """One notebook's results folder, read for the report."""

    name: str
    about: About
    findings: list[str]
    notes: str  # the notes after their findings (Markdown)
    tables: dict[str, pd.DataFrame]
    figures: list[Path]  # the headline figure first

    @property
    def headline_table(self) -> str | None:
        if self.about.table in self.tables:
            return self.about.table
        return next(iter(self.tables), None)


def read_section(root: Path, name: str) -> Section:
    folder = root / name
    notes = folder / "notes.md"
    findings, rest = split_findings(notes.read_text() if notes.exists() else "")
    about = SECTIONS.get(name) or About(_readable(name))
    figures = sorted(folder.glob("figures/*.png"), key=lambda p: (p.stem != about.figure, p.stem))
    tables = {p.stem: read_table(p) for p in sorted(folder.glob("tables/*.csv"))}
    return Section(name, about, findings, rest, tables, figures)


def write_report(root: Path, names: list[str]) -> tuple[Path, Path]:
    """``report.md`` and ``report.html`` in ``root`` over the notebooks ``names`` whose
    results folders exist there, in that order; returns their paths."""
    root = Path(root)
    sections = [read_section(root, n) for n in names if (root / n).is_dir()]
    md_path, html_path = root / "report.md", root / "report.html"
    write_atomic(md_path, markdown_report(root, sections))
    write_atomic(html_path, html_report(root, sections))
    return md_path, html_path


# ---- the parts both files share, as Markdown ----------------------------------------


def findings_markdown(sections: list[Section]) -> str:
    """One bullet per experiment: its title (a link to its section, where the rest of its
    findings are) and its headline finding (the first)."""
    lines = [f"- **[{s.about.title}](#{s.name})**: {s.findings[0]}" for s in sections if s.findings]
    return "\n".join(lines) or "No notebook of this run wrote findings."


def contents_markdown(sections: list[Section]) -> str:
    return "\n".join(
        f"{i}. [{s.about.title}](#{s.name})" + (f": {s.about.question}" if s.about.question else "")
        for i, s in enumerate(sections, 1)
    )


def table_caption(name: str, frame: pd.DataFrame) -> str:
    """What a compact table's cells mean."""
    said = [f"Table {_readable(name)}: each value with its 95% interval, v [low, high]"]
    if any(str(c).startswith("Δ") for c in frame.columns):
        said.append("Δ: a paired difference from the reference (the rows without one, or the base)")
    if SIZE_COLUMN in frame.columns:
        said.append(f"{SIZE_COLUMN}: the problems · samples · seeds each interval rests on")
    return "; ".join(said) + "."


# ---- report.md ----------------------------------------------------------------------


def markdown_report(root: Path, sections: list[Section]) -> str:
    out = [f"# sdlib report: {_md_text(root.name)}", "", "## Findings", ""]
    out += [findings_markdown(sections), "", "## Contents", "", contents_markdown(sections), ""]
    for s in sections:
        out += [f'<a id="{s.name}"></a>', "", f"## {s.about.title}", ""]
        out += [f"*{s.about.question}*", ""] if s.about.question else []
        out += [f"- {f}" for f in s.findings] + ([""] if s.findings else [])
        out += _md_figures(root, s.figures[:1])
        if (name := s.headline_table) is not None:
            small = compact(s.tables[name])
            out += [markdown_table(small), "", f"*{_md_text(table_caption(name, small))}*", ""]
        out += [tidy_notes(s.notes)] if s.notes.strip() else []
        if s.figures[1:]:
            out += ["### More figures", "", *_md_figures(root, s.figures[1:])]
        if s.tables:
            links = [f"[{n}.csv]({s.name}/tables/{n}.csv)" for n in s.tables]
            out += ["### Full tables", "", ", ".join(links), ""]
    return "\n".join(out) + "\n"


def _md_figures(root: Path, pngs: list[Path]) -> list[str]:
    out = []
    for png in pngs:
        text = _md_text(caption(png))
        out += [f"![{text}]({png.relative_to(root).as_posix()})", "", f"*{text}*", ""]
    return out


def markdown_table(frame: pd.DataFrame) -> str:
    """A pipe table of a compact frame: its index levels first, every cell as text."""
    head = [*_level_names(frame), *map(str, frame.columns)]
    rows = [[*labels, *row] for labels, row in _rows(frame)]
    lines = ["| " + " | ".join(_md_text(str(v)) for v in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_md_text(str(v)) for v in r) + " |" for r in rows]
    return "\n".join(lines)


# what can start markup in a line of text: a link or image needs "](", "][" or "]:" (so
# a bracket before anything else stays plain, as in "v [lo, hi]"), emphasis an underscore
# at a word's edge (D_sg stays plain)
_MD_ACTIVE = re.compile(r"[\\`*<>|&]|\](?=[(\[:])|(?<![^\W_])_|_(?![^\W_])")


def _md_text(text: str) -> str:
    """Text shown as itself in Markdown (no link, image, emphasis or HTML can start)."""
    return _MD_ACTIVE.sub(lambda m: "\\" + m.group(0), " ".join(text.splitlines()))


# ---- report.html --------------------------------------------------------------------


def html_report(root: Path, sections: list[Section]) -> str:
    body = [
        f"<h1>sdlib report: {escape(root.name)}</h1>",
        f"<p class=meta>{len(sections)} notebooks · 95% intervals throughout · the run folder "
        f"holds every table as csv</p>",
        "<section id=findings class=findings><h2>Findings</h2>",
        render_markdown(findings_markdown(sections)),
        "</section>",
        "<nav id=contents><h2>Contents</h2>",
        render_markdown(contents_markdown(sections)),
        "</nav>",
    ]
    for s in sections:
        body += _html_section(s)
    return PAGE.format(title=escape(root.name), style=STYLE, body="\n".join(body))


def _html_section(s: Section) -> list[str]:
    out = [f'<section id="{escape(s.name)}">', f"<h2>{escape(s.about.title)}</h2>"]
    if s.about.question:
        out.append(f"<p class=question>{escape(s.about.question)}</p>")
    if s.findings:
        out.append(render_markdown("\n".join(f"- {f}" for f in s.findings)))
    out += [_html_figure(p) for p in s.figures[:1]]
    if (name := s.headline_table) is not None:
        small = compact(s.tables[name])
        out.append(html_table(small, table_caption(name, small)))
    if s.notes.strip():
        out.append(f"<div class=notes>{render_markdown(tidy_notes(s.notes))}</div>")
    if s.figures[1:]:
        out.append(f"<details><summary>More figures ({len(s.figures) - 1})</summary>")
        out += [_html_figure(p) for p in s.figures[1:]] + ["</details>"]
    if s.tables:
        out.append(f"<details><summary>Full tables ({len(s.tables)})</summary>")
        for name, frame in s.tables.items():
            link = f"{escape(s.name)}/tables/{escape(name)}.csv"
            out.append(f"<h4>{escape(name)} <a href='{link}'>csv</a></h4>")
            out.append(html_table(compact(frame, None)))
        out.append("</details>")
    return [*out, "</section>"]


def _html_figure(png: Path) -> str:
    text = escape(caption(png))
    return (
        f"<figure><img alt='{text}' src='data:image/png;base64,{_embedded(png)}'>"
        f"<figcaption>{text}</figcaption></figure>"
    )


def html_table(frame: pd.DataFrame, title: str = "") -> str:
    """A compact frame as an html table in a box that scrolls sideways if it must; text
    columns left-aligned, numbers right, a label repeated from the row above left out."""
    text = [not all(_NUMBER.match(str(v)) or not v for v in frame[c]) for c in frame.columns]
    names = [*_level_names(frame), *map(str, frame.columns)]
    left = [True] * frame.index.nlevels + text
    head = "".join(
        f"<th class=level>{escape(n)}</th>" if t else f"<th>{escape(n)}</th>"
        for n, t in zip(names, left, strict=True)
    )
    rows = []
    for labels, values in _rows(frame):
        cells = "".join(f"<th scope=row>{escape(v)}</th>" for v in labels)
        cells += "".join(
            f"<td class=text>{escape(str(v))}</td>" if t else f"<td>{escape(str(v))}</td>"
            for v, t in zip(values, text, strict=True)
        )
        rows.append(f"<tr>{cells}</tr>")
    cap = f"<caption>{escape(title)}</caption>" if title else ""
    return (
        f"<div class=scroll><table>{cap}<thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


_NUMBER = re.compile(r"^[+-]?[\d.,]")


@functools.cache
def _renderer():
    import mistune

    class TextOnlyHTML(mistune.HTMLRenderer):
        """Markdown's own markup rendered; raw HTML in the source shown as text."""

        def inline_html(self, html: str) -> str:
            return escape(html)

        def block_html(self, html: str) -> str:
            return f"<p>{escape(html.strip())}</p>\n"

    return mistune.create_markdown(renderer=TextOnlyHTML(escape=False))


def render_markdown(text: str) -> str:
    """Markdown as html, never passing raw HTML through (notes carry data-derived names)."""
    return _renderer()(text)


def tidy_notes(text: str) -> str:
    """Notes as both files show them: a line of prose right after a list starts its own
    paragraph (notes write ``- item`` then ``Next part:`` with no blank line between,
    which Markdown would fold into the item); code blocks left alone."""
    out, fenced, listed = [], False, False
    for line in text.strip("\n").splitlines():
        if line.startswith("```"):
            fenced, listed = not fenced, False
        elif not fenced:
            prose = line.strip() and not line.startswith((" ", "\t", "- "))
            if listed and prose:
                out.append("")
            listed = line.startswith("- ") or (listed and line.startswith((" ", "\t")))
        out.append(line)
    return "\n".join(out) + "\n"


def _embedded(png: Path) -> str:
    """The figure as base64, its colours reduced to a palette (plots lose nothing visible;
    the file shrinks about four times) when Pillow can."""
    data = png.read_bytes()
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            small = im.convert("RGB").quantize(
                colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE
            )
            palette = small.getpalette()
            lightest = max(range(len(palette) // 3), key=lambda i: sum(palette[3 * i : 3 * i + 3]))
            if min(palette[3 * lightest : 3 * lightest + 3]) >= 250:  # the paper: white again
                palette[3 * lightest : 3 * lightest + 3] = [255, 255, 255]
                small.putpalette(palette)
            buffer = io.BytesIO()
            small.save(buffer, format="PNG", optimize=True)
        data = min(data, buffer.getvalue(), key=len)
    except (ImportError, OSError, ValueError):
        pass  # the figure as it is
    return base64.b64encode(data).decode()


# ---- helpers ------------------------------------------------------------------------


def _readable(name: str) -> str:
    """``03_sdpo_vs_grpo`` -> ``03 · sdpo vs grpo``; ``table1`` -> ``table1``."""
    number, _, rest = name.partition("_")
    if number.isdigit() and rest:
        return f"{number} · {rest.replace('_', ' ')}"
    return name.replace("_", " ")


def _level_names(frame: pd.DataFrame) -> list[str]:
    return [str(n) if n is not None else "" for n in frame.index.names]


def _rows(frame: pd.DataFrame):
    """(index labels, cells) per row, each outer label left blank where the row above
    has the same ones (a paper table's grouping)."""
    before: list[str] = []
    for key, cells in zip(frame.index, frame.itertuples(index=False, name=None), strict=True):
        labels = [str(v) for v in (key if frame.index.nlevels > 1 else [key])]
        shown = list(labels)
        for i in range(len(labels) - 1):
            if labels[: i + 1] != before[: i + 1]:
                break
            shown[i] = ""
        before = labels
        yield shown, cells


STYLE = """
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f;
  max-width: 80rem; margin: 0 auto; padding: 1.5rem 2rem 4rem; }
h1 { font-size: 1.8rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.45rem; margin-top: 2.8rem; border-bottom: 1px solid #ddd; }
h3, h4 { margin: 1.2rem 0 0.4rem; }
.meta, .question { color: #555; }
.question { font-size: 1.1rem; font-style: italic; }
.findings { background: #f4f7fb; border: 1px solid #d6e0ee; border-radius: 6px;
  padding: 0 1.2rem 0.4rem; }
.findings h2 { border: 0; margin-top: 1rem; }
figure { margin: 1.2rem 0; }
figure img { display: block; max-width: 100%; height: auto; }
figcaption { font-size: 0.92rem; color: #333; margin-top: 0.3rem; }
.scroll { overflow-x: auto; max-width: 100%; margin: 0.6rem 0 1.2rem; }
table { border-collapse: collapse; font-size: 0.86rem; font-variant-numeric: tabular-nums; }
caption { caption-side: bottom; text-align: left; font-size: 0.85rem; color: #555;
  padding-top: 0.3rem; }
th, td { padding: 0.25rem 0.6rem; border-bottom: 1px solid #e3e3e3; text-align: right;
  white-space: nowrap; }
thead th { border-bottom: 2px solid #999; vertical-align: bottom; }
th[scope=row], th.level, td.text { text-align: left; }
th[scope=row] { font-weight: normal; white-space: normal; }
td.text { white-space: normal; min-width: 8rem; }
.notes { font-size: 0.95rem; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; background: #f6f6f6; padding: 0.6rem;
  font-size: 0.8rem; }
details { margin: 0.8rem 0; }
summary { cursor: pointer; font-weight: 600; }
"""

PAGE = """<!doctype html>
<html lang=en><head><meta charset="utf-8">
<meta name=viewport content="width=device-width, initial-scale=1">
<title>sdlib report: {title}</title>
<style>{style}</style></head><body>
{body}
</body></html>
"""
