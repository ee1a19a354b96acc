"""The daemon passes per-side stress gaps to the risk engine, as the replay does (same code path)."""

from __future__ import annotations

import os

import pytest

from keeper.dev.reference import ANVIL_KEYS
from keeper.domain import Side
from keeper.risk.gaps import SideGaps
from keeper.runtime.config import load_config
from keeper.runtime.service import KeeperService

pytestmark = pytest.mark.chain

TRADER = 1  # anvil key index of the trader whose book the open_book fixture opens


def test_assess_sizes_a_long_on_falls_and_a_short_on_rises(chain, tmp_path, write_config, open_book):
    """40 ETH rounds of +0.1 % with one -3 %: the ETH long is sized on the 6 % down gap; the BTC short on BTC's up
    gap."""
    open_book(chain, reserve_e6=30_000 * 10**6)
    price = 3_000.0
    for k in range(40):
        price *= 0.97 if k == 30 else 1.001
        chain.push_price("ETH", int(price * 10**8))
    cfg = load_config(
        write_config(chain, tmp_path), env={**os.environ, "KEEPER_PRIVATE_KEY": ANVIL_KEYS[TRADER]}, dotenv_path=None
    )
    service = KeeperService.from_config(cfg, execute=False)
    try:
        snap, _ = service.read()
        risks, _ = service.assess(snap)
        eth = service.stress_gaps[next(r.position.market_id for r in risks if r.position.side is Side.LONG)]
        assert isinstance(eth, SideGaps)
        assert eth.down == pytest.approx(2 * 0.0304592, rel=1e-3) and eth.up == 0.03  # 2 x |ln 0.97|; floor
        for r in risks:
            g = service.stress_gaps[r.position.market_id]
            assert r.stress_gap == (g.down if r.position.side is Side.LONG else g.up)
    finally:
        service.close()
