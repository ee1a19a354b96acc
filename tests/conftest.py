"""Shared fixtures: one anvil per pytest worker with the reference protocol deployed once.

``devchain`` (session scope, so once per xdist worker) starts anvil on a free loopback port and deploys;
``chain`` wraps a test in ``evm_snapshot`` / ``evm_revert`` so every test starts from the same state.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from keeper.chain.anvil import Anvil
from keeper.dev.reference import ANVIL_KEYS, DevChainOps, deploy_protocol


class DevChain(DevChainOps):
    """A deployed local chain plus the anvil process behind it."""

    def __init__(self, anvil: Anvil) -> None:
        self.anvil = anvil
        w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 30}))
        deployment = deploy_protocol(w3, ANVIL_KEYS[0], rpc_url=anvil.url)
        super().__init__(w3, deployment, ANVIL_KEYS[0])
        self.keys = ANVIL_KEYS
        self.addresses = tuple(Account.from_key(k).address for k in ANVIL_KEYS)

    def snapshot(self) -> str:
        return self.anvil.request("evm_snapshot")

    def revert(self, snapshot_id: str) -> None:
        self.anvil.request("evm_revert", [snapshot_id])
        self.anvil.request("evm_setAutomine", [True])
        self.reset_nonces()


@pytest.fixture(scope="session")
def devchain():
    anvil = Anvil.start()
    try:
        yield DevChain(anvil)
    finally:
        anvil.stop()


@pytest.fixture
def chain(devchain: DevChain):
    snapshot_id = devchain.snapshot()
    try:
        yield devchain
    finally:
        devchain.revert(snapshot_id)


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
            if path.is_file() and not _is_input_file(path):
                text = path.read_bytes().decode("utf-8", errors="replace")
                leaks += [f"{found} in {path.relative_to(tmp)}" for found in secret_leaks(text)]
    if leaks:
        pytest.fail("secret in test output: " + "; ".join(leaks), pytrace=False)


ANVIL_FIXTURES = {"devchain", "chain"}


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
