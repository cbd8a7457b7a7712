"""`get`, `ls`, `put` and `del`: look at etcd and edit it by hand without stepping on what apply sets own.

Hand writes are guarded like apply's: the key(s) and every inventory record are read at one
revision; ownership is decided on that read; the write is one transaction that compares the key's
mod_revision (absent: version 0), the ownership fence and the inventory chunks that list the key, so
an apply that creates, adopts, takes over or releases the key in between makes the transaction fail
(then it is re-read and decided again) instead of being overwritten.

(Over 350 lines: the four commands share that read-decide-write cycle and its helpers.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..errors import ConflictError, OwnershipError, UsageError
from ..settings import RESERVED_PREFIX
from ..tasks import Backoff
from .options import (
    ConnectionFlags,
    OutputFlags,
    connection_options,
    format_option,
    load,
    output_options,
    reserved_option,
)
from .output import emit_json, json_value, run, safe_text, table

if TYPE_CHECKING:
    from ..core.inventory import Ownership
    from ..core.model import DesiredState
    from ..etcd.store import Compare, KeyValue, Store

T = TypeVar("T")
ATTEMPTS = 5                 # hand writes: re-read and re-decide this many times on a failed compare


# -- reading keys together with their owners ------------------------------------------------------------

@dataclass
class Seen:
    """Keys and every apply set's inventory, read at one revision."""

    revision: int
    kvs: list[KeyValue]
    ownership: Ownership
    owners: dict[str, list[str]] = field(default_factory=dict)   # key -> apply sets that list it
    secret: set[str] = field(default_factory=set)                # keys some inventory marks secret

    def chunks_of(self, key: str) -> list[tuple[str, int]]:
        return [(ck, chunk.mod_revision) for inv in self.ownership.sets.values()
                for ck, chunk in inv.chunks.items() if key in chunk.entries]


def _reserved_prefixes(reserved: str) -> tuple[str, ...]:
    return (reserved,) if reserved == RESERVED_PREFIX else (reserved, RESERVED_PREFIX)


async def read(store: Store, reserved: str, key: str, *, prefix: bool) -> Seen:
    from ..core.inventory import parse_ownership

    res, rev = await store.get_prefix(reserved)
    ownership = parse_ownership(((kv.key, kv.value, kv.mod_revision) for kv in res), reserved)
    if prefix:
        kvs, _ = await store.get_prefix(key, revision=rev)
    else:
        kvs, _ = await store.get_range(key, key + "\x00", revision=rev)
    seen = Seen(rev, kvs, ownership)
    for name in sorted(ownership.sets):
        for k, entry in ownership.sets[name].owned.items():
            seen.owners.setdefault(k, []).append(name)
            if entry.secret:
                seen.secret.add(k)
    return seen


def _check_reserved(what: str, key: str, reserved: str, *, prefix: bool) -> None:
    for r in _reserved_prefixes(reserved):
        if key.startswith(r) or (prefix and r.startswith(key)):
            raise UsageError(f"{key}: {'covers' if prefix and not key.startswith(r) else 'is under'} the reserved "
                             f"prefix {r}, where etcdsync keeps its inventory; {what} never touches it "
                             "(use `etcdsync teardown` to remove an apply set)")


def _kv_json(kv: KeyValue, seen: Seen) -> dict[str, Any]:
    from ..core.render import secret_hash

    out: dict[str, Any] = {"key": kv.key}
    if kv.key in seen.secret:
        out.update(value=None, secret=True, hash=secret_hash(kv.value))
    else:
        out["value"] = json_value(kv.value)
    out.update(modRevision=kv.mod_revision, createRevision=kv.create_revision, version=kv.version,
               lease=f"{kv.lease:016x}" if kv.lease else None, owners=seen.owners.get(kv.key, []))
    return out


def _shown(kv: KeyValue, seen: Seen, *, newlines: bool) -> str:
    if kv.key in seen.secret:
        from ..core.render import secret_hash

        return f"(secret, {secret_hash(kv.value)})"
    return safe_text(kv.value, newlines=newlines)


@click.command()
@click.argument("target", metavar="KEY")
@click.option("--prefix", is_flag=True, help="Every key under KEY.")
@reserved_option(checked=False)
@format_option
@connection_options
@output_options
def get(target: str, prefix: bool, reserved_prefix: str, output: str, display: OutputFlags, etcd: ConnectionFlags) -> None:
    """Print a key's value (or every key under a prefix). Control characters are escaped; secret keys
    of an apply set show a hash, never the value."""
    from ..etcd.store import Store

    key = target

    conn = etcd.connection()

    async def go() -> Seen:
        async with Store(conn) as store:
            return await read(store, reserved_prefix, key, prefix=prefix)

    seen: Seen = run(go())
    if not prefix and not seen.kvs:
        raise UsageError(f"{safe_text(key)}: not found")
    if output == "json":
        if prefix:
            emit_json({"prefix": key, "revision": seen.revision, "keys": [_kv_json(kv, seen) for kv in seen.kvs]})
        else:
            emit_json(_kv_json(seen.kvs[0], seen))
        return
    if not prefix:
        click.echo(_shown(seen.kvs[0], seen, newlines=True))
        return
    for kv in seen.kvs:
        click.echo(f"{safe_text(kv.key)} = {_shown(kv, seen, newlines=False)}")


def _owner_cell(kv: KeyValue, seen: Seen, reserved: str) -> str:
    if any(kv.key.startswith(r) for r in _reserved_prefixes(reserved)):
        return "(etcdsync reserved)"
    parts = list(seen.owners.get(kv.key, []))
    if kv.lease:
        parts.append(f"lease {kv.lease:016x}")
    return ", ".join(parts) or "-"


@click.command(name="ls")
@click.argument("prefix")
@reserved_option(checked=False)
@format_option
@connection_options
@output_options
def ls_cmd(prefix: str, reserved_prefix: str, output: str, display: OutputFlags, etcd: ConnectionFlags) -> None:
    """List the keys under PREFIX with their owner: the apply set whose inventory lists the key, '-'
    for none, 'lease <id>' for a key held under a lease (a live registration)."""
    from ..etcd.store import Store

    conn = etcd.connection()

    async def go() -> Seen:
        async with Store(conn) as store:
            return await read(store, reserved_prefix, prefix, prefix=True)

    seen: Seen = run(go())
    if output == "json":
        emit_json({"prefix": prefix, "revision": seen.revision, "keys": [
            {"key": kv.key, "owners": seen.owners.get(kv.key, []), "lease": f"{kv.lease:016x}" if kv.lease else None,
             "reserved": any(kv.key.startswith(r) for r in _reserved_prefixes(reserved_prefix)),
             "modRevision": kv.mod_revision} for kv in seen.kvs]})
        return
    if not seen.kvs:
        click.echo(f"no keys under {safe_text(prefix)}", err=True)
        return
    rows = [("KEY", "OWNER")] + [(safe_text(kv.key), _owner_cell(kv, seen, reserved_prefix)) for kv in seen.kvs]
    click.echo(table(rows))
    owned = sum(1 for kv in seen.kvs if kv.key in seen.owners)
    click.echo(f"{len(seen.kvs)} keys, {owned} owned by an apply set (revision {seen.revision})")


def _declared_at(desired: DesiredState | None, key: str) -> str:
    if desired is None:
        return ""
    d = desired.keys.get(key)
    if d is not None:
        return f", declared by {d.document} at {d.source}" if d.source else f", declared by {d.document}"
    live = next((i for i in desired.live if i.key == key), None)
    if live is not None:
        return f", declared by {live.document} at {live.source}" if live.source else f", declared by {live.document}"
    return ", not declared in the given manifests"


def _refusal(keys: list[KeyValue], seen: Seen, desired: DesiredState | None, verb: str) -> str | None:
    """Why a hand write of these keys is refused without --force (owned or leased), or None."""
    reasons = []
    for kv in keys:
        sets = seen.owners.get(kv.key)
        if sets:
            owners = " and ".join(repr(s) for s in sets)
            reasons.append(f"{safe_text(kv.key)}: owned by apply set {owners}{_declared_at(desired, kv.key)}")
        elif kv.lease:
            reasons.append(f"{safe_text(kv.key)}: held by lease {kv.lease:016x} (a live registration)")
    if not reasons:
        return None
    more = f" (and {len(reasons) - 3} more keys)" if len(reasons) > 3 else ""
    return "; ".join(reasons[:3]) + more + f"; refusing to {verb}, nothing written (--force to do it anyway)"


def _guards(seen: Seen, keys: Sequence[KeyValue | str]) -> list[Compare]:
    """Compares that hold only while nothing we decided on has moved: each key's revision, the
    ownership fence (bumped whenever an apply adopts an existing key) and each inventory chunk that
    lists one of the keys (rewritten when a set releases, deletes or takes over a key)."""
    from ..core.inventory import fence_key
    from ..etcd.store import absent, mod_is

    out: list[Compare] = []
    chunks: dict[str, int] = {}
    for item in keys:
        if isinstance(item, str):
            out.append(absent(item))
            name = item
        else:
            out.append(mod_is(item.key, item.mod_revision))
            name = item.key
        for ck, rev in seen.chunks_of(name):
            chunks[ck] = rev
    out.append(mod_is(fence_key(seen.ownership.reserved), seen.ownership.fence_revision))
    out.extend(mod_is(ck, rev) for ck, rev in sorted(chunks.items()))
    return out


def _manifests(paths: tuple[str, ...], reserved: str) -> DesiredState | None:
    return load(paths, reserved) if paths else None


@click.command()
@click.argument("target", metavar="KEY")
@click.argument("value")
@click.option("--force", is_flag=True, help="Write a key an apply set owns, or one held under a lease.")
@click.option("-f", "--filename", "paths", multiple=True, metavar="PATH",
              help="Manifests to name the file that declares an owned key (optional; repeatable).")
@reserved_option(checked=False)
@connection_options
@output_options
def put(target: str, value: str, force: bool, paths: tuple[str, ...], reserved_prefix: str, display: OutputFlags, etcd: ConnectionFlags) -> None:
    """Write KEY=VALUE, refusing (exit 3) a key an apply set owns or a lease holds unless --force.

    The write compares the revision it read: a concurrent change is never overwritten blindly."""
    from ..etcd.store import Put, Store

    key = target

    _check_reserved("put", key, reserved_prefix, prefix=False)
    if not key:
        raise UsageError("put: KEY is empty")
    conn = etcd.connection()
    desired = _manifests(paths, reserved_prefix)
    data = value.encode("utf-8", "surrogateescape")

    async def step(store: Store, seen: Seen) -> tuple[str, int, Seen]:
        kv = seen.kvs[0] if seen.kvs else None
        if kv is not None and not force:
            reason = _refusal([kv], seen, desired, "put")
            if reason:
                raise OwnershipError(reason, [key])
        if kv is not None and kv.value == data:
            return "unchanged", seen.revision, seen
        result = await store.txn(_guards(seen, [kv if kv is not None else key]), [Put(key, data)])
        if not result.succeeded:
            raise _Moved()
        return ("updated" if kv is not None else "created"), result.revision, seen

    async def go() -> tuple[str, int, Seen]:
        async with Store(conn) as store:
            return await _write_cycle(store, reserved_prefix, key, prefix=False, step=step, backoff=Backoff(0.05, 2.0),
                                      conflict=lambda: f"{key}: conflict, changed by another writer on each of "
                                                       f"{ATTEMPTS} attempts; nothing written")

    what, revision, seen = run(go())
    shown = safe_text(key)
    if what == "unchanged":
        click.echo(f"{shown}: unchanged (already holds that value; nothing written)")
        return
    click.echo(f"{shown}: {what} (revision {revision})")
    if seen.owners.get(key):
        click.echo(f"note: {shown} is owned by apply set {', '.join(seen.owners[key])}: the next apply, or a "
                   "running daemon, sets it back to the declared value unless its policy is warn or create-only",
                   err=True)


@click.command(name="del")
@click.argument("target", metavar="KEY")
@click.option("--prefix", is_flag=True, help="Delete every key under KEY (each compared on its revision).")
@click.option("--force", is_flag=True, help="Delete keys an apply set owns, or keys held under a lease.")
@click.option("-f", "--filename", "paths", multiple=True, metavar="PATH",
              help="Manifests to name the file that declares an owned key (optional; repeatable).")
@reserved_option(checked=False)
@connection_options
@output_options
def del_cmd(target: str, prefix: bool, force: bool, paths: tuple[str, ...], reserved_prefix: str, display: OutputFlags, etcd: ConnectionFlags) -> None:
    """Delete KEY (or every key under it with --prefix), refusing (exit 3) keys an apply set owns or a
    lease holds unless --force. Only keys seen and compared are deleted; keys created meanwhile stay."""
    from ..errors import RequestTooLargeError
    from ..etcd.store import Delete, Store
    from ..execute import Limits

    key = target

    _check_reserved("del", key, reserved_prefix, prefix=prefix)
    conn = etcd.connection()
    desired = _manifests(paths, reserved_prefix)
    limits = Limits()

    deleted = transactions = revision = 0
    owned: list[str] = []

    async def step(store: Store, seen: Seen) -> None:
        nonlocal deleted, transactions, revision
        if not seen.kvs:
            return
        if not force:
            reason = _refusal(seen.kvs, seen, desired, "delete")
            if reason:
                if deleted:  # ownership changed between two batches of a --prefix delete
                    reason = reason.replace("nothing written", f"{deleted} keys already deleted before")
                raise OwnershipError(reason, [kv.key for kv in seen.kvs if kv.key in seen.owners or kv.lease])
        owned.extend(kv.key for kv in seen.kvs if kv.key in seen.owners and kv.key not in owned)
        try:
            for batch in _batches(seen, limits.max_ops):
                result = await store.txn(_guards(seen, batch), [Delete(kv.key) for kv in batch])
                transactions += 1
                if not result.succeeded:
                    raise _Moved()
                deleted += len(batch)
                revision = result.revision
        except RequestTooLargeError:
            limits.shrink()
            raise _Reread() from None

    async def go() -> None:
        async with Store(conn) as store:
            await _write_cycle(store, reserved_prefix, key, prefix=prefix, step=step, backoff=Backoff(0.1, 2.0),
                               conflict=lambda: f"{key}: conflict, changed by another writer on each of "
                                                f"{ATTEMPTS} attempts; {deleted} keys deleted before that")

    run(go())
    shown = safe_text(key)
    if not deleted:
        click.echo(f"{shown}: {'no keys under it' if prefix else 'not found'}; nothing deleted")
        return
    if prefix:
        click.echo(f"{shown}: deleted {deleted} keys in {transactions} transaction"
                   f"{'' if transactions == 1 else 's (not atomic as a whole)'} (revision {revision})")
    else:
        click.echo(f"{shown}: deleted (revision {revision})")
    if owned:
        click.echo(f"note: {len(owned)} deleted keys are still in their apply set's inventory: the next apply, or a "
                   "running daemon, re-creates those it still declares and releases the others", err=True)


class _Moved(Exception):
    """A guarded hand write found that something it read has changed."""


class _Reread(Exception):
    """Read again and decide again without counting an attempt (the server refused a batch as too large)."""


async def _write_cycle(store: Store, reserved: str, key: str, *, prefix: bool,
                       step: Callable[[Store, Seen], Awaitable[T]], backoff: Backoff, conflict: Callable[[], str]) -> T:
    """The read-decide-write cycle of hand writes: read the key(s) with their owners at one revision,
    let `step` decide and write (raising _Moved when a compare failed), and read again with backoff;
    ConflictError after ATTEMPTS failed compares."""
    attempts = 0
    while True:
        seen = await read(store, reserved, key, prefix=prefix)
        try:
            return await step(store, seen)
        except _Reread:
            continue
        except _Moved:
            attempts += 1
            if attempts >= ATTEMPTS:
                raise ConflictError(conflict(), [key]) from None
            await backoff.sleep()


def _batches(seen: Seen, max_ops: int) -> list[list[KeyValue]]:
    """Keys split so that a transaction's compares (keys, fence, chunks) stay within max_ops."""
    out: list[list[KeyValue]] = []
    batch: list[KeyValue] = []
    chunks: set[str] = set()
    for kv in seen.kvs:
        new = {ck for ck, _ in seen.chunks_of(kv.key)} - chunks
        if batch and len(batch) + 1 + len(chunks) + len(new) + 1 > max_ops:
            out.append(batch)
            batch, chunks = [], set()
            new = {ck for ck, _ in seen.chunks_of(kv.key)}
        batch.append(kv)
        chunks |= new
    if batch:
        out.append(batch)
    return out
