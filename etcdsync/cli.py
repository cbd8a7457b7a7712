"""The `etcdsync` command: a thin click layer that parses flags, calls the library and maps errors to
exit codes (0 ok/in sync, 1 diff found differences, 2 usage/manifest/connection, 3 conflict/guard).

Heavy imports (grpc, jsonschema) happen inside the commands so that `etcdsync --help` is fast.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .errors import EtcdsyncError, UsageError
from .settings import RESERVED_PREFIX

if TYPE_CHECKING:
    from .model import DesiredState
    from .settings import Connection

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_DIFF, EXIT_ERROR, EXIT_REFUSED = 0, 1, 2, 3
DEFAULT_MANIFESTS = "manifests"
DIFF_LIMIT = 500  # keys shown in a text diff without -v


class Ctx:
    """Output settings for one invocation."""

    def __init__(self, *, no_color: bool, output: str, debug: bool, verbose: bool = False) -> None:
        self.output = output
        self.debug = debug
        self.verbose = verbose
        self.color = (not no_color and "NO_COLOR" not in os.environ and output == "text"
                      and sys.stdout.isatty())

    def style(self, text: str, **kw: Any) -> str:
        if not self.color:
            return text
        kw = {k: v for k, v in kw.items() if v is not None}
        return click.style(text, **kw)

    def out(self, text: str = "") -> None:
        click.echo(text, color=self.color)

    def note(self, text: str) -> None:
        click.echo(text, err=True)


def check_reserved_prefix(_ctx: Any, _param: Any, value: str) -> str:
    """--reserved-prefix: absolute, ending in '/', no '.'/'..' segment, no control character."""
    from .manifest.yamlnodes import shown

    problem = None
    if not value.startswith("/") or not value.endswith("/"):
        problem = "must start and end with '/' (e.g. /.etcdsync/)"
    elif value == "/":
        problem = "must not be '/' (every key would be etcdsync's)"
    elif any(ord(ch) < 32 or 0x7f <= ord(ch) <= 0x9f for ch in value):
        problem = "must not contain control characters"
    elif any(seg in (".", "..") for seg in value.split("/")):
        problem = "must not contain '.' or '..' segments"
    if problem:
        raise UsageError(f"--reserved-prefix '{shown(value)}': {problem}")
    return value


def reserved_option(help: str = "Where etcdsync keeps its inventory.") -> Callable[[F], F]:
    return click.option("--reserved-prefix", default=RESERVED_PREFIX, show_default=True, help=help,
                        callback=check_reserved_prefix)


def output_options(f: F) -> F:
    f = click.option("--debug", is_flag=True, envvar="ETCDSYNC_DEBUG", help="Show tracebacks and debug logs.")(f)
    f = click.option("--no-color", is_flag=True, help="No colors (also: NO_COLOR set, or not a terminal).")(f)
    return f


def connection_options(f: F) -> F:
    opts = [
        click.option("--endpoints", metavar="URLS", help="etcd endpoints, comma separated [ETCDSYNC_ENDPOINTS, "
                     "ETCDCTL_ENDPOINTS; default http://127.0.0.1:2379]."),
        click.option("--user", help="etcd user, or user:password like etcdctl [ETCDSYNC_USER, ETCDCTL_USER]."),
        click.option("--password", help="etcd password [ETCDSYNC_PASSWORD, ETCDCTL_PASSWORD]."),
        click.option("--password-file", type=click.Path(dir_okay=False),
                     help="Read the password from the first line of this file [ETCDSYNC_PASSWORD_FILE]."),
        click.option("--cacert", type=click.Path(dir_okay=False), help="CA certificate (PEM) for TLS [ETCDSYNC_CACERT, ETCDCTL_CACERT]."),
        click.option("--cert", type=click.Path(dir_okay=False), help="Client certificate (PEM) [ETCDSYNC_CERT, ETCDCTL_CERT]."),
        click.option("--key", type=click.Path(dir_okay=False), help="Client key (PEM) [ETCDSYNC_KEY, ETCDCTL_KEY]."),
        click.option("--timeout", type=float, help="Seconds a request may take, connecting included [ETCDSYNC_TIMEOUT; default 5]."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def manifest_options(f: F) -> F:
    f = click.option("--env-allow", "env_allow", multiple=True, metavar="GLOB", envvar="ETCDSYNC_ENV_ALLOW",
                     help="fromEnv may read only variables matching one of these globs (repeatable) "
                          "[ETCDSYNC_ENV_ALLOW, space separated]. ETCDSYNC_* and ETCDCTL_* are never read.")(f)
    f = click.option("--file-root", "file_roots", multiple=True, metavar="DIR", envvar="ETCDSYNC_FILE_ROOTS",
                     type=click.Path(file_okay=True, dir_okay=True),
                     help="fromFile may also read files under DIR (repeatable) [ETCDSYNC_FILE_ROOTS, "
                          "':' separated]. Default: only the manifest root of each -f path.")(f)
    f = click.option("-f", "--filename", "paths", multiple=True, metavar="PATH",
                     help="Manifest file or directory (repeatable; later paths override earlier ones document "
                          "by document). Default: ./manifests")(f)
    return f


def check_sources(file_roots: tuple[str, ...], env_allow: tuple[str, ...]) -> None:
    from .manifest.yamlnodes import shown

    for root in file_roots:
        if not root or not os.path.isdir(root):
            raise UsageError(f"--file-root '{shown(root)}': not a directory")
    for glob in env_allow:
        if not glob or any(ord(ch) < 32 for ch in glob):
            raise UsageError(f"--env-allow '{shown(glob)}': not a name or glob")


def plan_options(f: F) -> F:
    opts = [
        click.option("--applyset", metavar="NAME", help="Apply set name (default: the ApplySet document, else 'default')."),
        reserved_option(),
        click.option("--take-ownership", is_flag=True, help="Take keys owned by another apply set."),
        click.option("--allow-empty", is_flag=True, help="Allow a plan that leaves the apply set owning nothing."),
        click.option("--max-deletes", type=click.IntRange(min=0), default=100, show_default=True, help="Refuse plans deleting more keys."),
        click.option("--force", is_flag=True, help="Allow more deletes than --max-deletes."),
        click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True),
        click.option("-v", "--verbose", is_flag=True, help="Also list unchanged keys."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def make_connection(kw: dict[str, Any]) -> Connection:
    from .settings import Connection

    return Connection.from_env(
        endpoints=kw.pop("endpoints", None), user=kw.pop("user", None), password=kw.pop("password", None),
        password_file=kw.pop("password_file", None), ca_cert=kw.pop("cacert", None), cert=kw.pop("cert", None), key=kw.pop("key", None),
        timeout=kw.pop("timeout", None),
    )


def load(paths: tuple[str, ...], reserved: str, *, file_roots: tuple[str, ...] = (),
         env_allow: tuple[str, ...] = ()) -> DesiredState:
    from .manifest import load_manifests

    if not paths:
        if not os.path.isdir(DEFAULT_MANIFESTS):
            raise UsageError(f"no -f given and ./{DEFAULT_MANIFESTS} does not exist; pass -f PATH")
        paths = (DEFAULT_MANIFESTS,)
    return load_manifests(list(paths), reserved_prefix=reserved, file_roots=file_roots, env_allow=env_allow)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def resolve_applyset(flag: str | None, desired: DesiredState) -> tuple[str, str]:
    """(name, where it came from)."""
    from .inventory import check_applyset_name

    if flag:
        if desired.applyset and desired.applyset != flag:
            raise UsageError(f"--applyset {flag!r} differs from the ApplySet document {desired.applyset!r} "
                             f"at {desired.applyset_source}; use one of them")
        return check_applyset_name(flag), "flag"
    if desired.applyset:
        return check_applyset_name(desired.applyset), "document"
    return "default", "default"


def run(coro: Any) -> Any:
    """asyncio.run, without handing it the result: on Python 3.11 it builds the repr of the return
    value (twice) when it finishes, which took seconds for a 100,000-key plan."""
    box: list[Any] = []

    async def main() -> None:
        box.append(await coro)

    asyncio.run(main())
    return box[0]


def _show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from .cli_ops import version_text

        click.echo(version_text())
        ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_show_version,
              help="Show etcdsync's version and commit, and the etcd client library's, and exit.")
def cli() -> None:
    """Declarative config center and service registry for etcd.

    \b
    Exit codes: 0 success / in sync, 1 diff found differences,
    2 usage, manifest or connection error, 3 conflict or guard refused.
    """


@cli.command()
@manifest_options
@reserved_option()
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@output_options
def validate(paths: tuple[str, ...], file_roots: tuple[str, ...], env_allow: tuple[str, ...], reserved_prefix: str,
             output: str, no_color: bool, debug: bool) -> None:
    """Check manifests offline: syntax, schema, value rules, duplicate keys."""
    ctx = Ctx(no_color=no_color, output=output, debug=debug)
    check_sources(file_roots, env_allow)
    desired = load(paths, reserved_prefix, file_roots=file_roots, env_allow=env_allow)
    if output == "json":
        from .render import origin_json

        origins = {k: origin_json(d.source) for k, d in desired.keys.items() if d.source}
        origins.update((i.key, origin_json(i.source)) for i in desired.live if i.source)
        ctx.out(json.dumps({"valid": True, "files": list(desired.files), "keys": len(desired.keys),
                            "liveInstances": len(desired.live), "applyset": desired.applyset,
                            "origins": origins, "removed": {k: str(s) for k, s in desired.removed.items()}}))
    else:
        ctx.out(f"valid: {plural(len(desired.files), 'file')}, {plural(len(desired.keys), 'key')}, "
                f"{plural(len(desired.live), 'live instance')}")


def _plan_command(kw: dict[str, Any], *, execute: bool) -> int:
    from . import render
    from .apply import apply as do_apply
    from .plan import Options
    from .store import Store

    ctx = Ctx(no_color=kw.pop("no_color"), output=kw.pop("output"), debug=kw.pop("debug"), verbose=kw.pop("verbose"))
    conn = make_connection(kw)
    reserved = kw["reserved_prefix"]
    check_sources(kw["file_roots"], kw["env_allow"])
    desired = load(kw["paths"], reserved, file_roots=kw["file_roots"], env_allow=kw["env_allow"])
    applyset, origin = resolve_applyset(kw["applyset"], desired)
    if origin == "default" and ctx.output == "text":
        ctx.note("applyset: 'default' (no --applyset and no ApplySet document; two trees applied under one "
                 "name prune each other's keys)")
    options = Options(take_ownership=kw["take_ownership"], allow_empty=kw["allow_empty"],
                      max_deletes=kw["max_deletes"], force=kw["force"])
    shown: dict[str, Any] = {}

    def on_plan(p: Any, attempt: int) -> None:
        if attempt == 0:
            shown["plan"] = p
            if ctx.output == "text":
                ctx.out(render.render_plan(p, style=ctx.style, verbose=ctx.verbose,
                                           limit=None if ctx.verbose else DIFF_LIMIT))

    bar: Any = None

    def progress(n: int) -> None:
        if bar is not None:
            bar.update(n)

    async def go() -> Any:
        nonlocal bar
        async with Store(conn) as store:
            if not execute:
                return await do_apply(store, desired, applyset=applyset, reserved=reserved, options=options,
                                      dry_run=True, on_plan=on_plan)

            def on_plan_exec(p: Any, attempt: int) -> None:
                nonlocal bar
                on_plan(p, attempt)
                writes = len(p.writes)
                if attempt == 0 and ctx.output == "text" and sys.stderr.isatty() and writes >= 1000 and not p.refused \
                        and not p.conflicts:
                    bar = click.progressbar(length=writes, label="applying", file=sys.stderr)
                    bar.__enter__()

            try:
                return await do_apply(store, desired, applyset=applyset, reserved=reserved, options=options,
                                      on_plan=on_plan_exec, progress=progress)
            finally:
                if bar is not None:
                    bar.__exit__(None, None, None)

    try:
        outcome = run(go())
    except EtcdsyncError as exc:
        if ctx.output == "json" and "plan" in shown:
            doc = render.plan_json(shown["plan"], applyset_origin=origin, removed=desired.removed)
            doc["error"] = str(exc)
            ctx.out(json.dumps(doc, indent=2))
        raise
    p = outcome.plan
    if not execute:
        if ctx.output == "json":
            ctx.out(json.dumps(render.plan_json(p, applyset_origin=origin, removed=desired.removed), indent=2))
        return EXIT_DIFF if p.has_changes else EXIT_OK
    unchanged = sum(1 for c in p.changes if c.key not in outcome.done and not c.writes)
    if ctx.output == "json":
        doc = render.plan_json(p, applyset_origin=origin, removed=desired.removed)
        doc["applied"] = {
            "revision": outcome.revision,
            "transactions": outcome.transactions,
            "retriedKeys": outcome.retried,
            "results": [render.change_json(c, result=c.action.value, removed_by=desired.removed.get(c.key))
                        for c in outcome.done.values()],
        }
        ctx.out(json.dumps(doc, indent=2))
    else:
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
    return EXIT_OK


@cli.command()
@manifest_options
@plan_options
@connection_options
@output_options
def diff(**kw: Any) -> None:
    """Show what apply would change (exit 1 when it would change anything)."""
    sys.exit(_plan_command(kw, execute=False))


@cli.command(name="apply")
@manifest_options
@plan_options
@connection_options
@output_options
def apply_cmd(**kw: Any) -> None:
    """Make etcd match the manifests: guarded transactions, prune last."""
    sys.exit(_plan_command(kw, execute=True))


@cli.command()
@click.option("--prefix", required=True, help="etcd key prefix to export, e.g. /config/payments/.")
@click.option("--name", help="metadata.name of the ConfigSet (default: derived from the prefix).")
@click.option("--policy", type=click.Choice(["enforce", "warn", "create-only"]), default=None)
@reserved_option("Where etcdsync keeps its inventory (never exported).")
@connection_options
@output_options
def export(prefix: str, name: str | None, policy: str | None, reserved_prefix: str, no_color: bool, debug: bool,
           **kw: Any) -> None:
    """Write the keys under a prefix as a ConfigSet manifest (to adopt a running system)."""
    if not prefix.startswith("/") or not prefix.endswith("/"):
        raise UsageError(f"--prefix {prefix!r}: must start and end with '/' (a ConfigSet prefix)")
    from .export import export_prefix
    from .store import Store

    conn = make_connection(kw)

    async def go() -> tuple[str, list[str]]:
        from .inventory import parse_ownership

        async with Store(conn) as store:
            owned, rev = await store.get_prefix(reserved_prefix)
            kvs, _ = await store.get_prefix(prefix, revision=rev)
        # keys any apply set records as secret are exported as placeholders, never with their value
        ownership = parse_ownership(((kv.key, kv.value, kv.mod_revision) for kv in owned), reserved_prefix)
        secret = {key: name for name, inv in sorted(ownership.sets.items(), reverse=True)
                  for key, entry in inv.owned.items() if entry.secret}
        return export_prefix(prefix, [(kv.key, kv.value, kv.lease) for kv in kvs if not kv.key.startswith(reserved_prefix)],
                             name=name, policy=policy, secret=secret)

    from .render import escape

    text, warnings = run(go())
    for w in warnings:
        click.echo(f"warning: {escape(w)}", err=True)
    click.echo(text, nl=False)


def setup_logging(fmt: str, debug: bool) -> None:
    from .logfmt import configure

    configure(fmt, logging.DEBUG if debug else logging.INFO)


def parse_duration(text: str, what: str) -> float:
    from .manifest.loader import parse_duration as parse

    seconds = parse(text)
    if seconds is None:
        raise UsageError(f"{what}: {text!r} is not a duration (use e.g. 10s, 1m30s, 500ms)")
    return seconds


@cli.command(name="run")
@manifest_options
@click.option("--applyset", metavar="NAME", help="Apply set name (default: the ApplySet document, else 'default').")
@reserved_option()
@click.option("--take-ownership", is_flag=True)
@click.option("--allow-empty", is_flag=True)
@click.option("--max-deletes", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--force", is_flag=True)
@click.option("--resync", default="5m", show_default=True, help="Full reconcile interval.")
@click.option("--debounce", default="200ms", show_default=True, help="Quiet time after a manifest change.")
@click.option("--metrics-addr", metavar="HOST:PORT", help="Serve /healthz, /readyz and /metrics here.")
@click.option("--leader-elect", is_flag=True, help="Several daemons on one apply set; only the elected one writes.")
@click.option("--election-ttl", default="5s", show_default=True, help="Lease TTL of the election key.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@connection_options
@output_options
def run_cmd(paths: tuple[str, ...], file_roots: tuple[str, ...], env_allow: tuple[str, ...], applyset: str | None,
            reserved_prefix: str, take_ownership: bool,
            allow_empty: bool, max_deletes: int, force: bool, resync: str, debounce: str, metrics_addr: str | None,
            leader_elect: bool, election_ttl: str, log_format: str, no_color: bool, debug: bool, **kw: Any) -> None:
    """Keep etcd equal to the manifests: watch files and etcd, repair drift, hold live registrations."""
    from .daemon import Daemon, DaemonSettings
    from .plan import Options

    setup_logging(log_format, debug)
    conn = make_connection(kw)
    check_sources(file_roots, env_allow)
    if not paths:
        load((), reserved_prefix)  # the same error as the one-shot commands when ./manifests is missing
        paths = (DEFAULT_MANIFESTS,)
    settings = DaemonSettings(
        paths=paths, applyset_flag=applyset, reserved=reserved_prefix,
        options=Options(take_ownership=take_ownership, allow_empty=allow_empty, max_deletes=max_deletes, force=force),
        resync=parse_duration(resync, "--resync"), debounce=parse_duration(debounce, "--debounce"),
        metrics_addr=metrics_addr, leader_elect=leader_elect, election_ttl=parse_duration(election_ttl, "--election-ttl"),
    )
    daemon = Daemon(conn, settings,
                    lambda p: load(tuple(p), reserved_prefix, file_roots=file_roots, env_allow=env_allow))
    gc.enable()
    sys.exit(run(daemon.run()))


@cli.command()
@manifest_options
@click.option("--data-dir", type=click.Path(file_okay=False), help="Keep etcd's data here (default: a temporary directory, removed on exit).")
@click.option("--port", type=click.IntRange(1, 65535), help="etcd client port (default: 2379 when free).")
@click.option("--metrics-addr", default=None, help="The daemon's /healthz, /readyz, /metrics [default: 127.0.0.1:9090 when free].")
@click.option("--once", is_flag=True, help="Apply, print, stop etcd and exit (no daemon).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@output_options
def dev(paths: tuple[str, ...], file_roots: tuple[str, ...], env_allow: tuple[str, ...], data_dir: str | None, port: int | None, metrics_addr: str | None, once: bool,
        log_format: str, no_color: bool, debug: bool) -> None:
    """A throwaway local etcd, ./manifests (or -f) applied, and the daemon in the foreground. Ctrl-C cleans up."""
    from . import render
    from .apply import apply as do_apply
    from .daemon import Daemon, DaemonSettings
    from .dev import banner, default_metrics_addr, start_etcd
    from .etcdbin import find_binary
    from .settings import Connection
    from .store import Store

    ctx = Ctx(no_color=no_color, output="text", debug=debug)
    check_sources(file_roots, env_allow)
    desired = load(paths, RESERVED_PREFIX, file_roots=file_roots, env_allow=env_allow)
    applyset, _ = resolve_applyset(None, desired)
    member, tmp = start_etcd(data_dir, port)
    try:
        conn = Connection([member.endpoint])

        async def go() -> Any:
            async with Store(conn) as store:
                return await do_apply(store, desired, applyset=applyset, reserved=RESERVED_PREFIX,
                                      on_plan=lambda p, a: ctx.out(render.render_plan(p, style=ctx.style)) if a == 0 else None)

        outcome = run(go())
        ctx.out(f"applied: {render.result_summary(outcome.done, 0)} (apply set {applyset!r})")
        ctx.out(banner(member.endpoint, lambda: find_binary("etcdctl")))
        if once:
            return
        metrics_addr = metrics_addr or default_metrics_addr()
        ctx.out(f"daemon: watching {', '.join(paths or (DEFAULT_MANIFESTS,))}; metrics on http://{metrics_addr}/metrics; "
                "Ctrl-C stops the daemon and etcd")
        setup_logging(log_format, debug)
        gc.enable()
        settings = DaemonSettings(paths=paths or (DEFAULT_MANIFESTS,), reserved=RESERVED_PREFIX, metrics_addr=metrics_addr)
        code = run(Daemon(conn, settings, lambda p: load(tuple(p), RESERVED_PREFIX, file_roots=file_roots,
                                                         env_allow=env_allow)).run())
        if code:
            sys.exit(code)
    except KeyboardInterrupt:
        ctx.note("stopping")
    finally:
        member.stop()
        if tmp is not None:
            tmp.cleanup()
        ctx.note("etcd stopped" + ("" if data_dir else ", data removed"))


@cli.group()
def services() -> None:
    """Discovery from the shell: list or watch a service's instances."""


def _instances_text(name: str, items: list[Any]) -> str:
    from .render import escape

    if not items:
        return f"{escape(name)}: no instances"
    rows = [("ID", "HOST", "PORT", "METADATA")] + [
        (escape(i.id), escape(i.host), str(i.port),
         "" if i.metadata is None else escape(json.dumps(i.metadata, separators=(",", ":"), ensure_ascii=False)))
        for i in items
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip() for r in rows)


def _instances_json(name: str, items: list[Any]) -> str:
    return json.dumps({"service": name, "instances": [
        {"id": i.id, "host": i.host, "port": i.port, "metadata": i.metadata} for i in items]})


def service_options(f: F) -> F:
    f = click.option("--prefix", default=None, help="Registry prefix (default /services/, or services/ for grpc).")(f)
    f = click.option("--format", "fmt", type=click.Choice(["json", "grpc"]), default="json", show_default=True)(f)
    f = click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)(f)
    return f


@services.command(name="ls")
@click.argument("name")
@service_options
@connection_options
@output_options
def services_ls(name: str, prefix: str | None, fmt: str, output: str, no_color: bool, debug: bool, **kw: Any) -> None:
    """List the instances of service NAME."""
    from .aio import AsyncRegistry

    conn = make_connection(kw)

    async def go() -> list[Any]:
        reg = AsyncRegistry(conn, prefix=prefix or ("services/" if fmt == "grpc" else "/services/"), format=fmt)
        try:
            return await reg.discover(name)
        finally:
            await reg.close()

    items = run(go())
    click.echo(_instances_json(name, items) if output == "json" else _instances_text(name, items))


@services.command(name="watch")
@click.argument("name")
@service_options
@connection_options
@output_options
def services_watch(name: str, prefix: str | None, fmt: str, output: str, no_color: bool, debug: bool, **kw: Any) -> None:
    """Print the instances of service NAME now and on every change, until Ctrl-C."""
    import time

    from .aio import AsyncRegistry

    conn = make_connection(kw)

    def show(items: list[Any]) -> None:
        if output == "json":
            click.echo(_instances_json(name, items))
        else:
            click.echo(f"--- {time.strftime('%H:%M:%S')} {name}: {len(items)} instances")
            click.echo(_instances_text(name, items))
        sys.stdout.flush()

    async def go() -> None:
        reg = AsyncRegistry(conn, prefix=prefix or ("services/" if fmt == "grpc" else "/services/"), format=fmt)
        w = await reg.watch(name, show)
        try:
            await asyncio.Event().wait()
        finally:
            w.cancel()
            await reg.close()

    try:
        run(go())
    except KeyboardInterrupt:
        pass


@cli.command()
def schema() -> None:
    """Print the JSON Schema of manifest documents (for editor completion)."""
    from .manifest import MANIFEST_SCHEMA

    click.echo(json.dumps(MANIFEST_SCHEMA, indent=2))


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("ETCDSYNC_DEBUG", "") not in ("", "0", "false")


def main(argv: list[str] | None = None) -> None:
    """Entry point: one clear line on stderr per error, exit codes as documented."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(args)
    # gRPC's C core logs its own lines (TLS handshake failures, ...) to stderr; errors are ours to
    # report in one line. Must be set before grpc is imported.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR" if debug else "NONE")
    # A one-shot command builds one large, acyclic object graph (100,000 keys: ~1M objects) and
    # exits; the cyclic collector rescanning it doubled diff/apply times. The daemon turns it back on.
    gc.disable()
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("etcd3aio").setLevel(logging.ERROR)
    try:
        code = cli.main(args=args, prog_name="etcdsync", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = EXIT_ERROR
    except click.Abort:
        click.echo("aborted", err=True)
        code = 130
    except EtcdsyncError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        from .render import escape

        click.echo(f"error: {escape(str(exc))}", err=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        code = 130
    except Exception as exc:  # noqa: BLE001 - a bug: still one line unless --debug
        if debug:
            raise
        from .render import escape

        click.echo(f"error: internal error: {type(exc).__name__}: {escape(str(exc))} (run with --debug for a traceback)",
                   err=True)
        code = EXIT_ERROR
    sys.exit(code or 0)


# Operator commands (get, ls, put, del, inventory, applysets, teardown, services ls/register,
# completion) live in cli_ops.py and register themselves on `cli` and `services` when imported.
from . import cli_ops  # noqa: E402,F401

if __name__ == "__main__":
    main()
