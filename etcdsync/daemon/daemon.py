"""`etcdsync run`: the continuous reconciler, put together.

Triggers (the source says the manifests may have changed, an etcd event on a declared or owned
prefix, the resync timer, a watch that had to restart) all lead to the same level-triggered
reconcile. Drift on a declared key is repaired from the watch event itself (`watches`). Live
instances (ttl/check) are held under leases while their check passes (`live`). etcd being away is
survived with capped exponential backoff; a manifest that fails to load keeps the last good state.
With --leader-elect only the elected daemon writes, and each of its writes is fenced on its
election key (`election`).
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import gc
import logging
import platform
import signal
import sys
import time
from typing import Any

from ..core.history import Suspension, decode_suspension, last_commit, suspend_key
from ..core.inventory import resolve_applyset
from ..core.model import DesiredState
from ..core.selector import select
from ..errors import ClusterChangedError, EtcdConnectionError, EtcdsyncError, ManifestError, UsageError
from ..etcd.store import Compare, KeyValue, Store, absent
from ..history import daemon_identity, files_source, git_source, list_entries
from ..settings import Connection, DaemonSettings
from ..sources import Source
from ..tasks import Backoff, cancel_and_wait
from .election import Election
from .flaps import FlapSettings
from .live import LiveInstances
from .metrics import Hook, HttpServer, Metrics
from .reconcile import HistoryLog, Reconciler, Status
from .watches import BACKOFF_MAX, BACKOFF_MIN, Watches

log = logging.getLogger("etcdsync.daemon")


_libc: Any = None
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8     # glibc's mallopt parameters
HEAP_MMAP_THRESHOLD = 128 * 1024
HEAP_ARENAS = 2


def _glibc() -> Any:
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform == "linux" and platform.libc_ver()[0] == "glibc":
            try:
                lib = ctypes.CDLL(None)
                lib.malloc_trim, lib.mallopt      # noqa: B018 - both must exist
                _libc = lib
            except (OSError, AttributeError):
                pass
    return _libc


def trim_heap() -> None:
    """Hand the C heap's free memory back to the system after a load (glibc's malloc_trim(0); a
    no-op elsewhere). Loading a large tree frees most of what it allocated, but glibc keeps freed
    memory mapped: 100,000 keys left the daemon ~12 MB larger than it needs to be. Takes ~1 ms."""
    if lib := _glibc():
        lib.malloc_trim(0)


def tune_heap() -> None:
    """glibc only, once at start: blocks of 128 KiB or more are always their own mapping (returned
    to the system when freed), and the process has at most 2 malloc arenas.

    By default glibc raises its mmap threshold each time such a block is freed, so after the first
    large dict or read buffer goes, the next ones come from the heap, where freed memory stays
    mapped until a trim; and each of gRPC's threads gets an arena of its own. At 100,000 keys the
    first reconcile's peak was ~9 MB higher, and the resident size once ready ~5 MB higher."""
    if lib := _glibc():
        lib.mallopt(M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD)
        lib.mallopt(M_TRIM_THRESHOLD, 2 * HEAP_MMAP_THRESHOLD)
        lib.mallopt(M_ARENA_MAX, HEAP_ARENAS)


def _dump_tasks() -> None:
    """SIGUSR1: log where every task of the daemon is waiting (for a daemon that seems stuck)."""
    lines = []
    for task in asyncio.all_tasks():
        lines.append(f"task {task.get_name()}:")
        for frame in task.get_stack(limit=12):
            lines.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
    log.warning("SIGUSR1: %d tasks\n%s", len(asyncio.all_tasks()), "\n".join(lines))


class Daemon:
    def __init__(self, conn: Connection, settings: DaemonSettings, source: Source) -> None:
        self.conn = conn
        self.settings = settings
        self.source = source
        self.metrics = Metrics()
        self.status = Status(leader=not settings.leader_elect)
        self.desired: DesiredState | None = None        # last successfully loaded manifests
        self.applyset = "default"
        self.store = Store(conn)
        self.live = LiveInstances(self.store, self.metrics, fences=self.fences)
        self.election: Election | None = None
        self.reconciler: Reconciler | None = None
        self._trigger = asyncio.Event()
        self._trigger_always = False
        self._trigger_revisions: set[int] = set()
        self._watch_restart = asyncio.Event()
        self._reconciled = asyncio.Event()
        self._stop = asyncio.Event()
        self._loading = asyncio.Lock()
        self._fingerprint: str | None = None             # the source's fingerprint of the last load (see _reload)
        self._provenance: tuple[DesiredState | None, dict[str, str]] = (None, {})   # see provenance()
        self.http: HttpServer | None = None
        self.identity = daemon_identity()
        self.suspension: Suspension | None = None       # the apply set's suspension record, while it holds
        self._suspension_known = asyncio.Event()        # read once: nothing is written before
        self.metrics.suspended.set_function(lambda: 0.0 if self.suspension is None else 1.0)
        self.metrics.ready.set_function(lambda: 1.0 if self.readiness()[0] else 0.0)
        self.metrics.leader.set(0 if settings.leader_elect else 1)

    def readiness(self) -> tuple[bool, dict[str, object]]:
        st = self.status
        detail: dict[str, object] = {
            "manifests": st.manifests_error or "ok",
            "etcd": st.etcd_error or "ok",
            "reconcile": st.reconcile_error or ("ok" if st.last_success else "pending"),
            "leader": st.leader,
            "applyset": self.applyset,
            "lastSuccess": st.last_success,
            "endpoint": self.store.endpoint,
            "source": self.source.describe(),
        }
        if self.reconciler is not None and (flapping := self.reconciler.flaps.flapping(time.monotonic())):
            detail["flapping"] = sorted(flapping)
        if self.source.revision is not None:
            detail["revision"] = self.source.revision
        if (head := getattr(self.source, "head", None)) is not None and head != self.source.revision:
            detail["head"] = head                       # the ref's head: fetched, not loaded
        suspended = self.suspension
        detail["suspended"] = False if suspended is None else {
            "by": suspended.who, "since": suspended.time, "reason": suspended.reason}
        if suspended is not None:
            detail["reconcile"] = "suspended"
        ok = st.manifests_error is None and st.etcd_error is None and st.reconcile_error is None and (
            st.last_success is not None or suspended is not None or (self.settings.leader_elect and not st.leader))
        return ok, detail

    def _hooks(self) -> dict[str, Hook]:
        """`POST /hooks/git` when the source takes webhooks and a secret was given."""
        secret = self.settings.webhook_secret
        webhook = getattr(self.source, "webhook", None)
        if secret is None or webhook is None:
            return {}
        return {"/hooks/git": lambda headers, body: webhook(headers, body, secret)}

    def fences(self) -> list[Compare]:
        """What every write carries (see Election.fences)."""
        assert self.election is not None, "nothing writes before run() sets up the election"
        return self.election.fences()

    def write_fences(self) -> list[Compare]:
        """What every config write carries: the election fence, and the apply set not being suspended
        (a suspension takes effect at once, also for a write already on its way)."""
        return [*self.fences(), absent(suspend_key(self.settings.reserved, self.applyset))]

    async def provenance(self, desired: DesiredState | None) -> dict[str, str]:
        """Where the manifests applied came from: the commit, or a digest of the files."""
        git = getattr(self.source, "git", None)
        sha = self.source.revision
        if sha is not None and git is not None:
            return git_source(sha, git.url, git.ref, git.path)
        if desired is None:
            return {}
        # one digest per loaded state (a reload that changes nothing keeps the object): hashing the
        # files again for every entry (each window of drift repairs) cost ~20 ms of CPU per second
        # beside the repairs of a 100,000-key tree
        if self._provenance[0] is not desired:
            self._provenance = (desired, await asyncio.to_thread(files_source, desired))
        return dict(self._provenance[1])

    def _own_leases(self) -> frozenset[int]:
        leases = self.live.lease_ids()
        if self.election is not None and self.election.leased is not None:
            leases.append(self.election.lease_id)
        return frozenset(lease for lease in leases if lease)

    # -- main -----------------------------------------------------------------------

    async def run(self) -> int:
        tune_heap()
        await self.source.prepare()                     # a git source fetches its commit
        seen = self._fingerprint_now(())
        try:
            self.desired = self._load()                 # a bad manifest at start-up is exit 2 ...
            self._loaded(self.desired, seen, ())
        except ManifestError as exc:                    # ... unless the history names a commit to run
            self.desired = await self._start_from_history(exc)
        gc.freeze()   # the desired state lives long: keep the cyclic collector from rescanning it
        trim_heap()
        self.applyset, origin = resolve_applyset(self.settings.applyset_flag, self.desired)
        self.metrics.manifest_valid.set(0 if self.status.manifests_error else 1)
        if origin == "default":
            log.warning("applyset: 'default' (no --applyset and no ApplySet document)")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)
        if self.settings.metrics_addr:
            try:
                self.http = HttpServer(self.settings.metrics_addr, self.metrics, self.readiness, self._hooks())
                await self.http.start()
            except (OSError, ValueError) as exc:
                raise UsageError(f"--metrics-addr {self.settings.metrics_addr}: cannot listen "
                                 f"({getattr(exc, 'strerror', None) or exc})") from None
            log.info("serving /healthz /readyz /metrics on %s:%d", self.http.host, self.http.port)
        self.election = Election(self.store, self.settings, self.applyset, status=self.status, metrics=self.metrics)
        self.reconciler = Reconciler(self.store, applyset=self.applyset, reserved=self.settings.reserved,
                                     options=self.settings.options, metrics=self.metrics, status=self.status,
                                     fences=self.write_fences, own_leases=self._own_leases,
                                     flaps=FlapSettings(self.settings.flap_threshold, self.settings.flap_window,
                                                        self.settings.flap_cooldown),
                                     wake=lambda: self.trigger(None),
                                     history=HistoryLog(self.store, reserved=self.settings.reserved,
                                                        applyset=self.applyset, limit=self.settings.history_limit,
                                                        who=self.identity, source=self.provenance,
                                                        fences=self.fences))
        reconciler = self.reconciler
        self.metrics.flapping.set_function(lambda: float(len(reconciler.flaps.flapping(time.monotonic()))))
        self.store.on_cluster_change.append(self._on_cluster_change)
        follow = asyncio.create_task(self._follow_source(), name="files")
        main = asyncio.create_task(self._main(), name="main")
        log.info("etcdsync run: apply set %r, %d keys, %d live instances, endpoints %s", self.applyset,
                 len(self.desired.keys), len(self.desired.live), ",".join(self.conn.endpoints))
        await self._stop.wait()
        log.info("stopping: revoking leases of live instances; config keys stay")
        self.live.stopping = True
        await self._finish_reconcile(reconciler)
        await cancel_and_wait(follow, main)
        if reconciler.history is not None:
            await reconciler.history.close()
        await self.live.stop()
        await self.election.close()
        if self.http is not None:
            await self.http.close()
        await self.store.close()
        log.info("stopped")
        return 0

    async def _finish_reconcile(self, reconciler: Reconciler) -> None:
        """On the way out: a full reconcile that is writing sends no further transaction, and those in
        flight are waited for, so that what it committed is known and recorded ("stopped: the daemon
        is stopping") before the tasks are cancelled; at most twice the request timeout and a second
        (the transactions in flight, then the history entry)."""
        reconciler.stopping = True
        grace = 2 * self.conn.timeout + 1.0
        try:
            async with asyncio.timeout(grace):
                await reconciler.idle()
        except TimeoutError:
            log.warning("stopping: the reconcile in progress did not end within %.0fs; cancelling it", grace)

    async def _start_from_history(self, broken: ManifestError) -> DesiredState:
        """The ref's head does not load at start-up: run the newest commit of the same repository (and
        path) the apply set's history records, reported as such, until a commit that loads arrives.
        Without one (first start, unreadable history, that commit unfetchable or broken too): the
        manifest error, exit 2, naming why there was nothing to fall back on."""
        git, head, fall_back = (getattr(self.source, a, None) for a in ("git", "head", "fall_back"))
        if git is None or head is None or fall_back is None:
            raise broken
        flag = self.settings.applyset_flag
        which = f"apply set {flag!r}" if flag else "any apply set"
        try:
            async with Store(self.conn) as store:
                entry = last_commit(await list_entries(store, self.settings.reserved, flag, unreadable=[]),
                                    repository=git.url, path=git.path)
            if entry is None:
                raise UsageError(f"the history of {which} records no commit of {git.url}")
            sha = entry.source["commit"]
            desired: DesiredState = select(await fall_back(sha, f"from history entry {entry.id}"),
                                           self.settings.options.selector)
            if resolve_applyset(flag, desired)[0] != entry.applyset:
                raise UsageError(f"commit {sha[:12]} of history entry {entry.id} declares another apply set")
        except EtcdsyncError as exc:
            raise ManifestError(f"{broken.message}; no earlier commit to run instead ({exc})", broken.file,
                                broken.line, broken.column) from None
        self.status.manifests_error = str(broken)      # as a broken commit that arrives later is reported
        self.metrics.errors.labels("manifest").inc()
        log.error("git: the ref's head %s does not load: %s; running commit %s of history entry %d (%s) until a "
                  "commit that loads arrives", head[:12], broken, sha[:12], entry.id, entry.kind)
        return desired

    async def _connect(self) -> None:
        backoff = Backoff(BACKOFF_MIN, BACKOFF_MAX)
        while True:
            try:
                await self.store.connect()
                return
            except EtcdConnectionError as exc:
                self.status.etcd_error = str(exc)
                delay = backoff.next()
                log.error("connect: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def _main(self) -> None:
        """Campaign when asked to, then do the work while we may write."""
        assert self.election is not None and self.reconciler is not None
        await self._connect()
        watches = Watches(self.store, self.settings, self.applyset, reconciler=self.reconciler, status=self.status,
                          live=self.live, desired=lambda: self.desired, trigger=self.trigger,
                          reconciled=self._reconciled, restart=self._watch_restart)
        leader_elect = self.settings.leader_elect
        while True:
            if leader_elect:
                await self.election.campaign()
            work = [asyncio.create_task(self._reconcile_loop(), name="reconcile"),
                    asyncio.create_task(self._follow_suspension(), name="suspension"),
                    asyncio.create_task(watches.run(), name="watch"),
                    asyncio.create_task(self._resync_loop(), name="resync")]
            if leader_elect:
                work.append(asyncio.create_task(self.election.hold(), name="leadership"))
            try:
                done, pending = await asyncio.wait(work, return_when=asyncio.FIRST_COMPLETED)
            finally:  # also when _main itself is cancelled (shutdown): no work task may outlive it
                await cancel_and_wait(*work)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    log.error("%s stopped: %s", t.get_name(), t.exception())
            if leader_elect:
                await self.live.stop()      # the new leader registers them under its own lease
            else:
                await asyncio.sleep(BACKOFF_MIN)
            self.status.leader = not leader_elect
            self.metrics.leader.set(0 if leader_elect else 1)

    def _on_cluster_change(self, change: ClusterChangedError) -> None:
        """The store saw etcd's revision go backwards or its cluster id change (data wiped, restored
        from an older snapshot, cluster rebuilt): forget every revision, re-read everything. The watch
        loop gets the same news from its streams and restarts after that re-read."""
        assert self.reconciler is not None
        log.warning("%s; forgetting every revision seen and re-reading everything", change)
        self.metrics.errors.labels("cluster-change").inc()
        self.reconciler.forget_revisions()
        self.trigger()

    # -- suspension -------------------------------------------------------------------

    async def _follow_suspension(self) -> None:
        """Read the apply set's suspension record, then watch it; never ends (retries with backoff)."""
        key = suspend_key(self.settings.reserved, self.applyset)
        backoff = Backoff(BACKOFF_MIN, BACKOFF_MAX)
        while True:
            try:
                kv = await self._read_suspension()
                start = (await self.store.revision()) + 1 if kv is None else kv.mod_revision + 1
                async for batch in self.store.watch(key, start_revision=start):
                    for ev in batch.events:
                        self._suspension_changed(key, ev.kv.value if ev.type == "put" else None)
                    backoff.reset()
            except EtcdsyncError as exc:
                log.debug("suspension watch: %s", exc)
                await asyncio.sleep(backoff.next())

    async def _read_suspension(self) -> KeyValue | None:
        """Read the apply set's suspension record now (before the first write, and before each watch)."""
        key = suspend_key(self.settings.reserved, self.applyset)
        kv = await self.store.get(key)
        self._suspension_changed(key, kv.value if kv else None)
        self._suspension_known.set()
        return kv

    def _suspension_changed(self, key: str, value: bytes | None) -> None:
        assert self.reconciler is not None
        before = self.suspension
        if value is None:
            now = None
        else:
            try:
                now = decode_suspension(key, value, reserved=self.settings.reserved)
            except EtcdsyncError as exc:      # unreadable, but someone meant to suspend: stay suspended
                now = Suspension(self.applyset, "?", time.time(), str(exc))
        self.suspension = now
        self.reconciler.suspended = now
        if (before is None) != (now is None):
            if now is not None:
                log.warning("suspended by %s%s: no config writes until `etcdsync resume` (live instances stay "
                            "registered)", now.who, f" ({now.reason})" if now.reason else "")
            else:
                log.info("resumed: reconciling now")
                self.trigger()

    # -- triggers -------------------------------------------------------------------

    def trigger(self, revision: int | None = None) -> None:
        """Ask for a full reconcile. With `revision` (an etcd event that needs one), the request is
        dropped when a full reconcile reads at or after that revision before it is served."""
        if revision is None:
            self._trigger_always = True
        else:
            self._trigger_revisions.add(revision)
        self._trigger.set()

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync)
            log.debug("resync timer: re-reading the manifests and their sources")
            await self._reload(quiet=True)
            self.trigger()

    async def _follow_source(self) -> None:
        async for _ in self.source.changes(lambda: self.desired):
            if await self._reload():
                self.trigger()

    def _fingerprint_now(self, sources: tuple[str, ...]) -> str | None:
        """The source's fingerprint of its files and these fromFile sources, taken before a load (so
        a change made after it is never taken as loaded); None for a source without one (git)."""
        fingerprint = getattr(self.source, "fingerprint", None)
        return None if fingerprint is None else fingerprint(sources)

    def _loaded(self, desired: DesiredState, seen: str | None, sources: tuple[str, ...]) -> None:
        """Keep the fingerprint taken before loading `desired` when it covered every file read."""
        self._fingerprint = seen if set(desired.sources) == set(sources) else None

    def _load(self) -> DesiredState:
        """The source's manifests narrowed to the documents -l selects: reconciles, repairs and live
        instances all keep only those (a selector matching nothing is a ManifestError)."""
        return select(self.source.load(), self.settings.options.selector)

    async def _reload(self, *, quiet: bool = False) -> bool:
        """Load the desired state from the source again; keep the last good state on error.

        Returns True when the desired state changed."""
        async with self._loading:
            sources = self.desired.sources if self.desired is not None else ()
            seen = await asyncio.to_thread(self._fingerprint_now, sources)
            if quiet and seen is not None and seen == self._fingerprint and self.status.manifests_error is None:
                # a resync of files byte for byte as last loaded: parsing them again would build the
                # same state, at the cost of the loader's peak (~70 MB more resident at 100,000 keys)
                log.debug("resync: the manifests and their sources are as last loaded")
                return False
            self._fingerprint = None
            try:  # off the event loop: a large tree takes a second, and drift repair must not wait
                desired = await asyncio.to_thread(self._load)
            except ManifestError as exc:
                if self.status.manifests_error != str(exc):
                    self.metrics.errors.labels("manifest").inc()
                    log.error("manifests: %s; keeping the last good state", exc)
                self.status.manifests_error = str(exc)
                self.metrics.manifest_valid.set(0)
                return False
            if self.status.manifests_error is not None:
                log.info("manifests: load error resolved")
            self.status.manifests_error = None
            self.metrics.manifest_valid.set(1)
            self._loaded(desired, seen, sources)
            changed = desired != self.desired
            if changed:   # an equal reload keeps the object: a reconcile in flight is not superseded
                self.desired = desired
            gc.freeze()
            if changed or not quiet:
                log.info("manifests %s: %d keys, %d live instances", "changed" if changed else "re-read",
                         len(desired.keys), len(desired.live))
            del desired       # an equal copy is freed before the trim
            trim_heap()
            return changed

    # -- full reconcile ---------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        assert self.reconciler is not None
        backoff = Backoff(BACKOFF_MIN, BACKOFF_MAX)
        self.trigger()
        while True:
            await self._trigger.wait()
            self._trigger.clear()
            always, revisions = self._trigger_always, self._trigger_revisions
            self._trigger_always, self._trigger_revisions = False, set()
            if not always and all(self.reconciler.accounted(r) for r in revisions):
                # every event that asked for it was covered by the last full read, or was our own
                # commit (its watch event can arrive before the transaction's own response)
                continue
            desired = self.desired
            assert desired is not None
            try:
                if not self._suspension_known.is_set():   # nothing is written before it was read once
                    await self._read_suspension()
                if self.suspension is not None:     # no config writes; live instances are still kept
                    try:
                        await self.live.sync(self.reconciler.active or desired)
                    except EtcdsyncError as exc:
                        log.error("live instances: %s", exc)
                    continue
                outcome = await self.reconciler.full(desired, superseded=functools.partial(self._superseded, desired))
                await self.live.sync(self.reconciler.active or desired)
            except EtcdsyncError as exc:
                delay = backoff.next()
                if exc.retryable:    # etcd's side (away, inventory broken): read and plan again
                    self.status.etcd_error = str(exc)
                    self.metrics.errors.labels("etcd").inc()
                    self.metrics.reconciles.labels("error").inc()
                    log.error("reconcile: %s; retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                    self.trigger()
                else:                # the input: wait for the next change of manifests
                    self.metrics.errors.labels("other").inc()
                    self.status.reconcile_error = str(exc)
                    log.error("reconcile: %s", exc)
                    await asyncio.sleep(delay)
                continue
            self.status.etcd_error = None
            backoff.reset()
            if outcome is not None:
                self._reconciled.set()
                self._watch_restart.set()
            outcome = None  # do not hold the plan (one Change per key) while idle
            trim_heap()

    def _superseded(self, desired: DesiredState) -> bool:
        """Newer manifests were loaded since `desired` was planned."""
        return self.desired is not desired
