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
- quiescence (`assert_quiet`): nothing at all is written over a quiet period.

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

    # -- recording ---------------------------------------------------------------------------

    def begin(self) -> Recorder:
        rev = self.gateway.revision()
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
            try:
                for doc in self.gateway.watch(ep, prefix, self._seen[prefix] + 1):
                    if self._stop.is_set():
                        return
                    if doc is None:
                        continue
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
            rev = self.gateway.put(f"{p}.history-sync", str(target))
            self.outside.add(rev)
            marks.append((p, rev))
        while time.monotonic() < deadline:
            if all(self._seen[p] >= rev for p, rev in marks):
                return target
            if self._errors:
                break
            time.sleep(0.02)
        raise AssertionError(f"history recorder did not catch up to revision {target}: {self._errors}")

    # -- what the test tells the checker -----------------------------------------------------

    def mark_outside(self, revision: int) -> None:
        self.outside.add(revision)

    def declare(self, state: Mapping[str, bytes | str | Declared]) -> None:
        """The test wrote a new manifest version declaring exactly these keys (in recorded prefixes)."""
        version = {k: v if isinstance(v, Declared) else Declared(v.encode() if isinstance(v, str) else v)
                   for k, v in state.items()}
        self.versions.append(version)
        self.version_at.append(self.gateway.revision())

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
        return ev.revision not in self.outside and not ev.key.endswith(".history-sync")

    def violations(self) -> list[str]:
        out: list[str] = list(self._errors)
        events = self.snapshot()
        out += self._check_ownership(events)
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
        if writes:
            lines = [f"rev {e.revision} {e.type} {e.key} = {e.value[:60]!r}" for e in writes[:20]]
            raise AssertionError(f"not quiet: {len(writes)} writes between revisions {a} and {b} "
                                 f"over {seconds}s:\n  " + "\n  ".join(lines))

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
        last: dict[str, int] = {}
        flagged: set[str] = set()
        for ev in events:
            key = ev.key
            existed = present.get(key, False)
            before = value.get(key)
            present[key] = ev.type == "put"
            value[key] = (ev.value, ev.lease)
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

    def _check_ownership(self, events: list[Event]) -> list[str]:
        out: list[str] = []
        sets = self.reserved + "sets/"
        chunks: dict[str, set[str]] = {}
        for kv in self.initial.values():
            if kv.key.startswith(sets) and "/inventory/" in kv.key:
                chunks[kv.key] = _chunk_keys(kv.value)
        present = {k: kv.lease for k, kv in self.initial.items()}

        def owned() -> set[str]:
            return set().union(*chunks.values()) if chunks else set()

        by_rev: dict[int, list[Event]] = {}
        for ev in events:
            by_rev.setdefault(ev.revision, []).append(ev)
        for rev in sorted(by_rev):
            group = by_rev[rev]
            before = owned()
            for ev in group:
                if ev.key.startswith(sets) and "/inventory/" in ev.key:
                    if ev.type == "put":
                        try:
                            chunks[ev.key] = _chunk_keys(ev.value)
                        except ValueError:
                            chunks.pop(ev.key, None)  # hostile content a test planted: not ours to check
                    else:
                        chunks.pop(ev.key, None)
            after = owned()
            for ev in group:
                if ev.key.startswith(self.reserved) or ev.key.endswith(".history-sync"):
                    continue
                leased = ev.lease or (ev.type == "delete" and present.get(ev.key))
                if self.ours(ev) and not leased:   # leased keys are registrations, not owned config
                    if ev.type == "put" and ev.key not in after:
                        out.append(f"{ev.key}: etcdsync put it at revision {rev} but no inventory lists it "
                                   f"at that revision; history: {self.history_of(ev.key)}")
                    if ev.type == "delete" and ev.key not in before:
                        out.append(f"{ev.key}: etcdsync deleted it at revision {rev} although no apply set "
                                   f"owned it; history: {self.history_of(ev.key)}")
                if ev.type == "put":
                    present[ev.key] = ev.lease
                else:
                    present.pop(ev.key, None)
            if self.ours(group[0]) or any(self.ours(e) for e in group):
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


__all__ = ["DELETED", "Declared", "Event", "Recorder", "recorder", "unb64"]
