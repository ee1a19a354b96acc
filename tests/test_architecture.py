"""The functional core imports no I/O, clock, logging or shell module (docs/design.md, dependency rule)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "keeper"
CORE_PATHS = [
    "keeper/domain.py",
    "keeper/risk",
    "keeper/planner.py",
    "keeper/decision.py",
    "keeper/replay/model.py",
    "keeper/replay/aave_model.py",
    "keeper/replay/perp_model.py",
    "keeper/accounts",
    "keeper/redact.py",
]
FORBIDDEN_TOP = {
    "web3",
    "eth_abi",
    "eth_account",
    "eth_typing",
    "eth_utils",
    "eth_keys",
    "hexbytes",
    "requests",
    "httpx",
    "urllib",
    "http",
    "logging",
    "structlog",
    "time",
    "datetime",
    "socket",
    "sqlite3",
    "os",
    "subprocess",
    "asyncio",
    "threading",
    "apscheduler",
    "typer",
    "rich",
}
FORBIDDEN_PREFIX = ("eth_",)
# The replay's shell modules read files, the chain or draw charts; keeper.sim and keeper.dev drive a dev chain.
REPLAY_SHELL = ("keeper.replay.onchain", "keeper.replay.prices", "keeper.replay.book", "keeper.replay.report")
SHELL_PACKAGES = (
    "keeper.chain",
    "keeper.protocols",
    "keeper.tx",
    "keeper.runtime",
    "keeper.commands",
    "keeper.cli",
    "keeper.dev",
    "keeper.sim",
    *REPLAY_SHELL,
)
# What must not be loaded, directly or through a dependency, once a core module is imported.
RUNTIME_FORBIDDEN = (
    "web3",
    "eth_abi",
    "eth_account",
    "eth_utils",
    "sqlite3",
    "_sqlite3",
    "structlog",
    "logging",
    "requests",
    "socket",
    "matplotlib",
)
DAEMON_MODULES = ("keeper.runtime.service", "keeper.commands.run", "keeper.commands.check")
DEV_ONLY = ("keeper.dev", "keeper.sim", "matplotlib", "keeper.replay.onchain")


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
    assert {"keeper.domain", "keeper.planner", "keeper.risk.policy", "keeper.accounts.aave_v3"} <= names


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


_FORK_SCRIPT = """
import json, os, sys
{baseline}
out = {{}}
for module in {modules!r}:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a copy of the baseline interpreter: import one module, report what it added
        os.close(r)
        before = set(sys.modules)
        for name in module.split(","):  # "a,b": several modules imported in one child
            __import__(name)
        os.write(w, json.dumps(sorted(set(sys.modules) - before)).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out[module] = json.loads(f.read())
    os.waitpid(pid, 0)
print(json.dumps(out))
"""


def loaded_after_import(modules: list[str] | tuple[str, ...], baseline: str = "") -> dict[str, list[str]]:
    """Per module: what a fresh interpreter holds after ``import module`` that it did not after ``baseline``.

    One interpreter runs ``baseline`` once, then forks a child per module (a copy of it, nothing else loaded)."""
    code = _FORK_SCRIPT.format(baseline=baseline, modules=list(modules))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout)


def _hits(loaded: list[str], names: tuple[str, ...]) -> list[str]:
    return [m for m in loaded if any(m == n or m.startswith(n + ".") for n in names)]


# numpy and scipy (the core's numerical libraries) load the stdlib clock modules themselves; the AST check above
# keeps the core's own code off the clock, this one catches a shell or I/O module dragged in at run time.
NUMERIC_BASELINE = "import numpy, scipy.special, scipy.stats, scipy.optimize, scipy.signal"


def test_core_modules_load_no_shell_module_in_a_fresh_interpreter():
    """Importing each core module in a fresh interpreter loads no keeper shell module, web3/eth_*, sqlite3, logging
    or clock module."""
    modules = sorted({module_name(p) for p in core_files()})
    loaded = loaded_after_import(modules, NUMERIC_BASELINE)
    assert sorted(loaded) == modules
    bad = {m: _hits(found, SHELL_PACKAGES + RUNTIME_FORBIDDEN + ("time", "datetime")) for m, found in loaded.items()}
    assert {m: hits for m, hits in bad.items() if hits} == {}


def test_fresh_interpreter_check_would_catch_a_shell_import():
    """The run-time check sees a shell module loaded through an import (here: the reference adapter)."""
    loaded = loaded_after_import(["keeper.protocols.reference"])["keeper.protocols.reference"]
    assert _hits(loaded, ("keeper.chain",)) != []


def test_daemon_import_loads_no_dev_tooling():
    """Importing the daemon (service, `keeper run`, `keeper check`) loads no dev chain tooling, simulator or
    plotting."""
    together = ",".join(DAEMON_MODULES)
    loaded = loaded_after_import([together])[together]
    assert set(DAEMON_MODULES) <= set(loaded)
    assert _hits(loaded, DEV_ONLY) == []


def test_a_command_loads_its_own_module_only():
    """`keeper risk ...` registers the risk command alone: the daemon, web3 and the dev chain tooling stay unloaded
    (they cost ~2 s of start-up); `keeper --help` still lists every command."""
    code = (
        "import json, sys; from keeper.cli import build_app; import typer.main as tm; "
        "names = sorted(tm.get_command(build_app('risk')).commands); "
        "print(json.dumps([names, sorted(sys.modules)]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    names, loaded = json.loads(out.stdout)
    assert names == ["risk"]
    assert _hits(loaded, ("keeper.runtime", "keeper.dev", "keeper.commands.check", "web3", "eth_account")) == []
    from typer.main import get_command

    from keeper.cli import build_app

    assert {"check", "demo", "devchain", "replay", "risk", "run", "status", "stress"} <= set(
        get_command(build_app()).commands
    )
