"""End to end: the CLI against a real etcd. Each test owns a key namespace and a reserved prefix."""

from __future__ import annotations

import json
import time

import pytest
from conftest import Env
from history import Recorder

BASE = """\
apiVersion: etcdsync/v1
kind: ConfigSet
metadata:
  name: app
spec:
  prefix: {ns}config/app/
  data:
    db/url: postgres://db:5432/app
    retry: 5
    region: no
    version: 1.10
    features: {beta: true, limit: 3}
"""

# a manifest that declares no key (a file without documents is an error instead)
NOTHING = "apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: app}\nspec: {prefix: /nothing/}\n"


def test_diff_apply_diff_and_second_apply_writes_nothing(env: Env, history: Recorder) -> None:
    f = env.write("m/app.yaml", BASE)
    r = env.cli("diff", "-f", str(f), "--applyset", "t")
    assert r.code == 1, r
    assert "5 to create, 0 to update, 0 to delete, 0 unchanged" in r.out
    assert f"+ {env.ns}config/app/region" in r.out

    r = env.cli("apply", "-f", str(f), "--applyset", "t")
    assert r.code == 0, r
    assert "applied: 5 created, 0 updated, 0 deleted, 0 unchanged" in r.out
    data = env.dump()
    assert data[f"{env.ns}config/app/region"] == b"no"
    assert data[f"{env.ns}config/app/version"] == b"1.10"
    assert data[f"{env.ns}config/app/retry"] == b"5"
    assert data[f"{env.ns}config/app/features"] == b'{"beta":true,"limit":3}'

    r = env.cli("diff", "-f", str(f), "--applyset", "t")
    assert r.code == 0, r
    assert "0 to create, 0 to update, 0 to delete, 5 unchanged" in r.out
    assert f"{env.ns}config/app/region" not in r.out
    # the keys in sync are counted, not planned one by one, unless they are to be listed: -v, -o json
    r = env.cli("diff", "-f", str(f), "--applyset", "t", "-v")
    assert r.code == 0 and "0 to create, 0 to update, 0 to delete, 5 unchanged" in r.out, r
    assert f"= {env.ns}config/app/region" in r.out and f"= {env.ns}config/app/features" in r.out, r.out
    r = env.cli("diff", "-f", str(f), "--applyset", "t", "-o", "json")
    doc = json.loads(r.out)
    assert r.code == 0 and doc["summary"]["unchanged"] == 5 and len(doc["changes"]) == 5, r
    assert {c["action"] for c in doc["changes"]} == {"unchanged"}

    rev = env.revision()
    r = env.cli("apply", "-f", str(f), "--applyset", "t")
    assert r.code == 0 and "in sync" in r.out
    assert env.untouched_since(rev), "a second apply must not write anything"


def test_drift_is_repaired_and_unowned_keys_survive(env: Env, history: Recorder) -> None:
    f = env.write("m/app.yaml", BASE)
    assert env.cli("apply", "-f", str(f), "--applyset", "t").code == 0
    env.put(f"{env.ns}config/app/retry", "99")
    env.put(f"{env.ns}config/app/stranger", "not ours")
    r = env.cli("diff", "-f", str(f), "--applyset", "t")
    assert r.code == 1
    assert "- 99" in r.out and "+ 5" in r.out
    assert "stranger" not in r.out
    assert env.cli("apply", "-f", str(f), "--applyset", "t").code == 0
    assert env.get(f"{env.ns}config/app/retry") == b"5"
    # remove a key and the whole document's other keys: pruned, the stranger stays
    env.write("m/app.yaml", BASE.replace("    retry: 5\n", ""))
    r = env.cli("apply", "-f", str(f), "--applyset", "t")
    assert r.code == 0, r
    assert "1 deleted" in r.out
    assert env.get(f"{env.ns}config/app/retry") is None
    assert env.get(f"{env.ns}config/app/stranger") == b"not ours"


def test_removed_document_is_pruned(env: Env, history: Recorder) -> None:
    env.write("m/app.yaml", BASE)
    env.write("m/other.yaml", """\
        apiVersion: etcdsync/v1
        kind: ConfigSet
        metadata: {name: other}
        spec:
          prefix: {ns}config/other/
          data: {a: 1, b: 2}
        """)
    m = str(env.tmp / "m")
    assert env.cli("apply", "-f", m, "--applyset", "t").code == 0
    assert env.get(f"{env.ns}config/other/a") == b"1"
    (env.tmp / "m" / "other.yaml").unlink()
    r = env.cli("apply", "-f", m, "--applyset", "t")
    assert r.code == 0, r
    assert "2 deleted" in r.out
    assert env.get(f"{env.ns}config/other/a") is None
    assert env.get(f"{env.ns}config/app/retry") == b"5"


@pytest.mark.parametrize("content", ["", "   \n\n", "# payments, being rewritten\n", "---\n...\n"])
def test_a_file_emptied_in_a_tree_is_exit_2_and_prunes_nothing(env: Env, history: Recorder, content: str) -> None:
    env.write("m/app.yaml", BASE)
    pay = env.write("m/payments.yaml", """\
        apiVersion: etcdsync/v1
        kind: ConfigSet
        metadata: {name: payments}
        spec:
          prefix: {ns}config/payments/
          data:
            url: https://pay
            seed: {value: initial, policy: create-only}
            token: {fromEnv: PAY_TOKEN, secret: true}
        """)
    m = str(env.tmp / "m")
    assert env.cli("apply", "-f", m, "--applyset", "t", env={"PAY_TOKEN": "s3cr3t"}).code == 0
    env.put(f"{env.ns}config/payments/seed", "runtime")
    before = env.dump()
    pay.write_text(content)  # `: > payments.yaml`, an editor mid-save
    rev = env.revision()
    for cmd in ("validate", "diff", "apply"):
        r = env.cli(cmd, "-f", m, *(("--applyset", "t") if cmd != "validate" else ()))
        assert r.code == 2, (cmd, r)
        assert r.err.strip() == f"error: {pay}: holds no documents; delete the file to prune its keys", r.err
    assert env.untouched_since(rev), "nothing written or deleted"
    assert env.dump() == before
    assert before[f"{env.ns}config/payments/token"] == b"s3cr3t"
    assert before[f"{env.ns}config/payments/seed"] == b"runtime"
    pay.unlink()  # deleting the file is the way to prune its keys
    r = env.cli("apply", "-f", m, "--applyset", "t")
    assert r.code == 0 and "3 deleted" in r.out, r
    assert env.get(f"{env.ns}config/payments/url") is None and env.get(f"{env.ns}config/app/retry") == b"5"


def test_moving_a_key_between_documents_is_reported_and_singular_counts(env: Env, history: Recorder) -> None:
    one = env.write("m/app.yaml", BASE)
    r = env.cli("apply", "-f", str(one), "--applyset", "t")
    assert r.code == 0 and " in 1 transaction (revision" in r.out, r
    # retry moves to a document with a shorter prefix: same key, same value, new ownership record
    env.write("m/app.yaml", BASE.replace("    retry: 5\n", ""))
    env.write("m/retry.yaml", """\
        apiVersion: etcdsync/v1
        kind: ConfigSet
        metadata: {name: retry}
        spec:
          prefix: {ns}config/
          data: {app/retry: 5}
        """)
    m = str(env.tmp / "m")
    r = env.cli("diff", "-f", m, "--applyset", "t")
    assert r.code == 1, r
    assert "0 to create, 0 to update, 0 to delete, 5 unchanged (1 ownership record to update)" in r.out, r.out
    r = env.cli("apply", "-f", m, "--applyset", "t")
    assert r.code == 0, r
    assert "(1 ownership record updated) in 1 transaction (revision" in r.out, r.out
    assert env.cli("diff", "-f", m, "--applyset", "t").code == 0
    live = env.write("l/svc.yaml", """\
        apiVersion: etcdsync/v1
        kind: Service
        metadata: {name: web}
        spec:
          prefix: {ns}services/
          ttl: 5s
          instances: [{id: w1, host: 127.0.0.1, port: 80}]
        """)
    r = env.cli("validate", "-f", str(live))
    assert r.out.strip() == "valid: 1 file, 0 keys, 1 live instance", r.out
    r = env.cli("apply", "-f", str(live), "--applyset", "l")
    assert "1 live instance (ttl/check) is left to `etcdsync run`" in r.out, r.out


def test_existing_unowned_key_is_adopted_then_pruned(env: Env, history: Recorder) -> None:
    env.put(f"{env.ns}config/app/retry", "5")
    f = env.write("m/app.yaml", BASE)
    r = env.cli("diff", "-f", str(f), "--applyset", "t")
    assert f"> {env.ns}config/app/retry" in r.out and "adopt" in r.out
    assert env.cli("apply", "-f", str(f), "--applyset", "t").code == 0
    env.write("m/app.yaml", BASE.replace("    retry: 5\n", ""))
    assert env.cli("apply", "-f", str(f), "--applyset", "t").code == 0
    assert env.get(f"{env.ns}config/app/retry") is None


def test_key_owned_by_another_set_is_refused_unless_take_ownership(env: Env, history: Recorder) -> None:
    f = env.write("m/app.yaml", BASE)
    assert env.cli("apply", "-f", str(f), "--applyset", "one").code == 0
    g = env.write("m2/app.yaml", BASE.replace("retry: 5", "retry: 6"))
    rev = env.revision()
    r = env.cli("apply", "-f", str(g), "--applyset", "two")
    assert r.code == 3, r
    assert "'one'" in r.err and "'two'" in r.err
    assert env.untouched_since(rev)
    r = env.cli("apply", "-f", str(g), "--applyset", "two", "--take-ownership")
    assert r.code == 0, r
    assert env.get(f"{env.ns}config/app/retry") == b"6"
    # "one" no longer owns the keys: emptying it deletes nothing
    empty = env.write("m3/empty.yaml", NOTHING)
    r = env.cli("apply", "-f", str(empty), "--applyset", "one", "--allow-empty")
    assert r.code == 0, r
    assert env.get(f"{env.ns}config/app/retry") == b"6"


def test_a_plan_decodes_only_the_chunks_of_other_sets_it_needs(env: Env) -> None:
    f = env.write("m/app.yaml", BASE)
    assert env.cli("apply", "-f", str(f), "--applyset", "one").code == 0
    # a chunk of another set that does not read, and that no reading of could list a key planned below
    env.put(f"{env.reserved}sets/zz/inventory/broken", '{"v":1,"prefixes":{"/elsewhere/":"oops"}}')
    two = BASE.replace("config/app/", "config/two/")
    g = env.write("m2/app.yaml", two)
    r = env.cli("apply", "-f", str(g), "--applyset", "two")
    assert r.code == 0, r
    # keys of "one" are still refused, with nothing written
    rev = env.revision()
    r = env.cli("apply", "-f", str(f), "--applyset", "two")
    assert r.code == 3 and "owned by apply set 'one'" in r.err, r
    assert env.untouched_since(rev)
    # a chunk that may list a planned key and does not read is an error, never "not owned"
    env.put(f"{env.reserved}sets/zz/inventory/broken", '{"v":1,"prefixes":{"%sconfig/three/":"retry"}}' % env.ns)
    h = env.write("m3/app.yaml", BASE.replace("config/app/", "config/three/"))
    rev = env.revision()
    r = env.cli("apply", "-f", str(h), "--applyset", "three")
    assert r.code == 2 and "sets/zz/inventory/broken: inventory chunk is not readable" in r.err, r
    assert env.untouched_since(rev)


def test_deletion_guard(env: Env, history: Recorder) -> None:
    f = env.write("m/app.yaml", BASE)
    assert env.cli("apply", "-f", str(f), "--applyset", "t").code == 0
    empty = env.write("m/app.yaml", NOTHING)
    rev = env.revision()
    r = env.cli("apply", "-f", str(empty), "--applyset", "t")
    assert r.code == 3 and "--allow-empty" in r.err, r
    assert env.untouched_since(rev)
    env.write("m/app.yaml", BASE.replace("  data:\n", "  data:\n    keep: 1\n").replace("    db/url: postgres://db:5432/app\n", "")
              .replace("    retry: 5\n", "").replace("    region: no\n", ""))
    r = env.cli("apply", "-f", str(f), "--applyset", "t", "--max-deletes", "2")
    assert r.code == 3 and "--max-deletes 2" in r.err, r
    assert env.untouched_since(rev)
    r = env.cli("diff", "-f", str(f), "--applyset", "t", "--max-deletes", "2")
    assert r.code == 3 and "--max-deletes 2; refusing" in r.err and "refus" not in r.out, r   # said once, on stderr
    r = env.cli("apply", "-f", str(f), "--applyset", "t", "--max-deletes", "2", "--force")
    assert r.code == 0, r
    assert env.get(f"{env.ns}config/app/region") is None
    env.write("m/app.yaml", NOTHING)
    r = env.cli("apply", "-f", str(empty), "--applyset", "t", "--allow-empty")
    assert r.code == 0 and env.dump(f"{env.ns}config/") == {}, r


def test_policies_warn_create_only_and_prune_false(env: Env, history: Recorder) -> None:
    history.allow_release(f"{env.ns}p/kept")      # prune: false: released from the inventory, kept in etcd
    f = env.write("m/app.yaml", """\
        apiVersion: etcdsync/v1
        kind: ConfigSet
        metadata: {name: app}
        spec:
          prefix: {ns}p/
          data:
            seed: {value: initial, policy: create-only}
            watched: {value: "off", policy: warn}
            kept: {value: x, prune: false}
            plain: 1
        """)
    assert env.cli("apply", "-f", str(f), "--applyset", "t").code == 0
    env.put(f"{env.ns}p/seed", "runtime")
    env.put(f"{env.ns}p/watched", "on")
    r = env.cli("diff", "-f", str(f), "--applyset", "t")
    assert r.code == 0, r  # warn drift is reported but apply would not write
    assert f"! {env.ns}p/watched" in r.out and "policy warn" in r.out
    assert "seed" not in r.out
    assert env.cli("apply", "-f", str(f), "--applyset", "t").code == 0
    assert env.get(f"{env.ns}p/seed") == b"runtime"
    assert env.get(f"{env.ns}p/watched") == b"on"
    env.write("m/app.yaml", """\
        apiVersion: etcdsync/v1
        kind: ConfigSet
        metadata: {name: app}
        spec:
          prefix: {ns}p/
          data: {plain: 1}
        """)
    r = env.cli("apply", "-f", str(f), "--applyset", "t")
    assert r.code == 0, r
    assert env.get(f"{env.ns}p/kept") == b"x", "prune: false keys are released, not deleted"
    assert env.get(f"{env.ns}p/seed") is None


def test_bad_manifest_exits_2_with_one_line_and_writes_nothing(env: Env, history: Recorder) -> None:
    f = env.write("m/app.yaml", BASE + "    region: yes\n")  # duplicate key
    rev = env.revision()
    r = env.run("apply", "-f", str(f), "--applyset", "t")
    assert r.code == 2, r
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    assert len(lines) == 1, r.err
    assert "app.yaml:" in lines[0] and "duplicate" in lines[0].lower()
    assert "Traceback" not in r.err
    assert env.untouched_since(rev)


def test_unreachable_etcd_is_exit_2_within_timeout(env: Env, history: Recorder) -> None:
    f = env.write("m/app.yaml", BASE)
    t0 = time.monotonic()
    r = env.run("diff", "-f", str(f), "--applyset", "t", "--endpoints", "http://127.0.0.1:1", "--timeout", "2")
    assert r.code == 2, r
    assert time.monotonic() - t0 < 15
    assert len(r.err.strip().splitlines()) == 1 and "unreachable" in r.err, r.err
    assert "Traceback" not in r.err
    assert r.err.strip() == "error: etcd http://127.0.0.1:1: unreachable (connection refused)"


def test_secret_values_never_printed(env: Env, history: Recorder) -> None:
    canary = "canary-SECRET-5f3a"
    f = env.write("m/app.yaml", """\
        apiVersion: etcdsync/v1
        kind: ConfigSet
        metadata: {name: app}
        spec:
          prefix: {ns}s/
          data:
            token: {fromEnv: CANARY_TOKEN, secret: true}
        """)
    e = {"CANARY_TOKEN": canary}
    outs = [env.cli("diff", "-f", str(f), "--applyset", "t", env=e),
            env.cli("diff", "-f", str(f), "--applyset", "t", "-o", "json", env=e),
            env.cli("apply", "-f", str(f), "--applyset", "t", "--debug", env=e)]
    env.put(f"{env.ns}s/token", "old-" + canary)
    outs += [env.cli("diff", "-f", str(f), "--applyset", "t", "-v", env=e),
             env.cli("apply", "-f", str(f), "--applyset", "t", "-o", "json", env=e)]
    for r in outs:
        assert canary not in r.out + r.err, r
    assert "sha256:" in outs[3].out
    assert env.get(f"{env.ns}s/token") == canary.encode()


def test_json_output(env: Env, history: Recorder) -> None:
    f = env.write("m/app.yaml", BASE)
    r = env.cli("diff", "-f", str(f), "--applyset", "t", "-o", "json")
    assert r.code == 1
    doc = json.loads(r.out)
    assert doc["applyset"] == "t" and doc["inSync"] is False
    assert doc["summary"]["create"] == 5
    assert {c["action"] for c in doc["changes"]} == {"create"}
    r = env.cli("apply", "-f", str(f), "--applyset", "t", "-o", "json")
    doc = json.loads(r.out)
    assert len(doc["applied"]["results"]) == 5 and doc["applied"]["transactions"] == 1


def test_default_applyset_is_announced(env: Env, history: Recorder) -> None:
    f = env.write("m/app.yaml", BASE)
    r = env.cli("diff", "-f", str(f))
    assert "applyset: 'default'" in r.err


def test_export_round_trip(env: Env, history: Recorder) -> None:
    values = {
        "plain": "hello", "no": "no", "num": "1.10", "octal": "0755", "url": "http://x:1/a?b=c#d",
        "json": '{"a":[1,2]}', "multi": "line1\nline2\n", "spaces": "  padded  ", "empty": "",
        "colon": "a: b", "hash": "a #b", "quote": "it's \"q\"", "unicode": "héllo ✓", "dash": "- x",
        "nested/deep/key": "v", "tab": "a\tb",
    }
    for k, v in values.items():
        env.put(f"{env.ns}exp/{k}", v)
    r = env.cli("export", "--prefix", f"{env.ns}exp/", "--name", "exp")
    assert r.code == 0, r
    f = env.write("m/exp.yaml", r.out)
    r = env.cli("apply", "-f", str(f), "--applyset", "t")
    assert r.code == 0, r
    assert "0 created, 0 updated" in r.out and f"{len(values)} adopted" in r.out
    assert env.cli("diff", "-f", str(f), "--applyset", "t").code == 0
    assert {k.removeprefix(f"{env.ns}exp/"): v.decode() for k, v in env.dump(f"{env.ns}exp/").items()} == values


def test_validate_offline_and_schema() -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "etcdsync", "validate", "-f", "manifests"], capture_output=True, text=True,
                       env={"ETCDSYNC_ENDPOINTS": "http://127.0.0.1:1", "PATH": "/usr/bin:/bin"}, cwd=str(_root()))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("valid:")
    r = subprocess.run([sys.executable, "-m", "etcdsync", "schema"], capture_output=True, text=True, cwd=str(_root()))
    schema = json.loads(r.stdout)
    assert "ConfigSet" in json.dumps(schema)


def _root():  # type: ignore[no-untyped-def]
    from conftest import ROOT

    return ROOT


def test_example_tree_applies_and_overlay_diffs(env: Env, history: Recorder) -> None:
    """The shipped manifests/ and overlays/staging against a fresh etcd (own reserved prefix)."""
    root = _root()
    base = str(root / "manifests")
    # the example tree uses absolute prefixes (/config/...): clear them first so the test is repeatable
    for p in ("/config/payments/", "/config/checkout/", "/services/", "services/"):
        env.store_call(lambda s, p=p: s.delete_prefix(p))
    r = env.cli("apply", "-f", base)
    assert r.code == 0, r
    assert env.get("/config/payments/region") == b"no"
    assert env.get("/services/payments/payments-1") == b'{"host":"10.0.0.11","port":3000,"metadata":{"zone":"a"}}'
    assert env.get("services/checkout/10.0.0.21:50051") == b'{"Op":0,"Addr":"10.0.0.21:50051","Metadata":null}'
    assert env.cli("diff", "-f", base).code == 0
    # the overlay merges into the base: the base's fromFile keys are read from the base's own layer
    r = env.cli("diff", "-f", base, "-f", str(root / "overlays" / "staging"))
    assert r.code == 1 and "staging-db" in r.out, r
    assert "4 to update, 0 to delete" in r.out  # db/url, db/pool/max, retry/max, features (banner: create-only)
    assert "dev-only-password" not in r.out
    for p in ("/config/payments/", "/config/checkout/", "/services/", "services/"):
        env.store_call(lambda s, p=p: s.delete_prefix(p))
    env.store_call(lambda s: s.delete_prefix(env.reserved))


@pytest.mark.parametrize("n", [300])
def test_large_plan_is_batched_and_reapplies_nothing(env: Env, history: Recorder, n: int) -> None:
    data = "\n".join(f"    k{i:04d}: value-{i}" for i in range(n))
    f = env.write("m/big.yaml", f"""\
apiVersion: etcdsync/v1
kind: ConfigSet
metadata: {{name: big}}
spec:
  prefix: {{ns}}big/
  data:
{data}
""")
    r = env.cli("apply", "-f", str(f), "--applyset", "t", "-o", "json")
    assert r.code == 0, r
    doc = json.loads(r.out)
    assert doc["applied"]["transactions"] >= 3  # 128 ops per transaction at most
    assert len(env.dump(f"{env.ns}big/")) == n
    rev = env.revision()
    assert env.cli("apply", "-f", str(f), "--applyset", "t").code == 0
    assert env.untouched_since(rev)
    # remove everything but one: deletes are batched too, inventory shrinks with them
    f.write_text(f.read_text().split("    k0001")[0])
    r = env.cli("apply", "-f", str(f), "--applyset", "t", "--force")
    assert r.code == 0, r
    assert list(env.dump(f"{env.ns}big/")) == [f"{env.ns}big/k0000"]


def test_dev_once_starts_etcd_applies_and_cleans_up(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os
    import subprocess
    import sys

    from conftest import ROOT

    from etcdsync.local.etcdbin import free_ports

    port = free_ports(1)[0]
    r = subprocess.run([sys.executable, "-m", "etcdsync", "dev", "--once", "--port", str(port), "-f",
                        str(ROOT / "manifests")], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "applied: 20 created" in r.stdout
    assert f"etcd is running at http://127.0.0.1:{port}" in r.stdout
    assert "etcd stopped, data removed" in r.stderr


@pytest.mark.parametrize("cmd", ["validate", "diff", "apply", "export", "run"])
@pytest.mark.parametrize("bad", ["", "/meta", "relative/", "/a/../b/", "/a/\x1b[2J/"])
def test_bad_reserved_prefix_is_a_one_line_usage_error(env: Env, history: Recorder, cmd: str, bad: str) -> None:
    f = env.write("m/app.yaml", BASE)
    rev = env.revision()
    args = ["--prefix", f"{env.ns}config/"] if cmd == "export" else ["-f", str(f), "--applyset", "t"]
    if cmd == "validate":
        args = ["-f", str(f)]
    r = env.cli(cmd, *args, "--reserved-prefix", bad)  # the last --reserved-prefix wins over env.cli's
    assert r.code == 2, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --reserved-prefix"), r.err
    assert "\x1b" not in r.err
    assert env.untouched_since(rev)
