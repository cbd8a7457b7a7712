"""`validate`, `diff`, `apply` and `export`: manifests against etcd.

The commands parse their flags, load the manifests, call the library (`etcdsync.apply`) and print
what it returns; the only thing they add is a progress bar on a terminal for large applies.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from ..core.inventory import resolve_applyset
from ..errors import EtcdsyncError, UsageError
from .options import (
    ConnectionFlags,
    ManifestFlags,
    OutputFlags,
    PlanFlags,
    connection_options,
    format_option,
    manifest_options,
    output_options,
    plan_options,
    reserved_option,
)
from .output import DIFF_LIMIT, EXIT_DIFF, EXIT_OK, Ctx, plural, run

if TYPE_CHECKING:
    from ..apply import Outcome
    from ..core.model import Source
    from ..core.plan import Plan
    from ..settings import Options

PROGRESS_FROM = 1000   # writes from which `apply` shows a progress bar on a terminal


@click.command()
@manifest_options
@reserved_option()
@format_option
@click.option("--strict", is_flag=True, help="Exit 2 when the registry lint warns.")
@output_options
def validate(manifests: ManifestFlags, reserved_prefix: str, output: str, strict: bool, display: OutputFlags) -> None:
    """Check manifests offline: syntax, schema, value rules, duplicate keys; lint the registry."""
    from ..core.lint import lint
    from ..core.render import escape

    ctx = Ctx(no_color=display.no_color, output=output, debug=display.debug)
    manifests.check()
    desired = manifests.load(reserved_prefix)
    warnings = lint(desired.services, desired.keys)
    if output == "json":
        from ..core.render import origin_json

        origins = {k: origin_json(d.source) for k, d in desired.keys.items() if d.source}
        origins.update((i.key, origin_json(i.source)) for i in desired.live if i.source)
        ctx.out(json.dumps({"valid": True, "files": list(desired.files), "keys": len(desired.keys),
                            "liveInstances": len(desired.live), "applyset": desired.applyset,
                            "origins": origins, "removed": {k: str(s) for k, s in desired.removed.items()},
                            "warnings": [w.as_json() for w in warnings]}))
    else:
        for w in warnings:
            click.echo(f"warning: {escape(str(w))}", err=True)
        ctx.out(f"valid: {plural(len(desired.files), 'file')}, {plural(len(desired.keys), 'key')}, "
                f"{plural(len(desired.live), 'live instance')}" + (f", {plural(len(warnings), 'warning')}" if warnings else ""))
    if strict and warnings:
        raise UsageError(f"{plural(len(warnings), 'lint warning')} (--strict)")


@dataclass
class _Shown:
    """The first plan, printed as it is made (text) or kept for the JSON document; the progress bar."""

    ctx: Ctx
    plan: Plan | None = None
    bar: Any = field(default=None, repr=False)

    def on_plan(self, p: Plan, attempt: int) -> None:
        if attempt:
            return
        self.plan = p
        if self.ctx.output == "text":
            from ..core import render

            self.ctx.out(render.render_plan(p, style=self.ctx.style, verbose=self.ctx.verbose,
                                            limit=None if self.ctx.verbose else DIFF_LIMIT))

    def progress(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)


@contextmanager
def _progress_bar(shown: _Shown) -> Iterator[Any]:
    """An `on_plan` that also opens a progress bar for a large first plan on a terminal; the bar is
    closed when the block ends."""
    with contextlib.ExitStack() as stack:
        def on_plan(p: Plan, attempt: int) -> None:
            shown.on_plan(p, attempt)
            if (attempt == 0 and shown.ctx.output == "text" and sys.stderr.isatty() and len(p.writes) >= PROGRESS_FROM
                    and not p.refused and not p.conflicts):
                shown.bar = stack.enter_context(click.progressbar(length=len(p.writes), label="applying",
                                                                  file=sys.stderr))

        yield on_plan


def _plan_command(manifests: ManifestFlags, flags: PlanFlags, etcd: ConnectionFlags, ctx: Ctx, *, execute: bool) -> int:
    from ..apply import Outcome, apply
    from ..core import render
    from ..diff import diff as plan_only
    from ..diff import refuse
    from ..etcd.store import Store

    conn = etcd.connection()
    reserved = flags.reserved_prefix
    manifests.check()
    desired = manifests.load(reserved)
    applyset, origin = resolve_applyset(flags.applyset, desired)
    if origin == "default" and ctx.output == "text":
        ctx.note("applyset: 'default' (no --applyset and no ApplySet document; two trees applied under one "
                 "name prune each other's keys)")
    options = flags.options()
    shown = _Shown(ctx)

    async def go() -> Outcome:
        async with Store(conn) as store:
            if not execute:
                p, _ = await plan_only(store, desired, applyset=applyset, reserved=reserved, options=options)
                shown.on_plan(p, 0)
                refuse(p, applyset)       # the same refusals as apply's, also for diff
                return Outcome(p)
            with _progress_bar(shown) as on_plan:
                return await apply(store, desired, applyset=applyset, reserved=reserved, options=options,
                                   on_plan=on_plan, progress=shown.progress)

    try:
        outcome = run(go())
        _note_partial(ctx, outcome.plan, options)
    except EtcdsyncError as exc:
        if ctx.output == "json" and shown.plan is not None:
            doc = render.plan_json(shown.plan, applyset_origin=origin, removed=desired.removed)
            doc["error"] = str(exc)
            ctx.out(json.dumps(doc, indent=2))
        raise
    if not execute:
        if ctx.output == "json":
            ctx.out(json.dumps(render.plan_json(outcome.plan, applyset_origin=origin, removed=desired.removed),
                               indent=2))
        return EXIT_DIFF if outcome.plan.has_changes else EXIT_OK
    _report_apply(ctx, outcome, origin, desired.removed)
    return EXIT_OK


def _note_partial(ctx: Ctx, p: Plan, options: Options) -> None:
    """On stderr (text output): what -l and --prune=false left out of the plan."""
    if ctx.output != "text" or (options.selector is None and options.prune):
        return
    why = [] if options.selector is None else [f"-l {options.selector}"]
    if not options.prune:
        why.append("--prune=false")
    ctx.note(f"note: {' and '.join(why)}: {plural(p.kept, 'owned key')} of other documents or no longer declared "
             "left out of the plan (neither written nor pruned)")


def _report_apply(ctx: Ctx, outcome: Outcome, origin: str, removed: Mapping[str, Source]) -> None:
    """``removed``: the keys an overlay removed (DesiredState.removed), named in their deletes' origin."""
    from ..core import render

    p = outcome.plan
    unchanged = sum(1 for c in p.changes if c.key not in outcome.done and not c.writes)
    if ctx.output == "json":
        doc = render.plan_json(p, applyset_origin=origin, removed=removed)
        doc["applied"] = {
            "revision": outcome.revision,
            "transactions": outcome.transactions,
            "retriedKeys": outcome.retried,
            "results": [render.change_json(c, result=c.action.value, removed_by=removed.get(c.key))
                        for c in outcome.done.values()],
        }
        ctx.out(json.dumps(doc, indent=2))
        return
    if outcome.retried:
        ctx.note(f"note: {plural(len(outcome.retried), 'key')} changed during apply (another writer): "
                 f"{render.escape(', '.join(outcome.retried[:5]))}; re-read and re-planned")
    if not p.has_changes:
        ctx.out("in sync: nothing to apply")
    else:
        ctx.out(f"applied: {render.result_summary(outcome.done, unchanged)} "
                f"in {plural(outcome.transactions, 'transaction')} (revision {outcome.revision})")
    if p.live:
        ctx.out(f"{plural(len(p.live), 'live instance')} (ttl/check) {'is' if len(p.live) == 1 else 'are'} "
                "left to `etcdsync run`")


def _plan_ctx(output: str, verbose: bool, display: OutputFlags) -> Ctx:
    return Ctx(no_color=display.no_color, output=output, debug=display.debug, verbose=verbose)


def plan_output_options(f: Any) -> Any:
    f = click.option("-v", "--verbose", is_flag=True, help="Also list unchanged keys.")(f)
    return format_option(f)


@click.command()
@manifest_options
@plan_options
@plan_output_options
@connection_options
@output_options
def diff(manifests: ManifestFlags, plan: PlanFlags, output: str, verbose: bool, etcd: ConnectionFlags,
         display: OutputFlags) -> None:
    """Show what apply would change (exit 1 when it would change anything)."""
    sys.exit(_plan_command(manifests, plan, etcd, _plan_ctx(output, verbose, display), execute=False))


@click.command(name="apply")
@manifest_options
@plan_options
@plan_output_options
@connection_options
@output_options
def apply_cmd(manifests: ManifestFlags, plan: PlanFlags, output: str, verbose: bool, etcd: ConnectionFlags,
              display: OutputFlags) -> None:
    """Make etcd match the manifests: guarded transactions, prune last."""
    sys.exit(_plan_command(manifests, plan, etcd, _plan_ctx(output, verbose, display), execute=True))


@click.command()
@click.option("--prefix", required=True, help="etcd key prefix to export, e.g. /config/payments/.")
@click.option("--name", help="metadata.name of the ConfigSet (default: derived from the prefix).")
@click.option("--policy", type=click.Choice(["enforce", "warn", "create-only"]), default=None)
@reserved_option("Where etcdsync keeps its inventory (never exported).")
@connection_options
@output_options
def export(prefix: str, name: str | None, policy: str | None, reserved_prefix: str, etcd: ConnectionFlags,
           display: OutputFlags) -> None:
    """Write the keys under a prefix as a ConfigSet manifest (to adopt a running system)."""
    if not prefix.startswith("/") or not prefix.endswith("/"):
        raise UsageError(f"--prefix {prefix!r}: must start and end with '/' (a ConfigSet prefix)")
    from ..core.export import export_prefix
    from ..core.inventory import parse_ownership
    from ..core.render import escape
    from ..etcd.store import Store

    conn = etcd.connection()

    async def go() -> tuple[str, list[str]]:
        async with Store(conn) as store:
            owned, rev = await store.get_prefix(reserved_prefix)
            kvs, _ = await store.get_prefix(prefix, revision=rev)
        # keys any apply set records as secret are exported as placeholders, never with their value
        ownership = parse_ownership(((kv.key, kv.value, kv.mod_revision) for kv in owned), reserved_prefix)
        secret = {key: name for name, inv in sorted(ownership.sets.items(), reverse=True)
                  for key, entry in inv.owned.items() if entry.secret}
        return export_prefix(prefix, [(kv.key, kv.value, kv.lease) for kv in kvs if not kv.key.startswith(reserved_prefix)],
                             name=name, policy=policy, secret=secret)

    text, warnings = run(go())
    for w in warnings:
        click.echo(f"warning: {escape(w)}", err=True)
    click.echo(text, nl=False)
