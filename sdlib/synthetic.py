"""Procedural math families: exact integer answers, short worked solutions, seeded.

They feed the CPU preset (a 135M model that can barely add two digits, so level 1 is
single-digit work such as "What is 3 + 4?") and the task-coverage experiment, where a
family is one problem type. Levels: 1 = single digits / tiny numbers, 2 = two-digit
numbers, 3 = three-digit numbers or several steps.

Each family is a function ``(rng, level) -> (question, answer, steps)``; ``generate`` adds
the id and the closing line ``The answer is \\boxed{N}.`` so every solution ends alike.
Every (family, level, seed) draws from its own ``random.Random`` seeded by a SHA-256 of
those three values, so results do not depend on Python's salted ``hash()`` nor on which
other families were generated first.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sdlib.problems import Problem

LEVELS = (1, 2, 3)
Draft = tuple[str, int, list[str]]  # question, answer, worked steps


@dataclass(frozen=True)
class Family:
    name: str
    make: Callable[[random.Random, int], Draft]
    about: str


def _digits(rng: random.Random, level: int, low1: int = 1) -> int:
    """A number with ``level`` digits (level 1 starts at ``low1``)."""
    low = low1 if level == 1 else 10 ** (level - 1)
    return rng.randint(low, 10**level - 1)


def _split_places(n: int) -> list[int]:
    """347 -> [300, 40, 7], dropping zero places (adding one place at a time is easy)."""
    text = str(n)
    parts = [int(d) * 10 ** (len(text) - i - 1) for i, d in enumerate(text)]
    return [p for p in parts if p] or [0]


def addition(rng: random.Random, level: int) -> Draft:
    a, b = _digits(rng, level), _digits(rng, level)
    question = f"What is {a} + {b}?"
    if level == 1:
        return question, a + b, [f"{a} + {b} = {a + b}."]
    steps, total = [f"Split {b} into {' + '.join(map(str, _split_places(b)))}."], a
    for part in _split_places(b):
        steps.append(f"{total} + {part} = {total + part}.")
        total += part
    return question, a + b, steps


def subtraction(rng: random.Random, level: int) -> Draft:
    a, b = sorted((_digits(rng, level), _digits(rng, level)), reverse=True)
    question = f"What is {a} - {b}?"
    if level == 1:
        return question, a - b, [f"{a} - {b} = {a - b}."]
    steps, rest = [f"Split {b} into {' + '.join(map(str, _split_places(b)))}."], a
    for part in _split_places(b):
        steps.append(f"{rest} - {part} = {rest - part}.")
        rest -= part
    return question, a - b, steps


def multiplication(rng: random.Random, level: int) -> Draft:
    if level == 1:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        return f"What is {a} × {b}?", a * b, [f"{a} × {b} = {a * b}."]
    a = rng.randint(10, 99)
    b = rng.randint(2, 9) if level == 2 else rng.randint(11, 99)
    parts = _split_places(a)
    steps = [f"Split {a} into {' + '.join(map(str, parts))}."]
    steps += [f"{p} × {b} = {p * b}." for p in parts]
    if len(parts) > 1:
        steps.append(f"{' + '.join(str(p * b) for p in parts)} = {a * b}.")
    return f"What is {a} × {b}?", a * b, steps


def remainder(rng: random.Random, level: int) -> Draft:
    divisor = {1: rng.randint(2, 5), 2: rng.randint(3, 12), 3: rng.randint(7, 25)}[level]
    n = rng.randint(divisor + 1, 9) if level == 1 else _digits(rng, level)
    q, r = divmod(n, divisor)
    steps = [
        f"{divisor} × {q} = {divisor * q}, and {divisor} × {q + 1} = {divisor * (q + 1)} "
        f"is more than {n}.",
        f"{n} - {divisor * q} = {r}.",
    ]
    return f"What is the remainder when {n} is divided by {divisor}?", r, steps


def linear_equation(rng: random.Random, level: int) -> Draft:
    if level == 1:
        a, x, b = 1, rng.randint(1, 9), rng.randint(1, 9)
    elif level == 2:
        a, x, b = rng.randint(2, 9), rng.randint(1, 12), rng.randint(1, 20)
    else:
        a, x = rng.randint(2, 15), rng.choice([-1, 1]) * rng.randint(1, 20)
        b = rng.choice([-1, 1]) * rng.randint(1, 60)
    c = a * x + b
    lhs = f"{'' if a == 1 else a}x {'+' if b > 0 else '-'} {abs(b)}"
    if b > 0:
        steps = [f"Subtract {b} from both sides: {lhs.split()[0]} = {c} - {b} = {c - b}."]
    else:
        steps = [f"Add {-b} to both sides: {lhs.split()[0]} = {c} + {-b} = {c - b}."]
    if a != 1:
        steps.append(f"Divide both sides by {a}: x = {c - b} / {a} = {x}.")
    return f"Solve for x: {lhs} = {c}.", x, steps


def percentage(rng: random.Random, level: int) -> Draft:
    if level == 1:
        p = rng.choice([10, 50])
        n = rng.randint(1, 9) * 10 if p == 10 else rng.randint(1, 9) * 2
    else:
        p = rng.choice([10, 20, 25, 50, 75]) if level == 2 else rng.randint(1, 99)
        low, high = (20, 200) if level == 2 else (100, 1000)
        # n must make p% of n whole: a multiple of 100 / gcd(p, 100)
        step = 100 // math.gcd(p, 100)
        n = step * rng.randint(-(-low // step), high // step)
    result = p * n // 100
    steps = [f"{p}% of {n} means {p} / 100 × {n}.", f"{p} × {n} = {p * n}."]
    steps.append(f"{p * n} / 100 = {result}.")
    return f"What is {p}% of {n}?", result, steps


_CONVERSIONS = [  # (larger unit, smaller unit, how many smaller in one larger)
    ("yards", "feet", 3),
    ("weeks", "days", 7),
    ("feet", "inches", 12),
    ("days", "hours", 24),
    ("hours", "minutes", 60),
    ("minutes", "seconds", 60),
    ("meters", "centimeters", 100),
    ("kilometers", "meters", 1000),
]
_SINGULAR = {"yards": "yard", "weeks": "week", "feet": "foot", "days": "day", "hours": "hour"}
_SINGULAR |= {"minutes": "minute", "meters": "meter", "kilometers": "kilometer"}
_CHAINS = [(a, b, f, c, g) for a, b, f in _CONVERSIONS for b2, c, g in _CONVERSIONS if b == b2]


def _rule(big: str, small: str, factor: int) -> str:
    return f"1 {_SINGULAR[big]} is {factor} {small}"


def unit_conversion(rng: random.Random, level: int) -> Draft:
    if level == 3:  # two conversions in a row, e.g. weeks -> days -> hours
        big, mid, f1, small, f2 = rng.choice(_CHAINS)
        n = rng.randint(2, 30)
        steps = [f"{_rule(big, mid, f1)}, so {n} {big} = {n} × {f1} = {n * f1} {mid}."]
        steps.append(
            f"{_rule(mid, small, f2)}, so {n * f1} {mid} = {n * f1} × {f2} = {n * f1 * f2} {small}."
        )
        return f"How many {small} are in {n} {big}?", n * f1 * f2, steps
    big, small, factor = rng.choice(_CONVERSIONS[:3] if level == 1 else _CONVERSIONS[:5])
    n = rng.randint(2, 9) if level == 1 else rng.randint(10, 99)
    if level == 2 and rng.random() < 0.5:  # the other direction: divide
        steps = [f"{_rule(big, small, factor)}, so divide: {n * factor} / {factor} = {n}."]
        return f"How many {big} are in {n * factor} {small}?", n, steps
    steps = [f"{_rule(big, small, factor)}, so multiply: {n} × {factor} = {n * factor}."]
    return f"How many {small} are in {n} {big}?", n * factor, steps


_NAMES = ["Tom", "Anna", "Sam", "Lily", "Ben", "Mia", "Leo", "Emma", "Max", "Zoe"]
_THINGS = ["apples", "pencils", "stickers", "marbles", "cookies", "books", "cards", "shells"]


def word_problem(rng: random.Random, level: int) -> Draft:
    who, things = rng.choice(_NAMES), rng.choice(_THINGS)
    if level == 1:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        question = f"{who} has {a} {things} and gets {b} more. How many {things} does {who} have?"
        return question, a + b, [f"{who} starts with {a} and gets {b}: {a} + {b} = {a + b}."]
    if level == 2:
        a, b = rng.randint(10, 40), rng.randint(5, 30)
        c = rng.randint(1, a + b - 1)
        question = (
            f"{who} has {a} {things}, buys {b} more, and then gives {c} to a friend. "
            f"How many {things} does {who} have now?"
        )
        steps = [
            f"After buying: {a} + {b} = {a + b}.",
            f"After giving: {a + b} - {c} = {a + b - c}.",
        ]
        return question, a + b - c, steps
    bags, each, had = rng.randint(3, 12), rng.randint(5, 15), rng.randint(10, 60)
    total = bags * each + had
    c = rng.randint(1, total - 1)
    question = (
        f"{who} has {had} {things} and buys {bags} boxes with {each} {things} in each box. "
        f"Then {who} gives away {c}. How many {things} are left?"
    )
    steps = [
        f"The boxes hold {bags} × {each} = {bags * each}.",
        f"Together: {had} + {bags * each} = {total}.",
        f"After giving away {c}: {total} - {c} = {total - c}.",
    ]
    return question, total - c, steps


def comparison(rng: random.Random, level: int) -> Draft:
    size = level + 1  # 2, 3 or 4 numbers
    numbers = rng.sample(range(1 if level == 1 else 10 ** (level - 1), 10**level), size)
    listed = ", ".join(map(str, numbers))
    top, bottom = max(numbers), min(numbers)
    if level == 1:
        a, b = numbers
        return f"Which number is larger, {a} or {b}?", top, [f"{top} is more than {bottom}."]
    if level == 2:
        return f"What is the largest of these numbers: {listed}?", top, [f"The largest is {top}."]
    steps = [
        f"The largest is {top} and the smallest is {bottom}.",
        f"{top} - {bottom} = {top - bottom}.",
    ]
    question = f"What is the difference between the largest and the smallest of {listed}?"
    return question, top - bottom, steps


def doubling_halving(rng: random.Random, level: int) -> Draft:
    if level < 3:
        n = rng.randint(1, 9) if level == 1 else rng.randint(10, 99)
        if rng.random() < 0.5:
            return f"What is double {n}?", 2 * n, [f"Double {n} is {n} + {n} = {2 * n}."]
        return f"What is half of {2 * n}?", n, [f"Half of {2 * n} is {2 * n} / 2 = {n}."]
    ops = [rng.choice(["double", "halve"]) for _ in range(3)]
    # start on a multiple of 2^halvings so every halving stays whole
    start = rng.randint(50, 499) * 2 ** ops.count("halve")
    words = {"double": "double it", "halve": "halve it"}
    question = (
        f"Start with {start}, {', then '.join(words[o] for o in ops)}. What number do you get?"
    )
    steps, value = [], start
    for op in ops:
        new = value * 2 if op == "double" else value // 2
        steps.append(f"{op.capitalize()} {value}: {new}.")
        value = new
    return question, value, steps


def counting(rng: random.Random, level: int) -> Draft:
    if level < 3:
        low = rng.randint(1, 8) if level == 1 else rng.randint(10, 80)
        high = rng.randint(low + 1, 9) if level == 1 else rng.randint(low + 2, 99)
        question = f"How many whole numbers are there from {low} to {high}, counting both?"
        return (
            question,
            high - low + 1,
            [f"From {low} to {high}: {high} - {low} + 1 = {high - low + 1}."],
        )
    k, n = rng.randint(3, 12), rng.randint(100, 999)
    steps = [f"The multiples are {k}, {2 * k}, ..., up to {k} × {n // k} = {k * (n // k)}."]
    steps.append(f"{n} / {k} = {n // k} remainder {n % k}, so there are {n // k}.")
    return f"How many multiples of {k} are there from 1 to {n}?", n // k, steps


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("addition", addition, "a + b"),
        Family("subtraction", subtraction, "a - b, never negative"),
        Family("multiplication", multiplication, "a × b"),
        Family("remainder", remainder, "a mod b"),
        Family("linear_equation", linear_equation, "solve a x + b = c for integer x"),
        Family("percentage", percentage, "p% of n, whole result"),
        Family("unit_conversion", unit_conversion, "time, length: one or two conversions"),
        Family("word_problem", word_problem, "has, buys, gives away: one to three steps"),
        Family("comparison", comparison, "largest of a list; range at level 3"),
        Family("doubling_halving", doubling_halving, "double or half; chains at level 3"),
        Family("counting", counting, "whole numbers in a range; multiples at level 3"),
    ]
}


def stream_seed(family: str, level: int, seed: int) -> int:
    """A 64-bit seed for one (family, level, seed) stream, the same in every process."""
    digest = hashlib.sha256(f"{family}|{level}|{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def generate(family: str, level: int, count: int, seed: int = 0) -> list[Problem]:
    """``count`` problems of one family and level; the same arguments give the same list.

    Questions are distinct while the family's space allows; a tiny space (level-1
    addition has 81 questions) then repeats questions rather than loop forever.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown synthetic family {family!r}; expected one of {list(FAMILIES)}")
    if level not in LEVELS:
        raise ValueError(f"level {level!r} for {family!r}; expected one of {list(LEVELS)}")
    rng = random.Random(stream_seed(family, level, seed))
    make = FAMILIES[family].make
    seen: set[str] = set()
    problems: list[Problem] = []
    attempts = 0
    while len(problems) < count:
        question, answer, steps = make(rng, level)
        attempts += 1
        if question in seen and attempts < 50 * count:
            continue
        seen.add(question)
        solution = "\n".join([*steps, f"The answer is \\boxed{{{answer}}}."])
        problems.append(
            Problem(
                id=f"syn-{family}-L{level}-s{seed}-{len(problems):04d}",
                question=question,
                answer=str(answer),
                solution=solution,
                source=family,
                level=level,
                meta={"family": family, "seed": seed},
            )
        )
    return problems


def generate_mix(
    families: Iterable[str] | None = None,
    levels: int | Iterable[int] = 1,
    count: int = 64,
    seed: int = 0,
) -> list[Problem]:
    """``count`` problems spread evenly over every (family, level) pair, shuffled by seed.

    ``families=None`` means all of ``FAMILIES``. Each pair is generated on its own stream,
    so adding a family does not change the problems drawn for the others.
    """
    names = list(FAMILIES) if families is None else list(families)
    level_list = [levels] if isinstance(levels, int) else list(levels)
    pairs = [(f, lv) for f in names for lv in level_list]
    if not pairs or count < 0:
        raise ValueError(
            f"generate_mix needs families, levels and count >= 0; got {pairs}, {count}"
        )
    per_pair = -(-count // len(pairs))  # ceiling division
    streams = [generate(f, lv, per_pair, seed) for f, lv in pairs]
    # interleave before truncating, so every pair is represented when count >= len(pairs)
    mixed = [stream[i] for i in range(per_pair) for stream in streams][:count]
    random.Random(stream_seed("mix", 0, seed)).shuffle(mixed)
    return mixed
