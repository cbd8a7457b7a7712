"""The daemon's Prometheus metrics and its small HTTP endpoint (/healthz, /readyz, /metrics)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
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
        self.suspended = Gauge("etcdsync_suspended", "1 while the apply set is suspended (`etcdsync suspend`): "
                               "no config writes.", registry=r)
        self.flapping = Gauge("etcdsync_flapping_keys", "Keys another writer keeps changing back after each "
                              "repair, left alone for their cool-down.", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


Hook = Callable[[Mapping[str, str], bytes], tuple[int, str]]
"""A POST endpoint: (headers, body) -> (HTTP status, text)."""

MAX_BODY = 1024 * 1024          # a POST body beyond this is refused unread (413)
_REASONS = {200: "OK", 202: "Accepted", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
            404: "Not Found", 405: "Method Not Allowed", 411: "Length Required", 413: "Payload Too Large",
            503: "Service Unavailable"}


class HttpServer:
    """A minimal asyncio HTTP/1.1 server for /healthz, /readyz, /metrics and POST `hooks`; no extra
    dependency. One request per connection; every read is bounded in time and size."""

    def __init__(self, addr: str, metrics: Metrics, readiness: Callable[[], tuple[bool, dict[str, Any]]],
                 hooks: Mapping[str, Hook] | None = None) -> None:
        host, _, port = addr.rpartition(":")
        self.host = host or "127.0.0.1"
        self.port = int(port)
        self.metrics = metrics
        self.readiness = readiness
        self.hooks = dict(hooks or {})
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
            headers: dict[str, str] = {}
            for _ in range(100):
                line = await asyncio.wait_for(reader.readline(), 5)
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            parts = request.decode("latin-1").split()
            method = parts[0] if parts else "GET"
            path = parts[1].split("?")[0] if len(parts) >= 2 else "/"
            if path in self.hooks:
                status, ctype, body = await self._post(method, headers, reader, self.hooks[path])
            elif method not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"method not allowed\n"
            elif path == "/healthz":
                status, ctype, body = 200, "text/plain", b"ok\n"
            elif path == "/readyz":
                ok, detail = self.readiness()
                status, ctype = (200 if ok else 503), "application/json"
                body = (json.dumps({"ready": ok, **detail}) + "\n").encode()
            elif path == "/metrics":
                status, ctype, body = 200, CONTENT_TYPE_LATEST, self.metrics.render()
            else:
                status, ctype, body = 404, "text/plain", b"not found\n"
            writer.write(f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError, UnicodeError):
            pass
        finally:
            writer.close()

    async def _post(self, method: str, headers: Mapping[str, str], reader: asyncio.StreamReader,
                    hook: Hook) -> tuple[int, str, bytes]:
        if method != "POST":
            return 405, "text/plain", b"POST only\n"
        length = headers.get("content-length")
        if length is None or not length.isdigit():
            return 411, "text/plain", b"Content-Length required\n"
        if int(length) > MAX_BODY:
            return 413, "text/plain", f"body over {MAX_BODY} bytes\n".encode()
        body = await asyncio.wait_for(reader.readexactly(int(length)), 10)
        status, text = hook(headers, body)
        return status, "text/plain", text.encode()
