"""What people do today, timed on the same etcd: the raw write rates etcdsync is compared with.

All Python baselines use etcdsync's own etcd client (etcd3aio) in this process and time only the
writes (no interpreter start-up, no YAML), so etcdsync's whole-process times are compared with the
best case of each pattern.
"""

from __future__ import annotations

import asyncio
import shlex
import tempfile
from pathlib import Path

from etcd3aio import Etcd3Client
from etcd3aio.kv import KVService

from etcdsync.local.etcdbin import find_binary

from .servers import raw_client
from .timing import run_timed, timed

TXN_OPS = 128


def _kv(client: Etcd3Client) -> KVService:
    assert client.kv is not None
    return client.kv


async def _warm(client: Etcd3Client) -> None:
    await _kv(client).get(b"/bench-warm-up")           # open the channel before timing


async def put_loop(addr: str, items: list[tuple[bytes, bytes]]) -> float:
    """One `kv.put` per key, sequential."""
    async with raw_client(addr) as client:
        await _warm(client)
        kv = _kv(client)
        with timed() as t:
            for key, value in items:
                await kv.put(key, value)
    return t.seconds


def _batches(items: list[tuple[bytes, bytes]]) -> list[list[tuple[bytes, bytes]]]:
    return [items[i:i + TXN_OPS] for i in range(0, len(items), TXN_OPS)]


async def txn_batches(addr: str, items: list[tuple[bytes, bytes]], in_flight: int = 1) -> float:
    """Transactions of 128 puts (no compares, no planning); `in_flight` at a time."""
    async with raw_client(addr) as client:
        await _warm(client)
        kv = _kv(client)
        with timed() as t:
            batches = iter(_batches(items))

            async def worker() -> None:
                for batch in batches:   # a shared iterator: each batch is taken once
                    ops = [KVService.txn_op_put(k, v) for k, v in batch]
                    await kv.txn([], ops)

            await asyncio.gather(*(worker() for _ in range(in_flight)))
    return t.seconds


def etcdctl_loop(endpoint: str, items: list[tuple[bytes, bytes]]) -> float:
    """`etcdctl put` per key from a bash `while read` loop: one process per key."""
    etcdctl = find_binary("etcdctl")
    with tempfile.TemporaryDirectory(prefix="etcdsync-bench-ctl-") as tmp:
        data = Path(tmp) / "keys.txt"
        data.write_bytes(b"".join(k + b" " + v + b"\n" for k, v in items))
        script = (f"while read -r k v; do {shlex.quote(etcdctl)} --endpoints={shlex.quote(endpoint)} "
                  f'put "$k" "$v" >/dev/null || exit 1; done < {shlex.quote(str(data))}')
        done = run_timed(["bash", "-c", script], env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
                         timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"etcdctl loop failed: {done.stderr.strip()[-500:]}")
    return done.seconds


async def count_prefix(addr: str, prefix: bytes) -> int:
    """How many keys are under `prefix` (to check that a workload wrote everything)."""
    from etcd3aio.kv import prefix_range_end

    async with raw_client(addr) as client:
        resp = await _kv(client).get(prefix, range_end=prefix_range_end(prefix), count_only=True)
        return int(resp.count)
