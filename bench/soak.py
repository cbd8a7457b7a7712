"""Fault campaign (in the manner of Jepsen): `etcdsync run` under a seeded random schedule of faults,
judged by etcd's complete event history.

    scripts/soak --seed 7 --duration 600      # ten minutes; the seed reproduces the schedule
    scripts/soak                              # an hour, random seed (printed)

A 3-member etcd cluster (Debian's etcd 3.4: 3.5.0-3.5.2 can lose acknowledged writes on a SIGKILLed
member, etcd-io/etcd#13766) on 127.0.0.1 and one daemon on a tree of three manifest files with
enforce, create-only and warn keys. Until the duration is over, a seeded scheduler picks faults:

- SIGKILL of a member (often the leader) and its restart; SIGKILL of two members (quorum lost);
- SIGSTOP of a member and SIGCONT;
- compaction (only of revisions the history recorder has already seen);
- SIGKILL of the daemon and its restart;
- manifest edits (values changed, keys added and removed, a file removed and a new one added) saved
  in place, rename-style (a temporary file, then os.replace), truncated (a prefix of the new
  content for a moment, then all of it) and emptied (an empty file for a moment, then the content);

while two writer threads put and delete managed keys and unmanaged keys under the managed prefixes.
Every fault kind happens at least once in the first rounds, whatever the seed.

The history recorder (tests/history.py) watches the whole run through etcd's JSON gateway,
independent of etcdsync's client. Each disk state of the manifests is declared as the loader sees it
(a state that does not load declares nothing: the daemon keeps the last good one). At the end the
faults are healed, the last manifests written, the writers stopped, and the run is judged:
flaps (a value from an older manifest), writes or deletes of keys no apply set owned, keys put but not
in the inventory at that revision, keys dropped from the inventory while still in etcd, create-only or
warn keys overwritten, keys left unconverged, writes after convergence (not quiet), a daemon that exited
on its own or printed a traceback, and etcd members that diverged. It prints the seed, the faults and
every violation, writes bench/results/soak-<time>.json, and exits 1 on any violation. Every loop is
bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from etcdgw import Gateway  # noqa: E402
from history import Declared, Recorder  # noqa: E402

from etcdsync.errors import ManifestError  # noqa: E402
from etcdsync.local.etcdbin import EtcdCluster, EtcdMember, free_ports  # noqa: E402
from etcdsync.manifest import load_manifests  # noqa: E402

ETCD34 = "/usr/bin/etcd"
ROOT_PREFIX = "/soak/"
RESERVED = "/soak/.etcdsync/"
APPLYSET = "soak"
FREE = "/soak/free/"              # unmanaged prefix the writers also use
EDIT_SPACING = 2.5                # seconds between manifest edits (> --timeout + debounce)
DAEMON_ARGS = ["--timeout", "2", "--debounce", "100ms", "--resync", "3s", "--take-ownership",
               "--flap-threshold", "1000"]   # the campaign drifts keys on purpose: no flap pauses

FAULTS = ["edit", "rename-save", "truncated-save", "emptied-file", "swap-file", "kill-member", "kill-leader",
          "quorum-loss", "pause-member", "compact", "kill-daemon"]
WEIGHTS = {"edit": 6, "rename-save": 5, "truncated-save": 3, "emptied-file": 2, "swap-file": 1,
           "kill-member": 3, "kill-leader": 3, "quorum-loss": 1, "pause-member": 3, "compact": 2,
           "kill-daemon": 3}


# ------------------------------------------------------------------------------------------------
# the manifests: a model, rendered to YAML


@dataclass
class Item:
    value: str
    policy: str = "enforce"


@dataclass
class Model:
    files: dict[str, tuple[str, dict[str, Item]]] = field(default_factory=dict)   # name -> (prefix, keys)
    generation: int = 0

    @staticmethod
    def initial() -> Model:
        m = Model()
        m.files["a.yaml"] = ("/soak/a/", {f"k{i:02d}": Item(f"g0-a{i}") for i in range(20)}
                             | {"seed0": Item("seed-a0", "create-only"), "seed1": Item("seed-a1", "create-only"),
                                "warn0": Item("warn-a0", "warn"), "warn1": Item("warn-a1", "warn")})
        m.files["b.yaml"] = ("/soak/b/", {f"k{i:02d}": Item(f"g0-b{i}") for i in range(12)}
                             | {"seed0": Item("seed-b0", "create-only")})
        m.files["c.yaml"] = ("/soak/c/", {f"k{i:02d}": Item(f"g0-c{i}") for i in range(8)})
        return m

    def render(self, name: str) -> str:
        prefix, keys = self.files[name]
        lines = ["apiVersion: etcdsync/v1", "kind: ConfigSet", f"metadata: {{name: {name.split('.')[0]}}}",
                 "spec:", f"  prefix: {prefix}", "  data:"]
        for k, it in keys.items():
            if it.policy == "enforce":
                lines.append(f"    {k}: {json.dumps(it.value)}")
            else:
                lines.append(f"    {k}: {{value: {json.dumps(it.value)}, policy: {it.policy}}}")
        return "\n".join(lines) + "\n"

    def texts(self) -> dict[str, str]:
        return {name: self.render(name) for name in self.files}

    def managed(self) -> list[str]:
        return [p + k for p, keys in self.files.values() for k in keys]

    def prefixes(self) -> list[str]:
        return [p for p, _ in self.files.values()]

    def mutate(self, rng: random.Random) -> str:
        """Change the model a little; returns what it did."""
        self.generation += 1
        g = self.generation
        name = rng.choice(sorted(self.files))
        prefix, keys = self.files[name]
        r = rng.random()
        if r < 0.55 or len(keys) < 4:
            for k in rng.sample(sorted(keys), min(len(keys), rng.randint(1, 4))):
                keys[k].value = f"g{g}-{k}"
            return f"{name}: values changed"
        if r < 0.75:
            k = f"n{g:03d}"
            keys[k] = Item(f"g{g}-{k}", rng.choice(["enforce", "enforce", "enforce", "create-only", "warn"]))
            return f"{name}: {k} added"
        if r < 0.92:
            k = rng.choice(sorted(keys))
            del keys[k]
            return f"{name}: {k} removed"
        # a whole file goes, and a new one with fresh keys (another prefix) comes
        if len(self.files) > 1:
            del self.files[name]
        new = f"f{g:03d}.yaml"
        self.files[new] = (f"/soak/f{g:03d}/", {f"k{i:02d}": Item(f"g{g}-{i}") for i in range(rng.randint(3, 8))})
        return f"{name} removed, {new} added"


# ------------------------------------------------------------------------------------------------
# processes


def etcd34_cluster(size: int, base_dir: Path) -> EtcdCluster:
    if not os.access(ETCD34, os.X_OK):
        raise SystemExit(f"{ETCD34} (Debian's etcd-server, 3.4) is needed: the campaign SIGKILLs members")
    return EtcdCluster(size, base_dir=str(base_dir), binary=ETCD34)


class DaemonProc:
    """`etcdsync run` as a subprocess; knows whether it was killed on purpose."""

    def __init__(self, workdir: Path, mdir: Path, endpoints: list[str]) -> None:
        self.workdir, self.mdir, self.endpoints = workdir, mdir, endpoints
        self.port = free_ports(1)[0]
        self.log = workdir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDSYNC_")}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        argv = [sys.executable, "-m", "etcdsync", "run", "-f", str(self.mdir), "--applyset", APPLYSET,
                "--reserved-prefix", RESERVED, "--endpoints", ",".join(self.endpoints),
                "--metrics-addr", f"127.0.0.1:{self.port}", *DAEMON_ARGS]
        with open(self.log, "ab") as log:
            log.write(f"--- start {self.starts} ---\n".encode())
            log.flush()
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL, cwd=self.workdir)
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                return None
        return self.proc.returncode

    def listening(self) -> bool:
        """The HTTP endpoint answers (any status): the daemon got past loading its manifests at start-up."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as r:
                return r.status == 200
        except (OSError, urllib.error.HTTPError):
            return False

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


# ------------------------------------------------------------------------------------------------
# writers: other clients on managed and unmanaged keys


class Writers:
    def __init__(self, rec: Recorder, endpoints: list[str], keys: Callable[[], list[str]], seed: int,
                 n: int = 2, pause: float = 0.08) -> None:
        self.rec, self.endpoints, self.keys, self.seed, self.pause = rec, endpoints, keys, seed, pause
        self.stop = threading.Event()
        self.ops: Counter[str] = Counter()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def _run(self, i: int) -> None:
        rng = random.Random(self.seed * 1000 + i)
        gw = Gateway(self.endpoints, timeout=2)
        n = 0
        while not self.stop.is_set() and n < 100_000:
            n += 1
            managed = self.keys()
            r = rng.random()
            try:
                if r < 0.35 and managed:
                    key = rng.choice(managed)
                    self.rec.outside_txn({key: f"drift-w{i}-{n}"}, gateway=gw)
                    self.ops["put managed"] += 1
                elif r < 0.5 and managed:
                    self.rec.outside_txn(deletes=[rng.choice(managed)], gateway=gw)
                    self.ops["delete managed"] += 1
                elif r < 0.85:
                    base = rng.choice([FREE, *{k.rsplit("/", 1)[0] + "/" for k in managed}] or [FREE])
                    key = f"{base}u{rng.randrange(10)}"
                    self.rec.outside_txn({key: f"w{i}-{n}"}, gateway=gw)
                    self.ops["put unmanaged"] += 1
                else:
                    base = rng.choice([FREE, *{k.rsplit("/", 1)[0] + "/" for k in managed}] or [FREE])
                    self.rec.outside_txn(deletes=[f"{base}u{rng.randrange(10)}"], gateway=gw)
                    self.ops["delete unmanaged"] += 1
            except RuntimeError:
                self.ops["failed (etcd unavailable)"] += 1
                self.stop.wait(0.3)
            self.stop.wait(self.pause * (0.5 + rng.random()))


# ------------------------------------------------------------------------------------------------
# the campaign


@dataclass
class Result:
    seed: int
    duration: float
    faults: Counter[str]
    writer_ops: Counter[str]
    events: int
    versions: int
    daemon_starts: int
    violations: list[str]
    workdir: str
    schedule: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "duration_seconds": self.duration, "faults": dict(self.faults),
                "writer_ops": dict(self.writer_ops), "events_recorded": self.events,
                "manifest_versions": self.versions, "daemon_starts": self.daemon_starts,
                "violations": self.violations, "workdir": self.workdir, "schedule": self.schedule}


class Campaign:
    def __init__(self, seed: int, duration: float, workdir: Path, say: Callable[[str], None]) -> None:
        self.seed, self.duration, self.workdir, self.say = seed, duration, workdir, say
        self.rng = random.Random(seed)
        self.mdir = workdir / "manifests"
        self.scratch = workdir / "scratch"
        self.model = Model.initial()
        self.model_lock = threading.Lock()
        self.cluster = etcd34_cluster(3, workdir / "etcd")
        self.faults: Counter[str] = Counter()
        self.violations: list[str] = []
        self.schedule: list[str] = []
        self.t0 = time.monotonic()
        self.last_edit = 0.0
        self.last_compact = 0
        self.pending: list[tuple[float, str, Callable[[], None]]] = []   # (when, what, undo)
        self.member_fault = False
        self.daemon_down = False
        self.rec: Recorder | None = None
        self.daemon: DaemonProc | None = None

    # -- helpers ---------------------------------------------------------------------------

    def note(self, what: str) -> None:
        line = f"{time.monotonic() - self.t0:7.2f}s {what}"
        self.schedule.append(line)
        self.say(line)

    def violation(self, text: str) -> None:
        self.violations.append(text)
        self.note(f"VIOLATION {text}")

    def revision_now(self) -> int:
        """etcd's revision if a quorum answers quickly, else the last one recorded (a lower bound)."""
        assert self.rec is not None
        try:
            return Gateway(self.cluster.endpoints, timeout=1).revision()
        except RuntimeError:
            return self.rec.last_seen()

    def declare_disk(self, texts: dict[str, str]) -> bool:
        """Declare what the daemon would load from these file contents; False when they do not load."""
        assert self.rec is not None
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir()
        for name, text in texts.items():
            (self.scratch / name).write_text(text)
        try:
            desired = load_manifests([str(self.scratch)], reserved_prefix=RESERVED)
        except ManifestError:
            return False
        self.rec.declare({k: Declared(d.value, d.policy.value) for k, d in desired.keys.items()},
                         revision=self.revision_now())
        return True

    def disk(self) -> dict[str, str]:
        return {p.name: p.read_text() for p in sorted(self.mdir.glob("*.yaml"))}

    def managed_keys(self) -> list[str]:
        with self.model_lock:
            return self.model.managed()

    # -- faults ----------------------------------------------------------------------------

    def fault(self, kind: str) -> None:
        rng = self.rng
        if kind in ("edit", "rename-save", "truncated-save", "emptied-file", "swap-file"):
            self.edit(kind)
        elif kind in ("kill-member", "kill-leader", "quorum-loss", "pause-member"):
            if self.member_fault:
                return
            self.member_fault = True
            if kind == "quorum-loss":
                victims = rng.sample(self.cluster.members, 2)
            elif kind == "kill-leader":
                victims = [self.leader() or rng.choice(self.cluster.members)]
            else:
                victims = [rng.choice(self.cluster.members)]
            names = ",".join(m.name for m in victims)
            if kind == "pause-member":
                victims[0].pause()
                undo: Callable[[], None] = victims[0].resume
                hold = rng.uniform(1, 4)
            else:
                for m in victims:
                    m.kill()
                hold = rng.uniform(3, 8) if kind == "quorum-loss" else rng.uniform(1, 4)

                def undo(victims: list[EtcdMember] = victims) -> None:
                    for m in victims:
                        m.start(wait=False)

            self.note(f"{kind} {names} for {hold:.1f}s")

            def restore(undo: Callable[[], None] = undo) -> None:
                undo()
                self.member_fault = False

            self.pending.append((time.monotonic() + hold, f"restore {names}", restore))
        elif kind == "compact":
            assert self.rec is not None
            rev = self.rec.compactable()
            if rev <= self.last_compact:
                return
            try:
                Gateway(self.cluster.endpoints, timeout=2).compact(rev)
                self.last_compact = rev
                self.note(f"compact at {rev}")
            except RuntimeError as exc:
                self.note(f"compact at {rev} failed: {str(exc)[:80]}")
                return
        elif kind == "kill-daemon":
            if self.daemon_down:
                return
            assert self.daemon is not None
            self.daemon.kill()
            self.daemon_down = True
            hold = rng.uniform(0.3, 3)
            self.note(f"kill-daemon for {hold:.1f}s")
            self.pending.append((time.monotonic() + hold, "restart daemon", self.restart_daemon))
        self.faults[kind] += 1

    def restart_daemon(self) -> None:
        assert self.daemon is not None
        if not self.disk_loads():
            # a manifest that does not load at start-up is exit 2 by design: start once it loads again
            self.pending.append((time.monotonic() + 0.3, "restart daemon (manifests load again?)", self.restart_daemon))
            return
        self.daemon.start()
        self.daemon_down = False

    def disk_loads(self) -> bool:
        try:
            load_manifests([str(self.mdir)], reserved_prefix=RESERVED)
            return True
        except ManifestError:
            return False

    def leader(self) -> EtcdMember | None:
        for m in self.cluster.members:
            if not m.running:
                continue
            try:
                st = Gateway([m.endpoint], timeout=1).status()
            except RuntimeError:
                continue
            lid = int(st.get("leader", 0))
            for o in self.cluster.members:
                try:
                    if o.running and int(Gateway([o.endpoint], timeout=1).status()["header"]["member_id"]) == lid:
                        return o
                except RuntimeError:
                    continue
        return None

    def edit(self, style: str) -> None:
        rng = self.rng
        while time.monotonic() < self.last_edit + EDIT_SPACING:     # restores still happen meanwhile
            self.run_pending(time.monotonic())
            self.watch_daemon()
            time.sleep(0.05)
        if style in ("truncated-save", "emptied-file") and self.daemon is not None:
            # a daemon still starting reads the manifests late: a half-saved file then is a bad
            # manifest at start-up, exit 2 by design, not a finding; let it get past loading first
            deadline = time.monotonic() + 20
            while self.daemon.alive and not self.daemon.listening() and time.monotonic() < deadline:
                time.sleep(0.05)
        with self.model_lock:
            before = self.disk()
            what = self.model.mutate(rng)
            after = self.model.texts()
        self.note(f"{style}: {what}")
        gone = set(before) - set(after)
        if style == "truncated-save":
            # one changed file is first seen truncated (a prefix of its new content), then whole
            name = rng.choice(sorted(after))
            cut = rng.randrange(0, len(after[name]))
            self.write_state({**after, name: after[name][:cut]}, "in place", gone)
            time.sleep(rng.uniform(0, 0.4))
            self.write_state(after, "in place", set())
        elif style == "emptied-file":
            name = rng.choice(sorted(after))
            self.write_state({**after, name: ""}, "in place", gone)
            time.sleep(rng.uniform(0.3, 1.5))
            self.write_state(after, "in place", set())
        elif style == "rename-save":
            self.write_state(after, "rename", gone)
        elif style == "swap-file":
            # an editor's swap file and a backup next to the manifests: neither may change anything
            (self.mdir / f".{rng.choice(sorted(after))}.swp").write_text("garbage: [")
            (self.mdir / "notes.txt~").write_text("not a manifest")
            self.write_state(after, "in place", gone)
        else:
            self.write_state(after, "in place", gone)
        self.last_edit = time.monotonic()

    def write_state(self, texts: dict[str, str], how: str, gone: set[str]) -> None:
        """Declare the state (as loaded), then put it on disk."""
        self.declare_disk(texts)
        for name in gone:
            (self.mdir / name).unlink(missing_ok=True)
        for name, text in texts.items():
            path = self.mdir / name
            if path.exists() and path.read_text() == text:
                continue
            if how == "rename":
                tmp = self.mdir / f".{name}.tmp{self.rng.randrange(10**6)}"
                tmp.write_text(text)
                os.replace(tmp, path)
            else:
                path.write_text(text)

    # -- run -------------------------------------------------------------------------------

    def run(self) -> Result:
        self.mdir.mkdir(parents=True)
        self.cluster.start()
        writers: Writers | None = None
        self.writer_ops: Counter[str] = Counter()
        try:
            self.rec = Recorder(Gateway(self.cluster.endpoints, timeout=3), [ROOT_PREFIX], RESERVED).begin(since=1)
            texts = self.model.texts()
            self.declare_disk(texts)
            for name, text in texts.items():
                (self.mdir / name).write_text(text)
            self.daemon = DaemonProc(self.workdir, self.mdir, self.cluster.endpoints)
            self.daemon.start()
            deadline = time.monotonic() + 30
            while not self.daemon.ready() and time.monotonic() < deadline:
                time.sleep(0.1)
            if not self.daemon.ready():
                self.violation("the daemon was not ready within 30 s of the start")
            writers = Writers(self.rec, self.cluster.endpoints, self.managed_keys, self.seed)
            writers.start()
            self.note(f"campaign: seed {self.seed}, {self.duration:.0f}s")
            self.loop()
            self.heal(writers)
        finally:
            if writers is not None:
                writers.join()
            if self.daemon is not None:
                self.daemon.kill()
            for m in self.cluster.members:
                if m.proc is not None and m.running:
                    m.resume()
            if self.rec is not None:
                self.rec.stop()
            self.cluster.stop()
        assert self.rec is not None
        return Result(self.seed, self.duration, self.faults, self.writer_ops,
                      len(self.rec.events), len(self.rec.versions), self.daemon.starts if self.daemon else 0,
                      self.violations, str(self.workdir), self.schedule)

    def loop(self) -> None:
        first = FAULTS[:]
        self.rng.shuffle(first)          # every kind at least once, early
        end = self.t0 + self.duration
        steps = 0
        while time.monotonic() < end and steps < 10_000:
            steps += 1
            self.run_pending(time.monotonic())
            self.watch_daemon()
            kind = first.pop() if first else self.rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
            if kind in ("kill-member", "kill-leader", "quorum-loss", "pause-member") and self.member_fault:
                if first is not None and kind not in first:
                    first.insert(0, kind)    # retried once the current member fault is over
                kind = "compact" if self.rng.random() < 0.3 else "edit"
            self.fault(kind)
            pause_until = time.monotonic() + self.rng.uniform(0.3, 1.5)
            while time.monotonic() < min(pause_until, end):
                self.run_pending(time.monotonic())
                self.watch_daemon()
                time.sleep(0.05)

    def run_pending(self, now: float) -> None:
        due = [p for p in self.pending if p[0] <= now]
        self.pending = [p for p in self.pending if p[0] > now]
        for _, what, undo in due:
            self.note(what)
            undo()

    def watch_daemon(self) -> None:
        d = self.daemon
        assert d is not None
        if not self.daemon_down and not d.alive:
            assert d.proc is not None
            if d.proc.returncode == 2 and not self.disk_loads():
                self.note("the daemon refused manifests that do not load at start-up (exit 2); restarting later")
                self.daemon_down = True
                self.restart_daemon()
                return
            self.violation(f"the daemon exited on its own (code {d.proc.returncode}); log tail:\n"
                           + d.logs()[-1500:])
            self.restart_daemon()

    def heal(self, writers: Writers) -> None:
        assert self.rec is not None and self.daemon is not None
        self.note("healing: every member up, the daemon up, the last manifests written, writers stopped")
        for _, what, undo in sorted(self.pending, key=lambda p: p[0]):
            self.note(what)
            undo()
        self.pending = []
        for m in self.cluster.members:
            if not m.running:
                m.start(wait=False)
        for m in self.cluster.members:
            m.wait_ready(30)
        self.watch_daemon()
        with self.model_lock:
            texts = self.model.texts()
        self.write_state(texts, "in place", set(self.disk()) - set(texts))
        writers.join()
        self.writer_ops = writers.ops
        deadline = time.monotonic() + 45
        gaps: list[str] = ["not checked"]
        while time.monotonic() < deadline:
            self.watch_daemon()
            try:
                gaps = self.rec.unconverged()
            except RuntimeError as exc:
                gaps = [f"etcd unavailable: {exc}"]
            if not gaps and self.daemon.ready():
                break
            time.sleep(0.3)
        self.note(f"converged: {not gaps}")
        for g in gaps:
            self.violation(f"unconverged at the end: {g}")
        if not gaps:
            try:
                self.rec.assert_quiet(4)     # over a resync (3 s)
            except (AssertionError, RuntimeError) as exc:
                self.violation(str(exc))
        try:
            self.rec.sync()
        except (AssertionError, RuntimeError) as exc:
            self.violation(f"the history could not be completed: {exc}")
        for v in self.rec.violations():
            self.violation(v)
        code = self.daemon.stop()
        if code != 0:
            self.violation(f"the daemon did not stop cleanly on SIGTERM (code {code})")
        logs = self.daemon.logs()
        if "Traceback" in logs:
            i = logs.index("Traceback")
            self.violation("the daemon printed a traceback:\n" + logs[max(0, i - 200):i + 1500])
        diverged = members_differ(self.cluster)
        if diverged:
            self.violation(f"etcd's members diverged (etcd lost writes, not etcdsync): {diverged}")


def members_differ(cluster: EtcdCluster, timeout: float = 15.0) -> str | None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            revs = {m.name: Gateway([m.endpoint], timeout=2).serializable_revision() for m in cluster.members}
            if len(set(revs.values())) == 1:
                rev = next(iter(revs.values()))
                stores = {m.name: Gateway([m.endpoint], timeout=5).range("\0", everything=True, revision=rev,
                                                                           serializable=True)[0]
                          for m in cluster.members}
                first = next(iter(stores.values()))
                if all(s == first for s in stores.values()):
                    return None
                last = f"different data at revision {rev}"
            else:
                last = f"revisions {revs}"
        except RuntimeError as exc:
            last = str(exc)
        time.sleep(0.3)
    return last


def campaign(seed: int, duration: float, workdir: Path | None = None, say: Callable[[str], None] = print) -> Result:
    """Run one campaign; the work directory (etcd data, manifests, daemon log) is kept when given,
    else removed unless there were violations."""
    own = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="etcdsync-soak-")) if workdir is None else workdir
    c = Campaign(seed, duration, wd, say)
    result = c.run()
    if own and not result.violations:
        shutil.rmtree(wd, ignore_errors=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=None, help="schedule seed (default: random, printed)")
    ap.add_argument("--duration", type=float, default=3600, help="seconds of faults (default 3600)")
    ap.add_argument("--workdir", default=None, help="keep etcd data, manifests and the daemon log here")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    print(f"seed {seed}", flush=True)
    wd = Path(args.workdir) if args.workdir else None
    if wd is not None:
        wd.mkdir(parents=True, exist_ok=False)
    result = campaign(seed, args.duration, wd, say=lambda line: print(line, flush=True))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / time.strftime("soak-%Y%m%dT%H%M%SZ.json", time.gmtime())
    path.write_text(json.dumps(result.to_json(), indent=2))
    print(f"\nseed {seed}: {sum(result.faults.values())} faults {dict(result.faults)}; writers {dict(result.writer_ops)}; "
          f"{result.events} events recorded, {result.versions} manifest versions, daemon started {result.daemon_starts}x")
    if result.violations:
        print(f"{len(result.violations)} VIOLATIONS (seed {seed}; work dir {result.workdir}):")
        for v in result.violations:
            print("  " + v.replace("\n", "\n    "))
    else:
        print("no violations")
    print(f"results: {path}")
    sys.exit(1 if result.violations else 0)


if __name__ == "__main__":
    main()
