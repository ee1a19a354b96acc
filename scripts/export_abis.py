#!/usr/bin/env python3
"""Export the contract ABIs from the forge build into abis/ (committed; tests/test_abis.py checks for drift).

Run from the repository root after ``node_modules/.bin/forge build --offline``::

    .venv/bin/python scripts/export_abis.py            # write abis/*.json
    .venv/bin/python scripts/export_abis.py --check    # exit 1 and list the files that differ
    .venv/bin/python scripts/export_abis.py --build    # run forge build first when sources are newer

Each output file is the bare ABI array, pretty-printed with sorted keys and a trailing newline, read from
``contracts/out/<File>.sol/<Contract>.json`` (forge's artifact layout).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "contracts" / "out"
SRC_DIR = ROOT / "contracts" / "src"
ABI_DIR = ROOT / "abis"
FORGE = ROOT / "node_modules" / ".bin" / "forge"

# output file name -> (artifact source file, contract name)
EXPORTS: dict[str, tuple[str, str]] = {
    "PerpEngine.json": ("PerpEngine.sol", "PerpEngine"),
    "PriceFeed.json": ("PriceFeed.sol", "PriceFeed"),
    "MockUSD.json": ("MockUSD.sol", "MockUSD"),
    "ERC20.json": ("IERC20.sol", "IERC20"),  # the standard ERC-20 subset (interface only, no mint)
    "AggregatorV3.json": ("AggregatorV3Interface.sol", "AggregatorV3Interface"),
    "Multicall3.json": ("Multicall3.sol", "Multicall3"),
}


def artifact_path(out_dir: Path, source: str, contract: str) -> Path:
    """Path of forge's artifact for ``contract`` defined in ``source``."""
    return out_dir / source / f"{contract}.json"


def render_abi(abi: list) -> str:
    """The canonical text of an ABI file: 2-space indent, sorted keys, trailing newline."""
    return json.dumps(abi, indent=2, sort_keys=True) + "\n"


def render_all(out_dir: Path = OUT_DIR) -> dict[str, str]:
    """Map each abis/ file name to the text it should have according to the build in ``out_dir``.

    Raises FileNotFoundError naming the missing artifact when the build is absent or incomplete.
    """
    rendered = {}
    for name, (source, contract) in EXPORTS.items():
        path = artifact_path(out_dir, source, contract)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `node_modules/.bin/forge build --offline` first")
        rendered[name] = render_abi(json.loads(path.read_text())["abi"])
    return rendered


def build_is_stale(out_dir: Path = OUT_DIR, src_dir: Path = SRC_DIR) -> bool:
    """True when an exported artifact is missing or older than any Solidity source under ``src_dir``.

    forge rewrites only the artifacts a change affects, so "stale" here means "run forge build to be sure";
    forge's own cache then decides what to recompile.
    """
    artifacts = [artifact_path(out_dir, s, c) for s, c in EXPORTS.values()]
    if not all(p.is_file() for p in artifacts):
        return True
    newest_source = max(p.stat().st_mtime for p in src_dir.rglob("*.sol"))
    return min(p.stat().st_mtime for p in artifacts) < newest_source


def forge_build(root: Path = ROOT) -> None:
    """Run ``forge build --offline`` from the repository root (foundry.toml's solc path is cwd-relative)."""
    subprocess.run([str(FORGE), "build", "--offline"], cwd=root, check=True)


def drifted(rendered: dict[str, str], abi_dir: Path = ABI_DIR) -> list[str]:
    """Names of abis/ files that are missing or differ from ``rendered``."""
    return sorted(
        name
        for name, text in rendered.items()
        if not (abi_dir / name).is_file() or (abi_dir / name).read_text() != text
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 listing drifted files; write nothing")
    parser.add_argument("--build", action="store_true", help="run forge build first when the build looks stale")
    args = parser.parse_args(argv)

    if args.build and build_is_stale():
        forge_build()
    try:
        rendered = render_all()
    except FileNotFoundError as exc:
        print(f"export_abis: {exc}", file=sys.stderr)
        return 2

    if args.check:
        stale = drifted(rendered)
        for name in stale:
            print(f"drifted: abis/{name}")
        if stale:
            print("run `.venv/bin/python scripts/export_abis.py` and commit abis/", file=sys.stderr)
        return 1 if stale else 0

    ABI_DIR.mkdir(exist_ok=True)
    for name, text in rendered.items():
        path = ABI_DIR / name
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote abis/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
