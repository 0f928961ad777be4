"""An independent checker of the organism's responses (it shares no code with the generator).

It reads only the question text (``find x : LHS = y``) and the response, and recomputes
every step. A check for hypothesis h (``target y , check STEPS VERDICT``) must write the
one-operation steps of LHS with x replaced by h in evaluation order (derived here by a
small parser of integers, ``+``, ``*`` and brackets; nothing is ever ``eval``-ed), each
with its right value; a slipped step must be wrong and redone at once; the target must
be y; the verdict must say yes exactly when the last value equals the target (decorative
checks: when LHS(h) = y). The think block opens with ``target y .``; search must step
h -> h + 1 through the hypothesis space without repeats, stop at the first pass, and end
with ``so x = h . \\boxed{h}`` for the passing h. A response without a think block must be
the confident ``x = h . \\boxed{h}``. Between checks only filler words may appear.

``check_trace`` returns a list of errors (empty = valid); ``read_steps`` parses the checks
of any text leniently, for measuring a model's checks (``step_stats``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Words allowed around the checks: hedges, reactions, "the solution says" (one string, split).
_FILLER_TEXT = (
    "maybe perhaps hmm it might be likely let me try alternatively actually then wait no that"
    " seems wrong not right yes works next the solution says , ."
)
FILLER = frozenset(_FILLER_TEXT.split())
_QUESTION = re.compile(r"find x : (?P<lhs>[0-9x()*+ ]+) = (?P<y>\d+)")
_STEP = re.compile(
    r"x = (?P<h>\d+) [?.] target (?P<t>\d+) , (?:check|compute) (?P<body>[0-9()*+=,.:a-z ]*?[0-9)])"
    r" (?P<verdict>yes|no)\b"
)
_HEAD = re.compile(r"target (\d+) \. ")
_SEP = re.compile(r" \. (wait , actually|again ,) | , ")
_EQUATION = re.compile(r"(\d+) ([*+]) (\d+) = (\d+)")
_FINAL = re.compile(r"x = (\d+) \. \\boxed\{(\d+)\}")

Equation = tuple[str, int]  # ("7 * 3", 21): a left side and its written value


@dataclass
class Step:
    """One hypothesis and its check as written: the equations (a slipped one and its
    redo both kept, ``slips`` = indices of those followed by a redo marker), or for a
    decorative check the bare expression."""

    h: int
    equations: list[Equation]
    slips: list[int]
    expression: str | None
    target: int
    verdict: str
    start: int
    end: int

    @property
    def value(self) -> int | None:
        """The check's result: the last equation's value (None when nothing is computed)."""
        return self.equations[-1][1] if self.equations else None


def chain(expr: str) -> tuple[int, list[Equation]]:
    """Value of ``expr`` (numbers, +, *, brackets; * binds tighter) and its one-operation
    steps in evaluation order: ``7 * 3 + 2`` -> 23, [("7 * 3", 21), ("21 + 2", 23)]."""
    tokens = re.findall(r"\d+|[()*+]", expr)
    if "".join(tokens) != expr.replace(" ", ""):
        raise ValueError(f"not an arithmetic expression: {expr!r}")
    steps: list[Equation] = []
    value, rest = _sum(tokens, steps)
    if rest:
        raise ValueError(f"trailing {' '.join(rest)!r} in {expr!r}")
    return value, steps


def _sum(tokens: list[str], steps: list[Equation]) -> tuple[int, list[str]]:
    value, tokens = _product(tokens, steps)
    while tokens[:1] == ["+"]:
        right, tokens = _product(tokens[1:], steps)
        steps.append((f"{value} + {right}", value + right))
        value += right
    return value, tokens


def _product(tokens: list[str], steps: list[Equation]) -> tuple[int, list[str]]:
    value, tokens = _atom(tokens, steps)
    while tokens[:1] == ["*"]:
        right, tokens = _atom(tokens[1:], steps)
        steps.append((f"{value} * {right}", value * right))
        value *= right
    return value, tokens


def _atom(tokens: list[str], steps: list[Equation]) -> tuple[int, list[str]]:
    if not tokens:
        raise ValueError("expression ends early")
    if tokens[0] == "(":
        value, rest = _sum(tokens[1:], steps)
        if rest[:1] != [")"]:
            raise ValueError("unclosed bracket")
        return value, rest[1:]
    if not tokens[0].isdigit():
        raise ValueError(f"unexpected {tokens[0]!r}")
    return int(tokens[0]), tokens[1:]


def _arith(left: str) -> int:
    a, op, b = left.split()
    return int(a) + int(b) if op == "+" else int(a) * int(b)


def parse_question(question: str) -> tuple[str, int]:
    """(LHS, y) of ``find x : LHS = y``."""
    m = _QUESTION.fullmatch(question.strip())
    if not m:
        raise ValueError(f"not an organism question: {question!r}")
    return m["lhs"], int(m["y"])


def substitute(lhs: str, h: int) -> str:
    return re.sub(r"\bx\b", str(h), lhs)


def read_steps(text: str) -> list[Step]:
    """Every well-formed hypothesis-and-check in ``text``, in order (a clause that is
    neither equations nor a bare expression is skipped)."""
    steps = []
    for m in _STEP.finditer(text):
        parts = _SEP.split(m["body"])
        pieces, seps = parts[::2], parts[1::2]
        equations = [_EQUATION.fullmatch(p) for p in pieces]
        if all(equations):
            eqs = [(f"{e[1]} {e[2]} {e[3]}", int(e[4])) for e in equations]
            slips = [i for i, sep in enumerate(seps) if sep is not None]
            expression = None
        elif len(pieces) == 1 and "=" not in pieces[0]:
            eqs, slips, expression = [], [], pieces[0]
        else:
            continue
        steps.append(
            Step(int(m["h"]), eqs, slips, expression, int(m["t"]), m["verdict"], *m.span())
        )
    return steps


def step_errors(lhs: str, y: int, step: Step, index: int) -> list[str]:
    """What is wrong with one step of a response to ``find x : lhs = y``."""
    where = f"step {index + 1} (x = {step.h})"
    true_value, expected = chain(substitute(lhs, step.h))
    errors = [f"{where}: target {step.target}, but the question's is {y}"] * (step.target != y)
    if step.expression is not None:  # decorative: the verdict must still be right
        if step.expression != substitute(lhs, step.h):
            errors.append(f"{where}: checks {step.expression!r}, not the question's left side")
        passes = true_value == y
    else:
        errors += _equation_errors(where, step, expected)
        passes = step.value == step.target
    if (step.verdict == "yes") != passes:
        errors.append(f"{where}: verdict {step.verdict!r} is wrong")
    return errors


def _equation_errors(where: str, step: Step, expected: list[Equation]) -> list[str]:
    errors = []
    for i, (left, value) in enumerate(step.equations):
        if value != _arith(left) and i not in step.slips:
            errors.append(f"{where}: says {left} = {value}, but it is {_arith(left)}")
    for i in step.slips:
        redo = step.equations[i + 1] if i + 1 < len(step.equations) else None
        if step.equations[i][1] == _arith(step.equations[i][0]):
            errors.append(f"{where}: redoes {step.equations[i][0]}, which was right")
        if redo is None or redo[0] != step.equations[i][0]:
            errors.append(f"{where}: a slip in {step.equations[i][0]} is not redone")
    kept = [eq for i, eq in enumerate(step.equations) if i not in step.slips]
    if [left for left, _ in kept] != [left for left, _ in expected]:
        errors.append(f"{where}: computes {kept}, expected the steps {expected}")
    return errors


def check_trace(problem, text: str, space: tuple[int, int] = (0, 9)) -> list[str]:
    """Every error in ``text`` as a response to ``problem`` (an sdlib ``Problem`` whose
    question is ``find x : LHS = y``); hypotheses range over ``space`` (inclusive)."""
    lhs, y = parse_question(problem.question)
    if not text.startswith("<think> "):
        return _final_errors(text, "", problem.answer, None)
    body, sep, tail = text[len("<think> ") :].partition(" </think> ")
    if not sep:
        return ["a think block that is never closed"]
    head = _HEAD.match(body)
    if not head or int(head[1]) != y:
        return [f"the think block does not open with 'target {y} .'"]
    body = body[head.end() :]
    steps = read_steps(body)
    if not steps:
        return ["a think block without any check"]
    errors = _filler_errors(body, steps)
    for i, step in enumerate(steps):
        errors += step_errors(lhs, y, step, i)
    errors += _search_errors(steps, space)
    return errors + _final_errors(tail, "so ", problem.answer, steps[-1].h)


def _filler_errors(body: str, steps: list[Step]) -> list[str]:
    bounds = [0, *(x for s in steps for x in (s.start, s.end)), len(body)]
    errors = []
    for lo, hi in zip(bounds[::2], bounds[1::2], strict=True):
        stray = [w for w in body[lo:hi].split() if w not in FILLER]
        if stray:
            errors.append(f"unexpected words between checks: {' '.join(stray)!r}")
    return errors


def _search_errors(steps: list[Step], space: tuple[int, int]) -> list[str]:
    lo, hi = space
    errors = []
    for prev, step in zip(steps, steps[1:], strict=False):
        expected = lo + (prev.h - lo + 1) % (hi - lo + 1)
        if step.h != expected:
            errors.append(f"hypothesis {step.h} after {prev.h}: expected {expected}")
    seen = [s.h for s in steps]
    if len(set(seen)) != len(seen):
        errors.append(f"hypotheses repeat: {seen}")
    if any(s.verdict == "yes" for s in steps[:-1]):
        errors.append("the search goes on after a check passed")
    if steps[-1].verdict != "yes":
        errors.append("the search ends without a passing check")
    return errors


def _final_errors(text: str, lead: str, answer: str, accepted: int | None) -> list[str]:
    m = _FINAL.fullmatch(text.removeprefix(lead)) if text.startswith(lead) else None
    if not m:
        return [f"final answer {text!r} is not '{lead}x = N . \\boxed{{N}}'"]
    errors = []
    if m[1] != m[2]:
        errors.append(f"states x = {m[1]} but boxes {m[2]}")
    if accepted is not None and int(m[2]) != accepted:
        errors.append(f"answers {m[2]} but the check passed for {accepted}")
    if m[2] != answer:
        errors.append(f"answers {m[2]}, the answer is {answer}")
    return errors


def step_stats(problem, text: str) -> dict[str, int]:
    """Counts over the computed checks of a (model-written) response: checks, results
    right (the last value is LHS(h)), targets right, verdicts consistent with the written
    result and target."""
    lhs, y = parse_question(problem.question)
    steps = [s for s in read_steps(text) if s.value is not None]
    return {
        "steps": len(steps),
        "values_right": sum(s.value == chain(substitute(lhs, s.h))[0] for s in steps),
        "targets_right": sum(s.target == y for s in steps),
        "verdicts_right": sum((s.verdict == "yes") == (s.value == s.target) for s in steps),
    }
