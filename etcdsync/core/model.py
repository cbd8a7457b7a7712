"""Frozen value types shared by the loader, the planner and the executor.

Everything here is plain data: no I/O, no etcd client types. Records are NamedTuples where tuple
semantics are harmless: every command imports this module, and a frozen slotted dataclass costs
about ten times as much to create at import. `Source` stays a dataclass (its overlay history is
not part of its equality), and so does `DesiredState` (one per load; `dataclasses.replace`d). A
DesiredKey holds its position compact (a file and an int, see `compact_source`) and makes the
Source when asked: a Source per key was ~10 MB of a daemon holding 100,000 keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple


class Policy(StrEnum):
    """What etcdsync does when a declared key differs from etcd."""

    ENFORCE = "enforce"          # overwrite drift
    WARN = "warn"                # create when absent, report a differing value, never overwrite it
    CREATE_ONLY = "create-only"  # create when absent, otherwise leave the value alone


@dataclass(frozen=True, slots=True)
class Source:
    """Where something was declared: a file and a 1-based line and column.

    With overlays (several ``-f`` layers), also how it got there (not part of equality): the earlier
    layers' declarations of the same key or instance that this one replaced (oldest first), and the
    document of each layer that the declaring document was merged from or replaced by (in order).
    """

    file: str
    line: int
    column: int
    overrides: tuple[Source, ...] = field(default=(), compare=False)
    layers: tuple[Source, ...] = field(default=(), compare=False)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


# Where a key was declared, without an object per key: the file (one string per file, shared) and
# the line and column packed into one int, `line | column << LINE_BITS`. A Source is made from them
# only when asked for (`DesiredKey.source`). A line beyond LINE_MAX, or a position with an overlay
# history, stays a Source.
LINE_BITS = 21
LINE_MAX = (1 << LINE_BITS) - 1


def compact_source(file: str, line: int, column: int) -> tuple[Source | str, int]:
    """The compact (origin, at) of the position `file:line:column`, as DesiredKey and Change hold it."""
    if 0 <= line <= LINE_MAX and column >= 0:
        return file, line | column << LINE_BITS
    return Source(file, line, column), 0


def source_of(origin: Source | str | None, at: int) -> Source | None:
    """The Source of a compact (origin, at): ``origin`` itself unless it is a file name."""
    if origin is None or isinstance(origin, Source):
        return origin
    return Source(origin, at & LINE_MAX, at >> LINE_BITS)


class DesiredKey(NamedTuple):
    """One etcd key the manifests declare, with its exact value bytes (a NamedTuple: cheap to build
    by the 100,000). Where it was declared is `source`, made on demand from `origin` and `at`."""

    key: str
    value: bytes
    prefix: str                      # the declaring document's prefix (the read range)
    policy: Policy = Policy.ENFORCE
    prune: bool = True
    secret: bool = False
    document: str = ""               # "ConfigSet/payments"
    origin: Source | str | None = None  # a Source, or the file, with the line and column packed in `at`
    at: int = 0                      # see `compact_source`

    @property
    def source(self) -> Source | None:
        return source_of(self.origin, self.at)


class HealthCheck(NamedTuple):
    """A check gating a live registration: TCP connect or HTTP GET of a path."""

    kind: str                        # "tcp" | "http"
    path: str | None = None          # for http
    interval: float = 5.0            # seconds
    timeout: float = 2.0             # seconds
    failures: int = 3                # consecutive failures before deregistering


class ServiceInstance(NamedTuple):
    """One instance of a Service document; `key`/`value` are exactly what etcd holds."""

    service: str
    id: str
    host: str
    port: int
    key: str
    value: bytes
    prefix: str                      # "<spec.prefix><service>/"
    format: str = "json"             # "json" | "grpc"
    metadata: Mapping[str, Any] | None = None
    ttl: float | None = None         # seconds; set => live registration held by `etcdsync run`
    check: HealthCheck | None = None
    document: str = ""
    source: Source | None = None

    @property
    def live(self) -> bool:
        return self.ttl is not None or self.check is not None


class ServiceDecl(NamedTuple):
    """A Service document as declared (instances apart): for the registry lint."""

    name: str
    prefix: str                      # spec.prefix: keys are "<prefix><name>/..."
    format: str = "json"
    source: Source | None = None


class Selection(NamedTuple):
    """What a label selector (`-l`) chose from a tree: only the keys of `documents` are planned, and
    only owned keys recorded as belonging to one of them may be pruned."""

    selector: str                    # as given, for messages
    documents: frozenset[str]        # the selected documents ("ConfigSet/payments")
    declared: frozenset[str]         # every key the whole tree declares: never pruned by this selection
    total: int = 0                   # documents in the tree (ConfigSet and Service)


@dataclass(frozen=True)
class DesiredState:
    """Everything the manifests declare, after overlays, ready for planning."""

    keys: Mapping[str, DesiredKey] = field(default_factory=dict)   # static keys, by etcd key
    live: tuple[ServiceInstance, ...] = ()                          # ttl/check instances (daemon only)
    prefixes: tuple[str, ...] = ()                                  # declared prefixes, sorted, unique
    applyset: str | None = None                                     # from a `kind: ApplySet` document
    applyset_source: Source | None = None
    files: tuple[str, ...] = ()                                     # manifest files read
    sources: tuple[str, ...] = ()                                   # fromFile sources read (resolved paths)
    removed: Mapping[str, Source] = field(default_factory=dict)    # keys an overlay removed (`remove: true`)
    services: tuple[ServiceDecl, ...] = ()                          # Service documents, in load order
    labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # document -> metadata.labels
    selection: Selection | None = None                              # set by core.selector.select
