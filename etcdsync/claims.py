"""A claim: one process at a time does a given job (here: applies a given saved plan).

The claim is a key `<reserved>claims/<apply set>/<id>` put only if absent, under a lease of its own
that is kept alive while the job runs and revoked at its end (so the key goes away with it, also when
the process dies: then after the lease's TTL). Every write of the job compares the claim key's
revision (`fence`), so a holder whose lease expired (paused, partitioned) writes nothing more, even
if another process claimed the job meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator

from .core.history import iso
from .core.render import escape
from .errors import ConflictError, EtcdsyncError
from .etcd.store import Compare, Put, Store, absent, mod_is

log = logging.getLogger(__name__)

CLAIM_TTL = 10          # seconds: how long a claim outlives a holder that stopped renewing it


def claims_prefix(reserved: str) -> str:
    return f"{reserved}claims/"


def claim_key(reserved: str, applyset: str, ident: str) -> str:
    return f"{claims_prefix(reserved)}{applyset}/{ident}"


class ClaimedError(ConflictError):
    """Another process holds the claim: it is doing the job now (exit 3, nothing written)."""


def _holder(value: bytes) -> str:
    try:
        doc = json.loads(value)
        return f"{escape(str(doc['who'])[:200])} since {iso(float(doc['time']))}"
    except (ValueError, KeyError, TypeError, OverflowError):
        return "another process"


@contextlib.asynccontextmanager
async def claimed(store: Store, key: str, *, who: str, what: str, ttl: int = CLAIM_TTL) -> AsyncIterator[Compare]:
    """Hold the claim at `key` for the body; yields the fence every write of the job must carry.
    ClaimedError naming the holder when another process holds it."""
    lease = await store.lease_grant(ttl)
    try:
        value = json.dumps({"who": who, "time": round(time.time(), 3), "what": what}).encode()
        result = await store.txn([absent(key)], [Put(key, value, lease=lease)])
        if not result.succeeded:
            kv = await store.get(key)
            holder = _holder(kv.value) if kv is not None else "another process (just finished)"
            raise ClaimedError(f"{escape(key)}: {what} is being done by {holder}; nothing written", [key])
        renew = asyncio.get_running_loop().create_task(_keep(store, lease, ttl), name=f"claim {key}")
        try:
            yield mod_is(key, result.revision)
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew
    finally:
        try:
            await asyncio.shield(store.lease_revoke(lease))    # the claim key goes with its lease
        except EtcdsyncError as exc:
            log.warning("claim %s: lease not revoked (%s); it expires within %d s", key, exc, ttl)


async def _keep(store: Store, lease: int, ttl: int) -> None:
    """Renew the claim's lease every third of its TTL; when it is gone, the fence stops the job."""
    while True:
        await asyncio.sleep(ttl / 3)
        try:
            if await store.lease_keepalive(lease) <= 0:
                log.warning("claim: lease %x expired; the job's next write will fail its compare", lease)
                return
        except EtcdsyncError as exc:
            log.warning("claim: lease %x not renewed: %s", lease, exc)
