"""Shared fixtures: one anvil per pytest worker with the reference protocol deployed once.

``devchain`` (session scope, so once per xdist worker) starts anvil on a free loopback port and deploys;
``chain`` wraps a test in ``evm_snapshot`` / ``evm_revert`` so every test starts from the same state.
"""

from __future__ import annotations

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


ANVIL_FIXTURES = {"devchain", "chain"}


def pytest_collection_modifyitems(config, items):
    """Refuse to run a test that uses an anvil fixture without the ``chain`` marker (``make test-unit`` deselects
    ``chain`` tests; one that slipped through would start anvil there)."""
    unmarked = [item.nodeid for item in items
                if ANVIL_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("chain") is None]
    if unmarked:
        raise pytest.UsageError("tests use an anvil fixture without @pytest.mark.chain: " + ", ".join(unmarked))
