"""`etcdsync run`: the continuous reconciler.

Triggers (a manifest file changed, an etcd event on a declared or owned prefix, the resync timer, a
watch that had to restart) all lead to the same level-triggered reconcile. Drift on a declared key is
repaired from the watch event itself. Live instances (ttl/check) are held under leases while their
check passes. etcd being away is survived with capped exponential backoff; a manifest that fails to
load keeps the last good state. With --leader-elect only the elected daemon writes, and each of its
writes is fenced on its election key.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import re
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..apply import minimal_prefixes
from ..core.inventory import inventory_prefix, resolve_applyset
from ..core.model import DesiredState, ServiceInstance
from ..core.plan import Options
from ..core.render import escape
from ..errors import ClusterChangedError, CompactedError, EtcdConnectionError, EtcdsyncError, ManifestError, UsageError
from ..etcd.lease import LeasedKeys
from ..etcd.store import Compare, Store, WatchEvent, created_at
from ..settings import RESERVED_PREFIX, Connection
from ..tasks import Backoff, cancel_and_wait
from .checks import Checker
from .metrics import HttpServer, Metrics
from .reconcile import Reconciler, Status

log = logging.getLogger("etcdsync.daemon")

BACKOFF_MIN, BACKOFF_MAX = 0.2, 10.0
CANDIDATE = re.compile(r"[0-9a-f]{16}")   # the name of an election candidate key
DEFAULT_CHECKED_TTL = 10.0


@dataclass
class DaemonSettings:
    """Everything `etcdsync run` was asked to do."""

    paths: Sequence[str]
    """Manifest files or directories (-f)."""
    applyset_flag: str | None = None
    """--applyset; else the ApplySet document; else 'default'."""
    reserved: str = RESERVED_PREFIX
    """Where inventories and election keys live."""
    options: Options = field(default_factory=Options)
    """Ownership and deletion-guard options, as for `apply`."""
    resync: float = 300.0
    """Seconds between full reconciles even when nothing was noticed."""
    debounce: float = 0.2
    """Seconds of quiet after a manifest file change before it is reloaded."""
    metrics_addr: str | None = None
    """host:port for /healthz, /readyz and /metrics."""
    leader_elect: bool = False
    """Run as one of several daemons on the same apply set; only the leader writes."""
    election_ttl: float = 5.0
    """Lease TTL of the election key: how fast a dead leader is replaced."""
    watchdog: float = 5.0
    """Seconds between probes that detect a watch which went silent."""


def _dump_tasks() -> None:
    """SIGUSR1: log where every task of the daemon is waiting (for a daemon that seems stuck)."""
    lines = []
    for task in asyncio.all_tasks():
        lines.append(f"task {task.get_name()}:")
        for frame in task.get_stack(limit=12):
            lines.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
    log.warning("SIGUSR1: %d tasks\n%s", len(asyncio.all_tasks()), "\n".join(lines))


def _outermost(dirs: set[str]) -> list[str]:
    """Drop directories inside another one of the set (watched recursively already)."""
    out: list[str] = []
    for d in sorted(dirs):
        if not any(d == o or d.startswith(o + os.sep) for o in out):
            out.append(d)
    return out


class Daemon:
    def __init__(self, conn: Connection, settings: DaemonSettings, load: Callable[[Sequence[str]], DesiredState]) -> None:
        self.conn = conn
        self.s = settings
        self.load = load                                # paths -> DesiredState (raises ManifestError)
        self.metrics = Metrics()
        self.status = Status(leader=not settings.leader_elect)
        self.desired: DesiredState | None = None        # last successfully loaded manifests
        self.applyset = "default"
        self.store = Store(conn)
        self.reconciler: Reconciler | None = None
        self._trigger = asyncio.Event()
        self._trigger_always = False
        self._trigger_revisions: set[int] = set()
        self._watch_restart = asyncio.Event()
        self._reconciled = asyncio.Event()
        self._stopping = False
        self._stop = asyncio.Event()
        self._leases: dict[float, LeasedKeys] = {}
        self._checkers: dict[str, Checker] = {}
        self._live: dict[str, ServiceInstance] = {}
        self._registered: set[str] = set()
        self._election_key: str | None = None
        self._election_rev = 0
        self._election: LeasedKeys | None = None
        self._strays: list[str] = []
        self._loading = asyncio.Lock()
        self.http: HttpServer | None = None
        self.metrics.ready.set_function(lambda: 1.0 if self.readiness()[0] else 0.0)
        self.metrics.leader.set(0 if settings.leader_elect else 1)

    # -- readiness ------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, object]]:
        st = self.status
        detail: dict[str, object] = {
            "manifests": st.manifests_error or "ok",
            "etcd": st.etcd_error or "ok",
            "reconcile": st.reconcile_error or ("ok" if st.last_success else "pending"),
            "leader": st.leader,
            "applyset": self.applyset,
            "lastSuccess": st.last_success,
        }
        ok = st.manifests_error is None and st.etcd_error is None and st.reconcile_error is None and (
            st.last_success is not None or (self.s.leader_elect and not st.leader))
        return ok, detail

    def fences(self) -> list[Compare]:
        if not self.s.leader_elect:
            return []
        if self._election_key is None or not self._election_rev:
            return [created_at(f"{self.s.reserved}election/-never-", -1)]
        return [created_at(self._election_key, self._election_rev)]

    # -- main -----------------------------------------------------------------------

    async def run(self) -> int:
        self.desired = self.load(self.s.paths)          # a bad manifest at start-up is exit 2
        gc.freeze()   # the desired state lives long: keep the cyclic collector from rescanning it
        self.applyset, origin = resolve_applyset(self.s.applyset_flag, self.desired)
        self.metrics.manifest_valid.set(1)
        if origin == "default":
            log.warning("applyset: 'default' (no --applyset and no ApplySet document)")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)
        if self.s.metrics_addr:
            try:
                self.http = HttpServer(self.s.metrics_addr, self.metrics, self.readiness)
                await self.http.start()
            except (OSError, ValueError) as exc:
                raise UsageError(f"--metrics-addr {self.s.metrics_addr}: cannot listen ({getattr(exc, 'strerror', None) or exc})") from None
            log.info("serving /healthz /readyz /metrics on %s:%d", self.http.host, self.http.port)
        self.reconciler = Reconciler(self.store, applyset=self.applyset, reserved=self.s.reserved,
                                     options=self.s.options, metrics=self.metrics, status=self.status,
                                     fences=self.fences, own_leases=self._own_leases)
        self.store.on_cluster_change.append(self._on_cluster_change)
        files = asyncio.create_task(self._files(), name="files")
        main = asyncio.create_task(self._main(), name="main")
        log.info("etcdsync run: apply set %r, %d keys, %d live instances, endpoints %s", self.applyset,
                 len(self.desired.keys), len(self.desired.live), ",".join(self.conn.endpoints))
        await self._stop.wait()
        log.info("stopping: revoking leases of live instances; config keys stay")
        self._stopping = True
        await cancel_and_wait(files, main)
        await self._stop_live()
        if self._election is not None:
            await self._election.close(revoke=True)
        if self.http is not None:
            await self.http.close()
        await self.store.close()
        log.info("stopped")
        return 0

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
        await self._connect()
        while True:
            if self.s.leader_elect:
                await self._campaign()
            work = [asyncio.create_task(self._reconcile_loop(), name="reconcile"),
                    asyncio.create_task(self._watch_loop(), name="watch"),
                    asyncio.create_task(self._resync_loop(), name="resync")]
            if self.s.leader_elect:
                work.append(asyncio.create_task(self._hold_leadership(), name="leadership"))
            try:
                done, pending = await asyncio.wait(work, return_when=asyncio.FIRST_COMPLETED)
            finally:  # also when _main itself is cancelled (shutdown): no work task may outlive it
                await cancel_and_wait(*work)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    log.error("%s stopped: %s", t.get_name(), t.exception())
            if self.s.leader_elect:
                await self._stop_live()      # the new leader registers them under its own lease
            else:
                await asyncio.sleep(BACKOFF_MIN)
            self.status.leader = not self.s.leader_elect
            self.metrics.leader.set(0 if self.s.leader_elect else 1)

    def _on_cluster_change(self, change: ClusterChangedError) -> None:
        """The store saw etcd's revision go backwards or its cluster id change (data wiped, restored
        from an older snapshot, cluster rebuilt): forget every revision, re-read everything. The watch
        loop gets the same news from its streams and restarts after that re-read."""
        assert self.reconciler is not None
        log.warning("%s; forgetting every revision seen and re-reading everything", change)
        self.metrics.errors.labels("cluster-change").inc()
        self.reconciler.forget_revisions()
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
            await asyncio.sleep(self.s.resync)
            log.debug("resync timer: re-reading the manifests and their sources")
            await self._reload(quiet=True)
            self.trigger()

    async def _reload(self, *, quiet: bool = False) -> bool:
        """Load the manifests (and fromFile sources) from disk again; keep the last good state on error.

        Returns True when the desired state changed."""
        async with self._loading:
            try:  # off the event loop: a large tree takes a second, and drift repair must not wait
                desired = await asyncio.to_thread(self.load, self.s.paths)
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
            changed = desired != self.desired
            if changed:   # an equal reload keeps the object: a reconcile in flight is not superseded
                self.desired = desired
            gc.freeze()
            if changed or not quiet:
                log.info("manifests %s: %d keys, %d live instances", "changed" if changed else "re-read",
                         len(desired.keys), len(desired.live))
            return changed

    def _watched(self) -> tuple[list[str], Callable[[Any, str], bool]]:
        """The directories to watch and the filter of paths that may trigger a reload: manifest files
        (`*.yaml`/`*.yml` under a -f directory, not hidden; a file named with -f) and the fromFile
        sources of the loaded manifests. Anything else there (a log file, an editor's swap file) is
        ignored, so the daemon never reacts to its own output."""
        dirs: set[str] = set()
        files: set[str] = set()
        for p in self.s.paths:
            path = os.path.abspath(p)
            if os.path.isdir(path):
                dirs.add(path)
            else:
                files.add(path)
        sources = set(self.desired.sources if self.desired else ())
        roots = dirs | {os.path.dirname(f) for f in files | sources}
        real_dirs = {os.path.realpath(d) for d in dirs}
        named = files | sources | {os.path.realpath(f) for f in files | sources}

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

    async def _files(self) -> None:
        from watchfiles import awatch

        while True:
            roots, wanted = self._watched()
            restart = asyncio.Event()
            async for _changes in awatch(*roots, watch_filter=wanted, debounce=int(self.s.debounce * 1000),
                                         step=50, stop_event=restart, recursive=True):
                if await self._reload():
                    self.trigger()
                if self._watched()[0] != roots:   # a new fromFile source outside the watched folders
                    restart.set()

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
                outcome = await self.reconciler.full(desired, superseded=functools.partial(self._superseded, desired))
                await self._sync_live(self.reconciler.active or desired)
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

    def _superseded(self, desired: DesiredState) -> bool:
        """Newer manifests were loaded since `desired` was planned."""
        return self.desired is not desired

    # -- watches --------------------------------------------------------------------

    def _watch_prefixes(self) -> list[str]:
        desired = self.reconciler.active if self.reconciler and self.reconciler.active else self.desired
        assert desired is not None
        prefixes = set(desired.prefixes) | {i.prefix for i in desired.live}
        prefixes.add(inventory_prefix(self.s.reserved, self.applyset))
        return minimal_prefixes(prefixes)

    async def _watch_loop(self) -> None:
        """Watch every prefix from the revision after the last full read; restart when the set changes."""
        assert self.reconciler is not None
        backoff = Backoff(BACKOFF_MIN, BACKOFF_MAX)
        await self._reconciled.wait()
        start = self.reconciler.revision + 1
        while True:
            prefixes = self._watch_prefixes()
            seen = {p: start - 1 for p in prefixes}
            tasks: list[asyncio.Task[Any]] = [
                asyncio.create_task(self._watch_one(p, start, seen), name=f"watch {p}") for p in prefixes]
            tasks.append(asyncio.create_task(self._watchdog(prefixes, seen), name="watchdog"))
            failure: BaseException | None = None
            try:
                while True:
                    self._watch_restart.clear()
                    restart = asyncio.create_task(self._watch_restart.wait())
                    tasks.append(restart)
                    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    tasks.remove(restart)
                    restart.cancel()
                    failure = next((t.exception() for t in done if t is not restart and t.exception()), None)
                    if failure is not None or any(t in done for t in tasks):
                        break
                    if self._watch_prefixes() != prefixes:
                        break
            finally:  # also when this loop is cancelled: the watch tasks must not outlive it
                await cancel_and_wait(*tasks)
            last = min(seen.values()) if seen else start - 1
            if isinstance(failure, CompactedError):
                log.warning("%s; full re-read", failure)
                self._reconciled.clear()
                self.trigger()
                await self._reconciled.wait()
                start = self.reconciler.revision + 1
                continue
            if failure is not None:
                if last >= start:  # the watch delivered before failing: this is a new failure
                    backoff.reset()
                delay = backoff.next()
                self.status.etcd_error = f"watch: {failure}"
                log.warning("watch: %s; resuming from revision %d in %.1fs", failure, last + 1, delay)
                await asyncio.sleep(delay)
                start = last + 1
                self.trigger()
                continue
            backoff.reset()
            # the prefixes changed: new ones start after the last full read, which covered them
            start = min(last + 1, self.reconciler.revision + 1)

    async def _watch_one(self, prefix: str, start: int, seen: dict[str, int]) -> None:
        assert self.reconciler is not None
        async for batch in self.store.watch_prefix(prefix, start_revision=start):
            received = time.perf_counter()
            seen[prefix] = max(seen[prefix], batch.revision if batch.progress else
                               max(ev.kv.mod_revision for ev in batch.events))
            self.status.etcd_error = None
            for ev in batch.events:
                await self._on_event(ev, received)

    async def _on_event(self, ev: WatchEvent, received: float) -> None:
        assert self.reconciler is not None
        key = ev.kv.key
        if key in self._live:
            if key in self._registered and not self._stopping:
                inst = self._live[key]
                if ev.type == "delete" or ev.kv.value != inst.value:
                    log.warning("%s: live registration %s externally; restoring", key,
                                "deleted" if ev.type == "delete" else "changed")
                    await self._lease_for(inst).refresh(key)
            return
        if key.startswith(self.s.reserved):
            # another writer changed our inventory (a concurrent apply): re-read everything
            if not self.reconciler.accounted(ev.kv.mod_revision):
                self.trigger(ev.kv.mod_revision)
            return
        result = await self.reconciler.repair(ev, received)
        if result is False:
            self.trigger(ev.kv.mod_revision)

    async def _watchdog(self, prefixes: list[str], seen: dict[str, int]) -> None:
        """A watch that silently stopped delivering: the prefix changed but no event came. Restart it.

        (gRPC keepalives catch a dead or paused member within ~7 s; this catches the rest.) A change
        the watch has not delivered one second after the probe saw it counts as missed.
        """
        while True:
            await asyncio.sleep(self.s.watchdog)
            for p in prefixes:
                latest, _ = await self.store.latest_mod_revision(p)
                if latest > seen[p]:
                    await asyncio.sleep(1.0)
                    if latest > seen[p]:
                        raise EtcdConnectionError(f"watch on {p} is silent (missed revision {latest})")

    # -- live instances ---------------------------------------------------------------

    def _own_leases(self) -> frozenset[int]:
        leases = [leased.lease_id for leased in self._leases.values()]
        if self._election is not None:
            leases.append(self._election.lease_id)
        return frozenset(lease for lease in leases if lease)

    def _lease_for(self, inst: ServiceInstance) -> LeasedKeys:
        ttl = inst.ttl or DEFAULT_CHECKED_TTL
        leased = self._leases.get(ttl)
        if leased is None:
            leased = self._leases[ttl] = LeasedKeys(self.store, ttl, fences=self.fences)
        return leased

    async def _sync_live(self, desired: DesiredState) -> None:
        wanted = {i.key: i for i in desired.live}
        for key in list(self._live):
            if key not in wanted or wanted[key] != self._live[key]:
                # a key now declared as static config was just written without the lease: keep it
                await self._drop_live(key, delete=key not in desired.keys)
        for key, inst in wanted.items():
            if key in self._live:
                continue
            self._live[key] = inst
            leased = self._lease_for(inst)
            if not leased.lease_id:
                await leased.start()
            if inst.check is None:
                await leased.put(key, inst.value)
                self._registered.add(key)
            else:
                checker = Checker(inst.check, inst.host, inst.port, self._check_callback(key), name=key)
                self._checkers[key] = checker
                checker.start()
        self.metrics.live_instances.set(len(self._registered))

    def _check_callback(self, key: str):  # type: ignore[no-untyped-def]
        async def on_state(up: bool) -> None:
            inst = self._live.get(key)
            if inst is None:
                return
            leased = self._lease_for(inst)
            if up:
                await leased.put(key, inst.value)
                self._registered.add(key)
                log.info("%s: registered (check passes)", key)
            else:
                was = key in self._registered
                self._registered.discard(key)
                await leased.remove(key)
                if was:
                    log.warning("%s: deregistered (check fails)", key)
            self.metrics.live_instances.set(len(self._registered))

        return on_state

    async def _drop_live(self, key: str, *, delete: bool = True) -> None:
        inst = self._live.pop(key)
        checker = self._checkers.pop(key, None)
        if checker is not None:
            await checker.stop()
        self._registered.discard(key)
        leased = self._lease_for(inst)
        if not delete:
            leased.items.pop(key, None)
            return
        with contextlib.suppress(EtcdsyncError):
            await leased.remove(key)

    async def _stop_live(self) -> None:
        for checker in self._checkers.values():
            await checker.stop()
        self._checkers.clear()
        for leased in self._leases.values():
            with contextlib.suppress(Exception):
                await leased.close(revoke=True)
        self._leases.clear()
        self._live.clear()
        self._registered.clear()
        self.metrics.live_instances.set(0)

    # -- leader election ----------------------------------------------------------------

    def _election_prefix(self) -> str:
        return f"{self.s.reserved}election/{self.applyset}/"

    async def _campaign(self) -> None:
        """Put our candidate key under a lease and wait until it has the lowest create_revision."""
        import secrets

        self.status.leader = False
        self.metrics.leader.set(0)
        while True:
            try:
                if self._election is None:
                    self._election_key = f"{self._election_prefix()}{secrets.token_hex(8)}"
                    self._election = LeasedKeys(self.store, self.s.election_ttl)
                    self._election.items[self._election_key] = b"candidate"
                    await self._election.start()
                    log.info("leader election: campaigning as %s", self._election_key)
                if await self._is_leader():
                    self.status.leader = True
                    self.metrics.leader.set(1)
                    log.info("leader election: elected (%s)", self._election_key)
                    return
            except EtcdConnectionError as exc:
                self.status.etcd_error = str(exc)
                log.warning("leader election: %s", exc)
            await asyncio.sleep(min(1.0, self.s.election_ttl / 5))

    async def _is_leader(self) -> bool:
        """Whether our candidate key has the lowest create_revision of all candidates. A candidate is a
        key `<prefix><16 hex digits>` held by a lease (what `_campaign` writes); anything else under
        the election prefix is reported and never elected, so a stray key cannot silence the daemons."""
        kvs, _ = await self.store.get_prefix(self._election_prefix())
        prefix = self._election_prefix()
        strays = [kv.key for kv in kvs if not (kv.lease and CANDIDATE.fullmatch(kv.key[len(prefix):]))]
        if strays:
            if strays != self._strays:
                log.warning("leader election: ignoring %s under %s (not a candidate: no lease or not a "
                            "candidate name)", ", ".join(escape(k) for k in strays[:5]), escape(prefix))
            kvs = [kv for kv in kvs if kv.key not in strays]
        self._strays = strays
        mine = next((kv for kv in kvs if kv.key == self._election_key), None)
        if mine is None:
            self._election_rev = 0
            return False
        first = min(kvs, key=lambda kv: kv.create_revision)
        if first.key == self._election_key:
            self._election_rev = mine.create_revision
            return True
        return False

    async def _hold_leadership(self) -> None:
        """Return (ending the work) as soon as we are no longer the leader."""
        while True:
            await asyncio.sleep(min(1.0, self.s.election_ttl / 5))
            try:
                still = await self._is_leader()
            except EtcdConnectionError as exc:
                log.warning("leader election: %s", exc)
                continue
            if not still:
                log.warning("leader election: lost leadership; stopping writes")
                self.status.leader = False
                self.metrics.leader.set(0)
                self._election_rev = 0
                return
