"""An independent view of etcd for test assertions: etcd's own JSON gateway (`/v3/...`) over HTTP.

The checks must not go through etcdsync's adapter (a bug there would hide itself), so reads, writes
by "another client" and the event history recorder use plain HTTP + JSON against the server, which
serves the same API on its client port in etcd 3.4 and 3.5.
"""

from __future__ import annotations

import base64
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


def b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: str | bytes) -> bytes:
    """etcd's range end for "every key starting with prefix"."""
    raw = bytearray(prefix.encode() if isinstance(prefix, str) else prefix)
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\0"


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @staticmethod
    def from_json(kv: dict[str, Any]) -> KV:
        return KV(unb64(kv.get("key")).decode("utf-8", "surrogateescape"), unb64(kv.get("value")),
                  int(kv.get("create_revision", 0)), int(kv.get("mod_revision", 0)),
                  int(kv.get("version", 0)), int(kv.get("lease", 0)))


class Gateway:
    """Minimal client of etcd's JSON gateway, tried on each endpoint in turn."""

    def __init__(self, endpoints: list[str], *, user: str | None = None, password: str | None = None,
                 timeout: float = 10.0) -> None:
        self.endpoints = list(endpoints)
        self.user = user
        self.password = password
        self.timeout = timeout
        self._token: str | None = None

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.user is not None and self._token is None:
            self._token = self._authenticate()
        if self._token:
            headers["Authorization"] = self._token
        return headers

    def _authenticate(self) -> str:
        doc = self._post("/v3/auth/authenticate", {"name": self.user, "password": self.password}, auth=False)
        return str(doc["token"])

    def _post(self, path: str, body: dict[str, Any], *, auth: bool = True) -> dict[str, Any]:
        last: Exception | None = None
        for _attempt in range(2):  # a second time only after an expired auth token
            expired = False
            for ep in self.endpoints:
                headers = self._headers() if auth else {"Content-Type": "application/json"}
                req = urllib.request.Request(ep.rstrip("/") + path, data=json.dumps(body).encode(), headers=headers)
                try:
                    with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                        return json.loads(resp.read() or b"{}")  # type: ignore[no-any-return]
                except urllib.error.HTTPError as exc:
                    text = exc.read().decode(errors="replace")
                    last = RuntimeError(f"{ep}{path}: HTTP {exc.code} {text}")
                    if auth and self.user is not None and "token" in text:
                        self._token = None
                        expired = True
                        break
                except (OSError, http.client.HTTPException) as exc:
                    last = exc
            if not expired:
                break
        raise RuntimeError(f"etcd gateway {path}: {last}")

    # -- reads and writes ------------------------------------------------------------------

    def range(self, key: str, *, prefix: bool = False, revision: int = 0, serializable: bool = False,
              everything: bool = False) -> tuple[list[KV], int]:
        """Keys equal to `key`, or starting with it (`prefix`), or every key from it on (`everything`);
        `serializable`: answered by the member from its own state, without quorum."""
        body: dict[str, Any] = {"key": b64(key)}
        if prefix:
            body["range_end"] = b64(prefix_end(key))
        if everything:
            body["range_end"] = b64(b"\0")
        if revision:
            body["revision"] = revision
        if serializable:
            body["serializable"] = True
        doc = self._post("/v3/kv/range", body)
        return [KV.from_json(kv) for kv in doc.get("kvs", [])], int(doc["header"]["revision"])

    def get(self, key: str) -> KV | None:
        kvs, _ = self.range(key)
        return kvs[0] if kvs else None

    def put(self, key: str, value: bytes | str, *, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = lease
        return int(self._post("/v3/kv/put", body)["header"]["revision"])

    def delete(self, key: str, *, prefix: bool = False) -> tuple[int, int]:
        """(revision, number deleted)."""
        body: dict[str, Any] = {"key": b64(key)}
        if prefix:
            body["range_end"] = b64(prefix_end(key))
        doc = self._post("/v3/kv/deleterange", body)
        return int(doc["header"]["revision"]), int(doc.get("deleted", 0))

    def revision(self) -> int:
        return self.range("\0")[1]

    def compact(self, revision: int) -> None:
        self._post("/v3/kv/compaction", {"revision": revision, "physical": True})

    def lease_grant(self, ttl: int) -> int:
        return int(self._post("/v3/lease/grant", {"TTL": ttl})["ID"])

    def txn(self, puts: dict[str, bytes | str] | None = None, deletes: list[str] | None = None) -> int:
        """Unconditional puts and deletes in one transaction (one revision); returns that revision."""
        ops: list[dict[str, Any]] = [{"request_put": {"key": b64(k), "value": b64(v)}}
                                     for k, v in (puts or {}).items()]
        ops += [{"request_delete_range": {"key": b64(k)}} for k in deletes or ()]
        return int(self._post("/v3/kv/txn", {"success": ops})["header"]["revision"])

    # -- members ---------------------------------------------------------------------------

    def on(self, endpoint: str, *, timeout: float | None = None) -> Gateway:
        """The same client (credentials) against one member only."""
        g = Gateway([endpoint], user=self.user, password=self.password, timeout=timeout or self.timeout)
        g._token = self._token
        return g

    def status(self) -> dict[str, Any]:
        """`maintenance/status` of the first endpoint that answers: header.member_id, leader, raftIndex..."""
        return self._post("/v3/maintenance/status", {})

    def serializable_revision(self) -> int:
        """The revision this member has applied (no quorum needed)."""
        doc = self._post("/v3/kv/range", {"key": b64("\0"), "serializable": True})
        return int(doc["header"]["revision"])

    # -- watch -----------------------------------------------------------------------------

    def watch(self, endpoint: str, prefix: str, start_revision: int, *, read_timeout: float = 0.5
              ) -> Iterator[dict[str, Any] | None]:
        """Yield the gateway's watch responses for `prefix` from `start_revision`; None on a read timeout
        (so the caller can check whether to stop). Raises on a broken stream."""
        url = urllib.parse.urlsplit(endpoint)
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 2379, timeout=self.timeout)
        body = {"create_request": {"key": b64(prefix), "range_end": b64(prefix_end(prefix)),
                                   "start_revision": start_revision}}
        try:
            conn.request("POST", "/v3/watch", body=json.dumps(body), headers=self._headers())
            resp = conn.getresponse()
            if resp.status != 200:
                raise RuntimeError(f"watch {prefix}: HTTP {resp.status} {resp.read()[:200]!r}")
            assert conn.sock is not None
            conn.sock.settimeout(read_timeout)
            decoder = json.JSONDecoder()
            buf = ""
            while True:
                try:
                    chunk = resp.read1(65536)
                except TimeoutError:
                    yield None
                    continue
                if not chunk:
                    raise ConnectionError(f"watch {prefix}: stream ended")
                buf += chunk.decode("utf-8")
                while True:
                    buf = buf.lstrip()
                    if not buf:
                        break
                    try:
                        doc, end = decoder.raw_decode(buf)
                    except json.JSONDecodeError:
                        break
                    buf = buf[end:]
                    yield doc
        finally:
            conn.close()
