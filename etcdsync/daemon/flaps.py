"""Flap detection (pure): a key another writer changes again after each repair.

The daemon repairs drift within milliseconds; a second writer that keeps putting its own value (a
misconfigured service, a script in a loop, a second tool) then fights it forever, and every round
is two writes and a log line. A key repaired `threshold` times within `window` seconds is
*flapping*: the daemon stops repairing it for `cooldown` seconds, says so once, and resumes after.
A repair that fails or finds nothing to do is not counted. Time is passed in (monotonic seconds), so
this module needs no clock and no I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FlapSettings:
    threshold: int = 5          # repairs of one key ...
    window: float = 60.0        # ... within this many seconds: flapping
    cooldown: float = 300.0     # seconds the daemon leaves a flapping key alone

    def __post_init__(self) -> None:
        if self.threshold < 2:
            raise ValueError("flap threshold: at least 2 repairs")
        if self.window <= 0 or self.cooldown <= 0:
            raise ValueError("flap window and cool-down: more than 0 seconds")


@dataclass
class FlapDetector:
    settings: FlapSettings = field(default_factory=FlapSettings)
    _repairs: dict[str, deque[float]] = field(default_factory=dict)
    _until: dict[str, float] = field(default_factory=dict)      # key -> end of its cool-down

    def repaired(self, key: str, now: float) -> bool:
        """Count one repair of `key` at `now`; True when this repair makes the key flapping."""
        if self.holding(key, now):
            return False
        times = self._repairs.setdefault(key, deque())
        times.append(now)
        horizon = now - self.settings.window
        while times and times[0] <= horizon:
            times.popleft()
        if len(times) >= self.settings.threshold:
            del self._repairs[key]
            self._until[key] = now + self.settings.cooldown
            return True
        return False

    def holding(self, key: str, now: float) -> bool:
        """Whether `key` is in its cool-down (the daemon must not repair it now)."""
        until = self._until.get(key)
        if until is None:
            return False
        if now >= until:
            del self._until[key]
            return False
        return True

    def flapping(self, now: float) -> dict[str, float]:
        """Every key in its cool-down, with the seconds left."""
        for key in [k for k, until in self._until.items() if now >= until]:
            del self._until[key]
        return {k: until - now for k, until in sorted(self._until.items())}

    def forget(self, key: str) -> None:
        """The key left the manifests, or its desired value changed: start counting afresh."""
        self._repairs.pop(key, None)
        self._until.pop(key, None)

    def prune(self, now: float) -> None:
        """Drop counts that fell out of the window (bounded memory with many drifting keys)."""
        horizon = now - self.settings.window
        for key in [k for k, t in self._repairs.items() if not t or t[-1] <= horizon]:
            del self._repairs[key]
        self.flapping(now)
