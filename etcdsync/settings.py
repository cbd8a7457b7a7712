"""Settings as frozen dataclasses, passed explicitly, and the defaults written once: the connection
shared by library, CLI and daemon, the plan options, the daemon's settings, durations. (A config
file's `Context` is a NamedTuple: a record read from the file, and every command imports this
module, where a dataclass costs several times as much to create.)"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .errors import UsageError

DEFAULT_ENDPOINT = "http://127.0.0.1:2379"
RESERVED_PREFIX = "/.etcdsync/"
"""Where etcdsync keeps inventories, the ownership fence and election keys."""
SERVICES_PREFIX = "/services/"
"""Where service instances live in the `json` format."""
GRPC_SERVICES_PREFIX = "services/"
"""Where they live in the `grpc` format (grpc-go's etcd naming resolver: no leading slash)."""


# patterns, compiled (and cached) by `re` on first use: most commands parse no duration
_DURATION_PART = r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)"
_DURATION = r"(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h))+"
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float | None:
    """Seconds from "10s", "1.5s", "500ms", "1m30s", "2h" or a number; None when invalid or <= 0."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and re.fullmatch(_DURATION, value):
        seconds = sum(float(n) * _UNIT[u] for n, u in re.findall(_DURATION_PART, value))
    else:
        return None
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return seconds


def services_prefix(fmt: str) -> str:
    """The default registry prefix of a format (`json` or `grpc`)."""
    return GRPC_SERVICES_PREFIX if fmt == "grpc" else SERVICES_PREFIX


def reserved_prefix_problem(value: str) -> str | None:
    """Why `value` cannot be the reserved prefix (absolute, ending in '/', not '/', no '.'/'..'
    segment, no control character), or None."""
    if not value.startswith("/") or not value.endswith("/"):
        return "must start and end with '/' (e.g. /.etcdsync/)"
    if value == "/":
        return "must not be '/' (every key would be etcdsync's)"
    if any(ord(ch) < 32 or 0x7f <= ord(ch) <= 0x9f for ch in value):
        return "must not contain control characters"
    if any(seg in (".", "..") for seg in value.split("/")):
        return "must not contain '.' or '..' segments"
    return None


class Context(NamedTuple):
    """One named context of the config file (see `etcdsync.contexts`): connection settings that sit
    below flags and environment variables. Paths are absolute (resolved against the config file); a
    context never holds a password, only the file that does."""

    name: str
    file: str = ""
    """The config file it was read from (for messages)."""
    endpoints: tuple[str, ...] = ()
    user: str | None = None
    password_file: str | None = None
    ca_cert: str | None = None
    cert: str | None = None
    key: str | None = None
    reserved_prefix: str | None = None
    timeout: float | None = None


def _split(value: str | Sequence[str]) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        out.extend(part.strip() for part in item.split(",") if part.strip())
    return tuple(out)


@dataclass(frozen=True, init=False)    # init=False: __init__ below (dataclass would build one and drop it)
class Connection:
    """How to reach etcd. The same object serves the library, the CLI and the daemon."""

    endpoints: tuple[str, ...] = (DEFAULT_ENDPOINT,)
    """etcd client URLs (`http://host:port`, `https://host:port` or `host:port`); several fail over."""
    user: str | None = None
    """User name for etcd's password authentication (`user:password` like etcdctl, when no password is given)."""
    password: str | None = field(default=None, repr=False)
    """Password for `user`. Never printed."""
    ca_cert: str | None = None
    """PEM file of the CA that signed the server certificates (turns TLS on)."""
    cert: str | None = None
    """PEM client certificate for mutual TLS."""
    key: str | None = None
    """PEM private key of `cert`."""
    timeout: float = 5.0
    """Seconds a single request (connect, read, transaction) may take before it fails."""

    def __init__(
        self,
        endpoints: str | Sequence[str] | None = None,
        user: str | None = None,
        password: str | None = None,
        *,
        ca_cert: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        eps = _split(endpoints) if endpoints else (DEFAULT_ENDPOINT,)
        if not eps:
            raise UsageError("endpoints: at least one etcd endpoint is required")
        if timeout <= 0:
            raise UsageError("timeout: must be a positive number of seconds")
        if (cert is None) != (key is None):
            raise UsageError("cert/key: give both the client certificate and its key, or neither")
        if user and password is None and ":" in user:
            user, password = user.split(":", 1)      # etcdctl's --user user:password
        if password is not None and not user:
            raise UsageError("password: given without a user")
        object.__setattr__(self, "endpoints", eps)
        object.__setattr__(self, "user", user or None)
        object.__setattr__(self, "password", password)
        object.__setattr__(self, "ca_cert", ca_cert or None)
        object.__setattr__(self, "cert", cert or None)
        object.__setattr__(self, "key", key or None)
        object.__setattr__(self, "timeout", float(timeout))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, context: Context | None = None,
                 **overrides: object) -> Connection:
        """Read `ETCDSYNC_ENDPOINTS`, `_USER`, `_PASSWORD`, `_PASSWORD_FILE`, `_CACERT`, `_CERT`, `_KEY`,
        `_TIMEOUT`; where one is unset, etcdctl's `ETCDCTL_ENDPOINTS`, `_USER` (`user:password`),
        `_PASSWORD`, `_CACERT`, `_CERT`, `_KEY`, so a shell set up for etcdctl works unchanged; where
        that is unset too, the `context`'s setting. Keyword overrides that are not None win (that is
        how CLI flags are layered on top); `password_file` reads the password from the first line of a
        file. The context's password file is read only for the context's own user (a user given by a
        flag or the environment never gets the context's password)."""
        env = os.environ if environ is None else environ
        ctx = context or Context("")

        def pick(name: str, fallback: str | None) -> str | None:
            return env.get(f"ETCDSYNC_{name}") or env.get(f"ETCDCTL_{name}") or fallback or None

        values: dict[str, object] = {
            "endpoints": pick("ENDPOINTS", ",".join(ctx.endpoints)),
            "user": pick("USER", ctx.user),
            "ca_cert": pick("CACERT", ctx.ca_cert),
            "cert": pick("CERT", ctx.cert),
            "key": pick("KEY", ctx.key),
        }
        timeout = env.get("ETCDSYNC_TIMEOUT")
        if timeout:
            try:
                values["timeout"] = float(timeout.rstrip("s"))
            except ValueError:
                raise UsageError(f"ETCDSYNC_TIMEOUT: not a number of seconds: {timeout!r}") from None
        elif ctx.timeout is not None:
            values["timeout"] = ctx.timeout
        for name in overrides:
            if name not in values and name not in ("timeout", "password", "password_file"):
                raise TypeError(f"unknown connection setting {name!r}")
        flag_password = overrides.get("password")
        flag_file = overrides.get("password_file")
        if flag_password is not None and flag_file is not None:
            raise UsageError("--password and --password-file: give one of them")
        for name, value in overrides.items():
            if value is not None and name not in ("password", "password_file"):
                values[name] = value
        user = values.get("user")
        if flag_password is not None:
            values["password"] = flag_password               # --user is then taken whole, as etcdctl does
        elif flag_file is not None:
            values["password"] = read_password_file(str(flag_file), "--password-file")
        elif isinstance(user, str) and ":" in user:
            pass                                             # user:password; Connection splits it
        elif env.get("ETCDSYNC_PASSWORD"):
            values["password"] = env["ETCDSYNC_PASSWORD"]
        elif env.get("ETCDSYNC_PASSWORD_FILE"):
            values["password"] = read_password_file(env["ETCDSYNC_PASSWORD_FILE"], "ETCDSYNC_PASSWORD_FILE")
        elif env.get("ETCDCTL_PASSWORD"):
            values["password"] = env["ETCDCTL_PASSWORD"]
        elif ctx.password_file and user == ctx.user:
            values["password"] = read_password_file(ctx.password_file, f"{ctx.file}: context {ctx.name!r}: password-file")
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Options:
    """How a plan treats ownership and deletions (apply, diff, teardown and the daemon)."""

    take_ownership: bool = False
    """Take keys another apply set owns (--take-ownership)."""
    allow_empty: bool = False
    """Allow a plan that leaves the apply set owning nothing (--allow-empty)."""
    max_deletes: int = 100
    """Refuse a plan deleting more keys than this (--max-deletes)..."""
    force: bool = False
    """...unless forced (--force)."""
    own_leases: frozenset[int] = frozenset()
    """Leases etcdsync itself holds (the daemon's): a key under one is not a conflict."""
    selector: str | None = None
    """-l/--selector: plan only the documents whose labels match (see core.selector.select)."""
    prune: bool = True
    """--prune=false: plan puts only; owned keys no longer declared stay owned."""


@dataclass(frozen=True)
class DaemonSettings:
    """Everything `etcdsync run` was asked to do, apart from where its manifests come from (a source)."""

    applyset_flag: str | None = None
    """--applyset; else the ApplySet document; else 'default'."""
    reserved: str = RESERVED_PREFIX
    """Where inventories and election keys live."""
    options: Options = field(default_factory=Options)
    """Ownership and deletion-guard options, as for `apply`."""
    resync: float = 300.0
    """Seconds between full reconciles even when nothing was noticed."""
    metrics_addr: str | None = None
    """host:port for /healthz, /readyz and /metrics."""
    leader_elect: bool = False
    """Run as one of several daemons on the same apply set; only the leader writes."""
    election_ttl: float = 5.0
    """Lease TTL of the election key: how fast a dead leader is replaced."""
    watchdog: float = 5.0
    """Seconds between probes that detect a watch which went silent."""
    flap_threshold: int = 5
    flap_window: float = 60.0
    flap_cooldown: float = 300.0
    """A key repaired `flap_threshold` times within `flap_window` seconds is left alone for `flap_cooldown`."""
    webhook_secret: bytes | None = field(default=None, repr=False)
    """--webhook-secret-file's content: `POST /hooks/git` is served only with it (a git source)."""
    history_limit: int = 100
    """--history-limit: history entries kept for the apply set."""


def read_password_file(path: str, what: str) -> str:
    """The password in `path`: its first line, without the line break."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise UsageError(f"{what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{what} {path}: not UTF-8 text") from None
    password = text.splitlines()[0] if text else ""
    if not password:
        raise UsageError(f"{what} {path}: the file is empty")
    return password
