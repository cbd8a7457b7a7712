"""`teardown` removes an apply set's own records too (history entries, suspension), after its keys and
inventory and only then; other sets' records, even of a name that starts the same, stay; `applysets`
and `inventory` are not confused by records. Real etcd, the history checker on every test."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import Env
from history import Recorder

from etcdsync.core.history import encode_entry, entry_key, make_entry

CONFIG = """\
apiVersion: etcdsync/v1
kind: ConfigSet
metadata: {{name: {name}}}
spec:
  prefix: {ns}{name}/
  data:
    a: {a}
"""


def apply(env: Env, history: Recorder, applyset: str, a: str, declared: dict[str, str]) -> None:
    declared[f"{env.ns}{applyset}/a"] = a
    history.declare(dict(declared))
    path: Path = env.write(f"{applyset}/app.yaml", CONFIG.format(ns=env.ns, name=applyset, a=a))
    r = env.cli("apply", "-f", str(path), "--applyset", applyset)
    assert r.code == 0, r


def test_teardown_deletes_the_sets_history_and_suspension_and_nothing_else(env: Env, history: Recorder) -> None:
    declared: dict[str, str] = {}
    for a in ("one", "two"):
        apply(env, history, "app", a, declared)
    apply(env, history, "app2", "x", declared)
    hist = f"{env.reserved}history/"
    for name in ("app", "app2"):
        assert env.cli("suspend", "--applyset", name, "--reserved-prefix", env.reserved).code == 0
    # a record of a set that owns nothing: not an apply set for `applysets`
    ghost = make_entry(applyset="ghost", kind="apply", who="x", revisions=[1], now=1.0)
    env.put(entry_key(env.reserved, "ghost", ghost.id), encode_entry(ghost))
    doc = json.loads(env.cli("applysets", "--reserved-prefix", env.reserved, "-o", "json").out)
    assert [s["name"] for s in doc["applysets"]] == ["app", "app2"], doc
    inv = json.loads(env.cli("inventory", "--reserved-prefix", env.reserved, "-o", "json").out)
    assert [s["name"] for s in inv["applysets"]] == ["app", "app2"], inv

    # refused by the deletion guard: nothing deleted, the records neither
    before = env.dump(env.reserved)
    r = env.cli("teardown", "--applyset", "app", "--reserved-prefix", env.reserved, "--yes", "--max-deletes", "0")
    assert r.code == 3, r
    assert env.dump(env.reserved) == before

    del declared[f"{env.ns}app/a"]
    history.declare(dict(declared))
    r = env.cli("teardown", "--applyset", "app", "--reserved-prefix", env.reserved, "--yes")
    assert r.code == 0 and "3 history and suspension records deleted" in r.out, r
    left = env.dump(env.reserved)
    assert not [k for k in left if k.startswith((f"{hist}app/", f"{env.reserved}suspend/app"))
                and not k.startswith((f"{hist}app2/", f"{env.reserved}suspend/app2"))], left
    assert [k for k in left if k.startswith(f"{hist}app2/")] and f"{env.reserved}suspend/app2" in left
    assert f"{hist}ghost/{ghost.id:016d}" in left
    assert env.get(f"{env.ns}app2/a") == b"x"
    r = env.cli("history", "--applyset", "app", "--reserved-prefix", env.reserved)
    assert r.code == 0 and "no history" in r.err, r

    # torn down already, nothing left: owns nothing, as before
    r = env.cli("teardown", "--applyset", "app", "--reserved-prefix", env.reserved, "--yes")
    assert r.code == 2 and "owns nothing" in r.err, r
    # records left behind (an older teardown, a crash between the two steps): removed, confirmed like keys
    env.put(f"{env.reserved}suspend/app", "garbage")
    r = env.cli("teardown", "--applyset", "app", "--reserved-prefix", env.reserved)
    assert r.code == 2 and "pass --yes" in r.err and env.get(f"{env.reserved}suspend/app") == b"garbage", r
    r = env.cli("teardown", "--applyset", "app", "--reserved-prefix", env.reserved, "--yes")
    assert r.code == 0 and "it owned nothing; 1 history and suspension records deleted" in r.out, r
    assert env.get(f"{env.reserved}suspend/app") is None
    assert env.get(f"{env.reserved}suspend/app2") is not None
