"""`validate`, `diff`, `apply` and `export`: manifests against etcd.

The commands parse their flags, load the manifests, call the library (`etcdsync.apply`) and print
what it returns; the only thing they add is a progress bar on a terminal for large applies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import stat
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from ..core.history import DEFAULT_LIMIT
from ..core.inventory import resolve_applyset
from ..errors import EtcdsyncError, GuardError, UsageError
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
from .output import DIFF_LIMIT, EXIT_DIFF, EXIT_OK, Ctx, emit_json, plural, run
from .recording import history_limit_option, load_with_source, record_apply, record_failed

if TYPE_CHECKING:
    from ..apply import Outcome
    from ..core.model import Source
    from ..core.plan import Plan
    from ..core.planfile import SavedPlan
    from ..execute import Layout
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
        emit_json({"valid": True, "files": list(desired.files), "keys": len(desired.keys),
                   "liveInstances": len(desired.live), "applyset": desired.applyset,
                   "origins": origins, "removed": {k: str(s) for k, s in desired.removed.items()},
                   "warnings": [w.as_json() for w in warnings]})
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
    commit: tuple[int, int] | None = None     # (transactions, max operations) of the first plan to commit

    def on_plan(self, p: Plan, attempt: int) -> None:
        if attempt:
            return
        self.plan = p
        if self.ctx.output == "text":
            from ..core import render

            # a refusal is reported once, as the error on stderr, not also as a line of the diff
            self.ctx.out(render.render_plan(dataclasses.replace(p, refused=None), style=self.ctx.style,
                                            verbose=self.ctx.verbose, limit=None if self.ctx.verbose else DIFF_LIMIT))

    def on_layout(self, layout: Layout, attempt: int) -> None:
        if attempt:
            return
        self.commit = (layout.transactions, layout.max_ops)
        if self.ctx.output == "text":
            from ..core import render

            self.ctx.out(render.commit_line(*self.commit))

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


@dataclass(frozen=True)
class _PlanFile:
    """diff's --out / apply's --plan, and --atomic."""

    out: str | None = None
    plan: str | None = None
    atomic: bool = False


def _plan_command(manifests: ManifestFlags, flags: PlanFlags, etcd: ConnectionFlags, ctx: Ctx, *, execute: bool,
                  files: _PlanFile = _PlanFile(), history_limit: int = DEFAULT_LIMIT) -> int:
    from ..apply import Outcome, apply, apply_saved
    from ..core import planfile, render
    from ..diff import diff as plan_only
    from ..diff import refuse
    from ..etcd.store import Store
    from ..execute import Executor, Layout, Limits
    from ..history import cli_identity
    from .interrupt import Interrupts

    conn = etcd.connection()
    reserved = flags.reserved_prefix
    saved = _read_plan(files.plan, flags) if files.plan else None
    manifests.check()
    desired, provenance = load_with_source(manifests, reserved)   # provenance: for the history entry
    if saved is not None:
        applyset, origin = _saved_applyset(saved, flags, desired, files.plan or "")
    else:
        applyset, origin = resolve_applyset(flags.applyset, desired)
    if origin == "default" and ctx.output == "text":
        ctx.note("applyset: 'default' (no --applyset and no ApplySet document; two trees applied under one "
                 "name prune each other's keys)")
    options = flags.options()
    shown = _Shown(ctx)
    # a text diff or apply shows the keys that change and counts the rest: the plan need not hold a
    # Change per key in sync (100,000 of them in a large tree); -v, -o json and a saved plan list them
    keep_unchanged = ctx.output != "text" or ctx.verbose or files.out is not None

    async def go() -> Outcome:
        if not execute:
            return await plan()
        with Interrupts() as stop:     # SIGINT/SIGTERM: stop after the transactions in flight
            return await write(stop)

    async def write(stop: Interrupts) -> Outcome:
        async with Store(conn) as store:
            if saved is not None:
                try:
                    outcome = await apply_saved(store, saved, desired, options=options, atomic=files.atomic,
                                                on_plan=shown.on_plan, on_layout=shown.on_layout,
                                                progress=shown.progress, who=cli_identity(), interrupted=stop)
                except EtcdsyncError as exc:
                    await record_failed(store, reserved, exc, applyset=applyset, source=provenance,
                                        limit=history_limit)
                    raise
                await record_apply(store, reserved, outcome, applyset=applyset, source=provenance,
                                   limit=history_limit)
                return outcome
            try:
                with _progress_bar(shown) as on_plan:
                    outcome = await apply(store, desired, applyset=applyset, reserved=reserved, options=options,
                                          on_plan=on_plan, progress=shown.progress, atomic=files.atomic,
                                          on_layout=shown.on_layout, keep_unchanged=keep_unchanged,
                                          interrupted=stop)
            except EtcdsyncError as exc:
                await record_failed(store, reserved, exc, applyset=applyset, source=provenance, limit=history_limit)
                raise
            await record_apply(store, reserved, outcome, applyset=applyset, source=provenance, limit=history_limit)
            return outcome

    async def plan() -> Outcome:
        async with Store(conn) as store:
            p, snap = await plan_only(store, desired, applyset=applyset, reserved=reserved, options=options,
                                      keep_unchanged=keep_unchanged)
            shown.on_plan(p, 0)
            refuse(p, applyset)       # the same refusals as apply's, also for diff
            layout = Layout(0, Limits().max_ops)
            if p.has_changes:     # the executor's own split, so the count is the one apply commits
                layout = Executor(store, snap, p, reserved=reserved, limits=Limits()).layout()
                shown.on_layout(layout, 0)
            if files.atomic:
                from ..apply import refuse_split

                refuse_split(layout)
            if files.out:
                _write_plan(files.out, planfile.encode(
                    p, reserved=reserved, cluster_id=await store.cluster_id(), revision=snap.revision,
                    digest=planfile.manifest_digest(desired), salt=secrets.token_hex(16),
                    owned=snap.ownership.inventory(applyset).owned,
                    transactions=layout.transactions, max_ops=layout.max_ops))
            return Outcome(p)

    try:
        outcome = run(go())
        _note_partial(ctx, outcome.plan, options)
    except EtcdsyncError as exc:
        if ctx.output == "json" and shown.plan is not None:
            doc = render.plan_json(shown.plan, applyset_origin=origin, removed=desired.removed, commit=shown.commit)
        elif ctx.output == "json" and saved is not None:
            doc = {"applyset": saved.applyset}
        else:
            raise
        stale = getattr(exc, "stale", None)
        if stale is not None:
            doc["stale"] = [s.as_json() for s in stale]
        emit_json(doc)          # printed with the error and its exit code
        raise
    if not execute:
        if ctx.output == "json":
            emit_json(render.plan_json(outcome.plan, applyset_origin=origin, removed=desired.removed,
                                       commit=shown.commit))
        elif files.out:
            ctx.note(f"plan saved to {render.escape(files.out)}: apply it with `etcdsync apply --plan {render.escape(files.out)}`")
        return EXIT_DIFF if outcome.plan.has_changes else EXIT_OK
    # the digest is computed only here and for --out: hashing every key costs each diff and apply otherwise
    manifests_changed = saved is not None and saved.digest != planfile.manifest_digest(desired)
    if manifests_changed and ctx.output == "text":
        ctx.note(f"note: the manifests changed since {render.escape(files.plan or '')} was made; applying the saved "
                 "plan only (a new diff shows what else differs)")
    _report_apply(ctx, outcome, origin, desired.removed, commit=shown.commit,
                  saved=None if saved is None else {"file": files.plan, "revision": saved.revision,
                                                    "manifestsChanged": manifests_changed})
    return EXIT_OK


def _read_plan(path: str, flags: PlanFlags) -> SavedPlan:
    """The plan file `apply --plan` names, decoded and checked against the flags given with it."""
    from ..core import planfile
    from ..manifest.yamlnodes import shown

    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; only a regular file is read, at most
        # MAX_BYTES of it (a device such as /dev/zero never ends)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UsageError(f"--plan {shown(path)}: not a regular file")
            if st.st_size > planfile.MAX_BYTES:
                raise UsageError(f"--plan {shown(path)}: too large ({st.st_size} bytes; a plan file is at most "
                                 f"{planfile.MAX_BYTES >> 20} MiB)")
            data = fh.read(planfile.MAX_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"--plan {shown(path)}: {exc.strerror}") from None
    if len(data) > planfile.MAX_BYTES:   # it grew while being read
        raise UsageError(f"--plan {shown(path)}: too large (a plan file is at most {planfile.MAX_BYTES >> 20} MiB)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{shown(path)}: not a plan file: not UTF-8 text") from None
    saved = planfile.decode(text, shown(path))
    if saved.reserved != flags.reserved_prefix:
        raise GuardError(f"{shown(path)}: the plan was made for reserved prefix {shown(saved.reserved)!r}, not "
                         f"{shown(flags.reserved_prefix)!r}; refusing (nothing written)")
    return saved


def _saved_applyset(saved: SavedPlan, flags: PlanFlags, desired: Any, path: str) -> tuple[str, str]:
    """The saved plan's apply set; --applyset or the ApplySet document, when given, must name it."""
    from ..manifest.yamlnodes import shown

    for given, what in ((flags.applyset, "--applyset"), (desired.applyset, "the ApplySet document")):
        if given and given != saved.applyset:
            raise GuardError(f"{shown(path)}: the plan was made for apply set {saved.applyset!r}, {what} names "
                             f"{given!r}; refusing (nothing written)")
    return saved.applyset, "plan"


def _write_plan(path: str, text: str) -> None:
    """Write the plan file whole or not at all (a temporary file renamed over it)."""
    from ..manifest.yamlnodes import shown

    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise UsageError(f"--out {shown(path)}: {exc.strerror}") from None


def _note_partial(ctx: Ctx, p: Plan, options: Options) -> None:
    """On stderr (text output): what -l and --prune=false left out of the plan."""
    if ctx.output != "text" or (options.selector is None and options.prune):
        return
    why = [] if options.selector is None else [f"-l {options.selector}"]
    if not options.prune:
        why.append("--prune=false")
    ctx.note(f"note: {' and '.join(why)}: {plural(p.kept, 'owned key')} of other documents or no longer declared "
             "left out of the plan (neither written nor pruned)")


def _report_apply(ctx: Ctx, outcome: Outcome, origin: str, removed: Mapping[str, Source], *,
                  commit: tuple[int, int] | None = None, saved: dict[str, Any] | None = None) -> None:
    """``removed``: the keys an overlay removed (DesiredState.removed), named in their deletes' origin."""
    from ..core import render

    p = outcome.plan
    unchanged = render.unchanged_keys(p, outcome.done)
    limits = outcome.limits
    if ctx.output == "json":
        doc = render.plan_json(p, applyset_origin=origin, removed=removed, commit=commit)
        if saved is not None:
            doc["savedPlan"] = saved
        doc["applied"] = {
            "revision": outcome.revision,
            "transactions": outcome.transactions,
            "retriedKeys": outcome.retried,
            **render.results_json(outcome.done, unchanged, removed=removed),
        }
        if limits is not None:
            doc["applied"]["limits"] = {"maxOperations": limits.max_ops, "maxBytes": limits.max_bytes,
                                        "lowered": outcome.shrunk}
        emit_json(doc)
        return
    if outcome.retried:
        ctx.note(f"note: {plural(len(outcome.retried), 'key')} changed during apply (another writer): "
                 f"{render.escape(', '.join(outcome.retried[:5]))}; re-read and re-planned")
    if outcome.shrunk and limits is not None:
        ctx.note(f"note: etcd refused a transaction as too large; continued with batches of at most "
                 f"{limits.max_ops} operations and {limits.max_bytes} bytes (the server's --max-txn-ops or "
                 "--max-request-bytes is below etcd's defaults)")
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
@click.option("--out", "out", metavar="PLAN", type=click.Path(dir_okay=False),
              help="Save the plan to this file, for `etcdsync apply --plan PLAN`.")
@click.option("--atomic", is_flag=True, help="Exit 3 when the plan does not fit one transaction.")
def diff(manifests: ManifestFlags, plan: PlanFlags, output: str, verbose: bool, etcd: ConnectionFlags,
         display: OutputFlags, out: str | None, atomic: bool) -> None:
    """Show what apply would change (exit 1 when it would change anything)."""
    sys.exit(_plan_command(manifests, plan, etcd, _plan_ctx(output, verbose, display), execute=False,
                           files=_PlanFile(out=out, atomic=atomic)))


@click.command(name="apply")
@manifest_options
@plan_options
@plan_output_options
@history_limit_option
@connection_options
@output_options
@click.option("--plan", "plan_file", metavar="PLAN", type=click.Path(dir_okay=False),
              help="Apply exactly this saved plan (from `etcdsync diff --out`), or refuse.")
@click.option("--atomic", is_flag=True, help="Refuse (exit 3, nothing written) a plan that does not fit one transaction.")
def apply_cmd(manifests: ManifestFlags, plan: PlanFlags, output: str, verbose: bool, history_limit: int,
              etcd: ConnectionFlags, display: OutputFlags, plan_file: str | None, atomic: bool) -> None:
    """Make etcd match the manifests: guarded transactions, prune last."""
    sys.exit(_plan_command(manifests, plan, etcd, _plan_ctx(output, verbose, display), execute=True,
                           files=_PlanFile(plan=plan_file, atomic=atomic), history_limit=history_limit))


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
