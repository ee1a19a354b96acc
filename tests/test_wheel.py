"""The built wheel works on its own: installed in a fresh venv and run outside the checkout.

The wheel is built from a copy of the checkout's files (so the build leaves nothing in the checkout) with
``pip wheel --no-deps --no-build-isolation`` and installed with ``--no-deps`` into a venv created without pip; the
third-party dependencies come from the project's .venv through a ``.pth`` line (offline, and a ``.pth`` in a path
added that way is not processed, so the .venv's editable ``keeper`` stays invisible). Every command runs from a
directory outside the checkout, and each test checks that ``keeper`` was imported from the venv, not the checkout.

The tests that build or use the wheel carry the ``packaging`` marker: building and installing is real packaging work
(about 10 s on a 2-core machine), run by ``make test`` and deselected by ``make test-unit``. The declared-dependency
check at the end reads the sources only and runs everywhere.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from keeper.resources import DEPLOYED_CONTRACTS

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 180) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{cmd[:3]} exited {proc.returncode}: {proc.stderr[-2000:]}"
    return proc.stdout


def _checkout_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [p for p in out.split("\0") if p and (ROOT / p).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the checkout (tracked and new files, plus the forge build it ships)."""
    src = tmp_path_factory.mktemp("src")
    for rel in _checkout_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, src / rel)
    for name in DEPLOYED_CONTRACTS:
        rel = Path("contracts") / "out" / f"{name}.sol" / f"{name}.json"
        if not (ROOT / rel).is_file():
            pytest.fail(f"{rel} is missing: run `make setup` (forge build) first")
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, src / rel)
    dist = tmp_path_factory.mktemp("dist")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(dist),
            str(src),
        ],
        cwd=src,
    )
    (built,) = dist.glob("margin_keeper-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the wheel; dependencies visible through a .pth line to .venv's site-packages."""
    env_dir = tmp_path_factory.mktemp("venv")
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", "--without-pip", str(env_dir)], cwd=env_dir)
    py = env_dir / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=env_dir).strip())
    (site / "_keeper_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        cwd=env_dir,
    )
    return env_dir


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A working directory outside the checkout."""
    d = tmp_path / "elsewhere"
    d.mkdir()
    assert ROOT not in d.resolve().parents
    return d


def _env(venv: Path, *extra_path: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *extra_path, "/usr/bin", "/bin"])
    return env


@pytest.mark.packaging
def test_wheel_holds_the_abis_the_contracts_and_py_typed(wheel: Path):
    """The wheel carries byte-identical copies of abis/*.json and of the deployed contracts' forge artifacts."""
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert "keeper/py.typed" in names
        abis = sorted((ROOT / "abis").glob("*.json"))
        assert abis
        for path in abis:
            assert zf.read(f"keeper/_resources/abis/{path.name}") == path.read_bytes(), path.name
        for name in DEPLOYED_CONTRACTS:
            built = ROOT / "contracts" / "out" / f"{name}.sol" / f"{name}.json"
            assert zf.read(f"keeper/_resources/contracts/{name}.json") == built.read_bytes(), name
        assert not any(n.startswith(("tests/", "scripts/", "abis/", "contracts/")) for n in names)


@pytest.mark.packaging
def test_installed_keeper_help_runs_from_the_venv(venv: Path, outside: Path):
    """`keeper --help` from the installed console script lists the commands, with keeper imported from the venv."""
    out = _run([str(venv / "bin" / "keeper"), "--help"], cwd=outside, env=_env(venv))
    for command in ("run", "check", "risk", "devchain"):
        assert command in out
    where = _run(
        [str(venv / "bin" / "python"), "-c", "import keeper; print(keeper.__file__)"], cwd=outside, env=_env(venv)
    ).strip()
    assert Path(where).resolve().is_relative_to(venv.resolve())


@pytest.mark.packaging
def test_installed_keeper_risk_json_matches_the_checkout(venv: Path, outside: Path):
    """`keeper risk ... --json` from the wheel prints the same JSON object as the checkout's keeper."""
    args = [
        "risk",
        "--side",
        "long",
        "--size",
        "1",
        "--entry",
        "3000",
        "--collateral",
        "200",
        "--maintenance",
        "0.005",
        "--sigma",
        "0.8",
        "--horizon",
        "1h",
        "--json",
    ]
    installed = json.loads(_run([str(venv / "bin" / "keeper"), *args], cwd=outside, env=_env(venv)))
    checkout = json.loads(_run([sys.executable, "-m", "keeper", *args], cwd=ROOT))
    assert isinstance(installed, dict) and installed
    assert installed == checkout


@pytest.mark.packaging
def test_installed_keeper_loads_abis_and_artifacts_from_the_package(venv: Path, outside: Path):
    """load_abi and load_artifact read the wheel's own files: same ABIs as abis/, bytecode present."""
    code = (
        "import json, keeper.resources as r\n"
        "from keeper.chain.abi import load_abi\n"
        "from keeper.dev.reference import load_artifact\n"
        "print(json.dumps({'abi_path': str(r.abi_path('PerpEngine')),\n"
        "  'abis': {n: load_abi(n) for n in ('PerpEngine', 'MockUSD', 'PriceFeed', 'ERC20', 'AggregatorV3')},\n"
        "  'bytecode': {n: len(load_artifact(n)['bytecode']) for n in r.DEPLOYED_CONTRACTS}}))\n"
    )
    got = json.loads(_run([str(venv / "bin" / "python"), "-c", code], cwd=outside, env=_env(venv)))
    assert Path(got["abi_path"]).resolve().is_relative_to(venv.resolve())
    for name, abi in got["abis"].items():
        assert abi == json.loads((ROOT / "abis" / f"{name}.json").read_text()), name
    assert set(got["bytecode"]) == set(DEPLOYED_CONTRACTS)
    assert all(n > 1000 for n in got["bytecode"].values()), got["bytecode"]


@pytest.mark.packaging
def test_installed_keeper_npm_artifact_missing_is_one_line(venv: Path, outside: Path):
    """Outside a checkout the npm-artifact lookup fails with one ToolchainError line naming node_modules."""
    code = (
        "from keeper.errors import ToolchainError\n"
        "from keeper.resources import npm_artifact\n"
        "try:\n"
        "    npm_artifact('@aave/core-v3', 'artifacts/contracts/protocol/pool/Pool.sol/Pool.json')\n"
        "except ToolchainError as exc:\n"
        "    print(exc)\n"
    )
    out = _run([str(venv / "bin" / "python"), "-c", code], cwd=outside, env=_env(venv))
    lines = out.strip().splitlines()
    assert len(lines) == 1 and "node_modules not found" in lines[0] and "npm ci" in lines[0]


@pytest.mark.packaging
@pytest.mark.chain
def test_installed_keeper_devchain_deploys_from_the_wheel(venv: Path, outside: Path):
    """`keeper devchain --once` from the wheel deploys the reference protocol and writes a verifiable deployment."""
    anvil_bin = ROOT / "node_modules" / ".bin"
    if not (anvil_bin / "anvil").exists():
        pytest.fail("node_modules/.bin/anvil is missing: run `make setup`")
    out_file = outside / "devchain.json"
    _run(
        [str(venv / "bin" / "keeper"), "devchain", "--once", "--no-seed", "--out", str(out_file)],
        cwd=outside,
        env=_env(venv, str(anvil_bin)),
    )
    deployment = json.loads(out_file.read_text())
    for key in ("engine", "collateral", "multicall"):
        assert deployment[key].startswith("0x") and len(deployment[key]) == 42
    assert deployment["chain_id"] == 31337


def _third_party_imports() -> set[str]:
    """Top-level names of every module the keeper package imports that is neither stdlib nor keeper."""
    names: set[str] = set()
    for path in (ROOT / "keeper").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("keeper", "__future__")}


def test_every_third_party_import_is_a_declared_dependency():
    """Each third-party module imported under keeper/ belongs to a distribution in [project.dependencies]."""
    declared = {
        re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0].lower().replace("_", "-")
        for dep in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    providers = importlib.metadata.packages_distributions()
    imports = _third_party_imports()
    assert {"web3", "requests", "numpy"} <= imports  # the scan sees the keeper's imports
    undeclared = {
        name: providers.get(name)
        for name in imports
        if not any(d.lower().replace("_", "-") in declared for d in providers.get(name, []))
    }
    assert not undeclared, f"imported but not in [project.dependencies]: {undeclared}"
