"""Text and JSON rendering of plans; the text diff is pinned by golden files (pytest --update-golden)."""

from __future__ import annotations

import json
from typing import Any

import click

from etcdsync.inventory import Chunk, Entry, Inventory
from etcdsync.model import DesiredKey, DesiredState, Policy, ServiceInstance
from etcdsync.plan import Observed, plan
from etcdsync.render import plan_json, render_plan

P = "/config/shop/"
SECRET_OLD, SECRET_NEW = b"hunter2-old", b"hunter2-new"


def sample_plan() -> Any:
    def d(rel: str, v: bytes, **kw: Any) -> DesiredKey:
        return DesiredKey(P + rel, v, P, document="ConfigSet/shop", **kw)

    keys = [
        d("new", b"postgres://db:5432/pay"),
        d("changed", b"5"),
        d("same", b"x"),
        d("adopted", b"exists"),
        d("token", SECRET_NEW, secret=True),
        d("cert", b"line1\nline2-new\nline3\n"),
        d("warned", b"off", policy=Policy.WARN),
        d("seed", b"initial", policy=Policy.CREATE_ONLY),
        d("empty", b""),
    ]
    live = ServiceInstance("gw", "gw-1", "127.0.0.1", 80, "/services/gw/gw-1", b"{}", "/services/gw/", ttl=10.0)
    desired = DesiredState(keys={k.key: k for k in keys}, live=(live,), prefixes=(P, "/services/gw/"))
    observed = {
        P + "changed": Observed(b"4", 3), P + "same": Observed(b"x", 4), P + "adopted": Observed(b"exists", 5),
        P + "token": Observed(SECRET_OLD, 6), P + "cert": Observed(b"line1\nline2\nline3\n", 7),
        P + "warned": Observed(b"on", 8), P + "seed": Observed(b"runtime", 9), P + "gone": Observed(b"bye", 10),
        P + "binary": Observed(b"\xff\xfe", 11),
    }
    inv = Inventory("shop")
    inv.add_chunk(Chunk("/.etcdsync/sets/shop/inventory/a", 2, {
        P + k: Entry(P) for k in ("changed", "same", "token", "cert", "warned", "seed", "gone", "binary")}))
    return plan(desired, observed, inv, {})


def test_text_diff_golden(golden: Any) -> None:
    golden("diff.txt", render_plan(sample_plan()) + "\n")


def test_verbose_text_diff_golden(golden: Any) -> None:
    golden("diff-verbose.txt", render_plan(sample_plan(), verbose=True) + "\n")


def test_colored_diff_golden(golden: Any) -> None:
    golden("diff-color.txt", render_plan(sample_plan(), style=click.style) + "\n")


def test_secrets_are_masked_everywhere() -> None:
    p = sample_plan()
    text = render_plan(p, verbose=True) + json.dumps(plan_json(p, applyset_origin="flag"))
    assert b"hunter2" not in text.encode()
    assert "sha256:" in text


def test_json_has_one_entry_per_key() -> None:
    doc = plan_json(sample_plan(), applyset_origin="flag")
    keys = [c["key"] for c in doc["changes"]]
    assert len(keys) == len(set(keys)) == 11
    assert doc["live"][0]["registered"] is False
    assert {c["key"]: c["old"] for c in doc["changes"]}[P + "binary"] == {"base64": "//4="}


def test_long_diffs_are_cut_with_a_count() -> None:
    from etcdsync.inventory import Inventory as Inv

    keys = [DesiredKey(f"{P}k{i:03d}", b"v", P) for i in range(30)]
    p = plan(DesiredState(keys={k.key: k for k in keys}, prefixes=(P,)), {}, Inv("x"), {})
    text = render_plan(p, limit=10)
    assert text.count("\n+ ") + text.startswith("+ ") == 10
    assert "... and 20 more keys (-v or -o json lists every key)" in text
    assert "30 to create" in text
