"""SIGINT and SIGTERM while a command writes: stop between transactions, never in the dark.

Without this, Ctrl-C cancelled an apply wherever it was (transactions in flight with an unknown
outcome, nothing recorded) and SIGTERM (a CI job cancelled, `timeout`) killed it outright: the
keys written so far had no history entry. With it, the first signal is noted and said on stderr;
the apply sends no further transaction, waits for the ones in flight, records what was committed as
a failed history entry and exits 130 (errors.Interrupted). A second signal stops at once, as before.
"""

from __future__ import annotations

import asyncio
import signal
from types import TracebackType
from typing import Any

import click

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_Handler = Any   # what signal.getsignal returns: a callable, an int constant or None


class Interrupts:
    """`with Interrupts() as stop:` inside a running event loop; `stop()` is None until the first
    SIGINT or SIGTERM, then that signal's name. Pass it as apply's `interrupted`."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._before: dict[signal.Signals, _Handler] = {}

    def __enter__(self) -> Interrupts:
        loop = asyncio.get_running_loop()
        try:
            for sig in _SIGNALS:
                self._before[sig] = signal.getsignal(sig)
                loop.add_signal_handler(sig, self._received, sig)
        except (ValueError, RuntimeError):   # not the main thread: signals stay as they are
            self._before.clear()
            return self
        self._loop = loop
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._restore()

    def __call__(self) -> str | None:
        return self.received

    def _received(self, sig: signal.Signals) -> None:
        self.received = sig.name
        self._restore()          # a second signal: the handling from before (asyncio's for Ctrl-C: cancel)
        again = "Ctrl-C again" if sig == signal.SIGINT else "a second signal"
        click.echo(f"interrupted ({sig.name}): stopping after the transactions in flight; {again} stops at once",
                   err=True)

    def _restore(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        for sig, before in self._before.items():
            loop.remove_signal_handler(sig)
            if before is not None:
                signal.signal(sig, before)

