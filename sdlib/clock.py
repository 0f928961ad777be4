"""Where a process's time goes, phase by phase.

    with phase("evaluate"):
        ...                                   # seconds charged to "evaluate"
    @phase("load model")                      # or every call of a function
    def load_policy(...): ...
    totals()                                  # {"evaluate": 12.3, ...}

A phase inside another is charged to itself alone: the outer one gets its own time minus
the inner one's, so the totals add up to the time spent in any phase. ``sdlib run`` reads
the totals each experiment writes (``timings.json`` in its results folder) and prints
where a run's time went, notebook by notebook.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict

_totals: dict[str, float] = defaultdict(float)
_inner: list[float] = []  # per open phase: the seconds its inner phases took


@contextlib.contextmanager
def phase(name: str):
    start = time.perf_counter()
    _inner.append(0.0)
    try:
        yield
    finally:
        spent = time.perf_counter() - start
        _totals[name] += spent - _inner.pop()
        if _inner:
            _inner[-1] += spent


def totals() -> dict[str, float]:
    """Seconds per phase since the last ``reset``."""
    return dict(_totals)


def reset() -> None:
    _totals.clear()
