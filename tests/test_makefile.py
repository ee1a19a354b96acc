"""`make` set-up prerequisites: a missing Node/npm or an old Python is one line saying what to install."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A test run under `make` (e.g. `make -i test`) must not pass its own flags to the make it starts.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}


def _make(tmp_path: Path, python: str, path_dirs: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [shutil.which("make") or "make", "-s", "--no-print-directory", "check-prereqs", f"PYTHON={python}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**CLEAN_ENV, "PATH": os.pathsep.join(path_dirs)},
    )


def _bin_dir(tmp_path: Path, *tools: str) -> Path:
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    for tool in tools:
        real = shutil.which(tool)
        assert real, tool
        (d / tool).symlink_to(real)
    return d


def test_old_python_is_refused_with_one_line(tmp_path):
    """A Python older than 3.11 stops make with a one-line message naming 3.11, exit non-zero."""
    fake = tmp_path / "python3.10"
    fake.write_text("#!/bin/sh\nif [ \"$1\" = -V ]; then echo 'Python 3.10.12'; exit 0; fi\nexit 1\n")
    fake.chmod(0o755)
    bins = _bin_dir(tmp_path, "sh", "node", "npm")
    proc = _make(tmp_path, str(fake), [str(bins), "/usr/bin", "/bin"])
    assert proc.returncode != 0
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Python 3.11 or newer is required" in lines[0] and "3.10.12" in lines[0]


def test_missing_node_is_refused_with_one_line(tmp_path):
    """Without node on PATH make says to install Node.js 20, exit non-zero."""
    import sys

    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _make(tmp_path, sys.executable, [str(empty)])
    assert proc.returncode != 0
    assert "Node.js 20 is required" in proc.stdout


def _dry_run(target: str) -> list[str]:
    """The commands `make -n <target>` would run, prerequisites already satisfied (stamps are up to date)."""
    proc = subprocess.run(
        [shutil.which("make") or "make", "-n", "--no-print-directory", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=CLEAN_ENV,
    )
    assert proc.returncode == 0, proc.stderr
    return [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]


def test_make_test_runs_lint_before_the_tests():
    """`make test` runs ruff check, ruff format --check and mypy before forge test and pytest."""
    lines = _dry_run("test")
    steps = ["ruff check", "ruff format --check", "mypy", "forge test", "-m pytest"]
    positions = [next((i for i, ln in enumerate(lines) if step in ln), None) for step in steps]
    assert None not in positions, (steps, lines)
    assert positions == sorted(positions), lines


def test_ci_runs_make_test():
    """The CI entry point runs `make test` (hence the lint)."""
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "make test" in [ln.strip() for ln in script if not ln.lstrip().startswith("#")]
