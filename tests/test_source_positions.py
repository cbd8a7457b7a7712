"""Where a key was declared, held compact (pure): a DesiredKey (and a Change planned from it) keeps the
file, one string shared by the keys of that file, and the line and column packed in one int; its
`source` is made on demand and must be exactly the Source the loader used to keep. Positions with an
overlay history stay full Sources (their overrides and layers are not part of a position)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from etcdsync.core.inventory import Inventory
from etcdsync.core.model import LINE_MAX, DesiredKey, Source, compact_source, source_of
from etcdsync.core.plan import Action, plan
from etcdsync.manifest import load_manifests
from etcdsync.settings import Options

HEAD = "apiVersion: etcdsync/v1\nkind: ConfigSet\nmetadata: {name: app}\nspec:\n  prefix: /c/\n  data:\n"


@pytest.mark.parametrize("line, column", [(1, 1), (7, 5), (100_000, 5), (LINE_MAX, 1), (3, 511), (3, 512),
                                          (12, 1 << 30), (LINE_MAX + 1, 5), (10 ** 9, 10 ** 6)])
def test_a_compact_position_is_the_source_it_stands_for(line: int, column: int) -> None:
    origin, at = compact_source("m.yaml", line, column)
    src = source_of(origin, at)
    assert src == Source("m.yaml", line, column) and str(src) == f"m.yaml:{line}:{column}"
    assert src is not None and src.overrides == () and src.layers == ()
    if line <= LINE_MAX:
        assert origin == "m.yaml"     # no object but the int: the file string is the caller's
    else:
        assert origin == Source("m.yaml", line, column) and at == 0


def test_positions_that_differ_stay_different() -> None:
    seen = {compact_source("f", line, column) for line in (1, 2, 3, LINE_MAX) for column in (1, 2, 3, 1000)}
    assert len(seen) == 16
    assert compact_source("f", 1, 2) != compact_source("g", 1, 2)


def test_a_full_source_is_kept_as_it_is() -> None:
    over = Source("prod/a.yaml", 7, 5, overrides=(Source("base/a.yaml", 6, 3),), layers=(Source("b", 1, 1),))
    dk = DesiredKey("/p/k", b"v", "/p/", origin=over)
    assert dk.source is over and dk.source.overrides == over.overrides and dk.source.layers == over.layers
    assert DesiredKey("/p/k", b"v", "/p/").source is None


def test_loaded_keys_hold_no_source_object(tmp_path: Path) -> None:
    data = "".join(f"    k{i}: v{i}\n" for i in range(300)) + "    quoted: \"caf\u00e9\"\n    json: {json: [1]}\n"
    (tmp_path / "m.yaml").write_text(HEAD + data, encoding="utf-8")
    state = load_manifests([tmp_path], environ={})
    file = str(tmp_path / "m.yaml")
    for i in range(300):
        d = state.keys[f"/c/k{i}"]
        assert type(d.origin) is str and type(d.at) is int
        assert d.source == Source(file, 7 + i, 5) and str(d.source) == f"{file}:{7 + i}:5"
    assert state.keys["/c/quoted"].source == Source(file, 307, 5)     # the node path
    assert state.keys["/c/json"].source == Source(file, 308, 5)       # a compiled entry
    # one file name for them all, not a copy per key
    assert len({id(d.origin) for d in state.keys.values()}) == 1
    # the same manifests load equal; a key that moved does not
    assert load_manifests([tmp_path], environ={}) == state
    (tmp_path / "m.yaml").write_text(HEAD + "    first: x\n" + data, encoding="utf-8")
    moved = load_manifests([tmp_path], environ={})
    assert moved.keys["/c/k0"].value == state.keys["/c/k0"].value and moved.keys["/c/k0"] != state.keys["/c/k0"]


def test_overlays_keep_their_history(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "prod").mkdir()
    (tmp_path / "base" / "a.yaml").write_text(HEAD + "    kept: 1\n    over: 1\n")
    (tmp_path / "prod" / "a.yaml").write_text(HEAD.replace("  prefix: /c/\n", "") + "    over: 2\n")
    state = load_manifests([tmp_path / "base", tmp_path / "prod"], environ={})
    base, prod = str(tmp_path / "base" / "a.yaml"), str(tmp_path / "prod" / "a.yaml")
    over = state.keys["/c/over"].source
    assert over is not None and str(over) == f"{prod}:6:5"   # (no prefix line in the overlay)
    assert [str(s) for s in over.overrides] == [f"{base}:8:5"]
    assert [str(s) for s in over.layers] == [f"{base}:1:1", f"{prod}:1:1"]
    kept = state.keys["/c/kept"].source
    assert kept is not None and str(kept) == f"{base}:7:5" and kept.overrides == () and len(kept.layers) == 2


def test_a_planned_change_carries_the_position(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(HEAD + "    a: 1\n    b: 2\n")
    state = load_manifests([tmp_path], environ={})
    file = str(tmp_path / "m.yaml")
    p = plan(state, {}, Inventory("me"), {}, Options())
    assert [(c.action, str(c.source)) for c in p.changes] == [(Action.CREATE, f"{file}:7:5"),
                                                               (Action.CREATE, f"{file}:8:5")]
    assert all(c.origin is state.keys[c.key].origin and c.at == state.keys[c.key].at for c in p.changes)


def test_a_compact_key_is_smaller_than_one_with_a_source() -> None:
    file = "manifests/app.yaml"
    origin, at = compact_source(file, 54_321, 5)
    full = Source(file, 54_321, 5)
    assert sys.getsizeof(at) < sys.getsizeof(full) + sys.getsizeof(full.line)
