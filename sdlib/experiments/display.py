"""HTML a notebook shows beside its tables: response cards with the study's epistemic words
marked, and a response's tokens coloured by a per-token value (the teacher's pressure).

A response is model output, so it is text and nothing else here: every piece of it passes
through ``html.escape`` before any markup is put around it. Everything fits a notebook's
text width (``WIDTH``) and wraps; a long response scrolls inside its card.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sdlib.behavior import EPISTEMIC_WORDS

WIDTH = 950  # px: a notebook's text column
RAISES, LOWERS = (33, 102, 172), (178, 24, 43)  # blue, red: a diverging pair
MOST_ALPHA = 0.75  # the strongest colour, light enough to read black text on
_WORD_RES = [re.compile(re.escape(w), re.IGNORECASE) for w in EPISTEMIC_WORDS]
_MARK = "background:#ffe08a;font-weight:600;border-radius:2px"
_TEXT = (
    "white-space:pre-wrap;overflow-wrap:anywhere;font-family:ui-monospace,monospace;"
    "font-size:12px;line-height:1.5"
)


class Html(str):
    """HTML text that a notebook displays rendered (``IPython.display`` calls
    ``_repr_html_``); its plain repr stays one line."""

    def _repr_html_(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        return f"<Html: {len(self):,} characters, shown rendered in a notebook>"


def epistemic_spans(text: str) -> list[tuple[int, int]]:
    """Where the study's epistemic words occur in ``text``: the paper's count (substring,
    case-insensitive; ``sdlib.behavior``), as sorted (start, end) character spans, one per
    counted occurrence, so ``len(epistemic_spans(t)) == behavior.epistemic_total(t)``."""
    return sorted((m.start(), m.end()) for r in _WORD_RES for m in r.finditer(text))


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in spans:
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(end, out[-1][1]))
        else:
            out.append((start, end))
    return out


def highlight(text: str) -> str:
    """``text`` escaped, with each epistemic word wrapped in a ``<mark>``."""
    out, at = [], 0
    for start, end in _merged(epistemic_spans(text)):
        out.append(html.escape(text[at:start]))
        out.append(f'<mark style="{_MARK}">{html.escape(text[start:end])}</mark>')
        at = end
    out.append(html.escape(text[at:]))
    return "".join(out)


@dataclass(frozen=True)
class Response:
    """One response as a card shows it."""

    label: str  # the method or condition: "base", "SDPO", "full solution"
    text: str
    correct: bool | None = None  # None: not graded here
    tokens: int | None = None  # response length in the model's tokens
    answer: str | None = None  # the extracted final answer ("": none; None: not shown)
    context: str | None = None  # what the prompt carried besides the problem, shown folded


def _badge(text: str, colour: str) -> str:
    style = f"background:{colour};color:#fff;border-radius:3px;padding:0 5px;margin-right:4px"
    return f'<span style="{style}">{html.escape(text)}</span>'


def card(r: Response) -> str:
    """One response: its label, grade, length and epistemic count, then its text."""
    grade = {True: _badge("correct", "#1a7f37"), False: _badge("wrong", "#b42318")}.get(
        r.correct, _badge("not graded", "#6e7781")
    )
    facts = [f"{len(epistemic_spans(r.text))} epistemic words"]
    if r.tokens is not None:
        facts.insert(0, f"{r.tokens:,} tokens")
    if r.answer is not None:
        facts.append(f"answer {r.answer}" if r.answer else "no final answer")
    context = ""
    if r.context is not None:
        context = (
            '<details style="margin:4px 0"><summary>context in the prompt</summary>'
            f'<div style="{_TEXT};color:#57606a">{html.escape(r.context)}</div></details>'
        )
    return (
        '<div style="border:1px solid #d0d7de;border-radius:6px;padding:8px;min-width:0">'
        f'<div style="font-weight:600;margin-bottom:2px">{html.escape(r.label)}</div>'
        f'<div style="font-size:12px;margin-bottom:4px">{grade}'
        f"{html.escape(' · '.join(facts))}</div>{context}"
        f'<div style="{_TEXT};max-height:420px;overflow-y:auto">{highlight(r.text)}</div></div>'
    )


def cards(responses: Sequence[Response], heading: str = "", note: str = "") -> Html:
    """Cards side by side (as many per row as fit ``WIDTH``, then wrapping), under a
    ``heading`` (the problem) and a ``note`` (how the response was chosen); both are text."""
    grid = (
        f"display:grid;grid-template-columns:repeat(auto-fill,minmax(290px,1fr));gap:8px;"
        f"max-width:{WIDTH}px"
    )
    return Html(
        f'<div style="max-width:{WIDTH}px">{_head(heading, note)}'
        f'<div style="{grid}">{"".join(card(r) for r in responses)}</div>'
        f'<div style="font-size:11px;color:#57606a;margin-top:4px">'
        f'<mark style="{_MARK}">marked</mark>: the study\'s epistemic words (its substring '
        f"count: {html.escape(', '.join(EPISTEMIC_WORDS))})</div></div>"
    )


def _head(heading: str, note: str) -> str:
    out = f'<div style="{_TEXT};font-size:13px;margin:4px 0">{html.escape(heading)}</div>'
    if note:
        out += (
            f'<div style="font-size:11px;color:#57606a;margin-bottom:6px">{html.escape(note)}</div>'
        )
    return out


def colour(value: float, scale: float) -> str:
    """An rgba background for ``value`` on a diverging scale: blue above 0, red below, the
    strongest (``MOST_ALPHA``) at |value| >= ``scale``."""
    alpha = MOST_ALPHA * min(abs(value) / scale, 1.0) if scale > 0 else 0.0
    r, g, b = RAISES if value > 0 else LOWERS
    return f"rgba({r},{g},{b},{alpha:.3f})"


def coloured_tokens(
    text: str,
    spans: Sequence[tuple[int, int]],
    values: np.ndarray,
    marked: np.ndarray,
    scale: float,
    describe=None,
) -> str:
    """``text`` with token i (characters ``spans[i]``) on ``colour(values[i], scale)``,
    tokens where ``marked`` underlined in bold; ``describe(i)``, when given, is token i's
    hover text. Text outside the tokens' spans and a token's leading spaces stay plain."""
    out, at = [], 0
    for i, (start, end) in enumerate(spans):
        start = max(start, at)  # tokens of one character (a split byte) share its span
        piece = text[start:end]
        start += len(piece) - len(piece.lstrip())  # a token's leading space stays plain
        out.append(html.escape(text[at:start]))
        style = f"background:{colour(float(values[i]), scale)}"
        if marked[i]:
            style += ";font-weight:700;border-bottom:2px solid #000"
        tip = html.escape(describe(i) if describe else f"{values[i]:+.2f}", quote=True)
        out.append(f'<span style="{style}" title="{tip}">{html.escape(text[start:end])}</span>')
        at = max(at, end)
    out.append(html.escape(text[at:]))
    return f'<div style="{_TEXT};max-height:420px;overflow-y:auto">{"".join(out)}</div>'


def legend(scale: float, low: str, high: str, unit: str = "nats") -> str:
    """A small colour bar from -``scale`` (``low``) through 0 to +``scale`` (``high``)."""
    steps = np.linspace(-scale, scale, 11)
    bar = "".join(
        f'<span style="display:inline-block;width:16px;height:12px;'
        f'background:{colour(float(v), scale)}"></span>'
        for v in steps
    )
    words = html.escape(f"{low} (-{scale:.2f} {unit} or less)")
    more = html.escape(f"{high} (+{scale:.2f} {unit} or more)")
    return (
        f'<div style="font-size:11px;color:#24292f;margin:4px 0">{words} {bar} {more}; '
        f'<span style="font-weight:700;border-bottom:2px solid #000">bold underlined</span>: '
        f"a token of an epistemic word; hover a token for its value</div>"
    )


def block(title: str, body: str) -> str:
    """A titled section (the title is text)."""
    return (
        f'<div style="margin:8px 0;max-width:{WIDTH}px"><div style="font-weight:600">'
        f"{html.escape(title)}</div>{body}</div>"
    )
