"""A held key is put back for a change newer than our last put of it, never for an older one.

The daemon puts a live instance back when its watch sees it deleted or changed. After a stall (etcd
paused longer than the lease's TTL) the keepalive loop finds the lease gone and re-registers every
key, and the watch, resuming from the last revision it saw, then replays the delete the expiry made:
answering that old event wrote the key a second time. Real etcd; the lease's loss is made with a
revoke, the replayed event is the delete's revision.
"""

from __future__ import annotations

import asyncio

from conftest import Env

from etcdsync.etcd.lease import LeasedKeys
from etcdsync.etcd.store import Store
from etcdsync.settings import Connection


def test_a_replayed_delete_older_than_the_re_registration_writes_nothing(env: Env) -> None:
    key = f"{env.ns}live/a"

    async def go() -> None:
        async with Store(Connection(env.endpoints)) as store:
            held = LeasedKeys(store, 10)
            try:
                await held.put(key, b"v")
                await store.lease_revoke(held.lease_id)          # the lease ends: etcd deletes the key
                deleted = await store.revision()
                await held.refresh()                            # the keepalive loop's finding: re-registered
                kv = await store.get(key)
                assert kv is not None and kv.lease == held.lease_id and kv.mod_revision > deleted
                assert not await held.refresh(key, since=deleted)   # the watch replays the old delete
                again = await store.get(key)
                assert again is not None and (again.mod_revision, again.version) == (kv.mod_revision, 1), \
                    "the key was written again for a delete older than its re-registration"
                assert await store.revision() == kv.mod_revision
                assert await store.delete(key)                  # a newer delete, by someone else, is answered
                assert await held.refresh(key, since=await store.revision())
                back = await store.get(key)
                assert back is not None and back.value == b"v" and back.lease == held.lease_id
            finally:
                await held.close()

    asyncio.run(go())
