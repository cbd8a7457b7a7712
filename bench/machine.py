"""Describe the machine a run was measured on (for the table's header and the JSON)."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from etcdsync.local.etcdbin import binary_version, find_binary


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return None


def _etcd_version() -> str:
    try:
        return binary_version(find_binary("etcd"))
    except FileNotFoundError:
        return "unknown"


def _etcd_binary() -> str:
    try:
        return find_binary("etcd")
    except FileNotFoundError:
        return "not found"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def disk_of(path: str) -> dict[str, Any]:
    """Filesystem type, device and (when the kernel says) whether the disk is rotational."""
    real = os.path.realpath(path)
    best: tuple[str, str, str] = ("/", "unknown", "unknown")
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            mount = left.split()[4]
            fstype, source = right.split()[:2]
            inside = real == mount or real.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best[0]):
                best = (mount, fstype, source)
    except (OSError, IndexError):
        pass
    mount, fstype, source = best
    info: dict[str, Any] = {"path": real, "mount": mount, "fstype": fstype, "device": source}
    dev = os.path.basename(source)
    for name in (dev, re.sub(r"p?\d+$", "", dev)):
        rot = Path(f"/sys/block/{name}/queue/rotational")
        if name and rot.exists():
            info["rotational"] = rot.read_text().strip() == "1"
            info["virtio"] = name.startswith("vd")
            break
    return info


def code_version(root: Path) -> dict[str, Any]:
    """The commit measured, and which files of the package differ from it (a moving target)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "etcdsync").splitlines() if line]
    return {"commit": git("rev-parse", "--short", "HEAD") or "unknown", "uncommitted": dirty,
            "version": _version("etcdsync")}


def describe(data_dir: str) -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": round(_memory_gib() or 0, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "etcd": _etcd_version(),
        "etcd_binary": _etcd_binary(),     # ETCDSYNC_ETCD_BIN selects another (e.g. Debian's 3.4)
        "etcd3aio": _version("etcd3aio"),
        "grpcio": _version("grpcio"),
        "etcd_data_dir": disk_of(data_dir),
    }


def code_line(code: dict[str, Any]) -> str:
    dirty = code.get("uncommitted") or []
    return f"etcdsync {code.get('commit')}" + (f" + uncommitted changes in {len(dirty)} files of etcdsync/"
                                              if dirty else "")


def one_line(m: dict[str, Any]) -> str:
    disk = m["etcd_data_dir"]
    kind = ""
    if "rotational" in disk:
        kind = ("virtio disk, " if disk.get("virtio") else "") + ("rotational" if disk["rotational"] else "non-rotational")
        kind = f" ({kind})"
    return (f"{m['cores']} cores, {m['cpu']}, {m['memory_gib']:g} GiB RAM, Linux {m['kernel']}, "
            f"Python {m['python']}, etcd {m['etcd']} ({m.get('etcd_binary', 'unknown binary')}, single member except where a row says otherwise, loopback), "
            f"etcd3aio {m['etcd3aio']}, etcd data dir on {disk['fstype']} {disk['device']}{kind}"
            + (f"; etcdsync's bytecode {m['bytecode']}" if m.get("bytecode") else ""))
