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

    ``10,\\!080`` -> ``10,080``; ``864 \\mbox{ inches}^2`` -> ``864``; ``\\text{5}`` -> ``5``."""
    s = _THIN_COMMA_RE.sub(",", s).replace("\\$", "").replace("$", "")
    s = " ".join(_unspace(s).split())
    percent = s.endswith("%")
    s = s.rstrip("%").removesuffix("\\").strip() if percent else s
    if m := _WRAPPED_TEXT_RE.fullmatch(s):
        s = m.group(1).strip()
    for _ in range(3):  # a few trailing decorations, e.g. "5 \\text{ m}^2" or "90^\\circ"
        s = _UNIT_RE.sub("", _DEGREE_RE.sub("", s)).strip()
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

_CHOICE_STRIP_RE = re.compile(r"\\(?:textbf|text|mathrm|mathbf)\s*|[{}$*]")
_CHOICE_RE = re.compile(r"\(?([A-J])(?![A-Za-z0-9])")
_WHOLE_CHOICE_RE = re.compile(r"\(?([A-J])\)?")


def _choice_letter(s: str, whole: bool = False) -> str | None:
    """The option letter an answer names: ``B``, ``(B)``, ``B.``, ``\\text{(B)}``, ``B: 4.2``.

    ``whole=True`` (for golds) accepts only a bare letter, optionally in parentheses."""
    s = _CHOICE_STRIP_RE.sub("", s[:200]).strip()
    m = _WHOLE_CHOICE_RE.fullmatch(s) if whole else _CHOICE_RE.match(s)
    return m.group(1) if m else None


# ------------------------------------------------------------------------ symbolic path

_TOWER_RE = re.compile(r"[\d}]\s*\^\s*\{[^{}]*\^")  # 10^{10^{10}}: numbers nobody can build
_BIG_EXPONENT_RE = re.compile(r"\^\s*\{?\s*[+-]?\d{5,}")
_BIG_FACTORIAL_RE = re.compile(r"\d{6,}\s*!|\^\s*\{?\s*\d+\s*\}?\s*\)?\s*!")  # (10^{6})!
MAX_POWER_HEIGHT = 2  # e^{x^2} is fine, e^{e^{e^{x}}} is a bomb


def _nesting(s: str) -> tuple[int, int]:
    """(deepest brace nesting, tallest power tower) in one pass.

    Tower height at a ``^`` = 1 + the number of open ``^{...}`` groups around it."""
    groups: list[bool] = []  # for each open brace: does it open a superscript?
    deepest = tallest = supers = 0
    after_caret = False
    for c in s:
        if c == "^":
            tallest = max(tallest, supers + 1)
        elif c == "{":
            groups.append(after_caret)
            supers += after_caret
            deepest = max(deepest, len(groups))
        elif c == "}" and groups:
            supers -= groups.pop()
        if not c.isspace():
            after_caret = c == "^"
    return deepest, tallest


def _too_complex(s: str) -> bool:
    """Refuse what would only burn the symbolic timeout: long strings, deep nesting,
    power towers (three high, or two high on a number), exponents >= 10^4, factorials of
    numbers >= 10^5 or of powers. The timeout still guards everything this lets through."""
    if len(s) > MAX_SYMBOLIC_CHARS:
        return True
    deepest, tallest = _nesting(s)
    if deepest > MAX_BRACE_DEPTH or tallest > MAX_POWER_HEIGHT:
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
    timeouts (main thread only); the parent's wall-clock timeout replaces them."""
    import logging

    from math_verify import LatexExtractionConfig, parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # silence "timeout disabled"
    config = [LatexExtractionConfig()]

    def check(pred: str, gold: str) -> bool:
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

_CACHE: OrderedDict[tuple[str, str], Grade] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_UNCACHED = ("timeout", "error")  # depend on load or on a crash, not on the answer


def _after_fork() -> None:
    # A forked child must not share the parent's worker socket or a lock held at fork time.
    global _CACHE_LOCK
    _CACHE_LOCK = threading.Lock()
    _WORKER.forget()


os.register_at_fork(after_in_child=_after_fork)


def _cached(key: tuple[str, str]) -> Grade | None:
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
        return hit


def _remember(key: tuple[str, str], result: Grade) -> Grade:
    if result.reason not in _UNCACHED and len(key[0]) <= MAX_SYMBOLIC_CHARS:
        with _CACHE_LOCK:
            _CACHE[key] = result
            if len(_CACHE) > CACHE_SIZE:
                _CACHE.popitem(last=False)
    return result


_BARE_VARIABLE = re.compile(r"^\s*[A-Za-z](?:_\{?\w+\}?)?\s*$")


def _equation_value(pred: str, gold: str) -> str | None:
    """The value an equation answer states, when gold is a plain value.

    Only ``variable = value`` (or ``x = 2 + 3 = 5``: the last side) states a value:
    math-verify also accepts ``x - 2 = -2`` for a gold of -2 (there x is 0) and ``2 + 3 = 5``
    for 5, which would reward copying a worked example. None: not a value statement.
    """
    if "=" not in pred or "=" in gold:
        return pred
    sides = pred.split("=")
    return sides[-1] if _BARE_VARIABLE.match(sides[0]) and sides[-1].strip() else None


def _decide(pred: str, gold: str, timeout: float) -> Grade:
    letter = _choice_letter(gold, whole=True)
    if letter is not None:
        same = _choice_letter(pred) == letter
        return Grade(same, "exact" if same else "mismatch")
    value = _equation_value(pred, gold)
    if value is None:
        return Grade(False, "mismatch")
    pred = value.strip()
    if _canon(pred) == _canon(gold):
        return Grade(True, "exact")
    fast = _fast_equal(pred, gold)
    if fast is not None:
        return Grade(fast, "exact" if fast else "mismatch")
    if _too_complex(pred) or _too_complex(gold):
        return Grade(False, "error")
    reason = _WORKER.check(pred, gold, timeout)
    return Grade(reason == "symbolic", reason)


def grade(pred: str | None, gold: str, timeout: float = 5.0) -> Grade:
    """Is the extracted answer ``pred`` equivalent to ``gold``? (see the module docstring)

    ``timeout`` bounds the symbolic check's wall clock (time spent waiting for another
    thread's check, or for a fresh worker to import sympy, comes on top). Thread-safe."""
    if pred is None or not pred.strip():
        return Grade(False, "no_answer")
    pred, gold = pred.strip(), str(gold).strip()
    key = (pred, gold)
    return _cached(key) or _remember(key, _decide(pred, gold, timeout))


def is_equivalent(pred: str | None, gold: str, timeout: float = 5.0) -> bool:
    return grade(pred, gold, timeout).correct


def grade_response(response_text: str, gold: str, timeout: float = 5.0) -> Grade:
    """Extract the final answer of a full response and grade it against ``gold``."""
    return grade(extract_answer(response_text), gold, timeout)
