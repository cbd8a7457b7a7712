"""etcd's event history for a test's prefixes, and the checks every writing test runs on it.

A test that writes is judged by what was written on the way, not only by the final values. The
recorder watches the test's prefixes (the reserved prefix included) from the revision the test
started at, through etcd's JSON gateway, so it is independent of etcdsync's own client. Writes the
test itself makes as "another client" are marked (`outside`); every other event in the recorded
prefixes is etcdsync's. Manifest versions are declared in order (`declare`), and `check()` then
verifies:

- no flapping: every value etcdsync put was declared by the manifest version current at that point
  or a later one, never by an older one (per key, the versions used never go backwards); a delete
  only while the key was undeclared;
- ownership: etcdsync never put or deleted a key that no apply set owned at that revision, every key
  it put is in an inventory at the revision of the put (the same transaction), and no key left every
  inventory while it still held a value it was meant to prune;
- policies: a `create-only` or `warn` key that exists is never overwritten;
- no needless writes: etcdsync never puts the value a key already holds (a repair that did not
  compare the key's revision shows up this way when two writes race it);
- apply markers (`<reserved>applying/...`, etcdsync's marks around a multi-transaction apply): each
  is put once, under a lease (so a crashed apply's marker expires), in a revision of its own (so the
  revisions before and after it are whole states), and holds the marker's shape;
- history entries (`<reserved>history/<applyset>/<id>`) and suspension records
  (`<reserved>suspend/<applyset>`): each put has the one strict shape etcdsync reads back, carries no
  lease, and an entry lists only revisions before its own that hold etcdsync's writes (never another
  client's: `explain` tells writers apart by them); entries are deleted only by retention, or by a
  teardown once their apply set has no inventory left;
- quiescence (`assert_quiet`): nothing at all is written over a quiet period, except a history entry
  that records writes made before the period began (a late record, never a new write);
- convergence (`unconverged`): etcd holds what the last declared version says, and the inventory
  lists exactly its keys.

Other clients' writes are told apart in two ways: by revision (`mark_outside`, for writes whose
response the test saw), or by a marker put in the same transaction (`outside_txn`: a key ending in
`.outside-mark`), which also covers a write whose outcome the writer never learned (a member died
under it) but which committed anyway.

The recorder follows members going away: a watch stream that breaks, or that stays silent while a
`sync()` waits for it (a SIGSTOPped member), is resumed on another endpoint from the last revision
seen. Compact only revisions it has seen (`compactable()`).

A violation names the key, the revisions and the values in order.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etcdgw import KV, Gateway, unb64

DELETED = None
OUTSIDE_MARK = ".outside-mark"     # a put of a key ending so makes its whole revision another client's
SYNC_MARK = ".history-sync"
SILENT_SWITCH = 3.0                # seconds a watch may stay silent while a sync() waits, before switching


def bookkeeping(key: str) -> bool:
    """Keys the recorder and the tests write for their own purposes (never judged)."""
    return key.endswith((SYNC_MARK, OUTSIDE_MARK))


@dataclass(frozen=True)
class Event:
    revision: int
    type: str               # "put" | "delete"
    key: str
    value: bytes
    lease: int


@dataclass(frozen=True)
class Declared:
    value: bytes
    policy: str = "enforce"


@dataclass
class Recorder:
    """Records every event under `prefixes` from `start` (a revision) until `stop()`."""

    gateway: Gateway
    prefixes: list[str]
    reserved: str
    start: int = 0
    events: list[Event] = field(default_factory=list)
    initial: dict[str, KV] = field(default_factory=dict)
    outside: set[int] = field(default_factory=set)          # revisions written by the test itself
    versions: list[dict[str, Declared]] = field(default_factory=list)
    version_at: list[int] = field(default_factory=list)     # revision current when each version was declared
    _threads: list[threading.Thread] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _errors: list[str] = field(default_factory=list)
    _seen: dict[str, int] = field(default_factory=dict)
    released: set[str] = field(default_factory=set)
    marked: set[int] = field(default_factory=set)           # revisions holding an OUTSIDE_MARK put
    _want: dict[str, tuple[int, float]] = field(default_factory=dict)   # prefix -> (revision awaited, since)
    _marks: int = 0

    # -- recording ---------------------------------------------------------------------------

    def begin(self, since: int | None = None) -> Recorder:
        """Start recording after revision `since` (default: now). `since=1` on a fresh cluster records
        everything, also writes made before the recorder could connect."""
        rev = self.gateway.revision() if since is None else since
        self.start = rev
        for p in self.prefixes:
            kvs, _ = self.gateway.range(p, prefix=True, revision=rev)
            self.initial.update({kv.key: kv for kv in kvs})
            self._seen[p] = rev
            t = threading.Thread(target=self._follow, args=(p,), daemon=True, name=f"history {p}")
            t.start()
            self._threads.append(t)
        return self

    def _follow(self, prefix: str) -> None:
        """One watch per prefix, resumed on another endpoint (bounded) when a member goes away."""
        failures = 0
        endpoints = self.gateway.endpoints
        i = 0
        while not self._stop.is_set():
            ep = endpoints[i % len(endpoints)]
            last_doc = time.monotonic()
            try:
                for doc in self.gateway.watch(ep, prefix, self._seen[prefix] + 1):
                    if self._stop.is_set():
                        return
                    if doc is None:
                        want, since = self._want.get(prefix, (0, 0.0))
                        now = time.monotonic()
                        if (want > self._seen[prefix] and now - since > SILENT_SWITCH
                                and now - last_doc > SILENT_SWITCH and len(endpoints) > 1):
                            raise ConnectionError(f"watch of {prefix} on {ep} is silent")
                        continue
                    last_doc = time.monotonic()
                    result = doc.get("result") or {}
                    if result.get("compact_revision") and int(result["compact_revision"]) > self._seen[prefix]:
                        self._errors.append(f"history of {prefix} lost to compaction at "
                                            f"{result['compact_revision']}: compact after the checks, not during")
                        return
                    evs = result.get("events") or []
                    with self._lock:
                        for ev in evs:
                            kv = KV.from_json(ev.get("kv") or {})
                            etype = "delete" if ev.get("type") == "DELETE" else "put"
                            self.events.append(Event(kv.mod_revision, etype, kv.key, kv.value, kv.lease))
                            if etype == "put" and kv.key.endswith(OUTSIDE_MARK):
                                self.marked.add(kv.mod_revision)
                            self._seen[prefix] = max(self._seen[prefix], kv.mod_revision)
                    failures = 0
            except Exception:  # noqa: BLE001 - a member stopped or restarted: resume elsewhere
                failures += 1
                i += 1
                if failures > 600:
                    self._errors.append(f"history of {prefix}: watch kept failing")
                    return
                time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)

    def sync(self, timeout: float = 15.0) -> int:
        """Wait until every event up to etcd's current revision has been recorded; return it."""
        target = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                target = self.gateway.revision()
                break
            except RuntimeError:
                time.sleep(0.2)
        # the watch only sees revisions that touch its prefix: a marker write makes every prefix current
        marks = []
        for p in self.prefixes:
            while True:
                try:
                    rev = self.gateway.put(f"{p}{SYNC_MARK}", str(target))
                    break
                except RuntimeError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            self.outside.add(rev)
            marks.append((p, rev))
            self._want[p] = (rev, time.monotonic())
        while time.monotonic() < deadline:
            if all(self._seen[p] >= rev for p, rev in marks):
                return target
            if self._errors:
                break
            time.sleep(0.02)
        raise AssertionError(f"history recorder did not catch up to revision {target}: {self._errors}")

    def last_seen(self) -> int:
        """The highest revision recorded on any prefix (a lower bound of etcd's revision)."""
        with self._lock:
            return max(self._seen.values(), default=self.start)

    def compactable(self) -> int:
        """The highest revision that may be compacted without losing history: seen on every prefix."""
        with self._lock:
            return min(self._seen.values(), default=self.start)

    # -- what the test tells the checker -----------------------------------------------------

    def mark_outside(self, revision: int) -> None:
        self.outside.add(revision)

    def outside_txn(self, puts: Mapping[str, bytes | str] | None = None, deletes: Iterable[str] = (),
                    gateway: Gateway | None = None) -> int:
        """Another client's puts and deletes, in one transaction with a marker key, so that the
        revision counts as another client's even when the response is lost (raises like the gateway)."""
        with self._lock:
            self._marks += 1
            n = self._marks
        mark = f"{self.prefixes[0]}{OUTSIDE_MARK}"
        rev = (gateway or self.gateway).txn({**(puts or {}), mark: str(n)}, list(deletes))
        self.outside.add(rev)
        return rev

    def declare(self, state: Mapping[str, bytes | str | Declared], revision: int | None = None) -> None:
        """The test wrote (is about to write) a new manifest version declaring exactly these keys (in
        recorded prefixes). The version is in force after `revision` (default: etcd's revision now;
        when etcd cannot answer, the last revision recorded, a lower bound)."""
        version = {k: v if isinstance(v, Declared) else Declared(v.encode() if isinstance(v, str) else v)
                   for k, v in state.items()}
        if revision is None:
            try:
                revision = self.gateway.revision()
            except RuntimeError:
                revision = self.last_seen()
        self.versions.append(version)
        self.version_at.append(revision)

    def declare_files(self, *paths: str | Path, **load_args: Any) -> None:
        """Declare what the manifests at `paths` hold (static keys only), as loaded by etcdsync."""
        from etcdsync.manifest import load_manifests

        desired = load_manifests([str(p) for p in paths], **load_args)
        self.declare({k: Declared(d.value, d.policy.value) for k, d in desired.keys.items()})

    # -- checks --------------------------------------------------------------------------------

    def snapshot(self) -> list[Event]:
        with self._lock:
            return sorted(self.events, key=lambda e: e.revision)

    def ours(self, ev: Event) -> bool:
        return ev.revision not in self.outside and ev.revision not in self.marked and not bookkeeping(ev.key)

    def by_revision(self) -> dict[int, list[Event]]:
        out: dict[int, list[Event]] = {}
        for ev in self.snapshot():
            out.setdefault(ev.revision, []).append(ev)
        return out

    def unconverged(self) -> list[str]:
        """How etcd differs now from the last declared version: an enforce key with another value, a
        declared key missing, an owned key no longer declared (not pruned), a declared key not owned."""
        if not self.versions:
            return []
        want = self.versions[-1]
        now: dict[str, KV] = {}
        for p in self.prefixes:
            kvs, _ = self.gateway.range(p, prefix=True)
            now.update({kv.key: kv for kv in kvs})
        owned: set[str] = set()
        for key, kv in now.items():
            if key.startswith(self.reserved + "sets/") and "/inventory/" in key:
                try:
                    owned |= _chunk_keys(kv.value)
                except ValueError:
                    pass
        out: list[str] = []
        for key, d in sorted(want.items()):
            kv = now.get(key)
            if kv is None:
                out.append(f"{key}: declared ({d.policy}) but absent from etcd; history: {self.history_of(key)}")
            elif d.policy == "enforce" and kv.value != d.value:
                out.append(f"{key}: holds {kv.value[:60]!r}, declared {d.value[:60]!r}; history: {self.history_of(key)}")
            if key not in owned:
                out.append(f"{key}: declared but not in any inventory")
        for key in sorted(owned - set(want)):
            if key in now and key not in self.released:
                out.append(f"{key}: still owned and in etcd but no longer declared (not pruned); "
                           f"history: {self.history_of(key)}")
        return out

    def violations(self) -> list[str]:
        out: list[str] = list(self._errors)
        events = self.snapshot()
        out += self._check_ownership(events)
        out += self._check_markers(events)
        out += self._check_records(events)
        if self.versions:
            out += self._check_values(events)
        return out

    def check(self) -> None:
        """Sync, then raise with every violation found (the test's end-of-run check)."""
        self.sync()
        problems = self.violations()
        if problems:
            raise AssertionError("etcd history violations:\n  " + "\n  ".join(problems[:40])
                                 + (f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else ""))

    def writes_between(self, a: int, b: int) -> list[Event]:
        return [e for e in self.snapshot() if a < e.revision <= b and self.ours(e)]

    def assert_quiet(self, seconds: float, *, under: str = "") -> None:
        """Nothing etcdsync writes for `seconds` (the daemon converged and stays idle); with `under`,
        nothing under that prefix."""
        a = self.sync()
        time.sleep(seconds)
        b = self.sync()
        writes = [e for e in self.writes_between(a, b) if e.key.startswith(under)]
        late = {e.revision for e in writes if self._late_record(e, a)}
        writes = [e for e in writes if e.revision not in late]
        if writes:
            lines = [f"rev {e.revision} {e.type} {e.key} = {e.value[:60]!r}" for e in writes[:20]]
            raise AssertionError(f"not quiet: {len(writes)} writes between revisions {a} and {b} "
                                 f"over {seconds}s:\n  " + "\n  ".join(lines))

    def _late_record(self, ev: Event, before: int) -> bool:
        """A history entry put (or a retention delete beside one) recording only revisions <= `before`."""
        prefix = self.reserved + "history/"
        if not ev.key.startswith(prefix):
            return False
        group = [e for e in self.snapshot() if e.revision == ev.revision]
        puts = [e for e in group if e.type == "put" and e.key.startswith(prefix)]
        if len(puts) != 1 or any(not e.key.startswith(prefix) for e in group):
            return False
        from etcdsync.core.history import decode_entry

        try:
            entry = decode_entry(puts[0].key, puts[0].value, reserved=self.reserved)
        except Exception:  # noqa: BLE001 - judged by _check_records
            return False
        return entry.span[1] <= before

    def entries(self) -> list[Any]:
        """etcdsync's history entries put during the recording, in order (decoded)."""
        from etcdsync.core.history import decode_entry

        return [decode_entry(e.key, e.value, reserved=self.reserved) for e in self.snapshot()
                if e.type == "put" and e.key.startswith(self.reserved + "history/") and self.ours(e)]

    def _check_records(self, events: list[Event]) -> list[str]:
        from etcdsync.core.history import decode_entry, decode_suspension

        out: list[str] = []
        hist, susp = self.reserved + "history/", self.reserved + "suspend/"
        sets = self.reserved + "sets/"
        ours_at: set[int] = {e.revision for e in events if self.ours(e) and not bookkeeping(e.key)}
        chunks = {k for k in self.initial if k.startswith(sets) and "/inventory/" in k}   # inventory chunks now
        for ev in events:
            if ev.key.startswith(sets) and "/inventory/" in ev.key:
                (chunks.add if ev.type == "put" else chunks.discard)(ev.key)
            if not self.ours(ev) or not ev.key.startswith((hist, susp)):
                continue
            if ev.type == "delete":
                beside = [e for e in events if e.revision == ev.revision]
                cleanup = any(not e.key.startswith(hist) for e in beside)   # the reserved prefix wiped whole
                name = ev.key[len(hist):].partition("/")[0] if ev.key.startswith(hist) else ""
                torn = not any(c.startswith(f"{sets}{name}/") for c in chunks)   # teardown: the set owns nothing
                if ev.key.startswith(hist) and not cleanup and not torn and not any(
                        e.type == "put" and e.key.startswith(hist) for e in beside):
                    out.append(f"{ev.key}: history entry deleted at revision {ev.revision} without an entry "
                               "recorded beside it, while its apply set still owns keys (only retention and "
                               "teardown delete entries)")
                continue
            if ev.lease:
                out.append(f"{ev.key}: put at revision {ev.revision} under a lease")
            try:
                if ev.key.startswith(susp):
                    decode_suspension(ev.key, ev.value, reserved=self.reserved)
                    continue
                entry = decode_entry(ev.key, ev.value, reserved=self.reserved)
            except Exception as exc:  # noqa: BLE001 - an InventoryError naming the record
                out.append(f"{ev.key}: at revision {ev.revision}: {exc}")
                continue
            for r in entry.revisions:
                if r >= ev.revision:
                    out.append(f"{ev.key}: entry at revision {ev.revision} lists revision {r}, not before it")
                elif r > self.start and (r in self.outside or r in self.marked or r not in ours_at):
                    out.append(f"{ev.key}: entry lists revision {r}, which holds no write of etcdsync "
                               "(another writer's, or nothing): explain would credit etcdsync with it")
        return out

    def history_of(self, key: str) -> str:
        """The key's values in order, for failure messages."""
        parts = []
        for e in self.snapshot():
            if e.key == key:
                who = "" if self.ours(e) else " (other writer)"
                parts.append(f"{e.revision}:{'<deleted>' if e.type == 'delete' else e.value.decode(errors='replace')}{who}")
        return " ".join(parts)

    def _check_values(self, events: list[Event]) -> list[str]:
        """Per key, the manifest versions etcdsync's writes came from never go backwards, and never
        further back than the version before the one current at the write (a reconcile of the
        previous version may still be committing when the test declares the next)."""
        out: list[str] = []
        present: dict[str, bool] = {k: True for k in self.initial}
        value: dict[str, tuple[bytes, int]] = {k: (kv.value, kv.lease) for k, kv in self.initial.items()}
        live: dict[str, int] = {k: kv.lease for k, kv in self.initial.items()}   # key -> lease of its value
        last: dict[str, int] = {}
        flagged: set[str] = set()
        for ev in events:
            key = ev.key
            existed = present.get(key, False)
            before = value.get(key)
            present[key] = ev.type == "put"
            value[key] = (ev.value, ev.lease)
            was_live = live.get(key, 0)
            live[key] = ev.lease if ev.type == "put" else 0
            if ev.type == "delete" and was_live:
                continue     # a leased registration revoked or expired: not a manifest value
            if not self.ours(ev) or key.startswith(self.reserved) or ev.lease or key in flagged:
                continue
            if ev.type == "put" and existed and before == (ev.value, ev.lease):
                out.append(f"{key}: etcdsync rewrote the value it already had at revision {ev.revision} "
                           f"(a write without drift: a blind or duplicate write); history: {self.history_of(key)}")
                flagged.add(key)
                continue
            current = max((i for i, at in enumerate(self.version_at) if at < ev.revision), default=0)
            lo = max(last.get(key, 0), current - 1, 0)
            found = next((j for j in range(lo, len(self.versions)) if _matches(self.versions[j].get(key), ev)), None)
            if found is None:
                older = [j for j in range(lo) if _matches(self.versions[j].get(key), ev)]
                what = f"put {ev.value[:60]!r}" if ev.type == "put" else "delete"
                why = (f"that is manifest version {older[-1]}'s, but version {lo} was already in force" if older
                       else "no manifest version declares that" if ev.type == "put" else "the key was still declared")
                out.append(f"{key}: etcdsync wrote {what} at revision {ev.revision}: {why}; "
                           f"history: {self.history_of(key)}")
                flagged.add(key)
                continue
            last[key] = found
            d = self.versions[found].get(key)
            if ev.type == "put" and d is not None and existed and d.policy in ("create-only", "warn"):
                out.append(f"{key}: etcdsync overwrote an existing {d.policy} key at revision {ev.revision}; "
                           f"history: {self.history_of(key)}")
                flagged.add(key)
        return out

    def markers(self) -> list[Event]:
        """etcdsync's apply-marker events, in order."""
        return [e for e in self.snapshot() if e.key.startswith(self.reserved + "applying/") and self.ours(e)]

    def _check_markers(self, events: list[Event]) -> list[str]:
        out: list[str] = []
        marks = self.reserved + "applying/"
        at: dict[int, list[Event]] = {}
        for ev in events:
            at.setdefault(ev.revision, []).append(ev)
        put: set[str] = set()
        for ev in events:
            if not ev.key.startswith(marks) or not self.ours(ev) or ev.type != "put":
                continue
            if ev.key in put:
                out.append(f"{ev.key}: apply marker put again at revision {ev.revision}")
            put.add(ev.key)
            if not ev.lease:
                out.append(f"{ev.key}: apply marker put at revision {ev.revision} without a lease (a crash would leave it)")
            others = [e.key for e in at[ev.revision] if e is not ev]
            if others:
                out.append(f"{ev.key}: apply marker shares revision {ev.revision} with {others[:3]}")
            try:
                doc = json.loads(ev.value)
                ok = (isinstance(doc, dict) and set(doc) == {"v", "applyset", "prefixes"} and doc["v"] == 1
                      and ev.key.startswith(f"{marks}{doc['applyset']}/") and isinstance(doc["prefixes"], list))
            except ValueError:
                ok = False
            if not ok:
                out.append(f"{ev.key}: apply marker at revision {ev.revision} is not of the marker's shape: {ev.value[:80]!r}")
        return out

    def _check_ownership(self, events: list[Event]) -> list[str]:
        out: list[str] = []
        sets = self.reserved + "sets/"
        chunks: dict[str, set[str]] = {}
        count: dict[str, int] = {}          # key -> number of inventory chunks listing it

        def set_chunk(name: str, keys: set[str] | None) -> None:
            for k in chunks.pop(name, ()):
                count[k] -= 1
            if keys is not None:
                chunks[name] = keys
                for k in keys:
                    count[k] = count.get(k, 0) + 1

        for kv in self.initial.values():
            if kv.key.startswith(sets) and "/inventory/" in kv.key:
                try:
                    set_chunk(kv.key, _chunk_keys(kv.value))
                except ValueError:
                    pass
        present = {k: kv.lease for k, kv in self.initial.items()}

        by_rev: dict[int, list[Event]] = {}
        for ev in events:
            by_rev.setdefault(ev.revision, []).append(ev)
        for rev in sorted(by_rev):
            group = by_rev[rev]
            changes: list[tuple[str, set[str] | None]] = []
            for ev in group:
                if ev.key.startswith(sets) and "/inventory/" in ev.key:
                    keys: set[str] | None = None
                    if ev.type == "put":
                        try:
                            keys = _chunk_keys(ev.value)
                        except ValueError:
                            keys = None  # hostile content a test planted: not ours to check
                    changes.append((ev.key, keys))
            touched: set[str] = set()
            for name, keys in changes:
                touched |= chunks.get(name, set()) | (keys or set())
            before = {k for k in touched if count.get(k, 0) > 0}
            for name, keys in changes:
                set_chunk(name, keys)
            after = {k for k in touched if count.get(k, 0) > 0}
            for ev in group:
                if ev.key.startswith(self.reserved) or bookkeeping(ev.key):
                    continue
                if self.ours(ev):
                    if ev.type == "put" and not ev.lease and not _owned(ev.key, touched, after, count):
                        out.append(f"{ev.key}: etcdsync put it at revision {rev} but no inventory lists it "
                                   f"at that revision; history: {self.history_of(ev.key)}")
                    if ev.type == "delete" and not present.get(ev.key) and not _owned(ev.key, touched, before, count):
                        out.append(f"{ev.key}: etcdsync deleted it at revision {rev} although no apply set "
                                   f"owned it; history: {self.history_of(ev.key)}")
                if ev.type == "put":
                    present[ev.key] = ev.lease
                else:
                    present.pop(ev.key, None)
            if any(self.ours(e) for e in group):
                for key in before - after:
                    if key in present and not present[key] and self._meant_to_prune(key, rev):
                        out.append(f"{key}: left the inventory at revision {rev} while still in etcd "
                                   f"(an orphan nothing will prune); history: {self.history_of(key)}")
        return out

    def _meant_to_prune(self, key: str, rev: int) -> bool:
        """A key released on purpose (`prune: false`, named by the test) may stay; any other must be
        deleted in the transaction that drops it from the last inventory."""
        return key not in self.released

    def allow_release(self, *keys: str) -> None:
        """Keys the test declared with `prune: false`: leaving the inventory without a delete is right."""
        self.released.update(keys)


def _owned(key: str, touched: set[str], at: set[str], count: dict[str, int]) -> bool:
    """Owned at one side of a revision: `at` for keys whose chunks changed there, else the counts."""
    return key in at if key in touched else count.get(key, 0) > 0


def _matches(declared: Declared | None, ev: Event) -> bool:
    if ev.type == "delete":
        return declared is None
    return declared is not None and declared.value == ev.value


def _chunk_keys(value: bytes) -> set[str]:
    doc = json.loads(value)
    if not isinstance(doc, dict) or not isinstance(doc.get("prefixes"), dict):
        raise ValueError("not an inventory chunk")
    keys: set[str] = set()
    for prefix, rels in doc["prefixes"].items():
        if not isinstance(rels, list):
            raise ValueError("not an inventory chunk")
        keys.update(prefix + rel for rel in rels if isinstance(rel, str))
    return keys


def recorder(endpoints: list[str], prefixes: Iterable[str], reserved: str, **auth: Any) -> Recorder:
    return Recorder(Gateway(list(endpoints), **auth), list(prefixes), reserved).begin()


__all__ = ["DELETED", "OUTSIDE_MARK", "Declared", "Event", "Recorder", "bookkeeping", "recorder", "unb64"]
