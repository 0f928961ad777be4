"""sdlib.clock: seconds per phase, an inner phase charged to itself alone."""

import time

from sdlib import clock


def test_nested_phases_charge_each_second_once():
    clock.reset()
    start = time.perf_counter()
    with clock.phase("outer"):
        time.sleep(0.02)
        with clock.phase("inner"):
            time.sleep(0.1)
        with clock.phase("inner"):
            time.sleep(0.05)
    with clock.phase("outer"):
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    spent = clock.totals()
    assert spent["inner"] >= 0.15 and 0.03 <= spent["outer"] < spent["inner"]
    # every second counted once: outer's own time plus inner's is the whole
    assert abs(spent["outer"] + spent["inner"] - elapsed) < 0.005
    clock.reset()
    assert clock.totals() == {}


def test_a_phase_that_raises_is_still_counted():
    clock.reset()
    try:
        with clock.phase("failing"):
            time.sleep(0.02)
            raise ValueError
    except ValueError:
        pass
    assert clock.totals()["failing"] >= 0.02


def test_a_phase_decorates_a_function_each_call_anew():
    clock.reset()

    @clock.phase("work")
    def work(seconds):
        time.sleep(seconds)
        return seconds

    start = time.perf_counter()
    assert work(0.02) == 0.02 and work(0.03) == 0.03
    assert 0.05 <= clock.totals()["work"] <= time.perf_counter() - start
