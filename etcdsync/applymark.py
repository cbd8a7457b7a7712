"""Marks a multi-transaction apply in etcd, so that config views deliver it as one change.

`apply.apply` is wrapped by `marked`: it opens a scope for the whole apply (every re-plan and retry
included). The executor (`execute.Executor`) calls `split()` right before it commits a batch that
will be followed by another one; the first such call (and only when the plan writes key values at
all) puts the marker

    <reserved>applying/<applyset>/<16 hex>   {"v":1,"applyset":...,"prefixes":[...]}

in a transaction of its own, under a lease of MARK_TTL seconds that is kept alive while the apply
runs. When the apply ends (done, refused, failed or cancelled) the lease is revoked, which deletes
the marker in a revision of its own. A plan that fits one transaction never writes a marker.

A crashed apply (kill -9) stops renewing the lease: etcd deletes the marker when it expires (within
MARK_TTL seconds), and views deliver what the apply committed. Nothing else ever writes or reads
these keys; `core.inventory.parse_ownership` ignores them.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from .core.plan import Action, Plan
from .errors import EtcdsyncError
from .etcd.store import Put, Store, absent
from .tasks import cancel_and_wait

log = logging.getLogger(__name__)

MARK_TTL = 10          # seconds: how long a crashed apply's marker outlives it
_VALUE_WRITES = frozenset({Action.CREATE, Action.UPDATE, Action.DELETE})

P = ParamSpec("P")
T = TypeVar("T")


class _Scope:
    """One apply's marker: none until the first split."""

    def __init__(self) -> None:
        self.store: Store | None = None
        self.key = ""
        self.lease = 0
        self.revision = 0
        self._keepalive: asyncio.Task[None] | None = None

    async def begin(self, store: Store, reserved: str, plan: Plan) -> None:
        if self.lease or not any(c.action in _VALUE_WRITES for c in plan.writes):
            return
        from .viewcore import encode_marker, marker_prefix  # only a multi-transaction apply marks

        prefixes = {c.prefix for c in plan.writes if c.action in _VALUE_WRITES}
        lease = await store.lease_grant(MARK_TTL)
        self.store, self.lease = store, lease
        key = f"{marker_prefix(reserved)}{plan.applyset}/{secrets.token_hex(8)}"
        result = await store.txn([absent(key)], [Put(key, encode_marker(plan.applyset, prefixes), lease=lease)])
        self.key, self.revision = key, result.revision
        self._keepalive = asyncio.create_task(self._renew(store, lease), name=f"apply marker {key}")
        log.debug("apply of %s runs in several transactions: marked at %s (revision %d)", plan.applyset, key,
                  result.revision)

    async def _renew(self, store: Store, lease: int) -> None:
        while True:
            await asyncio.sleep(MARK_TTL / 3)
            try:
                if await store.lease_keepalive(lease) <= 0:
                    log.warning("apply marker %s: its lease expired; views stop holding this apply back", self.key)
                    return
            except EtcdsyncError as exc:
                log.debug("apply marker %s: renewal failed (%s); retrying", self.key, exc)

    async def end(self) -> None:
        if not self.lease or self.store is None:
            return
        await cancel_and_wait(self._keepalive)
        try:
            await self.store.lease_revoke(self.lease)     # deletes the marker
        except EtcdsyncError as exc:
            log.warning("apply marker %s: not removed (%s); it expires within %d s", self.key, exc, MARK_TTL)
        self.lease = 0


_scope: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("etcdsync_apply_mark", default=None)


def marked(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Run an apply in a marker scope: a marker begun by `split()` inside it is removed at its end."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        scope = _Scope()
        token = _scope.set(scope)
        try:
            return await fn(*args, **kwargs)
        finally:
            _scope.reset(token)
            await scope.end()

    return wrapper


async def split(store: Store, reserved: str, plan: Plan) -> None:
    """A batch of `plan` is about to be committed and another will follow: mark the apply (once)."""
    scope = _scope.get()
    if scope is not None:
        await scope.begin(store, reserved, plan)
