"""The functional core imports no I/O, clock, logging or shell module (docs/design.md, dependency rule)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "keeper"
CORE_PATHS = ["keeper/domain.py", "keeper/risk", "keeper/planner.py", "keeper/replay/model.py",
              "keeper/accounts/perp_v2.py"]
FORBIDDEN_TOP = {
    "web3", "eth_abi", "eth_account", "eth_typing", "eth_utils", "eth_keys", "hexbytes", "requests", "httpx",
    "urllib", "http", "logging", "structlog", "time", "datetime", "socket", "sqlite3", "os", "subprocess",
    "asyncio", "threading", "apscheduler", "typer", "rich",
}
FORBIDDEN_PREFIX = ("eth_",)
SHELL_PACKAGES = ("keeper.chain", "keeper.protocols", "keeper.tx", "keeper.runtime", "keeper.commands",
                  "keeper.cli", "keeper.devchain")


def core_files() -> list[Path]:
    files: list[Path] = []
    for rel in CORE_PATHS:
        p = ROOT / rel
        if p.is_dir():
            files += sorted(p.rglob("*.py"))
        elif p.is_file():
            files.append(p)
    return files


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """Absolute names of every module imported by ``source`` (relative imports resolved against ``module``)."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((node.lineno, name))
            out += [(node.lineno, f"{name}.{alias.name}") for alias in node.names if name == "keeper"]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            out.append((node.lineno, "__import__"))
    return out


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    bad = []
    for line, name in imported_modules(source, module, is_package):
        top = name.split(".")[0]
        if (
            top in FORBIDDEN_TOP
            or top.startswith(FORBIDDEN_PREFIX)
            or name == "__import__"
            or name == "importlib"
            or any(name == s or name.startswith(s + ".") for s in SHELL_PACKAGES)
        ):
            bad.append(f"{module}:{line} imports {name}")
    return bad


def test_core_files_exist():
    """The walk covers the planner, the domain types and the risk package (a typo would make the check vacuous)."""
    names = {module_name(p) for p in core_files()}
    assert {"keeper.domain", "keeper.planner", "keeper.risk.policy"} <= names


@pytest.mark.parametrize("path", core_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_imports_nothing_forbidden(path: Path):
    """A core module imports no web3/eth_*, no logging, clock, network, file or process module, no shell package."""
    found = violations(path.read_text(), module_name(path), path.name == "__init__.py")
    assert found == []


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import time", ["keeper.planner:1 imports time"]),
        ("from datetime import datetime", ["keeper.planner:1 imports datetime"]),
        ("import eth_abi.abi", ["keeper.planner:1 imports eth_abi.abi"]),
        ("from .runtime.config import X", ["keeper.planner:1 imports keeper.runtime.config"]),
        ("from keeper import tx", ["keeper.planner:1 imports keeper.tx"]),
        ("import os.path", ["keeper.planner:1 imports os.path"]),
        ("from keeper.domain import Plan\nimport math", []),
    ],
)
def test_checker_catches_violations(source, expected):
    """The checker itself flags clock, eth_*, relative shell, `from keeper import tx` and os imports."""
    assert violations(source, "keeper.planner") == expected
