import os
import re
import subprocess
import sys
from statistics import mean

import pytest

from sdlib import synthetic
from sdlib.synthetic import FAMILIES, LEVELS, generate, generate_mix

INT = re.compile(r"-?\d+")


def test_same_seed_same_list_other_seed_other_list():
    first = generate("addition", 2, 20, seed=3)
    assert first == generate("addition", 2, 20, seed=3)
    assert [p.question for p in first] != [p.question for p in generate("addition", 2, 20, seed=4)]


def test_streams_do_not_depend_on_python_hash_seed():
    code = (
        "from sdlib.synthetic import generate; "
        "print([p.question for p in generate('word_problem', 3, 5)])"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": salt},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for salt in ("1", "2")
    }
    assert len(outputs) == 1
    assert outputs.pop().strip() == str([p.question for p in generate("word_problem", 3, 5)])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("level", LEVELS)
def test_every_family_and_level_makes_valid_distinct_problems(family, level):
    problems = generate(family, level, 15, seed=0)
    assert len({p.question for p in problems}) == 15
    for i, p in enumerate(problems):
        assert p.id == f"syn-{family}-L{level}-s0-{i:04d}"
        assert (p.source, p.level) == (family, level)
        assert INT.fullmatch(p.answer), p
        assert p.question.endswith(("?", "."))
        assert p.solution.splitlines()[-1] == f"The answer is \\boxed{{{p.answer}}}."
        assert len(p.solution.splitlines()) >= 2


def _recompute(family: str, question: str) -> int:
    """Answers worked out again from the numbers in the question text."""
    n = [int(x) for x in INT.findall(question)]
    if family == "addition":
        return n[0] + n[1]
    if family == "subtraction":
        return n[0] - n[1]
    if family == "multiplication":
        return n[0] * n[1]
    if family == "remainder":
        return n[0] % n[1]
    if family == "percentage":
        assert n[0] * n[1] % 100 == 0
        return n[0] * n[1] // 100
    if family == "linear_equation":
        a, sign, b, c = re.search(r"(\d*)x ([+-]) (\d+) = (-?\d+)", question).groups()
        a, b = int(a or 1), int(b) * (1 if sign == "+" else -1)
        assert (int(c) - b) % a == 0
        return (int(c) - b) // a
    if family == "comparison":
        return max(n) if "difference" not in question else max(n) - min(n)
    if family == "counting":
        return n[1] - n[0] + 1 if "whole numbers" in question else n[2] // n[0]
    raise KeyError(family)


CHECKED = [
    "addition",
    "subtraction",
    "multiplication",
    "remainder",
    "percentage",
    "linear_equation",
    "comparison",
    "counting",
]


@pytest.mark.parametrize("family", CHECKED)
def test_answers_match_an_independent_computation(family):
    for level in LEVELS:
        for p in generate(family, level, 25, seed=7):
            assert int(p.answer) == _recompute(family, p.question), p


def test_word_doubling_and_unit_answers_follow_their_steps():
    # These solutions chain "... = N." steps; the last step's result is the answer.
    for family in ("word_problem", "doubling_halving", "unit_conversion"):
        for level in LEVELS:
            for p in generate(family, level, 10, seed=1):
                last_step = p.solution.splitlines()[-2]
                assert INT.findall(last_step)[-1] == p.answer, p


def test_level_one_is_single_digit_work():
    for p in generate("addition", 1, 30):
        a, b = map(int, INT.findall(p.question))
        assert 1 <= a <= 9 and 1 <= b <= 9
    for family in FAMILIES:
        assert all(
            abs(int(x)) <= 200 for p in generate(family, 1, 20) for x in INT.findall(p.question)
        )


@pytest.mark.parametrize("family", FAMILIES)
def test_numbers_grow_with_level(family):
    def size(level):
        problems = generate(family, level, 40, seed=2)
        return mean(
            max(abs(int(x)) for x in INT.findall(p.question + " " + p.answer)) for p in problems
        )

    assert size(1) < size(2) < size(3)


def test_small_spaces_repeat_instead_of_looping():
    problems = generate("remainder", 1, 40)  # only 22 level-1 remainder questions exist
    assert len(problems) == 40
    assert len({p.id for p in problems}) == 40


def test_mix_is_balanced_deterministic_and_built_from_the_same_streams():
    mixed = generate_mix(["addition", "counting"], [1, 2], 40, seed=5)
    assert mixed == generate_mix(["addition", "counting"], [1, 2], 40, seed=5)
    assert len(mixed) == 40
    pairs = {(p.source, p.level) for p in mixed}
    assert pairs == {("addition", 1), ("addition", 2), ("counting", 1), ("counting", 2)}
    alone = {p.id: p for p in generate("counting", 2, 10, seed=5)}
    assert all(alone[p.id] == p for p in mixed if (p.source, p.level) == ("counting", 2))
    assert {p.source for p in generate_mix(None, 1, 22)} == set(FAMILIES)


def test_bad_family_or_level_names_the_accepted_values():
    with pytest.raises(ValueError, match="addition"):
        generate("calculus", 1, 3)
    with pytest.raises(ValueError, match=r"\[1, 2, 3\]"):
        generate("addition", 7, 3)
    assert len(FAMILIES) >= 8 and synthetic.stream_seed("a", 1, 0) != synthetic.stream_seed(
        "a", 2, 0
    )
