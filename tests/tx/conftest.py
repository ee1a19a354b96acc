"""Fixtures for transaction-manager tests: a fresh plain anvil per test, a journal, and a manager factory."""

from __future__ import annotations

import pytest

from keeper.chain.anvil import Anvil
from keeper.chain.rpc import ChainClient, RetryPolicy
from keeper.dev.reference import ANVIL_KEYS
from keeper.tx.fees import FeePolicy
from keeper.tx.journal import Journal
from keeper.tx.manager import Lane, TransactionManager

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
