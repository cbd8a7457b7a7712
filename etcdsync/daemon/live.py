"""Live instances (ttl/check): held under the daemon's leases while their health check passes.

One lease per TTL; an instance without a check is registered at once, one with a check when the
check passes and removed when it fails. A watch event showing a registration deleted or changed by
someone else puts it back (`restore`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from ..core.model import DesiredState, ServiceInstance
from ..errors import EtcdsyncError
from ..etcd.lease import LeasedKeys
from ..etcd.store import Compare, Store, WatchEvent
from .checks import Checker
from .metrics import Metrics

log = logging.getLogger("etcdsync.daemon")

DEFAULT_CHECKED_TTL = 10.0


class LiveInstances:
    def __init__(self, store: Store, metrics: Metrics, fences: Callable[[], Sequence[Compare]]) -> None:
        self.store = store
        self.metrics = metrics
        self.fences = fences
        self.stopping = False                      # shutting down: no registration is put back
        self._leases: dict[float, LeasedKeys] = {}
        self._checkers: dict[str, Checker] = {}
        self._live: dict[str, ServiceInstance] = {}
        self._registered: set[str] = set()

    def lease_ids(self) -> list[int]:
        return [leased.lease_id for leased in self._leases.values()]

    def _lease_for(self, inst: ServiceInstance) -> LeasedKeys:
        ttl = inst.ttl or DEFAULT_CHECKED_TTL
        leased = self._leases.get(ttl)
        if leased is None:
            leased = self._leases[ttl] = LeasedKeys(self.store, ttl, fences=self.fences)
        return leased

    async def sync(self, desired: DesiredState) -> None:
        """Hold exactly the live instances `desired` declares."""
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

    def _check_callback(self, key: str) -> Callable[[bool], Awaitable[None]]:
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

    async def restore(self, ev: WatchEvent) -> bool:
        """Answer a watch event on a live instance's key (put it back when someone else deleted or
        changed it while registered); False when the key is not a live instance's."""
        key = ev.kv.key
        if key not in self._live:
            return False
        if key in self._registered and not self.stopping:
            inst = self._live[key]
            if ev.type == "delete" or ev.kv.value != inst.value:
                if await self._lease_for(inst).refresh(key, since=ev.kv.mod_revision):
                    log.warning("%s: live registration %s externally; restored", key,
                                "deleted" if ev.type == "delete" else "changed")
        return True

    async def _drop_live(self, key: str, *, delete: bool = True) -> None:
        inst = self._live.pop(key)
        checker = self._checkers.pop(key, None)
        if checker is not None:
            await checker.stop()
        self._registered.discard(key)
        leased = self._lease_for(inst)
        if not delete:
            leased.forget(key)
            return
        with contextlib.suppress(EtcdsyncError):
            await leased.remove(key)

    async def stop(self) -> None:
        """Stop every check and revoke every lease: the instances vanish at once."""
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
