"""The pure part of config views: config events, snapshots, typed reads, the apply marker's
format, the hold gate and the cache file's format. No I/O here except `write_cache`/`read_cache`
(plain files; that is why this module is not in `core/`).

Apply markers (written by `applymark`, read by views): an `etcdsync apply` or a daemon reconcile
that commits its plan in more than one transaction first puts

    <reserved>applying/<applyset>/<16 hex>   {"v":1,"applyset":"<name>","prefixes":["/config/a/",...]}

in a transaction of its own (under a lease kept alive while it runs), commits its batches, and
then revokes the lease, which deletes the marker in a revision of its own. So a marker created at
revision c and deleted at d covers exactly the apply's writes, which all lie strictly between c and
d: etcd's state at c is the state before the apply and at d the state after it. A view publishes
only states at revisions no marker overlapping its prefix covers (see `Gate`).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigValueError

MARKER_VERSION = 1
CACHE_VERSION = 1
_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class ConfigEvent:
    """A change to a config key: `type` is "put" or "delete"; `value` is None for deletes;
    `old_value` is the value before (None: absent, or not known). (Defined here, below both the
    watches of `aio` and the views that deliver it; `etcdsync.ConfigEvent` is this class.)"""

    type: str
    key: str
    value: str | None
    revision: int
    old_value: str | None = None


# -- snapshots and typed reads ---------------------------------------------------------------

class Snapshot(Mapping[str, str]):
    """An immutable view of every key under a prefix at one etcd revision (full keys -> text)."""

    __slots__ = ("_data", "revision")

    def __init__(self, data: Mapping[str, str], revision: int) -> None:
        self._data = dict(data)
        self.revision = revision

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"Snapshot(revision={self.revision}, keys={len(self._data)})"

    def get_json(self, key: str, default: Any = _MISSING) -> Any:
        """The key's value parsed as JSON. Absent: `default` (None when not given). A value that is
        not JSON raises ConfigValueError, also when a default is given (see `typed`)."""
        text = self._data.get(key)
        if text is None:
            return None if default is _MISSING else default
        return parse_json(key, text)

    def get_int(self, key: str, default: Any = _MISSING) -> Any:
        """The key's value as an int (optional sign and decimal digits, surrounding blanks allowed)."""
        text = self._data.get(key)
        if text is None:
            return None if default is _MISSING else default
        return parse_int(key, text)

    def get_bool(self, key: str, default: Any = _MISSING) -> Any:
        """The key's value as a bool: true/false, yes/no, on/off, 1/0 (any case, blanks allowed)."""
        text = self._data.get(key)
        if text is None:
            return None if default is _MISSING else default
        return parse_bool(key, text)


_INT = re.compile(r"[+-]?[0-9]+")
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def _described(text: str) -> str:
    """What a value looks like, without showing it (it may be a secret)."""
    if not text:
        return "the value is empty"
    if not text.strip():
        return f"the value is {len(text)} blank characters"
    return f"the value has {len(text)} characters"


def parse_int(key: str, text: str) -> int:
    stripped = text.strip()
    if not _INT.fullmatch(stripped):
        raise ConfigValueError(key, f"not an integer: expected an optional sign and decimal digits; {_described(text)}")
    return int(stripped)


def parse_bool(key: str, text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ConfigValueError(key, f"not a boolean: expected true/false, yes/no, on/off or 1/0; {_described(text)}")


def parse_json(key: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError's message names the position, never the content
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "invalid"
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise ConfigValueError(key, f"not JSON: {reason}{where}; {_described(text)}") from None
    except RecursionError:
        raise ConfigValueError(key, f"not JSON this reader accepts: nested too deeply; {_described(text)}") from None


# -- apply markers ---------------------------------------------------------------------------

def marker_prefix(reserved: str) -> str:
    return f"{reserved}applying/"


def encode_marker(applyset: str, prefixes: set[str] | frozenset[str]) -> bytes:
    doc = {"v": MARKER_VERSION, "applyset": applyset, "prefixes": sorted(prefixes)}
    data = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(data) > 64 * 1024:   # thousands of prefixes: say "everything" rather than a huge value
        data = json.dumps({"v": MARKER_VERSION, "applyset": applyset, "prefixes": [""]}).encode("utf-8")
    return data


def marker_prefixes(value: bytes) -> tuple[str, ...] | None:
    """The prefixes a marker says its apply writes; None when the value is not a marker of this
    version (a view then treats it as covering every prefix: holding back is the safe side)."""
    try:
        doc = json.loads(value)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("v") != MARKER_VERSION or not isinstance(doc.get("applyset"), str):
        return None
    prefixes = doc.get("prefixes")
    if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
        return None
    return tuple(prefixes)


def overlaps(view_prefix: str, value: bytes) -> bool:
    """Whether an apply marked with `value` may write under `view_prefix`."""
    prefixes = marker_prefixes(value)
    if prefixes is None:
        return True
    return any(p.startswith(view_prefix) or view_prefix.startswith(p) for p in prefixes)


@dataclass
class Gate:
    """Which revisions a view may publish: those that no overlapping apply marker covers.

    It knows the markers up to revision `known` (from the marker watch, or a pinned read of the
    marker prefix). A marker created at c and deleted at d covers the revisions c < r < d; `None`
    for d means not deleted as far as known. Markers the view gave up waiting for (`give_up`) are
    ignored from then on.
    """

    known: int = 0
    markers: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    ignored: set[str] = field(default_factory=set)

    def reset(self, at: int, present: Mapping[str, int]) -> None:
        """The overlapping markers present at revision `at` (key -> create revision), as read there."""
        self.markers = {k: (c, None) for k, c in present.items()}
        self.known = at

    def learn(self, at: int, present: Mapping[str, int]) -> None:
        """A pinned read at `at` (beyond `known`): markers present there are live; a marker known
        live but absent there ended at `at` at the latest (taken as `at`: holding longer is safe)."""
        if at <= self.known:
            return
        for k, (c, d) in list(self.markers.items()):
            if d is None and k not in present:
                self.markers[k] = (c, at)
        for k, c in present.items():
            if k not in self.markers:
                self.markers[k] = (c, None)
        self.known = at

    def put(self, key: str, create_revision: int, revision: int, overlapping: bool) -> None:
        """A marker put seen on the watch (its revision beyond `known`)."""
        if revision <= self.known:
            return
        if overlapping and key not in self.markers:
            self.markers[key] = (create_revision, None)
        self.known = revision

    def delete(self, key: str, revision: int) -> None:
        if revision <= self.known:
            return
        if key in self.markers:
            c, d = self.markers[key]
            if d is None:
                self.markers[key] = (c, revision)
        self.known = revision

    def covered(self, at: int) -> bool | None:
        """Whether an apply is half done at revision `at`; None when `at` is beyond what is known."""
        if at > self.known:
            return None
        return any(c < at and (d is None or at < d) for k, (c, d) in self.markers.items() if k not in self.ignored)

    def live(self) -> bool:
        """Some overlapping marker is live at `known` (an apply runs as far as we know)."""
        return any(d is None for k, (_, d) in self.markers.items() if k not in self.ignored)

    def give_up(self) -> list[str]:
        """Stop waiting for every marker live now; returns their keys."""
        keys = sorted(k for k, (_, d) in self.markers.items() if d is None and k not in self.ignored)
        self.ignored.update(keys)
        return keys

    def forget_before(self, revision: int) -> None:
        """Drop markers that ended at or before `revision` (published past them: never asked again)."""
        for k, (_, d) in list(self.markers.items()):
            if d is not None and d <= revision:
                del self.markers[k]
                self.ignored.discard(k)


# -- the cache file ------------------------------------------------------------------------

def encode_cache(prefix: str, snap: Snapshot) -> bytes:
    doc = {"v": CACHE_VERSION, "prefix": prefix, "revision": snap.revision, "items": dict(sorted(snap.items()))}
    return json.dumps(doc, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def decode_cache(prefix: str, data: bytes) -> Snapshot:
    """The snapshot a cache file holds; ValueError (with the reason) when it is not one for `prefix`."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("v") != CACHE_VERSION:
        raise ValueError("not an etcdsync view cache (version 1)")
    if doc.get("prefix") != prefix:
        raise ValueError(f"it caches prefix {doc.get('prefix')!r}, not {prefix!r}")
    items = doc.get("items")
    revision = doc.get("revision")
    if type(revision) is not int or not isinstance(items, dict) \
            or not all(isinstance(k, str) and k.startswith(prefix) and isinstance(v, str) for k, v in items.items()):
        raise ValueError("malformed items or revision")
    return Snapshot(items, revision)


def write_cache(path: str | os.PathLike[str], prefix: str, snap: Snapshot) -> None:
    """Replace the cache file atomically: a temporary file beside it (mode 0600), fsync, rename,
    fsync of the directory. A crash leaves the old file or the new one, never a mix."""
    target = Path(path)
    directory = target.parent
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(encode_cache(prefix, snap))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_cache(path: str | os.PathLike[str], prefix: str) -> Snapshot:
    with open(path, "rb") as fh:
        return decode_cache(prefix, fh.read())
