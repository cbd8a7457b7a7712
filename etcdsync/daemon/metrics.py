"""The daemon's Prometheus metrics and its small HTTP endpoint (/healthz, /readyz, /metrics)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)


class Metrics:
    """One registry per daemon (so tests can run several in one process)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.reconciles = Counter("etcdsync_reconciles_total", "Full reconciles by result.", ["result"], registry=r)
        self.drift = Counter("etcdsync_drift_total", "Drift seen on declared keys, by policy and what was done.",
                             ["policy", "action"], registry=r)
        self.errors = Counter("etcdsync_errors_total", "Errors by kind.", ["kind"], registry=r)
        self.last_success = Gauge("etcdsync_last_success_timestamp_seconds",
                                  "Unix time of the last successful reconcile.", registry=r)
        self.apply_duration = Histogram("etcdsync_apply_duration_seconds", "Duration of full reconciles.",
                                        buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60), registry=r)
        self.repair_duration = Histogram("etcdsync_drift_repair_seconds",
                                         "From receiving a watch event to the repairing commit.",
                                         buckets=(.001, .002, .005, .01, .025, .05, .1, .25, 1), registry=r)
        self.owned_keys = Gauge("etcdsync_owned_keys", "Keys the apply set owns.", registry=r)
        self.live_instances = Gauge("etcdsync_live_instances", "Live instances registered under a lease.", registry=r)
        self.leader = Gauge("etcdsync_leader", "1 while this daemon may write (always 1 without --leader-elect).",
                            registry=r)
        self.manifest_valid = Gauge("etcdsync_manifests_valid", "1 when the last manifest load succeeded.", registry=r)
        self.ready = Gauge("etcdsync_ready", "1 when the daemon is ready.", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HttpServer:
    """A minimal asyncio HTTP/1.1 server for the three endpoints; no extra dependency."""

    def __init__(self, addr: str, metrics: Metrics, readiness: Callable[[], tuple[bool, dict[str, Any]]]) -> None:
        host, _, port = addr.rpartition(":")
        self.host = host or "127.0.0.1"
        self.port = int(port)
        self.metrics = metrics
        self.readiness = readiness
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while True:  # skip headers
                line = await asyncio.wait_for(reader.readline(), 5)
                if line in (b"\r\n", b"\n", b""):
                    break
            parts = request.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else "/"
            if path == "/healthz":
                status, ctype, body = 200, "text/plain", b"ok\n"
            elif path == "/readyz":
                ok, detail = self.readiness()
                status, ctype = (200 if ok else 503), "application/json"
                body = (json.dumps({"ready": ok, **detail}) + "\n").encode()
            elif path == "/metrics":
                status, ctype, body = 200, CONTENT_TYPE_LATEST, self.metrics.render()
            else:
                status, ctype, body = 404, "text/plain", b"not found\n"
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()
