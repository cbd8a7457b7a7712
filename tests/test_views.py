"""Config views (`cfg.view(prefix)`), apply markers, the cache file, typed reads and `cfg.update`,
against real etcd."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, Env, wait_for
from history import Recorder, recorder

from etcdsync import ConfigStore, ConfigValueError, ConflictError, Connection, EtcdConnectionError
from etcdsync.aio import AsyncConfigStore, _Client
from etcdsync.local.etcdbin import EtcdCluster
from etcdsync.viewcore import Gate, Snapshot, decode_cache, encode_marker, marker_prefix, overlaps
from etcdsync.views import AsyncView, ViewChange

# -- pure parts ----------------------------------------------------------------------------------


def test_gate_publishes_only_outside_markers() -> None:
    g = Gate()
    g.reset(10, {})
    assert g.covered(10) is False and g.covered(11) is None
    g.put("m1", 12, 12, overlapping=True)          # an apply marked at 12
    assert g.covered(12) is False, "the marker's own revision is the state before the apply"
    assert g.covered(13) is None and g.live()
    g.delete("m1", 20)                              # ... and unmarked at 20
    assert [g.covered(r) for r in (11, 12, 13, 19, 20)] == [False, False, True, True, False]
    assert not g.live()
    g.put("other", 25, 25, overlapping=False)       # an apply under another prefix
    assert g.covered(25) is False and not g.live()
    g.learn(30, {"m2": 28})                         # a pinned read at 30 finds a marker made at 28
    assert g.covered(29) is True and g.live()
    g.learn(40, {})                                 # gone by 40: taken as ended at 40 (holding longer is safe)
    assert g.covered(39) is True and g.covered(40) is False
    g.put("m3", 41, 41, overlapping=True)
    assert g.give_up() == ["m3"]
    assert g.covered(41) is False and not g.live(), "a marker given up on holds nothing back"
    g.forget_before(40)
    assert set(g.markers) == {"m3"}
    g.delete("m1", 35)                              # old news (at or below what is known) changes nothing
    assert g.known == 41


def test_marker_overlap_and_shape() -> None:
    value = encode_marker("web", {"/config/web/", "/config/api/"})
    assert json.loads(value) == {"v": 1, "applyset": "web", "prefixes": ["/config/api/", "/config/web/"]}
    assert overlaps("/config/web/", value) and overlaps("/config/", value) and overlaps("/config/web/db/", value)
    assert not overlaps("/config/other/", value)
    assert overlaps("/anything/", b"garbage"), "a marker that cannot be read holds everything back"
    huge = encode_marker("big", {f"/p{i:05d}/" for i in range(10_000)})
    assert json.loads(huge)["prefixes"] == [""] and overlaps("/x/", huge)
    assert marker_prefix("/.etcdsync/") == "/.etcdsync/applying/"


def test_typed_reads_and_their_errors() -> None:
    s = Snapshot({"/c/n": " 42 ", "/c/neg": "-7", "/c/f": "1.5", "/c/b": "Yes", "/c/off": "off", "/c/j": '{"a": [1, 2]}',
                  "/c/bad": "{nope", "/c/tok": "s3cr3t-value", "/c/empty": ""}, 5)
    assert s.get_int("/c/n") == 42 and s.get_int("/c/neg") == -7
    assert s.get_bool("/c/b") is True and s.get_bool("/c/off") is False
    assert s.get_json("/c/j") == {"a": [1, 2]}
    assert s.get_int("/c/absent") is None and s.get_int("/c/absent", default=3) == 3
    assert s.get_json("/c/absent", default={"x": 1}) == {"x": 1} and s.get_bool("/c/absent", False) is False
    with pytest.raises(ConfigValueError) as err:
        s.get_int("/c/f", default=0)                # a default stands in for a missing key, never a broken one
    assert str(err.value).startswith("/c/f: not an integer") and err.value.key == "/c/f"
    with pytest.raises(ConfigValueError, match=r"^/c/tok: not a boolean: expected true/false.*12 characters$") as err:
        s.get_bool("/c/tok", default=False)
    assert "s3cr3t" not in str(err.value), "the value itself is never shown (it may be a secret)"
    with pytest.raises(ConfigValueError, match=r"^/c/bad: not JSON: .* at line 1 column 2"):
        s.get_json("/c/bad", default=None)
    with pytest.raises(ValueError, match="the value is empty"):
        s.get_int("/c/empty")


def test_cache_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="caches prefix"):
        decode_cache("/b/", b'{"v":1,"prefix":"/a/","revision":3,"items":{}}')
    with pytest.raises(ValueError, match="malformed"):
        decode_cache("/a/", b'{"v":1,"prefix":"/a/","revision":3,"items":{"/elsewhere":"x"}}')
    assert dict(decode_cache("/a/", b'{"v":1,"prefix":"/a/","revision":3,"items":{"/a/k":"x"}}')) == {"/a/k": "x"}


# -- views against etcd ------------------------------------------------------------------------


def test_view_reads_without_io_and_delivers_changes_with_old_values(env: Env) -> None:
    p = f"{env.ns}cfg/"
    env.put(p + "a", "1")
    env.put(p + "b", "x")
    env.put(f"{env.ns}elsewhere", "not in the view")
    cfg = ConfigStore(Connection(env.endpoints))
    view = cfg.view(p, reserved_prefix=env.reserved)
    assert view.items() == [(p + "a", "1"), (p + "b", "x")]
    assert view.get(p + "a") == "1" and view.get(p + "zz") is None and view.get(p + "zz", "d") == "d"
    assert view.revision == env.revision() and view.healthy and not view.stale and view.last_event is not None
    changes: list[ViewChange] = []
    threads: set[str] = set()

    def on_change(ch: ViewChange) -> None:
        threads.add(threading.current_thread().name)
        changes.append(ch)
        if ch.new.get(p + "a") == "boom":
            raise ValueError("a broken callback must not stop the view")

    view.on_change(on_change)
    env.put(p + "a", "boom")
    env.put(p + "a", "2")
    env.delete(p + "b")
    wait_for(lambda: len(changes) >= 3, 10, "three changes")
    assert [[(e.type, e.key, e.old_value, e.value) for e in ch.events] for ch in changes] == [
        [("put", p + "a", "1", "boom")], [("put", p + "a", "boom", "2")], [("delete", p + "b", "x", None)]]
    assert [dict(ch.old) for ch in changes[1:]] == [dict(ch.new) for ch in changes[:-1]]
    assert dict(changes[-1].new) == {p + "a": "2"} and changes[-1].revision == view.revision
    assert threading.current_thread().name not in threads and not any("loop" in t for t in threads)
    # a watch's events carry the old value too, and watches report their health
    olds: list[tuple[str | None, str | None]] = []
    w = cfg.watch(p, lambda ev: olds.append((ev.old_value, ev.value)), prefix=True)
    assert w.healthy and w.last_event is not None
    env.put(p + "a", "3")
    env.delete(p + "a")
    wait_for(lambda: len(olds) == 2, 5, "two watch events")
    assert olds == [("2", "3"), ("3", None)]
    w.cancel()
    view.close()
    cfg.close()


def test_async_view_callbacks_run_on_the_loop(env: Env) -> None:
    p = f"{env.ns}cfg/"

    async def go() -> None:
        cfg = AsyncConfigStore(Connection(env.endpoints))
        loop = asyncio.get_running_loop()
        got: list[tuple[bool, dict[str, str]]] = []
        done = asyncio.Event()
        async with await cfg.view(p, reserved_prefix=env.reserved) as view:
            assert view.items() == []

            async def on_change(ch: ViewChange) -> None:
                got.append((asyncio.get_running_loop() is loop, dict(ch.new)))
                done.set()

            view.on_change(on_change)
            await cfg.put(p + "k", "v")
            await asyncio.wait_for(done.wait(), 10)
            assert got == [(True, {p + "k": "v"})]
            with pytest.raises(ConfigValueError, match="not JSON"):
                view.get_json(p + "k", default=None)
        with pytest.raises(EtcdConnectionError):
            dead = AsyncConfigStore(Connection(["http://127.0.0.1:9"], timeout=0.5))
            await dead.view(p)               # no etcd and no cache file: the view cannot start
        await cfg.close()

    asyncio.run(go())


def _manifest(ns: str, prefix: str, data: dict[str, str]) -> str:
    lines = ["apiVersion: etcdsync/v1", "kind: ConfigSet", "metadata:", "  name: big", "spec:",
             f"  prefix: {prefix}", "  data:"]
    lines += [f"    {k}: {json.dumps(v)}" for k, v in sorted(data.items())]
    return "\n".join(lines) + "\n"


def test_a_view_never_sees_a_half_applied_plan(tmp_path: Path) -> None:
    """300-key plans against a server that allows 8 operations per transaction: every snapshot a
    view delivers (and every one a reader samples) is a whole manifest version, one change per apply."""
    with EtcdCluster(1, extra_args=["--max-txn-ops", "8"]) as small:
        ns = "/v/"
        env = Env(small.endpoints, ns, f"{ns}.etcdsync/", tmp_path)
        p = f"{ns}cfg/"
        versions = [
            {f"k{i:03d}": "a" for i in range(300)},
            {**{f"k{i:03d}": "b" for i in range(250)}, **{f"n{i:03d}": "b" for i in range(60)}},
            {f"k{i:03d}": "c" for i in range(300)},
        ]
        wants = [{p + k: v for k, v in version.items()} for version in versions]
        hist = recorder(small.endpoints, [ns], env.reserved)
        env.hist = hist
        cfg = ConfigStore(Connection(small.endpoints))
        view = cfg.view(p, reserved_prefix=env.reserved)
        delivered: list[dict[str, str]] = []
        view.on_change(lambda ch: delivered.append(dict(ch.new)))
        sampled: list[dict[str, str]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set() and len(sampled) < 100_000:
                snap = view.snapshot
                if not sampled or sampled[-1] != snap:
                    sampled.append(dict(snap))
                time.sleep(0.001)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            for want, version in zip(wants, versions, strict=True):
                f = env.write("m/big.yaml", _manifest(ns, p, version))
                hist.declare(want)
                r = env.run("apply", "-f", str(f), "--applyset", "big")
                assert r.code == 0, r
                wait_for(lambda w=want: delivered and delivered[-1] == w, 30, "the view to deliver the apply")  # type: ignore[misc]
        finally:
            stop.set()
            sampler.join(10)
            view.close()
            cfg.close()
        try:
            allowed = [{}, *wants]

            def describe(snap: dict[str, str]) -> str:
                counts: dict[str, int] = {}
                for v in snap.values():
                    counts[v] = counts.get(v, 0) + 1
                return f"{len(snap)} keys, values {sorted(counts.items())}"

            partial = [describe(s) for s in delivered + sampled if s not in allowed]
            assert not partial, f"half-applied snapshots: {partial[:5]}"
            assert delivered == wants, [describe(s) for s in delivered]
            marks = hist.markers()
            assert [e.type for e in marks] == ["put", "delete"] * 3, marks
            assert all(e.key.startswith(f"{env.reserved}applying/big/") for e in marks)
            hist.check()
        finally:
            hist.stop()


def test_data_that_outruns_the_marker_watch_is_held(env: Env) -> None:
    """The two watches are separate streams: the first batch of an apply can arrive before its
    marker. The view then reads the markers at the batch's revision and holds it; the marker's
    deletion releases it. (The streams are fed by hand here, in the order a race delivers them.)"""
    p = f"{env.ns}cfg/"
    marks = marker_prefix(env.reserved)

    async def go() -> None:
        client = _Client(Connection(env.endpoints))
        store = await client.store()
        view = AsyncView(client.store, p, reserved_prefix=env.reserved)
        start = await view._resync(store)
        assert view.items() == []
        marker = marks + "big/00000000000000cc"
        created = env.put(marker, encode_marker("big", {p}))
        env.put(p + "k0", "new")
        data = await anext(aiter(store.watch(p, prefix=True, start_revision=start + 1)))
        await view._on_data(store, data)                # before any marker event
        assert view.items() == [] and view._held_since is not None, "a half-done apply was published"
        ended = env.delete(marker) and env.revision()
        stream = aiter(store.watch(marks, prefix=True, start_revision=start + 1))
        seen = [await anext(stream)]
        while len(seen) < 10 and not any(e.type == "delete" for e in seen[-1].events):
            seen.append(await anext(stream))
        assert [e.type for b in seen for e in b.events] == ["put", "delete"] and ended > created
        for batch in seen:
            await view._on_marks(store, batch)
        assert view.items() == [(p + "k0", "new")] and view.revision == ended
        await client.close()

    asyncio.run(go())


def test_a_view_started_during_an_apply_starts_from_the_state_before_it(env: Env) -> None:
    p = f"{env.ns}cfg/"
    marker = marker_prefix(env.reserved) + "big/00000000000000dd"
    env.put(p + "k0", "old")
    created = env.put(marker, encode_marker("big", {p}))     # an apply runs (played by the test)
    env.put(p + "k0", "new")
    env.put(p + "k1", "new")
    cfg = ConfigStore(Connection(env.endpoints))
    view = cfg.view(p, reserved_prefix=env.reserved, hold=5)
    assert view.items() == [(p + "k0", "old")] and view.revision == created
    delivered: list[ViewChange] = []
    view.on_change(delivered.append)
    env.delete(marker)
    wait_for(lambda: delivered, 10, "the apply's end")
    assert view.items() == [(p + "k0", "new"), (p + "k1", "new")]
    assert [[(e.key, e.old_value, e.value) for e in ch.events] for ch in delivered] == [
        [(p + "k0", "old", "new"), (p + "k1", None, "new")]]
    view.close()
    cfg.close()


def test_a_single_transaction_apply_writes_no_marker(env: Env, history: Recorder) -> None:
    p = f"{env.ns}cfg/"
    f = env.write("m/app.yaml", _manifest(env.ns, p, {"a": "1", "b": "2"}))
    history.declare({p + "a": "1", p + "b": "2"})
    assert env.cli("apply", "-f", str(f), "--applyset", "small").code == 0
    assert history.markers() == []
    # 300 keys are more than one transaction of the default 128 operations: marked, then unmarked
    big = {f"k{i:03d}": "x" for i in range(300)}
    f = env.write("m/app.yaml", _manifest(env.ns, p, big))
    history.declare({p + k: v for k, v in big.items()})
    assert env.cli("apply", "-f", str(f), "--applyset", "small").code == 0
    history.sync()
    assert [e.type for e in history.markers()] == ["put", "delete"]
    assert env.dump(marker_prefix(env.reserved)) == {}


def test_a_crashed_apply_cannot_freeze_a_view(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """A marker whose lease expires (the apply was killed) ends the hold; a marker that stays (an
    apply stuck for longer than `hold`) is given up on after `hold` seconds, with a warning."""
    p = f"{env.ns}cfg/"
    marks = marker_prefix(env.reserved)
    cfg = ConfigStore(Connection(env.endpoints))
    view = cfg.view(p, reserved_prefix=env.reserved, hold=60)
    delivered: list[ViewChange] = []
    view.on_change(delivered.append)
    gw = env.gw
    lease = gw.lease_grant(2)
    created = gw.put(marks + "big/00000000000000aa", encode_marker("big", {p}), lease=lease)  # the "killed" apply
    half = [env.put(p + f"k{i}", "new") for i in range(5)]
    key = marks + "big/00000000000000aa"
    wait_for(lambda: gw.get(key) is None, 15, "the killed apply's marker to expire")
    wait_for(lambda: delivered and dict(delivered[-1].new) == {p + f"k{i}": "new" for i in range(5)}, 10, "delivery")
    assert min(half) > created
    assert all(ch.revision not in range(created + 1, max(half) + 1) for ch in delivered), \
        f"published while the marker was live: {[ch.revision for ch in delivered]}"
    assert len(delivered) == 1
    view.close()

    # a marker without a lease that never goes away: the view gives up after `hold` seconds
    view = cfg.view(p, reserved_prefix=env.reserved, hold=1.0)
    delivered.clear()
    view.on_change(delivered.append)
    stuck = marks + "big/00000000000000bb"
    created = env.put(stuck, encode_marker("big", {p}))
    with caplog.at_level(logging.WARNING, logger="etcdsync.views"):
        rev = env.put(p + "k0", "newer")
        wait_for(lambda: view.get(p + "k0") == "newer", 15, "the view to give up holding")
        assert delivered and delivered[-1].revision == rev > created
        assert "has not finished within 1s" in caplog.text
    rev = env.put(p + "k1", "later")                     # later writes of that apply are not held any more
    wait_for(lambda: view.get(p + "k1") == "later", 10, "a later change")
    env.delete(stuck)
    view.close()
    cfg.close()


def test_a_view_starts_from_its_cache_file_while_etcd_is_down(tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "payments.json"
    cache.parent.mkdir()
    p = "/config/payments/"
    with EtcdCluster(1, base_dir=str(tmp_path / "etcd")) as cluster:
        conn = Connection(cluster.endpoints, timeout=1)
        cfg = ConfigStore(conn)
        cfg.put(p + "db/url", "postgres://a")
        cfg.put(p + "limit", "5")
        view = cfg.view(p, cache_file=cache)
        assert not view.stale
        cfg.put(p + "limit", "6")
        wait_for(lambda: cache.exists() and json.loads(cache.read_text())["items"].get(p + "limit") == "6", 10,
                 "the cache file to follow the view")
        assert stat.S_IMODE(cache.stat().st_mode) == 0o600
        assert sorted(os.listdir(cache.parent)) == ["payments.json"], "no temporary file left beside it"
        view.close()
        cfg.put(p + "limit", "7")                     # etcd moves on after the cache was written
        member = cluster.members[0]
        member.stop()

        down = ConfigStore(conn)
        started = down.view(p, cache_file=cache)
        assert started.stale and not started.healthy
        assert started.items() == [(p + "db/url", "postgres://a"), (p + "limit", "6")]
        assert started.get_int(p + "limit") == 6
        changes: list[ViewChange] = []
        started.on_change(changes.append)
        member.start()                                # same port, same data
        wait_for(lambda: changes and not started.stale, 30, "the view to catch up")
        assert started.get(p + "limit") == "7"
        assert started.healthy
        assert [(e.key, e.old_value, e.value) for ch in changes for e in ch.events] == [(p + "limit", "6", "7")]
        cfg.put(p + "limit", "8")
        wait_for(lambda: started.get(p + "limit") == "8", 10, "changes after the outage")
        wait_for(lambda: json.loads(cache.read_text())["items"].get(p + "limit") == "8", 10, "the cache to follow")
        started.close()
        down.close()
        cfg.close()


def test_two_processes_incrementing_one_counter_lose_nothing(env: Env) -> None:
    key = f"{env.ns}counter"
    n = 60
    code = (
        "import sys\n"
        "from etcdsync import ConfigStore, Connection\n"
        f"cfg = ConfigStore(Connection({env.endpoints!r}))\n"
        "sys.stdin.readline()\n"
        f"for _ in range({n}):\n"
        f"    cfg.update({key!r}, lambda v: str(int(v or 0) + 1))\n"
        "print('done', flush=True)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}) for _ in range(2)]
    try:
        for proc in procs:          # start both at once
            assert proc.stdin is not None
            proc.stdin.write("\n")
            proc.stdin.flush()
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0 and out.strip() == "done"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(5)
    assert env.get(key) == str(2 * n).encode()


def test_update_gives_up_with_a_conflict_error_naming_the_key(env: Env) -> None:
    key = f"{env.ns}hot"
    cfg = ConfigStore(Connection(env.endpoints))
    assert cfg.update(key, lambda v: None) is None            # absent and stays absent: nothing written
    assert cfg.update(key, lambda v: "1") == "1"
    calls: list[str | None] = []

    def always_raced(v: str | None) -> str:
        calls.append(v)
        env.put(key, f"other-{len(calls)}")                   # another writer gets in every time
        return "mine"

    with pytest.raises(ConflictError, match=f"^{key}: changed by another writer on each of 3 attempts") as err:
        cfg.update(key, always_raced, attempts=3)
    assert err.value.keys == (key,)
    assert calls == ["1", "other-1", "other-2"], "each attempt sees what the other writer wrote"
    assert env.get(key) == b"other-3"
    assert cfg.update(key, lambda v: None) is None and env.get(key) is None   # None deletes
    cfg.close()


def test_the_lifespan_example_runs(env: Env) -> None:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "ETCDSYNC_ENDPOINTS": ",".join(env.endpoints),
               "EXAMPLE_PREFIX": f"{env.ns}config/example/", "EXAMPLE_CACHE": str(env.tmp / "example-cache.json")}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "config_view_lifespan.py")], capture_output=True,
                         text=True, timeout=60, env=environ)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "startup: limit=5 beta=False (stale: False)",
        "request: limit=5",
        "changed: limit 5 -> 7",
        "request: limit=7",
        "counter: 1",
        "shutdown",
    ]
    assert json.loads((env.tmp / "example-cache.json").read_text())["items"][f"{env.ns}config/example/limit"] == "7"


def test_a_view_whose_user_may_not_read_the_markers_still_works(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from helpers_faults import start_auth_etcd

    c, root = start_auth_etcd(tmp_path / "etcd", user="svc", password="svcpw", role="svc", prefixes=("/a/",))
    try:
        root("put", "/a/k", "1")
        cfg = ConfigStore(Connection(c.endpoints, user="svc", password="svcpw"))
        with caplog.at_level(logging.WARNING, logger="etcdsync.views"):
            view = cfg.view("/a/")
            assert view.items() == [("/a/k", "1")]
            assert "cannot read the apply markers under /.etcdsync/applying/" in caplog.text
        changes: list[ViewChange] = []
        view.on_change(changes.append)
        root("put", "/a/k", "2")
        wait_for(lambda: changes, 10, "a change without markers")
        assert view.get("/a/k") == "2" and view.healthy
        view.close()
        cfg.close()
    finally:
        c.stop()
