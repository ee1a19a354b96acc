"""Releases on real Aave v3: the owner's own ``withdraw`` of what a very safe account does not need.

The keeper holds the account owner's key (``KEEPER_PRIVATE_KEY`` is the trader's) and ``limits.allow_release``:
the service withdraws the largest amount of one collateral the Pool accepts and after which the account still
survives its move to survive. Checked on chain: the withdraw lands, the Pool's health factor after it equals
the keeper's arithmetic to the wei, and one unit more would break the Pool's rule (an ``eth_call`` of it
reverts 35) or the survival. No withdraw without the key or with releases off; a frozen reserve still pays its
suppliers, a paused one does not (revert 29).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from aavechain import KEEPER_KEY
from test_aave_service import _config

from keeper.accounts.aave_v3 import WAD, account_data, after_withdraw, withdraw_blocker
from keeper.chain.rpc import ExecutionReverted
from keeper.dev.aave_v3 import SeedAccount
from keeper.dev.reference import ANVIL_KEYS
from keeper.domain import AccountActionKind
from keeper.protocols.aave_v3 import F_WITHDRAW
from keeper.runtime.accounts_service import AccountKeeperService
from keeper.runtime.config import load_config

pytestmark = pytest.mark.chain

OWNER = ANVIL_KEYS[3]
SAFE = SeedAccount((("WETH", 10.0),), (("USDC", 1_000.0),))  # HF 24.75 at $3,000
TWO_COLLATERALS = SeedAccount((("WETH", 10.0), ("WBTC", 0.5)), (("USDC", 30_000.0),))  # HF 1.605
RELEASE_ON = "[limits]\nallow_release = true\n"


def _service(aave, tmp_path: Path, user: str, *, key: str = OWNER, allow: bool = True) -> AccountKeeperService:
    """The service on ``user`` protected, signing with ``key``, releases on or off."""
    _config(aave, tmp_path, user)  # writes keeper.toml
    path = tmp_path / "keeper.toml"
    if allow:
        path.write_text(path.read_text().replace("[limits]\n", RELEASE_ON))
    cfg = load_config(path, env={"KEEPER_PRIVATE_KEY": key}, dotenv_path=None)
    service = AccountKeeperService.from_config(cfg, execute=True, send_alerts=False)
    service.start()
    return service


def _withdraw_reverts(aave, user: str, asset: str, amount: int) -> str | None:
    """The Pool's answer to the owner's ``withdraw(asset, amount, owner)`` at the head: None or the revert."""
    adapter = aave.adapter()
    try:
        aave.client().call(adapter.pool, F_WITHDRAW.encode(asset, amount, user), sender=user)
    except ExecutionReverted as exc:
        return str(exc)
    return None


def _rules(aave, user: str):
    adapter = aave.adapter()
    adapter.load()
    adapter.releasable = frozenset({user.lower()})
    return adapter, adapter.read_book([user])


class TestService:
    def test_the_owner_gets_the_largest_withdraw_back_and_the_pool_agrees_to_the_wei(self, aave, tmp_path):
        aave.open_account(OWNER, SAFE)
        user = aave.address(OWNER)
        weth = aave.token("WETH")
        service = _service(aave, tmp_path, user)
        try:
            before = service.accounts_adapter.read_accounts([user])
            wallet = aave.erc20["WETH"].functions.balanceOf(user).call()
            report = service.cycle(execute=True)
            d = report.outcome.decision(user)
            assert d is not None and d.band == "release" and d.action == "release", d
            assert "release (withdraw)" in d.reason and "to the owner" in d.reason
            (sent,) = report.sent
            assert service.txm is not None
            final = service.txm.wait(int(sent["intent"]), timeout_s=30)
            assert final.state == "confirmed"
            assert d.asset == weth and aave.erc20["WETH"].functions.balanceOf(user).call() == wallet + d.amount
            # the keeper's arithmetic at the block the withdraw landed in equals the Pool's, to the wei
            receipt = aave.w3.eth.get_transaction_receipt(sent["tx_hash"])
            landed = aave.w3.eth.get_block(receipt["blockNumber"])["timestamp"]
            market = before.market.at(landed)
            predicted = account_data(after_withdraw(before.accounts[user], market, weth, d.amount), market)
            assert predicted.as_tuple() == aave.account_data(user)
            # it still survives the move to survive
            risk = next(r for r in report.outcome.risks if r.account.lower() == user.lower())
            book = service.accounts_adapter.read_book([user])
            assert book.rules.health_at(user, risk.survive_prices_e8) >= WAD
            # the journal knows the withdraw for what it is
            tx = aave.w3.eth.get_transaction(sent["tx_hash"])
            meta = service.accounts_adapter.describe_transaction(tx["to"], bytes(tx["input"]))
            assert meta is not None and meta["kind"] == "release" and meta["account"] == user.lower()
            assert int(meta["amount"]) == d.amount
            again = service.cycle(execute=True).outcome.decision(user)
            assert again is not None and again.band == "hold", again
        finally:
            service.close()

    @pytest.mark.parametrize("key, allow, why", [(KEEPER_KEY, True, "owner's key"), (OWNER, False, "not enabled")])
    def test_no_withdraw_without_the_owners_key_or_with_release_off(self, aave, tmp_path, key, allow, why):
        aave.open_account(OWNER, SAFE)
        user = aave.address(OWNER)
        before = aave.account_data(user)
        service = _service(aave, tmp_path, user, key=key, allow=allow)
        try:
            report = service.cycle(execute=True)
            d = report.outcome.decision(user)
            assert d is not None and d.band == "hold" and "no release" in d.reason and why in d.reason, d
            assert not report.sent and not any(a.kind is AccountActionKind.RELEASE for a in report.outcome.actions)
            assert aave.account_data(user) == before
        finally:
            service.close()


class TestPoolRule:
    def test_at_todays_prices_the_pool_refuses_one_unit_more(self, aave):
        """Survive prices = today's: the binding rule is the Pool's own (HF >= 1 after the withdraw)."""
        aave.open_account(OWNER, TWO_COLLATERALS)
        user = aave.address(OWNER)
        _, book = _rules(aave, user)
        opt = book.rules.release(user, {}, 10**15)
        assert opt is not None and opt.kind == "release"
        assert book.timestamp_s == aave.w3.eth.get_block("latest")["timestamp"]
        assert _withdraw_reverts(aave, user, opt.asset, opt.amount) is None
        assert "35" in (_withdraw_reverts(aave, user, opt.asset, opt.amount + 1) or "")

    def test_at_a_stress_price_one_unit_more_does_not_survive(self, aave):
        aave.open_account(OWNER, TWO_COLLATERALS)
        user = aave.address(OWNER)
        _, book = _rules(aave, user)
        weth, wbtc = aave.token("WETH"), aave.token("WBTC")
        survive = {weth: 2_400 * 10**8, wbtc: 50_000 * 10**8}
        opt = book.rules.release(user, survive, 10**15)
        assert opt is not None
        market, acct = book.rules.market, book.rules.accounts[user]
        stressed = replace(market, prices_e8={**market.prices_e8, **survive})
        hf = account_data(after_withdraw(acct, stressed, opt.asset, opt.amount), stressed).health_factor_wad
        hf_more = account_data(after_withdraw(acct, stressed, opt.asset, opt.amount + 1), stressed).health_factor_wad
        assert hf == opt.health_after and hf >= WAD > hf_more
        assert _withdraw_reverts(aave, user, opt.asset, opt.amount + 1) is None  # the Pool would still pay it

    def test_a_frozen_reserve_still_pays_its_suppliers_a_paused_one_does_not(self, aave):
        aave.open_account(OWNER, SAFE)
        user = aave.address(OWNER)
        weth = aave.token("WETH")
        aave.set_frozen("WETH", True)
        _, book = _rules(aave, user)
        opt = book.rules.release(user, {}, 10**15)
        assert opt is not None and opt.asset == weth
        assert _withdraw_reverts(aave, user, weth, opt.amount) is None
        aave.set_frozen("WETH", False)
        aave.set_paused("WETH", True)
        _, book = _rules(aave, user)
        assert book.rules.release(user, {}, 10**15) is None
        why = withdraw_blocker(book.rules.accounts[user], book.rules.market, weth)
        assert why is not None and "paused" in why
        assert "29" in (_withdraw_reverts(aave, user, weth, 10**15) or "")
