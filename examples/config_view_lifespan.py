"""Config for an asyncio service: a view opened in a FastAPI-style lifespan, read on every request
without a network call, and a counter updated with compare-and-swap.

    ETCDSYNC_ENDPOINTS=http://127.0.0.1:2379 python examples/config_view_lifespan.py

With FastAPI the same `lifespan` is passed as `FastAPI(lifespan=lifespan)` and handlers read
`request.app.state.config`; here a tiny stand-in app runs it, so the example needs no web framework.
"""

import asyncio
import contextlib
import os
import types

from etcdsync import Connection
from etcdsync.aio import AsyncConfigStore

PREFIX = os.environ.get("EXAMPLE_PREFIX", "/config/example/")
CACHE = os.environ.get("EXAMPLE_CACHE", "example-config-cache.json")


@contextlib.asynccontextmanager
async def lifespan(app):
    cfg = AsyncConfigStore(Connection.from_env())
    # starts from the cache file when etcd is unreachable (view.stale), and catches up when it returns
    view = await cfg.view(PREFIX, cache_file=CACHE)
    app.state.cfg = cfg
    app.state.config = view
    print(f"startup: limit={view.get_int(PREFIX + 'limit', default=10)} "
          f"beta={view.get_bool(PREFIX + 'beta', default=False)} (stale: {view.stale})")
    try:
        yield
    finally:
        await view.close()
        await cfg.close()
        print("shutdown")


async def handle_request(app):
    """What a request handler does: read config from memory (no I/O)."""
    return app.state.config.get_int(PREFIX + "limit", default=10)


async def main():
    setup = AsyncConfigStore(Connection.from_env())
    await setup.put(PREFIX + "limit", "5")            # what `etcdsync apply` would have written

    app = types.SimpleNamespace(state=types.SimpleNamespace())
    async with lifespan(app):
        print(f"request: limit={await handle_request(app)}")

        changed = asyncio.Event()

        def on_change(change):                        # runs on this event loop
            for event in change.events:
                print(f"changed: {event.key[len(PREFIX):]} {event.old_value} -> {event.value}")
            changed.set()

        app.state.config.on_change(on_change)
        await setup.put(PREFIX + "limit", "7")        # an operator changes it
        await asyncio.wait_for(changed.wait(), 10)
        print(f"request: limit={await handle_request(app)}")

        await setup.delete(PREFIX + "requests")
        count = await app.state.cfg.update(PREFIX + "requests", lambda v: str(int(v or 0) + 1))
        print(f"counter: {count}")

    for key in ("limit", "requests"):
        await setup.delete(PREFIX + key)
    await setup.close()


if __name__ == "__main__":
    asyncio.run(main())
