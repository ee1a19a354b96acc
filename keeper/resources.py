"""Where the keeper finds the files it reads but does not compute: ABIs, compiled contracts, npm artifacts.

Two layouts, searched in this order:

* **installed wheel**: ``keeper/_resources/abis/<Name>.json`` (copies of the repository's ``abis/``) and
  ``keeper/_resources/contracts/<Name>.json`` (forge artifacts of the contracts ``keeper devchain`` deploys),
  written into the wheel by ``setup.py``'s build step; the source tree has no ``_resources`` directory.
* **checkout** (editable install): ``abis/<Name>.json`` and forge's ``contracts/out/<Name>.sol/<Name>.json``
  at the repository root.

Artifacts of the real protocols (Aave v3, Perpetual Protocol v2, Uniswap v3, Chainlink mocks) come from npm packages
in ``node_modules`` and are for development only: they are not in the wheel, and :func:`npm_artifact` says so in one
line when they are missing.
"""

from __future__ import annotations

from pathlib import Path

from keeper.errors import ToolchainError

PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLED_DIR = PACKAGE_DIR / "_resources"
CHECKOUT_DIR = PACKAGE_DIR.parent  # the repository root when running from a checkout

# Contracts whose compiled artifact (ABI + bytecode) ships in the wheel: what `keeper devchain` deploys.
DEPLOYED_CONTRACTS = ("MockUSD", "PriceFeed", "PerpEngine", "Multicall3")


def abi_path(name: str) -> Path:
    """Path of contract ``name``'s ABI: the wheel's copy, else ``abis/``, else the forge build in a checkout.

    Raises FileNotFoundError (one line, saying how to get it) when none exists.
    """
    candidates = (
        BUNDLED_DIR / "abis" / f"{name}.json",
        CHECKOUT_DIR / "abis" / f"{name}.json",
        _forge_artifact(name),
    )
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"no ABI for {name} (looked in {candidates[0].parent} and {candidates[1].parent}): reinstall the keeper, "
        "or in a checkout run `make abis`"
    )


def contract_artifact_path(name: str) -> Path:
    """Path of the forge artifact (ABI and bytecode) of contract ``name``: the wheel's copy, else ``contracts/out``.

    Raises ToolchainError (one line, saying how to build it) when neither exists.
    """
    for path in (BUNDLED_DIR / "contracts" / f"{name}.json", _forge_artifact(name)):
        if path.is_file():
            return path
    raise ToolchainError(
        f"compiled contract {name} is missing (not in {BUNDLED_DIR / 'contracts'} nor {_forge_artifact(name)}): "
        "in a checkout run `make setup` (or `node_modules/.bin/forge build --offline`)"
    )


def node_modules_dir() -> Path:
    """The ``node_modules`` directory of the current directory or of the checkout (development only).

    Raises ToolchainError when there is none: npm artifacts do not ship in the wheel.
    """
    for root in (Path.cwd(), CHECKOUT_DIR):
        candidate = root / "node_modules"
        if candidate.is_dir():
            return candidate
    raise ToolchainError(
        f"node_modules not found in {Path.cwd()} nor {CHECKOUT_DIR}: the npm-deployed protocols are development "
        "tooling; run from a checkout after `npm ci` (or `make setup`)"
    )


def npm_artifact(package: str, relative: str) -> Path:
    """Path of file ``relative`` inside npm package ``package`` (e.g. ``"@aave/core-v3"``, ``"artifacts/..."``).

    Raises ToolchainError naming the package and the file when either is missing.
    """
    path = node_modules_dir() / package / relative
    if not path.is_file():
        raise ToolchainError(
            f"{package}/{relative} is missing from {node_modules_dir()}: run `npm ci` in the checkout "
            "(package-lock.json pins the version)"
        )
    return path


def _forge_artifact(name: str) -> Path:
    return CHECKOUT_DIR / "contracts" / "out" / f"{name}.sol" / f"{name}.json"
