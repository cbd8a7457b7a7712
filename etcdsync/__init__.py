"""etcdsync: declarative config center and service registry for etcd.

The library a service imports (DESIGN.md section 6):

    from etcdsync import Connection, ConfigStore, Registry

    conn = Connection(endpoints=["http://127.0.0.1:2379"])      # or Connection.from_env()
    cfg = ConfigStore(conn); cfg.put("/config/a", "1"); cfg.get("/config/a")
    reg = Registry(conn)
    with reg.register("my_service", "instance_1", host="localhost", port=3000, ttl=10):
        print(reg.discover("my_service"))

asyncio services use `etcdsync.aio` (AsyncConfigStore, AsyncRegistry) directly. Names are imported
lazily so that the CLI starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "AuthError",
    "ClusterChangedError",
    "ConfigEvent",
    "ConfigStore",
    "ConfigValueError",
    "ConflictError",
    "Connection",
    "EtcdConnectionError",
    "EtcdsyncError",
    "GuardError",
    "Instance",
    "ManifestError",
    "Registration",
    "Registry",
    "SyncWatch",
    "UsageError",
]

_WHERE = {
    "Connection": "settings",
    "ConfigStore": "sync", "Registry": "sync", "Registration": "sync", "SyncWatch": "sync",
    "ConfigEvent": "aio", "Instance": "aio",
    "EtcdsyncError": "errors", "ManifestError": "errors", "EtcdConnectionError": "errors", "AuthError": "errors",
    "ClusterChangedError": "errors",
    "ConflictError": "errors", "GuardError": "errors", "UsageError": "errors", "ConfigValueError": "errors",
}

if TYPE_CHECKING:
    from .aio import ConfigEvent, Instance
    from .errors import (
        AuthError,
        ClusterChangedError,
        ConfigValueError,
        ConflictError,
        EtcdConnectionError,
        EtcdsyncError,
        GuardError,
        ManifestError,
        UsageError,
    )
    from .settings import Connection
    from .sync import ConfigStore, Registration, Registry, SyncWatch


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'etcdsync' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
