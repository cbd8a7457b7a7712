"""`etcdsync config view|get-contexts|current-context|use-context`: the config file of named contexts
(see `etcdsync.contexts`). Nothing here talks to etcd; no password is ever read or printed (a context
names a password file; `view` shows the path, never the content)."""

from __future__ import annotations

from typing import Any

import click

from ..errors import UsageError
from ..settings import Context
from .options import format_option
from .output import emit_json


def _config(environ: Any = None) -> Any:
    from ..contexts import default_path, find

    config = find(environ)
    if config is None:
        raise UsageError(f"no config file ({default_path(environ)[0]}; set ETCDSYNC_CONFIG to use another)")
    return config


def _plain(ctx: Context) -> dict[str, Any]:
    """What a context says, in the file's field names; a password is never there to show."""
    out: dict[str, Any] = {}
    for field, value in (("endpoints", list(ctx.endpoints) or None), ("user", ctx.user),
                         ("password-file", ctx.password_file), ("cacert", ctx.ca_cert), ("cert", ctx.cert),
                         ("key", ctx.key), ("reserved-prefix", ctx.reserved_prefix), ("timeout", ctx.timeout)):
        if value is not None:
            out[field] = value
    return out


@click.group(no_args_is_help=False)   # no command: a one-line usage error, not the help as one
def config() -> None:
    """The config file of named contexts (ETCDSYNC_CONFIG, else ~/.config/etcdsync/config.yaml)."""


@config.command()
@format_option
def view(output: str) -> None:
    """Print the config file's contexts (paths resolved; passwords are never in it, nor shown)."""
    from ..core.render import escape

    cfg = _config()
    if output == "json":
        emit_json({"file": cfg.path, "current-context": cfg.current,
                   "contexts": {name: _plain(c) for name, c in cfg.contexts.items()}})
        return
    lines = [f"# {escape(cfg.path)}", f"current-context: {escape(cfg.current or '(none)')}", "contexts:"]
    for name, ctx in cfg.contexts.items():
        lines.append(f"  {escape(name)}:{'   # current' if name == cfg.current else ''}")
        for field, value in _plain(ctx).items():
            text = ", ".join(value) if isinstance(value, list) else f"{value:g}s" if field == "timeout" else value
            lines.append(f"    {field}: {escape(str(text))}")
        if ctx.password_file:
            lines.append("    password: (read from password-file, not shown)")
    click.echo("\n".join(lines))


@config.command("get-contexts")
@format_option
def get_contexts(output: str) -> None:
    """List the contexts, the current one marked '*'."""
    from ..core.render import escape

    cfg = _config()
    if output == "json":
        emit_json([{"name": n, "current": n == cfg.current, "endpoints": list(c.endpoints), "user": c.user}
                   for n, c in cfg.contexts.items()])
        return
    rows = [("CURRENT", "NAME", "ENDPOINTS", "USER")]
    rows += [("*" if n == cfg.current else "", escape(n), escape(",".join(c.endpoints) or "-"), escape(c.user or "-"))
             for n, c in cfg.contexts.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        click.echo("  ".join([*(col.ljust(w) for col, w in zip(r, widths, strict=False)), r[3]]).rstrip())


@config.command("current-context")
def current_context() -> None:
    """Print the name of the current context (exit 2 when none is set)."""
    cfg = _config()
    if cfg.current is None:
        raise UsageError(f"{cfg.path}: no current-context set")
    click.echo(cfg.current)


@config.command("use-context")
@click.argument("name")
def use_context(name: str) -> None:
    """Make NAME the current context (rewrites the current-context line of the file, atomically)."""
    from ..contexts import set_current

    cfg = _config()
    from ..core.render import escape

    set_current(cfg, name)
    click.echo(f"current-context: {escape(name)}")
