"""The registry lint of `etcdsync validate` (pure): declarations that load fine but that discovery
clients will read wrongly.

The rule behind them: etcd's gRPC naming resolver (`go.etcd.io/etcd/client/v3/naming`) for the
target `etcd:///services/checkout` lists and watches every key that starts with `services/checkout`,
with no trailing slash. So it also returns the instances of a service `checkout-admin` under the same
prefix, and any other key that starts with that text. A service's *range* here is therefore
`<prefix><name>`, without the slash; etcdsync's own discovery reads `<prefix><name>/` and is not
affected, but clients that list the range as gRPC's resolver does are.

Codes:
- `service-prefix-overlap`: one Service's instances lie in another's range.
- `duplicate-target`: two Service documents have the same range (the same gRPC target).
- `configset-in-service`: a ConfigSet writes a key in a Service's range.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .model import DesiredKey, ServiceDecl, Source


@dataclass(frozen=True, slots=True)
class LintWarning:
    code: str
    message: str
    file: str | None = None
    line: int | None = None

    def as_json(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "file": self.file, "line": self.line}

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: " if self.file is not None and self.line is not None else ""
        return f"{where}{self.message} [{self.code}]"


def _at(code: str, message: str, source: Source | None) -> LintWarning:
    return LintWarning(code, message, source.file if source else None, source.line if source else None)


def target(svc: ServiceDecl) -> str:
    """The service's range: `<prefix><name>`, what gRPC's resolver for it lists (no trailing slash)."""
    return f"{svc.prefix}{svc.name}"


def _reader(svc: ServiceDecl) -> str:
    if svc.format == "grpc":
        return f"gRPC's etcd resolver for etcd:///{target(svc)} reads every key starting with '{target(svc)}'"
    return (f"a client listing '{target(svc)}' without the trailing slash (as etcd's gRPC resolver does) "
            "reads every key starting with it")


def _services(services: Sequence[ServiceDecl]) -> list[LintWarning]:
    out: list[LintWarning] = []
    for i, b in enumerate(services):
        space_b = target(b) + "/"
        for j, a in enumerate(services):
            if i == j:
                continue
            if target(a) == target(b):
                if j < i:      # reported once, at the later document
                    what = f"gRPC target etcd:///{target(a)}" if "grpc" in (a.format, b.format) \
                        else f"key space '{space_b}'"
                    out.append(_at("duplicate-target", f"Service/{b.name} and Service/{a.name} (at {a.source}) have "
                                   f"the same {what}: their instances are one list to every client", b.source))
            elif space_b.startswith(target(a) + "/"):
                out.append(_at("service-prefix-overlap",
                               f"Service/{b.name}'s instances ('{space_b}') are inside Service/{a.name}'s key space "
                               f"('{target(a)}/', at {a.source}): discovery of {a.name} lists them as its own",
                               b.source))
            elif space_b.startswith(target(a)):
                out.append(_at("service-prefix-overlap",
                               f"Service/{b.name}'s instances ('{space_b}') start with '{target(a)}' of Service/{a.name} "
                               f"(at {a.source}): {_reader(a)}, so it gets {b.name}'s instances too "
                               "(rename one service, or give one another prefix)", b.source))
    return out


def _configsets(services: Sequence[ServiceDecl], keys: Mapping[str, DesiredKey]) -> list[LintWarning]:
    config_keys = sorted(k for k, dk in keys.items() if dk.document.startswith("ConfigSet/"))
    out: list[LintWarning] = []
    for svc in services:
        rng = target(svc)
        first: dict[str, tuple[DesiredKey, int]] = {}    # per ConfigSet: its first key in range, and a count
        for key in config_keys[bisect.bisect_left(config_keys, rng):]:
            if not key.startswith(rng):
                break
            dk = keys[key]
            seen = first.get(dk.document)
            first[dk.document] = (seen[0] if seen else dk, (seen[1] if seen else 0) + 1)
        for document, (dk, n) in first.items():
            more = f" (and {n - 1} more key{'s' if n > 2 else ''})" if n > 1 else ""
            inside = dk.key.startswith(rng + "/")
            why = f"discovery of {svc.name} reads it as an instance" if inside else _reader(svc)
            out.append(_at("configset-in-service",
                           f"{document} writes '{dk.key}'{more} in Service/{svc.name}'s key space "
                           f"('{rng}{'/' if inside else ''}', at "
                           f"{svc.source}): {why}", dk.source))
    return out


def lint(services: Sequence[ServiceDecl], keys: Mapping[str, DesiredKey]) -> list[LintWarning]:
    """Every warning, in file and line order."""
    found = _services(services) + _configsets(services, keys)
    return sorted(found, key=lambda w: (w.file or "", w.line or 0, w.code, w.message))
