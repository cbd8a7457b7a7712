"""The flags commands share, declared once and handed to a command as one typed, immutable object per
group (connection, output, manifests, plan) instead of loose keyword arguments popped from a dict.
The groups are NamedTuples: built once per run and only read, and creating a NamedTuple class costs
about a sixth of a frozen dataclass's (every command but --help creates all four at import).

Each `*_options` decorator adds its click options to a command and replaces their values by one
object: `@connection_options` passes `etcd: ConnectionFlags`, `@output_options` `display:
OutputFlags`, `@manifest_options` `manifests: ManifestFlags`, `@plan_options` `plan: PlanFlags`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import click

from ..errors import UsageError
from ..settings import RESERVED_PREFIX

if TYPE_CHECKING:
    from ..core.model import DesiredState
    from ..settings import Connection, Options
    from ..sources.git import GitSource

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_MANIFESTS = "manifests"


def _grouped(param: str, cls: type[Any], options: list[Callable[[F], F]]) -> Callable[[F], F]:
    """A decorator adding `options` to a command and passing their values as one `cls` (a NamedTuple)
    named `param`."""
    names = cls._fields

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def with_flags(*args: Any, **values: Any) -> Any:
            group = cls(**{name: values.pop(name) for name in names})
            return command(*args, **{param: group}, **values)

        wrapped: Any = with_flags
        for option in reversed(options):
            wrapped = option(wrapped)
        return wrapped  # type: ignore[no-any-return]

    return decorate


# -- output --------------------------------------------------------------------------------------------

class OutputFlags(NamedTuple):
    no_color: bool
    """--no-color (also: NO_COLOR set, or not a terminal)."""
    debug: bool
    """--debug: tracebacks and debug logs."""


output_options = _grouped("display", OutputFlags, [
    click.option("--no-color", is_flag=True, help="No colors (also: NO_COLOR set, or not a terminal)."),
    click.option("--debug", is_flag=True, envvar="ETCDSYNC_DEBUG", help="Show tracebacks and debug logs."),
])


def format_option(f: F | None = None, *, stream: bool = False) -> Any:
    """-o text|json. With json, the command's document (`output.emit_json`) is printed when it ends,
    and an error is reported on stdout too, as JSON (see output.py); `stream`: a command that prints
    one JSON line per event, whose error is then one last line."""
    def decorate(command: F) -> F:
        from .output import print_json_outcome

        @functools.wraps(command)
        def with_format(*args: Any, **values: Any) -> Any:
            if values.get("output") != "json":
                return command(*args, **values)
            try:
                result = command(*args, **values)
            except SystemExit:        # a command's own exit code (diff: 1) is not an error
                print_json_outcome(stream)
                raise
            except BaseException as exc:
                print_json_outcome(stream, exc)
                raise
            print_json_outcome(stream)
            return result

        return click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text",
                            show_default=True, help="Output format (json: see the README's Output section).")(
            with_format)  # type: ignore[return-value]

    return decorate if f is None else decorate(f)


# -- connection ----------------------------------------------------------------------------------------

class ConnectionFlags(NamedTuple):
    """The connection flags as given; `connection()` layers them over the environment."""

    endpoints: str | None
    user: str | None
    password: str | None
    password_file: str | None
    cacert: str | None
    cert: str | None
    key: str | None
    timeout: float | None
    context: str | None

    def connection(self) -> Connection:
        from ..contexts import select
        from ..settings import Connection

        return Connection.from_env(
            context=select(self.context),
            endpoints=self.endpoints, user=self.user, password=self.password, password_file=self.password_file,
            ca_cert=self.cacert, cert=self.cert, key=self.key, timeout=self.timeout,
        )


connection_options = _grouped("etcd", ConnectionFlags, [
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
    # eager: --reserved-prefix, when not given, takes the context's (see reserved_option)
    click.option("--context", metavar="NAME", is_eager=True,
                 help="Context of the config file to use [ETCDSYNC_CONTEXT; default: its current-context]."),
])


# -- the reserved prefix -------------------------------------------------------------------------------

def check_reserved_prefix(_ctx: Any, _param: Any, value: str) -> str:
    """--reserved-prefix: absolute, ending in '/', no '.'/'..' segment, no control character."""
    from ..manifest.yamlnodes import shown
    from ..settings import reserved_prefix_problem

    problem = reserved_prefix_problem(value)
    if problem:
        raise UsageError(f"--reserved-prefix '{shown(value)}': {problem}")
    return value


def _reserved_or_context(checked: bool) -> Callable[[Any, Any, str | None], str]:
    """--reserved-prefix as given, else (in a command with --context) the context's, else the default."""
    def callback(ctx: Any, param: Any, value: str | None) -> str:
        if value is None:
            if "context" in ctx.params:          # processed first: it is eager
                from ..contexts import select

                chosen = select(ctx.params["context"])
                value = chosen.reserved_prefix if chosen is not None and chosen.reserved_prefix else None
            return value or RESERVED_PREFIX      # the context's was checked when its file was read
        return check_reserved_prefix(ctx, param, value) if checked else value

    return callback


def reserved_option(help: str = "Where etcdsync keeps its inventory.", *, checked: bool = True) -> Callable[[F], F]:
    """--reserved-prefix; `checked`: validated like a ConfigSet prefix (the operator commands, which
    only compare keys against it, take it as given). Without the flag: the context's, else /.etcdsync/."""
    return click.option("--reserved-prefix", default=None, callback=_reserved_or_context(checked),
                        help=f"{help} [default: the context's, else {RESERVED_PREFIX}]")


# -- manifests -----------------------------------------------------------------------------------------

def default_paths(paths: tuple[str, ...]) -> tuple[str, ...]:
    """The -f paths, or ./manifests when none was given (a UsageError when that does not exist)."""
    if paths:
        return paths
    if not os.path.isdir(DEFAULT_MANIFESTS):
        raise UsageError(f"no -f given and ./{DEFAULT_MANIFESTS} does not exist; pass -f PATH")
    return (DEFAULT_MANIFESTS,)


def load(paths: tuple[str, ...], reserved: str, *, file_roots: tuple[str, ...] = (),
         env_allow: tuple[str, ...] = ()) -> DesiredState:
    from ..manifest import load_manifests

    return load_manifests(list(default_paths(paths)), reserved_prefix=reserved, file_roots=file_roots,
                          env_allow=env_allow)


class ManifestFlags(NamedTuple):
    """-f, --file-root, --env-allow; or --git, --ref, --path, --git-cache."""

    paths: tuple[str, ...]
    file_roots: tuple[str, ...]
    env_allow: tuple[str, ...]
    git: str | None = None
    ref: str | None = None
    git_path: str | None = None
    git_cache: str | None = None

    def check(self) -> None:
        """Refuse a --file-root that is not a directory and an --env-allow that is not a glob; -f with
        --git; --ref/--path without --git."""
        from ..manifest.yamlnodes import shown

        if self.git is not None and self.paths:
            raise UsageError("-f and --git: the manifests come from files or from a repository, not both")
        if self.git is None and (self.ref is not None or self.git_path is not None):
            raise UsageError(f"{'--ref' if self.ref is not None else '--path'} needs --git URL")
        for root in self.file_roots:
            if not root or not os.path.isdir(root):
                raise UsageError(f"--file-root '{shown(root)}': not a directory")
        for glob in self.env_allow:
            if not glob or any(ord(ch) < 32 for ch in glob):
                raise UsageError(f"--env-allow '{shown(glob)}': not a name or glob")

    def git_source(self) -> GitSource | None:
        """The repository --git names (None without --git); checked, nothing fetched yet."""
        if self.git is None:
            return None
        from ..sources.git import GitSource

        return GitSource(self.git, self.ref, self.git_path, cache_dir=self.git_cache)

    def load(self, reserved: str) -> DesiredState:
        git = self.git_source()
        if git is None:
            return load(self.paths, reserved, file_roots=self.file_roots, env_allow=self.env_allow)
        import asyncio

        snapshot = asyncio.run(git.pull())
        return snapshot.load(reserved_prefix=reserved, file_roots=self.file_roots, env_allow=self.env_allow)


manifest_options = _grouped("manifests", ManifestFlags, [
    click.option("-f", "--filename", "paths", multiple=True, metavar="PATH",
                 help="Manifest file or directory (repeatable; later paths override earlier ones document "
                      "by document). Default: ./manifests"),
    click.option("--file-root", "file_roots", multiple=True, metavar="DIR", envvar="ETCDSYNC_FILE_ROOTS",
                 type=click.Path(file_okay=True, dir_okay=True),
                 help="fromFile may also read files under DIR (repeatable) [ETCDSYNC_FILE_ROOTS, "
                      "':' separated]. Default: only the manifest root of each -f path."),
    click.option("--env-allow", "env_allow", multiple=True, metavar="GLOB", envvar="ETCDSYNC_ENV_ALLOW",
                 help="fromEnv may read only variables matching one of these globs (repeatable) "
                      "[ETCDSYNC_ENV_ALLOW, space separated]. ETCDSYNC_* and ETCDCTL_* are never read."),
    click.option("--git", "git", metavar="URL", envvar="ETCDSYNC_GIT",
                 help="Read the manifests from this git repository instead of -f (https, ssh, git or file URL; "
                      "git's own authentication) [ETCDSYNC_GIT]."),
    click.option("--ref", "ref", metavar="REF", help="Branch, tag or full commit SHA to follow (default: the "
                                                     "repository's default branch)."),
    click.option("--path", "git_path", metavar="DIR", help="Directory inside the repository that holds the "
                                                           "manifests (default: its root)."),
    click.option("--git-cache", "git_cache", metavar="DIR", envvar="ETCDSYNC_GIT_CACHE",
                 help="Where fetched commits are kept (default: ~/.cache/etcdsync/git) [ETCDSYNC_GIT_CACHE]."),
])


# -- plan ----------------------------------------------------------------------------------------------

class PlanFlags(NamedTuple):
    """Which apply set, where its inventory lives, and the ownership and deletion-guard options."""

    applyset: str | None
    reserved_prefix: str
    take_ownership: bool
    allow_empty: bool
    max_deletes: int
    force: bool
    selector: str | None = None
    prune: bool = True

    def options(self) -> Options:
        from ..settings import Options

        if self.selector is not None:
            from ..core.selector import parse_selector

            parse_selector(self.selector)   # a bad selector is a usage error before anything is read
        return Options(take_ownership=self.take_ownership, allow_empty=self.allow_empty,
                       max_deletes=self.max_deletes, force=self.force, selector=self.selector, prune=self.prune)


def _plan_flags(help: dict[str, str | None]) -> list[Callable[[F], F]]:
    return [
        click.option("--applyset", metavar="NAME", help="Apply set name (default: the ApplySet document, else 'default')."),
        reserved_option(),
        click.option("--take-ownership", is_flag=True, help=help["take-ownership"]),
        click.option("--allow-empty", is_flag=True, help=help["allow-empty"]),
        click.option("--max-deletes", type=click.IntRange(min=0), default=100, show_default=True,
                     help=help["max-deletes"]),
        click.option("--force", is_flag=True, help=help["force"]),
        click.option("-l", "--selector", metavar="KEY=VALUE[,...]", default=None, help=help["selector"]),
        click.option("--prune", type=click.Choice(["true", "false"]), default="true", show_default=True,
                     callback=lambda _ctx, _param, value: value == "true", help=help["prune"]),
    ]


_PLAN_HELP: dict[str, str | None] = {
    "take-ownership": "Take keys owned by another apply set.",
    "allow-empty": "Allow a plan that leaves the apply set owning nothing.",
    "max-deletes": "Refuse plans deleting more keys.",
    "force": "Allow more deletes than --max-deletes.",
    "selector": "Only documents whose metadata.labels match (key=value, key!=value; commas: and); "
                "prunes only keys recorded as theirs.",
    "prune": "--prune=false: puts only; owned keys no longer declared stay owned, for a later apply to prune.",
}

plan_options = _grouped("plan", PlanFlags, _plan_flags(_PLAN_HELP))
"""The plan flags of diff and apply."""

daemon_plan_options = _grouped("plan", PlanFlags, _plan_flags(dict.fromkeys(_PLAN_HELP)))
"""The same flags for `run` (which has always listed them without help text)."""


def parse_duration(text: str, what: str) -> float:
    from ..settings import parse_duration as parse

    seconds = parse(text)
    if seconds is None:
        raise UsageError(f"{what}: {text!r} is not a duration (use e.g. 10s, 1m30s, 500ms)")
    return seconds
