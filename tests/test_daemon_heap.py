"""The daemon's memory: glibc heap settings (large blocks are their own mappings, freed back at once);
a resync does not parse manifests that did not change (the loader's peak)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import ctypes, sys
from etcdsync.daemon import daemon

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

lib = daemon._glibc()
if not lib or not hasattr(lib, "mallinfo2"):
    print("skip")
    sys.exit(0)
lib.mallinfo2.restype = MallInfo2
# freeing a large mapped block is what makes glibc raise its threshold (and keep later ones in the heap)
for size in (4 << 20, 8 << 20):
    bytearray(size)
if sys.argv[1] == "tuned":
    daemon.tune_heap()
for size in (200_000, 1 << 20, 6 << 20):
    before = lib.mallinfo2().hblkhd
    block = bytearray(size)
    mapped = lib.mallinfo2().hblkhd >= before + size     # a mapping of its own ...
    del block
    returned = lib.mallinfo2().hblkhd < before + size    # ... returned when freed
    print(size, mapped and returned)
"""


def test_tune_heap_maps_every_large_block_on_its_own() -> None:
    """In a fresh interpreter: the blocks of a process that ran other tests may fit freed heap space."""
    def probe(mode: str) -> str:
        root = str(Path(__file__).resolve().parents[1])     # this checkout's etcdsync
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        return subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                              env=env).stdout

    tuned = probe("tuned")
    if tuned == "skip\n":
        pytest.skip("glibc >= 2.33 only")
    assert tuned.split() == ["200000", "True", "1048576", "True", "6291456", "True"], tuned
    assert "False" in probe("default")     # the probe can tell: without tuning, glibc keeps them in its heap


# -- a resync parses the manifests again only when a file it reads changed ----------------------------

MANIFEST = """\
apiVersion: etcdsync/v1
kind: ConfigSet
metadata: {name: app}
spec:
  prefix: /app/
  data:
    a: "1"
    cert: {fromFile: cert.pem}
"""


def test_a_resync_parses_the_manifests_only_when_a_file_they_read_changed(tmp_path: Path) -> None:
    from etcdsync.daemon.daemon import Daemon
    from etcdsync.settings import Connection, DaemonSettings
    from etcdsync.sources.files import FileSource

    m = tmp_path / "m"
    m.mkdir()
    (m / "app.yaml").write_text(MANIFEST)
    (m / "cert.pem").write_text("cert-1")
    source = FileSource([str(m)], reserved="/.etcdsync/")
    loads: list[int] = []
    load = source.load
    source.load = lambda: loads.append(1) or load()  # type: ignore[method-assign]
    d = Daemon(Connection(["http://127.0.0.1:1"]), DaemonSettings(), source)

    def resync() -> bool:
        before = len(loads)
        asyncio.run(d._reload(quiet=True))
        return len(loads) > before

    asyncio.run(d._reload())                     # the first state read cert.pem: not known before it
    assert d.desired is not None and d.desired.keys["/app/cert"].value == b"cert-1"
    assert resync()                              # reads with its source known: remembered from now on
    assert not resync() and not resync()         # byte for byte as loaded: not parsed again
    os.utime(m / "app.yaml")                     # a touch alone changes nothing
    assert not resync()
    (m / "cert.pem").write_text("cert-2")        # a fromFile source changed (say its event was missed)
    assert resync() and d.desired.keys["/app/cert"].value == b"cert-2"
    assert not resync()
    (m / "more.yaml").write_text(MANIFEST.replace("app", "more").replace("cert.pem", "cert2.pem"))
    (m / "cert2.pem").write_text("x")
    assert resync() and "/more/cert" in d.desired.keys   # a new manifest file (with a new source)
    assert resync() and not resync()
    (m / "more.yaml").unlink()
    assert resync() and "/more/cert" not in d.desired.keys
    (m / "app.yaml").write_text(MANIFEST.replace('"1"', '"2"'))
    assert resync() and d.desired.keys["/app/a"].value == b"2"
    (m / "app.yaml").write_text("")             # an editor mid-save: a load error, kept state ...
    assert resync() and d.status.manifests_error is not None and d.desired.keys["/app/a"].value == b"2"
    assert resync() and resync()                 # ... and tried again on every resync until it loads
    (m / "app.yaml").write_text(MANIFEST)
    assert resync() and d.status.manifests_error is None
    before = len(loads)
    asyncio.run(d._reload())                     # a file event always parses
    assert len(loads) == before + 1
