"""Hostile manifests through the real CLI: every one is refused cleanly, quickly, and writes nothing.

Proved here, end to end (`python -m etcdsync apply -f FILE` as a subprocess against a real etcd, with
its address space limited to 1 GiB): each hostile input (alias bombs, deep nesting, python and
custom tags, tabs, non-UTF-8, UTF-16, NUL bytes, duplicate keys, huge values, a 70 MiB file, path
traversal in keys and prefixes, unknown fields, kinds and apiVersions, merge keys, `.inf`, a FIFO as
a `fromFile` source) gives exit 2 with exactly one stderr line naming the file, within 10 s, and etcd's
revision does not move. A file that is valid apart from a UTF-8 BOM loads and applies. Hypothesis
mutates a valid manifest and checks the same contract on whatever comes out, in-process (many
examples) and through the subprocess (a few). A running daemon fed the same inputs keeps its last
good state. (tests/test_manifest_errors.py covers the loader's messages in-process.)

The whole CLI path is fuzzed too: Hypothesis generates manifests (mostly valid, some with reads
outside the tree, etcdsync's own variables, spoofing keys), other clients' writes (some under leases,
on the managed keys and on neighbours) and hostile records under the reserved prefix, then drives
`diff` and `apply`. Never a traceback or a leaked canary; a record not in the documented format
(checked by an independent reader of the format) is exit 2 with nothing written; `apply` writes only
declared keys with their declared values, never over another client's lease or another set's key
without --take-ownership, and deletes only keys a record of its own apply set claims.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_faults import Ctl, Daemons, GiB, cli, wait_for
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from etcdsync.local.etcdbin import EtcdCluster

RESERVED = "/h/.etcdsync/"
H = "apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata:\n  name: app\nspec:\n  prefix: /h/app/\n  data:\n"
VALID = H + "    a: one\n    b: {x: 1, y: [true, null]}\n    c: {value: three, policy: create-only}\n"


@pytest.fixture(scope="module")
def etcd_h(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A private etcd: fuzzed manifests that happen to be valid write wherever they point."""
    c = EtcdCluster(1, base_dir=str(tmp_path_factory.mktemp("etcd-hostile")))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def billion_laughs() -> str:
    lines = ['    l0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        lines.append(f"    l{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    return H + "\n".join(lines) + "\n"


def nested_blocks(depth: int) -> str:
    out = [H + "    deep:"]
    for i in range(depth):
        out.append("      " + "  " * i + "k:")
    out.append("      " + "  " * depth + "v")
    return "\n".join(out) + "\n"


def big_file(path: Path) -> None:
    """A 70 MiB manifest: a valid head, then comment lines."""
    line = b"# " + b"x" * 1022 + b"\n"
    with open(path, "wb") as f:
        f.write(VALID.encode())
        for _ in range(70 * 1024):
            f.write(line)


def fifo_source(path: Path) -> None:
    os.mkfifo(path.parent / "pipe")
    path.write_text(H + "    f: {fromFile: pipe}\n")


MARKER = Path("/tmp/etcdsync-hostile-pwned")

def symlink_out(path: Path) -> None:
    os.symlink("/etc/passwd", path.parent / "innocent.txt")
    path.write_text(H + "    f: {fromFile: innocent.txt}\n")


# name -> file content (str/bytes) or a function that writes the file, and an optional word the
# one-line error must contain
CORPUS: dict[str, tuple[str | bytes | Callable[[Path], None], str]] = {
    "billion-laughs": (billion_laughs(), "alias"),
    "recursive-alias": (H + "    r: &r [1, *r]\n", ""),
    "deep-flow-nesting": (H + "    deep: " + "[" * 5000 + "]" * 5000 + "\n", "deep"),
    "deep-block-nesting": (nested_blocks(200), "deep"),
    "deep-json-nesting": (H + "    deep: " + "{a: " * 80 + "1" + "}" * 80 + "\n", "deep"),
    "python-object-apply": (H + f'    evil: !!python/object/apply:os.system ["touch {MARKER}"]\n', "tag"),
    "python-name": (H + "    evil: !!python/name:os.system\n", "tag"),
    "python-module-key": (H + '    ? !!python/object/new:os.system ["true"]\n    : x\n', ""),
    "custom-tag": (H + "    ref: !Ref other\n", "tag"),
    "tab-indent": (H + "\ta: one\n", ""),
    "latin-1": ((H + "    caf\xe9: cr\xe8me\n").encode("latin-1"), "UTF-8"),
    "utf-16": (("\ufeff" + VALID).encode("utf-16-le"), "UTF-8"),
    "nul-byte": (H + "    a: b\x00c\n", ""),
    "control-char": (H + "    a: b\x1bc\n", ""),
    "duplicate-data-key": (H + "    a: 1\n    a: 2\n", "duplicate"),
    "duplicate-metadata-name": (VALID.replace("  name: app\n", "  name: app\n  name: other\n"), "duplicate"),
    "duplicate-document": (VALID + "---\n" + VALID, ""),
    "huge-value": (H + "    big: " + "x" * (2 * 1024 * 1024) + "\n", "large"),
    "huge-key": (H + "    " + "k" * (2 * 1024 * 1024) + ": v\n", ""),
    "huge-file-70MiB": (big_file, "large"),
    "dotdot-key": (H + "    ../../etc/passwd: x\n", ".."),
    "dotdot-middle": (H + "    a/../../b: x\n", ".."),
    "dot-segment": (H + "    a/./b: x\n", "."),
    "absolute-key": (H + "    /etc/passwd: x\n", ""),
    "empty-segment": (H + "    a//b: x\n", ""),
    "trailing-slash": (H + "    a/: x\n", ""),
    "newline-in-key": (H + '    "a\\nb": x\n', ""),
    "dotdot-prefix": (H.replace("/h/app/", "/h/../etc/") + "    a: x\n", ""),
    "prefix-in-reserved": (H.replace("/h/app/", RESERVED) + "    a: x\n", "reserved"),
    "unknown-spec-field": (VALID.replace("spec:\n", "spec:\n  bogus: 1\n"), "bogus"),
    "unknown-top-field": (VALID + "extra: 1\n", "extra"),
    "unknown-kind": (VALID.replace("kind: ConfigSet", "kind: Secret"), "Secret"),
    "unknown-apiversion": (VALID.replace("etcdsync/v1", "etcdsync/v9"), "v9"),
    "not-a-mapping": ("- just\n- a list\n", ""),
    "merge-key": (H + "    base: &b {x: 1}\n    j: {<<: *b, y: 2}\n", ""),
    "inf-in-json": (H + "    j: {a: .inf}\n", "inf"),
    "nan-in-json": (H + "    j: [.nan]\n", "nan"),
    "fromfile-missing": (H + "    f: {fromFile: nope.txt}\n", "nope.txt"),
    "fromenv-missing": (H + "    f: {fromEnv: HOSTILE_UNSET_VARIABLE}\n", "HOSTILE_UNSET_VARIABLE"),
    "fromfile-dev-zero": (H + "    f: {fromFile: /dev/zero}\n", "/dev"),
    "long-form-no-source": (H + "    f: {policy: warn, secret: true}\n", ""),
    # reading outside the tree (issue 11)
    "fromfile-absolute": (H + "    f: {fromFile: /etc/passwd}\n", "outside the manifest root"),
    "fromfile-traversal": (H + "    f: {fromFile: ../../../../../../../../etc/passwd}\n", "outside the manifest root"),
    "fromfile-proc-environ": (H + "    harmless: {fromFile: /proc/self/environ}\n", "/proc"),
    "fromfile-proc-traversal": (H + "    f: {fromFile: ../../../../../../../proc/self/environ}\n", "/proc"),
    "fromfile-symlink-out": (symlink_out, "outside the manifest root"),
    "fromenv-own-password": (H + "    f: {fromEnv: ETCDSYNC_PASSWORD}\n", "own settings"),
    "fromenv-etcdctl": (H + "    f: {fromEnv: ETCDCTL_PASSWORD}\n", "own settings"),
    "long-form-typo": (H + "    f: {valeu: s3cret, secret: true}\n", "did you mean 'value'"),
    "bidi-key": (H + '    "invoice\u202Efdp.exe": x\n', "bidirectional"),
    "zero-width-key": (H + '    "a\u200Bb": x\n', "zero-width"),
    "nfd-key": (H + '    "cafe\u0301": x\n', "NFC"),
    "osc-in-key": (H + '    "a\\e]0;TITLE\\a": x\n', "control"),
    "empty-file": ("", "holds no documents"),
    "comments-only": ("# nothing yet\n\n", "holds no documents"),
    "binary-garbage": (bytes(range(256)) * 64, ""),
}


def write_case(tmp: Path, name: str) -> Path:
    content, _ = CORPUS[name]
    d = tmp / name
    d.mkdir()
    path = d / "m.yaml"
    if callable(content):
        content(path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_bytes(content.encode("utf-8"))
    return path


def refused(run: object, path: Path, word: str = "") -> None:
    code, err, seconds = run.code, run.err, run.seconds  # type: ignore[attr-defined]
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit {code}, stderr {err[-500:]!r}"
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}: {err[-1500:]!r}"
    assert str(path) in lines[0] or path.name in lines[0], f"the error does not name the file: {lines[0][:300]!r}"
    assert "Traceback" not in err and "internal error" not in lines[0], lines[0][:300]
    assert word.lower() in lines[0].lower(), f"expected {word!r} in {lines[0][:300]!r}"
    assert not set(lines[0]) & set("\x1b\x07\u202e\u200b\x00"), f"unescaped control in {lines[0][:300]!r}"
    assert "root:" not in err and "ETCDSYNC_ENDPOINTS=" not in err, "file contents leaked"
    assert seconds < 10, f"took {seconds:.1f}s"


def apply_file(etcd: EtcdCluster, path: Path, *extra: str, timeout: float = 30) -> object:
    return cli("apply", "-f", str(path), "--applyset", "h", "--reserved-prefix", RESERVED, *extra,
               endpoints=etcd.endpoints, memory=GiB, timeout=timeout, cwd=path.parent)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_hostile_manifest_is_refused_by_the_cli(name: str, etcd_h: EtcdCluster, tmp_path: Path) -> None:
    ctl = Ctl(etcd_h.endpoints)
    path = write_case(tmp_path, name)
    before = ctl.revision()
    run = apply_file(etcd_h, path)
    refused(run, path, CORPUS[name][1])
    assert ctl.revision() == before, "something was written"
    assert not MARKER.exists(), "a python tag was executed"


def test_fromfile_fifo_is_refused_in_bounded_time(etcd_h: EtcdCluster, tmp_path: Path) -> None:
    d = tmp_path / "fifo"
    d.mkdir()
    path = d / "m.yaml"
    fifo_source(path)
    ctl = Ctl(etcd_h.endpoints)
    before = ctl.revision()
    run = apply_file(etcd_h, path, timeout=10.5)
    refused(run, path, "pipe")
    assert ctl.revision() == before


def test_alias_bomb_of_a_large_scalar_is_refused_by_the_loaders_bound(etcd_h: EtcdCluster, tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    refs = ", ".join(["*b"] * 1500)
    path.write_text(H + f'    big: &b "{"x" * (1024 * 1024)}"\n    j: [{refs}]\n')
    ctl = Ctl(etcd_h.endpoints)
    before = ctl.revision()
    run = apply_file(etcd_h, path)
    refused(run, path)
    assert ctl.revision() == before
    assert "out of memory" not in run.err, f"refused only because the address space ran out: {run.err.strip()}"
    assert run.seconds < 3, f"took {run.seconds:.1f}s"


def test_bom_file_that_is_otherwise_valid_loads_and_applies(etcd_h: EtcdCluster, tmp_path: Path) -> None:
    ctl = Ctl(etcd_h.endpoints)
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + VALID.replace("/h/app/", "/h/bom/").replace("name: app", "name: bom").encode())
    run = cli("apply", "-f", str(path), "--applyset", "bom", "--reserved-prefix", RESERVED,
              endpoints=etcd_h.endpoints, memory=GiB)
    assert run.code == 0, run.err
    assert ctl.values("/h/bom/") == {"/h/bom/a": b"one", "/h/bom/b": b'{"x":1,"y":[true,null]}', "/h/bom/c": b"three"}


def test_one_hostile_file_in_a_tree_means_nothing_is_applied_or_pruned(etcd_h: EtcdCluster, tmp_path: Path) -> None:
    ctl = Ctl(etcd_h.endpoints)
    tree = tmp_path / "tree"
    tree.mkdir()
    good = VALID.replace("/h/app/", "/h/tree/").replace("name: app", "name: tree")
    (tree / "a.yaml").write_text(good)
    ok = cli("apply", "-f", str(tree), "--applyset", "tree", "--reserved-prefix", RESERVED,
             endpoints=etcd_h.endpoints, memory=GiB)
    assert ok.code == 0, ok.err
    before = ctl.revision()
    # the good file changes (would update and prune) and a hostile neighbour appears
    (tree / "a.yaml").write_text(good.replace("a: one", "a: changed").replace("    c: {value: three, policy: create-only}\n", ""))
    (tree / "z.yaml").write_text(billion_laughs())
    run = cli("apply", "-f", str(tree), "--applyset", "tree", "--reserved-prefix", RESERVED,
              endpoints=etcd_h.endpoints, memory=GiB)
    refused(run, tree / "z.yaml", "alias")
    assert ctl.revision() == before
    assert ctl.get("/h/tree/a") == b"one" and ctl.get("/h/tree/c") == b"three"


# ------------------------------------------------------------------------------------------------
# fuzzing: mutations of a valid manifest


TOKENS = ["&a ", "*a", "!!str ", "!!python/tuple ", "!x ", "<<: ", "? ", "- ", ": ", "{", "}", "[", "]", ",",
          "'", '"', "|", ">", "#", "---\n", "...\n", "\t", "\x00", "\ufeff", "%YAML 1.1\n", "%TAG ! tag:x:\n",
          "..", "/", "\n", "  ", "\\", "~", ".inf", "0x1F", "1e999", "\udc80"]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    text = VALID
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        tok = draw(st.sampled_from(TOKENS) | st.text(min_size=1, max_size=4))
        if op == "insert":
            text = text[:pos] + tok + text[pos:]
        elif op == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 8)):]
        else:
            text = text[:pos] + tok + text[pos + len(tok):]
    return text.encode("utf-8", "surrogatepass")


def check_fuzz_result(code: int, err: str, path: Path, before: int, after: int) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and "internal error" not in err, err[-2000:]
    if code == 2:
        assert len(lines) == 1, err[-1500:]
        assert str(path) in lines[0] or path.name in lines[0], lines[0][:300]
        assert after == before, "a refused manifest wrote something"
    else:
        assert code in (0, 3), (code, err[-500:])   # valid (applied) or refused by the deletion guard
        if code == 3:
            assert after == before


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=mutated())
@example(data=VALID.replace("  data:", "  data: &x").encode())
@example(data=(VALID + "---\n" + "\t").encode())
def test_fuzzed_manifests_in_process(data: bytes, etcd_h: EtcdCluster, tmp_path: Path) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(data)
    ctl_before = Ctl(etcd_h.endpoints).revision()
    code, _, err = _main(["apply", "-f", str(path), "--applyset", "fuzz", "--reserved-prefix", RESERVED,
                          "--allow-empty", "--force"], {"ETCDSYNC_ENDPOINTS": ",".join(etcd_h.endpoints)})
    check_fuzz_result(code, err, path, ctl_before, Ctl(etcd_h.endpoints).revision())


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=mutated())
def test_fuzzed_manifests_through_the_subprocess(data: bytes, etcd_h: EtcdCluster, tmp_path: Path) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(data)
    before = Ctl(etcd_h.endpoints).revision()
    run = cli("apply", "-f", str(path), "--applyset", "fuzz", "--reserved-prefix", RESERVED, "--allow-empty", "--force",
              endpoints=etcd_h.endpoints, memory=GiB, timeout=30)
    assert run.seconds < 10
    check_fuzz_result(run.code, run.err, path, before, Ctl(etcd_h.endpoints).revision())


# ------------------------------------------------------------------------------------------------
# the daemon fed hostile edits keeps its last good state


def test_daemon_keeps_last_good_state_through_hostile_edits(etcd_h: EtcdCluster, tmp_path: Path) -> None:
    ctl = Ctl(etcd_h.endpoints)
    mdir = tmp_path / "m"
    mdir.mkdir()
    good = VALID.replace("/h/app/", "/h/dmn/").replace("name: app", "name: dmn")
    (mdir / "app.yaml").write_text(good)
    daemons = Daemons()
    try:
        # the same key is drifted once per case: not a writer fighting the daemon (flap detection)
        d = daemons.start(tmp_path, [mdir], "--flap-threshold", "100", endpoints=etcd_h.endpoints,
                          reserved=RESERVED, applyset="dmn")
        d.wait_ready()
        want = {"/h/dmn/a": b"one", "/h/dmn/b": b'{"x":1,"y":[true,null]}', "/h/dmn/c": b"three"}
        assert ctl.values("/h/dmn/") == want
        src = tmp_path / "src"
        src.mkdir()
        for name in ("billion-laughs", "deep-flow-nesting", "python-object-apply", "utf-16", "huge-value",
                     "huge-file-70MiB", "dotdot-key", "duplicate-data-key"):
            os.replace(write_case(src, name), mdir / "app.yaml")
            t0 = time.monotonic()
            wait_for(lambda: d.ready().get("manifests") not in (None, "ok"), 10,
                     f"{name}: the daemon reports the bad manifest\n{d.logs()[-1500:]}", step=0.1)
            assert time.monotonic() - t0 < 10
            assert d.alive, f"{name}: the daemon died\n{d.logs()[-2000:]}"
            status = d.ready()["manifests"]
            assert "\n" not in status and "Traceback" not in d.logs()
            # the last good state is still enforced
            ctl("put", "/h/dmn/a", f"drift-{name}")
            wait_for(lambda: ctl.get("/h/dmn/a") == b"one", 5, f"{name}: drift repaired from the last good state")
            assert ctl.values("/h/dmn/") == want
            (mdir / "app.yaml").write_text(good)
            wait_for(lambda: d.ready().get("manifests") == "ok", 10, f"{name}: recovered")
        assert not MARKER.exists()
        assert d.stop() == 0
    finally:
        daemons.cleanup()


def test_daemon_stays_responsive_when_an_edit_points_fromfile_at_a_fifo(etcd_h: EtcdCluster, tmp_path: Path) -> None:
    ctl = Ctl(etcd_h.endpoints)
    mdir = tmp_path / "m"
    mdir.mkdir()
    good = VALID.replace("/h/app/", "/h/fifo/").replace("name: app", "name: fifo")
    (mdir / "app.yaml").write_text(good)
    daemons = Daemons()
    try:
        d = daemons.start(tmp_path, [mdir], endpoints=etcd_h.endpoints, reserved=RESERVED, applyset="fifo")
        d.wait_ready()
        os.mkfifo(mdir / "pipe")
        (mdir / "app.yaml").write_text(good + "    f: {fromFile: pipe}\n")
        time.sleep(1.5)
        assert d.get("/healthz", timeout=2) == (200, "ok\n")
        ctl("put", "/h/fifo/a", "drift")
        wait_for(lambda: ctl.get("/h/fifo/a") == b"one", 3, "drift repaired while the edit is pending")
    finally:
        daemons.cleanup()


# ------------------------------------------------------------------------------------------------
# the whole CLI path, fuzzed: generated manifests and etcd states (hostile records under the reserved
# prefix, leased keys of other clients, unmanaged neighbours) drive `diff` and `apply`; never a
# traceback, never a write or delete of a key that no apply set owns

FUZZ_ENV = {"APP_TOKEN": "tok", "ETCDSYNC_FUZZ_CANARY": "pw-canary", "ETCDCTL_FUZZ_CANARY": "u-canary", "EMPTY": ""}
CANARIES = ("pw-canary", "u-canary", "outside-canary", "root:x:")

_NOT_YAML_PRINTABLE = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _q(text: str) -> str:
    """A YAML double-quoted scalar whose value is exactly ``text``."""
    return _NOT_YAML_PRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(text, ensure_ascii=False))


def _mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any], one_in: int = 6) -> st.SearchStrategy[Any]:
    return st.integers(0, one_in - 1).flatmap(lambda i: rare if i == 0 else common)


# a small vocabulary, so that manifests, other clients' keys and hostile records meet on the same keys
_rel = _mostly(st.sampled_from(["a", "b", "p", "db/url", "x-y", "caf\u00e9"]),
               st.sampled_from(["cafe\u0301", "a\u202eb", "z\u200bw", "../up", "a\x1bb", "sp ace", "/abs"])
               | st.text(st.characters(codec="utf-8"), min_size=1, max_size=5), one_in=20)
_text = st.text(max_size=10) | st.sampled_from(["\x1b]0;TITLE\x07", "no", "1.10", "", "a\u202eb", "line\nline"])
_entry = _mostly(
    st.one_of(
        _text.map(lambda v: _q(v)),
        st.tuples(_text, st.sampled_from(["enforce", "warn", "create-only"]), st.booleans(), st.booleans()).map(
            lambda t: f"{{value: {_q(t[0])}, policy: {t[1]}, prune: {str(t[2]).lower()}, "
                      f"secret: {str(t[3]).lower()}}}"),
        st.just("{fromEnv: APP_TOKEN, secret: true}"), st.just("{fromFile: ok.txt}"),
        st.just("{a: 1, b: [true, null]}"),
    ),
    st.one_of(
        st.sampled_from(["ETCDSYNC_FUZZ_CANARY", "ETCDCTL_FUZZ_CANARY", "UNSET_VARIABLE_X", "EMPTY"]).map(
            lambda n: f"{{fromEnv: {n}, secret: true}}"),
        st.sampled_from(["/etc/passwd", "/proc/self/environ", "../outside.txt", "link-out", "/dev/zero"]).map(
            lambda p: f"{{fromFile: {p}}}"),
        st.sampled_from(["{valeu: s3cret, secret: true}", "{value: {secret: x}}"]),
    ),
    one_in=15,
)


@st.composite
def fuzz_manifest(draw: st.DrawFn) -> list[tuple[str, list[tuple[str, str]]]]:
    """One or two ConfigSet documents: (prefix suffix, [(relative key, YAML value text)])."""
    docs = []
    for suffix in draw(st.lists(st.sampled_from(["a/", "b/", "a/sub/"]), min_size=1, max_size=2, unique=True)):
        docs.append((suffix, draw(st.lists(st.tuples(_rel, _entry), max_size=5, unique_by=lambda t: t[0]))))
    return docs


_ns_key = st.tuples(st.sampled_from(["a/", "b/", "a/sub/", "other/", "other/"]), _rel).map(lambda t: t[0] + t[1])
_record_key = st.sampled_from(["sets/t/inventory/x1", "sets/t/inventory/x2", "sets/other/inventory/o1",
                               "sets/bad name/inventory/1", "sets/t/inventory/", "ownership", "election/t/0001",
                               "sets/t/other"])
_record_value = st.one_of(
    st.sampled_from(['{"v":1,"prefixes":{"{ns}other/":"ab"}}', '{"v":1,"prefixes":{"{ns}other/":"pa"}}',
                     '{"v":true,"prefixes":{"{ns}other/":["a","b"]}}', '{"v":1.0,"prefixes":{"{ns}other/":["p"]}}',
                     '{"v":1,"prefixes":{"{ns}other/":{"a":1}}}', '{"v":1,"prefixes":{"{ns}other":["/a"]}}',
                     '{"v":1,"prefixes":{"{ns}a/":["../other/a"]}}', '{"v":1,"prefixes":{"{ns}other/":["a"]},"x":1}',
                     '{"v":1,"prefixes":{"{ns}other/":["a","b"]}}', '{"v":1,"prefixes":{"{ns}a/":["a"]},"secret":["{ns}a/a"]}',
                     '{"v":2}', "t", "other", "", "\x1b]0;x\x07", "null", "[]"]),
    st.dictionaries(st.sampled_from(["v", "prefixes", "noprune", "secret"]),
                    st.one_of(st.integers(0, 2), st.booleans(), st.text(max_size=4),
                              st.lists(st.text(max_size=4), max_size=3),
                              st.dictionaries(st.sampled_from(["{ns}a/", "{ns}other/", "/"]),
                                              st.lists(st.sampled_from(["a", "b", "../x", ""]), max_size=3), max_size=2)),
                    max_size=4).map(json.dumps),
)


@st.composite
def fuzz_etcd(draw: st.DrawFn) -> list[tuple[str, str, bool]]:
    """Writes by other clients before the run: (key relative to ns or to the reserved prefix, value, leased)."""
    ops = [(k, v, draw(st.booleans())) for k, v in draw(st.lists(st.tuples(_ns_key, _text), max_size=6))]
    records = draw(_mostly(st.just([]), st.lists(st.tuples(_record_key, _record_value), min_size=1, max_size=2), one_in=3))
    ops += [(".etcdsync/" + k, v, False) for k, v in records]
    return draw(st.permutations(ops))


def _yaml(ns: str, docs: list[tuple[str, list[tuple[str, str]]]]) -> str:
    out = []
    for i, (suffix, data) in enumerate(docs):
        rows = "".join(f"    {_q(rel)}: {value}\n" for rel, value in data)
        out.append(f"apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {{name: d{i}}}\nspec:\n  prefix: {ns}{suffix}\n"
                   f"  data:{' {}' if not data else ''}\n{rows}")
    return "---\n".join(out)


def _snapshot(endpoints: list[str], prefix: str) -> dict[str, tuple[bytes, int]]:
    from etcdsync.etcd.store import Store
    from etcdsync.settings import Connection

    async def go() -> dict[str, tuple[bytes, int]]:
        async with Store(Connection(endpoints)) as s:
            kvs, _ = await s.get_prefix(prefix)
            return {kv.key: (kv.value, kv.lease) for kv in kvs}

    return asyncio.run(go())


def _write_state(endpoints: list[str], ns: str, ops: list[tuple[str, str, bool]]) -> None:
    from etcdsync.etcd.store import Store
    from etcdsync.settings import Connection

    async def go() -> None:
        async with Store(Connection(endpoints)) as s:
            lease = 0
            for key, value, leased in ops:
                if leased and not lease:
                    lease = await s.lease_grant(300)
                await s.put(ns + key, value.replace("{ns}", ns).encode("utf-8", "surrogatepass"), lease=lease if leased else 0)

    asyncio.run(go())


def _main(argv: list[str], environ: dict[str, str]) -> tuple[int, str, str]:
    import contextlib
    import gc
    import io

    from etcdsync.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update({k: v for k, v in old.items() if not k.startswith("ETCDSYNC_")})
    os.environ.update(environ)
    gc_was_enabled = gc.isenabled()
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        os.environ.clear()
        os.environ.update(old)
        if gc_was_enabled:
            gc.enable()
    return code, out.getvalue(), err.getvalue()


_SET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_CHUNK = re.compile(r"[A-Za-z0-9._-]{1,128}")
_CTRL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _may_list(raw: bytes, key: str) -> bool:
    """Whether an unreadable inventory chunk could list `key` under any reading (README, "Ownership"):
    it is not UTF-8, holds a `\\` escape, or holds a suffix of the key after a `/` as a quoted string."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    if "\\" in text:
        return True
    return any(f'"{key[i + 1:]}"' in text for i, ch in enumerate(key) if ch == "/")


def _claims_and_unreadable(before: dict[str, tuple[bytes, int]],
                           reserved: str) -> tuple[dict[str, set[str]] | None, list[tuple[str, bytes]]]:
    """The claims of every readable chunk, and (apply set, raw value) of each chunk whose content is
    not in the documented format; claims None when a record is unusable as a whole (a bad fence or
    chunk key: then every command must refuse)."""
    def segs_ok(text: str) -> bool:
        return not _CTRL.search(text) and not any(s in (".", "..") for s in text.split("/"))

    def dup_check(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({k for k, _ in pairs}) != len(pairs):
            raise ValueError("duplicate")
        return dict(pairs)

    out: dict[str, set[str]] = {}
    unreadable: list[tuple[str, bytes]] = []
    for key, (value, _) in before.items():
        if not key.startswith(reserved):
            continue
        rest = key[len(reserved):]
        if rest == "ownership":
            if not _SET.fullmatch(value.decode("utf-8", "replace")):
                return None, unreadable
            continue
        if not rest.startswith("sets/"):
            continue
        name, _, tail = rest[len("sets/"):].partition("/")
        if not tail.startswith("inventory/"):
            continue
        if not _SET.fullmatch(name) or not _CHUNK.fullmatch(tail[len("inventory/"):]):
            return None, unreadable
        listed = _chunk_claims(value, reserved, segs_ok, dup_check)
        if listed is None:
            unreadable.append((name, value))
        else:
            out.setdefault(name, set()).update(listed)
    return out, unreadable


def _chunk_claims(value: bytes, reserved: str, segs_ok: Any, dup_check: Any) -> set[str] | None:
    """The keys one chunk lists, or None when it is not in the documented format."""
    try:
        doc = json.loads(value, object_pairs_hook=dup_check)
    except ValueError:
        return None
    if not isinstance(doc, dict) or type(doc.get("v")) is not int or doc["v"] not in (1, 2) \
            or set(doc) - {"v", "prefixes", "noprune", "secret", *(("documents",) if doc["v"] == 2 else ())} \
            or not isinstance(doc.get("prefixes"), dict):
        return None
    listed: set[str] = set()
    for prefix, rels in doc["prefixes"].items():
        if not prefix.endswith("/") or not segs_ok(prefix) or prefix.startswith(reserved) or not isinstance(rels, list):
            return None
        for rel in rels:
            if not isinstance(rel, str) or not rel or rel.startswith("/") or not segs_ok(rel):
                return None
            listed.add(prefix + rel)
    for flag in ("noprune", "secret"):
        keys = doc.get(flag, [])
        if not isinstance(keys, list) or not all(isinstance(k, str) and k in listed for k in keys):
            return None
    # format 2: {"<kind>/<name>": {listed prefix: true | non-empty list of keys listed there}}, a key once
    documents = doc.get("documents", {})
    if not isinstance(documents, dict):
        return None
    documented: set[str] = set()
    for doc_name, groups in documents.items():
        kind, _, doc_rest = doc_name.partition("/")
        if not kind.isalpha() or not kind.isascii() or not doc_rest or _CTRL.search(doc_name) \
                or not isinstance(groups, dict) or not groups:
            return None
        for prefix, rels in groups.items():
            if prefix not in doc["prefixes"]:
                return None
            if rels is True:
                rels = doc["prefixes"][prefix]
            elif not isinstance(rels, list) or not rels or \
                    not all(isinstance(r, str) and r in doc["prefixes"][prefix] for r in rels):
                return None
            for rel in rels:
                if prefix + rel in documented:
                    return None
                documented.add(prefix + rel)
    return listed


def _check_run(cmd: str, code: int, out: str, err: str, before: dict[str, tuple[bytes, int]],
               after: dict[str, tuple[bytes, int]], reserved: str, desired: Any, take: bool) -> None:
    assert code in (0, 1, 2, 3), (cmd, code, err[-800:])
    assert "Traceback" not in err + out and "internal error" not in err, err[-2000:]
    for canary in CANARIES:
        assert canary not in out + err, f"{canary} leaked by {cmd}"
    assert not set(out + err) & set("\x1b\x07\u202e"), f"raw control or bidi character printed by {cmd}"
    if code not in (0, 1):
        assert [ln for ln in err.splitlines() if ln.startswith("error:")], err[-800:]
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    claims, unreadable = _claims_and_unreadable(before, reserved)
    if claims is None or any(name == "t" for name, _ in unreadable):
        assert code == 2, f"{cmd} went ahead (exit {code}) over an ownership record not in the documented format"
    elif unreadable and code in (0, 1):
        # another set's unreadable chunk stops a plan only when it could list a key the plan touches
        for name, raw in unreadable:
            for key in sorted(set(desired.keys) | {k for k in changed if not k.startswith(reserved)}):
                assert not _may_list(raw, key), \
                    f"{cmd} went ahead (exit {code}) over set {name!r}'s unreadable chunk that may list {key!r}"
    if cmd == "diff" or code in (2, 3):
        assert not changed, f"{cmd} exited {code} but changed {sorted(changed)[:5]}"
        return
    assert claims is not None
    mine = claims.get("t", set())
    others = {k for name, keys in claims.items() if name != "t" for k in keys}
    for key in sorted(changed):
        if key.startswith(reserved):
            continue
        if key in after:
            dk = desired.keys.get(key)
            assert dk is not None, f"apply wrote {key!r}, which the manifests do not declare"
            assert after[key][0] == dk.value, f"apply wrote a value other than the declared one to {key!r}"
            assert after[key][1] == 0, f"{key!r} was written under a lease"
            if before.get(key, (b"", 0))[1] and not take:
                raise AssertionError(f"apply overwrote {key!r}, held by another client's lease, without --take-ownership")
            if key in others and key not in mine and not take:
                raise AssertionError(f"apply wrote {key!r}, owned by another apply set")
        else:
            assert key in mine, f"apply deleted {key!r}, which no record of apply set 't' claims"
            assert key not in desired.keys, f"apply deleted the declared key {key!r}"


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow, HealthCheck.data_too_large])
@given(first=fuzz_manifest(), state=fuzz_etcd(), second=fuzz_manifest(),
       flags=st.lists(st.sampled_from(["--take-ownership", "--allow-empty", "--force"]), unique=True, max_size=2))
def test_fuzzed_cli_path_never_touches_keys_no_apply_set_owns(first: Any, state: Any, second: Any, flags: list[str],
                                                                etcd_h: EtcdCluster, tmp_path_factory: pytest.TempPathFactory) -> None:
    import secrets as _secrets

    from etcdsync.errors import ManifestError
    from etcdsync.manifest import load_manifests

    ns = f"/fz{_secrets.token_hex(4)}/"
    reserved = f"{ns}.etcdsync/"
    tmp = tmp_path_factory.mktemp("fz")
    (tmp / "outside.txt").write_text("outside-canary")
    mdir = tmp / "m"
    mdir.mkdir()
    (mdir / "ok.txt").write_text("file-value")
    os.symlink(tmp / "outside.txt", mdir / "link-out")
    environ = {**FUZZ_ENV, "ETCDSYNC_ENDPOINTS": ",".join(etcd_h.endpoints)}
    base = ["-f", str(mdir), "--applyset", "t", "--reserved-prefix", reserved]
    endpoints = list(etcd_h.endpoints)
    # a legitimate first apply (it may be refused: then the state is simply emptier)
    (mdir / "app.yaml").write_text(_yaml(ns, first) or "# empty\n")
    _main(["apply", *base], environ)
    _write_state(endpoints, ns, state)
    (mdir / "app.yaml").write_text(_yaml(ns, second) or "# empty\n")
    try:
        desired = load_manifests([mdir], environ=FUZZ_ENV, reserved_prefix=reserved)
    except ManifestError:
        desired = None
    for cmd in ("diff", "apply"):
        before = _snapshot(endpoints, ns)
        code, out, err = _main([cmd, *base, *flags], environ)
        after = _snapshot(endpoints, ns)
        event(f"{cmd} exit {code}" + (f" ({err.split(':')[-1].strip()[:40]})" if code == 2 and cmd == "apply" else ""))
        if desired is None:
            assert code == 2 and before == after, (cmd, code, err[-500:])
        _check_run(cmd, code, out, err, before, after, reserved, desired, "--take-ownership" in flags)
