"""A git repository as the daemon's source: `etcdsync run --git URL [--ref R] [--path DIR]`.

The daemon loads the manifests of one commit at a time, each checked out whole (sources.git). It polls
the ref every `interval` (one `git ls-remote`, no download when nothing moved), or at once when a push
webhook for the followed ref arrives (`POST /hooks/git`). A fetch that fails (server down, auth) is
logged once per distinct error and tried again at the next poll, the last good commit staying in
force; a commit whose manifests fail to load is reported with its SHA by the daemon's usual rule
(the last good desired state stays), and the next good commit replaces it.

Two commits are tracked apart: `snapshot`, the ref's head as last fetched (what polling compares), and
`loaded`, the commit whose manifests last loaded (what the daemon runs: `revision`, the provenance of
its writes). They differ while the head does not load. At start-up there is no last good commit in
memory; the daemon may then name one from the apply set's history (`fall_back`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

from ..core.model import DesiredState
from ..core.webhook import concerns, read_request
from ..errors import GitSourceError, ManifestError, WebhookError
from .git import GitSource, Snapshot

log = logging.getLogger("etcdsync.daemon")


class GitRepoSource:
    """The manifests under `path` of the commit `ref` names in the repository of `git`."""

    def __init__(self, git: GitSource, *, reserved: str, file_roots: Sequence[str] = (),
                 env_allow: Sequence[str] = (), interval: float = 60.0) -> None:
        self.git = git
        self.reserved = reserved
        self.file_roots = tuple(file_roots)
        self.env_allow = tuple(env_allow)
        self.interval = interval
        self.snapshot: Snapshot | None = None     # the ref's head, as last fetched
        self.loaded: Snapshot | None = None       # the commit whose manifests last loaded (what runs)
        self.head_error: str | None = None        # why the head does not load (None: it does, or not tried)
        self.origin: str = ""                     # how `loaded` was chosen, when not from the head
        self.fetch_error: str | None = None
        self._poke: asyncio.Event | None = None

    def describe(self) -> str:
        where = f"git {self.git.url} ({self.git.ref or 'default branch'}{', path ' + self.git.path if self.git.path else ''})"
        shown = self.loaded or self.snapshot
        if shown is None:
            return where
        text = f"{where} at {shown.sha[:12]}{' (' + self.origin + ')' if self.origin and shown is self.loaded else ''}"
        if self.head_error is not None and self.snapshot is not None and self.snapshot is not shown:
            text += f"; the ref's head {self.snapshot.sha[:12]} does not load"
        return text

    @property
    def revision(self) -> str | None:
        """The commit SHA whose manifests are loaded (not a newer head that failed to load)."""
        return self.loaded.sha if self.loaded else None

    @property
    def head(self) -> str | None:
        """The commit the ref named at the last fetch."""
        return self.snapshot.sha if self.snapshot else None

    async def prepare(self) -> None:
        """Fetch and check out the ref once (start-up; a GitSourceError here stops the daemon)."""
        self.snapshot = await self.git.pull()
        log.info("git: %s", self.describe())

    def load(self) -> DesiredState:
        snapshot = self.snapshot
        if snapshot is None:
            raise GitSourceError(f"{self.git.url}: nothing fetched yet")
        try:
            desired = snapshot.load(reserved_prefix=self.reserved, file_roots=self.file_roots, env_allow=self.env_allow)
        except ManifestError as exc:
            self.head_error = str(exc)
            raise
        self.loaded, self.head_error, self.origin = snapshot, None, ""
        return desired

    async def fall_back(self, sha: str, origin: str) -> DesiredState:
        """Fetch commit `sha` of this repository by SHA (a commit the history recorded), load it and run it
        while the ref's head does not load; the head stays what polling compares, so the next commit of
        the ref replaces it. Raises GitSourceError or ManifestError (nothing changes then)."""
        snapshot = await self.git.checkout(await self.git.fetch_commit(sha))
        desired = await asyncio.to_thread(snapshot.load, reserved_prefix=self.reserved, file_roots=self.file_roots,
                                          env_allow=self.env_allow)
        self.loaded, self.origin = snapshot, origin
        return desired

    def poke(self) -> None:
        """Poll now (a webhook said the ref moved)."""
        if self._poke is not None:
            self._poke.set()

    async def changes(self, current: Callable[[], DesiredState | None]) -> AsyncIterator[None]:
        self._poke = asyncio.Event()
        while True:
            try:
                await asyncio.wait_for(self._poke.wait(), self.interval)
            except TimeoutError:
                pass
            self._poke.clear()
            before = self.head
            try:
                if not await self.git.changed(before):
                    self._fetch_ok()
                    continue
                snapshot = await self.git.pull()
            except GitSourceError as exc:
                if self.fetch_error != str(exc):
                    log.error("git: %s; keeping commit %s", exc, (self.revision or "none")[:12])
                self.fetch_error = str(exc)
                continue
            self._fetch_ok()
            if snapshot.sha != before:
                self.snapshot = snapshot
                log.info("git: new commit %s", self.describe())
                yield

    def _fetch_ok(self) -> None:
        if self.fetch_error is not None:
            log.info("git: fetching works again")
        self.fetch_error = None

    def webhook(self, headers: Mapping[str, str], body: bytes, secret: bytes) -> tuple[int, str]:
        """Answer a push webhook: (HTTP status, text). A push of the followed ref polls at once."""
        try:
            push = read_request(headers, body, secret)
        except WebhookError as exc:
            log.warning("POST /hooks/git: %s", exc)
            return exc.status, f"{exc}\n"
        if push is None:
            return 204, ""
        if not concerns(push, self.git.resolved_ref or self.git.ref):
            return 204, ""
        log.info("POST /hooks/git: %s pushed %s to %s", push.provider, (push.sha or "a deletion")[:12], push.ref)
        self.poke()
        return 202, "fetching\n"
