"""Run the catalogue of deliberate bugs (mutants) against the tests expected to catch them.

Each `tests/mutants/*.patch` is a unified diff against the package with a header naming the tests
that must fail when it is applied:

    # why: what the bug would let happen
    # kills: tests/test_apply_guards.py::test_a_delete_compares_the_revision_it_planned

For every patch: copy the working tree (without .git and .venv) to a temporary directory, apply the
patch there, run the named tests with that copy first on the import path, and expect a failure. A
patch that no longer applies is an error too (the catalogue must follow the code). Exit 1 on any
survivor or stale patch. `--only NAME` runs the mutants whose file name contains NAME.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def header(patch: Path) -> tuple[str, list[str]]:
    why, kills = "", []
    for line in patch.read_text().splitlines():
        if line.startswith("# why:"):
            why = line[6:].strip()
        elif line.startswith("# kills:"):
            kills += line[8:].split()
        elif line.startswith("diff ") or line.startswith("--- "):
            break
    return why, kills


def copy_tree(dst: Path) -> None:
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache",
                                    ".ruff_cache", "*.egg-info", ".hypothesis", "results")
    shutil.copytree(ROOT, dst, ignore=ignore, symlinks=True)


def run_one(patch: Path, python: str, timeout: float) -> tuple[str, float, str]:
    why, kills = header(patch)
    if not kills:
        return "error", 0.0, "no '# kills:' line"
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
        tree = Path(tmp) / "tree"
        copy_tree(tree)
        applied = subprocess.run(["git", "apply", "--unsafe-paths", str(patch)], cwd=tree,
                                 capture_output=True, text=True)
        if applied.returncode != 0:
            return "stale", 0.0, applied.stderr.strip()
        # etcd 3.4: the fault tests that SIGKILL members are skipped on the wheel's 3.5.1
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1",
               "ETCDSYNC_TEST_ETCD": os.environ.get("ETCDSYNC_TEST_ETCD", "3.4")}
        where = subprocess.run([python, "-c", "import etcdsync; print(etcdsync.__file__)"], cwd=tree,
                               env=env, capture_output=True, text=True)
        if not where.stdout.startswith(str(tree)):
            return "error", 0.0, f"the copy is not the one imported: {where.stdout.strip()} {where.stderr.strip()}"
        try:
            p = subprocess.run([python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *kills],
                               cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "killed (timeout)", time.monotonic() - t0, ""
        tail = "\n".join(p.stdout.strip().splitlines()[-3:])
        if p.returncode == 1:
            return "killed", time.monotonic() - t0, tail
        if p.returncode == 0 and "skipped" in tail:
            return "error", time.monotonic() - t0, "a test meant to kill it was skipped: " + tail
        if p.returncode == 0:
            return "SURVIVED", time.monotonic() - t0, tail
        return "error", time.monotonic() - t0, tail + p.stderr[-500:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="")
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    python = sys.executable
    patches = sorted(p for p in HERE.glob("*.patch") if args.only in p.name)
    bad = 0
    t_all = time.monotonic()
    for patch in patches:
        result, seconds, detail = run_one(patch, python, args.timeout)
        ok = result.startswith("killed")
        bad += not ok
        print(f"{result:16} {seconds:6.1f}s  {patch.name}", flush=True)
        if not ok:
            print("    " + detail.replace("\n", "\n    "), flush=True)
    print(f"{len(patches) - bad}/{len(patches)} mutants killed in {time.monotonic() - t_all:.0f}s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
