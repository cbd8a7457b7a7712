"""`inventory`, `applysets` and `teardown`: what apply sets own, and removing one."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Any

import click

from ..errors import ConflictError, EtcdsyncError, GuardError, UsageError
from .options import ConnectionFlags, OutputFlags, connection_options, format_option, output_options, reserved_option
from .output import DIFF_LIMIT, Ctx, emit_json, run, safe_text, table

if TYPE_CHECKING:
    from ..core.inventory import Ownership
    from ..etcd.store import KeyValue, Store


async def _ownership(store: Store, reserved: str) -> tuple[Ownership, int]:
    from ..core.inventory import parse_ownership

    res, rev = await store.get_prefix(reserved)
    return parse_ownership(((kv.key, kv.value, kv.mod_revision) for kv in res), reserved), rev


@click.command()
@click.option("--applyset", metavar="NAME", help="Only this apply set (default: every set).")
@reserved_option(checked=False)
@format_option
@connection_options
@output_options
def inventory(applyset: str | None, reserved_prefix: str, output: str, display: OutputFlags, etcd: ConnectionFlags) -> None:
    """What apply sets own: each key with its prefix, the document that declared it, its prune and
    secret flags, and whether it is in etcd."""
    from ..core.inventory import check_applyset_name
    from ..diff import minimal_prefixes
    from ..etcd.store import Store

    if applyset is not None:
        check_applyset_name(applyset)
    conn = etcd.connection()

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
        return "absent" if kv is None else f"lease {kv.lease:016x}" if kv.lease else "present"

    if output == "json":
        emit_json({"revision": rev, "applysets": [
            {"name": n, "keys": [{"key": k, "prefix": e.prefix, "document": e.document or None, "prune": e.prune,
                                  "secret": e.secret, "state": state(k)}
                                 for k, e in sorted(own.inventory(n).owned.items())]} for n in names]})
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
        rows = [("KEY", "PREFIX", "DOCUMENT", "IN ETCD", "FLAGS")] + [
            (safe_text(k), safe_text(e.prefix), safe_text(e.document) or "-", state(k),
             ",".join(f for f, on in (("prune", e.prune), ("noprune", not e.prune), ("secret", e.secret)) if on))
            for k, e in sorted(inv.owned.items())]
        click.echo(table(rows))


@click.command()
@reserved_option(checked=False)
@format_option
@connection_options
@output_options
def applysets(reserved_prefix: str, output: str, display: OutputFlags, etcd: ConnectionFlags) -> None:
    """Every apply set with an inventory: keys owned, prefixes, and the latest revision of its inventory
    (when its ownership last changed; etcdsync does not record the time of an apply)."""
    from ..etcd.store import Store

    conn = etcd.connection()

    async def go() -> tuple[Ownership, int]:
        async with Store(conn) as store:
            return await _ownership(store, reserved_prefix)

    own, rev = run(go())
    sets: list[dict[str, Any]] = []
    for n in sorted(own.sets):
        inv = own.sets[n]
        sets.append({"name": n, "keys": len(inv.owned), "chunks": len(inv.chunks),
                     "secret": sum(1 for e in inv.owned.values() if e.secret), "prefixes": sorted(inv.prefixes),
                     "inventoryRevision": max(c.mod_revision for c in inv.chunks.values())})
    if output == "json":
        emit_json({"revision": rev, "applysets": sets})
        return
    if not sets:
        click.echo(f"no apply sets (no inventory under {reserved_prefix})", err=True)
        return
    rows = [("NAME", "KEYS", "INVENTORY REV", "PREFIXES")] + [
        (str(s["name"]), str(s["keys"]), str(s["inventoryRevision"]), " ".join(safe_text(p) for p in s["prefixes"]))
        for s in sets]
    click.echo(table(rows))
    click.echo(f"(revision {rev}; INVENTORY REV is the last change of what a set owns, not of its values)")


@click.command()
@click.option("--applyset", metavar="NAME", required=True, help="The apply set to remove.")
@reserved_option(checked=False)
@click.option("--max-deletes", type=click.IntRange(min=0), default=100, show_default=True,
              help="Refuse to delete more keys.")
@click.option("--force", is_flag=True, help="Allow more deletes than --max-deletes.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("-v", "--verbose", is_flag=True, help="List every key, not only the first 500.")
@format_option
@connection_options
@output_options
def teardown(applyset: str, reserved_prefix: str, max_deletes: int, force: bool, yes: bool, verbose: bool,
             output: str, display: OutputFlags, etcd: ConnectionFlags) -> None:
    """Delete every key an apply set owns, then its inventory: apply with nothing declared, through the
    same guarded transactions and deletion guard as `apply`. Keys marked prune: false, or now held by
    a lease, are released (left in etcd), not deleted. Then etcdsync's own records of the set: its
    history entries and its suspension. Shows the diff, then asks (or --yes)."""
    from ..apply import apply as do_apply
    from ..core import render
    from ..core.inventory import check_applyset_name
    from ..core.model import DesiredState
    from ..core.plan import Action, Plan
    from ..etcd.store import Store
    from ..history import delete_records, records_of
    from ..settings import Options

    check_applyset_name(applyset)
    ctx = Ctx(no_color=display.no_color, output=output, debug=display.debug, verbose=verbose)
    conn = etcd.connection()
    options = Options(allow_empty=True, max_deletes=max_deletes, force=force)
    confirmed: set[str] = set()
    asked: list[bool] = []
    shown: dict[str, Plan] = {}

    records: list[KeyValue] = []

    def what(keys: int) -> str:
        extra = f" (and its {len(records)} history and suspension records)" if records else ""
        return f"Delete {keys} keys and the inventory of apply set {applyset!r}?{extra}"

    def confirm(keys: int) -> None:
        if not yes:
            if not (sys.stdin.isatty() and sys.stdout.isatty()):
                raise UsageError(f"teardown of apply set {applyset!r}: not confirmed; pass --yes "
                                 "(stdin is not a terminal); nothing deleted")
            if not click.confirm(what(keys), default=False):
                raise _Declined()

    def on_plan(p: Plan, attempt: int) -> None:
        if p.owned_before == 0:
            raise _NothingOwned()
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
        confirm(len(keys))
        asked.append(True)
        confirmed.update(keys)

    async def go() -> tuple[Any, int]:
        async with Store(conn) as store:
            records[:] = await records_of(store, reserved_prefix, applyset)
            try:
                outcome = await do_apply(store, DesiredState(), applyset=applyset, reserved=reserved_prefix,
                                         options=options, on_plan=on_plan, on_execute=on_execute)
            except _NothingOwned:
                if not records:
                    raise UsageError(f"apply set {applyset!r}: owns nothing (no inventory under {reserved_prefix}); "
                                     "nothing to tear down") from None
                outcome = None          # torn down before: only its records are left
                confirm(0)
            # the records go last, once the set owns nothing: each compared on the revision read
            return outcome, await delete_records(store, records)

    try:
        outcome, removed = run(go())
    except _Declined:
        raise GuardError(f"teardown of apply set {applyset!r}: not confirmed; nothing deleted") from None
    except EtcdsyncError:
        if output == "json" and "plan" in shown:
            emit_json(render.plan_json(shown["plan"], applyset_origin="flag"))   # printed with the error
        raise
    left = len(records) - removed
    note = f"{removed} history and suspension records deleted" + (f" ({left} changed meanwhile, left)" if left else "")
    if outcome is None:
        if output == "json":
            emit_json({"applyset": applyset, "recordsDeleted": removed, "recordsLeft": left})
            return
        ctx.out(f"teardown of apply set {applyset!r}: it owned nothing; {note}")
        return
    results = outcome.results()
    deleted, released = results[render.Result.DELETED], results[render.Result.RELEASED]
    if output == "json":
        doc = render.plan_json(outcome.plan, applyset_origin="flag")
        doc["applied"] = {"revision": outcome.revision, "transactions": outcome.transactions,
                          **render.results_json(outcome.done, render.unchanged_keys(outcome.plan, outcome.done)),
                          "recordsDeleted": removed, "recordsLeft": left}
        emit_json(doc)
        return
    ctx.out(f"teardown of apply set {applyset!r}: {deleted} deleted, {released} released (left in etcd), inventory "
            f"removed, in {outcome.transactions} transactions (revision {outcome.revision}); {note}")


class _Declined(Exception):
    """The operator answered no."""


class _NothingOwned(Exception):
    """The apply set has no inventory."""
