"""One error tree for etcdsync; the CLI maps each branch to an exit code.

    EtcdsyncError                                                        retryable
    ├── ManifestError          bad input: file, line, column (exit 2)        no
    ├── UsageError             a bad flag or setting (exit 2)                no
    ├── ConfigValueError       a typed read: not an int, bool, JSON value    no
    ├── EtcdConnectionError    etcd unreachable, timed out, TLS failure      yes
    │   ├── AuthError          wrong user/password, permission denied        yes
    │   └── ClusterChangedError  revision went backwards / new cluster id    yes
    │       └── ClusterChanged   (also a CompactedError: what a watch raises)
    ├── InventoryError         an inventory chunk in etcd is unreadable      yes
    ├── CompactedError         the revision asked for was compacted          yes
    ├── RequestTooLargeError   etcd refused a transaction as too large       yes
    ├── ConflictError          a concurrent writer won every retry (exit 3)  yes
    │   └── OwnershipError     a key is owned by another apply set (exit 3)  no
    ├── GuardError             the deletion guard refused the plan (exit 3)  no
    ├── Interrupted            SIGINT/SIGTERM stopped an apply (exit 130)    no
    ├── GitSourceError         a git source failed (URL, ref, path, server)  per case
    └── WebhookError           a webhook request is not acceptable (HTTP)    no

`retryable` says whether trying the same thing again later, with the same input, may succeed: the
cause lies in etcd (down, compacted, changed by another writer, a role not granted yet, a broken
inventory an operator can repair), not in the manifests or flags. The daemon retries those with
backoff and reports the rest until the input changes; one-shot commands never retry on their own
beyond apply's conflict re-plans. Every error not listed keeps exit code 2.

Messages start with their subject and never contain a secret value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class EtcdsyncError(Exception):
    """Base of every error etcdsync raises on purpose.

    `partial`: set by an apply that committed some of its transactions before the error (its
    outcome: what was written), so that the caller can still record and report those writes.
    """

    exit_code = 2
    retryable = False
    partial: Any = None


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

    retryable = True


class AuthError(EtcdConnectionError):
    """etcd refused the credentials or the operation (retryable: roles and passwords are fixed in
    etcd, not in the manifests; the daemon waits for that)."""


class ConflictError(EtcdsyncError):
    """Keys changed under us on every attempt; nothing was overwritten."""

    exit_code = 3
    retryable = True

    def __init__(self, message: str, keys: Sequence[str] = ()) -> None:
        self.keys = tuple(keys)
        super().__init__(message)


class OwnershipError(ConflictError):
    """A declared key belongs to another apply set (permanent until --take-ownership or a manifest change)."""

    retryable = False


class GuardError(EtcdsyncError):
    """The deletion guard refused a plan; nothing was written."""

    exit_code = 3


class Interrupted(EtcdsyncError):
    """SIGINT or SIGTERM asked a running apply to stop: it sent no transaction after the signal and
    waited for those in flight (`partial`: what was committed). Exit 130, as for Ctrl-C."""

    exit_code = 130


class ClusterChangedError(EtcdConnectionError):
    """etcd's revision went below one already seen, or its cluster id changed: its data was wiped,
    restored from an older snapshot, or the cluster was rebuilt. Every revision read before is void:
    re-read everything and watch from the new revision. Watches raise it (as a subclass that is also
    a `CompactedError`, so code that re-reads after a compaction re-reads after this too)."""

    def __init__(self, message: str, *, old_revision: int = 0, new_revision: int = 0,
                 old_cluster_id: int = 0, new_cluster_id: int = 0) -> None:
        self.old_revision = old_revision
        self.new_revision = new_revision
        self.old_cluster_id = old_cluster_id
        self.new_cluster_id = new_cluster_id
        super().__init__(message)


class InventoryError(EtcdsyncError):
    """An inventory chunk in etcd cannot be read; etcdsync refuses to guess what it owns."""

    retryable = True


class RequestTooLargeError(EtcdsyncError):
    """etcd refused a transaction as too large (ops or bytes); the caller splits it."""

    retryable = True


class CompactedError(EtcdsyncError):
    """A watch or read asked for a revision etcd already compacted; re-read everything."""

    retryable = True

    def __init__(self, message: str, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        super().__init__(message)


class ClusterChanged(CompactedError, ClusterChangedError):
    """What a watch raises when the cluster changed under it (see ClusterChangedError): also a
    CompactedError, so that code which re-reads everything after a compaction does so here too."""

    def __init__(self, message: str, *, old_revision: int = 0, new_revision: int = 0,
                 old_cluster_id: int = 0, new_cluster_id: int = 0) -> None:
        ClusterChangedError.__init__(self, message, old_revision=old_revision, new_revision=new_revision,
                                     old_cluster_id=old_cluster_id, new_cluster_id=new_cluster_id)
        self.compact_revision = 0


class GitSourceError(EtcdsyncError):
    """A git source failed: a bad URL, ref or path, an unreachable or refusing server, a commit that
    lacks the path. The message starts with the (redacted) URL and never holds a credential (the
    raiser redacts it). ``retryable``: the same call may succeed later unchanged (unreachable, timed
    out); ``sha``: the commit concerned, when there is one."""

    def __init__(self, message: str, *, retryable: bool = False, sha: str | None = None) -> None:
        self.retryable = retryable
        self.sha = sha
        super().__init__(message)


class WebhookError(EtcdsyncError):
    """The request is not an acceptable webhook; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int) -> None:
        self.status = status
        super().__init__(message)
