"""A fresh etcd per workload, a raw etcd3aio client, and the environment for etcdsync subprocesses."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from etcd3aio import Etcd3Client

from etcdsync.local.etcdbin import EtcdCluster

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


@dataclass
class Etcd:
    cluster: EtcdCluster

    @property
    def endpoint(self) -> str:
        return self.cluster.endpoints[0]

    @property
    def addr(self) -> str:
        """host:port, as etcd3aio wants it."""
        return self.endpoint.removeprefix("http://")

    @property
    def pid(self) -> int:
        proc = self.cluster.members[0].proc
        assert proc is not None
        return proc.pid

    @property
    def data_dir(self) -> Path:
        return self.cluster.members[0].data_dir


@contextmanager
def fresh_etcd(base_dir: str | None = None) -> Iterator[Etcd]:
    """A new single-member etcd (default flags, new data dir on free loopback ports), removed after."""
    import tempfile

    tmp = tempfile.mkdtemp(prefix="etcdsync-bench-etcd-", dir=base_dir)
    cluster = EtcdCluster(1, base_dir=tmp)
    try:
        cluster.start()
        yield Etcd(cluster)
    finally:
        cluster.stop()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


@asynccontextmanager
async def raw_client(addr: str) -> AsyncIterator[Etcd3Client]:
    """The plain etcd3aio client that the baselines use (receive limit raised for large ranges)."""
    client = Etcd3Client([addr])
    client._manager.grpc_options.append(("grpc.max_receive_message_length", 512 * 1024 * 1024))
    await client.connect()
    try:
        yield client
    finally:
        await client.close()


def subprocess_env() -> dict[str, str]:
    """etcdsync and bench importable from this checkout; no colors; no endpoints from the caller."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["NO_COLOR"] = "1"
    for name in ("ETCDSYNC_ENDPOINTS", "ETCDSYNC_USER", "ETCDSYNC_PASSWORD", "ETCDSYNC_DEBUG"):
        env.pop(name, None)
    return env


def etcdsync_cmd(*args: str) -> list[str]:
    return [PYTHON, "-m", "etcdsync", *args]
