"""sdlib.stats against a brute-force bootstrap, and the properties a reader relies on."""

import numpy as np
import pandas as pd
import pytest

from sdlib import stats


def brute_force(x, n_boot, seed, other=None):
    """The bootstrap of the module docstring, one replicate and one value at a time."""
    rng = np.random.default_rng(seed)
    s_n, p_n, k_n = x.shape
    si, pi, ji = stats.draws(rng, x.shape, n_boot)  # the same draws, in the same order
    reps = []
    for b in range(n_boot):
        values = []
        for a in range(s_n):
            for c in range(p_n):
                for d in range(k_n):
                    v = x[si[b, a], pi[b, c], ji[b, c, d]]
                    if other is not None:
                        v = v - other[si[b, a], pi[b, c], ji[b, c, d]]
                    if not np.isnan(v):
                        values.append(v)
        reps.append(sum(values) / len(values))
    return np.percentile(reps, [2.5, 97.5])


def test_interval_matches_a_brute_force_bootstrap_on_a_fixed_seed():
    x = np.random.default_rng(0).binomial(1, 0.4, size=(3, 7, 4)).astype(float)
    x[1, 2, 3] = np.nan  # a missing sample is left out, not counted as 0
    est = stats.estimate(x, n_boot=200, seed=5)
    low, high = brute_force(x, 200, 5)
    assert (est.low, est.high) == pytest.approx((low, high), abs=1e-12)
    assert est.value == pytest.approx(np.nanmean(x)) and est.samples == 3 * 7 * 4 - 1
    assert (est.seeds, est.problems) == (3, 7)


def test_paired_difference_matches_a_brute_force_bootstrap():
    gen = np.random.default_rng(1)
    a, b = gen.normal(size=(2, 5, 3)), gen.normal(size=(2, 5, 3))
    est = stats.paired_difference(a, b, n_boot=150, seed=2)
    assert (est.low, est.high) == pytest.approx(brute_force(a, 150, 2, other=b), abs=1e-12)
    assert est.value == pytest.approx((a - b).mean())


def test_two_identical_runs_differ_by_exactly_zero_with_zero_width():
    x = np.random.default_rng(2).binomial(1, 0.5, size=(1, 30, 8)).astype(float)
    est = stats.paired_difference(x, x.copy())
    assert (est.value, est.low, est.high) == (0.0, 0.0, 0.0)
    assert not est.excludes(0)


def test_interval_covers_the_truth_at_about_its_level():
    # 200 experiments of 40 problems x 4 samples, p = 0.3: the 95% interval should cover
    # 0.3 in about 95% of them (the binomial spread of 200 trials is about +-3%)
    gen = np.random.default_rng(3)
    hits = sum(
        stats.estimate(
            gen.binomial(1, 0.3, size=(40, 4)).astype(float), n_boot=400, seed=i
        ).excludes(0.3)
        is False
        for i in range(200)
    )
    assert 0.89 <= hits / 200 <= 0.99


def test_a_clear_difference_exceeds_noise_and_a_null_one_does_not():
    gen = np.random.default_rng(4)
    base = gen.binomial(1, 0.5, size=(1, 60, 4)).astype(float)
    better = np.maximum(base, gen.binomial(1, 0.6, size=base.shape))  # right more often
    assert stats.paired_difference(better, base).excludes(0)
    noise = gen.binomial(1, 0.5, size=base.shape).astype(float)
    assert not stats.paired_difference(noise, gen.binomial(1, 0.5, size=base.shape)).excludes(0)


def test_cube_lines_up_two_runs_by_problem_and_sample():
    rows = [
        {"seed": s, "problem_id": p, "sample": j, "correct": float((s + j) % 2)}
        for s in (0, 1) for p in ("b", "a") for j in range(3)
    ]  # fmt: skip
    frame = pd.DataFrame(rows)
    x = stats.cube(frame, "correct", problems=["a", "b"])
    assert x.shape == (2, 2, 3) and x[1, 0, 0] == 1.0 and x[0, 1, 1] == 1.0
    assert np.isnan(stats.cube(frame.iloc[1:], "correct")[0, 1, 0])  # a missing sample


def test_pretty_puts_each_value_beside_its_interval():
    frame = pd.DataFrame({"accuracy": [0.5], "accuracy_lo": [0.4], "accuracy_hi": [0.6], "n": [3]})
    shown = stats.pretty(frame)
    assert list(shown.columns) == ["accuracy [95% CI]", "n"]
    assert shown.iloc[0, 0] == "0.500 [0.400, 0.600]"


def test_ratio_is_a_ratio_of_sums_with_a_bootstrap_over_units():
    num = np.array([3.0, 0.0, 2.0, 5.0, 1.0])
    den = np.array([4.0, 2.0, 2.0, 5.0, 3.0])
    est = stats.ratio(num, den, n_boot=500, seed=3)
    assert est.value == pytest.approx(11 / 16)
    # the same units drawn by a plain loop, float64
    rng = np.random.default_rng(3)
    reps = []
    for _ in range(2):  # CHUNK = 250 replicates per draw
        idx = rng.integers(5, size=(250, 5))
        reps += [num[i].sum() / den[i].sum() for i in idx]
    assert (est.low, est.high) == pytest.approx(tuple(np.percentile(reps, [2.5, 97.5])))
    assert est.low < est.value < est.high


def test_ratio_rejects_mismatched_units():
    with pytest.raises(ValueError, match="equal 1-d"):
        stats.ratio([1, 2], [1, 2, 3])
