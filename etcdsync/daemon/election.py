"""Leader election among daemons on one apply set (--leader-elect).

Each daemon puts a candidate key `<reserved>election/<applyset>/<16 hex digits>` under its own lease;
the one with the lowest create_revision leads. Every write of the leader is fenced on its key's
create_revision (`fences()`), so a leader that lost its lease writes nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets

from ..core.render import escape
from ..errors import EtcdConnectionError
from ..etcd.lease import LeasedKeys
from ..etcd.store import Compare, Store, created_at
from ..settings import DaemonSettings
from .metrics import Metrics
from .reconcile import Status

log = logging.getLogger("etcdsync.daemon")

CANDIDATE = re.compile(r"[0-9a-f]{16}")   # the name of an election candidate key


class Election:
    def __init__(self, store: Store, settings: DaemonSettings, applyset: str, *, status: Status,
                 metrics: Metrics) -> None:
        self.store = store
        self.settings = settings
        self.applyset = applyset
        self.status = status
        self.metrics = metrics
        self.key: str | None = None        # our candidate key
        self.revision = 0                  # its create_revision while we lead, else 0
        self.leased: LeasedKeys | None = None
        self._strays: list[str] = []

    @property
    def prefix(self) -> str:
        return f"{self.settings.reserved}election/{self.applyset}/"

    @property
    def lease_id(self) -> int:
        return self.leased.lease_id if self.leased is not None else 0

    def fences(self) -> list[Compare]:
        """The compares every write of the daemon carries: none without --leader-elect; our candidate
        key at its create_revision while we lead; one that never holds while we do not."""
        if not self.settings.leader_elect:
            return []
        if self.key is None or not self.revision:
            return [created_at(f"{self.settings.reserved}election/-never-", -1)]
        return [created_at(self.key, self.revision)]

    async def campaign(self) -> None:
        """Put our candidate key under a lease and wait until it has the lowest create_revision."""
        self.status.leader = False
        self.metrics.leader.set(0)
        while True:
            try:
                if self.leased is None:
                    self.key = f"{self.prefix}{secrets.token_hex(8)}"
                    self.leased = LeasedKeys(self.store, self.settings.election_ttl)
                    self.leased.items[self.key] = b"candidate"
                    log.info("leader election: campaigning as %s", self.key)
                    try:
                        await self.leased.start()
                    except EtcdConnectionError:
                        # etcd away: the keepalive loop grants the lease and puts the key once it
                        # answers (left to this loop, a daemon started while etcd was down never
                        # put its candidate key, and waited for an election it was not in forever)
                        await self.leased.start(wait=False)
                        raise
                if await self.is_leader():
                    self.status.leader = True
                    self.metrics.leader.set(1)
                    log.info("leader election: elected (%s)", self.key)
                    return
            except EtcdConnectionError as exc:
                self.status.etcd_error = str(exc)
                log.warning("leader election: %s", exc)
            await asyncio.sleep(min(1.0, self.settings.election_ttl / 5))

    async def is_leader(self) -> bool:
        """Whether our candidate key has the lowest create_revision of all candidates. A candidate is a
        key `<prefix><16 hex digits>` held by a lease (what `campaign` writes); anything else under
        the election prefix is reported and never elected, so a stray key cannot silence the daemons."""
        kvs, _ = await self.store.get_prefix(self.prefix)
        prefix = self.prefix
        strays = [kv.key for kv in kvs if not (kv.lease and CANDIDATE.fullmatch(kv.key[len(prefix):]))]
        if strays:
            if strays != self._strays:
                log.warning("leader election: ignoring %s under %s (not a candidate: no lease or not a "
                            "candidate name)", ", ".join(escape(k) for k in strays[:5]), escape(prefix))
            kvs = [kv for kv in kvs if kv.key not in strays]
        self._strays = strays
        mine = next((kv for kv in kvs if kv.key == self.key), None)
        if mine is None:
            self.revision = 0
            return False
        first = min(kvs, key=lambda kv: kv.create_revision)
        if first.key == self.key:
            self.revision = mine.create_revision
            return True
        return False

    async def hold(self) -> None:
        """Return (ending the work) as soon as we are no longer the leader."""
        while True:
            await asyncio.sleep(min(1.0, self.settings.election_ttl / 5))
            try:
                still = await self.is_leader()
            except EtcdConnectionError as exc:
                log.warning("leader election: %s", exc)
                continue
            if not still:
                log.warning("leader election: lost leadership; stopping writes")
                self.status.leader = False
                self.metrics.leader.set(0)
                self.revision = 0
                return

    async def close(self) -> None:
        """Revoke our candidacy (shutdown)."""
        if self.leased is not None:
            await self.leased.close(revoke=True)
