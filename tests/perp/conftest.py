"""Perp v2 fixtures: one anvil per pytest worker with Curie deployed and seeded once; snapshot/revert per test."""

from __future__ import annotations

import pytest
from eth_account import Account

from keeper.chain.anvil import Anvil
from keeper.chain.rpc import ChainClient
from keeper.dev.perp_v2 import LIQUIDATOR, PerpOps, start_perp_devchain
from keeper.dev.reference import ANVIL_KEYS
from keeper.protocols.perp_v2 import PerpV2Adapter


class PerpChain:
    """A seeded Curie devchain: ``ops`` (PerpOps), ``adapter`` (PerpV2Adapter), keys and addresses."""

    def __init__(self, anvil: Anvil, ops: PerpOps) -> None:
        self.anvil = anvil
        self.ops = ops
        self.keys = ANVIL_KEYS
        self.addresses = tuple(Account.from_key(k).address for k in ANVIL_KEYS)
        self.client = ChainClient.connect(anvil.url, 31337, timeout_s=60.0)
        self.adapter = PerpV2Adapter(self.client, ops.deployment)

    def snapshot(self) -> str:
        return self.anvil.request("evm_snapshot")

    def revert(self, snapshot_id: str) -> None:
        self.anvil.request("evm_revert", [snapshot_id])
        self.ops.reset_nonces()


@pytest.fixture(scope="session")
def perp_devchain():
    anvil, ops = start_perp_devchain(seed=True)
    try:
        ops.deposit(ANVIL_KEYS[LIQUIDATOR], 100_000 * 10**6)  # a liquidator needs free collateral (CH_NEFCI)
        yield PerpChain(anvil, ops)
    finally:
        anvil.stop()


@pytest.fixture
def perp(perp_devchain: PerpChain):
    snapshot_id = perp_devchain.snapshot()
    try:
        yield perp_devchain
    finally:
        perp_devchain.revert(snapshot_id)
