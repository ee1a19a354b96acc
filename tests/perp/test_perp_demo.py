"""The demo's Perp v2 part: liquidations come from the ClearingHouse's PositionLiquidated events, the keeper's
top-ups from the Vault's Deposited events in transactions the keeper's address sent."""

from __future__ import annotations

import pytest
from eth_account import Account

from keeper.commands._demo_aave import AaveRun
from keeper.commands._demo_aave import summarize as aave_summarize
from keeper.commands._demo_perp import BOOK, run_perp_demo
from keeper.dev.perp_v2 import LIQUIDATOR
from keeper.dev.reference import ANVIL_KEYS

pytestmark = pytest.mark.chain

PENALTY_RATIO = 0.025  # ClearingHouseConfig liquidationPenaltyRatio on the devchain (25,000 ppm)


def check_liquidations(entry: dict, key: str) -> None:
    """Every liquidation record is a real PositionLiquidated: the bot's address, a market, a 2.5 % penalty."""
    bot = Account.from_key(ANVIL_KEYS[LIQUIDATOR]).address
    records = [x for acct in entry["accounts"] for x in acct[key]]
    assert len(records) == entry[key]
    for x in records:
        assert x["liquidator"] == bot and x["market"] in ("ETH", "BTC")
        assert x["notional"] > 0 and x["size"] > 0
        assert x["penalty"] == pytest.approx(x["notional"] * PENALTY_RATIO, rel=1e-3)


def test_control_run_liquidates_every_seeded_account(tmp_path):
    """Without the keeper the crash lets the bot's ClearingHouse.liquidate through on all five accounts."""
    entry = run_perp_demo(keeper=False, workdir=tmp_path)
    aave_fields = set(aave_summarize([], AaveRun("x", 0), None))
    assert set(entry) >= aave_fields  # the same fields as the aave-v3 entry (and a few of its own)
    assert entry["positions"] == len(BOOK) == 5 and entry["legs"] == 8
    assert entry["liquidated_without_keeper"] == 5
    assert entry["liquidations_without_keeper"] >= 6  # every long leg at least once (partial ones come back)
    assert entry["liquidated_with_keeper"] is None and entry["top_ups"] is None and entry["gas_used"] is None
    check_liquidations(entry, "liquidations_without_keeper")
    assert entry["penalties_without_keeper"] > 0
    for acct, seeded in zip(entry["accounts"], BOOK, strict=True):
        assert acct["liquidated_without_keeper"], acct
        # the bot takes a market while the account is liquidatable: the losing legs at least
        losers = {leg.symbol for leg in seeded.legs if leg.is_long}
        assert (
            losers <= {x["market"] for x in acct["liquidations_without_keeper"]} <= {leg.symbol for leg in seeded.legs}
        )


def test_keeper_run_saves_every_account_by_depositfor(tmp_path):
    """With the daemon on ``[protocol] name = "perp-v2"`` the same crash liquidates none of the five: each one
    got at least one Vault.depositFor from the keeper's address, and none of its transactions reverted."""
    entry = run_perp_demo(keeper=True, workdir=tmp_path)
    assert entry["liquidated_without_keeper"] == 5
    assert entry["liquidated_with_keeper"] == 0, [a["liquidations_with_keeper"] for a in entry["accounts"]]
    assert entry["liquidations_with_keeper"] == 0
    deposits = [x for acct in entry["accounts"] for x in acct["deposited"]]
    assert entry["top_ups"] == len(deposits) >= 5 and entry["repays"] == 0
    assert entry["collateral_added"] == pytest.approx(sum(x["usd"] for x in deposits))
    for acct in entry["accounts"]:
        assert acct["deposited"], acct["account"]  # Curie lets a third party only deposit: no deposit, no rescue
        assert all(x["tx_hash"].startswith("0x") and x["amount_e6"] > 0 for x in acct["deposited"])
        assert acct["account_value_end_with_keeper"] >= acct["requirement_end_with_keeper"] > 0
    assert entry["keeper_transactions"] >= entry["top_ups"] and entry["keeper_reverted"] == 0
    assert entry["gas_used"] > 0
