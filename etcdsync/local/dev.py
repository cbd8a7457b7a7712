"""`etcdsync dev`: a throwaway local etcd with the example manifests applied, for trying things out."""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

from .etcdbin import EtcdMember, binary_version, find_binary, free_ports


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def start_etcd(data_dir: str | None, port: int | None) -> tuple[EtcdMember, tempfile.TemporaryDirectory[str] | None]:
    """Start one etcd member on 127.0.0.1 (port 2379 when free) with data in `data_dir` or a temp dir."""
    tmp = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="etcdsync-dev-")
        base = Path(tmp.name)
    else:
        base = Path(data_dir)
        base.mkdir(parents=True, exist_ok=True)
    client = port or (2379 if _port_free(2379) and _port_free(2380) else free_ports(1)[0])
    peer = 2380 if client == 2379 else free_ports(1)[0]
    member = EtcdMember("dev", client, peer, base / "etcd", log_path=base / "etcd.log")
    member._started_once = (base / "etcd" / "member").exists()
    member.start()
    return member, tmp


def default_metrics_addr() -> str:
    port = 9090 if _port_free(9090) else free_ports(1)[0]
    return f"127.0.0.1:{port}"


def banner(endpoint: str, etcdctl: Callable[[], str]) -> str:
    etcd = find_binary("etcd")
    return "\n".join([
        f"etcd is running at {endpoint}",
        f"  etcd {binary_version(etcd)}: {etcd}",
        f"  export ETCDSYNC_ENDPOINTS={endpoint}",
        f"  {etcdctl()} --endpoints {endpoint} get --prefix /config/",
    ])
