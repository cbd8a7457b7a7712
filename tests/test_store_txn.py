"""The adapter builds each transaction's request in place (etcd/store.py `txn_request`): it must be,
byte for byte, the request that etcd3aio's own helpers build. Pure: only messages are compared;
every test that writes to a real etcd (test_apply_*, test_daemon, ...) sends them."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from etcd3aio._protobuf import Compare as PbCompare
from etcd3aio._protobuf import TxnRequest
from etcd3aio.kv import KVService
from etcdsync.etcd.store import Compare, Delete, Get, Op, Put, absent, created_at, mod_is, txn_request

_TARGET = {"mod": ("mod_revision", PbCompare.MOD), "version": ("version", PbCompare.VERSION),
           "create": ("create_revision", PbCompare.CREATE), "lease": ("lease", PbCompare.LEASE),
           "value": ("value", PbCompare.VALUE)}
_OP = {"=": PbCompare.EQUAL, "!=": PbCompare.NOT_EQUAL, "<": PbCompare.LESS, ">": PbCompare.GREATER}


def _reference(compares: list[Compare], success: list[Op], failure: list[Op]) -> Any:
    """The request as etcd3aio's helpers and KVService.txn build it."""
    def cmp(c: Compare) -> Any:
        field, target = _TARGET[c.target]
        value = c.value if c.target != "value" else (c.value if isinstance(c.value, bytes) else str(c.value).encode())
        return PbCompare(result=_OP[c.op], target=target, key=c.key.encode("utf-8", "surrogateescape"),
                         **{field: value})

    def op(o: Op) -> Any:
        key = o.key.encode("utf-8", "surrogateescape")
        if isinstance(o, Put):
            return KVService.txn_op_put(key, o.value, lease=o.lease)
        if isinstance(o, Delete):
            return KVService.txn_op_delete(key)
        return KVService.txn_op_get(key)

    return TxnRequest(compare=[cmp(c) for c in compares], success=[op(o) for o in success],
                      failure=[op(o) for o in failure])


KEYS = st.text(min_size=1, max_size=12)
COMPARES = st.one_of(
    st.builds(absent, KEYS), st.builds(mod_is, KEYS, st.integers(0, 2**62)), st.builds(created_at, KEYS, st.integers(0, 2**62)),
    st.builds(Compare, KEYS, st.just("value"), st.sampled_from(["=", "!="]), st.binary(max_size=8)),
    st.builds(Compare, KEYS, st.just("lease"), st.sampled_from(["=", ">", "<"]), st.integers(0, 2**62)),
)
OPS = st.one_of(st.builds(Put, KEYS, st.binary(max_size=16), st.one_of(st.just(0), st.integers(1, 2**62))),
                st.builds(Delete, KEYS), st.builds(Get, KEYS))


@settings(max_examples=300, deadline=None)
@given(st.lists(COMPARES, max_size=6), st.lists(OPS, max_size=6), st.lists(OPS, max_size=3))
def test_txn_request_is_the_request_etcd3aio_builds(compares: list[Compare], success: list[Op], failure: list[Op]) -> None:
    built = txn_request(compares, success, failure)
    assert built == _reference(compares, success, failure)
    assert built.SerializeToString(deterministic=True) == \
        _reference(compares, success, failure).SerializeToString(deterministic=True)


def test_a_surrogate_escaped_key_round_trips() -> None:
    key = b"/k/\xff".decode("utf-8", "surrogateescape")
    req = txn_request([absent(key)], [Put(key, b"v")])
    assert req.compare[0].key == b"/k/\xff" and req.success[0].request_put.key == b"/k/\xff"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=12), st.binary(max_size=12), st.integers(0, 2**62), st.integers(0, 2**62),
                          st.integers(0, 2**62), st.integers(0, 2**62)), max_size=8))
def test_a_page_is_decoded_as_each_key_alone(kvs: list[tuple[bytes, bytes, int, int, int, int]]) -> None:
    """`_kvs` (a page at once, as tuples) gives exactly the KeyValues `_kv` gives one by one, undecodable
    key bytes included (surrogate-escaped)."""
    from etcd3aio._protobuf import RangeResponse

    from etcdsync.etcd.store import KeyValue, _kv, _kvs

    resp = RangeResponse()
    for key, value, mod, create, version, lease in kvs:
        resp.kvs.add(key=key, value=value, mod_revision=mod, create_revision=create, version=version, lease=lease)
    page = _kvs(resp.kvs)
    assert page == [_kv(pb) for pb in resp.kvs]
    assert all(type(kv) is KeyValue for kv in page)
    assert [kv.key.encode("utf-8", "surrogateescape") for kv in page] == [k for k, *_ in kvs]
