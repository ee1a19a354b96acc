"""The demo's Aave v3 part: the control run's liquidations come from the Pool's own LiquidationCall events."""

from __future__ import annotations

import pytest

from keeper.commands._demo_aave import run_aave_demo

pytestmark = pytest.mark.chain


def test_control_run_liquidates_every_seeded_account(tmp_path):
    """Without the keeper the crash lets the liquidator bot's liquidationCall through on all four accounts."""
    entry = run_aave_demo(keeper=False, workdir=tmp_path)
    assert {k for k in entry if entry[k] is not None} >= {"positions", "liquidated_without_keeper", "accounts"}
    assert entry["positions"] == 4 and entry["liquidated_without_keeper"] == 4
    assert entry["liquidated_with_keeper"] is None and entry["top_ups"] is None
    for acct in entry["accounts"]:
        assert acct["liquidations_without_keeper"], acct
        assert all(x["debt_covered_usd"] > 0 for x in acct["liquidations_without_keeper"])
