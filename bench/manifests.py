"""The benchmark's data: N keys of ~64-byte values over 100 sub-paths, as one ConfigSet manifest."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

PREFIX = "/bench/"
APPLYSET = "bench"


def rel_key(i: int) -> str:
    return f"svc{i % 100}/key{i}"


def value(i: int) -> str:
    """64 characters, a plain YAML scalar: v<9 digits>-<53 hex digits>."""
    return "v%09d-%s" % (i, hashlib.sha256(str(i).encode()).hexdigest()[:53])


def items(n: int) -> list[tuple[bytes, bytes]]:
    """The (absolute key, value) pairs the baselines write: exactly what the manifest declares."""
    return [(f"{PREFIX}{rel_key(i)}".encode(), value(i).encode()) for i in range(n)]


def write_manifest(directory: Path, n: int) -> Path:
    """One ConfigSet (policy enforce) with N data keys, in `directory`/bench.yaml."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "bench.yaml"
    lines = ["apiVersion: etcdsync/v1", "kind: ConfigSet", "metadata:", "  name: bench", "spec:",
             f"  prefix: {PREFIX}", "  policy: enforce", "  data:"]
    lines.extend(f"    {rel_key(i)}: {value(i)}" for i in range(n))
    path.write_text("\n".join(lines) + "\n")
    return path


def drift_indexes(n: int, fraction: float = 0.01, seed: int = 42) -> list[int]:
    """A fixed random sample of key indexes (at least one) spread over the whole set."""
    count = max(1, int(n * fraction))
    return sorted(random.Random(seed).sample(range(n), count))
