"""``keeper status`` estimates what protecting each position costs a year (issue 13, deliver 1), at the replay's
gas presets and at the chain's own gas price now, on a real anvil with the devchain's default book."""

from __future__ import annotations

import json

import pytest

from keeper.dev.reference import DEFAULT_BOOK
from keeper.replay.cost import DEFAULT_GAS_PRESETS_GWEI

pytestmark = pytest.mark.chain


def test_status_prices_protection_per_gas_price(chain, tmp_path, keeper, write_config):
    chain.seed_book(chain.trader_key, DEFAULT_BOOK, reserve_e6=50_000 * 10**6)
    cfg = write_config(chain, tmp_path)
    proc = keeper("status", "--config", str(cfg), "--json", env={"KEEPER_PRIVATE_KEY": chain.trader_key})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    gwei = out["gas_prices_gwei"]
    assert {k: gwei[k] for k in DEFAULT_GAS_PRESETS_GWEI} == DEFAULT_GAS_PRESETS_GWEI
    # the chain's price is the next block's base fee (at most 12.5 % off the latest block's) plus the tip
    base_fee_gwei = chain.w3.eth.get_block("latest")["baseFeePerGas"] / 1e9
    assert gwei["chain"] >= base_fee_gwei * 0.875
    assert len(out["positions"]) == len(DEFAULT_BOOK)
    by_price = sorted(gwei, key=gwei.__getitem__)
    for row in out["positions"]:
        costs = row["cost_usd_per_year"]
        assert set(costs) == set(gwei)
        assert all(c > 0 for c in costs.values()), costs
        # the least cost over the bands cannot fall when every transaction costs more
        ordered = [costs[name] for name in by_price]
        assert ordered == sorted(ordered), (gwei, costs)
    # gas is part of the cost: 400x dearer gas (l1 against l2) must raise it for some position, not only keep it
    assert any(r["cost_usd_per_year"]["l1"] > r["cost_usd_per_year"]["l2"] for r in out["positions"])
