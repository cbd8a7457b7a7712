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
