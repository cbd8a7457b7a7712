"""Settings as frozen dataclasses, passed explicitly: the connection shared by library, CLI and daemon."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .errors import UsageError

DEFAULT_ENDPOINT = "http://127.0.0.1:2379"
RESERVED_PREFIX = "/.etcdsync/"


def _split(value: str | Sequence[str]) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        out.extend(part.strip() for part in item.split(",") if part.strip())
    return tuple(out)


@dataclass(frozen=True)
class Connection:
    """How to reach etcd. The same object serves the library, the CLI and the daemon."""

    endpoints: tuple[str, ...] = (DEFAULT_ENDPOINT,)
    """etcd client URLs (`http://host:port`, `https://host:port` or `host:port`); several fail over."""
    user: str | None = None
    """User name for etcd's password authentication."""
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
        if password is not None and user is None:
            raise UsageError("password: given without a user")
        object.__setattr__(self, "endpoints", eps)
        object.__setattr__(self, "user", user or None)
        object.__setattr__(self, "password", password)
        object.__setattr__(self, "ca_cert", ca_cert or None)
        object.__setattr__(self, "cert", cert or None)
        object.__setattr__(self, "key", key or None)
        object.__setattr__(self, "timeout", float(timeout))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Connection:
        """Read `ETCDSYNC_ENDPOINTS`, `_USER`, `_PASSWORD`, `_CACERT`, `_CERT`, `_KEY`, `_TIMEOUT`;
        keyword overrides that are not None win (that is how CLI flags are layered on top)."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {
            "endpoints": env.get("ETCDSYNC_ENDPOINTS") or None,
            "user": env.get("ETCDSYNC_USER") or None,
            "password": env.get("ETCDSYNC_PASSWORD") or None,
            "ca_cert": env.get("ETCDSYNC_CACERT") or None,
            "cert": env.get("ETCDSYNC_CERT") or None,
            "key": env.get("ETCDSYNC_KEY") or None,
        }
        timeout = env.get("ETCDSYNC_TIMEOUT")
        if timeout:
            try:
                values["timeout"] = float(timeout.rstrip("s"))
            except ValueError:
                raise UsageError(f"ETCDSYNC_TIMEOUT: not a number of seconds: {timeout!r}") from None
        for name, value in overrides.items():
            if name not in values and name != "timeout":
                raise TypeError(f"unknown connection setting {name!r}")
            if value is not None:
                values[name] = value
        return cls(**values)  # type: ignore[arg-type]
