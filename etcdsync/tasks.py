"""Stopping asyncio tasks without swallowing our own cancellation; running users' callbacks."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
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


async def call_user(callback: Callable[[Any], Any], arg: Any, log: logging.Logger, what: str) -> None:
    """Run a user's callback (plain or async) with `arg`; an exception is logged on `log`, never fatal
    to the `what` ("watch", "view") that calls it. Our own cancellation still propagates."""
    try:
        result = callback(arg)
        if inspect.isawaitable(result):
            await result
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - the user's code: log and go on
        log.exception("%s callback %r raised; the %s goes on", what, callback, what)
