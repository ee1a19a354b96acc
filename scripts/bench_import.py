"""Benchmark the daemon's start-up cost: module import time and ``keeper --help`` wall time.

Run: .venv/bin/python scripts/bench_import.py [--repeat N] [--keeper PATH]
Prints, best of N fresh interpreters each:
  * the cumulative import time of each module below as ``python -X importtime`` reports it (microseconds of
    the module's own line, which includes everything it imports);
  * the number of modules loaded, and whether any dev-only package (keeper.dev, keeper.sim, matplotlib) is;
  * the wall time of ``keeper --help`` (the console script, a fresh process each run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

MODULES = ("keeper.cli", "keeper.runtime.service", "keeper.commands.run")
DEV_ONLY = ("keeper.dev", "keeper.devchain", "keeper.sim", "matplotlib")


def import_time_us(module: str) -> int:
    """Cumulative import time of ``module`` in a fresh interpreter, from ``-X importtime`` (stderr)."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"], capture_output=True, text=True, check=True
    ).stderr
    for line in reversed(out.splitlines()):
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[2] == module:
            return int(parts[1])
    raise RuntimeError(f"{module} not in -X importtime output")


def loaded(module: str) -> tuple[int, list[str]]:
    code = (
        f"import sys, {module}; dev = {DEV_ONLY!r}; "
        "print(len(sys.modules)); print(','.join(sorted(m for m in sys.modules if m.startswith(dev))))"
    )
    lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    return int(lines[0]), [m for m in lines[1].split(",") if m]


def help_wall_s(keeper: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([keeper, "--help"], capture_output=True, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description="import-time benchmark")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keeper", default=shutil.which("keeper", path=os.path.dirname(sys.executable)) or "keeper")
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, best of {args.repeat}")
    for module in MODULES:
        best_us = min(import_time_us(module) for _ in range(args.repeat))
        count, dev = loaded(module)
        print(f"import {module:<24} {best_us / 1e3:8.1f} ms  {count:5d} modules  dev-only: {', '.join(dev) or 'none'}")
    best = min(help_wall_s(args.keeper) for _ in range(args.repeat))
    print(f"keeper --help wall time        {best * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
