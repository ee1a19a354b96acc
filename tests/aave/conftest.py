"""Fixtures: real Aave v3 deployed once per pytest worker on its own anvil; snapshot/revert per test."""

from __future__ import annotations

import pytest
from aavechain import AaveChain

from keeper.chain.anvil import Anvil


@pytest.fixture(scope="session")
def aave_session():
    anvil = Anvil.start()
    try:
        yield AaveChain(anvil)
    finally:
        anvil.stop()


@pytest.fixture
def aave(aave_session: AaveChain):
    snapshot_id = aave_session.snapshot()
    try:
        yield aave_session
    finally:
        aave_session.revert(snapshot_id)
