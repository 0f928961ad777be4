import json
import multiprocessing
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pandas as pd
import pytest

from sdlib import grading
from sdlib.grading import (
    Grade,
    extract_answer,
    grade,
    grade_response,
    is_equivalent,
)

SENTINEL = Path("/tmp/PWNED_sdlib")
SLOW_PAIR = ("(x+1)^{9999}", "(x+2)^{9999}")  # sympy expands for well over 30 s
BENCHMARKS = ("aime24", "aime25", "amc23", "math500")


@pytest.fixture(scope="module")
def worker():
    """A started symbolic worker, so timings below do not include its first import."""
    assert grade("2\\sqrt{2}", "\\sqrt{8}") == Grade(True, "symbolic")
    return grading._WORKER


# ---------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("\\boxed{\\left\\{ 1, 2 \\right\\}}", "\\left\\{ 1, 2 \\right\\}"),  # escaped braces
        ("first \\boxed{3}, then \\boxed{4}", "4"),
        ("<think>maybe \\boxed{1}</think>It is \\boxed{2}", "2"),
        ("<think>maybe \\boxed{1}</think>no box, sorry", None),
        ("<think>a</think>b</think>\\boxed{7}", "7"),
        ("<think>still thinking \\boxed{5}", None),
        ("thinking \\boxed{5}</think>", None),  # R1 style: box only before </think>
        ("\\boxed{3} then \\boxed{\\frac{1}{2}", None),  # last box cut off
        ("\\boxed{}", None),
        ("\\boxed{ 12 }", "12"),
        ("the answer is $\\boxed 5$.", "5"),
        ("\\fbox{6}", "6"),
        ("\\boxedx{1} \\boxed{\\boxed{9}}", "9"),
        ("Some work.\nAnswer: 42\n", "42"),
        ("**Answer:** $\\frac{3}{4}$.", "\\frac{3}{4}"),
        ("answer: 1\nFinal Answer: 2", "2"),
        ("Answer: 7 \\boxed{8}", "8"),  # a box beats an Answer: line
        ("<reasoning>x</reasoning>\n<answer>\nB\n</answer>", "B"),
        ("no answer here", None),
        ("", None),
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


@pytest.mark.parametrize(
    "text",
    [
        "\\boxed{" * 50_000,
        "\\boxed{" + "{" * 100_000,
        "\\boxedx" * 20_000 + "\\boxed{1}",
        "Answer:" + " " * 100_000 + "\n" + "*" * 100_000,
        "\n".join(["Answer" + "*" * 50] * 2_000),
        "<answer>" * 20_000,
        "</think>" * 20_000 + "\\fbox " * 10_000,
        "\\" * 100_000,
    ],
)
def test_extraction_is_linear_on_hostile_input(text):
    start = time.perf_counter()
    extract_answer(text)
    grade_response(text, "B")
    assert time.perf_counter() - start < 0.5


# --------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize(
    ("pred", "gold", "reason"),
    [
        ("1,000", "1000", "exact"),
        ("1 000", "1000", "exact"),
        ("+7", "7", "exact"),
        ("\\$1,\\!000", "1000", "exact"),
        ("90^\\circ", "90", "exact"),
        ("90", "90^{\\circ}", "exact"),
        ("12 \\text{ cm}^2", "12", "exact"),
        ("\\text{5}", "5", "exact"),
        ("0.5", "\\frac{1}{2}", "exact"),
        ("1/2", "\\tfrac12", "exact"),
        ("\\dfrac{3}{4}", "0.75", "exact"),
        ("-\\frac{1}{2}", "-0.5", "exact"),
        ("\\frac{-1}{2}", "-1/2", "exact"),
        ("\\frac{9}{5}", "1\\frac{4}{5}", "exact"),  # a mixed number
        ("50\\%", "0.5", "exact"),  # a percentage reads as v or v/100, as in math-verify
        ("50", "50\\%", "exact"),
        ("3.10", "3.1", "exact"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\dfrac{\\pi}{2})", "exact"),
        ("2\\sqrt{3}", "\\sqrt{12}", "symbolic"),
        ("x^2+2x+1", "(x+1)^2", "symbolic"),
        ("\\pi/2", "\\frac{\\pi}{2}", "symbolic"),
        ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", "symbolic"),
        ("x=5", "5", "exact"),  # variable = value: the value is graded
        ("\\frac{1}{3}", "0.33", "exact"),  # a decimal key: the answer rounded to its places
        ("0.\\overline{3}", "\\frac13", "exact"),  # a repeating decimal is exact
    ],
)
def test_equivalent(pred, gold, reason, worker):
    assert grade(pred, gold) == Grade(True, reason)
    assert is_equivalent(pred, gold)


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("3", "4"),
        ("1000", "100"),
        ("-\\frac{1}{2}", "\\frac{1}{2}"),
        ("0.3333333", "\\frac13"),  # a decimal is the number it writes (math-verify rounds)
        ("0.33", "\\frac13"),
        ("2 3", "23"),
        ("1, 234", "1234"),  # a pair, not a thousands separator
        ("x^2+1", "(x+1)^2"),
        ("\\sqrt{2}", "\\sqrt{3}"),
        ("\\pi", "3.14"),
        ("\\text{Evelyn}", "\\text{Navin}"),
    ],
)
def test_not_equivalent(pred, gold, worker):
    result = grade(pred, gold)
    assert result == Grade(False, "mismatch")
    assert not is_equivalent(pred, gold)


@pytest.mark.parametrize(
    ("pred", "gold", "correct"),
    [
        ("B", "B", True),
        ("(B)", "B", True),
        ("B.", "B", True),
        ("B: -2.436", "B", True),
        ("\\text{(B)}", "B", True),
        ("\\textbf{B}", "(B)", True),
        ("C", "\\text{(C)}", True),
        ("C", "B", False),
        ("Both", "B", False),
        ("b", "B", False),  # only capital letters name options
        ("-2.436", "B", False),
    ],
)
def test_multiple_choice(pred, gold, correct):
    assert grade(pred, gold) == Grade(correct, "exact" if correct else "mismatch")


def test_no_answer():
    assert grade(None, "5") == Grade(False, "no_answer")
    assert grade("   ", "5") == Grade(False, "no_answer")
    assert grade_response("<think>unfinished \\boxed{5}", "5") == Grade(False, "no_answer")
    assert grade_response("<think>x</think>So \\boxed{5}.", "5") == Grade(True, "exact")


def test_fast_path_refuses_huge_numbers():
    huge = "9" * 100_000
    start = time.perf_counter()
    assert grading._number("9" * 1_001) is None
    assert grade(huge, "5") == Grade(False, "error")  # refused, never parsed
    assert grade(huge, huge) == Grade(True, "exact")  # same string, no number built
    assert time.perf_counter() - start < 0.5


# ------------------------------------------------------------------- reference gold answers


def _reference_golds(root: Path) -> list[str]:
    golds = []
    for name in BENCHMARKS:
        frame = pd.read_parquet(root / "math" / "evaluation" / f"{name}.parquet")
        for cell in frame["reward_model"]:  # a dict in aime24, a JSON string elsewhere
            golds.append((json.loads(cell) if isinstance(cell, str) else cell)["ground_truth"])
    return golds


def _perturb(gold: str) -> str:
    """A value certainly unequal to ``gold``: the next option letter, the number plus one,
    or the expression plus one."""
    letter = grading._choice_letter(gold, whole=True)
    if letter is not None:
        return "ABCDEFGHIJ"[("ABCDEFGHIJ".index(letter) + 1) % 10]
    number = grading._number(gold)
    if number is not None:
        value = number.value + 1
        return f"{value.numerator}/{value.denominator}"
    return f"{gold}+1"


def test_reference_golds_equal_themselves_and_not_a_perturbation(shared_data, worker):
    golds = _reference_golds(shared_data)
    assert len(golds) == 600
    failures = []
    for gold in golds:
        same, other = grade(gold, gold), grade(_perturb(gold), gold)
        if same != Grade(True, "exact") or other.correct or other.reason != "mismatch":
            failures.append((gold, same, other))
    assert failures == []


def test_fast_path_agrees_with_math_verify_on_reference_golds(shared_data, worker):
    """Every gold the fast path reads as a number, math-verify reads as the same number."""
    disagree = []
    for gold in set(_reference_golds(shared_data)):
        number = grading._number(gold)
        if number is None or gold.strip().isdigit():
            continue
        value = number.value
        if worker.check(f"{value.numerator}/{value.denominator}", gold, 5.0) != "symbolic":
            disagree.append(gold)
    assert disagree == []


# ------------------------------------------------------------------------- no eval, ever


def test_parent_process_never_imports_sympy():
    """The model text meets sympy only inside the worker process."""
    code = (
        "import sys; from sdlib.grading import grade, Grade; "
        "assert grade('2\\\\sqrt{3}', '\\\\sqrt{12}') == Grade(True, 'symbolic'); "
        "assert not {'sympy', 'math_verify'} & set(sys.modules), 'imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_latex_path_hands_only_number_literals_to_parse_expr(monkeypatch):
    """``parse_expr`` (sympy's eval) is reached from the LaTeX path only via sympy.Number on
    lexer-checked digits; a control with ExprExtractionConfig shows the probe would catch
    model text (it records the string and refuses to evaluate it)."""
    math_verify = pytest.importorskip("math_verify")
    import latex2sympy2_extended.latex2sympy2 as l2s
    import sympy.parsing.sympy_parser as sympy_parser
    import sympy.physics.units  # noqa: F401 - imported lazily on the way, sympifying its own names

    real, seen = sympy_parser.parse_expr, []

    def probe(text, *args, **kwargs):
        seen.append(text)
        if not re.fullmatch(r"[0-9.]+", text):
            raise ValueError("refused")
        return real(text, *args, **kwargs)

    for module in (sympy_parser, math_verify.parser, l2s):
        monkeypatch.setattr(module, "parse_expr", probe)
    check = grading._make_checker()
    for text in [
        *CODE,
        "x^2+1",
        "3 \\text{ cm}",
        "1.5 \\text{ m}^2",
        "\\frac{1}{2}",
        "3.25",
        "12345678901234567890",
        "1.5\\%",
    ]:
        check(text, "5")
    assert seen and all(re.fullmatch(r"[0-9.]+", t) for t in seen), seen
    math_verify.parse("Answer: 2*(3+4)", [math_verify.ExprExtractionConfig()], parsing_timeout=None)
    assert "2*(3+4)" in seen  # the default config's expression path evals model text
    assert not SENTINEL.exists()


# --------------------------------------------------------------------- threads and timeouts


def test_grading_from_threads(worker):
    results = {}

    def run(k):
        results[k] = grade(f"{k}\\sqrt{{3}}", f"\\sqrt{{{3 * k * k}}}")

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2, 6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == {k: Grade(True, "symbolic") for k in range(2, 6)}


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
def test_grading_inside_daemonic_pool_workers(start_method, worker):
    """Pool workers are daemonic, and multiprocessing lets those have no children."""
    with multiprocessing.get_context(start_method).Pool(1) as pool:
        remote = pool.apply(grade, (f"{start_method}\\cdot 2", f"2 {start_method}"))
    assert remote == Grade(True, "symbolic")


def test_forked_child_leaves_the_parents_worker_alone(worker):
    """A forked process inherits the worker handle; its timeout must kill its own worker."""
    assert grade("7\\sqrt{2}", "\\sqrt{98}") == Grade(True, "symbolic")
    pid = worker._proc.pid
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply(grade, (*SLOW_PAIR, 0.3)) == Grade(False, "timeout")
    assert worker._proc.pid == pid and worker._proc.poll() is None
    assert grade("5\\sqrt{2}", "\\sqrt{50}") == Grade(True, "symbolic")


def test_timeout_is_prompt_and_worker_recovers(worker):
    box = {}

    def run():
        start = time.perf_counter()
        box["grade"] = grade(*SLOW_PAIR, timeout=0.5)
        box["seconds"] = time.perf_counter() - start

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert box["grade"] == Grade(False, "timeout")
    assert box["seconds"] < 2.0
    # timeouts are not cached: the same pair times out again instead of reading "mismatch"
    assert grade(*SLOW_PAIR, timeout=0.2).reason == "timeout"
    assert grade("3\\sqrt{2}", "\\sqrt{18}") == Grade(True, "symbolic")


# ------------------------------------------------------------------------------------ fuzz

TOKENS = [
    "\\boxed{", "\\fbox{", "{", "}", "\\{", "\\}", "</think>", "<think>", "Answer:", "\\frac",
    "\\dfrac", "^", "_", "$", "\\", "\\\\", "(", ")", "[", "]", ",", ".", "-", "+", "/", "!",
    "\\sqrt", "\\pi", "\\text{", "\\%", "x", "y", "=", " ", "\n", "1", "9", "0", "\\left(",
    "\\right)", "<answer>", "</answer>", "\\circ", "\\infty", "\\cup", "B", "(C)", "\\$",
]  # fmt: skip
CODE = [
    "__import__('os').system('touch /tmp/PWNED_sdlib')",
    "open('/tmp/PWNED_sdlib','w').write('x')",
    "eval(\"__import__('os').system('touch /tmp/PWNED_sdlib')\")",
    "exec('import os; os.system(\"touch /tmp/PWNED_sdlib\")')",
    "(lambda: __import__('pathlib').Path('/tmp/PWNED_sdlib').touch())()",
    "().__class__.__base__.__subclasses__()",
]
BOMBS = [
    "10^{10^{10}}", "9^{9^{9}}", "2^{2^{2^{2^{2^{2}}}}}", "1000000!", "(10^{6})!",
    "x^{10^{10}}", "(x+1)^{9999}", "\\underbrace{" * 300 + "1" + "}" * 300,
    "\\frac{" * 400 + "1" + "}{2}" * 400, "e^{e^{e^{e^{99}}}}", "10^{-10^{10}}",
    "\\sum_{n=1}^{10^{10}} n", "\\prod_{k=1}^{100000} k", "10^{100000}", "2^{99999}",
]  # fmt: skip


def _fuzz_cases(rng: random.Random) -> dict[str, list[str]]:
    """Hostile strings by kind; deterministic for a seeded ``rng``."""
    soup = ["".join(rng.choices(TOKENS, k=rng.randint(1, 80))) for _ in range(1500)]
    nested = []
    for _ in range(600):  # deep nesting, sometimes unbalanced
        depth = rng.randint(100, 5000)
        nested.append("\\boxed{" + "{" * depth + "1" + "}" * (depth - rng.randint(0, 2)) + "}")
    huge = ["\\boxed{" + str(rng.randint(1, 9)) * 100_000 + "}" for _ in range(40)]
    wraps = ["{}", "\\boxed{{{}}}", "<think>hm</think>\\boxed{{{}}}", "Answer: {}"]
    bombs = [rng.choice(wraps).format(rng.choice(BOMBS + CODE)) for _ in range(1600)]
    chars = []
    for _ in range(800):  # control characters and unicode, lone surrogates included
        chars.append("".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(rng.randint(1, 60))))
        chars.append("\\boxed{" + "".join(chr(rng.randint(0, 31)) for _ in range(20)) + "}")
    long = ["".join(rng.choices("ab{}\\$ \n^0123456789", k=100_000)) for _ in range(10)]
    return {"soup": soup, "nested": nested, "huge": huge, "bombs": bombs, "chars": chars,
            "long": long}  # fmt: skip


def test_fuzz_hostile_strings(worker, monkeypatch):
    SENTINEL.unlink(missing_ok=True)
    reasons = Counter()

    def counted(pred, gold, timeout, check=worker.check):
        reasons[reason := check(pred, gold, timeout)] += 1
        return reason

    monkeypatch.setattr(worker, "check", counted)
    rng = random.Random(1234)
    kinds = _fuzz_cases(rng)
    cases = [text for texts in kinds.values() for text in texts]
    assert len(cases) >= 5_000
    slowest = 0.0
    for text in cases:  # extraction, choice letters and the fast path: no worker involved
        start = time.perf_counter()
        answer = extract_answer(text)
        assert isinstance(grade_response(text, "B"), Grade)
        assert grading._fast_equal(text, "5") in (True, False, None)
        assert answer is None or isinstance(answer, str)
        slowest = max(slowest, time.perf_counter() - start)
    assert slowest < 1.0
    # Through the worker: a sample of the short strings and every bomb and payload once.
    # Bombs the guard lets through cost a full timeout each, so they are not repeated.
    timeout = 1.0
    symbolic = rng.sample(kinds["soup"] + kinds["chars"], 250) + kinds["nested"][:5]
    symbolic += [f"\\boxed{{{p}}}" for p in BOMBS + CODE] + [f"Answer: {p}" for p in CODE]
    for text in symbolic:
        for call, gold in ((grade_response, "5"), (grade, "x+1")):
            start = time.perf_counter()
            assert isinstance(call(text, gold, timeout), Grade)
            assert time.perf_counter() - start < timeout + 2.0
    assert not SENTINEL.exists()
    # Most of the sample (control characters, unbalanced braces) is now refused as malformed
    # before the worker; the bombs and payloads the guard lets through still reach it.
    assert sum(reasons.values()) >= 20 and reasons["timeout"] >= 1, reasons
    assert grade("3\\sqrt{3}", "\\sqrt{27}") == Grade(True, "symbolic")


def test_perturbation_is_unequal_for_numbers():
    assert _perturb("540") == "541/1"
    assert _perturb("\\frac{1}{2}") == "3/2"
    assert _perturb("\\text{(C)}") == "D"
    assert Fraction(_perturb("-3")) == -2


@pytest.mark.parametrize(
    "pred, gold, ok",
    [
        ("x - 2 = -2", "-2", False),  # math-verify alone accepts this; x is 0 here
        ("2 + 3 = 5", "5", True),  # a computation whose every side is the value
        ("2 + 3 = 6", "6", False),  # ... and not when one side is another value
        ("x = 5", "5", True),
        ("n=\\frac{1}{2}", "0.5", True),
        ("x = 2 + 3 = 5", "5", True),
    ],
)
def test_equations_state_a_value_only_as_name_and_value(pred, gold, ok):
    assert grade(pred, gold).correct is ok


@pytest.mark.parametrize(
    "pred, gold, correct",
    [(3, "3", True), (3.0, "3", True), (4, "3", False), (True, "1", False), (None, "3", False)],
)
def test_the_grader_takes_any_value_and_never_raises(pred, gold, correct):
    assert grade(pred, gold).correct is correct
    assert grade_response(pred, gold).correct is False or isinstance(pred, str)
