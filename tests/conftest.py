"""Shared fixtures: one anvil per pytest worker with the reference protocol deployed once.

``devchain`` (session scope, so once per xdist worker) starts anvil on a free loopback port and deploys;
``chain`` wraps a test in ``evm_snapshot`` / ``evm_revert`` so every test starts from the same state.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog
from eth_account import Account
from web3 import Web3

from keeper.chain.anvil import Anvil
from keeper.chain.rpc import ChainClient, RetryPolicy
from keeper.dev.reference import ANVIL_KEYS, DevChainOps, deploy_protocol
from keeper.tx.fees import FeePolicy
from keeper.tx.journal import Journal
from keeper.tx.manager import Lane, TransactionManager


class DevChain(DevChainOps):
    """A deployed local chain plus the anvil process behind it."""

    def __init__(self, anvil: Anvil) -> None:
        self.anvil = anvil
        w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 30}))
        deployment = deploy_protocol(w3, ANVIL_KEYS[0], rpc_url=anvil.url)
        super().__init__(w3, deployment, ANVIL_KEYS[0])
        self.keys = ANVIL_KEYS
        self.addresses = tuple(Account.from_key(k).address for k in ANVIL_KEYS)
        self.trader = self.addresses[TRADER]  # the account the daemon tests' keeper protects and signs for
        self.trader_key = ANVIL_KEYS[TRADER]

    def snapshot(self) -> str:
        return self.anvil.request("evm_snapshot")

    def revert(self, snapshot_id: str) -> None:
        # anvil keeps its transaction pool across evm_revert: a transaction a test left pending would otherwise be
        # the next test's "pending nonce the journal does not know" (and get mined into it)
        self.anvil.request("anvil_dropAllTransactions")
        self.anvil.request("evm_revert", [snapshot_id])
        self.anvil.request("evm_setAutomine", [True])
        self.reset_nonces()


TRADER = 1  # anvil key index of the trader in the daemon tests (``DevChain.trader`` / ``trader_key``)


def _started_devchain():
    """A DevChain on a new anvil, stopped when the generator closes (the body of the two fixtures below)."""
    anvil = Anvil.start()
    try:
        yield DevChain(anvil)
    finally:
        anvil.stop()


@pytest.fixture(scope="session")
def devchain():
    """The worker's deployed chain (one anvil per xdist worker); tests use it through ``chain``."""
    yield from _started_devchain()


@pytest.fixture
def chain(devchain: DevChain):
    snapshot_id = devchain.snapshot()
    try:
        yield devchain
    finally:
        devchain.revert(snapshot_id)


@pytest.fixture
def fresh_devchain():
    """A deployed chain on an anvil of its own, for a test that breaks its chain (e.g. ``anvil_reset``)."""
    yield from _started_devchain()


# ---- the transaction manager on a plain anvil (tests/tx, tests/faults) -------------------------------------
# ``anvil``: a fresh anvil per test (no protocol deployed); ``make_manager``: a TransactionManager on it with an
# urgent and a routine lane (anvil keys 2 and 4); ``journal`` on ``clock``, a clock the test moves by hand.

URGENT_KEY = ANVIL_KEYS[2]
ROUTINE_KEY = ANVIL_KEYS[4]


@pytest.fixture
def anvil():
    node = Anvil.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def journal(tmp_path, clock):
    j = Journal(tmp_path / "journal.db", clock=clock)
    try:
        yield j
    finally:
        j.close()


class ManualClock:
    """A clock tests move by hand (stuck detection without sleeping)."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def make_manager(anvil, journal):
    """Factory: a TransactionManager on ``anvil`` with urgent and routine lanes (keys 2 and 4)."""

    def make(
        urls=None, *, confirmations=1, still_needed=None, fee_policy=None, stuck_blocks=3, stuck_s=30.0, jrnl=None, **kw
    ):
        client = ChainClient.connect(
            urls or [anvil.url], 31337, timeout_s=5.0, retry=RetryPolicy(attempts=3, base_s=0.01, max_s=0.05)
        )
        lanes = [
            Lane.from_key("urgent", URGENT_KEY, stuck_blocks=stuck_blocks, stuck_s=stuck_s, tip_percentile=90),
            Lane.from_key("routine", ROUTINE_KEY, stuck_blocks=stuck_blocks, stuck_s=stuck_s),
        ]
        return TransactionManager(
            client,
            jrnl or journal,
            lanes,
            fee_policy or FeePolicy(),
            confirmations=confirmations,
            still_needed=still_needed,
            **kw,
        )

    return make


# ---- no secret in any captured output ------------------------------------------------------------------
# After every test: the test's captured stdout/stderr/log (what pytest collected for the call phase) and every
# file under its tmp_path are scanned for the anvil dev keys (with and without 0x), the test keystore passwords
# and URL userinfo (`scheme://user:pass@`). Inputs the test wrote itself on purpose (config files, .env files,
# keystores, password files) are not scanned: outputs are (logs, journals, reports, JSON).

TEST_PASSWORDS = ("hunter2-pass", "wrong-password-xyz", "keystore-pw-7f3a")
_USERINFO_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/@:'\"]+:[^\s/@'\"]+@")
_INPUT_SUFFIXES = (".toml", ".env", ".key", ".pw")
_INPUT_NAMES = ("keystore", "ks.json", "pw.txt", "password", ".env")


def secret_leaks(text: str) -> list[str]:
    """Which known secrets appear in ``text`` (described, never quoted: the report must not leak either)."""
    low = text.lower()
    found = [f"anvil key #{i}" for i, k in enumerate(ANVIL_KEYS) if k.lower().removeprefix("0x") in low]
    found += [f"test password #{i}" for i, p in enumerate(TEST_PASSWORDS) if p in text]
    if _USERINFO_URL.search(text):
        found.append("URL userinfo (user:pass@)")
    return found


def _is_input_file(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(_INPUT_SUFFIXES) or any(n in name for n in _INPUT_NAMES)


@pytest.fixture(autouse=True)
def _no_secret_in_outputs(request):
    """Fails the test (at teardown) when a dev key, a test password or URL credentials landed in its outputs."""
    yield
    leaks: list[str] = []
    for when, key, content in getattr(request.node, "_report_sections", []):
        leaks += [f"{found} in captured {when} {key}" for found in secret_leaks(content)]
    tmp = request.node.funcargs.get("tmp_path") if hasattr(request.node, "funcargs") else None
    if tmp is not None and Path(tmp).is_dir():
        for path in sorted(Path(tmp).rglob("*")):
            # a symlink is an input the test set up (e.g. a PATH of links to sh/node/npm), not an output it wrote;
            # following it would read whole binaries
            if path.is_file() and not path.is_symlink() and not _is_input_file(path):
                text = path.read_bytes().decode("utf-8", errors="replace")
                leaks += [f"{found} in {path.relative_to(tmp)}" for found in secret_leaks(text)]
    if leaks:
        pytest.fail("secret in test output: " + "; ".join(leaks), pytrace=False)


# every fixture that starts an anvil (here and in the subfolders' conftest.py files)
ANVIL_FIXTURES = {
    "devchain",
    "chain",
    "fresh_devchain",
    "anvil",
    "make_manager",
    "aave_session",
    "aave",
    "perp_devchain",
    "perp",
}


def pytest_collection_modifyitems(config, items):
    """Refuse to run a test that uses an anvil fixture without the ``chain`` marker (``make test-unit`` deselects
    ``chain`` tests; one that slipped through would start anvil there)."""
    unmarked = [
        item.nodeid
        for item in items
        if ANVIL_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("chain") is None
    ]
    if unmarked:
        raise pytest.UsageError("tests use an anvil fixture without @pytest.mark.chain: " + ", ".join(unmarked))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """While a test without the ``chain`` marker runs (its set-up, a module or session fixture it is the first to
    use included, its call and teardown), ``Anvil.start`` fails the test naming the rule, whatever calls it in this
    process: a fixture, ``keeper devchain``/``demo``/``replay --onchain`` through ``keeper_cli``. The collection
    check above knows fixtures by name only."""
    if item.get_closest_marker("chain") is not None:
        return (yield)

    def refuse(cls, *args, **kwargs):
        pytest.fail(f"{item.nodeid} starts anvil without @pytest.mark.chain", pytrace=False)

    real = Anvil.__dict__["start"]
    Anvil.start = classmethod(refuse)
    try:
        return (yield)
    finally:
        Anvil.start = real


# ---- the CLI in this process ------------------------------------------------------------------------------
# Where a test's point is the CLI's exit code and message, ``keeper.cli.main`` runs in the test's own interpreter
# (what ``python -m keeper`` runs, minus the ~3 s of interpreter start and imports). Each command family keeps at
# least one true subprocess test besides (tests/runtime/test_secrets_cli.py, tests/risk/test_risk_cli.py,
# tests/replay/test_long_inputs.py, tests/test_devchain.py, the daemon end-to-end tests).


@dataclass(frozen=True)
class CliResult:
    """What one ``keeper`` invocation returned: exit code, stdout, stderr (like ``subprocess.CompletedProcess``)."""

    returncode: int
    stdout: str
    stderr: str


def _reset_logging() -> None:
    """Undo ``configure_logging`` (structlog defaults, our root handler removed), as a fresh process would have it."""
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if type(h).__name__ == "_ForeignHandler"]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)


@pytest.fixture
def keeper_cli(capsys, monkeypatch):
    """``keeper_cli(*args, env=None, cwd=None) -> CliResult``: ``keeper.cli.main(args)`` in this process with no
    ``KEEPER_*`` variable inherited (only ``env``), run from ``cwd``; logging set up by the command is undone after."""
    from keeper.cli import main

    def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> CliResult:
        for name in [k for k in os.environ if k.startswith("KEEPER_")]:
            monkeypatch.delenv(name)
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()  # what the test printed before is not the command's output
        code: int | str | None = 0
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        if isinstance(code, str):  # sys.exit("message"): printed on stderr with exit status 1 by the interpreter
            code, err = 1, err + code + "\n"
        return CliResult(0 if code is None else code, out, err)

    try:
        yield run
    finally:
        _reset_logging()


# ---- the daemon's end-to-end helpers (tests/daemon, tests/faults, tests/runtime use them) ----------------
# Tests take them as fixtures (``def test_x(chain, tmp_path, write_config, wait_log): ...``); nothing imports
# this module.


def keeper(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m keeper ...`` as a real process, signing as the trader (``KEEPER_PRIVATE_KEY``) unless ``env``
    says otherwise."""
    full_env = {**os.environ, "KEEPER_PRIVATE_KEY": ANVIL_KEYS[TRADER], **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "keeper", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=os.getcwd(),
    )


def write_config(chain, tmp_path: Path, **overrides: str) -> Path:
    """A keeper.toml for the dev chain in ``tmp_path`` (overrides: rpc, chain_id, head_poll_s, risk, limits)."""
    dep = chain.deployment.save(tmp_path / "deployment.json")
    rpc = overrides.pop("rpc", chain.anvil.url)
    head_poll_s = overrides.pop("head_poll_s", "0.2")
    risk = overrides.pop("risk", "")
    limits = overrides.pop("limits", "")
    text = f"""
[chain]
rpc_urls = ["{rpc}"]
chain_id = {overrides.pop("chain_id", chain.deployment.chain_id)}

[protocol]
deployment = "{dep}"

[[accounts]]
address = "{chain.addresses[TRADER]}"
mode = "protect"

[risk]
check_interval_min_s = 1.0
{risk}

[limits]
max_top_up_usd = 50000
max_per_day_usd = 200000
{limits}

[schedule]
head_poll_s = {head_poll_s}
initial_interval_s = 2.0

[journal]
path = "{tmp_path / "journal.sqlite"}"

[http]
port = 0

[log]
format = "json"
"""
    path = tmp_path / "keeper.toml"
    path.write_text(text)
    return path


def open_book(chain, reserve_e6: int, eth_collateral_e6: int = 3_000 * 10**6, btc_collateral_e6: int = 20_000 * 10**6):
    """Trader: ETH long 20 ETH at 3,000 (20x with $3k) and BTC short 2 BTC at 60,000; `reserve_e6` left in the
    wallet."""
    key = ANVIL_KEYS[TRADER]
    chain.mint(chain.addresses[TRADER], eth_collateral_e6 + btc_collateral_e6 + reserve_e6)
    chain.approve_engine(key)
    chain.open_position(key, "ETH", True, 20 * 10**18, eth_collateral_e6)
    chain.open_position(key, "BTC", False, 2 * 10**18, btc_collateral_e6)


def margin_events(chain, name: str) -> list[dict]:
    """The engine's events called ``name`` since deployment, read back from the chain."""
    event = getattr(chain.engine.events, name)
    return [dict(e["args"]) for e in event.get_logs(from_block=chain.deployment.start_block)]


def log_lines(path: Path, event: str) -> list[str]:
    """The ``event`` lines of a daemon's JSON log."""
    return [line for line in path.read_text().splitlines() if f'"event": "{event}"' in line]


def wait_for(probe, timeout_s: float, what: str, detail=None, every_s: float = 0.05):
    """Poll ``probe`` (an observable condition, not a guess of how long something takes) every ``every_s`` until
    it returns something truthy, and return that; fail naming ``what`` after ``timeout_s``, with ``detail()``
    (e.g. a log's tail) in the message when given."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(f"no {what} within {timeout_s}s" + (f":\n{detail()}" if detail else ""))
        time.sleep(every_s)  # the poll period of an observable condition


def wait_log(path: Path, event: str, timeout_s: float, count: int = 1) -> str:
    """The ``count``-th ``event`` line of the daemon's JSON log, waiting up to ``timeout_s`` for it."""
    return wait_for(
        lambda: (found := log_lines(path, event)) and len(found) >= count and found[count - 1],
        timeout_s,
        f"{event} #{count} in {path.name}",
        detail=lambda: path.read_text()[-3000:],
    )


def _helper_fixture(helper):
    """A fixture named like ``helper`` that hands the test the function itself (documented by its docstring)."""

    def fixture():
        return helper

    fixture.__doc__ = helper.__doc__
    return pytest.fixture(name=helper.__name__)(fixture)


_wait_for_fixture = _helper_fixture(wait_for)
_wait_log_fixture = _helper_fixture(wait_log)
_log_lines_fixture = _helper_fixture(log_lines)
_keeper_fixture = _helper_fixture(keeper)
_write_config_fixture = _helper_fixture(write_config)
_open_book_fixture = _helper_fixture(open_book)
_margin_events_fixture = _helper_fixture(margin_events)
_secret_leaks_fixture = _helper_fixture(secret_leaks)


FTX_FALL_OPEN_S = 1_667_929_500  # 2022-11-08 17:45 UTC: ETH -10.7 %, BTC -7 % within the next 40 minutes
FTX_FALL_WARMUP_S = 2 * 3600
FTX_FALL_BARS = 10


@pytest.fixture(scope="session")
def ftx_fall_window(tmp_path_factory):
    """The account replays' chain checks' window (tests/aave and tests/perp ``*_replay_chain``): ETH and BTC
    5-minute bars from ``FTX_FALL_WARMUP_S`` before ``FTX_FALL_OPEN_S`` to ``FTX_FALL_BARS`` bars after it."""
    from keeper.replay.prices import load_bars

    data = Path(__file__).resolve().parent / "data"
    d = tmp_path_factory.mktemp("ftx_fall")
    lo, hi = FTX_FALL_OPEN_S - FTX_FALL_WARMUP_S, FTX_FALL_OPEN_S + FTX_FALL_BARS * 300
    out = []
    for sym in ("ETH", "BTC"):
        lines = (data / f"ftx_2022-11-07T12_{sym}USDT_5m.csv").read_text().splitlines()
        cut = d / f"{sym.lower()}.csv"
        cut.write_text("\n".join([lines[0], *(ln for ln in lines[1:] if lo <= int(ln.split(",")[1]) < hi)]) + "\n")
        out.append(load_bars(cut, sym))
    return out
