"""Intervals for every number sdlib shows: a hierarchical bootstrap over seeds, problems
and samples, and paired differences between runs that share problems.

Data are arrays ``x[seed, problem, sample]`` (``cube`` builds one from a samples table; NaN
marks a missing sample). One bootstrap replicate draws, in this order,

    seeds     s_1..s_S    uniformly with replacement from the S seeds
    problems  p_1..p_P    uniformly with replacement from the P problems
    samples   j_{p,1..K}  uniformly with replacement from the K samples, per drawn problem

and takes the mean of x[s, p, j] over everything drawn (NaNs left out). The interval is
the 2.5th and 97.5th percentile of ``n_boot`` replicates (percentile bootstrap); the point
estimate is the plain mean of x. A paired difference applies the *same* draws to two arrays
and takes the mean of the differences, so two identical runs differ by exactly 0 with a
zero-width interval; pairing fits sdlib's evaluations, where sample j of a problem is drawn
with the same seed for every model (``evaluate.problem_key``): common random numbers.
With one seed the seed level has no spread; with few seeds (three) it is coarse, which the
report says beside the figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

N_BOOT = 2000
LEVEL = 0.95
CHUNK = 250  # replicates drawn at once: bounds memory at [CHUNK, S, P, K]


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% interval and what it rests on."""

    value: float
    low: float
    high: float
    seeds: int
    problems: int
    samples: int  # non-missing values in all

    def excludes(self, x: float = 0.0) -> bool:
        """The interval lies wholly on one side of ``x``: the difference exceeds noise."""
        return self.low > x or self.high < x

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def columns(self, name: str) -> dict[str, float]:
        """``name``, ``name_lo``, ``name_hi``: the three numbers a table keeps."""
        return {name: self.value, f"{name}_lo": self.low, f"{name}_hi": self.high}


def _as_cube(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]  # one seed
    if x.ndim != 3 or 0 in x.shape:
        raise ValueError(f"expected values [seeds, problems, samples], got shape {x.shape}")
    return x


def draws(rng: np.random.Generator, shape: tuple[int, int, int], n: int):
    """The index arrays of ``n`` replicates, in the module's order: [n, S], [n, P], [n, P, K]."""
    s, p, k = shape
    return (
        rng.integers(s, size=(n, s)),
        rng.integers(p, size=(n, p)),
        rng.integers(k, size=(n, p, k)),
    )


def _replicates(cubes: list[np.ndarray], n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap means of ``cubes[0] - cubes[1]`` (or of ``cubes[0]``), same draws for all."""
    rng, out = np.random.default_rng(seed), []
    for start in range(0, n_boot, CHUNK):
        n = min(CHUNK, n_boot - start)
        si, pi, ji = draws(rng, cubes[0].shape, n)
        picked = []
        for x in cubes:
            rows = x[si[:, :, None], pi[:, None, :]]  # [n, S, P, K]
            picked.append(np.take_along_axis(rows, ji[:, None, :, :], axis=3))
        diff = picked[0] - picked[1] if len(picked) == 2 else picked[0]
        with np.errstate(invalid="ignore"):
            out.append(np.nanmean(diff.reshape(n, -1), axis=1))
    return np.concatenate(out)


def _estimate(cubes: list[np.ndarray], n_boot: int, seed: int, level: float) -> Estimate:
    if len(cubes) == 2 and cubes[0].shape != cubes[1].shape:
        raise ValueError(
            f"paired runs need the same shape, got {cubes[0].shape} and {cubes[1].shape}"
        )
    values = cubes[0] - cubes[1] if len(cubes) == 2 else cubes[0]
    reps = _replicates(cubes, n_boot, seed)
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(reps, [tail, 100 - tail])
    s, p, _ = values.shape
    return Estimate(
        float(np.nanmean(values)), float(low), float(high), s, p, int(np.isfinite(values).sum())
    )


def estimate(x, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> Estimate:
    """Mean of ``x[seed, problem, sample]`` (or ``x[problem, sample]``) and its interval."""
    return _estimate([_as_cube(x)], n_boot, seed, level)


def paired_difference(a, b, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> Estimate:
    """Mean of ``a - b`` over the same seeds, problems and samples, and its interval."""
    return _estimate([_as_cube(a), _as_cube(b)], n_boot, seed, level)


def cube(samples: pd.DataFrame, column: str, problems: list[str] | None = None) -> np.ndarray:
    """``column`` of a samples table (``seed``, ``problem_id``, ``sample`` columns) as an
    array [seed, problem, sample]; ``problems`` fixes the problem order (default: sorted),
    so two runs' cubes line up for ``paired_difference``. Missing samples are NaN."""
    frame = samples.assign(seed=samples.get("seed", 0))
    seeds = sorted(frame["seed"].unique())
    problems = problems or sorted(frame["problem_id"].unique())
    k = int(frame["sample"].max()) + 1
    out = np.full((len(seeds), len(problems), k), np.nan)
    s = frame["seed"].map({v: i for i, v in enumerate(seeds)}).to_numpy()
    p = frame["problem_id"].map({v: i for i, v in enumerate(problems)})
    keep = p.notna().to_numpy()
    out[s[keep], p[keep].astype(int).to_numpy(), frame["sample"].to_numpy()[keep]] = (
        frame[column].astype(float).to_numpy()[keep]
    )
    return out


def across_seeds(values, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> Estimate:
    """Mean of one number per seed and its bootstrap interval over seeds (a point, with a
    zero-width interval, for a single seed)."""
    x = np.asarray(values, dtype=np.float64).reshape(-1, 1, 1)
    return _estimate([x], n_boot, seed, level)


def ratio(num, den, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> Estimate:
    """``sum(num) / sum(den)`` over units (e.g. checks right / checks written, one unit per
    response) and its percentile-bootstrap interval over units drawn with replacement."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 1 or len(num) == 0:
        raise ValueError(f"expected two equal 1-d arrays, got {num.shape} and {den.shape}")
    rng, reps = np.random.default_rng(seed), []
    for start in range(0, n_boot, CHUNK):
        idx = rng.integers(len(num), size=(min(CHUNK, n_boot - start), len(num)))
        with np.errstate(invalid="ignore", divide="ignore"):
            reps.append(num[idx].sum(axis=1) / den[idx].sum(axis=1))
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(np.concatenate(reps), [tail, 100 - tail])
    value = num.sum() / den.sum() if den.sum() else float("nan")
    return Estimate(float(value), float(low), float(high), 1, len(num), int(den.sum()))


def pretty(frame: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """A table for reading: each ``name``/``name_lo``/``name_hi`` triple as one column
    ``name [95% CI]`` holding ``v [lo, hi]``."""
    out, f = {}, f"{{:.{digits}f}}"
    for col in frame.columns:
        if col.endswith(("_lo", "_hi")) and col[:-3] in frame:
            continue
        if f"{col}_lo" in frame and f"{col}_hi" in frame:
            out[f"{col} [95% CI]"] = [
                f"{f.format(v)} [{f.format(lo)}, {f.format(hi)}]"
                for v, lo, hi in zip(
                    frame[col], frame[f"{col}_lo"], frame[f"{col}_hi"], strict=True
                )
            ]
        else:
            out[col] = frame[col]
    return pd.DataFrame(out, index=frame.index)
