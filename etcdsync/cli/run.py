"""`run` (the daemon) and `dev` (a throwaway local etcd with the manifests applied, then the daemon)."""

from __future__ import annotations

import gc
import logging
import sys
from typing import TYPE_CHECKING, Any

import click

from ..core.inventory import resolve_applyset
from ..errors import UsageError
from ..settings import RESERVED_PREFIX
from .options import (
    ConnectionFlags,
    ManifestFlags,
    OutputFlags,
    PlanFlags,
    connection_options,
    daemon_plan_options,
    default_paths,
    manifest_options,
    output_options,
    parse_duration,
)
from .output import Ctx, run
from .recording import history_limit_option

if TYPE_CHECKING:
    from ..sources import Source


def setup_logging(fmt: str, debug: bool) -> None:
    from ..daemon.logfmt import configure

    configure(fmt, logging.DEBUG if debug else logging.INFO)


def _source(manifests: ManifestFlags, reserved: str, *, debounce: float = 0.2, interval: float = 60.0) -> Source:
    git = manifests.git_source()
    if git is not None:
        from ..sources.gitrepo import GitRepoSource

        return GitRepoSource(git, reserved=reserved, file_roots=manifests.file_roots, env_allow=manifests.env_allow,
                             interval=interval)
    from ..sources.files import FileSource

    return FileSource(default_paths(manifests.paths), reserved=reserved, file_roots=manifests.file_roots,
                      env_allow=manifests.env_allow, debounce=debounce)


def _read_secret(path: str | None) -> bytes | None:
    if path is None:
        return None
    from ..settings import read_password_file

    secret = read_password_file(path, "--webhook-secret-file").encode()
    if not secret:
        raise UsageError(f"--webhook-secret-file {path}: empty")
    return secret


@click.command(name="run")
@manifest_options
@daemon_plan_options
@click.option("--resync", default="5m", show_default=True, help="Full reconcile interval.")
@click.option("--debounce", default="200ms", show_default=True, help="Quiet time after a manifest change.")
@click.option("--metrics-addr", metavar="HOST:PORT", help="Serve /healthz, /readyz and /metrics here.")
@click.option("--leader-elect", is_flag=True, help="Several daemons on one apply set; only the elected one writes.")
@click.option("--election-ttl", default="5s", show_default=True, help="Lease TTL of the election key.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--flap-threshold", default=5, show_default=True, type=click.IntRange(2, 1000),
              help="A key repaired this many times within --flap-window is flapping: left alone for --flap-cooldown.")
@click.option("--flap-window", default="60s", show_default=True, help="See --flap-threshold.")
@click.option("--flap-cooldown", default="5m", show_default=True, help="See --flap-threshold.")
@click.option("--interval", default="1m", show_default=True, help="With --git: how often the ref is polled.")
@click.option("--webhook-secret-file", metavar="FILE",
              help="With --git and --metrics-addr: serve POST /hooks/git (GitHub/GitLab push webhooks, "
                   "checked with the secret in FILE) to fetch at once.")
@history_limit_option
@connection_options
@output_options
def run_cmd(manifests: ManifestFlags, plan: PlanFlags, resync: str, debounce: str, metrics_addr: str | None,
            leader_elect: bool, election_ttl: str, log_format: str, flap_threshold: int, flap_window: str,
            flap_cooldown: str, interval: str, webhook_secret_file: str | None, history_limit: int,
            etcd: ConnectionFlags, display: OutputFlags) -> None:
    """Keep etcd equal to the manifests: watch files and etcd, repair drift, hold live registrations."""
    from ..daemon.daemon import Daemon
    from ..settings import DaemonSettings

    setup_logging(log_format, display.debug)
    conn = etcd.connection()
    manifests.check()
    if manifests.git is None:
        default_paths(manifests.paths)   # no -f and no ./manifests: the one-shot commands' error, before the flags'
        if webhook_secret_file is not None:
            raise UsageError("--webhook-secret-file needs --git URL")
    elif webhook_secret_file is not None and not metrics_addr:
        raise UsageError("--webhook-secret-file needs --metrics-addr (the webhook is served there)")
    resync_seconds = parse_duration(resync, "--resync")
    debounce_seconds = parse_duration(debounce, "--debounce")
    interval_seconds = parse_duration(interval, "--interval")
    settings = DaemonSettings(
        applyset_flag=plan.applyset, reserved=plan.reserved_prefix, options=plan.options(), resync=resync_seconds,
        metrics_addr=metrics_addr, leader_elect=leader_elect, election_ttl=parse_duration(election_ttl, "--election-ttl"),
        webhook_secret=_read_secret(webhook_secret_file), flap_threshold=flap_threshold,
        flap_window=parse_duration(flap_window, "--flap-window"), flap_cooldown=parse_duration(flap_cooldown, "--flap-cooldown"),
        history_limit=history_limit,
    )
    source = _source(manifests, plan.reserved_prefix, debounce=debounce_seconds, interval=interval_seconds)
    daemon = Daemon(conn, settings, source)
    gc.enable()
    sys.exit(run(daemon.run()))


@click.command()
@manifest_options
@click.option("--data-dir", type=click.Path(file_okay=False), help="Keep etcd's data here (default: a temporary directory, removed on exit).")
@click.option("--port", type=click.IntRange(1, 65535), help="etcd client port (default: 2379 when free).")
@click.option("--metrics-addr", default=None, help="The daemon's /healthz, /readyz, /metrics [default: 127.0.0.1:9090 when free].")
@click.option("--once", is_flag=True, help="Apply, print, stop etcd and exit (no daemon).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@output_options
def dev(manifests: ManifestFlags, data_dir: str | None, port: int | None, metrics_addr: str | None, once: bool,
        log_format: str, display: OutputFlags) -> None:
    """A throwaway local etcd, ./manifests (or -f) applied, and the daemon in the foreground. Ctrl-C cleans up."""
    from ..apply import apply
    from ..core import render
    from ..daemon.daemon import Daemon
    from ..etcd.store import Store
    from ..local.dev import banner, default_metrics_addr, start_etcd
    from ..local.etcdbin import find_binary
    from ..settings import Connection, DaemonSettings

    ctx = Ctx(no_color=display.no_color, output="text", debug=display.debug)
    manifests.check()
    if manifests.git is not None:
        raise UsageError("dev: --git is for apply, diff, validate and run; dev serves local files")
    desired = manifests.load(RESERVED_PREFIX)
    applyset, _ = resolve_applyset(None, desired)
    member, tmp = start_etcd(data_dir, port)
    try:
        conn = Connection([member.endpoint])

        async def go() -> Any:
            async with Store(conn) as store:
                return await apply(store, desired, applyset=applyset, reserved=RESERVED_PREFIX,
                                   on_plan=lambda p, a: ctx.out(render.render_plan(p, style=ctx.style)) if a == 0 else None)

        outcome = run(go())
        ctx.out(f"applied: {render.result_summary(outcome.done, 0)} (apply set {applyset!r})")
        ctx.out(banner(member.endpoint, lambda: find_binary("etcdctl")))
        if once:
            return
        metrics_addr = metrics_addr or default_metrics_addr()
        source = _source(manifests, RESERVED_PREFIX)
        ctx.out(f"daemon: watching {source.describe()}; metrics on http://{metrics_addr}/metrics; "
                "Ctrl-C stops the daemon and etcd")
        setup_logging(log_format, display.debug)
        gc.enable()
        settings = DaemonSettings(reserved=RESERVED_PREFIX, metrics_addr=metrics_addr)
        code = run(Daemon(conn, settings, source).run())
        if code:
            sys.exit(code)
    except KeyboardInterrupt:
        ctx.note("stopping")
    finally:
        member.stop()
        if tmp is not None:
            tmp.cleanup()
        ctx.note("etcd stopped" + ("" if data_dir else ", data removed"))
