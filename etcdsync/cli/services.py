"""`services ls`, `services watch` and `services register`: discovery and registration from the shell."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import signal
import sys
from typing import TYPE_CHECKING, Any

import click

from ..errors import UsageError
from ..settings import services_prefix
from .options import ConnectionFlags, OutputFlags, connection_options, format_option, output_options, parse_duration
from .output import emit_json, json_line, run, safe_text, table

if TYPE_CHECKING:
    from ..etcd.store import KeyValue


@click.group(no_args_is_help=False)   # no command: a one-line usage error, not the help as one
def services() -> None:
    """Discovery from the shell: list or watch a service's instances."""


def _instances_text(name: str, items: list[Any]) -> str:
    from ..core.render import escape

    if not items:
        return f"{escape(name)}: no instances"
    rows = [("ID", "HOST", "PORT", "METADATA")] + [
        (escape(i.id), escape(i.host), str(i.port),
         "" if i.metadata is None else escape(json.dumps(i.metadata, separators=(",", ":"), ensure_ascii=False)))
        for i in items
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip() for r in rows)


def _instances_json(name: str, items: list[Any]) -> dict[str, Any]:
    return {"service": name, "instances": [
        {"id": i.id, "host": i.host, "port": i.port, "metadata": i.metadata} for i in items]}


def service_options(f: Any, stream: bool = False) -> Any:
    f = click.option("--prefix", default=None, help="Registry prefix (default /services/, or services/ for grpc).")(f)
    f = click.option("--format", "fmt", type=click.Choice(["json", "grpc"]), default="json", show_default=True)(f)
    return format_option(stream=stream)(f)


@services.command(name="ls")
@click.argument("name", required=False)
@service_options
@connection_options
@output_options
def services_ls(name: str | None, prefix: str | None, fmt: str, output: str, display: OutputFlags,
                etcd: ConnectionFlags) -> None:
    """List the instances of service NAME, or without NAME every service with its instance count."""
    if name is not None:
        _list_instances(name, prefix, fmt, output, etcd)
        return
    from ..core.instances import decode_instance
    from ..etcd.store import Store

    conn = etcd.connection()
    base = prefix or services_prefix(fmt)

    async def go() -> list[KeyValue]:
        async with Store(conn) as store:
            kvs, _ = await store.get_prefix(base)
            return kvs

    counts: dict[str, list[int]] = {}
    for kv in run(go()):
        service, sep, rest = kv.key[len(base):].partition("/")
        if not sep or not rest or "/" in rest:
            continue
        row = counts.setdefault(service, [0, 0])
        try:
            decode_instance(kv.key, kv.value, fmt)
            row[0] += 1
        except ValueError:
            row[1] += 1
    if output == "json":
        emit_json({"prefix": base, "format": fmt, "services": [
            {"name": s, "instances": n, "unparsable": bad} for s, (n, bad) in sorted(counts.items())]})
        return
    if not counts:
        click.echo(f"no services under {safe_text(base)}")
        return
    rows = [("SERVICE", "INSTANCES")] + [
        (safe_text(s), str(n) + (f"  ({bad} unparsable {'value' if bad == 1 else 'values'} skipped)" if bad else "")) for s, (n, bad) in sorted(counts.items())]
    click.echo(table(rows))


def _list_instances(name: str, prefix: str | None, fmt: str, output: str, etcd: ConnectionFlags) -> None:
    from ..aio import AsyncRegistry

    conn = etcd.connection()

    async def go() -> list[Any]:
        reg = AsyncRegistry(conn, prefix=prefix or services_prefix(fmt), format=fmt)
        try:
            return await reg.discover(name)
        finally:
            await reg.close()

    items = run(go())
    if output == "json":
        emit_json(_instances_json(name, items))
    else:
        click.echo(_instances_text(name, items))


@services.command(name="watch")
@click.argument("name")
@functools.partial(service_options, stream=True)
@connection_options
@output_options
def services_watch(name: str, prefix: str | None, fmt: str, output: str, display: OutputFlags, etcd: ConnectionFlags) -> None:
    """Print the instances of service NAME now and on every change, until Ctrl-C."""
    import time

    from ..aio import AsyncRegistry

    conn = etcd.connection()

    def show(items: list[Any]) -> None:
        if output == "json":
            click.echo(json_line(_instances_json(name, items)))
        else:
            click.echo(f"--- {time.strftime('%H:%M:%S')} {name}: {len(items)} instances")
            click.echo(_instances_text(name, items))
        sys.stdout.flush()

    async def go() -> None:
        reg = AsyncRegistry(conn, prefix=prefix or services_prefix(fmt), format=fmt)
        w = await reg.watch(name, show)
        try:
            await asyncio.Event().wait()
        finally:
            # Ctrl-C: stop the watch, then close the connection, bounded (the command is ending anyway)
            w.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_closed(w, reg), 5)

    try:
        run(go())
    except KeyboardInterrupt:
        pass


async def _closed(w: Any, reg: Any) -> None:
    await w.wait_closed()
    await reg.close()


@services.command(name="register")
@click.argument("name")
@click.argument("id")
@click.option("--host", required=True, help="Host or IP the instance listens on.")
@click.option("--port", required=True, type=click.IntRange(1, 65535))
@click.option("--ttl", default="10s", show_default=True, help="Lease TTL (renewed every third of it).")
@click.option("--metadata", "metadata", multiple=True, metavar="K=V", help="Metadata entry (repeatable).")
@click.option("--prefix", default=None, help="Registry prefix (default /services/, or services/ for grpc).")
@click.option("--format", "fmt", type=click.Choice(["json", "grpc"]), default="json", show_default=True)
@connection_options
@output_options
def services_register(name: str, id: str, host: str, port: int, ttl: str, metadata: tuple[str, ...],
                      prefix: str | None, fmt: str, display: OutputFlags, etcd: ConnectionFlags) -> None:
    """Register instance ID of service NAME under a lease and hold it until Ctrl-C or SIGTERM, then
    revoke the lease so the instance vanishes at once (a killed process leaves it to expire)."""
    from ..aio import AsyncRegistry

    seconds = parse_duration(ttl, "--ttl")
    if seconds < 1:
        raise UsageError(f"--ttl {ttl}: etcd leases last at least 1s")
    meta: dict[str, str] = {}
    for item in metadata:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise UsageError(f"--metadata {item!r}: expected KEY=VALUE")
        meta[k] = v
    conn = etcd.connection()

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        reg = AsyncRegistry(conn, prefix=prefix or services_prefix(fmt), format=fmt)
        try:
            r = await reg.register(name, id, host=host, port=port, metadata=meta or None, ttl=seconds)
            click.echo(f"registered {safe_text(r.key)} under lease {r.lease_id:016x} (ttl {r.leased.ttl}s); "
                       "Ctrl-C or SIGTERM deregisters")
            if fmt == "grpc":
                click.echo(f"note: the grpc format keys instances by host:port; ID {id!r} is not part of the key",
                           err=True)
            sys.stdout.flush()
            await stop.wait()
            key = r.key
            await r.deregister()
            click.echo(f"deregistered {safe_text(key)}")
        finally:
            await reg.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    run(go())
