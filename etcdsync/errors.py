"""One error tree for etcdsync; the CLI maps each branch to an exit code.

    EtcdsyncError
    ├── ManifestError          bad input: file, line, column (exit 2)
    ├── UsageError             a bad flag or setting (exit 2)
    ├── ConfigValueError       a config value read as int/bool/JSON is not one (also a ValueError)
    ├── EtcdConnectionError    etcd unreachable, timed out, TLS failure (exit 2)
    │   ├── AuthError          wrong user/password, permission denied (exit 2)
    │   └── ClusterChangedError  revision went backwards / new cluster id (exit 2)
    ├── ConflictError          a concurrent writer won every retry (exit 3)
    │   └── OwnershipError     a key is owned by another apply set (exit 3)
    └── GuardError             the deletion guard refused the plan (exit 3)

Messages start with their subject and never contain a secret value.
"""

from __future__ import annotations

from collections.abc import Sequence


class EtcdsyncError(Exception):
    """Base of every error etcdsync raises on purpose."""

    exit_code = 2


class ManifestError(EtcdsyncError):
    """A manifest could not be loaded; names the file, line and column (1-based)."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None, column: int | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            where += ": "
        return f"{where}{self.message}"


class UsageError(EtcdsyncError):
    """A flag, setting or argument is wrong."""


class ConfigValueError(EtcdsyncError, ValueError):
    """A config value read as an int, bool or JSON is not one; names the key, never shows the value."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}")


class EtcdConnectionError(EtcdsyncError):
    """etcd could not be reached or answered with a transport error."""


class AuthError(EtcdConnectionError):
    """etcd refused the credentials or the operation."""


class ConflictError(EtcdsyncError):
    """Keys changed under us on every attempt; nothing was overwritten."""

    exit_code = 3

    def __init__(self, message: str, keys: Sequence[str] = ()) -> None:
        self.keys = tuple(keys)
        super().__init__(message)


class OwnershipError(ConflictError):
    """A declared key belongs to another apply set."""


class GuardError(EtcdsyncError):
    """The deletion guard refused a plan; nothing was written."""

    exit_code = 3


class ClusterChangedError(EtcdConnectionError):
    """etcd's revision went below one already seen, or its cluster id changed: its data was wiped,
    restored from an older snapshot, or the cluster was rebuilt. Every revision read before is void:
    re-read everything and watch from the new revision. Watches raise it (as a subclass that is also
    a `store.CompactedError`, so code that re-reads after a compaction re-reads after this too)."""

    def __init__(self, message: str, *, old_revision: int = 0, new_revision: int = 0,
                 old_cluster_id: int = 0, new_cluster_id: int = 0) -> None:
        self.old_revision = old_revision
        self.new_revision = new_revision
        self.old_cluster_id = old_cluster_id
        self.new_cluster_id = new_cluster_id
        super().__init__(message)
