"""End to end: a base tree and an environment overlay that merges into it, applied to a real etcd with
its event history checked (DESIGN.md section 2, overlays)."""

from __future__ import annotations

import json

from conftest import Env
from history import Recorder

BASE = """\
apiVersion: etcdsync/v1
kind: ConfigSet
metadata: {name: app}
spec:
  prefix: {ns}config/app/
  data:
    db/url: postgres://db:5432/app
    retry: 5
    banner: {value: hello, policy: create-only}
    debug: on
    ca: {fromFile: files/ca.pem}
---
apiVersion: etcdsync/v1
kind: Service
metadata: {name: pay}
spec:
  prefix: {ns}services/
  instances:
    - {id: p1, host: 10.0.0.1, port: 80}
    - {id: p2, host: 10.0.0.2, port: 80, metadata: {zone: a}}
"""

# only what differs in this environment
OVERLAY = """\
apiVersion: etcdsync/v1
kind: ConfigSet
metadata: {name: app}
spec:
  data:
    db/url: postgres://staging-db:5432/app
    debug: {remove: true}
    pool: 3
---
apiVersion: etcdsync/v1
kind: Service
metadata: {name: pay}
spec:
  instances:
    - {id: p1, remove: true}
    - {id: p2, host: 10.0.0.22, port: 80}
"""


def test_base_plus_merging_overlay_applies_and_json_names_each_origin(env: Env, history: Recorder) -> None:
    env.write("base/files/ca.pem", "CA\n")
    base = env.write("base/app.yaml", BASE)
    over = env.write("staging/app.yaml", OVERLAY)
    layers = ["-f", str(base.parent), "-f", str(over.parent), "--applyset", "t"]
    cfg, svc = f"{env.ns}config/app/", f"{env.ns}services/pay/"

    history.declare_files(base.parent)
    assert env.cli("apply", "-f", str(base.parent), "--applyset", "t").code == 0
    assert env.get(f"{cfg}debug") == b"on" and env.get(f"{svc}p1") is not None

    history.declare_files(base.parent, over.parent)
    r = env.cli("apply", *layers, "-o", "json")
    assert r.code == 0, r
    assert env.dump() == {
        f"{cfg}db/url": b"postgres://staging-db:5432/app",   # the overlay's value
        f"{cfg}retry": b"5",                                  # the base's, untouched
        f"{cfg}banner": b"hello",
        f"{cfg}ca": b"CA\n",                                  # the base's fromFile, read relative to the base
        f"{cfg}pool": b"3",                                   # added by the overlay
        f"{svc}p2": b'{"host":"10.0.0.22","port":80}',        # replaced whole: no metadata
    } | {k: v for k, v in env.dump().items() if k.startswith(env.reserved)}

    doc = json.loads(r.out)
    changes = {c["key"]: c for c in doc["changes"]}
    both = [f"{base}:1:1", f"{over}:1:1"]
    assert {k: c["action"] for k, c in changes.items()} == {
        f"{cfg}banner": "unchanged", f"{cfg}ca": "unchanged", f"{cfg}db/url": "update", f"{cfg}debug": "delete",
        f"{cfg}pool": "create", f"{cfg}retry": "unchanged", f"{svc}p1": "delete", f"{svc}p2": "update",
    }
    # which layer (file:line:column) each value came from, and what it overrode
    assert changes[f"{cfg}db/url"]["source"] == f"{over}:6:5"
    assert changes[f"{cfg}db/url"]["origin"] == {"value": f"{over}:6:5", "overrides": [f"{base}:7:5"], "layers": both}
    assert changes[f"{cfg}retry"]["origin"] == {"value": f"{base}:8:5", "overrides": [], "layers": both}
    assert changes[f"{cfg}pool"]["origin"] == {"value": f"{over}:8:5", "overrides": [], "layers": both}
    assert changes[f"{svc}p2"]["origin"] == {"value": f"{over}:16:7", "overrides": [f"{base}:20:7"],
                                             "layers": [f"{base}:13:1", f"{over}:10:1"]}
    # a delete that an overlay's remove: true caused names the remove
    assert changes[f"{cfg}debug"]["origin"] == {"removedBy": f"{over}:7:5"}
    assert changes[f"{svc}p1"]["origin"] == {"removedBy": f"{over}:15:7"}
    results = {c["key"]: c for c in doc["applied"]["results"]}
    assert results[f"{cfg}debug"]["origin"] == {"removedBy": f"{over}:7:5"}
    assert results[f"{cfg}db/url"]["origin"]["overrides"] == [f"{base}:7:5"]

    # the text diff is as before; in sync now, and a second apply writes nothing
    r = env.cli("diff", *layers)
    assert r.code == 0, r
    assert "0 to create, 0 to update, 0 to delete, 6 unchanged" in r.out
    rev = env.revision()
    assert env.cli("apply", *layers).code == 0
    assert env.untouched_since(rev)
