"""Build step of the wheel: copy the ABIs and the compiled contracts the installed commands need into the package.

All metadata lives in pyproject.toml. The repository keeps one copy of each file (``abis/`` committed, ``contracts/out``
built by forge); the wheel gets ``keeper/_resources/abis/*.json`` and ``keeper/_resources/contracts/<Name>.json`` for
the contracts in ``keeper.resources.DEPLOYED_CONTRACTS``. Editable installs read them in place (keeper/resources.py).
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _deployed_contracts() -> tuple[str, ...]:
    """keeper.resources.DEPLOYED_CONTRACTS, read from the source (the build must not import the package)."""
    tree = ast.parse((ROOT / "keeper" / "resources.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "DEPLOYED_CONTRACTS" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise SystemExit("setup.py: DEPLOYED_CONTRACTS not found in keeper/resources.py")


class BuildWithResources(build_py):
    """build_py, then the resource copies (skipped for editable installs, which read the checkout)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "keeper" / "_resources"
        abis = sorted((ROOT / "abis").glob("*.json"))
        if not abis:
            raise SystemExit("setup.py: abis/ has no *.json: run `make abis`")
        missing: list[Path] = []
        contracts: list[Path] = []
        for name in _deployed_contracts():
            path = ROOT / "contracts" / "out" / f"{name}.sol" / f"{name}.json"
            (contracts if path.is_file() else missing).append(path)
        if missing:
            raise SystemExit(
                f"setup.py: {', '.join(str(p.relative_to(ROOT)) for p in missing)} missing: run `make setup` "
                "(forge build) before building the wheel"
            )
        for sub, files in (("abis", abis), ("contracts", contracts)):
            (target / sub).mkdir(parents=True, exist_ok=True)
            for path in files:
                shutil.copyfile(path, target / sub / path.name)


setup(cmdclass={"build_py": BuildWithResources})
