"""Contexts in a config file: parsing and its errors (pure), precedence (Connection.from_env), and
`--context` selecting one of two real etcds."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Env

from etcdsync import contexts
from etcdsync.errors import UsageError
from etcdsync.local.etcdbin import EtcdCluster
from etcdsync.settings import Connection, Context


def write_config(tmp: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp / "etc" / "config.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(textwrap.dedent(text))
    path.chmod(mode)
    return path


# -- the file ------------------------------------------------------------------------------------------

def test_a_context_with_every_field_paths_relative_to_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, """\
        current-context: b
        contexts:
          a:
            endpoints: [http://127.0.0.1:1, "http://127.0.0.1:2"]
            user: deploy
            password-file: secrets/a.pass
            cacert: /abs/ca.pem
            cert: c.pem
            key: k.pem
            reserved-prefix: /.mine/
            timeout: 1m30s
          b:
            endpoints: http://127.0.0.1:3,http://127.0.0.1:4
        """)
    cfg = contexts.load(str(path))
    base = str(path.parent)
    assert cfg.current == "b" and list(cfg.contexts) == ["a", "b"]
    assert cfg.contexts["a"] == Context("a", str(path), ("http://127.0.0.1:1", "http://127.0.0.1:2"), "deploy",
                                        f"{base}/secrets/a.pass", "/abs/ca.pem", f"{base}/c.pem", f"{base}/k.pem",
                                        "/.mine/", 90.0)
    assert cfg.contexts["b"].endpoints == ("http://127.0.0.1:3", "http://127.0.0.1:4")


@pytest.mark.parametrize(("text", "message"), [
    ("contexts:\n  a:\n    user: u\n    password: hunter2\n",
     ":4: context 'a': a password in clear is not accepted in the config file"),
    ("contexts:\n  a:\n    user: 'u:hunter2'\n", ":3: context 'a': user must be a user name"),
    ("contexts:\n  a:\n    endpoint: x\n", ":3: context 'a': unknown field 'endpoint'"),
    ("contexts:\n  a:\n    timeout: soon\n", ":3: context 'a': timeout 'soon' is not a duration"),
    ("contexts:\n  a:\n    reserved-prefix: /x\n", ":3: context 'a': reserved-prefix '/x': must start and end"),
    ("contexts:\n  a:\n    password-file: p\n", ":3: context 'a': password-file given without a user"),
    ("contexts:\n  a: {}\n  a: {}\n", ":3:3: duplicate key 'a'"),
    ("contexts:\n  a:\n    user: [\n", ":4:1: invalid YAML"),
    ("context: {}\n", ":1: unknown field 'context'"),
    ("contexts: [a]\n", ":1: contexts: expected a mapping"),
])
def test_malformed_files_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = write_config(tmp_path, text)
    with pytest.raises(UsageError) as exc:
        contexts.load(str(path))
    assert str(exc.value).startswith(str(path) + message.split(" ", 1)[0]), str(exc.value)
    assert message.split(" ", 1)[1] in str(exc.value) if " " in message else True
    assert "hunter2" not in str(exc.value)


def test_a_file_others_can_write_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path, "contexts: {a: {}}\n", mode=0o620)
    with pytest.raises(UsageError, match="writable by group or others; refusing"):
        contexts.load(str(path))
    path.chmod(0o602)
    with pytest.raises(UsageError, match="writable by group or others"):
        contexts.load(str(path))
    path.chmod(0o644)
    assert list(contexts.load(str(path)).contexts) == ["a"]


def test_selection_flag_then_env_then_current(tmp_path: Path) -> None:
    path = write_config(tmp_path, "current-context: a\ncontexts: {a: {user: ua}, b: {user: ub}, c: {user: uc}}\n")
    env = {"ETCDSYNC_CONFIG": str(path)}
    assert contexts.select(None, env).name == "a"                                           # type: ignore[union-attr]
    assert contexts.select(None, {**env, "ETCDSYNC_CONTEXT": "b"}).name == "b"              # type: ignore[union-attr]
    assert contexts.select("c", {**env, "ETCDSYNC_CONTEXT": "b"}).name == "c"               # type: ignore[union-attr]
    with pytest.raises(UsageError) as exc:
        contexts.select("zz", env)
    assert str(exc.value) == f"--context zz: no such context in {path} (contexts: a, b, c)"
    with pytest.raises(UsageError, match=r"^ETCDSYNC_CONTEXT zz: no such context"):
        contexts.select(None, {**env, "ETCDSYNC_CONTEXT": "zz"})
    path.write_text("current-context: gone\ncontexts: {a: {}}\n")
    with pytest.raises(UsageError, match=rf"^{path}:1: current-context gone: no such context .*\(contexts: a\)"):
        contexts.select(None, env)
    assert contexts.select("a", env) is not None                                           # --context still works


def test_no_config_file(tmp_path: Path) -> None:
    home = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert contexts.select(None, home) is None                                             # nothing asked, nothing there
    with pytest.raises(UsageError, match=r"^--context a: no config file \(.*/etcdsync/config.yaml"):
        contexts.select("a", home)
    with pytest.raises(UsageError, match="^ETCDSYNC_CONFIG=.*/nope.yaml: no such file"):
        contexts.select(None, {"ETCDSYNC_CONFIG": str(tmp_path / "nope.yaml")})


# -- precedence ----------------------------------------------------------------------------------------

def test_precedence_flags_env_etcdctl_context_defaults(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("from-context\n")
    ctx = Context("a", "cfg", ("http://ctx:1",), "ctxuser", str(pw), "ctx-ca", "ctx-cert", "ctx-key", None, 9.0)
    c = Connection.from_env({}, context=ctx)
    assert (c.endpoints, c.user, c.password, c.ca_cert, c.cert, c.key, c.timeout) == (
        ("http://ctx:1",), "ctxuser", "from-context", "ctx-ca", "ctx-cert", "ctx-key", 9.0)
    etcdctl = {"ETCDCTL_ENDPOINTS": "http://ctl:1", "ETCDCTL_CACERT": "ctl-ca"}
    c = Connection.from_env(etcdctl, context=ctx)
    assert (c.endpoints, c.ca_cert, c.cert) == (("http://ctl:1",), "ctl-ca", "ctx-cert")
    c = Connection.from_env({**etcdctl, "ETCDSYNC_ENDPOINTS": "http://es:1", "ETCDSYNC_TIMEOUT": "2"}, context=ctx)
    assert (c.endpoints, c.timeout) == (("http://es:1",), 2.0)
    c = Connection.from_env({"ETCDSYNC_ENDPOINTS": "http://es:1"}, context=ctx, endpoints="http://flag:1", timeout=3.0)
    assert (c.endpoints, c.timeout, c.password) == (("http://flag:1",), 3.0, "from-context")
    assert Connection.from_env({}, context=None).endpoints == ("http://127.0.0.1:2379",)
    # a password from the environment wins over the context's file; another user never gets the context's password
    assert Connection.from_env({"ETCDSYNC_PASSWORD": "env"}, context=ctx).password == "env"
    other = Connection.from_env({"ETCDSYNC_USER": "someone"}, context=ctx)
    assert (other.user, other.password) == ("someone", None)
    assert Connection.from_env({}, context=ctx, user="ctxuser").password == "from-context"


# -- against etcd --------------------------------------------------------------------------------------

@pytest.fixture
def other_etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(1, base_dir=str(tmp_path / "etcd-b"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _two(env: Env, b: EtcdCluster, current: str = "a") -> dict[str, str]:
    path = write_config(env.tmp, f"""\
        # two clusters
        current-context: {current}
        contexts:
          a:
            endpoints: {env.endpoints[0]}
          b:
            endpoints: [{b.endpoints[0]}]
            reserved-prefix: {env.ns}res/
        """)
    return {"ETCDSYNC_CONFIG": str(path), "ETCDSYNC_ENDPOINTS": "", "ETCDCTL_ENDPOINTS": "", "ETCDSYNC_CONTEXT": ""}


def test_context_selects_the_etcd(env: Env, other_etcd: EtcdCluster) -> None:
    cfg = _two(env, other_etcd)
    key = f"{env.ns}where"
    assert env.cli("put", key, "in-b", "--context", "b", env=cfg).code == 0
    assert env.cli("put", key, "in-a", env=cfg).code == 0                          # current-context: a
    assert env.get(key) == b"in-a"
    r = env.cli("get", key, "--context", "b", env=cfg)
    assert (r.code, r.out) == (0, "in-b\n"), r.err
    assert env.cli("get", key, env={**cfg, "ETCDSYNC_CONTEXT": "b"}).out == "in-b\n"
    # the environment wins over the context, the flag over both
    assert env.cli("get", key, "--context", "b", env={**cfg, "ETCDSYNC_ENDPOINTS": env.endpoints[0]}).out == "in-a\n"
    assert env.cli("get", key, "--endpoints", other_etcd.endpoints[0], env={**cfg, "ETCDSYNC_CONTEXT": "a"}).out == "in-b\n"
    # use-context rewrites the file (comments kept) and the next command follows it
    r = env.cli("config", "use-context", "b", env=cfg)
    assert (r.code, r.out) == (0, "current-context: b\n")
    text = Path(cfg["ETCDSYNC_CONFIG"]).read_text()
    assert text.startswith("# two clusters\ncurrent-context: b\ncontexts:\n")
    assert oct(Path(cfg["ETCDSYNC_CONFIG"]).stat().st_mode & 0o777) == "0o600"
    assert env.cli("get", key, env=cfg).out == "in-b\n"
    assert env.cli("config", "current-context", env=cfg).out == "b\n"


def test_context_reserved_prefix(env: Env, other_etcd: EtcdCluster) -> None:
    cfg = _two(env, other_etcd, current="b")
    key = f"{env.ns}res/x"
    r = env.cli("put", key, "v", env=cfg)                                           # under b's reserved prefix
    assert r.code == 2 and "reserved" in r.err, r.err
    assert env.cli("put", key, "v", "--reserved-prefix", "/.etcdsync/", env=cfg).code == 0
    assert env.cli("put", key, "v", "--context", "a", env=cfg).code == 0


def test_errors_are_one_line_exit_2(env: Env, other_etcd: EtcdCluster) -> None:
    cfg = _two(env, other_etcd)
    r = env.cli("ls", env.ns, "--context", "nope", env=cfg)
    assert (r.code, r.out) == (2, "")
    assert r.err == f"error: --context nope: no such context in {cfg['ETCDSYNC_CONFIG']} (contexts: a, b)\n"
    Path(cfg["ETCDSYNC_CONFIG"]).chmod(0o666)
    r = env.cli("ls", env.ns, env=cfg)
    assert r.code == 2 and r.err.count("\n") == 1 and "writable by group or others" in r.err
    Path(cfg["ETCDSYNC_CONFIG"]).write_text("contexts:\n  a:\n    endpoints: [\n")
    Path(cfg["ETCDSYNC_CONFIG"]).chmod(0o600)
    r = env.cli("ls", env.ns, env=cfg)
    assert r.code == 2 and r.err.startswith(f"error: {cfg['ETCDSYNC_CONFIG']}:4:1: invalid YAML") and "Traceback" not in r.err


def test_config_view_hides_secrets(env: Env, tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "pw").write_text("hunter2-secret\n")
    path = write_config(tmp_path, """\
        current-context: prod
        contexts:
          dev: {endpoints: http://127.0.0.1:2379}
          prod:
            endpoints: [https://10.0.0.1:2379, https://10.0.0.2:2379]
            user: deploy
            password-file: pw
            timeout: 10s
        """)
    cfg = {"ETCDSYNC_CONFIG": str(path)}
    r = env.cli("config", "view", env=cfg)
    assert r.code == 0, r.err
    assert r.out == textwrap.dedent(f"""\
        # {path}
        current-context: prod
        contexts:
          dev:
            endpoints: http://127.0.0.1:2379
          prod:   # current
            endpoints: https://10.0.0.1:2379, https://10.0.0.2:2379
            user: deploy
            password-file: {path.parent}/pw
            timeout: 10s
            password: (read from password-file, not shown)
        """)
    j = env.cli("config", "view", "-o", "json", env=cfg)
    r2 = env.cli("config", "get-contexts", env=cfg)
    assert r2.out.splitlines() == [
        "CURRENT  NAME  ENDPOINTS                                    USER",
        "         dev   http://127.0.0.1:2379                        -",
        "*        prod  https://10.0.0.1:2379,https://10.0.0.2:2379  deploy",
    ]
    for out in (r.out, j.out, r2.out, r.err, j.err):
        assert "hunter2" not in out
    assert '"current-context": "prod"' in j.out
    assert env.cli("config", "use-context", "nope", env=cfg).err == \
        f"error: nope: no such context in {path} (contexts: dev, prod)\n"
    assert os.stat(path).st_mode & 0o777 == 0o600
