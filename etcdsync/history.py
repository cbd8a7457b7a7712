"""Apply history in etcd (the I/O half of `core.history`): record an entry with bounded retention,
list entries, read a key's past (etcd's MVCC history) and an apply set's state at a past revision,
and the suspension record.

Recording is a small transaction of its own, after the writes it records committed: a crash between
the two loses that one entry, never a write. The entry is put only if its key is absent, and the
oldest entries beyond the limit are deleted in the same transaction, each compared on its revision.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from .apply import Outcome
from .core.history import (
    ID_DIGITS,
    HistoryEntry,
    Suspension,
    decode_entry,
    decode_suspension,
    dropped,
    encode_entry,
    encode_suspension,
    entry_key,
    history_prefix,
    make_entry,
    suspend_key,
)
from .core.inventory import parse_ownership
from .core.model import DesiredKey, DesiredState, Policy
from .errors import CompactedError, EtcdsyncError, InventoryError, OwnershipError, UsageError
from .etcd.store import Compare, Delete, KeyValue, Op, Put, Store, absent, mod_is

log = logging.getLogger(__name__)


def cli_identity() -> str:
    """Who runs a command: user@host."""
    import getpass  # only a command that writes needs it (diff does not)

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def daemon_identity() -> str:
    return f"etcdsync-run@{socket.gethostname()}/{os.getpid()}"


def files_digest(files: Iterable[str]) -> str:
    """sha256 over the files' names and bytes, in name order (the provenance of a non-git apply)."""
    h = hashlib.sha256()
    for path in sorted(set(files)):
        h.update(os.path.basename(path).encode("utf-8", "surrogateescape") + b"\0")
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError:
            data = b"<unreadable>"
        h.update(len(data).to_bytes(8, "big") + data)
    return "sha256:" + h.hexdigest()


def files_source(desired: DesiredState) -> dict[str, str]:
    """The digest of every manifest and every file they read, and the first three of them by name:
    the manifests first, then the files read (resolved paths), each relative to the working directory
    when it is inside it, as the manifests are usually named."""
    files = sorted(set(desired.files) | set(desired.sources))
    names = list(dict.fromkeys(_shown_path(f) for f in [*sorted(set(desired.files)),
                                                         *sorted(set(desired.sources) - set(desired.files))]))
    shown = ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")
    return {"digest": files_digest(files), "files": shown}


def _shown_path(path: str) -> str:
    if os.path.isabs(path):
        try:
            rel = os.path.relpath(path)
        except ValueError:
            return path
        if rel != os.pardir and not rel.startswith(os.pardir + os.sep):
            return rel
    return path


def git_source(commit: str, repository: str, ref: str | None, path: str | None) -> dict[str, str]:
    out = {"commit": commit, "repository": repository}
    if ref:
        out["ref"] = ref
    if path:
        out["path"] = path
    return out


async def record(store: Store, reserved: str, entry: HistoryEntry, *, limit: int,
                 fences: Sequence[Compare] = ()) -> int | None:
    """Put `entry` and drop the oldest beyond `limit`, in one transaction; returns its revision, or
    None when it could not be written (logged: history is never worth failing an apply for)."""
    prefix = history_prefix(reserved, entry.applyset)
    key = entry_key(reserved, entry.applyset, entry.id)
    for _ in range(3):
        try:
            kvs, read = await store.get_prefix(prefix)
            if read < entry.id:
                # etcd's history was replaced since these writes (restored from an older snapshot,
                # rebuilt; e.g. while this record waited for a restarted member): their revisions
                # name other writes now, so the entry is not recorded
                log.warning("history: entry %d not recorded: etcd is at revision %d, before the writes it "
                            "lists (its history was replaced)", entry.id, read)
                return None
            ids = {}
            for kv in kvs:
                rest = kv.key[len(prefix):]
                if rest.isdigit():
                    ids[int(rest)] = kv
            ids.pop(entry.id, None)
            gone = [ids[i] for i in dropped(ids, limit)]
            # the newest entry as read: a history replaced between the read and this transaction
            # (a retried request reaching a restored member) lacks it or holds it at another revision
            newest = [ids[max(ids)]] if ids else []
            compares: list[Compare] = [absent(key), *(mod_is(kv.key, kv.mod_revision) for kv in {*gone, *newest}),
                                       *fences]
            ops: list[Op] = [Put(key, encode_entry(entry)), *(Delete(kv.key) for kv in gone)]
            result = await store.txn(compares, ops)
        except EtcdsyncError as exc:
            log.warning("history: entry %d not recorded: %s", entry.id, exc)
            return None
        if result.succeeded:
            return result.revision
    log.warning("history: entry %d not recorded (its key exists, or the history changed meanwhile)", entry.id)
    return None


async def list_entries(store: Store, reserved: str, applyset: str | None = None, *,
                       unreadable: list[tuple[str, str]] | None = None) -> list[HistoryEntry]:
    """The entries (of one apply set, or of all), oldest first. An entry that does not fit the one shape
    (written by another client) is an InventoryError naming it, or, given `unreadable`, skipped and
    (its key, the error) appended there."""
    kvs, _ = await store.get_prefix(history_prefix(reserved, applyset))
    out: list[HistoryEntry] = []
    for kv in kvs:
        try:
            out.append(decode_entry(kv.key, kv.value, reserved=reserved))
        except InventoryError as exc:
            if unreadable is None:
                raise
            unreadable.append((kv.key, str(exc)))
    return sorted(out, key=lambda e: (e.id, e.applyset))


async def find_entry(store: Store, reserved: str, entry_id: int, applyset: str | None) -> HistoryEntry:
    """Entry `entry_id` (of `applyset`); another set's entry of that id is refused (exit 3), an
    unreadable one is an error naming it, other unreadable entries do not matter."""
    bad: list[tuple[str, str]] = []
    entries = await list_entries(store, reserved, None, unreadable=bad)
    found = [e for e in entries if e.id == entry_id and applyset in (None, e.applyset)]
    if not found:
        for key, error in bad:
            if key.endswith(f"/{entry_id:0{ID_DIGITS}d}") and (applyset is None or key == entry_key(reserved, applyset, entry_id)):
                raise InventoryError(error)
        others = sorted({e.applyset for e in entries if e.id == entry_id})
        if others:
            raise OwnershipError(f"history entry {entry_id} is apply set {others[0]!r}'s, not {applyset!r}'s: "
                                 "a rollback only restores its own set's entries", [])
        where = f" of apply set {applyset!r}" if applyset else ""
        raise UsageError(f"history entry {entry_id}{where}: not found (see `etcdsync history`)")
    if len(found) > 1:
        raise UsageError(f"history entry {entry_id}: several apply sets have it "
                         f"({', '.join(e.applyset for e in found)}); pass --applyset")
    return found[0]


# -- a key's past -------------------------------------------------------------------------------

class KeyEvent(NamedTuple):
    revision: int
    type: str            # put | delete
    value: bytes
    lease: int


async def key_events(store: Store, key: str, *, since: int = 1) -> tuple[list[KeyEvent], int, int]:
    """Every event of `key` etcd still has (MVCC, up to its compaction), oldest first, from `since`:
    (events, the first revision covered, the revision read up to)."""
    now = await store.revision()
    current = await store.get(key)
    start = max(1, since)
    while True:
        events: list[KeyEvent] = []
        try:
            async for batch in store.watch(key, start_revision=start):
                for ev in batch.events:
                    events.append(KeyEvent(ev.kv.mod_revision, ev.type, ev.kv.value, ev.kv.lease))
                last = events[-1].revision if events else 0
                if (current is not None and last >= current.mod_revision) or (batch.progress and batch.revision >= now):
                    return [e for e in events if e.revision <= now], start, now
                if current is None and last >= now:
                    return events, start, now
        except CompactedError as exc:
            if exc.compact_revision <= start:
                raise
            start = exc.compact_revision
            continue
        return events, start, now


# -- an apply set at a past revision ---------------------------------------------------------------

async def state_at(store: Store, reserved: str, applyset: str, revision: int) -> tuple[DesiredState, int]:
    """What `applyset` owned at `revision`, with the values its keys held then, as a desired state
    (policy enforce; keys absent then, or held under a lease, are not declared, so they are pruned).
    Returns it and how many owned keys it has. A compacted revision is a UsageError."""
    try:
        kvs, _ = await store.get_prefix(reserved, revision=revision)
        ownership = parse_ownership(((kv.key, kv.value, kv.mod_revision) for kv in kvs), reserved)
        inv = ownership.inventory(applyset)
        by_prefix: dict[str, list[str]] = {}
        for key, entry in inv.owned.items():
            by_prefix.setdefault(entry.prefix, []).append(key)
        values: dict[str, KeyValue] = {}
        for prefix in sorted(by_prefix):
            got, _ = await store.get_prefix(prefix, revision=revision)
            values.update((kv.key, kv) for kv in got)
    except CompactedError:
        oldest = await _oldest_revision(store)
        raise UsageError(f"revision {revision} was compacted (etcd keeps revisions from {oldest} on): its values "
                         "are gone, nothing can be rolled back to it") from None
    keys: dict[str, DesiredKey] = {}
    for key, entry in inv.owned.items():
        kv = values.get(key)
        if kv is None or kv.lease:
            continue
        # the document the inventory recorded then (a DesiredKey's document must name a kind/name)
        keys[key] = DesiredKey(key, kv.value, entry.prefix, Policy.ENFORCE, entry.prune, entry.secret,
                               entry.document)
    prefixes = tuple(sorted(by_prefix))
    return DesiredState(keys=keys, prefixes=prefixes, applyset=None), len(inv.owned)


async def _oldest_revision(store: Store) -> str:
    """The compaction floor, as far as a watch from revision 1 tells it ('?' when it cannot)."""
    try:
        async for _ in store.watch("\x00", start_revision=1):
            break
    except CompactedError as exc:
        return str(exc.compact_revision)
    except EtcdsyncError:
        pass
    return "?"


# -- suspension --------------------------------------------------------------------------------------

async def get_suspension(store: Store, reserved: str, applyset: str) -> tuple[Suspension | None, int]:
    """The apply set's suspension record (None when not suspended) and its mod_revision."""
    kv = await store.get(suspend_key(reserved, applyset))
    if kv is None:
        return None, 0
    return decode_suspension(kv.key, kv.value, reserved=reserved), kv.mod_revision


async def suspend(store: Store, reserved: str, s: Suspension) -> bool:
    """Record the suspension; False when the apply set was suspended already (left as it is)."""
    result = await store.txn([absent(suspend_key(reserved, s.applyset))], [Put(suspend_key(reserved, s.applyset),
                                                                                encode_suspension(s))])
    return result.succeeded


async def resume(store: Store, reserved: str, applyset: str) -> Suspension | None:
    """Delete the suspension record (compared on the revision read); the record deleted, or None. A
    record that does not read (hand-written) is deleted too: a daemon takes it as a suspension, and
    resume is the way out of one (returned with who '?' and the error as its reason)."""
    kv = await store.get(suspend_key(reserved, applyset))
    if kv is None:
        return None
    rev = kv.mod_revision
    try:
        current = decode_suspension(kv.key, kv.value, reserved=reserved)
    except InventoryError as exc:
        current = Suspension(applyset, "?", 0.0, str(exc))
    result = await store.txn([mod_is(suspend_key(reserved, applyset), rev)], [Delete(suspend_key(reserved, applyset))])
    if not result.succeeded:
        raise UsageError(f"apply set {applyset!r}: the suspension changed while resuming; try again")
    return current


# -- an apply set's own records (teardown) ------------------------------------------------------------

RECORDS_PER_TXN = 60     # deletes and as many compares: well within etcd's 128 operations per transaction


async def records_of(store: Store, reserved: str, applyset: str) -> list[KeyValue]:
    """etcdsync's records of `applyset` besides its inventory: every key under its history prefix, and
    its suspension record."""
    kvs, _ = await store.get_prefix(history_prefix(reserved, applyset))
    susp = await store.get(suspend_key(reserved, applyset))
    return [*kvs, *([susp] if susp is not None else [])]


async def delete_records(store: Store, records: Sequence[KeyValue]) -> int:
    """Delete the records read by `records_of`, each compared on the revision read (a record changed
    or added since is left); returns how many were deleted."""
    done = 0
    for i in range(0, len(records), RECORDS_PER_TXN):
        batch = records[i:i + RECORDS_PER_TXN]
        result = await store.txn([mod_is(kv.key, kv.mod_revision) for kv in batch], [Delete(kv.key) for kv in batch])
        if result.succeeded:
            done += len(batch)
            continue
        for kv in batch:     # one changed meanwhile: the others one by one
            one = await store.txn([mod_is(kv.key, kv.mod_revision)], [Delete(kv.key)])
            done += one.succeeded
    return done


def counts_of(results: Mapping[str, int]) -> dict[str, int]:
    return {k: v for k, v in results.items() if v}


def outcome_entry(outcome: Outcome, *, applyset: str, kind: str, who: str,
                  source: Mapping[str, str], failed: str = "") -> HistoryEntry | None:
    """The entry for an apply's outcome, or None when it committed nothing. `failed`: the error that
    stopped the apply after the batches in `outcome` were committed."""
    if not outcome.revisions or not outcome.done:
        return None
    return make_entry(applyset=applyset, kind=kind, who=who, revisions=outcome.revisions,
                      read=outcome.read_revision, source=source,
                      counts={r.value: n for r, n in outcome.results().items()}, keys=outcome.done, failed=failed)
