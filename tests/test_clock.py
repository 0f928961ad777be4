"""sdlib.clock: seconds per phase, an inner phase charged to itself alone."""

import time

from sdlib import clock


def test_nested_phases_charge_each_second_once():
    clock.reset()
    with clock.phase("outer"):
        time.sleep(0.05)
        with clock.phase("inner"):
            time.sleep(0.1)
        with clock.phase("inner"):
            time.sleep(0.05)
    with clock.phase("outer"):
        time.sleep(0.02)
    spent = clock.totals()
    assert 0.15 <= spent["inner"] < 0.2
    assert 0.07 <= spent["outer"] < 0.1  # its own 0.05 + 0.02, not the inner 0.15
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
