"""The grader on hostile answers: work bounded by structure, trailing material decided.

Each class test below fails on the grader before the structural bound and the trailing rule
(deep brackets reached math-verify and burned its timeout; junk after a value graded as the
value); the hostile-input suite checks the guarantees stated in sdlib/grading.py."""

import random
import time
from collections import Counter

import pytest

from sdlib import grading
from sdlib.grading import Grade, grade, grade_response

DEEP = 20  # the depth; MAX_DEPTH is 8


@pytest.fixture(scope="module")
def worker():
    """A started symbolic worker, so timings do not include its first import."""
    assert grade("2\\sqrt{2}", "\\sqrt{8}") == Grade(True, "symbolic")
    return grading._WORKER


@pytest.fixture
def no_solver(monkeypatch):
    """Record every pair that reaches the symbolic worker, and answer "timeout" (what a
    pathological pair costs) without running anything."""
    seen = []

    def check(pred, gold, timeout):
        seen.append((pred, gold))
        return "timeout"

    monkeypatch.setattr(grading._WORKER, "check", check)
    return seen


def _timed(pred, gold, timeout=5.0):
    start = time.perf_counter()
    result = grade(pred, gold, timeout)
    return result, time.perf_counter() - start


# ----------------------------------------------------------------- work bounded by structure


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("(" * DEEP + "5" + ")" * DEEP, "5"),
        ("\\left(" * DEEP + "5" + "\\right)" * DEEP, "5"),
        ("{" * DEEP + "5" + "}" * DEEP, "5"),
        ("({" * 10 + "x+1" + "})" * 10, "x+1"),
        ("(" * DEEP + "1, 2" + ")" * DEEP, "(1,2)"),  # one pair stays: it makes the tuple
        ("(" * DEEP + "\\frac{1}{2}" + ")" * DEEP + ".", "0.5"),
    ],
)
def test_redundant_brackets_around_a_value_are_decided_exactly(pred, gold, no_solver):
    """Brackets around the whole answer that group nothing are dropped, not sent to
    math-verify (20 deep took 2-8 s there, or ran past the timeout and restarted it)."""
    result, seconds = _timed(pred, gold)
    assert result == Grade(True, "exact")
    assert no_solver == [] and seconds < 0.1


def _chain(opener: str, closer: str, depth: int, core: str = "5") -> str:
    return opener * depth + core + closer * depth


@pytest.mark.parametrize(
    "pred",
    [
        _chain("1+(", ")", DEEP),
        _chain("[", "]", DEEP),
        _chain("\\{", "\\}", DEEP),
        _chain("1+{", "}", DEEP),
        _chain("([\\{", "\\}])", 7),  # mixed kinds, 21 deep
        _chain("\\left[", "\\right]", DEEP),
        _chain("\\langle ", "\\rangle", DEEP),
        _chain("\\lceil ", "\\rceil", DEEP),
        _chain("\\frac{1}{1+", "}", DEEP),
        _chain("\\sqrt{2+", "}", DEEP),
        _chain("\\tan(", ")", 5),  # five nested functions: > 5 s in the solver
        _chain("\\exp(", ")", 5),
        "\\sin\\sin\\sin\\sin 1",
        "(10!)!",
        "10!!",  # math-verify reads two factorials: (10!)!
        "\\frac{10!}{2}!",
        "(9^9)^{9^9}",
        "2^(2^(2^2))",
        "+".join(["x"] * 300),  # 599 tokens
    ],
)
def test_explosive_shapes_are_refused_before_the_solver(pred, no_solver):
    result, seconds = _timed(pred, "7")
    assert result == Grade(False, "error")
    assert no_solver == [] and seconds < 0.1


@pytest.mark.parametrize(
    "pred",
    [
        "\\frac{(2n)!}{n!(n+1)!}",
        "\\sin(\\arctan(x))",
        "\\left( \\frac{\\sqrt{3}}{2}, \\frac{1}{2} \\right)",
        "\\sqrt{\\frac{2}{3+\\sqrt{5}}}",
        "\\frac{1}{1+\\frac{1}{1+\\frac{1}{2}}}",
        "e^{x^2}",
        "(x+1)^{10}",
        "10!",
        "\\binom{10}{3}",
        "[0, 1)",
        "\\{1, 2, 3\\}",
        "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
        "x^8 + x^7 + x^6 + x^5 + x^4 + x^3 + x^2 + x + 1",
    ],
)
def test_structural_bound_leaves_real_answers_to_the_solver(pred):
    assert not grading._too_complex(pred)


# ------------------------------------------------------------------------ trailing material


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("5 \\text{\\input{/etc/passwd}}", "5"),
        ("5\\text{\\input{x}}", "5"),
        ("x+1 \\text{\\include{x}}", "x+1"),
        ("5 \\textbf{!}", "5"),
        ("5 \\text{ million}", "5"),  # a scale: the value is 5000000
        ("(5 \\text{ million})", "5"),  # inside redundant brackets too
        ("5 \\text{ 6}", "5"),
        ("5 \\text{ or more}", "5"),  # a hedge
        ("5 \\text{ (the answer)}", "5"),
        ("5 \\ldots", "5"),  # the answer goes on
        ("5 😀", "5"),
        ("5\u200b", "5"),  # a zero-width space
        ("5\ufe0f\u20e3", "5"),  # the keycap emoji 5️⃣
        ("5 \x07", "5"),
        ("5 \\def\\x{6}", "5"),
        ("5 ^^5cinput{x}", "5"),
        ("5}\\boxed{6", "5"),  # breaks out of the box math-verify is handed
    ],
)
def test_trailing_junk_after_a_value_is_malformed(pred, gold):
    assert grade(pred, gold) == Grade(False, "malformed")
    assert grade_response(f"<think>hm</think>\\boxed{{{pred}}}", gold).correct is False


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("5 more", "5"),  # bare letters are maths (5·m·o·r·e), as LaTeX prints them
        ("5 no change", "5"),
        ("2 ab", "2"),
        ("x+1 t", "x+1"),
    ],
)
def test_bare_trailing_words_are_maths_not_units(pred, gold, worker):
    assert grade(pred, gold) == Grade(False, "mismatch")


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("5 \\text{ apples}", "5"),
        ("5 \\text{ cm}^2", "5"),
        ("5\\,\\text{m/s}", "5"),
        ("5 \\text{ square units}.", "5"),
        ("5.", "5"),
        ("x+1.", "x+1"),
        ("x + 1 \\text{ dollars}", "x+1"),
        ("5 \\quad", "5"),
        ("\\$5", "5"),
        ("5^\\circ", "5"),
        ("5 \\text{ percent}", "0.05"),
        ("\\text{Evelyn}", "\\text{Evelyn}"),
    ],
)
def test_harmless_trailing_material_is_ignored(pred, gold):
    assert grade(pred, gold) == Grade(True, "exact")


def test_units_reach_the_solver_only_as_decided_here(worker):
    """math-verify's own unit stripping is off: a note the grader does not drop is compared."""
    assert worker.check("5 \\text{ cm}", "5", 5.0) == "symbolic"  # dropped here, a unit
    assert worker.check("2 ab", "2", 5.0) == "mismatch"
    assert grade("2\\sqrt{3} \\text{ cm}", "\\sqrt{12}") == Grade(True, "symbolic")


# ----------------------------------------------------------------------- hostile-input suite

SUITE_SEED = 20_251
SUITE_TIMEOUT = 1.0  # seconds per symbolic check
SUITE_MARGIN = 0.5  # on top of the timeout, for everything else in a call
BRACKETS = [
    ("(", ")"), ("[", "]"), ("{", "}"), ("\\{", "\\}"), ("\\left(", "\\right)"),
    ("\\left[", "\\right]"), ("\\langle ", "\\rangle "), ("|", "|"), ("\\lceil ", "\\rceil "),
    ("\\sqrt{", "}"), ("\\frac{1}{", "}"), ("\\tan(", ")"), ("e^{", "}"), ("\\text{", "}"),
]  # fmt: skip
UNICODE = [
    "😀", "🔥", "\u200b", "\u200d", "\u202e", "\ufeff", "\ufe0f\u20e3", "\U000e0041", "\ue000",
    "\x00", "\x07", "\x1b[2J", "\r", "\u0301" * 30, "\ud800", "é", "π", "√", "∞", "°", "½",
    "５", "𝟓", "℃", "△", "中文", "\u00a0", "\u2028",
]  # fmt: skip


SMALL_BOMBS = ["(x+1)^{9999}", "(x+y+z)^{200}", "\\int e^{x^2}\\sin(x^3) dx"]


def _payloads(marker: str) -> list[str]:
    """Strings that would create ``marker`` if anything ever ran them."""
    touch = f"touch {marker}"
    return [
        f"__import__('os').system('{touch}')",
        f"open('{marker}','w').write('x')",
        f"eval(\"__import__('os').system('{touch}')\")",
        f"exec('import os; os.system(\"{touch}\")')",
        f"(lambda: __import__('pathlib').Path('{marker}').touch())()",
        "().__class__.__base__.__subclasses__()",
        f"$({touch})", f"`{touch}`", f"; {touch}",
        f"\\immediate\\write18{{{touch}}}", f"\\write18{{{touch}}}", f"\\input{{|{touch}}}",
        f"\\include{{{marker}}}", f"\\openout1={marker}", "\\def\\x{\\x}\\x",
        "\\csname input\\endcsname{/etc/passwd}", "\\catcode`\\^=0", f"^^5cinput{{{marker}}}",
        f"\\text{{\\input{{{marker}}}}}", f"\\href{{file://{marker}}}{{5}}",
        "\\newcommand{\\five}{5}\\five",
    ]  # fmt: skip


def _nested(rng: random.Random) -> str:
    """Brackets of one kind or mixed, 1-60 deep, around a value, sometimes unbalanced."""
    kinds = [rng.choice(BRACKETS) for _ in range(rng.choice([1, 1, 3]))]
    depth = rng.randint(1, 60)
    opened = [kinds[i % len(kinds)] for i in range(depth)]
    core = rng.choice(["5", "x+1", "\\frac{1}{2}", "1, 2"])
    closers = [c for _, c in reversed(opened)][: depth - rng.choice([0, 0, 0, 1, 2])]
    return "".join(o for o, _ in opened) + core + "".join(closers)


def _number_bomb(rng: random.Random) -> str:
    digits = lambda: str(rng.randint(2, 99))  # noqa: E731 - a tiny local generator
    height = rng.randint(2, 6)
    forms = [
        "^{".join(digits() for _ in range(height)) + "}" * (height - 1),
        f"({digits()}^{digits()})^{{{digits()}^{digits()}}}",
        f"{digits()}^{{{rng.randint(10**3, 10**7)}}}",
        f"{rng.randint(10**3, 10**8)}!",
        f"({digits()}!)!", f"{digits()}!!", f"({digits()}^{{{digits()}}})!",
        str(rng.randint(1, 9)) * rng.randint(500, 5000),
        f"\\binom{{{rng.randint(10**4, 10**6)}}}{{{rng.randint(10**3, 10**4)}}}",
        f"\\sum_{{n=1}}^{{10^{{{rng.randint(5, 12)}}}}} n",
        f"(x+{digits()})^{{{rng.randint(2, 30)}}}",
    ]  # fmt: skip
    return rng.choice(forms)


def _junk_tail(rng: random.Random) -> str:
    """A correct value with something after it."""
    tail = rng.choice(
        [
            rng.choice(UNICODE), "\\text{\\input{x}}", "\\text{ million}", "\\text{ or 6}",
            "\\ldots", ".", ",", "!", "\\text{ cm}^2", "\\quad", "\\text{ apples}", "\\;",
            "\\textbf{!}", "???", "\\%", "^\\circ", "\\text{ (approximately)}",
        ]
    )  # fmt: skip
    return "5" + rng.choice(["", " "]) + tail


def _soup(rng: random.Random, size: int) -> str:
    tokens = [
        "\\boxed{", "\\fbox{", "{", "}", "\\{", "\\}", "</think>", "<think>", "Answer:",
        "\\frac", "^", "_", "$", "\\", "\\\\", "(", ")", "[", "]", ",", ".", "-", "+", "/", "!",
        "\\sqrt", "\\pi", "\\text{", "\\%", "x", "=", " ", "\n", "1", "9", "\\left(",
        "\\right)", "<answer>", "</answer>", "\\circ", "B", "\\$", "\\tan", "|", "&",
    ]  # fmt: skip
    return "".join(rng.choices(tokens, k=size))


def _wrap(rng: random.Random, answer: str) -> str:
    """An answer as a response might hold it: boxed, in or after a think block, on an Answer:
    line, in many boxes, or bare."""
    forms = [
        "\\boxed{{{}}}", "<think>\\boxed{{1}}</think>\\boxed{{{}}}", "<think>\\boxed{{{}}}</think>",
        "So the answer is $\\boxed{{{}}}$.", "Answer: {}", "<answer>{}</answer>", "{}",
        "\\boxed{{1}}" * 50 + "\\boxed{{{}}}", "</think>" * 20 + "\\fbox{{{}}}",
    ]  # fmt: skip
    return rng.choice(forms).format(answer)


def _hostile_strings(seed: int, marker: str) -> list[str]:
    """A few thousand hostile responses, the same for the same seed."""
    rng = random.Random(seed)
    payloads = _payloads(marker)
    answers = [_nested(rng) for _ in range(1200)]
    answers += [_number_bomb(rng) for _ in range(700)]
    answers += [_junk_tail(rng) for _ in range(700)]
    answers += [rng.choice(payloads) for _ in range(500)]
    answers += ["".join(rng.choices(UNICODE, k=rng.randint(1, 8))) for _ in range(300)]
    answers += [_soup(rng, rng.randint(1, 60)) for _ in range(600)]
    answers += SMALL_BOMBS  # small shapes, huge work: these reach the solver and time out
    texts = [_wrap(rng, a) for a in answers]
    texts += [_soup(rng, rng.randint(2_000, 20_000)) for _ in range(15)]  # long strings
    texts += ["\\boxed{" * 5_000, "}" * 50_000, "\\boxed{" + "9" * 100_000 + "}"]
    texts += ["\\boxed{" + "{" * 3_000 + "5" + "}" * 3_000 + "}", "<think>" + "x" * 50_000]
    return texts


def test_hostile_input_suite(worker, tmp_path, monkeypatch):
    """0 exceptions, 0 executions, and every call back within its timeout plus a margin.

    After a timeout the worker restarts; that restart (importing sympy) is waited for
    outside the timed calls, as ``grade`` documents it comes on top of ``timeout``."""
    marker = tmp_path / "PWNED"
    texts = _hostile_strings(SUITE_SEED, str(marker))
    golds = ["5", "x+1", "\\frac{1}{2}", "B", "(1,2)"]
    real_check, solver = worker.check, Counter()

    def counted(pred, gold, timeout):
        solver[reason := real_check(pred, gold, timeout)] += 1
        return reason

    monkeypatch.setattr(worker, "check", counted)
    reasons, seconds, failures = Counter(), [], []
    start = time.perf_counter()
    for i, text in enumerate(texts):
        gold = golds[i % len(golds)]
        for call, arg in ((grade_response, text), (grade, grading.extract_answer(text) or text)):
            begun = time.perf_counter()
            try:
                result = call(arg, gold, SUITE_TIMEOUT)
            except Exception as e:  # the guarantee under test: never raised to the caller
                failures.append((text[:80], repr(e)))
                continue
            seconds.append(time.perf_counter() - begun)
            reasons[result.reason] += 1
            if result.reason == "timeout":  # wait out the restart, untimed
                real_check("1", "1", grading.WORKER_STARTUP_S)
    total = time.perf_counter() - start
    seconds.sort()
    figures = {
        "strings": len(texts), "calls": len(seconds), "total_s": round(total, 1),
        "max_s": round(seconds[-1], 3), "p99_s": round(seconds[int(0.99 * len(seconds))], 4),
        "solver_calls": sum(solver.values()), "reasons": dict(reasons.most_common()),
    }  # fmt: skip
    print("hostile-input suite:", figures)
    assert failures == []
    assert not marker.exists()
    assert len(texts) >= 4_000
    assert seconds[-1] < SUITE_TIMEOUT + SUITE_MARGIN, figures
    assert sum(solver.values()) < 0.2 * len(seconds), figures  # most decided before it
    assert reasons["malformed"] > 0 and reasons["error"] > 0 and reasons["timeout"] > 0, figures
