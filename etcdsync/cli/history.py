"""`history`, `explain KEY`, `rollback ID`, `suspend` and `resume`. (What `apply` shares with them to
record its history entry lives in recording.py.)"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from ..errors import EtcdsyncError, InventoryError, UsageError
from .options import (
    DEFAULT_MANIFESTS,
    ConnectionFlags,
    ManifestFlags,
    OutputFlags,
    connection_options,
    format_option,
    manifest_options,
    output_options,
    reserved_option,
)
from .output import EXIT_DIFF, EXIT_OK, EXIT_REFUSED, Ctx, emit_json, plural, run, safe_text, table
from .recording import history_limit_option, load_with_source, record_apply, record_failed

if TYPE_CHECKING:
    from ..core.history import HistoryEntry
    from ..core.model import DesiredState

SECRET_READS = 64       # explain: past inventories read to tell secret values apart (older puts: hidden)

def _warn_unreadable(bad: list[tuple[str, str]]) -> None:
    """One line on stderr per history entry another client wrote in a shape etcdsync does not read
    (skipped, never guessed at), at most 20 and a count."""
    from ..core.render import escape

    for _, error in bad[:20]:
        click.echo(f"warning: {escape(error[:300])} (skipped)", err=True)
    if len(bad) > 20:
        click.echo(f"warning: {len(bad) - 20} more unreadable history entries skipped", err=True)


def _applyset_name(name: str | None) -> str | None:
    from ..core.inventory import check_applyset_name

    return check_applyset_name(name) if name is not None else None


# -- history ------------------------------------------------------------------------------------------

@click.command(name="history")
@click.option("--applyset", metavar="NAME", help="Only this apply set (default: every set).")
@reserved_option()
@format_option
@connection_options
@output_options
def history_cmd(applyset: str | None, reserved_prefix: str, output: str, etcd: ConnectionFlags,
                display: OutputFlags) -> None:
    """The recorded applies, reconciles, repairs and rollbacks, newest first."""
    from ..core.history import entry_rows
    from ..etcd.store import Store
    from ..history import list_entries

    name = _applyset_name(applyset)
    conn = etcd.connection()

    bad: list[tuple[str, str]] = []

    async def go() -> list[HistoryEntry]:
        async with Store(conn) as store:
            return await list_entries(store, reserved_prefix, name, unreadable=bad)

    entries = run(go())
    _warn_unreadable(bad)
    if output == "json":
        emit_json({"entries": [e.as_json() for e in sorted(entries, key=lambda e: -e.id)]})
        return
    if not entries:
        click.echo("no history" + (f" for apply set {name!r}" if name else "") + f" under {reserved_prefix}", err=True)
        return
    click.echo(table([[safe_text(c) for c in row] for row in entry_rows(entries)]))


# -- explain ------------------------------------------------------------------------------------------

@click.command()
@click.argument("etcd_key", metavar="KEY")
@manifest_options
@reserved_option()
@click.option("--applyset", metavar="NAME", help="The apply set of the manifests (default: their ApplySet document).")
@format_option
@connection_options
@output_options
def explain(etcd_key: str, manifests: ManifestFlags, reserved_prefix: str, applyset: str | None, output: str,
            etcd: ConnectionFlags, display: OutputFlags) -> None:
    """Where KEY is declared, who owns it, its value and its recent etcd history (whose writes)."""
    key = etcd_key
    from ..core.history import classify
    from ..core.inventory import parse_ownership
    from ..core.render import origin_json, secret_hash
    from ..etcd.store import KeyValue, Store
    from ..history import KeyEvent, key_events, list_entries

    _applyset_name(applyset)
    conn = etcd.connection()
    manifests.check()
    desired: DesiredState | None = None
    provenance: dict[str, str] = {}
    if manifests.git is not None or manifests.paths or os.path.isdir(DEFAULT_MANIFESTS):
        desired, provenance = load_with_source(manifests, reserved_prefix)

    async def go() -> tuple[Any, KeyValue | None, list[KeyEvent], int, int, list[HistoryEntry]]:
        async with Store(conn) as store:
            kvs, _ = await store.get_prefix(reserved_prefix)
            ownership = parse_ownership(((kv.key, kv.value, kv.mod_revision) for kv in kvs), reserved_prefix)
            current = await store.get(key)
            events, first, upto = await key_events(store, key)
            entries = await list_entries(store, reserved_prefix, unreadable=bad)
            # a value put while some apply set owned the key as a secret stays hidden, also after the
            # key stopped being secret, owned or declared: read the inventory at each put's revision
            for rev in sorted({ev.revision for ev in events if ev.type == "put"}, reverse=True)[:SECRET_READS]:
                kvs, _ = await store.get_prefix(reserved_prefix, revision=rev)
                then = parse_ownership(((kv.key, kv.value, kv.mod_revision) for kv in kvs), reserved_prefix)
                if not any(key in inv.owned and inv.owned[key].secret for inv in then.sets.values()):
                    clear_at.add(rev)
            return ownership, current, events, first, upto, entries

    bad: list[tuple[str, str]] = []
    clear_at: set[int] = set()          # revisions at which no apply set held the key as a secret
    ownership, current, events, first, upto, entries = run(go())
    _warn_unreadable(bad)
    owners = [name for name, inv in sorted(ownership.sets.items()) if key in inv.owned]
    owned = ownership.sets[owners[0]].owned[key] if owners else None
    d = desired.keys.get(key) if desired is not None else None
    secret = bool((d and d.secret) or (owned and owned.secret))

    def shown(value: bytes | None, revision: int | None = None) -> str | None:
        if value is None:
            return None
        hidden = secret or (revision is not None and revision not in clear_at)
        return secret_hash(value) if hidden else value.decode("utf-8", "replace")

    mine = [e for e in entries if not owners or e.applyset in owners]
    rows: list[dict[str, Any]] = []
    for ev in events:
        who, entry = classify(ev.revision, mine, key)
        if ev.lease and who == "other":
            who = "lease"      # a live registration's put, or another client's leased key
        rows.append({"revision": ev.revision, "type": ev.type, "value": shown(ev.value, ev.revision) if ev.type == "put" else None,
                     "writer": "etcdsync" if entry is not None else "other",
                     "how": who if entry is not None else ("drift (another writer)" if owners else "another writer"),
                     "entry": entry.id if entry else None, "who": entry.who if entry else None,
                     "applyset": entry.applyset if entry else None})
    declared: dict[str, Any] | None = None
    if d is not None:
        declared = {"document": d.document, "policy": d.policy.value, "prune": d.prune, "secret": d.secret,
                    **({"origin": origin_json(d.source)} if d.source else {}), "source": provenance}
    doc: dict[str, Any] = {
        "key": key,
        "declared": declared,
        "owner": owners[0] if owners else None,
        "alsoOwnedBy": owners[1:],
        "inventory": {"prefix": owned.prefix, "prune": owned.prune, "secret": owned.secret} if owned else None,
        "current": None if current is None else {"value": shown(current.value, current.mod_revision),
                                                  "modRevision": current.mod_revision,
                                                  "createRevision": current.create_revision,
                                                  "version": current.version, "lease": current.lease},
        "history": {"from": first, "to": upto, "compactedBefore": first if first > 1 else None, "events": rows},
    }
    if output == "json":
        emit_json(doc)
        return
    out = [f"key:       {safe_text(key)}"]
    if declared is not None and d is not None:
        where = str(d.source) if d.source else "?"
        layers = f"; layers: {', '.join(str(s) for s in d.source.layers)}" if d.source and d.source.layers else ""
        src = provenance.get("commit") or provenance.get("digest", "")
        out.append(f"declared:  {safe_text(where)} ({safe_text(d.document)}){safe_text(layers)}"
                   + (f" [{'commit' if 'commit' in provenance else 'files'} {src[:19]}]" if src else ""))
        out.append(f"policy:    {d.policy.value}" + ("" if d.prune else ", prune: false") + (", secret" if d.secret else ""))
    elif desired is not None:
        out.append("declared:  not in the manifests given")
    else:
        out.append("declared:  (no manifests given: pass -f or --git to say where)")
    if owners:
        assert owned is not None
        flags = ",".join(f for f, on in (("prune", owned.prune), ("noprune", not owned.prune), ("secret", owned.secret)) if on)
        out.append(f"owner:     apply set {safe_text(owners[0])} (prefix {safe_text(owned.prefix)}; {flags})"
                   + (f"; also listed by {', '.join(owners[1:])}" if owners[1:] else ""))
    else:
        out.append("owner:     no apply set owns it")
    if current is None:
        out.append("value:     absent")
    else:
        out.append(f"value:     {safe_text(shown(current.value, current.mod_revision) or '')} "
                   f"(mod revision {current.mod_revision}, "
                   f"version {current.version}" + (f", lease {current.lease:016x}" if current.lease else "") + ")")
    out.append(f"history:   revisions {first}..{upto}" + (f" (etcd compacted everything before {first})" if first > 1 else ""))
    for r in rows:
        what = "deleted" if r["type"] == "delete" else safe_text(r["value"] or "")
        by = (f"etcdsync {r['how']} (entry {r['entry']}, {safe_text(r['who'])})" if r["writer"] == "etcdsync"
              else r["how"])
        out.append(f"  {r['revision']:>8}  {r['type']:<6}  {what:<30}  {by}")
    if not rows:
        out.append("  (no events left)")
    click.echo("\n".join(out))


# -- rollback -----------------------------------------------------------------------------------------

@click.command()
@click.argument("entry_id", metavar="ID")
@click.option("--applyset", metavar="NAME", help="The apply set of the entry (when ids of several sets collide).")
@click.option("--apply", "do_apply", is_flag=True, help="Apply the rollback (default: only show its diff).")
@reserved_option()
@click.option("--allow-empty", is_flag=True, help="Allow a rollback that leaves the apply set owning nothing.")
@click.option("--max-deletes", type=click.IntRange(min=0), default=100, show_default=True, help="Refuse plans deleting more keys.")
@click.option("--force", is_flag=True, help="Allow more deletes than --max-deletes.")
@history_limit_option
@format_option
@connection_options
@output_options
def rollback(entry_id: str, applyset: str | None, do_apply: bool, reserved_prefix: str, allow_empty: bool,
             max_deletes: int, force: bool, history_limit: int, output: str, etcd: ConnectionFlags,
             display: OutputFlags) -> None:
    """Plan every owned key back to its value at history entry ID; --apply applies it."""
    from ..apply import apply
    from ..core import render
    from ..diff import diff, refuse
    from ..etcd.store import Store
    from ..history import find_entry, state_at
    from ..settings import Options
    from .interrupt import Interrupts

    ident = _applyset_name(applyset)
    from ..core.history import parse_id

    wanted = parse_id(entry_id)
    ctx = Ctx(no_color=display.no_color, output=output, debug=display.debug)
    conn = etcd.connection()
    options = Options(allow_empty=allow_empty, max_deletes=max_deletes, force=force)

    async def go() -> tuple[Any, Any, HistoryEntry | None, HistoryEntry]:
        async with Store(conn) as store:
            entry = await find_entry(store, reserved_prefix, wanted, ident)
            desired, _ = await state_at(store, reserved_prefix, entry.applyset, entry.id)
            p, _ = await diff(store, desired, applyset=entry.applyset, reserved=reserved_prefix, options=options)
            if ctx.output == "text":
                ctx.out(f"rollback of apply set {entry.applyset!r} to entry {entry.id} "
                        f"({time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(entry.time))}, {entry.kind} by "
                        f"{safe_text(entry.who)})")
                ctx.out(render.render_plan(p, style=ctx.style))
            refuse(p, entry.applyset)
            not_owned(p, entry)
            if not do_apply or not p.has_changes:
                return p, None, None, entry
            try:
                with Interrupts() as stop:     # SIGINT/SIGTERM: stop after the transactions in flight
                    outcome = await apply(store, desired, applyset=entry.applyset, reserved=reserved_prefix,
                                          options=options, on_plan=lambda again, _: not_owned(again, entry),
                                          interrupted=stop)
            except EtcdsyncError as exc:
                await record_failed(store, reserved_prefix, exc, applyset=entry.applyset,
                                    source={"rollbackOf": str(entry.id)}, limit=history_limit, kind="rollback")
                raise
            recorded = await record_apply(store, reserved_prefix, outcome, applyset=entry.applyset,
                                          source={"rollbackOf": str(entry.id)}, limit=history_limit, kind="rollback")
            return p, outcome, recorded, entry

    p, outcome, recorded, entry = run(go())
    if output == "json":
        doc = render.plan_json(outcome.plan if outcome else p, applyset_origin="history")
        doc["rollbackOf"] = entry.id
        if outcome is not None:
            doc["applied"] = {"revision": outcome.revision, "transactions": outcome.transactions,
                              **render.results_json(outcome.done, render.unchanged_keys(outcome.plan, outcome.done)),
                              "entry": recorded.id if recorded else None}
        emit_json(doc)
    elif outcome is not None:
        unchanged = render.unchanged_keys(outcome.plan, outcome.done)
        ctx.out(f"rolled back: {render.result_summary(outcome.done, unchanged)} in "
                f"{plural(outcome.transactions, 'transaction')} (revision {outcome.revision})"
                + (f"; history entry {recorded.id}" if recorded else ""))
    elif not p.has_changes:
        ctx.out(f"nothing to roll back: apply set {entry.applyset!r} holds the values of entry {entry.id}")
    else:
        ctx.out("(not applied: pass --apply; suspend the daemon first, or it puts the manifests back)")
    sys.exit(EXIT_OK if outcome is not None or not p.has_changes else EXIT_DIFF)


def not_owned(p: Any, entry: HistoryEntry) -> None:
    """A rollback writes only keys its apply set owns now, or that are absent (it re-creates what was
    pruned since): a key that exists and that nobody owns now (re-created by another client) is
    refused, exit 3, as an apply would adopt it. Checked on every plan, also the apply's re-plans."""
    from ..errors import OwnershipError

    taken = sorted(c.key for c in p.changes if c.adopts_unowned)
    if taken:
        shown = ", ".join(safe_text(k) for k in taken[:10]) + (f" (+{len(taken) - 10} more)" if len(taken) > 10 else "")
        raise OwnershipError(f"rollback of apply set {entry.applyset!r} to entry {entry.id}: it does not own {shown} "
                             "now (another client re-created it since); nothing written. Delete it, or adopt it "
                             "with apply, first", taken)


# -- suspend / resume ------------------------------------------------------------------------------

def _suspend_options(f: Any) -> Any:
    f = click.option("--applyset", metavar="NAME", default="default", show_default=True, help="The apply set.")(f)
    return reserved_option()(f)


@click.command()
@_suspend_options
@click.option("--reason", default="", help="Why (shown by the daemon's /readyz and log).")
@connection_options
@output_options
def suspend(applyset: str, reserved_prefix: str, reason: str, etcd: ConnectionFlags, display: OutputFlags) -> None:
    """Stop the apply set's daemons from writing config keys (until `resume`); they keep running."""
    from ..core.history import Suspension
    from ..etcd.store import Store
    from ..history import cli_identity, get_suspension
    from ..history import suspend as put_suspension

    name = _applyset_name(applyset) or "default"
    if any(ord(ch) < 32 for ch in reason) or len(reason) > 500:
        raise UsageError("--reason: one line of at most 500 characters")
    conn = etcd.connection()

    async def go() -> tuple[bool, Any]:
        async with Store(conn) as store:
            s = Suspension(name, cli_identity(), time.time(), reason)
            if await put_suspension(store, reserved_prefix, s):
                return True, s
            try:
                return False, (await get_suspension(store, reserved_prefix, name))[0]
            except InventoryError:      # a record another client wrote: suspended all the same
                return False, None

    done, s = run(go())
    if done:
        click.echo(f"apply set {name!r} suspended: its daemons stop writing config keys until `etcdsync resume"
                   f"{'' if name == 'default' else ' --applyset ' + name}`")
        return
    by = f" by {safe_text(s.who)}" if s is not None else ""
    click.echo(f"apply set {name!r} is suspended already{by}", err=True)
    sys.exit(EXIT_REFUSED)


@click.command()
@_suspend_options
@connection_options
@output_options
def resume(applyset: str, reserved_prefix: str, etcd: ConnectionFlags, display: OutputFlags) -> None:
    """Let the apply set's daemons write again (they reconcile at once)."""
    from ..etcd.store import Store
    from ..history import resume as delete_suspension

    name = _applyset_name(applyset) or "default"
    conn = etcd.connection()

    async def go() -> Any:
        async with Store(conn) as store:
            return await delete_suspension(store, reserved_prefix, name)

    s = run(go())
    if s is None:
        click.echo(f"apply set {name!r} was not suspended")
        return
    click.echo(f"apply set {name!r} resumed (suspended by {safe_text(s.who)})")
