"""Flap detection, pure: counts in a sliding window, a cool-down, and bounded memory."""

from __future__ import annotations

import pytest

from etcdsync.daemon.flaps import FlapDetector, FlapSettings


def test_the_threshold_th_repair_within_the_window_makes_a_key_flap() -> None:
    d = FlapDetector(FlapSettings(threshold=3, window=10, cooldown=100))
    assert [d.repaired("k", t) for t in (0, 1, 2)] == [False, False, True]
    assert d.flapping(50) == {"k": 52}
    assert d.holding("k", 2) and d.holding("k", 101.9) and not d.holding("k", 102)
    assert d.flapping(102) == {}


def test_repairs_spread_wider_than_the_window_never_flap() -> None:
    d = FlapDetector(FlapSettings(threshold=3, window=10, cooldown=100))
    assert not any(d.repaired("k", t) for t in (0, 6, 12, 18, 24, 30))
    # exactly `window` apart falls out of it
    d2 = FlapDetector(FlapSettings(threshold=2, window=10, cooldown=100))
    assert d2.repaired("k", 0) is False and d2.repaired("k", 10) is False and d2.repaired("k", 19.9) is True


def test_keys_are_counted_apart_and_a_cool_down_ends_with_a_fresh_count() -> None:
    d = FlapDetector(FlapSettings(threshold=2, window=10, cooldown=5))
    assert d.repaired("a", 0) is False and d.repaired("b", 1) is False
    assert d.repaired("a", 2) is True and not d.holding("b", 2)
    assert d.repaired("a", 3) is False          # in its cool-down: not counted
    assert not d.holding("a", 7)
    assert d.repaired("a", 8) is False and d.repaired("a", 9) is True


def test_forget_and_prune() -> None:
    d = FlapDetector(FlapSettings(threshold=2, window=10, cooldown=50))
    d.repaired("a", 0)
    d.forget("a")
    assert d.repaired("a", 1) is False
    assert d.repaired("a", 2) is True
    d.forget("a")
    assert not d.holding("a", 3)
    for i in range(1000):
        d.repaired(f"k{i}", 100)
    d.prune(111)
    assert not d._repairs and not d.flapping(111)


@pytest.mark.parametrize("kw", [{"threshold": 1}, {"window": 0}, {"cooldown": -1}])
def test_settings_are_checked(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FlapSettings(**kw)  # type: ignore[arg-type]
