"""The catalogue of deliberate bugs follows the code: every patch still applies and names tests that
exist (running the mutants themselves is `scripts/mutants`, a few minutes; this check is instant)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PATCHES = sorted((ROOT / "tests" / "mutants").glob("*.patch"))


def test_the_catalogue_is_not_empty() -> None:
    assert len(PATCHES) >= 40


@pytest.mark.parametrize("patch", PATCHES, ids=[p.stem for p in PATCHES])
def test_the_patch_applies_and_names_existing_tests(patch: Path) -> None:
    header = [line for line in patch.read_text().splitlines() if line.startswith("# ")]
    kills = [t for line in header if line.startswith("# kills:") for t in line[8:].split()]
    assert any(line.startswith("# why:") for line in header) and kills, f"{patch.name}: '# why:'/'# kills:' header"
    r = subprocess.run(["git", "apply", "--check", str(patch)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, f"{patch.name} no longer applies (re-make the bug in the new code): {r.stderr}"
    for test in kills:
        file, _, name = test.partition("::")
        path = ROOT / file
        assert path.is_file(), f"{patch.name}: {file} does not exist"
        base = name.split("[")[0]
        assert f"def {base}(" in path.read_text(), f"{patch.name}: no test {base} in {file}"
