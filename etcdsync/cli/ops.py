"""Operator commands: look at etcd and edit it by hand without stepping on what apply sets own.

`get`, `ls`, `put`, `del`, `inventory`, `applysets`, `teardown`, `services ls` (every service),
`services register`, `completion` and the text behind `--version`. They register themselves on the
`cli` group of `etcdsync.cli` when this module is imported (the last lines of cli.py do that).

Hand writes are guarded like apply's: the key(s) and every inventory record are read at one
revision; ownership is decided on that read; the write is one transaction that compares the key's
mod_revision (absent: version 0), the ownership fence and the inventory chunks that list the key, so
an apply that creates, adopts, takes over or releases the key in between makes the transaction fail
(then it is re-read and decided again) instead of being overwritten.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import ConflictError, EtcdsyncError, OwnershipError, UsageError
from ..settings import RESERVED_PREFIX, services_prefix
from ..tasks import Backoff
from .main import (
    DIFF_LIMIT,
    EXIT_REFUSED,
    Ctx,
    cli,
    connection_options,
    load,
    make_connection,
    output_options,
    parse_duration,
    run,
    service_options,
    services,
)
from .main import services_ls as _services_ls_one

if TYPE_CHECKING:
    from ..core.inventory import Ownership
    from ..core.model import DesiredState
    from ..etcd.store import Compare, KeyValue, Store

ATTEMPTS = 5                 # hand writes: re-read and re-decide this many times on a failed compare


# -- showing values safely ---------------------------------------------------------------------------

_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\", '"': '\\"'}
_UNSAFE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _escape_char(ch: str) -> str:
    o = ord(ch)
    if ch in _NAMED:
        return _NAMED[ch]
    if 0xDC80 <= o <= 0xDCFF:            # a byte that is not UTF-8 (decoded with surrogateescape)
        return f"\\x{o - 0xDC00:02x}"
    if o < 0x100:
        return f"\\x{o:02x}"
    return f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def _unsafe(ch: str, newlines: bool) -> bool:
    if newlines and ch in "\n\t":
        return False
    return unicodedata.category(ch) in _UNSAFE


def safe_text(data: bytes | str, *, newlines: bool = False) -> str:
    """Text that cannot drive a terminal: shown as is when it holds no control, format (bidi,
    zero-width), separator or undecodable character; otherwise C-quoted ("a\\x1bb") like git quotes
    paths. With `newlines`, newline and tab are kept (a single value on its own)."""
    text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
    if (text.isprintable() or not any(_unsafe(ch, newlines) for ch in text)) and not text.startswith('"'):
        return text
    return '"' + "".join(_escape_char(ch) if _unsafe(ch, newlines) or ch in '\\"' else ch for ch in text) + '"'


def _json_value(value: bytes) -> Any:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        import base64

        return {"base64": base64.b64encode(value).decode("ascii")}


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    return "\n".join(("  ".join(f"{cell:<{w}}" for cell, w in zip(r, widths, strict=False)) + "  " + r[-1]).rstrip()
                     for r in rows)


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


def reserved_option(f: Any) -> Any:
    return click.option("--reserved-prefix", default=RESERVED_PREFIX, show_default=True,
                        help="Where etcdsync keeps its inventory.")(f)


def json_option(f: Any) -> Any:
    return click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)(f)


# -- get / ls ------------------------------------------------------------------------------------------

def _kv_json(kv: KeyValue, seen: Seen) -> dict[str, Any]:
    from ..core.render import secret_hash

    out: dict[str, Any] = {"key": kv.key}
    if kv.key in seen.secret:
        out.update(value=None, secret=True, hash=secret_hash(kv.value))
    else:
        out["value"] = _json_value(kv.value)
    out.update(modRevision=kv.mod_revision, createRevision=kv.create_revision, version=kv.version,
               lease=f"{kv.lease:x}" if kv.lease else None, owners=seen.owners.get(kv.key, []))
    return out


def _shown(kv: KeyValue, seen: Seen, *, newlines: bool) -> str:
    if kv.key in seen.secret:
        from ..core.render import secret_hash

        return f"(secret, {secret_hash(kv.value)})"
    return safe_text(kv.value, newlines=newlines)


@cli.command()
@click.argument("target", metavar="KEY")
@click.option("--prefix", is_flag=True, help="Every key under KEY.")
@reserved_option
@json_option
@connection_options
@output_options
def get(target: str, prefix: bool, reserved_prefix: str, output: str, no_color: bool, debug: bool, **kw: Any) -> None:
    """Print a key's value (or every key under a prefix). Control characters are escaped; secret keys
    of an apply set show a hash, never the value."""
    from ..etcd.store import Store

    key = target

    conn = make_connection(kw)

    async def go() -> Seen:
        async with Store(conn) as store:
            return await read(store, reserved_prefix, key, prefix=prefix)

    seen: Seen = run(go())
    if not prefix and not seen.kvs:
        raise UsageError(f"{safe_text(key)}: not found")
    if output == "json":
        if prefix:
            click.echo(json.dumps({"prefix": key, "revision": seen.revision,
                                   "keys": [_kv_json(kv, seen) for kv in seen.kvs]}, indent=2))
        else:
            click.echo(json.dumps(_kv_json(seen.kvs[0], seen), indent=2))
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
        parts.append(f"lease {kv.lease:x}")
    return ", ".join(parts) or "-"


@cli.command(name="ls")
@click.argument("prefix")
@reserved_option
@json_option
@connection_options
@output_options
def ls_cmd(prefix: str, reserved_prefix: str, output: str, no_color: bool, debug: bool, **kw: Any) -> None:
    """List the keys under PREFIX with their owner: the apply set whose inventory lists the key, '-'
    for none, 'lease <id>' for a key held under a lease (a live registration)."""
    from ..etcd.store import Store

    conn = make_connection(kw)

    async def go() -> Seen:
        async with Store(conn) as store:
            return await read(store, reserved_prefix, prefix, prefix=True)

    seen: Seen = run(go())
    if output == "json":
        click.echo(json.dumps({"prefix": prefix, "revision": seen.revision, "keys": [
            {"key": kv.key, "owners": seen.owners.get(kv.key, []), "lease": f"{kv.lease:x}" if kv.lease else None,
             "reserved": any(kv.key.startswith(r) for r in _reserved_prefixes(reserved_prefix)),
             "modRevision": kv.mod_revision} for kv in seen.kvs]}, indent=2))
        return
    if not seen.kvs:
        click.echo(f"no keys under {safe_text(prefix)}", err=True)
        return
    rows = [("KEY", "OWNER")] + [(safe_text(kv.key), _owner_cell(kv, seen, reserved_prefix)) for kv in seen.kvs]
    click.echo(_table(rows))
    owned = sum(1 for kv in seen.kvs if kv.key in seen.owners)
    click.echo(f"{len(seen.kvs)} keys, {owned} owned by an apply set (revision {seen.revision})")


# -- put / del -----------------------------------------------------------------------------------------

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
            reasons.append(f"{safe_text(kv.key)}: held by lease {kv.lease:x} (a live registration)")
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


@cli.command()
@click.argument("target", metavar="KEY")
@click.argument("value")
@click.option("--force", is_flag=True, help="Write a key an apply set owns, or one held under a lease.")
@click.option("-f", "--filename", "paths", multiple=True, metavar="PATH",
              help="Manifests to name the file that declares an owned key (optional; repeatable).")
@reserved_option
@connection_options
@output_options
def put(target: str, value: str, force: bool, paths: tuple[str, ...], reserved_prefix: str, no_color: bool,
        debug: bool, **kw: Any) -> None:
    """Write KEY=VALUE, refusing (exit 3) a key an apply set owns or a lease holds unless --force.

    The write compares the revision it read: a concurrent change is never overwritten blindly."""
    from ..etcd.store import Put, Store

    key = target

    _check_reserved("put", key, reserved_prefix, prefix=False)
    if not key:
        raise UsageError("put: KEY is empty")
    conn = make_connection(kw)
    desired = _manifests(paths, reserved_prefix)
    data = value.encode("utf-8", "surrogateescape")

    async def go() -> tuple[str, int, Seen]:
        backoff = Backoff(0.05, 2.0)
        async with Store(conn) as store:
            for _attempt in range(ATTEMPTS):
                seen = await read(store, reserved_prefix, key, prefix=False)
                kv = seen.kvs[0] if seen.kvs else None
                if kv is not None and not force:
                    reason = _refusal([kv], seen, desired, "put")
                    if reason:
                        raise OwnershipError(reason, [key])
                if kv is not None and kv.value == data:
                    return "unchanged", seen.revision, seen
                result = await store.txn(_guards(seen, [kv if kv is not None else key]), [Put(key, data)])
                if result.succeeded:
                    return ("updated" if kv is not None else "created"), result.revision, seen
                await backoff.sleep()
        raise ConflictError(f"{key}: conflict, changed by another writer on each of {ATTEMPTS} attempts; "
                            "nothing written", [key])

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


@cli.command(name="del")
@click.argument("target", metavar="KEY")
@click.option("--prefix", is_flag=True, help="Delete every key under KEY (each compared on its revision).")
@click.option("--force", is_flag=True, help="Delete keys an apply set owns, or keys held under a lease.")
@click.option("-f", "--filename", "paths", multiple=True, metavar="PATH",
              help="Manifests to name the file that declares an owned key (optional; repeatable).")
@reserved_option
@connection_options
@output_options
def del_cmd(target: str, prefix: bool, force: bool, paths: tuple[str, ...], reserved_prefix: str, no_color: bool,
            debug: bool, **kw: Any) -> None:
    """Delete KEY (or every key under it with --prefix), refusing (exit 3) keys an apply set owns or a
    lease holds unless --force. Only keys seen and compared are deleted; keys created meanwhile stay."""
    from ..apply import Limits
    from ..errors import RequestTooLargeError
    from ..etcd.store import Delete, Store

    key = target

    _check_reserved("del", key, reserved_prefix, prefix=prefix)
    conn = make_connection(kw)
    desired = _manifests(paths, reserved_prefix)
    limits = Limits()

    async def go() -> tuple[int, int, int, list[str]]:
        deleted = transactions = revision = 0
        owned: list[str] = []
        backoff = Backoff(0.1, 2.0)
        async with Store(conn) as store:
            attempt = 0
            while True:
                seen = await read(store, reserved_prefix, key, prefix=prefix)
                if not seen.kvs:
                    return deleted, transactions, revision, owned
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
                    return deleted, transactions, revision, owned
                except RequestTooLargeError:
                    limits.shrink()
                except _Moved:
                    attempt += 1
                    if attempt >= ATTEMPTS:
                        raise ConflictError(f"{key}: conflict, changed by another writer on each of {ATTEMPTS} "
                                            f"attempts; {deleted} keys deleted before that", [key]) from None
                    await backoff.sleep()

    deleted, transactions, revision, owned = run(go())
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


# -- inventory / applysets -----------------------------------------------------------------------------

async def _ownership(store: Store, reserved: str) -> tuple[Ownership, int]:
    from ..core.inventory import parse_ownership

    res, rev = await store.get_prefix(reserved)
    return parse_ownership(((kv.key, kv.value, kv.mod_revision) for kv in res), reserved), rev


@cli.command()
@click.option("--applyset", metavar="NAME", help="Only this apply set (default: every set).")
@reserved_option
@json_option
@connection_options
@output_options
def inventory(applyset: str | None, reserved_prefix: str, output: str, no_color: bool, debug: bool, **kw: Any) -> None:
    """What apply sets own: each key with its prefix, prune and secret flags, and whether it is in etcd."""
    from ..apply import minimal_prefixes
    from ..core.inventory import check_applyset_name
    from ..etcd.store import Store

    if applyset is not None:
        check_applyset_name(applyset)
    conn = make_connection(kw)

    async def go() -> tuple[Ownership, int, dict[str, KeyValue]]:
        async with Store(conn) as store:
            own, rev = await _ownership(store, reserved_prefix)
            sets = [own.sets[applyset]] if applyset in own.sets else [] if applyset else list(own.sets.values())
            prefixes = minimal_prefixes({p for inv in sets for p in inv.prefixes})
            present: dict[str, KeyValue] = {}
            for items, _ in await asyncio.gather(*(store.get_prefix(p, revision=rev) for p in prefixes)):
                present.update((kv.key, kv) for kv in items)
            return own, rev, present

    own, rev, present = run(go())
    names = [applyset] if applyset else sorted(own.sets)

    def state(key: str) -> str:
        kv = present.get(key)
        return "absent" if kv is None else f"lease {kv.lease:x}" if kv.lease else "present"

    if output == "json":
        click.echo(json.dumps({"revision": rev, "applysets": [
            {"name": n, "keys": [{"key": k, "prefix": e.prefix, "prune": e.prune, "secret": e.secret, "state": state(k)}
                                 for k, e in sorted(own.inventory(n).owned.items())]} for n in names]}, indent=2))
        return
    if applyset and applyset not in own.sets:
        click.echo(f"apply set {applyset!r} owns nothing (no inventory under {reserved_prefix})", err=True)
        return
    if not names:
        click.echo(f"no apply sets (no inventory under {reserved_prefix})", err=True)
        return
    for i, n in enumerate(names):
        inv = own.sets[n]
        if i:
            click.echo("")
        click.echo(f"apply set {n}: {len(inv.owned)} keys")
        rows = [("KEY", "PREFIX", "IN ETCD", "FLAGS")] + [
            (safe_text(k), safe_text(e.prefix), state(k),
             ",".join(f for f, on in (("prune", e.prune), ("noprune", not e.prune), ("secret", e.secret)) if on))
            for k, e in sorted(inv.owned.items())]
        click.echo(_table(rows))


@cli.command()
@reserved_option
@json_option
@connection_options
@output_options
def applysets(reserved_prefix: str, output: str, no_color: bool, debug: bool, **kw: Any) -> None:
    """Every apply set with an inventory: keys owned, prefixes, and the latest revision of its inventory
    (when its ownership last changed; etcdsync does not record the time of an apply)."""
    from ..etcd.store import Store

    conn = make_connection(kw)

    async def go() -> tuple[Ownership, int]:
        async with Store(conn) as store:
            return await _ownership(store, reserved_prefix)

    own, rev = run(go())
    sets = []
    for n in sorted(own.sets):
        inv = own.sets[n]
        sets.append({"name": n, "keys": len(inv.owned), "chunks": len(inv.chunks),
                     "secret": sum(1 for e in inv.owned.values() if e.secret), "prefixes": sorted(inv.prefixes),
                     "inventoryRevision": max(c.mod_revision for c in inv.chunks.values())})
    if output == "json":
        click.echo(json.dumps({"revision": rev, "applysets": sets}, indent=2))
        return
    if not sets:
        click.echo(f"no apply sets (no inventory under {reserved_prefix})", err=True)
        return
    rows = [("NAME", "KEYS", "INVENTORY REV", "PREFIXES")] + [
        (str(s["name"]), str(s["keys"]), str(s["inventoryRevision"]), " ".join(safe_text(p) for p in s["prefixes"]))
        for s in sets]
    click.echo(_table(rows))
    click.echo(f"(revision {rev}; INVENTORY REV is the last change of what a set owns, not of its values)")


# -- teardown ------------------------------------------------------------------------------------------

@cli.command()
@click.option("--applyset", metavar="NAME", required=True, help="The apply set to remove.")
@reserved_option
@click.option("--max-deletes", type=click.IntRange(min=0), default=100, show_default=True,
              help="Refuse to delete more keys.")
@click.option("--force", is_flag=True, help="Allow more deletes than --max-deletes.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("-v", "--verbose", is_flag=True, help="List every key, not only the first 500.")
@json_option
@connection_options
@output_options
def teardown(applyset: str, reserved_prefix: str, max_deletes: int, force: bool, yes: bool, verbose: bool,
             output: str, no_color: bool, debug: bool, **kw: Any) -> None:
    """Delete every key an apply set owns, then its inventory: apply with nothing declared, through the
    same guarded transactions and deletion guard as `apply`. Keys marked prune: false, or now held by
    a lease, are released (left in etcd), not deleted. Shows the diff, then asks (or --yes)."""
    from ..apply import apply as do_apply
    from ..core import render
    from ..core.inventory import check_applyset_name
    from ..core.model import DesiredState
    from ..core.plan import Action, Options, Plan
    from ..etcd.store import Store

    check_applyset_name(applyset)
    ctx = Ctx(no_color=no_color, output=output, debug=debug, verbose=verbose)
    conn = make_connection(kw)
    options = Options(allow_empty=True, max_deletes=max_deletes, force=force)
    confirmed: set[str] = set()
    asked: list[bool] = []
    shown: dict[str, Plan] = {}

    def on_plan(p: Plan, attempt: int) -> None:
        if p.owned_before == 0:
            raise UsageError(f"apply set {applyset!r}: owns nothing (no inventory under {reserved_prefix}); "
                             "nothing to tear down")
        if attempt == 0:
            shown["plan"] = p
            if output == "text":
                ctx.out(render.render_plan(p, style=ctx.style, verbose=verbose, limit=None if verbose else DIFF_LIMIT))

    def on_execute(p: Plan) -> None:
        keys = {c.key for c in p.changes if c.action is Action.DELETE}
        if asked:
            if not keys <= confirmed:
                raise ConflictError(f"apply set {applyset!r}: it owns keys that were not shown when you confirmed "
                                    "(it changed meanwhile); nothing more deleted, run teardown again",
                                    sorted(keys - confirmed))
            return
        if not yes:
            if not (sys.stdin.isatty() and sys.stdout.isatty()):
                raise UsageError(f"teardown of apply set {applyset!r}: not confirmed; pass --yes "
                                 "(stdin is not a terminal); nothing deleted")
            if not click.confirm(f"Delete {len(keys)} keys and the inventory of apply set {applyset!r}?",
                                 default=False):
                raise _Declined()
        asked.append(True)
        confirmed.update(keys)

    async def go() -> Any:
        async with Store(conn) as store:
            return await do_apply(store, DesiredState(), applyset=applyset, reserved=reserved_prefix,
                                  options=options, on_plan=on_plan, on_execute=on_execute)

    try:
        outcome = run(go())
    except _Declined:
        ctx.note("teardown: not confirmed; nothing deleted")
        sys.exit(EXIT_REFUSED)
    except EtcdsyncError as exc:
        if output == "json" and "plan" in shown:
            doc = render.plan_json(shown["plan"], applyset_origin="flag")
            doc["error"] = str(exc)
            ctx.out(json.dumps(doc, indent=2))
        raise
    deleted = outcome.count(Action.DELETE)
    released = outcome.count(Action.RELEASE)
    if output == "json":
        doc = render.plan_json(outcome.plan, applyset_origin="flag")
        doc["applied"] = {"revision": outcome.revision, "transactions": outcome.transactions,
                          "results": [render.change_json(c, result=c.action.value) for c in outcome.done.values()]}
        ctx.out(json.dumps(doc, indent=2))
        return
    ctx.out(f"teardown of apply set {applyset!r}: {deleted} deleted, {released} released (left in etcd), inventory "
            f"removed, in {outcome.transactions} transactions (revision {outcome.revision})")


class _Declined(Exception):
    """The operator answered no."""


# -- services ------------------------------------------------------------------------------------------

@services.command(name="ls")
@click.argument("name", required=False)
@service_options
@connection_options
@output_options
@click.pass_context
def services_ls(click_ctx: click.Context, /, name: str | None, prefix: str | None, fmt: str, output: str,
                no_color: bool, debug: bool, **kw: Any) -> None:
    """List the instances of service NAME, or without NAME every service with its instance count."""
    if name is not None:
        click_ctx.invoke(_services_ls_one, name=name, prefix=prefix, fmt=fmt, output=output, no_color=no_color,
                         debug=debug, **kw)
        return
    from ..core.instances import decode_instance
    from ..etcd.store import Store

    conn = make_connection(kw)
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
        click.echo(json.dumps({"prefix": base, "format": fmt, "services": [
            {"name": s, "instances": n, "unparsable": bad} for s, (n, bad) in sorted(counts.items())]}))
        return
    if not counts:
        click.echo(f"no services under {safe_text(base)}")
        return
    rows = [("SERVICE", "INSTANCES")] + [
        (safe_text(s), str(n) + (f"  ({bad} unparsable values skipped)" if bad else "")) for s, (n, bad) in sorted(counts.items())]
    click.echo(_table(rows))


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
                      prefix: str | None, fmt: str, no_color: bool, debug: bool, **kw: Any) -> None:
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
    conn = make_connection(kw)

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        reg = AsyncRegistry(conn, prefix=prefix or services_prefix(fmt), format=fmt)
        try:
            r = await reg.register(name, id, host=host, port=port, metadata=meta or None, ttl=seconds)
            click.echo(f"registered {safe_text(r.key)} under lease {r.lease_id:x} (ttl {r.leased.ttl}s); "
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


# -- completion / version ------------------------------------------------------------------------------

@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for bash, zsh or fish.

    \b
    bash: source <(etcdsync completion bash)          (e.g. in ~/.bashrc)
    zsh:  source <(etcdsync completion zsh)           (e.g. in ~/.zshrc)
    fish: etcdsync completion fish > ~/.config/fish/completions/etcdsync.fish
    """
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None  # click ships bash, zsh and fish
    click.echo(cls(cli, {}, "etcdsync", "_ETCDSYNC_COMPLETE").source())


CHECKOUT = Path(__file__).resolve().parents[2]


def version_text(checkout: Path | None = CHECKOUT) -> str:
    """etcdsync's version, the commit (`git describe`) when running from a git checkout, and the etcd
    client library's version."""
    from importlib.metadata import PackageNotFoundError, version

    def of(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    line = f"etcdsync {of('etcdsync')}"
    if checkout is not None and (checkout / ".git").exists():
        try:
            p = subprocess.run(["git", "-C", str(checkout), "describe", "--always", "--dirty", "--tags"],
                               capture_output=True, text=True, timeout=5,
                               env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
            if p.returncode == 0 and p.stdout.strip():
                line += f" (commit {p.stdout.strip()})"
        except (OSError, subprocess.SubprocessError):
            pass
    return f"{line}\netcd client: etcd3aio {of('etcd3aio')}"
