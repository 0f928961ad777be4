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
    malformed  the answer holds material no stated value holds (see "What an answer may
               hold"); decided without the solver, never correct
    no_answer  no answer could be extracted
    timeout    the symbolic check ran past ``timeout`` seconds; its worker was restarted
    error      not compared: refused before the solver as too large or explosive (see
               "Bounded work"; deterministic), or the worker crashed

Order of checks in ``grade``: the gold's own spelling -> what the answer may hold ->
unicode as TeX -> multiple choice (gold is a letter A-J) -> hedges -> inequalities against
an interval gold -> equations -> trailing material and units -> redundant brackets -> a list
against one value -> canonical strings -> exact numbers -> the structural bound ->
math-verify in a child process.

Rules (``rules="careful"``, the default: what a careful human grader says). Each is tested
on labelled pairs in tests/test_grading_rules.py, with no false positive allowed.
    choice      against a letter gold, the answer names exactly one option: ``B``, ``(B)``,
                ``B: 4.2``; ``A, B``, ``A or B``, ``A/B``, ``(A) (C)`` hedge and are wrong
    units       units on both sides must be the same unit (``5 \\text{ cm}`` is not
                ``5 \\text{ m}``; ``\\text{ meters}`` is ``\\text{ m}``); a unit on one
                side only is ignored, as a human grader would
    hedges      ``\\approx``, ``\\sim``, ``\\simeq``, ``\\cong``, ``\\propto`` state no
                value: wrong unless the gold has one
    equations   ``name = value`` and ``value = name`` state the value (``x = 3``,
                ``3 = x``, ``f(x) = 3``); so does a chain ``x = 2 + 3 = 5`` whose middle
                parts assign nothing else; a chain without variables (``6/2 = 3``) states a
                value when every side is it; ``x = 3 \\text{ and } y = 4``, ``x = 1, y = 4``
                and ``x - 2 = -2`` state none
    lists       an answer with a top-level comma is a list and never one value (``3, 3``
                for 3); ``1, 000`` style thousands separators are numbers
    intervals   ``1 \\le x \\le 3`` against an interval gold is ``[1, 3]``
    numbers     exact rational arithmetic: integers, decimals, fractions, mixed numbers,
                repeating decimals (``0.\\overline{3}`` is 1/3). A decimal is the number it
                writes (``2.9999999`` is not 3, ``0.33`` not 1/3), except against a decimal
                gold, matched by the answer rounded to the gold's places (1/3 for 0.33). A
                percentage is its number (50% for 50), or its hundredth when the plain side
                is at most 1 in size (50% for 0.5; not ``5000\\%`` for 50). A numeric
                mismatch is final: math-verify is not asked.
    unicode     ``½``, ``√2``, ``3·4``, ``2×3``, ``−3``, ``≤``, ``≈``, ``π`` as their TeX
    symbols     everything else goes to math-verify (LaTeX only, its unit stripping off)

``rules="reference"`` is the study's numeric tolerance, for fidelity when its figures are
compared: numbers within a relative 1e-4, and a percentage also as its hundredth whatever
its size. The study's graders are more lenient than "careful" in more ways. Its training
reward (exact match of the last box, then math-verify 0.9 with its defaults) passes, for
gold 3: ``0.3333333``-style decimals near a fractional gold, ``300\\%``, ``3 \\text{ cm}``
against ``3 \\text{ m}`` (units dropped), ``3, 3`` (the set {3}), ``x \\approx 3`` and
``x - 2 = -2`` for -2 (checked against math-verify 0.9 here). Its evaluation (Qwen-Math's
sympy ``math_equal``) compares numbers with ``isclose(rel_tol=1e-4)`` and tries a reference
as x, x/100 and 100x. "reference" keeps only that numeric leniency: the hedges, dropped
units, lists and stray equations are ways to game a reward, not answers, and stay wrong
under both rules.

What an answer may hold. An answer states a value and nothing that changes it; a policy
must gain nothing from what it writes around the value.
    - Anywhere: no emoji, pictograph, control, format (zero-width, bidi), private-use or
      combining character; no TeX outside maths (``\\input``, ``\\include``, ``\\write18``,
      ``\\def``, ``\\csname``, ``\\catcode``, ``^^``); no command inside ``\\text{}`` prose;
      balanced braces (an unpaired one escapes the box math-verify is handed). Else
      "malformed".
    - After the value, harmless and ignored: spacing, one final period, currency, degree
      signs, and unit notes: ``\\text``/``\\mbox``/``\\mathrm`` holding at most four plain
      words (``5 \\text{ cm}^2``, ``12 \\text{ square units}``); ``\\text{ percent}`` is
      ``\\%``. A trailing note with a digit, maths, or a word that scales, negates or hedges
      (``\\text{ million}``, ``\\text{ 6}``, ``\\text{ or more}``), and a trailing ellipsis,
      make the answer "malformed". A trailing comma or other symbol is compared as written.
    - Bare letters are maths, as LaTeX prints them: ``5 cm`` is 5*c*m, not 5. math-verify's
      own unit stripping (any trailing ``\\text{..}``, ~150 words: ``5 more``, ``2 ab``) is
      switched off; units are decided here only.
    - Brackets around the whole answer that group nothing are dropped: ``((5))`` is 5 (a
      parenthesis pair holding a top-level comma stays: it makes a tuple or an interval).

Bounded work (``_too_complex``, applied to both sides before the solver; "error" beyond):
at most MAX_SYMBOLIC_CHARS characters and MAX_TOKENS tokens, brackets of every kind (``(``,
``[``, ``{``, ``\\{``, ``\\left(``, ``\\langle``, ...) nested at most MAX_DEPTH deep, at
most MAX_BARS ``|``, elementary functions nested at most MAX_CALL_DEPTH deep, power towers
at most MAX_POWER_HEIGHT high (and not two high on a number), exponents under 10^4,
factorials of numbers under 10^5 and never of powers or of factorials. Every reference gold
is far inside these (32 tokens, depth 2). Small shapes can still hold huge work
(``(x+1)^{9999}``): the wall-clock timeout bounds those, and a restart's import comes on top
of the next call. tests/test_grading_hostile.py measures the guarantees on 4,000 seeded
hostile responses: no exception, nothing executed, every call back within its timeout plus
0.5 s.

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
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from multiprocessing.connection import Connection
from pathlib import Path

from sdlib.prompts import split_thinking

MAX_FAST_CHARS = 1000  # longer strings skip the fast path (no ints over ~1000 digits)
MAX_SYMBOLIC_CHARS = 1000  # longer strings are refused by the symbolic path
MAX_DEPTH = 8  # brackets of every kind together; solver time grows ~1.6x a level past this
MAX_TOKENS = 256  # commands, numbers and symbols; a long flat sum or set costs ~1 s at 1000
MAX_BARS = 16  # | and \| cannot be paired, so they are counted: 66 bars ran past 1 s
MAX_CALL_DEPTH = 3  # nested elementary functions: five nested \tan take over 5 s
MAX_POWER_HEIGHT = 2  # e^{x^2} is fine, e^{e^{e^{x}}} is a bomb
MAX_NOTES = 4  # trailing decorations removed from one answer (period, unit notes)
WORKER_MEMORY_BYTES = 2 << 30  # address-space cap for the child (sympy can eat RAM)
WORKER_STARTUP_S = 120.0  # importing sympy on a loaded machine can be slow
CACHE_SIZE = 1 << 16
# Bumped whenever a rule changes a grade: stored grades of another version are recomputed
# (sdlib.evaluate) and training runs are keyed by it (sdlib.experiments.training).
VERSION = 2
RULES = ("careful", "reference")  # see the module docstring, "Rules"
REFERENCE_REL_TOL = Fraction(1, 10_000)  # math_equal's isclose(rel_tol=1e-4)


@dataclass(frozen=True)
class Grade:
    correct: bool
    reason: str  # exact | symbolic | mismatch | malformed | no_answer | timeout | error


# ----------------------------------------------------------------------------- extraction

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_ANSWER_LINE_RE = re.compile(r"[ \t>#*_]*(?:final[ \t]+)?answer[ \t*_]*[:\uff1a](.*)", re.I)


def answer_part(text: str) -> str | None:
    """The part of a response after its last ``</think>`` (``prompts.split_thinking``):
    None when it stopped mid-thought, the whole text when it has no think tags."""
    return split_thinking(text)[1]


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
    """Content of the last ``Answer: ...`` line (also ``**Answer:**``, ``Final answer:``)."""
    for line in reversed(text.splitlines()):
        m = _ANSWER_LINE_RE.match(line)
        if m:
            content = m.group(1).lstrip(" \t*_$").rstrip(" \t*_$.")  # "**Answer:** $42$."
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


# ------------------------------------------------------------ what an answer may hold

# TeX that is no part of a math answer: files, the shell, macro definitions, catcodes, and
# ``^^5c``-style character codes (a hidden backslash). Nothing here ever runs TeX; a policy
# must not be rewarded for writing these, so an answer holding one is malformed.
_TEX_HAZARD_RE = re.compile(
    r"\\(?:input|include|includeonly|endinput|openin|openout|closein|closeout|read|readline"
    r"|write|immediate|newread|newwrite|def|edef|gdef|xdef|let|futurelet|csname|endcsname"
    r"|expandafter|noexpand|catcode|lccode|uccode|mathcode|newcommand|renewcommand"
    r"|providecommand|newenvironment|renewenvironment|DeclareRobustCommand|usepackage"
    r"|RequirePackage|documentclass|special|shipout|scantokens|everyjob|everypar|everymath"
    r"|afterassignment|aftergroup|jobname|loop|repeat|makeatletter|makeatother|message"
    r"|errmessage|typeout|outer|long|show|showthe|batchmode|nonstopmode|scrollmode|dump"
    r"|href|url|includegraphics|verb|lstinputlisting|directlua|luaexec)(?![A-Za-z])"
    r"|\\[A-Za-z]*@|\^\^"
)
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_PROSE_COMMAND_RE = re.compile(r"\\(?:text(?!style)[a-z]*|mbox)\s*\{[^{}]*\\[A-Za-z]")
_BRACE_RE = re.compile(r"\\.|[{}]", re.S)


def _odd_unicode(c: str) -> bool:
    """Control, format (zero-width joiners, bidi overrides), private-use, unassigned and
    combining characters (emoji keycaps, zalgo), and pictographs: the symbol categories
    outside the letterlike-to-geometric-shapes blocks (U+2100-U+25FF: ℃, ⇒, △) and ``°``."""
    kind = unicodedata.category(c)
    if kind[0] in "CM":
        return True
    return kind in ("So", "Sk") and not ("\u2100" <= c < "\u2600" or c == "°")


def _balanced(s: str) -> bool:
    """Unescaped braces pair up. An unpaired one would break out of the ``\\boxed{..}`` the
    symbolic check wraps the answer in (``5}\\boxed{6`` reads as the set {5, 6})."""
    depth = 0
    for m in _BRACE_RE.finditer(s):
        depth += {"{": 1, "}": -1}.get(m.group(), 0)
        if depth < 0:
            return False
    return depth == 0


def _flaw(s: str) -> str | None:
    """Why ``s`` cannot be a math answer, or None. Linear in ``len(s)``.

    "character": an emoji, control or other non-math character (see ``_odd_unicode``);
    "command": TeX outside maths (``\\input``, ``\\write18``, ``\\def``, ``\\csname``, ``^^``),
    or any command inside ``\\text{}`` prose; "braces": unbalanced braces."""
    if _CONTROL_RE.search(s) or (
        not s.isascii() and any(_odd_unicode(c) for c in set(s) if ord(c) > 127)
    ):
        return "character"
    if _TEX_HAZARD_RE.search(s) or _PROSE_COMMAND_RE.search(s):
        return "command"
    return None if _balanced(s) else "braces"


_SPACING_TAILS = ("\\qquad", "\\quad", "\\,", "\\;", "\\:", "\\!", "\\", "~")  # "\\" was "\ "
_ELLIPSIS_RE = re.compile(r"(?:\\[lc]?dots[a-z]*|\.\.|…)$")
_NOTE_RE = re.compile(
    r"\\(?:text|textrm|textnormal|textup|textit|textbf|mbox|mathrm)\s*\{([^{}\\]*)\}"
    r"(?:\s*\^\s*(?:\{\s*-?\d\s*\}|\d))?$"
)
_UNIT_CHARS_RE = re.compile(r"[A-Za-z .'/°µμΩÅ-]{1,40}")
_UNIT_WORD_RE = re.compile(r"[A-Za-z°µμΩÅ]+")
_PERCENT_WORDS = frozenset({"percent", "percentage", "pct"})
_CONSTANTS = frozenset({"e", "i"})  # 5\mathrm{e}, 2\mathrm{i}: upright maths, not a unit
# Words that scale, negate, compare or hedge a value: "5 \text{ million}", "5 \text{ or more}".
_VALUE_WORDS = frozenset(
    """zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen
    fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty
    ninety hundred hundreds thousand thousands million millions billion billions trillion
    trillions dozen dozens half halves third thirds quarter quarters plus minus times squared
    cubed negative inverse reciprocal more less fewer greater larger smaller least most than
    above below approximately approx about around roughly nearly almost or and nor not no
    none except but if unless otherwise maybe perhaps possibly probably either neither""".split()  # noqa: SIM905 - a word list reads best as words
)


def _rstrip_spacing(s: str) -> str:
    """``s`` without trailing whitespace and spacing commands (``\\,``, ``\\quad``, ``~``)."""
    while True:
        s = s.rstrip()
        tail = next((t for t in _SPACING_TAILS if s.endswith(t)), "")
        if not tail or s.endswith("\\" + tail):  # "\\\\" + "," is a row break then a comma
            return s
        s = s[: -len(tail)]


def _is_unit(note: str) -> bool:
    """A note names a unit: at most four plain words (`` cm``, `` square units``, ``m/s``),
    with no digit, maths or command, and no word that changes or hedges the value."""
    words = _UNIT_WORD_RE.findall(note)
    return (
        _UNIT_CHARS_RE.fullmatch(note) is not None
        and 0 < len(words) <= 4
        and not any(w.lower() in _VALUE_WORDS for w in words)
    )


def _settled(s: str) -> tuple[str, bool, tuple[str, ...]]:
    """(value, honest, units): ``s`` less the trailing material that leaves its value alone,
    whether what follows the value is only such material, and the units it removed.

    Removed: spacing, one final period, unit notes (``\\text{ cm}^2``, see ``_is_unit``); a
    ``\\text{ percent}`` note becomes ``\\%``. Not honest: a trailing note that is not a unit
    (``\\text{ million}``, ``\\text{ 6}``, ``\\text{ or more}``) or an ellipsis (the answer
    goes on). A whole-answer ``\\text{Evelyn}`` is the value, not a note."""
    units: list[str] = []
    for _ in range(MAX_NOTES):
        s = _rstrip_spacing(s)
        if _ELLIPSIS_RE.search(s):
            return s, False, tuple(units)
        note = _NOTE_RE.search(s)
        if s.endswith(".") and len(s) > 1:
            s = s[:-1]
        elif note is None or not s[: note.start()].strip() or note.group(1) in _CONSTANTS:
            return s, True, tuple(units)
        elif note.group(1).strip().lower() in _PERCENT_WORDS:
            s = s[: note.start()] + "\\%"
        elif _is_unit(note.group(1)):
            units.append(_unit_name(note.group()))
            s = s[: note.start()]
        else:
            return s, False, tuple(units)
    return _rstrip_spacing(s), True, tuple(units)


# one spelling per unit (plural "s" dropped first): what differs after this is another unit
_UNIT_SPELLINGS = {
    "centimetre": "cm", "centimeter": "cm", "metre": "m", "meter": "m", "kilometre": "km",
    "kilometer": "km", "millimetre": "mm", "millimeter": "mm", "kilogram": "kg", "gram": "g",
    "milligram": "mg", "second": "s", "sec": "s", "minute": "min", "hour": "h", "hr": "h",
    "litre": "l", "liter": "l", "millilitre": "ml", "milliliter": "ml", "inche": "in",
    "inch": "in", "foot": "ft", "feet": "ft", "yard": "yd", "mile": "mi", "pound": "lb",
    "ounce": "oz", "degree": "deg", "unit": "unit", "day": "day", "week": "week",
    "year": "yr", "dollar": "dollar", "cent": "cent",
}  # fmt: skip
_POWER_RE = re.compile(r"\^\s*\{?\s*(-?\d)\s*\}?\s*$")


def _unit_name(note: str) -> str:
    """A unit note (``\\text{ cm}^2``, ``\\text{ square meters}``) as one canonical name:
    ``cm^2``, ``m^2``; spellings and plurals of the units above coincide."""
    power = _POWER_RE.search(note)
    exponent = power.group(1) if power else "1"
    inner = _NOTE_RE.search(note).group(1).lower()
    words = _UNIT_WORD_RE.findall(inner.replace("per", "/"))
    for lead, value in (("square", "2"), ("cubic", "3")):
        if words and words[0] == lead:
            words, exponent = words[1:], value
    names = []
    for w in words:
        w = w[:-1] if len(w) > 3 and w.endswith("s") else w
        names.append(_UNIT_SPELLINGS.get(w, w))
    name = "/".join(names) if "/" in inner else " ".join(names)
    return name if exponent == "1" else f"{name}^{exponent}"


def _drop_notes(s: str) -> str:
    """``s`` less its harmless trailing material (see ``_settled``)."""
    return _settled(s)[0]


_SIZED_RE = re.compile(r"\\(?:left|right)\s*(?=[()\[\]|]|\\[{}|])")  # \left( is (


def _pairs(s: str) -> tuple[dict[int, int], float]:
    """(partner, comma_depth) in one pass: where the ``(`` or ``{`` opening at each index
    closes, and the fewest visible brackets around any comma (braces print as nothing)."""
    partner: dict[int, int] = {}
    stack: list[tuple[int, str]] = []
    visible, comma_depth, i = 0, float("inf"), 0
    while i < len(s):
        token = s[i : i + 2] if s[i] == "\\" else s[i]
        if token in ("(", "[", "{", "\\{"):
            stack.append((i, token))
            visible += token != "{"
        elif token in (")", "]", "}", "\\}") and stack:
            j, opener = stack.pop()
            visible -= opener != "{"
            if opener + token in ("()", "{}"):
                partner[j] = i
        elif token == ",":
            comma_depth = min(comma_depth, visible)
        i += len(token)
    return partner, comma_depth


def _unwrap(s: str) -> str:
    """``s`` without brackets around the whole of it that group nothing: ``((5))`` is ``5``,
    ``\\left(\\left(x\\right)\\right)`` is ``x``. Braces always go; parentheses go unless they
    hold a top-level comma (a tuple or an interval: ``((1, 2))`` is ``(1, 2)``)."""
    if len(s) > MAX_SYMBOLIC_CHARS:
        return s
    s = _SIZED_RE.sub("", s).strip()
    partner, comma_depth = _pairs(s)
    i, j, peeled = 0, len(s) - 1, 0  # peeled: parenthesis layers removed so far
    while i < j and partner.get(i) == j:
        if s[i] == "(":
            if comma_depth == peeled + 1:
                break
            peeled += 1
        i, j = i + 1, j - 1
        while i < j and s[i].isspace():
            i += 1
        while j > i and s[j].isspace():
            j -= 1
    return s[i : j + 1]


# ---------------------------------------------------------------------- fast exact path

_SPACING_RE = re.compile(r"\\\\|\\[!,;: ]|~")  # "\\\\" (a row break) is matched to be kept
_THIN_COMMA_RE = re.compile(r"(?:\{,\}|,\\!)\s*")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right|displaystyle)(?![A-Za-z])")
_FRAC_CMD_RE = re.compile(r"\\[dt]frac(?![A-Za-z])")
_LOOSE_SPACE_RE = re.compile(r"(?<=\W) | (?=\W)")
_DEGREE_RE = re.compile(r"(?:\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|°)$")
_WRAPPED_TEXT_RE = re.compile(r"\\(?:text|mbox|mathrm)\s*\{([^{}]*)\}")
_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(?:[, ]\d{3})+(?:\.\d+)?")
_DECIMAL_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_SLASH_RE = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))/([+-]?(?:\d+(?:\.\d*)?|\.\d+))")
_FRAC_RE = re.compile(r"([+-]?)(\d*)\s*\\frac\s*(?:\{([^{}]*)\}|(\d))\s*(?:\{([^{}]*)\}|(\d))")


def _unspace(s: str) -> str:
    """Spacing commands (``\\!``, ``\\,``, ``\\ ``, ``~``) to plain spaces; row breaks kept."""
    return _SPACING_RE.sub(lambda m: m.group() if m.group() == "\\\\" else " ", s)


def _canon(s: str) -> str:
    """A spelling-only canonical form: equal canonical strings are the same maths.

    Drops ``$``, spacing commands, ``\\left``/``\\right``, maps ``\\dfrac``/``\\tfrac`` to
    ``\\frac``, and removes spaces except between two word characters (``\\pi r``, ``2 3``)."""
    s = _unspace(s.replace("\\$", "").replace("$", ""))
    s = _FRAC_CMD_RE.sub(r"\\frac", _LEFT_RIGHT_RE.sub("", s))
    return _LOOSE_SPACE_RE.sub("", " ".join(s.split()))


def _strip_decorations(s: str) -> tuple[str, bool]:
    """(number-like core, had a percent sign): drop currency, degrees, units, spacing.

    ``10,\\!080`` -> ``10,080``; ``864 \\mbox{ inches}^2`` -> ``864``; ``\\text{5}`` -> ``5``.
    Only notes that name a unit go (``_drop_notes``): ``5 \\text{ million}`` is no number."""
    s = _THIN_COMMA_RE.sub(",", s).replace("\\$", "").replace("$", "")
    s = _drop_notes(" ".join(_unspace(s).split()))
    percent = s.endswith("%")
    s = s.rstrip("%").removesuffix("\\").strip() if percent else s
    if m := _WRAPPED_TEXT_RE.fullmatch(s):
        s = m.group(1).strip()
    for _ in range(3):  # a few trailing decorations, e.g. "5 \\text{ m}^2" or "90^\\circ"
        s = _drop_notes(_DEGREE_RE.sub("", s))
    return s, percent


_REPEATING_RE = re.compile(r"([+-]?)(\d*)\.(\d*)\\overline\s*\{(\d+)\}")


def _plain_number(s: str) -> Fraction | None:
    """``-12``, ``1,000``, ``1 000``, ``.5``, ``3.25``, ``0.1\\overline{6}`` (a repeating
    decimal) as an exact Fraction, else None."""
    s = s.strip()
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "").replace(" ", "")
    if m := _REPEATING_RE.fullmatch(s):
        sign, whole, fixed, cycle = m.groups()
        value = Fraction(int(whole or 0)) + Fraction(int(fixed or 0), 10 ** len(fixed))
        value += Fraction(int(cycle), (10 ** len(cycle) - 1) * 10 ** len(fixed))
        return -value if sign == "-" else value
    return Fraction(s) if _DECIMAL_RE.fullmatch(s) else None


def _frac_value(m: re.Match) -> Fraction | None:
    """Value of a matched ``[sign][whole]\\frac{a}{b}``; a whole part makes a mixed number."""
    sign, whole, n1, n2, d1, d2 = m.groups()
    num = _plain_number(n1 if n1 is not None else n2)
    den = _plain_number(d1 if d1 is not None else d2)
    if num is None or den is None or den == 0:
        return None
    value = num / den
    if whole:  # "1\frac{4}{5}" is 1 4/5, the competition convention (math-verify agrees)
        if value < 0:
            return None
        value += int(whole)
    return -value if sign == "-" else value


@dataclass(frozen=True)
class _Num:
    """A number-like answer: its exact value, the decimal places it was written to (None:
    exact, an integer, a fraction or a repeating decimal), and whether it is a percentage."""

    value: Fraction
    places: int | None
    percent: bool


def _number(s: str) -> _Num | None:
    """A number-like answer, or None.

    Integers, decimals, ``a/b``, ``\\frac{a}{b}`` (``\\dfrac``, ``\\tfrac``, ``\\frac12``),
    mixed numbers, repeating decimals; currency, degrees, units and thousands separators are
    dropped. None for anything else, and for strings over MAX_FAST_CHARS (so no int is
    built from more than ~1000 digits)."""
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
    digits = _DECIMAL_RE.fullmatch(core.replace(",", "").replace(" ", ""))
    places = len(core.split(".")[1]) if digits and "." in core else None
    return _Num(value, places, percent)


def _rounded(value: Fraction, places: int) -> Fraction:
    """``value`` rounded half away from zero to ``places`` decimal places, exactly."""
    scale = 10**places
    scaled = abs(value) * scale
    whole = scaled.numerator // scaled.denominator
    if scaled - whole >= Fraction(1, 2):
        whole += 1
    return Fraction(whole if value >= 0 else -whole, scale)


def _same_number(p: _Num, g: _Num, rules: str = "careful") -> bool:
    """Careful: decimals are the exact numbers they write, except against a decimal gold,
    which an answer matches when its value rounded to the gold's places is the gold
    (``\\frac13`` for a key of 0.33; not 0.33 for a key of ``\\frac13``, nor 2.9999999 for
    3). A percentage matches the plain number it writes (50% for 50) or, when that number
    is at most 1 in size, its hundredth (50% for 0.5; not 5000% for 50).

    Reference (the study's ``math_equal``): equal within a relative 1e-4, each side read as
    written, and a percentage also as its hundredth whatever its size."""
    readings = [(p.value, g.value)]
    if p.percent != g.percent:
        plain = g if p.percent else p
        if rules == "reference" or abs(plain.value) <= 1:
            readings.append((p.value / 100, g.value) if p.percent else (p.value, g.value / 100))
    for pv, gv in readings:
        if pv == gv or (g.places is not None and _rounded(pv, g.places) == gv):
            return True
        if rules == "reference" and abs(pv - gv) <= REFERENCE_REL_TOL * max(abs(pv), abs(gv)):
            return True
    return False


def _fast_equal(pred: str, gold: str, rules: str = "careful") -> bool | None:
    """True/False when both are numbers (exact rational arithmetic, ``_same_number``),
    None to ask math-verify."""
    p, g = _number(pred), _number(gold)
    if p is None or g is None:
        return None
    return _same_number(p, g, rules)


# --------------------------------------------------------------------- multiple choice

_CHOICE_STRIP_RE = re.compile(r"\\(?:textbf|text|mathrm|mathbf)\s*|[{}$*]")
_CHOICE_RE = re.compile(r"\(?([A-J])\)?(?:(?:[.:]\s*|\s+)(.*))?", re.S)
_WHOLE_CHOICE_RE = re.compile(r"\(?([A-J])\)?")
_OTHER_OPTION_RE = re.compile(r"(?<![A-Za-z\\])\(?[A-J]\)?(?![A-Za-z])")


def _choice_letter(s: str, whole: bool = False) -> str | None:
    """The option letter an answer names: ``B``, ``(B)``, ``B.``, ``\\text{(B)}``, ``B: 4.2``.

    One option only: an answer naming a second one (``A, B``, ``A or B``, ``A/B``,
    ``(A) (C)``) hedges and names none. ``whole=True`` (for golds) accepts only a bare
    letter, optionally in parentheses."""
    s = _CHOICE_STRIP_RE.sub("", s[:200]).strip()
    if whole:
        m = _WHOLE_CHOICE_RE.fullmatch(s)
        return m.group(1) if m else None
    m = _CHOICE_RE.fullmatch(s)
    if m is None or _OTHER_OPTION_RE.search(m.group(2) or ""):
        return None
    return m.group(1)


# ------------------------------------------------------------------------ symbolic path

_TOWER_RE = re.compile(r"[\d})\]]\s*\^\s*\{[^{}]*\^")  # 10^{10^{10}}: numbers nobody can build
_BIG_EXPONENT_RE = re.compile(r"\^\s*\{?\s*[+-]?\d{5,}")
_BIG_FACTORIAL_RE = re.compile(r"\d{6,}\s*!|\^\s*\{?\s*\d+\s*\}?\s*\)?\s*!")  # (10^{6})!
_TOKEN_RE = re.compile(r"\\[A-Za-z]+|\\.|\d+|\S", re.S)
_OPENERS = frozenset(
    "( [ { \\{ \\lbrace \\lbrack \\langle \\lceil \\lfloor \\lgroup \\lvert \\lVert".split()  # noqa: SIM905 - a word list reads best as words
)
_CLOSERS = frozenset(
    ") ] } \\} \\rbrace \\rbrack \\rangle \\rceil \\rfloor \\rgroup \\rvert \\rVert".split()  # noqa: SIM905 - a word list reads best as words
)
_BARS = frozenset({"|", "\\|", "\\vert", "\\Vert"})
_FUNCTIONS = frozenset(
    "\\" + name
    for name in """sin cos tan cot sec csc arcsin arccos arctan arccot arcsec arccsc sinh cosh
    tanh coth sech csch exp log ln lg""".split()  # noqa: SIM905 - a word list reads best as words
)


class _Group:
    """An open bracket, as the shape scan sees it."""

    __slots__ = ("call", "power", "factorial", "variable")

    def __init__(self, call: bool = False, power: bool = False) -> None:
        self.call = call  # opened right after an elementary function: \sin(
        self.power = power  # opened right after ^: an exponent
        self.factorial = False  # holds a !
        self.variable = False  # holds a letter: (n+1)! stays symbolic, (10!+1)! is built


class _Shape:
    """Sizes that predict the solver's work, from one pass over an answer's tokens.

    tokens   commands, numbers and other symbols
    bars     ``|``, ``\\|``, ``\\vert``, ``\\Vert``: absolute values and norms, which open and
             close alike and so are counted rather than nested
    depth    deepest bracket nesting, every kind together: ``(``, ``[``, ``{``, ``\\{``, ...
             (``\\left(`` is its ``(``)
    calls    deepest nesting of elementary functions: ``\\tan(\\tan(1))`` is 2
    tower    tallest power tower: 1 + the exponents (``^{..}``, ``^(..)``) around a ``^``
    factorial_of_factorial  ``10!!`` (math-verify reads two factorials), ``(10!)!``,
             ``\\frac{10!}{2}!``: a factorial of a number that holds a factorial
    """

    def __init__(self, s: str) -> None:
        self.tokens = self.bars = self.depth = self.calls = self.tower = 0
        self.factorial_of_factorial = False
        self._open = [_Group()]  # the answer's top level, then each open bracket
        self._calls = self._powers = self._chain = 0
        self._prev, self._closed = "", _Group()
        for token in _TOKEN_RE.findall(s):
            self._take(token)
            self._prev = token

    def _take(self, token: str) -> None:
        self.tokens += 1
        self.bars += token in _BARS
        if token in _OPENERS:
            self._push(_Group(self._prev in _FUNCTIONS, self._prev == "^"))
        elif token in _CLOSERS:
            self._pop()
        elif token == "^":
            self.tower = max(self.tower, self._powers + 1)
        elif token == "!":
            self._factorial()
        elif token in _FUNCTIONS:  # \sin\sin x nests without brackets
            self._chain = self._chain + 1 if self._prev in _FUNCTIONS else 1
            self.calls = max(self.calls, self._calls + self._chain)
        elif token.isalpha():
            self._open[-1].variable = True

    def _push(self, group: _Group) -> None:
        self._open.append(group)
        self._calls += group.call
        self._powers += group.power
        self.depth = max(self.depth, len(self._open) - 1)
        self.calls = max(self.calls, self._calls)

    def _pop(self) -> None:
        if len(self._open) == 1:  # a stray closer, as in the interval [0, 1) )
            return
        self._closed = group = self._open.pop()
        self._calls -= group.call
        self._powers -= group.power
        self._open[-1].factorial |= group.factorial
        self._open[-1].variable |= group.variable

    def _factorial(self) -> None:
        closed = self._closed if self._prev in _CLOSERS else None
        numeric = closed is not None and not closed.variable
        if self._prev == "!" or (numeric and (closed.factorial or self._open[-1].factorial)):
            self.factorial_of_factorial = True
        self._open[-1].factorial = True


def _too_complex(s: str) -> bool:
    """Refuse, before the solver, what would only burn its timeout (see ``_Shape``): over
    MAX_SYMBOLIC_CHARS characters, MAX_TOKENS tokens or MAX_BARS bars; brackets of all kinds
    nested over MAX_DEPTH; elementary functions nested over MAX_CALL_DEPTH; power towers over
    MAX_POWER_HEIGHT or two high on a number; exponents >= 10^4; factorials of numbers >= 10^5,
    of powers, or of factorials. The timeout still guards everything this lets through."""
    if len(s) > MAX_SYMBOLIC_CHARS:
        return True
    shape = _Shape(s)
    if shape.tokens > MAX_TOKENS or shape.bars > MAX_BARS or shape.depth > MAX_DEPTH:
        return True
    if shape.calls > MAX_CALL_DEPTH:
        return True
    if shape.tower > MAX_POWER_HEIGHT or shape.factorial_of_factorial:
        return True
    return any(r.search(s) for r in (_TOWER_RE, _BIG_EXPONENT_RE, _BIG_FACTORIAL_RE))


def _make_checker():
    """Build the math-verify comparison; runs in the worker process only.

    Only ``LatexExtractionConfig`` is used. ``ExprExtractionConfig`` (part of math-verify's
    default) sends plain-text matches through ``sympy.parsing.parse_expr``, which runs
    Python ``eval`` on model text (math_verify/parser.py: ``extract_expr`` ->
    ``parse_expr_cached``, with ``^`` rewritten to ``**``). In math-verify 0.9 a regex
    limits those matches to digits and arithmetic operators, so it is "only" eval of
    ``9**9**9``; one regex change away from running code. The LaTeX path goes through the
    ANTLR grammar of latex2sympy2_extended, which hands ``sympy.Number`` (and so
    ``parse_expr``) nothing but lexer-checked number tokens (tests pin this).
    ``parsing_timeout=None`` and ``timeout_seconds=None`` switch off math-verify's SIGALRM
    timeouts (main thread only); the parent's wall-clock timeout replaces them.

    ``units=False``: math-verify's own unit stripping drops any trailing ``\\text{..}`` and
    ~150 bare words (``5 \\text{ million}``, ``5 more``, ``2 ab`` and ``x+1 t`` all read as the
    bare value). Trailing material is decided here instead (``_settled``, ``_drop_notes``)."""
    import logging

    from math_verify import LatexExtractionConfig, LatexNormalizationConfig, parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # silence "timeout disabled"
    normalization = LatexNormalizationConfig(
        basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all"
    )
    config = [LatexExtractionConfig(normalization_config=normalization)]

    def check(pred: str, gold: str) -> bool:
        pred, gold = _drop_notes(pred), _drop_notes(gold)
        g = parse("\\boxed{" + gold + "}", extraction_config=config, parsing_timeout=None)
        p = parse("\\boxed{" + pred + "}", extraction_config=config, parsing_timeout=None)
        return bool(g and p and verify(g, p, timeout_seconds=None))

    return check


def _limit_memory() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = WORKER_MEMORY_BYTES if hard == resource.RLIM_INFINITY else min(hard, WORKER_MEMORY_BYTES)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def _answer(check, pred: str, gold: str) -> tuple[str, object]:
    try:
        return "ok", check(pred, gold)
    except Exception as e:  # MemoryError (the cap), RecursionError, sympy internals
        return "error", type(e).__name__


def _serve(fd: int) -> None:
    """Worker main loop: answer ``(pred, gold)`` requests on socket ``fd`` until EOF.

    Replies ``("ready", None)`` once, then ``("ok", bool)`` or ``("error", name)`` each."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    _limit_memory()
    conn = Connection(fd)
    try:
        check = _make_checker()
        conn.send(("ready", None))
        while True:
            pred, gold = conn.recv()
            conn.send(_answer(check, pred, gold))
    except (EOFError, OSError):  # the parent closed its end or exited: nothing left to do
        return


class _Worker:
    """One long-lived child process that runs math-verify, behind a lock.

    A plain subprocess talking over a socketpair (not multiprocessing.Process): it starts
    from any thread and also inside daemonic processes (Pool or DataLoader workers), which
    multiprocessing refuses to let have children, and it never re-imports ``__main__``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._ready = False

    def _start(self) -> None:
        parent_sock, child_sock = socket.socketpair()
        # The child imports this very sdlib, and (-P) nothing from the current directory.
        paths = [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
        code = f"from sdlib.grading import _serve; _serve({child_sock.fileno()})"
        with child_sock:
            self._proc = subprocess.Popen(
                [sys.executable, "-P", "-c", code], pass_fds=(child_sock.fileno(),), env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        self._conn, self._ready = Connection(parent_sock.detach()), False

    def _stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def _restart(self) -> None:
        # Start the next child at once, so its imports overlap with the caller's work.
        self._stop()
        try:
            self._start()
        except OSError:  # no processes or file descriptors left: retry on the next call
            self._stop()

    def _await_ready(self) -> bool:
        if not self._ready and self._conn.poll(WORKER_STARTUP_S):
            self._ready = self._conn.recv()[0] == "ready"
        return self._ready

    def check(self, pred: str, gold: str, timeout: float) -> str:
        """One comparison: "symbolic", "mismatch", "timeout" or "error"."""
        with self._lock:
            try:
                if self._proc is None or self._proc.poll() is not None:
                    self._restart()
                if self._conn is None or not self._await_ready():
                    self._restart()
                    return "error"
                self._conn.send((pred, gold))
                if not self._conn.poll(timeout):
                    self._restart()
                    return "timeout"
                status, value = self._conn.recv()
            except Exception:  # the child died (a crash, the memory cap) or spoke garbage
                self._restart()
                return "error"
        if status != "ok":
            return "error"
        return "symbolic" if value else "mismatch"

    def close(self) -> None:
        with self._lock:
            self._stop()

    def forget(self) -> None:
        """In a forked child: drop the parent's worker without touching it."""
        if self._conn is not None:
            self._conn.close()
        self.__init__()


_WORKER = _Worker()
atexit.register(_WORKER.close)


# ------------------------------------------------------------------------------ grading

_CACHE: OrderedDict[tuple[str, str, str], Grade] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_UNCACHED = ("timeout", "error")  # depend on load or on a crash, not on the answer


def _after_fork() -> None:
    # A forked child must not share the parent's worker socket or a lock held at fork time.
    global _CACHE_LOCK
    _CACHE_LOCK = threading.Lock()
    _WORKER.forget()


os.register_at_fork(after_in_child=_after_fork)


def _cached(key: tuple[str, str, str]) -> Grade | None:
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
        return hit


def _remember(key: tuple[str, str, str], result: Grade) -> Grade:
    if result.reason not in _UNCACHED and len(key[0]) <= MAX_SYMBOLIC_CHARS:
        with _CACHE_LOCK:
            _CACHE[key] = result
            if len(_CACHE) > CACHE_SIZE:
                _CACHE.popitem(last=False)
    return result


# a name a value is given to: x, a_1, a_{n+1}, f(x), P(A), \\angle ABC, \\theta
_NAME = r"(?:\\[A-Za-z]+\s*)?[A-Za-z]{1,3}(?:_\{?[\w+-]+\}?)?(?:\s*\([^()=]*\))?"
_NAME_RE = re.compile(rf"\s*{_NAME}\s*")
_ENDS_IN_NAME_RE = re.compile(rf"(?:^|[\s,;]){_NAME}\s*$")
_JOINED_RE = re.compile(r",|;|\\text\s*\{|\\(?:quad|qquad)\b|\band\b")
_HEDGE_RE = re.compile(r"\\(?:approx|thickapprox|sim|simeq|cong|propto)(?![A-Za-z])")
_LETTER_RE = re.compile(r"(?<!\\)\b[A-Za-z]\b|\\(?:pi|theta|alpha|beta)")


def _equation_values(pred: str, gold: str) -> list[str] | None:
    """The values an equation answer states, all of which must be the gold's, when the
    gold is a plain value; None when it states none.

    ``name = value`` and ``value = name`` state the value (``x = 5``, ``3 = x``, ``f(x) =
    3``, ``a_1 = 2``); so does a chain ``name = e1 = ... = value`` whose middle parts
    assign nothing else (``x = 2 + 3 = 5``; not ``x = 3 \\text{ and } y = 4``, nor
    ``x = 1, y = 4``). A chain without variables is a computation, and states a value when
    every side is that value (``6/2 = 3``). Anything else states none: math-verify alone
    accepts ``x - 2 = -2`` for a gold of -2 (there x is 0)."""
    if "=" not in pred or "=" in gold:
        return [pred]
    sides = [side.strip() for side in pred.split("=")]
    if not all(sides):
        return None
    if len(sides) == 2 and _NAME_RE.fullmatch(sides[1]) and not _NAME_RE.fullmatch(sides[0]):
        return [sides[0]]  # 3 = x
    if _NAME_RE.fullmatch(sides[0]):
        middle = sides[1:-1]
        if any(_JOINED_RE.search(m) or _ENDS_IN_NAME_RE.search(m) for m in middle):
            return None
        if _JOINED_RE.search(sides[-1]) and "," not in gold:
            return None
        return [sides[-1]]
    if not any(_LETTER_RE.search(side) for side in sides):
        return sides  # 6/2 = 3: every side must be the value
    return None


_INEQUALITY_RE = re.compile(
    r"\s*(.+?)\s*(\\leq?|\\lt|<|\\geq?|\\gt|>)\s*([A-Za-z])\s*(\\leq?|\\lt|<|\\geq?|\\gt|>)\s*(.+?)\s*"
)


def _as_interval(pred: str) -> str:
    """``a \\le x < b`` as the interval ``[a, b)`` (``b > x \\ge a`` too); else ``pred``."""
    m = _INEQUALITY_RE.fullmatch(pred)
    if m is None:
        return pred
    low, op1, _, op2, high = m.groups()
    if _greater(op1) != _greater(op2):
        return pred  # 1 < x > 3: no interval
    if _greater(op1):
        low, high, op1, op2 = high, low, op2, op1
    closed = lambda op: op.startswith(("\\le", "\\ge"))  # noqa: E731
    return f"{'[' if closed(op1) else '('}{low}, {high}{']' if closed(op2) else ')'}"


def _greater(op: str) -> bool:
    return op in (">", "\\gt") or op.startswith("\\ge")


def _decide(pred: str, gold: str, timeout: float, rules: str) -> Grade:
    if _canon(pred) == _canon(gold):  # spelled as the gold: whatever it holds, the gold has it
        return Grade(True, "exact")
    if _flaw(pred) is not None:
        return Grade(False, "malformed")
    pred, gold = _plain_symbols(pred), _plain_symbols(gold)
    letter = _choice_letter(gold, whole=True)
    if letter is not None:
        same = _choice_letter(pred) == letter
        return Grade(same, "exact" if same else "mismatch")
    if _HEDGE_RE.search(pred) and not _HEDGE_RE.search(gold):  # x \approx 3: not a value
        return Grade(False, "mismatch")
    if gold.lstrip()[:1] in "([" and "," in gold:
        pred = _as_interval(pred)
    values = _equation_values(pred, gold)
    if values is None:
        return Grade(False, "mismatch")
    grades = [_decide_value(v, gold, timeout, rules) for v in values]
    return next((g for g in grades if not g.correct), grades[0])


def _decide_value(value: str, gold: str, timeout: float, rules: str) -> Grade:
    if len(value) > MAX_SYMBOLIC_CHARS:  # neither path takes it (and unwrapping is linear)
        return Grade(False, "error")
    pred, honest, units = _settled(value.strip())
    inner = _unwrap(pred)
    if honest and inner != pred:  # "(5 \\text{ million})": the tail inside the brackets too
        pred, honest, more = _settled(inner)
        units += more
    if not honest:
        return Grade(False, "malformed")
    gold, _, gold_units = _settled(gold)
    if units and gold_units and set(units) != set(gold_units):  # 5 cm for 5 m
        return Grade(False, "mismatch")
    pred, gold = _unwrap(pred), _unwrap(gold)
    if _top_level_comma(pred) and not _top_level_comma(gold) and _number(pred) is None:
        return Grade(False, "mismatch")  # 3, 3 for 3: a list is no single value
    return _compare(pred, gold, timeout, rules)


def _top_level_comma(s: str) -> bool:
    return _pairs(s)[1] == 0


# unicode a model may write for TeX: ½, √2, 3·4, 2×3, −3, ≤, ≈
_VULGAR = {"½": (1, 2), "⅓": (1, 3), "⅔": (2, 3), "¼": (1, 4), "¾": (3, 4), "⅕": (1, 5),
           "⅖": (2, 5), "⅗": (3, 5), "⅘": (4, 5), "⅙": (1, 6), "⅚": (5, 6), "⅛": (1, 8),
           "⅜": (3, 8), "⅝": (5, 8), "⅞": (7, 8)}  # fmt: skip
_SYMBOLS = {"·": "\\cdot ", "⋅": "\\cdot ", "×": "\\times ", "÷": "\\div ", "−": "-",
            "≤": "\\le ", "≥": "\\ge ", "≈": "\\approx ", "π": "\\pi "}  # fmt: skip
_ROOT_RE = re.compile(r"√\s*(\d+(?:\.\d+)?|[A-Za-z]|\([^()]*\)|\{[^{}]*\})")


def _plain_symbols(s: str) -> str:
    """``s`` with the unicode above as TeX: ``½`` is ``\\frac{1}{2}``, ``√2`` is
    ``\\sqrt{2}``, ``3·4`` is ``3\\cdot 4``."""
    if s.isascii():
        return s
    for char, (a, b) in _VULGAR.items():
        s = s.replace(char, f"\\frac{{{a}}}{{{b}}}")
    for char, tex in _SYMBOLS.items():
        s = s.replace(char, tex)
    return _ROOT_RE.sub(lambda m: "\\sqrt{" + m.group(1).strip("(){}") + "}", s)


def _compare(pred: str, gold: str, timeout: float, rules: str = "careful") -> Grade:
    """Grade two settled values: canonical strings, exact rationals, then math-verify."""
    if _canon(pred) == _canon(gold):
        return Grade(True, "exact")
    fast = _fast_equal(pred, gold, rules)
    if fast is not None:
        return Grade(fast, "exact" if fast else "mismatch")
    if _too_complex(pred) or _too_complex(gold):
        return Grade(False, "error")
    reason = _WORKER.check(pred, gold, timeout)
    return Grade(reason == "symbolic", reason)


def grade(pred: str | None, gold: str, timeout: float = 5.0, rules: str = "careful") -> Grade:
    """Is the extracted answer ``pred`` equivalent to ``gold``? (see the module docstring)

    ``rules``: "careful" (default) or "reference" (``RULES``). ``timeout`` bounds the
    symbolic check's wall clock (time spent waiting for another thread's check, or for a
    fresh worker to import sympy, comes on top). Thread-safe."""
    if rules not in RULES:
        raise ValueError(f"rules = {rules!r}; expected one of {list(RULES)}")
    if not isinstance(pred, str):  # a number from a caller's own parsing: graded as text
        pred = None if pred is None or isinstance(pred, bool) else str(pred)
    if pred is None or not pred.strip():
        return Grade(False, "no_answer")
    pred, gold = pred.strip(), str(gold).strip()
    key = (pred, gold, rules)
    return _cached(key) or _remember(key, _decide(pred, gold, timeout, rules))


def is_equivalent(
    pred: str | None, gold: str, timeout: float = 5.0, rules: str = "careful"
) -> bool:
    return grade(pred, gold, timeout, rules).correct


def grade_response(
    response_text: str, gold: str, timeout: float = 5.0, rules: str = "careful"
) -> Grade:
    """Extract the final answer of a full response and grade it against ``gold``."""
    if not isinstance(response_text, str):
        return Grade(False, "no_answer")
    return grade(extract_answer(response_text), gold, timeout, rules)
