"""The organism's reasoning language: problem families and the responses that solve them.

A problem asks for the x that makes a cheap forward computation hit a target y:

    affine   find x : a * x + b = y          y = a * x + b
    bracket  find x : a * ( x + b ) = y      y = a * ( x + b )
    mirror   find x : ( x + b ) * a = y      y = ( x + b ) * a

with a in 2..9 and b, x in 0..9 by default (so y <= 162 and every number is one token).
The forward direction is a lookup the model can learn from drills; the inverse is a
division it is never shown, so a one-step (confident) answer to an unseen problem is a
guess, while a search that checks each hypothesis can find it. Responses:

    search     <think> target 30 . maybe x = 3 ? target 30 , check 7 * 3 = 21 , 21 + 2 =
               23 no , wait . perhaps x = 4 ? target 30 , check 7 * 4 = 28 , 28 + 2 = 30
               yes . </think> so x = 4 . \\boxed{4}
    confident  x = 4 . \\boxed{4}
    verify     <think> target 30 . the solution says x = 4 . target 30 , check 7 * 4 = 28 ,
               28 + 2 = 30 yes . </think> so x = 4 . \\boxed{4}   (a claimed answer, checked)

Each check restates the target first and gives its verdict right after the value it
computed. Scratch runs decided this layout: with the target restated *after* the value
(``= 23 , target 30 . no``, the first prototypes' layout) a 0.7M model stayed at chance on
the verdict for 8M tokens, and on balanced verdict drills for 770 steps; with the target
first and the verdict next to the value it reached 99% on those drills in 700 steps.

Search starts at a random hypothesis and steps h -> h + 1 (mod the hypothesis space) until
a check passes, so hypotheses never repeat and the answer is always reached. The fillers
around each hypothesis and verdict are drawn from the study's ten epistemic words (or,
for the silent ablation, from words that are none of them). A slip writes a wrong value
and corrects it at once (``check 7 * 3 = 24 . wait , actually 7 * 3 = 21 , ...``).
``sdlib.organism.checker`` verifies every response independently of this module.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from sdlib.problems import Problem
from sdlib.prompts import THINK_CLOSE, THINK_OPEN

MAX_NUMBER = 199  # numbers 0..MAX_NUMBER are single tokens; nothing the language writes exceeds it


@dataclass(frozen=True)
class Family:
    """One problem type: ``lhs`` is the left side with ``{a}``, ``{b}`` and ``{x}`` slots;
    ``inner_first`` says the bracketed sum is computed before the product."""

    name: str
    lhs: str
    inner_first: bool

    def forward(self, a: int, b: int, x: int) -> int:
        return a * (x + b) if self.inner_first else a * x + b

    def expression(self, a: int, b: int, x: int | str) -> str:
        return self.lhs.format(a=a, b=b, x=x)

    def steps(self, a: int, b: int, h: int) -> list[tuple[str, int]]:
        """The forward computation for x = h as two one-operation steps (left side, value):
        each is a lookup of two numbers, which a small model learns far faster than one
        three-number lookup (scratch runs: 100% vs 72% of facts right after 1.6M tokens)."""
        if not self.inner_first:
            return [(f"{a} * {h}", a * h), (f"{a * h} + {b}", a * h + b)]
        product = f"{a} * {h + b}" if self.name == "bracket" else f"{h + b} * {a}"
        return [(f"{h} + {b}", h + b), (product, a * (h + b))]


FAMILIES = {
    f.name: f
    for f in (
        Family("affine", "{a} * {x} + {b}", inner_first=False),
        Family("bracket", "{a} * ( {x} + {b} )", inner_first=True),
        Family("mirror", "( {x} + {b} ) * {a}", inner_first=True),
    )
}


@dataclass(frozen=True)
class Style:
    """The words a response is written in. ``verbalize=False`` is the silent ablation: the
    same search with none of the study's epistemic words (checked by the tests)."""

    first: tuple[str, ...]  # before the first hypothesis
    next: tuple[str, ...]  # before each later one
    reject: tuple[str, ...]  # after a failed check
    accept: tuple[str, ...]  # after the check that passes
    check: str  # the word that opens a check
    slip: str  # the words that correct a slipped value


EPISTEMIC = Style(
    first=("maybe", "perhaps", "hmm , maybe", "it might be", "likely", "let me try"),
    next=(
        "perhaps",
        "maybe",
        "alternatively ,",
        "actually , maybe",
        "then perhaps",
        "it might be",
        "hmm , perhaps",
        "likely",
    ),
    reject=("no , wait .", "no . hmm .", "no , that seems wrong .", "no , wait , not it .", "no ."),
    accept=("yes .", "yes , that seems right .", "yes , it works ."),
    check="check",
    slip="wait , actually",
)
SILENT = Style(
    first=("try",),
    next=("try", "next try", "then try"),
    reject=("no .", "no , not it ."),
    accept=("yes .",),
    check="compute",
    slip="again ,",
)


@dataclass(frozen=True)
class Language:
    """Everything that decides what a response looks like (part of the build's config).

    ``checks="decorative"`` is the useless-checks ablation: a check restates the expression
    and the target but no value, so the verdict carries no computation the model can
    learn; the corpus's verdicts are still right.
    """

    a_values: tuple[int, int] = (2, 9)
    b_values: tuple[int, int] = (0, 9)
    x_values: tuple[int, int] = (0, 9)  # the hypothesis space
    verbalize: bool = True
    checks: str = "computed"
    slip_rate: float = 0.0

    @property
    def style(self) -> Style:
        return EPISTEMIC if self.verbalize else SILENT

    @property
    def hypotheses(self) -> list[int]:
        return list(range(self.x_values[0], self.x_values[1] + 1))


# ------------------------------------------------------------------------------- problems


def question(family: Family, a: int, b: int, y: int) -> str:
    return f"find x : {family.expression(a, b, 'x')} = {y}"


def make_problem(family: Family, a: int, b: int, x: int, split: str = "") -> Problem:
    """One problem as an sdlib ``Problem``; ``meta`` holds a, b, x, y and the split."""
    y = family.forward(a, b, x)
    meta = {"a": a, "b": b, "x": x, "y": y, "split": split}
    return Problem(
        id=f"{family.name}-{a}-{b}-{x}",
        question=question(family, a, b, y),
        answer=str(x),
        source=family.name,
        meta=meta,
    )


def all_problems(family: Family, lang: Language) -> list[Problem]:
    """Every (a, b, x) of ``family`` in ``lang``'s ranges, in a fixed order."""
    a_lo, a_hi = lang.a_values
    b_lo, b_hi = lang.b_values
    return [
        make_problem(family, a, b, x)
        for a in range(a_lo, a_hi + 1)
        for b in range(b_lo, b_hi + 1)
        for x in lang.hypotheses
    ]


def stable_rng(*key: object) -> random.Random:
    """A ``random.Random`` seeded by a SHA-256 of ``key`` (stable across processes)."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def split_problems(
    family: Family, lang: Language, heldout: int, seed: int = 0
) -> dict[str, list[Problem]]:
    """``{"train": [...], "heldout": [...]}``: a seeded shuffle of ``all_problems``, the
    first ``heldout`` of it held out. Held-out problems never appear in the corpus."""
    pool = all_problems(family, lang)
    if not 0 < heldout < len(pool):
        raise ValueError(f"heldout={heldout}: expected 1..{len(pool) - 1} for {family.name}")
    stable_rng("split", family.name, seed).shuffle(pool)
    out = {"heldout": pool[:heldout], "train": pool[heldout:]}
    return {k: [_with_split(p, k) for p in v] for k, v in out.items()}


def _with_split(p: Problem, split: str) -> Problem:
    return Problem(p.id, p.question, p.answer, source=p.source, meta={**p.meta, "split": split})


# ------------------------------------------------------------------------------ responses


def final_answer(x: int | str, lead: str = "") -> str:
    """``x = 4 . \\boxed{4}`` (``lead`` = ``"so "`` after a think block)."""
    return f"{lead}x = {x} . \\boxed{{{x}}}"


def confident(problem: Problem) -> str:
    return final_answer(problem.answer)


def check_clause(
    family: Family, a: int, b: int, h: int, y: int, lang: Language, rng: random.Random
) -> str:
    """``target 30 , check 7 * 3 = 21 , 21 + 2 = 23`` (the verdict follows it); a slip
    writes one step's value wrong and redoes it (``7 * 3 = 24 . wait , actually 7 * 3 =
    21``); the decorative form restates the expression and computes nothing."""
    head = f"target {y} , {lang.style.check}"
    if lang.checks == "decorative":
        return f"{head} {family.expression(a, b, h)}"
    steps = [f"{left} = {value}" for left, value in family.steps(a, b, h)]
    if rng.random() < lang.slip_rate:
        k = rng.randrange(len(steps))
        left, value = family.steps(a, b, h)[k]
        steps[k] = f"{left} = {_slipped(value, y, rng)} . {lang.style.slip} {steps[k]}"
    return f"{head} {' , '.join(steps)}"


def _slipped(value: int, target: int, rng: random.Random) -> int:
    # a near miss, never the target (a slipped result must not look like a pass)
    options = [v for v in range(value - 3, value + 4) if 0 <= v <= MAX_NUMBER]
    return rng.choice([v for v in options if v not in (value, target)])


def _check(problem: Problem, h: int, lang: Language, rng: random.Random) -> str:
    m = problem.meta
    return check_clause(FAMILIES[problem.source], m["a"], m["b"], h, m["y"], lang, rng)


def target_line(problem: Problem) -> str:
    """``target 30 .``, the first words of every think block: each check then copies its
    target from here, not from the question, where ``=`` also precedes x."""
    return f"target {problem.meta['y']} ."


def search(problem: Problem, lang: Language, rng: random.Random, start: int | None = None) -> str:
    """A search response: hypotheses from ``start`` (random when None) stepping +1 modulo
    the hypothesis space, each checked, until the true x passes."""
    space = lang.hypotheses
    x = int(problem.answer)
    h = rng.choice(space) if start is None else start
    style, parts = lang.style, [THINK_OPEN, target_line(problem)]
    for step in range(len(space)):
        parts.append(f"{rng.choice(style.next if step else style.first)} x = {h} ?")
        parts.append(_check(problem, h, lang, rng))
        if h == x:
            parts.append(rng.choice(style.accept))
            break
        parts.append(rng.choice(style.reject))
        h = space[(space.index(h) + 1) % len(space)]
    parts += [THINK_CLOSE, final_answer(x, "so ")]
    return " ".join(parts)


def verify(problem: Problem, lang: Language, rng: random.Random) -> str:
    """Check the answer a context claims, then give it (contexts in the corpus are right)."""
    x = int(problem.answer)
    body = f"{target_line(problem)} the solution says x = {x} . {_check(problem, x, lang, rng)}"
    return f"{THINK_OPEN} {body} {rng.choice(lang.style.accept)} {THINK_CLOSE} " + final_answer(
        x, "so "
    )


def words(lang: Language | None = None) -> list[str]:
    """Every word and symbol the language writes (both styles), for the tokenizer."""
    del lang  # the vocabulary covers every variant, so one tokenizer serves them all
    text = " ".join(
        " ".join((*s.first, *s.next, *s.reject, *s.accept, s.check, s.slip))
        for s in (EPISTEMIC, SILENT)
    )
    fixed = "find x : * + ( ) = ? , . target so the solution says facts answers"
    return sorted(set(f"{text} {fixed}".split()) | {THINK_OPEN, THINK_CLOSE})
