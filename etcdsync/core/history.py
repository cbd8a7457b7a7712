"""Apply history and suspension records, as kept in etcd under the reserved prefix (pure).

Layout (R is the reserved prefix, default `/.etcdsync/`):

    R history/<applyset>/<id>    one entry per apply or reconcile that wrote (JSON, see `HistoryEntry`)
    R suspend/<applyset>         present while the apply set's daemons must not write (JSON, see `Suspension`)

An entry's id is the etcd revision of the last write it records, zero-padded in the key so that keys
sort in time order. Entries are read strictly: a record that does not fit the one shape written here
is an error naming its key, never guessed at. Nothing here does I/O.

The records are NamedTuples: diff and apply import this module (for DEFAULT_LIMIT), and a dataclass
costs several times as much to create at import.
"""

from __future__ import annotations

import heapq
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple

from ..errors import InventoryError, UsageError

ENTRY_VERSION = 1
ID_DIGITS = 16
DEFAULT_LIMIT = 100          # entries kept per apply set (--history-limit)
MAX_KEYS = 20                # key names listed per entry (the rest is a count)
MAX_REVISIONS = 64           # revisions listed per entry (the span covers the rest)
MAX_FAILED = 300             # characters of the error kept in an entry of an apply that failed half way
KINDS = ("apply", "reconcile", "repair", "rollback")
SOURCE_FIELDS = frozenset({"commit", "repository", "ref", "path", "digest", "files", "rollbackOf"})

# patterns, compiled (and cached) by `re` on first use: a diff imports this module and uses none of them
_APPLYSET = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
_ID = rf"^[0-9]{{{ID_DIGITS}}}$"
_CONTROL = "[\x00-\x1f\x7f-\x9f]"
_COMMIT = r"[0-9a-f]{40}|[0-9a-f]{64}"


def history_prefix(reserved: str, applyset: str | None = None) -> str:
    """Where entries live: of one apply set, or (None) of every apply set."""
    return f"{reserved}history/" + (f"{applyset}/" if applyset is not None else "")


def entry_key(reserved: str, applyset: str, entry_id: int) -> str:
    return f"{history_prefix(reserved, applyset)}{entry_id:0{ID_DIGITS}d}"


def suspend_prefix(reserved: str) -> str:
    return f"{reserved}suspend/"


def suspend_key(reserved: str, applyset: str) -> str:
    return f"{suspend_prefix(reserved)}{applyset}"


def parse_id(text: str) -> int:
    """An entry id as the user types it (`1234` or the zero-padded form): a UsageError otherwise."""
    if not text.isascii() or not text.isdigit() or len(text) > ID_DIGITS or int(text) <= 0:
        raise UsageError(f"history entry id {_shown(text)!r}: a positive number as `etcdsync history` shows it")
    return int(text)


class _Bad(ValueError):
    pass


def _shown(text: str) -> str:
    return re.sub(_CONTROL, lambda m: f"\\u{ord(m.group()):04x}", text)


class HistoryEntry(NamedTuple):
    """What one writing apply, reconcile, repair window or rollback did.

    `revisions`: the revisions of its own transactions (at most MAX_REVISIONS, then `span` still
    covers them all); `repairs`: (key, revision) of each drift repair (repair entries); `flapping`:
    keys found flapping in the window; `keys`: the keys written (at most MAX_KEYS, `keys_total` all).
    """

    id: int
    applyset: str
    kind: str
    time: float
    who: str
    read: int                                        # the revision the plan was read at (0: none)
    revisions: tuple[int, ...]
    span: tuple[int, int]                            # first and last revision written
    source: Mapping[str, str] = MappingProxyType({})
    counts: Mapping[str, int] = MappingProxyType({})
    keys: tuple[str, ...] = ()
    keys_total: int = 0
    repairs: tuple[tuple[str, int], ...] = ()
    flapping: tuple[str, ...] = ()
    failed: str = ""                                 # the error that stopped it after these writes ("": none)

    @property
    def truncated(self) -> bool:
        """Not every revision is listed: a revision inside `span` may be this entry's."""
        return self.span[1] - self.span[0] + 1 > len(self.revisions) and len(self.revisions) >= MAX_REVISIONS

    def wrote(self, revision: int) -> str | None:
        """'yes' when `revision` is one of this entry's writes, 'probably' when it lies in the span of
        an entry whose list was capped (another writer may have committed in between), else None."""
        if revision in self.revisions:
            return "yes"
        if self.truncated and self.span[0] <= revision <= self.span[1]:
            return "probably"
        return None

    def as_json(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "v": ENTRY_VERSION, "id": self.id, "applyset": self.applyset, "kind": self.kind,
            "time": round(self.time, 3), "who": self.who, "read": self.read,
            "revisions": list(self.revisions), "span": list(self.span), "source": dict(self.source),
            "counts": dict(self.counts), "keys": list(self.keys), "keysTotal": self.keys_total,
        }
        if self.repairs:
            doc["repairs"] = [[k, r] for k, r in self.repairs]
        if self.flapping:
            doc["flapping"] = list(self.flapping)
        if self.failed:
            doc["failed"] = self.failed
        return doc


def make_entry(*, applyset: str, kind: str, who: str, revisions: Iterable[int], read: int = 0,
               source: Mapping[str, str] | None = None, counts: Mapping[str, int] | None = None,
               keys: Iterable[str] = (), repairs: Sequence[tuple[str, int]] = (), flapping: Iterable[str] = (),
               failed: str = "", now: float | None = None) -> HistoryEntry:
    """An entry for writes at `revisions` (at least one): capped lists, the id is the last revision.
    `failed`: the error that stopped an apply after these writes (capped at MAX_FAILED characters)."""
    revs = sorted(set(revisions))
    if not revs:
        raise ValueError("a history entry records at least one write")
    names = set(keys)
    shown_revs = revs if len(revs) <= MAX_REVISIONS else revs[:MAX_REVISIONS - 1] + [revs[-1]]
    return HistoryEntry(
        id=revs[-1], applyset=applyset, kind=kind, time=round(time.time() if now is None else now, 3), who=who, read=read,
        revisions=tuple(shown_revs), span=(revs[0], revs[-1]), source=dict(source or {}),
        counts={k: v for k, v in sorted((counts or {}).items()) if v}, keys=tuple(heapq.nsmallest(MAX_KEYS, names)),
        keys_total=len(names), repairs=tuple(sorted(repairs, key=lambda kr: kr[1])[-MAX_KEYS:]),
        flapping=tuple(sorted(set(flapping))[:MAX_KEYS]), failed=failed[:MAX_FAILED])


def encode_entry(entry: HistoryEntry) -> bytes:
    return json.dumps(entry.as_json(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


_ENTRY_FIELDS = frozenset({"v", "id", "applyset", "kind", "time", "who", "read", "revisions", "span", "source",
                           "counts", "keys", "keysTotal"})
_ENTRY_OPTIONAL = frozenset({"repairs", "flapping", "failed"})


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in pairs:
        if k in out:
            raise _Bad(f"field {k!r} appears twice")
        out[k] = v
    return out


MAX_TIME = 1e11      # seconds since the epoch (year 5138): beyond, or NaN/Infinity, no clock wrote it


def _seconds(value: object) -> bool:
    """A time as entries hold it: a finite number of seconds that time.gmtime can show."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= MAX_TIME


def _int(value: object, what: str, *, low: int = 0) -> int:
    if type(value) is not int or value < low:
        raise _Bad(f"{what!r} is not an integer >= {low}")
    return value


def _str_list(value: object, what: str, limit: int) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(k, str) for k in value) or len(value) > limit:
        raise _Bad(f"{what!r} is not a list of at most {limit} strings")
    return tuple(value)


def decode_entry(key: str, value: bytes, *, reserved: str) -> HistoryEntry:
    """The entry at `key`, checked against the one shape `encode_entry` writes; an InventoryError
    naming the key otherwise."""
    try:
        rest = key[len(history_prefix(reserved)):] if key.startswith(history_prefix(reserved)) else ""
        applyset, _, ident = rest.partition("/")
        if not re.fullmatch(_APPLYSET, applyset) or not re.fullmatch(_ID, ident):
            raise _Bad("not a history entry key (history/<apply set>/<16-digit id>)")
        doc = json.loads(value, object_pairs_hook=_no_duplicates)
        if not isinstance(doc, dict):
            raise _Bad("not a JSON object")
        if type(doc.get("v")) is not int or doc["v"] != ENTRY_VERSION:
            raise _Bad(f"unsupported history entry version {json.dumps(doc.get('v'))}")
        missing = _ENTRY_FIELDS - set(doc)
        if missing:
            raise _Bad(f"field {min(missing)!r} is missing")
        extra = set(doc) - _ENTRY_FIELDS - _ENTRY_OPTIONAL
        if extra:
            raise _Bad(f"unknown field {min(extra)!r}")
        entry_id = _int(doc["id"], "id", low=1)
        if entry_id != int(ident) or doc["applyset"] != applyset:
            raise _Bad("its id or apply set differs from its key")
        if doc["kind"] not in KINDS:
            raise _Bad(f"unknown kind {doc['kind']!r}")
        if not _seconds(doc["time"]):
            raise _Bad("'time' is not a number of seconds")
        if not isinstance(doc["who"], str) or len(doc["who"]) > 256:
            raise _Bad("'who' is not a string")
        read = _int(doc["read"], "read")
        revs = doc["revisions"]
        if not isinstance(revs, list) or not revs or len(revs) > MAX_REVISIONS:
            raise _Bad(f"'revisions' is not a list of 1 to {MAX_REVISIONS} revisions")
        revisions = tuple(_int(r, "revisions", low=1) for r in revs)
        span = doc["span"]
        if (not isinstance(span, list) or len(span) != 2 or _int(span[0], "span", low=1) > _int(span[1], "span", low=1)
                or span[1] != entry_id or not all(span[0] <= r <= span[1] for r in revisions)):
            raise _Bad("'span' is not [first, last] revision around 'revisions', ending at the id")
        source = doc["source"]
        if (not isinstance(source, dict) or set(source) - SOURCE_FIELDS
                or not all(isinstance(v, str) for v in source.values())):
            raise _Bad("'source' is not an object of known text fields")
        counts = doc["counts"]
        if not isinstance(counts, dict) or not all(type(v) is int and v >= 0 for v in counts.values()):
            raise _Bad("'counts' is not an object of counts")
        keys = _str_list(doc["keys"], "keys", MAX_KEYS)
        total = _int(doc["keysTotal"], "keysTotal")
        if total < len(keys):
            raise _Bad("'keysTotal' is less than the keys listed")
        repairs_doc = doc.get("repairs", [])
        if not isinstance(repairs_doc, list) or len(repairs_doc) > MAX_KEYS:
            raise _Bad("'repairs' is not a list of [key, revision]")
        repairs: list[tuple[str, int]] = []
        for item in repairs_doc:
            if not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str):
                raise _Bad("'repairs' is not a list of [key, revision]")
            repairs.append((item[0], _int(item[1], "repairs", low=1)))
        flapping = _str_list(doc.get("flapping", []), "flapping", MAX_KEYS)
        failed = doc.get("failed", "")
        if not isinstance(failed, str) or len(failed) > MAX_FAILED:
            raise _Bad(f"'failed' is not a text of at most {MAX_FAILED} characters")
        return HistoryEntry(entry_id, applyset, doc["kind"], float(doc["time"]), doc["who"], read, revisions,
                            (span[0], span[1]), dict(source), dict(counts), keys, total, tuple(repairs), flapping,
                            failed)
    except (ValueError, RecursionError) as exc:
        reason = str(exc).replace("\n", " ")[:200]
        raise InventoryError(f"{_shown(key)}: history entry is not readable ({_shown(reason)}); "
                             "fix or delete it by hand") from None


def last_commit(entries: Iterable[HistoryEntry], *, repository: str, path: str) -> HistoryEntry | None:
    """The newest entry whose source is a commit of `repository` with the manifests at `path` ('' = the
    repository's root): the commit a daemon runs at start-up when the head of its ref does not load."""
    for e in sorted(entries, key=lambda e: (e.id, e.applyset), reverse=True):
        src = e.source
        if (src.get("repository") == repository and src.get("path", "") == path
                and re.fullmatch(_COMMIT, src.get("commit", ""))):
            return e
    return None


def dropped(ids: Iterable[int], limit: int) -> list[int]:
    """Retention: the ids to delete so that, with one new entry added, at most `limit` stay (oldest go)."""
    if limit < 1:
        raise ValueError("history limit: at least 1")
    ordered = sorted(set(ids))
    excess = len(ordered) + 1 - limit
    return ordered[:excess] if excess > 0 else []


# -- suspension ------------------------------------------------------------------------------------

class Suspension(NamedTuple):
    applyset: str
    who: str
    time: float
    reason: str = ""

    def as_json(self) -> dict[str, object]:
        return {"v": ENTRY_VERSION, "applyset": self.applyset, "who": self.who, "time": round(self.time, 3),
                "reason": self.reason}


def encode_suspension(s: Suspension) -> bytes:
    return json.dumps(s.as_json(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode_suspension(key: str, value: bytes, *, reserved: str) -> Suspension:
    """The suspension record at `key` (strict, like entries); an InventoryError naming it otherwise."""
    try:
        applyset = key[len(suspend_prefix(reserved)):] if key.startswith(suspend_prefix(reserved)) else ""
        if not re.fullmatch(_APPLYSET, applyset):
            raise _Bad("not a suspension key (suspend/<apply set>)")
        doc = json.loads(value, object_pairs_hook=_no_duplicates)
        if not isinstance(doc, dict) or set(doc) != {"v", "applyset", "who", "time", "reason"}:
            raise _Bad("not an object with exactly v, applyset, who, time, reason")
        if doc["v"] != ENTRY_VERSION or type(doc["v"]) is not int or doc["applyset"] != applyset:
            raise _Bad("wrong version or apply set")
        if not isinstance(doc["who"], str) or not isinstance(doc["reason"], str):
            raise _Bad("'who' and 'reason' must be strings")
        if not _seconds(doc["time"]):
            raise _Bad("'time' is not a number of seconds")
        return Suspension(applyset, doc["who"], float(doc["time"]), doc["reason"])
    except (ValueError, RecursionError) as exc:
        raise InventoryError(f"{_shown(key)}: suspension record is not readable ({_shown(str(exc)[:200])}); "
                             "delete it by hand (etcdsync resume) or fix it") from None


# -- display -------------------------------------------------------------------------------------

def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def describe_source(source: Mapping[str, str]) -> str:
    if "rollbackOf" in source:
        return f"rollback to entry {source['rollbackOf']}"
    if "commit" in source:
        where = source.get("repository", "git")
        return f"{where}@{source['commit'][:12]}" + (f":{source['path']}" if source.get("path") else "")
    if "digest" in source:
        return f"files {source['digest'][:19]}" + (f" ({source['files']})" if source.get("files") else "")
    return "-"


def describe_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {what}" for what, n in counts.items()) or "-"


def entry_rows(entries: Sequence[HistoryEntry]) -> list[list[str]]:
    """Rows of the `history` table, newest first (cells unescaped: the CLI escapes)."""
    rows = [["ID", "TIME", "APPLYSET", "KIND", "WHO", "SOURCE", "CHANGES", "KEYS"]]
    for e in sorted(entries, key=lambda e: (e.id, e.applyset), reverse=True):
        names = ", ".join(e.keys[:3]) + (f" (+{e.keys_total - min(3, len(e.keys))} more)" if e.keys_total > 3 else "")
        flap = f"; flapping: {', '.join(e.flapping)}" if e.flapping else ""
        kind = f"{e.kind} (failed)" if e.failed else e.kind
        rows.append([str(e.id), iso(e.time), e.applyset, kind, e.who, describe_source(e.source),
                     describe_counts(e.counts), names + flap])
    return rows


def classify(revision: int, entries: Iterable[HistoryEntry], key: str) -> tuple[str, HistoryEntry | None]:
    """Who wrote `key` at `revision`, by the history entries: ('apply'|'reconcile'|'rollback'|'repair'
    [+ ' (probably)'], entry) for etcdsync's own writes, ('other', None) for another writer's."""
    maybe: tuple[str, HistoryEntry | None] | None = None
    for e in entries:
        if any(k == key and r == revision for k, r in e.repairs):
            return "repair", e
        how = e.wrote(revision)
        if how == "yes":
            return e.kind, e
        if how == "probably" and maybe is None:
            maybe = (f"{e.kind} (probably)", e)
    return maybe or ("other", None)
