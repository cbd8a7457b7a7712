"""Manifest files and directories as the daemon's source, watched with watchfiles."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

from ..core.model import DesiredState
from ..errors import ManifestError


def _outermost(dirs: set[str]) -> list[str]:
    """Drop directories inside another one of the set (watched recursively already)."""
    out: list[str] = []
    for d in sorted(dirs):
        if not any(d == o or d.startswith(o + os.sep) for o in out):
            out.append(d)
    return out


def _symlinks_on(path: str, depth: int = 0) -> set[str]:
    """Every symlink met while resolving the absolute `path` (the path itself included when it is one),
    following each link's target; at most 40 links deep, as the kernel allows."""
    if depth > 40:
        return set()
    head = os.sep
    parts = [p for p in path.split(os.sep) if p]
    for i, part in enumerate(parts):
        here = os.path.join(head, part)
        try:
            target = os.readlink(here)
        except OSError:           # not a link (or gone): go on with the next component
            head = here
            continue
        rest = os.path.normpath(os.path.join(head, target, *parts[i + 1:]))
        return {here} | _symlinks_on(rest, depth + 1)
    return set()


class FileSource:
    """The manifests under `paths` (-f), loaded like the one-shot commands load them."""

    def __init__(self, paths: Sequence[str], *, reserved: str, file_roots: Sequence[str] = (),
                 env_allow: Sequence[str] = (), debounce: float = 0.2) -> None:
        self.paths = tuple(paths)
        self.reserved = reserved
        self.file_roots = tuple(file_roots)
        self.env_allow = tuple(env_allow)
        self.debounce = debounce
        """Seconds of quiet after a manifest file change before it is reloaded."""

    def describe(self) -> str:
        return ", ".join(self.paths)

    @property
    def revision(self) -> str | None:
        return None

    async def prepare(self) -> None:
        return None

    def load(self) -> DesiredState:
        from ..manifest import load_manifests

        return load_manifests(list(self.paths), reserved_prefix=self.reserved, file_roots=self.file_roots,
                              env_allow=self.env_allow)

    def fingerprint(self, sources: Iterable[str]) -> str | None:
        """A digest of what a load would read now: the manifest files the -f paths hold (their paths,
        found as the loader finds them, and bytes) and the fromFile `sources` (those the last load
        read). When a load's state read exactly those sources, an equal fingerprint later means a
        load would build the same state again (fromEnv values cannot change under a running
        process), so a resync need not parse the tree. None when it cannot be told (a path missing
        or unreadable)."""
        from ..manifest.loader import collect_files

        try:
            files = [os.fspath(f) for layer in collect_files(self.paths) for f in layer]
        except ManifestError:
            return None
        h = hashlib.sha256()
        for path in [*files, "\0fromFile", *sorted(set(sources))]:     # "\0": no path holds one
            h.update(path.encode("utf-8", "surrogateescape") + b"\0")
            if path.startswith("\0"):
                continue
            size = 0
            try:
                with open(path, "rb") as fh:
                    while block := fh.read(1 << 20):
                        h.update(block)
                        size += len(block)
            except OSError:
                return None
            h.update(b"\0" + size.to_bytes(8, "big"))
        return h.hexdigest()

    def watched(self, desired: DesiredState | None) -> tuple[list[str], Callable[[Any, str], bool]]:
        """The directories to watch and the filter of paths that may trigger a reload: manifest files
        (`*.yaml`/`*.yml` under a -f directory, not hidden; a file named with -f) and the fromFile
        sources of the loaded manifests. Anything else there (a log file, an editor's swap file) is
        ignored, so the daemon never reacts to its own output."""
        dirs: set[str] = set()
        files: set[str] = set()
        for p in self.paths:
            path = os.path.abspath(p)
            if os.path.isdir(path):
                dirs.add(path)
            else:
                files.add(path)
        sources = set(desired.sources if desired else ())
        roots = dirs | {os.path.dirname(f) for f in files | sources}
        real_dirs = {os.path.realpath(d) for d in dirs}
        named = files | sources | {os.path.realpath(f) for f in files | sources}
        # the symlinks a manifest or source path resolves through, hidden ones included: Kubernetes
        # publishes a ConfigMap or Secret volume's new version by renaming a new `..data` symlink over
        # the old one (`app.yaml -> ..data/app.yaml`), and no other name it touches is a manifest's
        named |= {link for path in self._manifest_files() | files | sources for link in _symlinks_on(path)}

        def wanted(_change: Any, path: str) -> bool:
            if path in named:
                return True
            if not path.endswith((".yaml", ".yml")):
                return False
            for d in dirs | real_dirs:
                if path.startswith(d + os.sep):
                    rel = path[len(d) + 1:]
                    return not any(part.startswith(".") for part in rel.split(os.sep))
            return False

        return sorted(r for r in _outermost(roots) if os.path.isdir(r)), wanted

    def _manifest_files(self) -> set[str]:
        """The manifest files the -f paths hold now (as the loader finds them), absolute, unresolved."""
        from ..manifest.loader import collect_files

        try:
            return {os.path.abspath(os.fspath(f)) for layer in collect_files(self.paths) for f in layer}
        except ManifestError:
            return set()

    async def changes(self, current: Callable[[], DesiredState | None]) -> AsyncIterator[None]:
        from watchfiles import awatch

        while True:
            roots, wanted = self.watched(current())
            restart = asyncio.Event()
            async for _changes in awatch(*roots, watch_filter=wanted, debounce=int(self.debounce * 1000),
                                         step=50, stop_event=restart, recursive=True):
                yield
                if self.watched(current())[0] != roots:   # a new fromFile source outside the watched folders
                    restart.set()
