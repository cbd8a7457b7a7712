"""Stopping asyncio tasks without swallowing our own cancellation."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel `tasks` and wait until they have finished; their errors are dropped.

    Awaiting each one inside `suppress(CancelledError)` would also swallow a cancellation of the
    caller that arrives meanwhile (the daemon's shutdown then hung forever); gather propagates it.
    """
    live = [t for t in tasks if t is not None]
    for t in live:
        t.cancel()
    if live:
        await asyncio.gather(*live, return_exceptions=True)


class Backoff:
    """Capped exponential backoff: `next()` is the delay to wait now (`first`, then doubled each time,
    at most `cap`); `reset()` after a success starts over from `first`."""

    def __init__(self, first: float, cap: float) -> None:
        self.first = first
        self.cap = cap
        self.delay = first

    def next(self) -> float:
        delay = self.delay
        self.delay = min(delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.delay = self.first

    async def sleep(self) -> None:
        await asyncio.sleep(self.next())
