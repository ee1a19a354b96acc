"""A stuck top-up whose purpose is gone is cancelled at its nonce, not sent again (KeeperService.still_needed)."""

from __future__ import annotations

import os

import pytest

from keeper.dev.reference import ANVIL_KEYS
from keeper.runtime.config import load_config
from keeper.runtime.service import KeeperService

pytestmark = pytest.mark.chain

TRADER = 1  # anvil key index of the trader whose book the open_book fixture opens


def test_dropped_top_up_is_cancelled_when_the_position_recovered(
    chain, tmp_path, write_config, open_book, margin_events
):
    """Top-up sent, dropped from the pool, price recovers: the manager cancels with a self-transfer at that nonce."""
    open_book(chain, reserve_e6=30_000 * 10**6, eth_collateral_e6=15_000 * 10**6, btc_collateral_e6=60_000 * 10**6)
    cfg = load_config(
        write_config(chain, tmp_path), env={**os.environ, "KEEPER_PRIVATE_KEY": ANVIL_KEYS[TRADER]}, dotenv_path=None
    )
    service = KeeperService.from_config(cfg, execute=True)
    try:
        service.start()
        chain.push_price("ETH", 2_500 * 10**8)
        chain.anvil.request("evm_setAutomine", [False])
        report = service.cycle(execute=True)
        sent = [s for s in report.sent if s["action"] == "top_up"]
        assert len(sent) == 1 and sent[0]["state"] in ("sent", "signed")
        nonce = sent[0]["nonce"]
        chain.anvil.request("anvil_dropTransaction", [sent[0]["tx_hash"]])
        chain.push_price("ETH", 3_000 * 10**8, wait=False)
        chain.anvil.request("evm_mine", [])
        assert service.still_needed(service.journal.get(sent[0]["intent"])) is False
        service.txm.poll()  # unknown to the node and no longer needed -> cancel at the same nonce
        chain.anvil.request("evm_mine", [])
        rec = service.txm.wait(
            sent[0]["intent"], timeout_s=30, between_polls=lambda: chain.anvil.request("evm_mine", [])
        )
        assert rec.state == "cancelled"
        attempts = service.journal.attempts(rec.id)
        assert attempts[-1].kind == "cancel" and attempts[-1].nonce == nonce
        assert chain.w3.eth.get_transaction_count(chain.addresses[TRADER]) == nonce + 1
        assert margin_events(chain, "MarginAdded") == []
    finally:
        chain.anvil.request("evm_setAutomine", [True])
        service.close()


def test_day_budget_counts_journaled_top_ups(chain, tmp_path, write_config, open_book, margin_events):
    """With $5k per transaction and $6k per day, the second cycle's top-up is cut to the $1k left today."""
    # BTC short below its own target buffer: nothing to move, so only the wallet (and its caps) can pay
    open_book(chain, reserve_e6=30_000 * 10**6, eth_collateral_e6=15_000 * 10**6, btc_collateral_e6=30_000 * 10**6)
    path = write_config(chain, tmp_path, limits="")
    text = (
        path.read_text()
        .replace("max_top_up_usd = 50000", "max_top_up_usd = 5000")
        .replace("max_per_day_usd = 200000", "max_per_day_usd = 6000")
    )
    path.write_text(text)
    cfg = load_config(path, env={**os.environ, "KEEPER_PRIVATE_KEY": ANVIL_KEYS[TRADER]}, dotenv_path=None)
    service = KeeperService.from_config(cfg, execute=True)
    try:
        service.start()
        for price in (2_450, 2_200):  # each round leaves the position inside its stress gap again
            chain.push_price("ETH", price * 10**8)
            report = service.cycle(execute=True)
            for sent in report.sent:
                assert service.txm.wait(sent["intent"], timeout_s=30).state == "confirmed"
        added = [e["amount"] for e in margin_events(chain, "MarginAdded")]
        assert added == [5_000 * 10**6, 1_000 * 10**6]
        assert service.spent_today_e6(service.clock()) == 6_000 * 10**6
        third = service.cycle(execute=True)
        # the day budget is named as the reason the position stays short of its (stress-gap) target; no alert:
        # its breach probability is far below the trigger (issue 10, finding 7)
        eth = next(d for d in third.plan.decisions if d.market_id == 0)
        assert third.sent == [] and any(c.startswith("day budget: $0.00 left") for c in eth.short_causes)
    finally:
        service.close()
