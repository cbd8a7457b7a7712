"""The one module that talks to etcd (through etcd3aio); everything else speaks these types.

It covers the client's known gaps: host names are resolved to IP literals, large ranges are read
in pages at one pinned revision (with a raised gRPC receive limit), mod_revision compares are built
here, raw gRPC errors are mapped onto etcdsync's error tree, an expired auth token is renewed once
and the call retried, and a watch that the server cancels for compaction raises `CompactedError`
instead of blocking. It talks to one endpoint at a time and fails over (see `Store`), waits for a
connection for up to a request's timeout, and checks every answer's header for a cluster that lost
its history (`ClusterChanged`).

(Over 350 lines on purpose: it is the only module allowed to import etcd3aio and grpc, so every gap
of the client it covers lives here; split, the client would leak into its siblings.)
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

import grpc
import grpc.aio
from etcd3aio import (
    Etcd3Client,
)
from etcd3aio import (
    EtcdConnectionError as _ClientConnectionError,
)
from etcd3aio import (
    EtcdError as _ClientError,
)
from etcd3aio import (
    EtcdPermissionDeniedError as _ClientPermissionDenied,
)
from etcd3aio import (
    EtcdTransientError as _ClientTransientError,
)
from etcd3aio import (
    EtcdUnauthenticatedError as _ClientUnauthenticated,
)
from etcd3aio import _protobuf as _pb  # watch streams are opened here (progress requests)
from etcd3aio._protobuf import Compare as _PbCompare  # compares are built by hand (no mod_revision helper)
from etcd3aio.kv import KVService, SortOrder, SortTarget, prefix_range_end

from ..errors import (
    AuthError,
    ClusterChanged,
    ClusterChangedError,
    CompactedError,
    EtcdConnectionError,
    EtcdsyncError,
    RequestTooLargeError,
    UsageError,
)
from ..settings import Connection

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_RECEIVE_BYTES = 512 * 1024 * 1024
PAGE_KEYS = 10_000
WATCH_LIVENESS = 1.0      # seconds between progress requests on a watch stream (one endpoint)
FAILOVER_LIVENESS = 0.25  # the same with several endpoints: silent after 0.75 s, then the next member
DEFAULT_PORT = 2379


class KeyValue(NamedTuple):
    """One key as read from etcd (a NamedTuple: 100,000 of them are built per large read)."""

    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    version: int
    lease: int = 0


class Seen(NamedTuple):
    """What a plan reads of one key (its value, mod_revision and lease): the compact form a large
    read keeps per key instead of a KeyValue."""

    value: bytes
    mod_revision: int
    lease: int = 0


class Compare(NamedTuple):
    """A transaction guard on one key. Build with the helpers below."""

    key: str
    target: str          # "mod" | "version" | "create" | "value" | "lease"
    op: str              # "=" | "!=" | "<" | ">"
    value: int | bytes


def mod_is(key: str, revision: int) -> Compare:
    """The key is unchanged since we saw it at `revision` (0: absent)."""
    if revision == 0:
        return absent(key)
    return Compare(key, "mod", "=", revision)


def absent(key: str) -> Compare:
    return Compare(key, "version", "=", 0)


def created_at(key: str, revision: int) -> Compare:
    return Compare(key, "create", "=", revision)


class Put(NamedTuple):
    key: str
    value: bytes
    lease: int = 0


class Delete(NamedTuple):
    key: str


class Get(NamedTuple):
    key: str


Op = Put | Delete | Get


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    gets: tuple[tuple[KeyValue, ...], ...] = ()   # results of the Get ops of the branch that ran


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str                 # "put" | "delete"
    kv: KeyValue              # for delete: key and mod_revision only
    prev: KeyValue | None = None


@dataclass(frozen=True, slots=True)
class WatchBatch:
    revision: int             # header revision of this response
    events: tuple[WatchEvent, ...]
    progress: bool = False    # an empty progress notification


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _s(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


# Loop iterations a request needs before it is on the wire: its task calls the stub (1), whose call is
# a task of its own that starts the gRPC batch (2); one more for margin. A page read ahead is not
# sent before these: a reader that decodes a page without yielding would only send it afterwards.
_SEND_STEPS = 3


def _retrieved(future: asyncio.Future[Any]) -> None:
    """A done callback for a request nobody awaits any more: its error, if any, is not logged as lost."""
    if not future.cancelled():
        future.exception()


def _kv(pb: Any) -> KeyValue:
    return KeyValue(_s(pb.key), bytes(pb.value), pb.mod_revision, pb.create_revision, pb.version, pb.lease)


def _kvs(pbs: Any) -> list[KeyValue]:
    """`_kv` of each message of a page, built as the tuples they are (no __new__ call per key)."""
    new = tuple.__new__
    return [new(KeyValue, (pb.key.decode("utf-8", "surrogateescape"), bytes(pb.value), pb.mod_revision,
                           pb.create_revision, pb.version, pb.lease)) for pb in pbs]


_TARGETS = {"mod": _PbCompare.MOD, "version": _PbCompare.VERSION, "create": _PbCompare.CREATE, "value": _PbCompare.VALUE,
            "lease": _PbCompare.LEASE}
_OPS = {"=": _PbCompare.EQUAL, "!=": _PbCompare.NOT_EQUAL, "<": _PbCompare.LESS, ">": _PbCompare.GREATER}


def txn_request(compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> Any:
    """The TxnRequest message of a transaction, built in place: each compare and operation is one
    element added to the request's own repeated fields, not a message built apart and copied in
    (etcd3aio's txn_op_* helpers and its txn() copy every operation twice: at 100,000 keys that was
    ~0.4 s of an apply)."""
    req = _pb.TxnRequest()
    add = req.compare.add
    for c in compares:
        pb = add()
        pb.result = _OPS[c.op]
        pb.target = _TARGETS[c.target]
        pb.key = _b(c.key)
        target = c.target
        if target == "mod":
            pb.mod_revision = int(c.value)
        elif target == "version":
            pb.version = int(c.value)
        elif target == "create":
            pb.create_revision = int(c.value)
        elif target == "lease":
            pb.lease = int(c.value)
        else:
            pb.value = c.value if isinstance(c.value, bytes) else _b(str(c.value))
    for ops, branch in ((success, req.success), (failure, req.failure)):
        add = branch.add
        for op in ops:
            if isinstance(op, Put):
                put = add().request_put
                put.key = _b(op.key)
                put.value = op.value
                if op.lease:
                    put.lease = op.lease
            elif isinstance(op, Delete):
                add().request_delete_range.key = _b(op.key)
            else:
                add().request_range.key = _b(op.key)
    return req


def parse_endpoint(endpoint: str) -> tuple[str, str, int]:
    """`http://h:p` / `https://h:p` / `h:p` / `h` -> (scheme, host, port)."""
    text = endpoint.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"endpoint {endpoint!r}: expected http://host:port or https://host:port")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise UsageError(f"endpoint {endpoint!r}: bad port") from None
    return parts.scheme, parts.hostname, port


def _resolve(host: str) -> str:
    """An IP literal for `host` (IPv4 preferred for names; IPv6 literals stay as they are)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if host == "localhost":
        return "127.0.0.1"
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise EtcdConnectionError(f"endpoint {host}: cannot resolve host name ({exc.strerror})") from None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return str(infos[0][4][0])


def grpc_target(address: str, port: int) -> str:
    """gRPC's name for one address: `ipv4:10.0.0.1:2379` or `ipv6:[::1]:2379`."""
    if ipaddress.ip_address(address).version == 6:
        return f"ipv6:[{address}]:{port}"
    return f"ipv4:{address}:{port}"


@dataclass(slots=True)
class _Endpoint:
    """One etcd member as the store reaches it: its own gRPC channel, made when first used."""

    url: str
    scheme: str
    host: str
    target: str
    client: Etcd3Client | None = None
    failed_at: float = -1.0


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise UsageError(f"{what} {path}: {exc.strerror}") from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details() or ''}".rstrip(": ")
    return str(exc) or type(exc).__name__


class Store:
    """An open connection to etcd. Use `async with Store(conn) as store:`.

    Like etcd's own Go client it talks to one endpoint at a time (pinned; a random one at first, so
    that many clients spread over the members) and moves to the next one when a request fails to
    reach it, a try gets no answer, or a watch stream on it falls silent. It stays on the endpoint
    that works: a member that comes back gets clients again only as others move, never all at once.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._endpoints: list[_Endpoint] = []
        self._pinned = 0
        self._token: str | None = None
        self._tls: dict[str, bytes | None] | None = None
        self._auth_lock = asyncio.Lock()
        self._token_generation = 0
        self._revision = 0               # highest revision seen in a linearizable answer
        self._cluster_id = 0
        self._change: ClusterChangedError | None = None
        self._changes = 0
        self.on_cluster_change: list[Callable[[ClusterChangedError], None]] = []
        """Called (on the event loop) with the ClusterChangedError when a change of cluster is detected."""
        self._target = ",".join(conn.endpoints)
        self._keepalives: dict[int, _KeepAliveStream] = {}

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Store:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        conn = self.conn
        endpoints = []
        for ep in conn.endpoints:
            scheme, host, port = parse_endpoint(ep)
            endpoints.append(_Endpoint(ep, scheme, host, grpc_target(_resolve(host), port)))
        tls = any(e.scheme == "https" for e in endpoints) or conn.ca_cert is not None
        self._tls = None
        if tls:
            self._tls = {"ca_cert": _read(conn.ca_cert, "cacert") if conn.ca_cert else _system_roots()}
            if conn.cert and conn.key:
                self._tls["cert_chain"] = _read(conn.cert, "cert")
                self._tls["cert_key"] = _read(conn.key, "key")
        await self.close()
        self._endpoints = endpoints
        self._pinned = random.randrange(len(endpoints))
        self._token = None
        await self._open(self._endpoints[self._pinned])
        if conn.user:
            try:
                await self._authenticate()
            except BaseException:
                await self.close()
                raise

    async def _open(self, ep: _Endpoint) -> Etcd3Client:
        if ep.client is not None:
            return ep.client
        server_name = ep.host if self._tls is not None else None
        client = Etcd3Client([ep.target], rpc_max_attempts=1, tls_server_name=server_name, **(self._tls or {}))  # type: ignore[arg-type]
        client._manager.target = ep.target        # "ipv6:[::1]:2379" as well as "ipv4:..."
        # etcd answers large ranges in one message; gRPC's default 4 MiB receive limit is too small.
        # notice a dead or paused member within ~7 s (etcd refuses pings more often than every 5 s)
        client._manager.grpc_options[:] = [
            (k, v) for k, v in client._manager.grpc_options if k not in ("grpc.keepalive_time_ms", "grpc.keepalive_timeout_ms")
        ]
        client._manager.grpc_options.extend([
            ("grpc.keepalive_time_ms", 5000),
            ("grpc.keepalive_timeout_ms", 2000),
            ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
            # reconnect quickly when etcd comes back (gRPC's default backoff grows to 120 s)
            # (not grpc.min_reconnect_backoff_ms: it is also the time a connection attempt may take,
            # and at 100 ms a paused etcd - TCP open, handshake pending - failed requests at once)
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ])
        await client.connect()
        if self._token:
            client.set_token(self._token)
        ep.client = client
        return client

    async def close(self) -> None:
        for stream in self._keepalives.values():
            stream.call.cancel()
        self._keepalives.clear()
        endpoints, self._endpoints = self._endpoints, []
        for ep in endpoints:
            if ep.client is not None:
                client, ep.client = ep.client, None
                await client.close()

    @property
    def client(self) -> Etcd3Client:
        """The client of the pinned endpoint."""
        if not self._endpoints:
            raise RuntimeError("store is not connected")
        client = self._endpoints[self._pinned].client
        assert client is not None
        return client

    @property
    def _kv(self) -> KVService:
        kv = self.client.kv
        assert kv is not None
        return kv

    @property
    def _lease(self) -> Any:
        lease = self.client.lease
        assert lease is not None
        return lease

    @property
    def changes(self) -> int:
        """How many times this store saw etcd's history replaced (revision backwards, new cluster id):
        revisions seen before a change are void after it."""
        return self._changes

    @property
    def endpoint(self) -> str:
        """The endpoint requests go to now."""
        return self._endpoints[self._pinned].url if self._endpoints else ""

    async def _failover(self, pinned: int, why: str) -> None:
        """The endpoint `pinned` failed: move to the endpoint that failed longest ago (never one
        that has not been tried counts as oldest), unless another request already moved."""
        if len(self._endpoints) < 2 or pinned != self._pinned:
            return
        loop = asyncio.get_running_loop()
        here = self._endpoints[pinned]
        here.failed_at = loop.time()
        n = len(self._endpoints)
        order = [(pinned + i) % n for i in range(1, n)]
        nxt = min(order, key=lambda i: self._endpoints[i].failed_at)
        target = self._endpoints[nxt]
        await self._open(target)
        if pinned == self._pinned:
            self._pinned = nxt
            # a move to an endpoint that failed too within the timeout is the round of tries while
            # every endpoint fails: said once, not once per try
            recent = target.failed_at and loop.time() - target.failed_at < self.conn.timeout
            log.log(logging.DEBUG if recent else logging.INFO, "etcd %s: %s; using %s", here.url,
                    why.removeprefix(f"etcd {self._target}: "), target.url)

    async def _authenticate(self) -> None:
        """Get a new token. The request goes without the old token: etcd 3.4 refuses an Authenticate
        that carries an expired simple token ("invalid auth token") before it looks at the password."""
        assert self.conn.user is not None
        request = _pb.AuthenticateRequest(name=self.conn.user, password=self.conn.password or "")

        async def once() -> Any:
            channel = self.client._channel
            assert channel is not None
            return await _pb.AuthStub(channel).Authenticate(request, timeout=self.conn.timeout)

        resp = await self._call("authenticate", once, renew=False)
        self._token = resp.token
        for ep in self._endpoints:
            if ep.client is not None:
                ep.client.set_token(resp.token)
        self._token_generation += 1

    async def _renew_token(self, seen_generation: int) -> None:
        """Authenticate again unless another request already did since `seen_generation`."""
        async with self._auth_lock:
            if self._token_generation == seen_generation:
                log.info("etcd %s: auth token expired or unknown; authenticating again as %r",
                         self._target, self.conn.user)
                await self._authenticate()

    # -- cluster identity ----------------------------------------------------------

    def _observe(self, header: Any, floor: int | None) -> None:
        """Check a response header against what was seen: a new cluster id, or a revision below
        `floor` (for linearizable answers: the highest revision seen before the request was sent;
        answers to concurrent requests may arrive in any order), is a change of cluster."""
        cluster_id, rev = int(header.cluster_id), int(header.revision)
        change = None
        if self._cluster_id and cluster_id and cluster_id != self._cluster_id:
            change = (f"etcd {self.endpoint}: the cluster id changed from {self._cluster_id:x} to {cluster_id:x} "
                      f"(cluster rebuilt or restored; revision {self._revision} -> {rev})")
        elif floor is not None and rev and rev < floor:
            change = (f"etcd {self.endpoint}: the revision went backwards from {floor} to {rev} "
                      "(data wiped or restored from an older snapshot)")
        if change is not None:
            self._record_change(change, old_revision=floor or self._revision, new_revision=rev,
                                old_cluster_id=self._cluster_id, new_cluster_id=cluster_id or self._cluster_id)
        elif floor is not None:
            self._revision = max(self._revision, rev)
        if cluster_id:
            self._cluster_id = cluster_id

    def _record_change(self, message: str, **ids: int) -> ClusterChanged:
        log.warning("%s; everything read before is void", message)
        change = ClusterChanged(message, **ids)
        self._change = change
        self._changes += 1
        self._revision = ids["new_revision"]      # the new history starts here
        for callback in list(self.on_cluster_change):
            try:
                callback(change)
            except Exception:  # noqa: BLE001 - a listener's bug must not break the request
                log.exception("cluster change listener %r raised", callback)
        return change

    # -- error mapping -------------------------------------------------------------

    def _map(self, exc: BaseException, what: str) -> EtcdsyncError:
        text = _describe(exc)
        low = text.lower()
        if "too many operations in txn" in low or "request is too large" in low or "message larger than max" in low:
            return RequestTooLargeError(f"{what}: {text}")
        if "required revision has been compacted" in low:
            return CompactedError(f"{what}: {text}", 0)
        if "authentication failed" in low:       # etcd answers INVALID_ARGUMENT
            return AuthError(f"etcd {self._target}: authentication failed for user {self.conn.user!r} "
                             "(wrong user name or password)")
        if "authentication is not enabled" in low or "auth: not enabled" in low:
            return AuthError(f"etcd {self._target}: authentication is not enabled on etcd; "
                             "drop --user/--password or enable auth")
        if isinstance(exc, _ClientPermissionDenied) or "permission denied" in low:
            return AuthError(f"etcd {self._target}: {what}: permission denied for user {self.conn.user!r}")
        if isinstance(exc, _ClientUnauthenticated) or "user name is empty" in low or (
                isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.UNAUTHENTICATED):
            return AuthError(f"etcd {self._target}: {what}: not authenticated ({text}); pass --user/--password")
        tls = _tls_problem(low, self._endpoints[self._pinned].scheme if self._endpoints else "http",
                           self.conn.cert is not None)
        if tls is not None:
            return EtcdConnectionError(f"etcd {self.endpoint}: {tls}")
        if isinstance(exc, (_ClientConnectionError, _ClientTransientError)) or (
            isinstance(exc, grpc.aio.AioRpcError) and exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        ):
            return EtcdConnectionError(f"etcd {self._target}: unreachable ({_short(text)})")
        return EtcdConnectionError(f"etcd {self._target}: {what} failed: {_short(text)}")

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]], *, renew: bool = True,
                    linearizable: bool = False) -> T:
        """Run one request within the connection timeout, with mapped errors and one token renewal.

        The timeout covers connecting too: while etcd is unreachable (refused, restarting, paused
        during the TLS or HTTP/2 handshake) the request is tried again, with a short backoff, until
        its timeout is spent; only then does it fail. TLS refusals fail at once (waiting cannot fix a
        certificate). With several endpoints the timeout is split into up to three tries, and a try
        that fails to reach its endpoint or gets no answer (a paused or partitioned member keeps
        TCP open) moves the store to the next endpoint. A retried transaction is safe: its compares
        fail if the first try did commit after all. The header of every answer is checked for a
        change of cluster (`linearizable`: also its revision).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.conn.timeout
        tries = max(1, min(3, len(self._endpoints)))
        per_try = self.conn.timeout / tries
        renewed = not renew
        backoff = 0.05
        moves = 0              # moves to another endpoint since the last wait
        unreachable: EtcdsyncError | None = None
        while True:
            generation = self._token_generation
            pinned = self._pinned
            remaining = deadline - loop.time()
            floor = self._revision if linearizable else None
            changes = self._changes
            try:
                async with asyncio.timeout(max(0.01, min(per_try, remaining))):
                    result = await fn()
                header = getattr(result, "header", None)
                if header is not None:
                    self._observe(header, floor if changes == self._changes else None)
                return result
            except TimeoutError:
                await self._failover(pinned, f"{what}: no answer within {min(per_try, remaining):.2g}s")
                if deadline - loop.time() > 0.05:
                    log.debug("%s: no answer within %.2fs, trying again", what, per_try)
                    continue
                if unreachable is not None:
                    raise unreachable from None
                raise EtcdConnectionError(
                    f"etcd {self._target}: {what}: no answer within {self.conn.timeout:g}s"
                ) from None
            except (_ClientError, grpc.aio.AioRpcError) as exc:
                text = _describe(exc).lower()
                if not renewed and self.conn.user and _token_problem(text):
                    renewed = True
                    await self._renew_token(generation)
                    continue
                mapped = self._map(exc, what)
                retryable = _retryable(exc, mapped)
                if retryable:
                    await self._failover(pinned, str(mapped))
                wait = min(backoff, deadline - loop.time() - 0.05)
                if retryable and wait > 0:
                    unreachable = mapped
                    moves += self._pinned != pinned
                    # the same endpoint again, or every endpoint refused in a row: give it a moment
                    if self._pinned == pinned or moves >= len(self._endpoints):
                        log.debug("%s: %s; trying again in %.2fs", what, mapped, wait)
                        await asyncio.sleep(wait)
                        backoff = min(backoff * 2, 0.5)
                        moves = 0
                    else:
                        log.debug("%s: %s; trying the next endpoint", what, mapped)
                    continue
                raise mapped from exc

    # -- reads ---------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        resp = await self._call("get", linearizable=True, fn=lambda: self._kv.get(_b(key), timeout=self.conn.timeout))
        return _kv(resp.kvs[0]) if resp.kvs else None

    async def revision(self) -> int:
        resp = await self._call("get", linearizable=True, fn=lambda: self._kv.get(b"\x00", count_only=True, timeout=self.conn.timeout))
        return int(resp.header.revision)

    async def cluster_id(self) -> str:
        """etcd's cluster id as 16 hex digits, from the headers of its answers (one request when none
        was seen yet): what a saved plan records, so that it is applied to the cluster it was made for."""
        if not self._cluster_id:
            await self.revision()
        return f"{self._cluster_id:016x}"

    async def latest_mod_revision(self, prefix: str) -> tuple[int, int]:
        """(highest mod_revision of any key under `prefix` or 0, current revision): the watch watchdog's probe."""
        resp = await self._call("range", linearizable=True, fn=lambda: self._kv.get(
            _b(prefix), range_end=prefix_range_end(_b(prefix)), limit=1, keys_only=True,
            sort_order=SortOrder.DESCEND, sort_target=SortTarget.MOD, timeout=self.conn.timeout))
        return (int(resp.kvs[0].mod_revision) if resp.kvs else 0), int(resp.header.revision)

    async def get_prefix(self, prefix: str, *, revision: int = 0, page: int = PAGE_KEYS) -> tuple[list[KeyValue], int]:
        """All keys under `prefix` at one revision (paged), and that revision."""
        return await self.get_range(prefix, _s(prefix_range_end(_b(prefix))), revision=revision, page=page)

    async def get_range(self, start: str, end: str, *, revision: int = 0, page: int = PAGE_KEYS) -> tuple[list[KeyValue], int]:
        out: list[KeyValue] = []
        rev = revision
        async for items, at in self.pages(start, end, revision=revision, page=page):
            out.extend(items)
            rev = at
        return out, rev

    def pages_of(self, prefix: str, *, revision: int, page: int = PAGE_KEYS) -> AsyncIterator[tuple[list[KeyValue], int]]:
        """`pages` of every key under `prefix`."""
        return self.pages(prefix, _s(prefix_range_end(_b(prefix))), revision=revision, page=page)

    async def pages(self, start: str, end: str, *, revision: int = 0,
                    page: int = PAGE_KEYS) -> AsyncIterator[tuple[list[KeyValue], int]]:
        """The keys in [start, end) at one revision, one page (at most `page` keys) at a time, each
        with that revision (the first page's, when `revision` is 0). A caller that keeps a compact
        form of each page never holds a whole large read as KeyValues (or their protobufs) at once.

        The next page is asked for (and sent: see _SEND_STEPS) before this one is decoded and handed
        over, so etcd serves it while the caller works on this one: at most the next page's protobuf
        is held besides the caller's page. Left early, the request is cancelled."""
        range_end = _b(end)
        rev = revision

        def ask(key: bytes) -> Awaitable[Any]:
            return self._call("range", linearizable=True, fn=lambda: self._kv.get(
                key, range_end=range_end, revision=rev, limit=page, timeout=self.conn.timeout))

        ahead: asyncio.Future[Any] | None = None
        try:
            resp = await ask(_b(start))
            if rev == 0:
                rev = int(resp.header.revision)
            while True:
                kvs = resp.kvs
                more = bool(resp.more) and bool(kvs)
                if more:     # asked before this page is decoded: etcd works on it meanwhile
                    ahead = asyncio.ensure_future(ask(kvs[len(kvs) - 1].key + b"\x00"))
                    for _ in range(_SEND_STEPS):
                        await asyncio.sleep(0)
                items = _kvs(kvs)
                del resp, kvs                              # the page's protobuf goes before the caller runs
                yield items, rev
                if not more:
                    return
                assert ahead is not None
                resp, ahead = await ahead, None
        finally:
            if ahead is not None:       # left before the next page was read: nobody will await it
                ahead.cancel()
                ahead.add_done_callback(_retrieved)

    # -- writes --------------------------------------------------------------------

    async def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        request = txn_request(compares, success, failure)
        # KVService.txn would copy every operation into a new request: send this one as it is, through
        # the same call (error mapping, auth metadata, one attempt: _call retries) that txn() makes.
        resp = await self._call("txn", linearizable=True, fn=lambda: self._kv._rpc(
            self._kv._stub.Txn, request, operation="KV.Txn", timeout=self.conn.timeout, max_attempts=1))
        gets = tuple(
            tuple(_kv(item) for item in r.response_range.kvs)
            for r in resp.responses
            if r.WhichOneof("response") == "response_range"
        )
        return TxnResult(bool(resp.succeeded), int(resp.header.revision), gets)

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        resp = await self._call("put", linearizable=True, fn=lambda: self._kv.put(_b(key), value, lease=lease, timeout=self.conn.timeout))
        return int(resp.header.revision)

    async def delete(self, key: str) -> bool:
        resp = await self._call("delete", linearizable=True, fn=lambda: self._kv.delete(_b(key), timeout=self.conn.timeout))
        return bool(resp.deleted)

    async def delete_prefix(self, prefix: str) -> int:
        resp = await self._call("delete", linearizable=True, fn=lambda: self._kv.delete(_b(prefix), range_end=prefix_range_end(_b(prefix)), timeout=self.conn.timeout)
        )
        return int(resp.deleted)

    async def compact(self, revision: int) -> None:
        await self._call("compact", linearizable=True, fn=lambda: self._kv.compact(revision, physical=True, timeout=self.conn.timeout))

    # -- leases --------------------------------------------------------------------

    async def lease_grant(self, ttl: int) -> int:
        resp = await self._call("lease grant", lambda: self._lease.grant(ttl, timeout=self.conn.timeout))
        return int(resp.ID)

    async def lease_revoke(self, lease_id: int) -> None:
        stream = self._keepalives.pop(lease_id, None)
        if stream is not None:
            stream.call.cancel()
        try:
            await self._call("lease revoke", lambda: self._lease.revoke(lease_id, timeout=self.conn.timeout))
        except EtcdConnectionError as exc:
            if "not found" not in str(exc):
                raise

    async def lease_keepalive(self, lease_id: int) -> int:
        """Renew a lease once; its new TTL in seconds, or 0 when it no longer exists.

        Each lease has one keepalive stream, opened at its first renewal and kept for the next ones
        (opening a stream per renewal cost most of the CPU of a process holding many leases); it is
        opened anew after a failure, on another endpoint or with a new token, and closed by
        `lease_revoke` and `close`."""

        async def once() -> int:
            stream = self._keepalives.get(lease_id)
            channel = self.client._channel
            if stream is not None and (stream.channel is not channel or stream.generation != self._token_generation):
                stream.call.cancel()
                stream = None
            if stream is None:
                assert channel is not None and self.client.lease is not None
                call = _pb.LeaseStub(channel).LeaseKeepAlive(metadata=self.client.lease._metadata or None)
                stream = self._keepalives[lease_id] = _KeepAliveStream(call, channel, self._token_generation)
            async with stream.lock:
                read: asyncio.Future[Any] | None = None
                try:
                    try:
                        await stream.call.write(_pb.LeaseKeepAliveRequest(ID=lease_id))
                    except asyncio.InvalidStateError:       # the stream has ended (no error status)
                        raise _ClientConnectionError("lease keepalive stream closed") from None
                    # not wait_for(call.read()): see `watch`
                    read = asyncio.ensure_future(stream.call.read())
                    await asyncio.wait({read})
                    resp, read = read.result(), None
                    if resp is grpc.aio.EOF:
                        raise _ClientConnectionError("lease keepalive stream closed by etcd")
                    return int(resp.TTL)
                except BaseException:
                    if self._keepalives.get(lease_id) is stream:
                        del self._keepalives[lease_id]
                    stream.call.cancel()
                    if read is not None:
                        if not read.done():
                            read.cancel()
                        read.add_done_callback(_retrieve)
                    raise

        return await self._call("lease keepalive", once)

    async def lease_ttl(self, lease_id: int) -> int:
        """Remaining seconds of a lease; -1 when it no longer exists."""
        resp = await self._call("lease ttl", lambda: self._lease.time_to_live(lease_id, timeout=self.conn.timeout))
        return int(resp.TTL)

    # -- watches -------------------------------------------------------------------

    def watch_prefix(self, prefix: str, *, start_revision: int, progress_notify: bool = True) -> AsyncIterator[WatchBatch]:
        """Events under `prefix` from `start_revision` on; raises CompactedError when it was compacted."""
        return self.watch(prefix, prefix=True, start_revision=start_revision, progress_notify=progress_notify)

    async def watch(self, key: str, *, prefix: bool = False, start_revision: int,
                    progress_notify: bool = True, liveness: float | None = WATCH_LIVENESS) -> AsyncIterator[WatchBatch]:
        """Events on `key` (or under it with prefix=True) from `start_revision` on.

        One gRPC stream per call, opened here rather than through the client's watch helper so that
        it can be checked: every `liveness` seconds a progress request goes down the stream, and if
        nothing at all comes back within `liveness` + 2 seconds the stream is declared silent (a
        paused or partitioned member keeps TCP open; gRPC keepalives alone take ~7 s) and an
        EtcdConnectionError is raised. With several endpoints the checks are tighter (every 0.25 s,
        silent after 0.75 s): another member can take over, and drift repair waits for the move. Progress answers also carry the revision up to which
        everything was delivered. A compacted start revision raises CompactedError. A silent,
        closed or failed stream also moves the store to its next endpoint. The caller resumes from
        the last revision it saw.

        Every answer's header is checked: when the cluster id changed, or the revision is below the
        one the watch waits for and a linearizable read confirms that it went backwards, the watch
        raises ClusterChanged (a ClusterChangedError that is also a CompactedError): the caller
        re-reads everything and watches from the new revision.
        """
        deadline: float | None = None
        if liveness is not None and len(self._endpoints) > 1:
            # another member can take over: notice a paused or partitioned one within 0.75 s (drift
            # repair waits for it); alone, a stall of a loaded etcd is not worth a warning
            liveness = min(liveness, FAILOVER_LIVENESS)
            deadline = 3 * liveness
        elif liveness is not None:
            deadline = liveness + 2.0
        channel = self.client._channel
        assert channel is not None and self.client.watch is not None
        metadata = self.client.watch._metadata or None
        range_end = prefix_range_end(_b(key)) if prefix else b""
        create = _pb.WatchCreateRequest(key=_b(key), range_end=range_end, start_revision=start_revision,
                                        progress_notify=progress_notify)

        async def requests() -> AsyncIterator[Any]:
            yield _pb.WatchRequest(create_request=create)
            while True:
                if liveness is None:
                    await asyncio.Future()
                else:
                    await asyncio.sleep(liveness)
                    yield _pb.WatchRequest(progress_request=_pb.rpc_pb2.WatchProgressRequest())  # type: ignore[attr-defined]

        generation = self._token_generation
        pinned = self._pinned
        changes = self._changes
        floor = max(start_revision - 1, self._revision)    # what was seen before this stream opened
        loop = asyncio.get_running_loop()
        confirmed = -1.0
        call = _pb.WatchStub(channel).Watch(requests(), metadata=metadata)
        read: asyncio.Future[Any] | None = None
        try:
            while True:
                # not wait_for(call.read()): cancelled, it waits for the read to finish cancelling,
                # and a gRPC read may only finish once the call is cancelled (in `finally` below):
                # under load, closing a watch hung forever
                read = asyncio.ensure_future(call.read())
                done, _ = await asyncio.wait({read}, timeout=deadline)
                if not done:
                    why = f"watch {key}: stream silent for {deadline:g}s (member paused or partitioned)"
                    await self._failover(pinned, why)
                    raise EtcdConnectionError(f"{why}; resuming {'elsewhere' if len(self._endpoints) > 1 else 'when it answers'}"
                                              ) from None
                resp, read = read.result(), None
                if resp is grpc.aio.EOF:
                    await self._failover(pinned, f"watch {key}: stream closed")
                    raise EtcdConnectionError(f"watch {key}: stream closed by etcd")
                self._observe(resp.header, None)
                rev = int(resp.header.revision)
                if self._changes == changes and rev < floor and loop.time() - confirmed > 1.0:
                    # this member is behind what was seen: a lagging member, or a cluster that lost
                    # data; a linearizable read tells them apart (and records a change if any)
                    confirmed = loop.time()
                    current = None
                    with contextlib.suppress(EtcdConnectionError):
                        current = await self.revision()
                    if current is not None and current < start_revision - 1 and self._changes == changes:
                        # the caller saw a revision this cluster does not have (its own reads may
                        # have noticed the change before this watch was opened, or never)
                        self._record_change(
                            f"etcd {self.endpoint}: the revision went backwards: a watch resumes after revision "
                            f"{start_revision - 1} but etcd is at {current} (data wiped or restored from an older "
                            "snapshot)", old_revision=start_revision - 1, new_revision=current,
                            old_cluster_id=self._cluster_id, new_cluster_id=self._cluster_id)
                if self._changes != changes and self._change is not None:
                    raise ClusterChanged(f"watch {key}: {self._change}", old_revision=self._change.old_revision,
                                         new_revision=self._change.new_revision,
                                         old_cluster_id=self._change.old_cluster_id,
                                         new_cluster_id=self._change.new_cluster_id)
                if resp.compact_revision > 0:
                    raise CompactedError(f"watch {key}: revision {start_revision} was compacted "
                                         f"(oldest kept: {resp.compact_revision})", int(resp.compact_revision))
                if resp.canceled:
                    reason = resp.cancel_reason or "no reason"
                    if "permission denied" in reason.lower() or "auth" in reason.lower():
                        # etcd 3.5 cancels a watch opened with an expired token as "permission
                        # denied": get a new token, so that the caller's resumed watch is accepted
                        if self.conn.user:
                            with contextlib.suppress(EtcdsyncError):
                                await self._renew_token(generation)
                        raise AuthError(f"watch {key}: canceled by etcd ({reason})")
                    raise EtcdConnectionError(f"watch {key}: canceled by etcd ({reason})")
                events = tuple(WatchEvent("put" if ev.type == 0 else "delete", _kv(ev.kv)) for ev in resp.events)
                if resp.created and not events:
                    continue
                yield WatchBatch(rev, events, progress=not events)
        except (grpc.aio.AioRpcError, _ClientError) as exc:
            mapped = self._map(exc, f"watch {key}")
            if isinstance(mapped, AuthError) and self.conn.user:
                # an expired token: renew it so that the caller's resumed watch is accepted
                with contextlib.suppress(EtcdsyncError):
                    await self._renew_token(generation)
            elif _retryable(exc, mapped):
                await self._failover(pinned, str(mapped))
            raise mapped from exc
        finally:
            call.cancel()
            if read is not None:   # also when it finished just as we were cancelled: collect its error
                if not read.done():
                    read.cancel()
                read.add_done_callback(_retrieve)


@dataclass(eq=False)
class _KeepAliveStream:
    """The open keepalive stream of one lease: renewals are written and answered one at a time."""

    call: Any
    channel: Any
    generation: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark an abandoned future's outcome as seen (no 'exception was never retrieved' noise)."""
    if not fut.cancelled():
        fut.exception()


def _retryable(exc: BaseException, mapped: EtcdsyncError) -> bool:
    """A failure to reach etcd that may pass within the request's timeout (not a TLS refusal)."""
    return type(mapped) is EtcdConnectionError and "unreachable" in str(mapped)


def _tls_problem(low: str, scheme: str, client_cert: bool) -> str | None:
    """A TLS or protocol mismatch, in words a person can act on; None when it is none of those."""
    if ("peer name" in low and "not in peer certificate" in low) or "hostname verification" in low:
        return ("TLS: the server's certificate does not name this host (host name mismatch); connect by a name "
                "or address listed in the certificate")
    if "certificate_verify_failed" in low or "certificate verify failed" in low or "unable to get local issuer" in low \
            or "self signed certificate" in low or "self-signed certificate" in low:
        return "TLS: the server's certificate is signed by an unknown authority; pass the CA that signed it (--cacert)"
    if any(w in low for w in ("alert_bad_certificate", "alert bad certificate", "alert_unknown_ca", "alert unknown ca",
                              "certificate_unknown", "certificate required", "alert_certificate_required",
                              "tsi_data_corrupted")):
        # etcd 3.5 (TLS 1.3) says so in an alert; 3.4 (TLS 1.2) breaks the connection after the handshake
        if client_cert:
            return "TLS: the server refused the client certificate (not signed by a CA it trusts); check --cert/--key"
        return "TLS: the server requires a client certificate; pass --cert and --key"
    if "wrong_version_number" in low or "wrong version number" in low or "packet_length_too_long" in low \
            or (scheme == "https" and "handshake read failed" in low):
        return "TLS: the endpoint speaks plain HTTP, not TLS; use an http:// endpoint (without --cacert)"
    if "ssl" in low or "handshake" in low:
        return f"TLS handshake failed ({_short(low)})"
    if "failed parsing http/2" in low or "expected settings frame" in low:
        # an HTTP/1 server (a metrics port, another service): waiting will not make it speak gRPC
        return ("not etcd's client port: an HTTP/1 server answered, not gRPC (a metrics port or another "
                "service?); etcd's clients connect to its --listen-client-urls (port 2379 by default)")
    return None


def _token_problem(text: str) -> bool:
    return "invalid auth token" in text or ("token" in text and "expired" in text) or "unauthenticated" in text


def _short(text: str) -> str:
    """The useful part of a gRPC error text."""
    low = text.lower()
    for needle, say in (("connection refused", "connection refused"), ("deadline", "timed out"),
                        ("timed out", "timed out"), ("ssl", "TLS handshake failed"),
                        ("handshake", "TLS handshake failed"), ("certificate", "TLS certificate rejected"),
                        ("no route to host", "no route to host"), ("connection reset", "connection reset")):
        if needle in low:
            return say
    if "socket closed" in low:
        # what a plain-HTTP client sees from a TLS port (and also from an etcd going down)
        return "connection closed by the server (etcd stopping, or a TLS port: then use https:// and --cacert)"
    line = text.splitlines()[0] if text else text
    return line[:300]


def _system_roots() -> bytes | None:
    for path in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"):
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except OSError:
            continue
    return None
