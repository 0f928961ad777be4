"""The grader's rules (sdlib.grading, "Rules"), each on labelled pairs: traps a policy could
learn to write for reward, and legitimate answers a careful human grader accepts.

Pairs are generated per rule from a few templates and values, so a rule is held on many
answers, not one example. The gate: no trap graded correct (a false positive is a reward a
policy can learn), and no legitimate answer refused."""

from __future__ import annotations

import pytest

from sdlib.grading import grade

LETTERS = "ABCDEFGHIJ"
VALUES = [3, 7, 12, 25, 144]


def _choice() -> list[tuple[str, str, bool]]:
    pairs = []
    for i, gold in enumerate(LETTERS[:6]):
        other, third = LETTERS[(i + 1) % 10], LETTERS[(i + 3) % 10]
        for legit in (
            gold,
            f"({gold})",
            f"{gold}.",
            f"\\text{{({gold})}}",
            f"{gold}: 4.2",
            f"\\textbf{{{gold}}}",
            f"{gold}) 17 mol",
        ):
            pairs.append((legit, gold, True))
        for hedge in (
            f"{gold}, {other}",
            f"{gold} or {other}",
            f"{gold}/{other}",
            f"({gold}) ({other})",
            f"{gold} and {other}",
            f"{other}, {gold}",
            f"{gold}, {other}, {third}",
            f"{gold};{other}",
            other,
            f"({other})",
            f"{gold} \\text{{or}} {other}",
        ):
            pairs.append((hedge, gold, False))
    return pairs


_SAME_UNIT = [("cm", "centimeters"), ("m", "meters"), ("kg", "kilograms"), ("s", "seconds"),
              ("min", "minutes"), ("h", "hours"), ("in", "inches"), ("ft", "feet")]  # fmt: skip
_OTHER_UNIT = [("cm", "m"), ("kg", "m"), ("s", "min"), ("min", "h"), ("g", "kg"),
               ("mm", "cm"), ("ft", "in"), ("km", "mi")]  # fmt: skip


def _units() -> list[tuple[str, str, bool]]:
    pairs = []
    for v in VALUES[:3]:
        for a, b in _SAME_UNIT:
            pairs.append((f"{v} \\text{{ {b}}}", f"{v} \\text{{ {a}}}", True))
            pairs.append((f"{v}\\,\\mathrm{{{a}}}", f"{v} \\text{{ {a}}}", True))
        for a, b in _OTHER_UNIT:
            pairs.append((f"{v} \\text{{ {a}}}", f"{v} \\text{{ {b}}}", False))
            pairs.append((f"{v} \\text{{ {b}}}^2", f"{v} \\text{{ {b}}}", False))
        pairs.append((f"{v} \\text{{ cm}}", f"{v}", True))  # a unit on one side is a note
        pairs.append((f"{v}", f"{v} \\text{{ cm}}", True))
        pairs.append((f"{v} \\text{{ million}}", f"{v}", False))  # scales, not a unit
    return pairs


def _hedges() -> list[tuple[str, str, bool]]:
    pairs = []
    for v in VALUES:
        for hedge in (
            f"x \\approx {v}",
            f"\\approx {v}",
            f"x \\sim {v}",
            f"{v} \\approx {v}",
            f"x \\simeq {v}",
            f"≈ {v}",
            f"{v} \\text{{ or more}}",
            f"{v}\\ldots",
        ):
            pairs.append((hedge, str(v), False))
        pairs.append((f"\\approx {v}", f"\\approx {v}", True))  # the key itself hedges
    return pairs


def _equations() -> list[tuple[str, str, bool]]:
    pairs = []
    for v in VALUES:
        for legit in (
            f"x = {v}",
            f"{v} = x",
            f"f(x) = {v}",
            f"a_1 = {v}",
            f"n={v}",
            f"x = {v - 1} + 1 = {v}",
            f"{2 * v}/2 = {v}",
            f"\\theta = {v}",
            f"P(A) = {v}",
            f"{v - 2} + 2 = {v}",
        ):
            pairs.append((legit, str(v), True))
        for trap in (
            f"x = 1 \\text{{ and }} y = {v}",
            f"x = 1, y = {v}",
            f"x - 2 = {v}",
            f"x = 1; y = {v}",
            f"{v + 1} = {v}",
            f"x = {v + 1}",
            f"{v} = {v + 1}",
            f"x = {v} = {v + 1}",
            f"{v - 1} + 2 = {v}",
            f"x = 1 \\quad y = {v}",
        ):
            pairs.append((trap, str(v), False))
    return pairs


def _lists() -> list[tuple[str, str, bool]]:
    pairs = []
    for v in VALUES:
        for trap in (
            f"{v}, {v}",
            f"{v}, {v + 1}",
            f"{v + 1}, {v}",
            f"({v}, {v})",
            f"\\{{{v}, {v + 1}\\}}",
            f"{v}, {v}, {v}",
        ):
            pairs.append((trap, str(v), False))
        pairs.append((f"{v}, {v + 1}", f"{v}, {v + 1}", True))
        pairs.append((f"({v}, {v + 1})", f"({v},{v + 1})", True))
    pairs += [("1,000", "1000", True), ("12,345", "12345", True), ("1{,}000", "1000", True)]
    return pairs


def _intervals() -> list[tuple[str, str, bool]]:
    pairs = []
    for a, b in [(1, 3), (-2, 5), (0, 7), (4, 9)]:
        pairs += [
            (f"{a} \\le x \\le {b}", f"[{a}, {b}]", True),
            (f"{a} \\leq x \\leq {b}", f"[{a},{b}]", True),
            (f"{a} < x < {b}", f"({a}, {b})", True),
            (f"{a} \\le x < {b}", f"[{a}, {b})", True),
            (f"{b} \\ge x \\ge {a}", f"[{a}, {b}]", True),
            (f"{a} < x \\le {b}", f"[{a}, {b}]", False),
            (f"{a} \\le x \\le {b + 1}", f"[{a}, {b}]", False),
            (f"{a} < x < {b}", f"[{a}, {b}]", False),
        ]
    return pairs


def _decimals() -> list[tuple[str, str, bool]]:
    pairs = []
    for v in VALUES:
        pairs += [
            (f"{v - 1}.9999999", str(v), False),
            (f"{v}.0000001", str(v), False),
            (f"{v}.0", str(v), True),
            (f"{v}.00", str(v), True),
            (f"\\frac{{{2 * v}}}{{2}}", str(v), True),
            (f"{v}.5", f"\\frac{{{2 * v + 1}}}{{2}}", True),
        ]
    pairs += [
        ("0.3333333", "\\frac13", False),
        ("0.33", "\\frac13", False),
        ("\\frac13", "0.33", True),
        ("\\frac23", "0.67", True),
        ("\\frac23", "0.66", False),
        ("0.\\overline{3}", "\\frac13", True),
        ("0.\\overline{6}", "\\frac23", True),
        ("0.1\\overline{6}", "\\frac16", True),
        ("0.\\overline{142857}", "\\frac17", True),
        ("0.\\overline{3}", "0.33", True),
        ("0.\\overline{3}", "\\frac{1}{4}", False),
        ("3.14", "\\pi", False),
        ("1.41", "\\sqrt{2}", False),
        ("0.5", "\\frac12", True),
        (".5", "\\frac12", True),
    ]
    return pairs


def _percent() -> list[tuple[str, str, bool]]:
    pairs = []
    for v in VALUES:
        pairs += [
            (f"{v}\\%", str(v), True),
            (f"{v} \\text{{ percent}}", str(v), True),
            (f"{v * 100}\\%", str(v), False),  # 5000% for 50
            (f"{v}\\%", str(v + 1), False),
            (str(v), f"{v}\\%", True),
        ]
    for p, frac in [(50, "0.5"), (25, "0.25"), (10, "0.1"), (75, "\\frac34")]:
        pairs += [
            (f"{p}\\%", frac, True),
            (frac, f"{p}\\%", True),
            (f"{p}\\%", f"{p / 1000}", False),
        ]
    return pairs


def _unicode() -> list[tuple[str, str, bool]]:
    pairs = [
        ("½", "\\frac12", True), ("⅓", "\\frac{1}{3}", True), ("¾", "0.75", True),
        ("½", "\\frac13", False), ("√2", "\\sqrt{2}", True), ("2√3", "2\\sqrt{3}", True),
        ("√2", "\\sqrt{3}", False), ("−3", "-3", True), ("−3", "3", False),
        ("π", "\\pi", True), ("2π", "2\\pi", True), ("π/2", "\\frac{\\pi}{2}", True),
        ("1 ≤ x ≤ 3", "[1, 3]", True), ("x ≈ 3", "3", False),
    ]  # fmt: skip
    for a, b in [(3, 4), (5, 6), (7, 8)]:
        pairs += [(f"{a}·{b}", str(a * b), True), (f"{a}×{b}", str(a * b), True),
                  (f"{a * b}÷{b}", str(a), True), (f"{a}·{b}", str(a * b + 1), False)]  # fmt: skip
    return pairs


def _numbers() -> list[tuple[str, str, bool]]:
    pairs = []
    for v in VALUES:
        pairs += [
            (str(v), str(v), True),
            (f"\\boxed{{{v}}}"[7:-1], str(v), True),
            (f"{v}.", str(v), True),
            (f"\\${v}", str(v), True),
            (f"{v}^\\circ", str(v), True),
            (str(v + 1), str(v), False),
            (str(-v), str(v), False),
            (f"{v}0", str(v), False),
            (f"\\frac{{{v}}}{{2}}", str(v), False),
        ]
    return pairs


RULES = {
    "choice": _choice(),
    "units": _units(),
    "hedges": _hedges(),
    "equations": _equations(),
    "lists": _lists(),
    "intervals": _intervals(),
    "decimals": _decimals(),
    "percent": _percent(),
    "unicode": _unicode(),
    "numbers": _numbers(),
}


def test_the_suite_is_large_and_balanced():
    pairs = [p for ps in RULES.values() for p in ps]
    assert len(pairs) >= 300
    traps = sum(not ok for _, _, ok in pairs)
    assert traps >= 100 and len(pairs) - traps >= 100


@pytest.mark.parametrize("rule", list(RULES))
def test_rule(rule):
    wrong = []
    for pred, gold, ok in RULES[rule]:
        got = grade(pred, gold)
        if got.correct is not ok:
            wrong.append((pred, gold, ok, got.reason))
    false_positives = [w for w in wrong if not w[2]]
    assert false_positives == [], f"traps graded correct: {false_positives}"
    assert wrong == [], f"legitimate answers refused: {wrong}"


@pytest.mark.parametrize(
    "pred, gold, careful, reference",
    [
        ("2.9999999", "3", False, True),  # within 1e-4 of 3
        ("3.001", "3", False, False),  # 3.3e-4 away
        ("0.3333333", "\\frac13", False, True),
        ("5000\\%", "50", False, True),  # math_equal reads a reference as x/100 too
        ("50\\%", "0.5", True, True),
        ("A, B", "A", False, False),  # the reference rules loosen numbers only
        ("5 \\text{ cm}", "5 \\text{ m}", False, False),
        ("x \\approx 3", "3", False, False),
        ("3, 3", "3", False, False),
    ],
)
def test_reference_rules_loosen_numbers_only(pred, gold, careful, reference):
    assert grade(pred, gold).correct is careful
    assert grade(pred, gold, rules="reference").correct is reference


def test_unknown_rules_are_refused():
    with pytest.raises(ValueError, match="rules = 'lenient'"):
        grade("3", "3", rules="lenient")
