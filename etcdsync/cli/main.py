"""The `etcdsync` command: a thin click layer that parses flags, calls the library and maps errors to
exit codes (0 ok/in sync, 1 diff found differences, 2 usage/manifest/connection, 3 conflict/guard).

This module holds the group, the entry point and the small commands (schema, completion, --version);
the others live in one module per group of commands, named in COMMANDS and imported only when that
command runs (or when `--help` or shell completion lists them): a run pays for its own command's
imports, not for every command's. Heavy imports (grpc, jsonschema) happen inside the commands.
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from ..errors import EtcdsyncError

EXIT_ERROR = EtcdsyncError.exit_code   # output.EXIT_ERROR; output imports asyncio, which --help does not need

# Every command outside this module: name -> "module:attribute" in etcdsync.cli. A new command is one
# line here (tests/test_cli_commands.py pins the list and checks that each entry imports and is a
# click command).
COMMANDS: dict[str, str] = {
    "validate": "apply:validate",
    "diff": "apply:diff",
    "apply": "apply:apply_cmd",
    "export": "apply:export",
    "run": "run:run_cmd",
    "dev": "run:dev",
    "services": "services:services",
    "config": "config:config",
    "get": "keys:get",
    "ls": "keys:ls_cmd",
    "put": "keys:put",
    "del": "keys:del_cmd",
    "inventory": "applysets:inventory",
    "applysets": "applysets:applysets",
    "teardown": "applysets:teardown",
    "history": "history:history_cmd",
    "explain": "history:explain",
    "rollback": "history:rollback",
    "suspend": "history:suspend",
    "resume": "history:resume",
}


def load_command(target: str) -> click.Command:
    """Import the command that a COMMANDS entry names."""
    module, _, attribute = target.partition(":")
    command = getattr(importlib.import_module(f"{__package__}.{module}"), attribute)
    if not isinstance(command, click.Command):
        raise TypeError(f"etcdsync.cli.{target} is not a click command")
    return command


class LazyGroup(click.Group):
    """A click group whose commands in `lazy` (name -> "module:attribute") are imported on first use."""

    def __init__(self, *args: Any, lazy: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        command = load_command(self.lazy[cmd_name])
        self.commands[cmd_name] = command          # once: later look-ups are plain
        return command


def _show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version_text())
        ctx.exit()


@click.group(cls=LazyGroup, lazy=COMMANDS, no_args_is_help=False,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_show_version,
              help="Show etcdsync's version and commit, and the etcd client library's, and exit.")
def cli() -> None:
    """Declarative config center and service registry for etcd.

    \b
    Exit codes: 0 success / in sync, 1 diff found differences,
    2 usage, manifest or connection error, 3 conflict or guard refused.
    """


@cli.command()
def schema() -> None:
    """Print the JSON Schema of manifest documents (for editor completion)."""
    from ..manifest import MANIFEST_SCHEMA

    click.echo(json.dumps(MANIFEST_SCHEMA, indent=2))


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


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("ETCDSYNC_DEBUG", "") not in ("", "0", "false")


def _one_line(exc: click.UsageError) -> str:
    """click's message on one line (its choice lists are one per line), and for an unknown command the
    commands it was probably meant to be, as click does for unknown options."""
    message = " ".join(part.strip() for part in exc.format_message().splitlines() if part.strip())
    unknown = re.fullmatch(r"No such command '(.+)'\.", message)   # click looks only at loaded commands
    if unknown is not None and exc.ctx is not None and isinstance(exc.ctx.command, click.Group):
        import difflib

        close = sorted(difflib.get_close_matches(unknown.group(1), exc.ctx.command.list_commands(exc.ctx)))
        if len(close) == 1:
            message += f" Did you mean {close[0]!r}?"
        elif close:
            message += f" (Did you mean one of: {', '.join(repr(c) for c in close)}?)"
    return message


def _command_path(args: list[str]) -> str:
    """`etcdsync` and the (sub)command words that lead `args`: for a usage error click raised without
    a context (an option missing its value), so that it points to the command's own --help."""
    words = ["etcdsync"]
    command: click.Command = cli
    for arg in args:
        sub = command.get_command(click.Context(command), arg) if isinstance(command, click.Group) else None
        if sub is None:
            break
        words.append(arg)
        command = sub
    return " ".join(words)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one clear line on stderr per error, exit codes as documented."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(args)
    # gRPC's C core logs its own lines (TLS handshake failures, ...) to stderr; errors are ours to
    # report in one line. Must be set before grpc is imported.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR" if debug else "NONE")
    # etcdsync forks only to exec (git, etcd): gRPC's fork support would restart its poller in the
    # child between fork and exec, where subprocess has closed its epoll fd: the child aborts
    # (grpc/grpc#43055). Also read when grpc is imported.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
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
    except click.UsageError as exc:   # one line like every other error, not click's usage block
        from ..core.render import escape

        command = exc.ctx.command_path if exc.ctx is not None else _command_path(args)
        click.echo(f"error: {escape(_one_line(exc))} (see '{command} --help')", err=True)
        code = EXIT_ERROR
    except click.ClickException as exc:
        from ..core.render import escape

        click.echo(f"error: {escape(exc.format_message())}", err=True)
        code = EXIT_ERROR
    except click.Abort:
        click.echo("aborted", err=True)
        code = 130
    except EtcdsyncError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        from ..core.render import escape

        click.echo(f"error: {escape(str(exc))}", err=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        code = 130
    except Exception as exc:  # noqa: BLE001 - a bug: still one line unless --debug
        if debug:
            raise
        from ..core.render import escape

        click.echo(f"error: internal error: {type(exc).__name__}: {escape(str(exc))} (run with --debug for a traceback)",
                   err=True)
        code = EXIT_ERROR
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
