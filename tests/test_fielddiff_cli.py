"""End to end: `etcdsync diff`/`apply` name the changed fields of a JSON value (text and -o json)."""

from __future__ import annotations

import json

from conftest import Env
from history import Recorder

MANIFEST = """\
apiVersion: etcdsync/v1
kind: ConfigSet
metadata:
  name: app
spec:
  prefix: {ns}config/app/
  data:
    features: {features}
    token: {{value: {token}, secret: true}}
"""


def test_diff_and_apply_show_the_changed_fields(env: Env, history: Recorder) -> None:
    f = env.write("m/app.yaml", MANIFEST.format(ns=env.ns, features="{beta: true, limit: 3, regions: [eu, us]}",
                                                token='{"a": 1}'))
    assert env.cli("apply", "-f", str(f), "--applyset", "t").code == 0
    env.write("m/app.yaml", MANIFEST.format(ns=env.ns, features="{limit: 4, regions: [eu, ap, us], new: x}",
                                            token='{"a": 2}'))
    key = f"{env.ns}config/app/features"

    r = env.cli("diff", "-f", str(f), "--applyset", "t")
    assert r.code == 1, r
    block = r.out[r.out.index(f"~ {key}"):].split("\n")[1:5]
    assert block == ["    ~ limit: 3 → 4", "    + regions[1]: \"ap\"", "    + new: \"x\"", "    - beta: true"], r.out
    assert '"a": 1' not in r.out and '"a": 2' not in r.out and "sha256:" in r.out   # the secret stays hashed

    r = env.cli("diff", "-f", str(f), "--applyset", "t", "-o", "json")
    assert r.code == 1, r
    changes = {c["key"]: c for c in json.loads(r.out)["changes"]}
    assert changes[key]["fields"] == [
        {"path": "limit", "op": "update", "old": 3, "new": 4}, {"path": "regions[1]", "op": "add", "new": "ap"},
        {"path": "new", "op": "add", "new": "x"}, {"path": "beta", "op": "remove", "old": True}]
    assert "fields" not in changes[f"{env.ns}config/app/token"] and '\\"a\\": 2' not in r.out

    r = env.cli("apply", "-f", str(f), "--applyset", "t")
    assert r.code == 0, r
    assert "~ limit: 3 → 4" in r.out, r.out
    assert json.loads(env.get(key) or b"") == {"limit": 4, "regions": ["eu", "ap", "us"], "new": "x"}
