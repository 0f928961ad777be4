"""Answer extraction and equivalence checking, safe on hostile model output.

Public API
    answer_part(text) -> str | None           text after the last ``</think>``
    extract_answer(text) -> str | None        last ``\\boxed{}`` in the answer part, else a
                                              ``<answer>`` tag, else an ``Answer:`` line
    grade(pred, gold, timeout=5.0) -> Grade    Grade(correct, reason)
    is_equivalent(pred, gold, timeout=5.0) -> bool
    grade_response(response_text, gold, timeout=5.0) -> Grade

``Grade.reason`` is one of
    exact      decided without symbolic maths: same canonical string, same rational number
               (``1,000 == 1000``, ``0.5 == \\frac12 == 1/2``), or same choice letter
    symbolic   math-verify found them equivalent
    mismatch   decided unequal (fast path or math-verify)
    no_answer  no answer could be extracted
    timeout    the symbolic check ran past ``timeout`` seconds; its worker was restarted
    error      the symbolic check could not run: the input was refused as too large or
               explosive (see ``_too_complex``), or the worker crashed

Order of checks in ``grade``: multiple choice (gold is a letter A-J) -> canonical strings ->
exact rationals -> math-verify in a child process. A fast numeric mismatch is final unless
a side is written as a decimal or a percentage, because math-verify is more lenient there
(it rounds decimals, and reads ``50\\%`` as both 50 and 0.5), and we grade as it does.

Safety: model text is never given to eval/exec/sympify/parse_expr in this process.
Symbolic checks run in a long-lived child process (``_Worker``) with a memory cap; a
wall-clock timeout kills and restarts it. This works off the main thread and inside
daemonic worker processes, where math-verify's own SIGALRM timeouts cannot.
"""

from __future__ import annotations

import atexit
import os
import re
import socket
import subprocess
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from multiprocessing.connection import Connection
from pathlib import Path

THINK_CLOSE = "</think>"
THINK_OPEN = "<think>"
MAX_FAST_CHARS = 1000  # longer strings skip the fast path (no ints over ~1000 digits)
MAX_SYMBOLIC_CHARS = 1000  # longer strings are refused by the symbolic path
MAX_BRACE_DEPTH = 24
WORKER_MEMORY_BYTES = 2 << 30  # address-space cap for the child (sympy can eat RAM)
WORKER_STARTUP_S = 120.0  # importing sympy on a loaded machine can be slow
CACHE_SIZE = 1 << 16


@dataclass(frozen=True)
class Grade:
    correct: bool
    reason: str  # exact | symbolic | mismatch | no_answer | timeout | error


# ----------------------------------------------------------------------------- extraction

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_ANSWER_LINE_RE = re.compile(r"[ \t>#*_]*(?:final[ \t]+)?answer[ \t*_]*[:\uff1a](.*)", re.I)


def answer_part(text: str) -> str | None:
    """The part of a response after its last ``</think>``.

    No ``</think>`` and an opening ``<think>``: the response stopped mid-thought -> None.
    No think tags at all: the whole text (non-thinking models)."""
    cut = text.rfind(THINK_CLOSE)
    if cut >= 0:
        return text[cut + len(THINK_CLOSE) :]
    return None if THINK_OPEN in text else text


def _braced(text: str, i: int) -> str | None:
    """Content of the brace group opening at ``text[i] == '{'``, or None if unbalanced.

    One linear pass; ``\\{`` and ``\\}`` are escaped braces and do not count."""
    depth, j, n = 0, i, len(text)
    while j < n:
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
        j += 1
    return None


def _last_box(text: str) -> tuple[bool, str | None]:
    """(found, content) of the last ``\\boxed{..}``, ``\\boxed x`` or ``\\fbox{..}``.

    A last box that is unbalanced or empty gives (True, None): the answer was cut off, and
    an earlier box would be a stale answer."""
    last = None
    for last in _BOX_RE.finditer(text):  # noqa: B007 - only the last match is wanted
        pass
    if last is None:
        return False, None
    i, n = last.end(), len(text)
    while i < n and text[i] in " \t":
        i += 1
    if i < n and text[i] == "{":
        content = _braced(text, i)
    else:  # "\boxed 5$": the token up to whitespace or a closing dollar
        j = i
        while j < n and not text[j].isspace() and text[j] != "$":
            j += 1
        content = text[i:j]
    content = content.strip() if content is not None else None
    return True, content or None


def _answer_tag(text: str) -> str | None:
    """Content of the last ``<answer>...</answer>`` (the chemistry prompt's format)."""
    i = text.rfind("<answer>")
    j = text.find("</answer>", i) if i >= 0 else -1
    if j < 0:
        return None
    return text[i + len("<answer>") : j].strip() or None


def _answer_line(text: str) -> str | None:
    """Content of the last line reading ``Answer: ...`` (also ``**Answer:**``, ``Final answer:``)."""
    for line in reversed(text.splitlines()):
        m = _ANSWER_LINE_RE.match(line)
        if m:
            content = m.group(1).strip().strip("*_").strip().strip("$").strip()
            content = content[:-1].rstrip() if content.endswith(".") else content
            if content:
                return content
    return None


def extract_answer(text: str) -> str | None:
    """The final answer of a response, or None.

    Search the answer part (``answer_part``) for the last box; if it has none, the last
    ``<answer>`` tag; then the last ``Answer:`` line. Linear time in ``len(text)``."""
    part = answer_part(text)
    if part is None:
        return None
    found, content = _last_box(part)
    if found:
        return content
    return _answer_tag(part) or _answer_line(part)


# ---------------------------------------------------------------------- fast exact path

_SPACING_RE = re.compile(r"\\\\|\\[!,;: ]|~")  # "\\\\" (a row break) is matched to be kept
_THIN_COMMA_RE = re.compile(r"(?:\{,\}|,\\!)\s*")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right|displaystyle)(?![A-Za-z])")
_FRAC_CMD_RE = re.compile(r"\\[dt]frac(?![A-Za-z])")
_LOOSE_SPACE_RE = re.compile(r"(?<=\W) | (?=\W)")
_DEGREE_RE = re.compile(r"(?:\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|°)$")
_UNIT_RE = re.compile(r"\\(?:text|mbox|mathrm)\s*\{[^{}]*\}(?:\s*\^\s*\{?\d\}?)?$")
_WRAPPED_TEXT_RE = re.compile(r"\\(?:text|mbox|mathrm)\s*\{([^{}]*)\}")
_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(?:[, ]\d{3})+(?:\.\d+)?")
_DECIMAL_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_SLASH_RE = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))/([+-]?(?:\d+(?:\.\d*)?|\.\d+))")
_FRAC_RE = re.compile(r"([+-]?)(\d*)\s*\\frac\s*(?:\{([^{}]*)\}|(\d))\s*(?:\{([^{}]*)\}|(\d))")


def _canon(s: str) -> str:
    """A spelling-only canonical form: equal canonical strings are the same maths.

    Drops ``$``, spacing commands, ``\\left``/``\\right``, maps ``\\dfrac``/``\\tfrac`` to
    ``\\frac``, and removes spaces except between two word characters (``\\pi r``, ``2 3``)."""
    s = s.replace("\\$", "").replace("$", "")
    s = _SPACING_RE.sub(" ", s)
    s = _FRAC_CMD_RE.sub(r"\\frac", _LEFT_RIGHT_RE.sub("", s))
    return _LOOSE_SPACE_RE.sub("", " ".join(s.split()))


def _strip_decorations(s: str) -> tuple[str, bool]:
    """(number-like core, had a percent sign): drop currency, degrees, units, spacing.

    ``10,\\!080`` -> ``10,080``; ``864 \\mbox{ inches}^2`` -> ``864``; ``\\text{5}`` -> ``5``."""
    s = s.replace("{,}", ",").replace(",\\!", ",").replace("\\$", "").replace("$", "")
    s = " ".join(_SPACING_RE.sub(" ", s).split())
    percent = s.endswith("%")
    s = s.rstrip("%").removesuffix("\\").strip() if percent else s
    for _ in range(3):  # a few trailing decorations, e.g. "5 \text{ m}^2" or "90^\circ"
        s = _UNIT_RE.sub("", _DEGREE_RE.sub("", s)).strip()
    s = _WRAPPED_TEXT_RE.fullmatch(s).group(1).strip() if _WRAPPED_TEXT_RE.fullmatch(s) else s
    s = s.replace(", ", ",") if _THOUSANDS_RE.fullmatch(s.replace(", ", ",")) else s
    return s, percent


def _plain_number(s: str) -> Fraction | None:
    """``-12``, ``1,000``, ``1 000``, ``.5``, ``3.25`` as an exact Fraction, else None."""
    s = s.strip()
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "").replace(" ", "")
    return Fraction(s) if _DECIMAL_RE.fullmatch(s) else None


def _frac_value(m: re.Match) -> Fraction | None:
    """Value of a matched ``[sign][whole]\\frac{a}{b}``; a whole part makes a mixed number."""
    sign, whole, n1, n2, d1, d2 = m.groups()
    num, den = _plain_number(n1 if n1 is not None else n2), _plain_number(d1 or d2)
    if num is None or den is None or den == 0:
        return None
    value = num / den
    if whole:  # "1\frac{4}{5}" is 1 4/5, the competition convention (math-verify agrees)
        if value < 0:
            return None
        value += int(whole)
    return -value if sign == "-" else value


def _number(s: str) -> tuple[frozenset[Fraction], bool] | None:
    """(possible exact values, written as decimal or percent) of a number-like answer.

    Integers, decimals, ``a/b``, ``\\frac{a}{b}`` (``\\dfrac``, ``\\tfrac``, ``\\frac12``),
    mixed numbers; currency, degrees, units and thousands separators are dropped. A
    percentage reads as both ``v`` and ``v/100``. None for anything else, and for strings
    over MAX_FAST_CHARS (so no int is built from more than ~1000 digits)."""
    if len(s) > MAX_FAST_CHARS:
        return None
    core, percent = _strip_decorations(_FRAC_CMD_RE.sub(r"\\frac", s))
    value = _plain_number(core)
    if value is None and (m := _SLASH_RE.fullmatch(core)):
        num, den = _plain_number(m.group(1)), _plain_number(m.group(2))
        value = num / den if den else None
    if value is None and (m := _FRAC_RE.fullmatch(core)):
        value = _frac_value(m)
    if value is None:
        return None
    values = frozenset({value, value / 100}) if percent else frozenset({value})
    return values, percent or "." in core


def _fast_equal(pred: str, gold: str) -> bool | None:
    """True/False when exact rational arithmetic decides, None to ask math-verify."""
    p, g = _number(pred), _number(gold)
    if p is None or g is None:
        return None
    if p[0] & g[0]:
        return True
    return None if (p[1] or g[1]) else False


# --------------------------------------------------------------------- multiple choice

_CHOICE_STRIP_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*|[{}$*]")
_CHOICE_RE = re.compile(r"\(?([A-J])(?![A-Za-z0-9])")


def _choice_letter(s: str, whole: bool = False) -> str | None:
    """The option letter an answer names: ``B``, ``(B)``, ``B.``, ``\\text{(B)}``, ``B: 4.2``.

    ``whole=True`` (for golds) accepts only a bare letter, optionally in parentheses."""
    s = _CHOICE_STRIP_RE.sub("", s[:200]).strip()
    if whole:
        m = re.fullmatch(r"\(?([A-J])\)?", s)
    else:
        m = _CHOICE_RE.match(s)
    return m.group(1) if m else None
