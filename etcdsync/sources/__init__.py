"""Where the daemon's desired state comes from.

A source loads the desired state and says when it may have changed; the daemon consumes nothing
else of it. `files.FileSource` reads manifest files and directories (watched with watchfiles); a
source that follows a git repository is `gitrepo.GitRepoSource`, which implements the same `Source`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol

from ..core.model import DesiredState


class Source(Protocol):
    """The desired state, and a stream of hints that it may have changed."""

    def describe(self) -> str:
        """What is read, for log lines (e.g. the paths; a repository and the commit loaded)."""
        ...

    @property
    def revision(self) -> str | None:
        """The version of the desired state loaded (a git commit SHA), None when sources have none."""
        ...

    async def prepare(self) -> None:
        """Make the first load possible (a git source fetches here); called once before `load`."""
        ...

    def load(self) -> DesiredState:
        """Read the desired state now; raises ManifestError on bad input. Blocking: the daemon calls it
        in a worker thread after start-up."""
        ...

    def changes(self, current: Callable[[], DesiredState | None]) -> AsyncIterator[None]:
        """Yield whenever the desired state may have changed; the consumer reloads before asking for the
        next change. `current()` is the last state loaded (a source may watch what it refers to)."""
        ...
