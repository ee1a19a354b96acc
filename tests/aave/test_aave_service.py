"""The daemon's account service on real Aave v3: read, assess, decide and send supply/repay on behalf."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import structlog
from aavechain import KEEPER_KEY, LIQUIDATOR_KEY
from structlog.testing import capture_logs
from web3 import Web3
from web3.exceptions import ContractLogicError
from webhook import Clock, Receiver

from keeper.accounts.aave_v3 import AaveRules, health_factor
from keeper.accounts.costs import AAVE_REPAY_GAS, AAVE_SUPPLY_GAS, GAS_USED_MEASURED
from keeper.chain.anvil import Anvil
from keeper.decision import AccountBookState, decide_accounts
from keeper.dev.aave_v3 import AaveOps, SeedAccount
from keeper.dev.reference import ANVIL_KEYS
from keeper.domain import AccountActionKind
from keeper.errors import ConfigError
from keeper.replay.cost import DEFAULT_GAS_PRESETS_GWEI
from keeper.risk.policy import CostBands
from keeper.runtime.accounts_service import AccountKeeperService
from keeper.runtime.alerts import AlertSink
from keeper.runtime.config import load_config

pytestmark = pytest.mark.chain

TRADER = ANVIL_KEYS[3]
LEVERED_ETH = SeedAccount((("WETH", 10.0),), (("USDC", 22_000.0),))  # HF 1.125 at $3,000, liq. $2,666.67
CRASH_E8 = 2_600 * 10**8  # HF 0.975 without action


def _config(aave, tmp_path: Path, user: str | None, url: str | None = None, tables: str = "", **protocol: object):
    extra = "".join(f"{k} = {v!r}\n" if isinstance(v, str) else f"{k} = {v}\n" for k, v in protocol.items())
    accounts = f'[[accounts]]\naddress = "{user}"\nmode = "protect"\n' if user else ""
    toml = f"""{"watch_all = true" if user is None else ""}
[chain]
rpc_urls = ["{url or aave.anvil.url}"]
chain_id = {aave.deployment.chain_id}

[protocol]
name = "aave-v3"
provider = "{aave.deployment.provider}"
{extra}
{tables}
{accounts}
[limits]
max_top_up_usd = 100000
max_per_day_usd = 1000000

[journal]
path = "{tmp_path / "journal.sqlite"}"

[http]
enabled = false
"""
    path = tmp_path / "keeper.toml"
    path.write_text(toml)
    return load_config(path, env={"KEEPER_PRIVATE_KEY": KEEPER_KEY}, dotenv_path=None)


def _service(aave, tmp_path, user, url=None, tables="", **protocol) -> AccountKeeperService:
    cfg = _config(aave, tmp_path, user, url, tables, **protocol)
    service = AccountKeeperService.from_config(cfg, execute=True, send_alerts=False)
    service.start()
    return service


def _run(service: AccountKeeperService):
    """One cycle, then wait until every transaction it sent is final."""
    report = service.cycle(execute=True)
    assert service.txm is not None
    for sent in report.sent:
        assert "intent" in sent, sent
        assert service.txm.wait(int(sent["intent"]), timeout_s=30).state == "confirmed"
    return report


def _fund(aave, wallet: dict[str, float]) -> None:
    for symbol, amount in wallet.items():
        aave.mint(symbol, aave.address(KEEPER_KEY), aave.units(symbol, amount))


def _liquidate(aave, user: str, collateral: str = "WETH", debt: str = "USDC"):
    return aave.liquidate(LIQUIDATOR_KEY, collateral, debt, user, 1_000 * 10 ** aave.deployment.decimals[debt])


class TestCrash:
    def test_control_liquidated_keeper_run_saved_and_hf_matches_the_pool(self, aave, tmp_path):
        """Control: the crash lets liquidationCall through. Keeper run: its repay makes it revert 45, and the
        keeper's health factor after acting equals getUserAccountData's to the wei."""
        aave.open_account(TRADER, LEVERED_ETH)
        user = aave.address(TRADER)
        before = aave.snapshot()
        aave.set_price("WETH", CRASH_E8)
        assert _liquidate(aave, user)["status"] == 1  # control run: liquidated
        aave.revert(before)

        _fund(aave, {"USDC": 50_000})
        service = _service(aave, tmp_path, user)
        report = _run(service)
        (action,) = report.outcome.onchain_actions
        assert action.kind is AccountActionKind.REPAY_DEBT and action.asset == aave.token("USDC")
        snap = service.accounts_adapter.read_accounts([user])
        assert health_factor(snap.accounts[user], snap.market) == aave.account_data(user)[5]
        aave.set_price("WETH", CRASH_E8)
        with pytest.raises(ContractLogicError, match="45"):
            _liquidate(aave, user)
        service.close()

    def test_keeper_protects_the_account_on_a_fork(self, aave, tmp_path):
        """Pointed at a fork (anvil --fork-url), the daemon's repay lands on the fork only and the crash there
        no longer liquidates, while the origin chain's account is untouched."""
        aave.open_account(TRADER, LEVERED_ETH)
        user = aave.address(TRADER)
        _fund(aave, {"USDC": 50_000})
        origin_before = aave.account_data(user)
        fork = Anvil.start(fork_url=aave.anvil.url, fork_block_number=aave.w3.eth.block_number)
        try:
            service = _service(aave, tmp_path, user, fork.url)
            (action,) = _run(service).outcome.onchain_actions
            assert action.kind is AccountActionKind.REPAY_DEBT
            on_fork = AaveOps(Web3(Web3.HTTPProvider(fork.url)), aave.deployment)
            assert on_fork.account_data(user)[5] > origin_before[5]
            on_fork.set_price("WETH", CRASH_E8)
            with pytest.raises(ContractLogicError, match="45"):
                on_fork.liquidate(LIQUIDATOR_KEY, "WETH", "USDC", user, 1_000 * 10**6)
            assert aave.account_data(user) == origin_before
            service.close()
        finally:
            fork.stop()

    def test_a_mined_repay_sizes_the_gas_left_alert(self, aave, tmp_path):
        """The head watcher's poll finalises the cycle's repay and takes its gas as the per-action estimate."""
        aave.open_account(TRADER, LEVERED_ETH)
        user = aave.address(TRADER)
        _fund(aave, {"USDC": 50_000})
        service = _service(aave, tmp_path, user)
        report = service.cycle(execute=True)
        assert [s["action"] for s in report.sent] == ["repay_debt"]
        service.watch_head()  # a new head: the manager polls, the repay is final, its receipt is counted
        receipt = aave.w3.eth.get_transaction_receipt(report.sent[0]["tx_hash"])
        assert service.top_up_gas_limit > receipt["gasUsed"] and service.top_up_gas_limit != 200_000
        service.close()


class TestWallet:
    @pytest.mark.parametrize(
        "wallet, kind, symbol",
        [
            ({"WETH": 100.0}, AccountActionKind.ADD_COLLATERAL, "WETH"),
            ({"USDC": 50_000.0}, AccountActionKind.REPAY_DEBT, "USDC"),
            ({"WETH": 100.0, "USDC": 50_000.0}, AccountActionKind.REPAY_DEBT, "USDC"),
        ],
        ids=["collateral-only-supplies", "debt-only-repays", "both-picks-the-cheaper"],
    )
    def test_wallet_decides_the_action(self, aave, tmp_path, wallet, kind, symbol):
        """What the keeper's wallet holds decides supply or repay; the pool's own HF rises; the crash then fails."""
        aave.open_account(TRADER, LEVERED_ETH)
        user = aave.address(TRADER)
        _fund(aave, wallet)
        hf_before = aave.account_data(user)[5]
        service = _service(aave, tmp_path, user)
        (action,) = _run(service).outcome.onchain_actions
        assert action.kind is kind and action.asset == aave.token(symbol)
        assert aave.account_data(user)[5] > hf_before
        aave.set_price("WETH", CRASH_E8)
        with pytest.raises(ContractLogicError, match="45"):
            _liquidate(aave, user)
        service.close()

    def test_empty_wallet_alerts_with_the_cause(self, aave, tmp_path):
        """Nothing in the wallet: no transaction, one alert that says so."""
        aave.open_account(TRADER, LEVERED_ETH)
        user = aave.address(TRADER)
        service = _service(aave, tmp_path, user)
        with capture_logs() as logs:
            report = _run(service)
        assert not report.sent and not report.outcome.onchain_actions
        alerts = [e for e in logs if e["event"] == "alert"]
        assert any("holds none of the pool's assets" in e["text"] for e in alerts), alerts
        (line,) = [e for e in logs if e["event"] == "account_decision"]
        d = report.outcome.decision(user)
        assert d is not None and 0 < d.breach_probability < 1 and line["vega"] > 0  # endangered: vol raises p
        # the line names its account, protocol and chain (fields of the line, not a bound logger's context)
        assert (line["account"], line["protocol"], line["chain_id"]) == (user.lower(), d.protocol, 31337)
        assert line["log_level"] == "info" and line["reason"] == d.reason
        service.close()


class TestDanger:
    def test_stale_price_source_is_danger(self, aave, tmp_path):
        """A safe account whose price sources stopped updating is in the trigger band and alerted, naming why."""
        aave.open_account(TRADER, SeedAccount((("WETH", 10.0),), (("USDC", 5_000.0),)))
        user = aave.address(TRADER)
        aave.advance(700)
        service = _service(aave, tmp_path, user, stale_after_s=600)
        with capture_logs() as logs:
            report = _run(service)
        d = report.outcome.decision(user)
        assert d is not None and d.band == "trigger" and "stale" in d.reason
        assert aave.token("WETH") in d.stale_assets
        assert any(e["event"] == "alert" and "stale" in e["text"] for e in logs)
        service.close()

    def test_per_asset_heartbeat_and_stablecoin_volatility(self, aave, tmp_path):
        """[protocol.assets.X]: USDC's own day-long heartbeat keeps it fresh while WETH (10 min) is stale, and
        USDC's fallback volatility makes WETH the one risky factor of a WETH-against-USDC account."""
        aave.open_account(TRADER, SeedAccount((("WETH", 10.0),), (("USDC", 5_000.0),)))
        user = aave.address(TRADER)
        aave.advance(700)
        tables = (
            "[protocol.assets.WETH]\nstale_after_s = 600\n"
            "[protocol.assets.USDC]\nstale_after_s = 86400\nsigma_fallback_annual = 0.05\n"
        )
        service = _service(aave, tmp_path, user, tables=tables)
        report = _run(service)
        d = report.outcome.decision(user)
        assert d is not None and d.stale_assets == (aave.token("WETH"),)
        assert d.method == "closed_form" and d.dominant_asset == aave.token("WETH")
        assert report.asset_sigmas[aave.token("USDC")] == 0.05
        service.close()

    def test_unknown_asset_symbol_is_a_config_error_at_start(self, aave, tmp_path):
        """[protocol.assets.XYZ] for a token the pool does not list stops the start with a one-line error."""
        cfg = _config(aave, tmp_path, aave.address(TRADER), tables="[protocol.assets.XYZ]\nstale_after_s = 60\n")
        service = AccountKeeperService.from_config(cfg, execute=False, send_alerts=False)
        with pytest.raises(ConfigError, match="XYZ, not assets of this deployment"):
            service.start()
        service.close()

    def test_long_history_tail_bounds_the_stress_gap(self, aave, tmp_path):
        """[risk.long_history] WETH = years of hourly bars with 20 % falls: with too few oracle rounds for the
        recent-rounds estimate, WETH's gap is that history's tail (at least its quantile over the horizon,
        LongTail.side_gaps), not the constant fallback; USDC (no history named) keeps its own; a symbol the pool
        does not list stops the start."""
        from keeper.replay.prices import load_bars
        from keeper.risk.tails import LongTail

        aave.open_account(TRADER, SeedAccount((("WETH", 10.0),), (("USDC", 5_000.0),)))
        user = aave.address(TRADER)
        rng = np.random.default_rng(7)
        n = 3 * 8_760
        moves = 0.008 * rng.standard_t(4, n)
        moves[rng.choice(n, 12, replace=False)] = np.log(0.8)  # a dozen one-hour 20 % falls in three years
        close = 3_000 * np.exp(np.cumsum(moves))
        t0 = int(time.time()) - 30 * 86_400 - n * 3_600
        csv = tmp_path / "weth_1h.csv"
        lines = ["timestamp_utc,unix_s,open,high,low,close,volume"]
        lines += [f"x,{t0 + 3_600 * i},{c:.4f},{c:.4f},{c:.4f},{c:.4f},1" for i, c in enumerate(close)]
        csv.write_text("\n".join(lines) + "\n")

        def gaps(tables: str) -> dict[str, tuple[float, float]]:
            (tmp_path / "journal.sqlite").unlink(missing_ok=True)
            service = _service(aave, tmp_path, user, tables=tables)
            try:
                return service.estimate_assets(service.accounts_adapter.read_book([user]))[1]
            finally:
                service.close()

        plain = gaps("")
        with_tail = gaps(f'[risk.long_history]\nWETH = "{csv}"\n')
        weth, usdc = aave.token("WETH"), aave.token("USDC")
        bars = load_bars(csv, "WETH")
        tail = LongTail.fit(bars.t_s, bars.close)
        assert tail is not None
        policy_cfg = _config(aave, tmp_path, user).risk_policy()
        horizon_s = policy_cfg.horizon_s(policy_cfg.check_interval_max_s)
        p_tail = policy_cfg.stress_tail_probability or policy_cfg.p_trigger
        tail_fall = min(tail.side_gaps(p_tail, horizon_s, None)[0], policy_cfg.stress_cap)
        # the devchain's few rounds leave the plain estimate on the constant fallback; the tail replaces it
        assert plain[weth] == (policy_cfg.stress_gap, policy_cfg.stress_gap)
        assert with_tail[weth][0] >= tail_fall - 1e-12, (with_tail, tail_fall)
        assert abs(with_tail[weth][0] - policy_cfg.stress_gap) > 0.01, (with_tail, plain)
        assert with_tail[usdc] == plain[usdc]
        cfg = _config(aave, tmp_path, user, tables=f'[risk.long_history]\nDOGE = "{csv}"\n')
        service = AccountKeeperService.from_config(cfg, execute=False, send_alerts=False)
        with pytest.raises(ConfigError, match="risk.long_history names DOGE, not assets of this deployment"):
            service.start()
        service.close()

    def test_frozen_reserve_is_not_supplied_to_and_the_alert_says_why(self, aave, tmp_path):
        """WETH frozen and only WETH in the wallet: nothing is sent, the alert names the frozen reserve."""
        aave.open_account(TRADER, LEVERED_ETH)
        user = aave.address(TRADER)
        _fund(aave, {"WETH": 100.0})
        aave.set_frozen("WETH", True)
        service = _service(aave, tmp_path, user)
        with capture_logs() as logs:
            report = _run(service)
        assert not report.sent
        assert any(e["event"] == "alert" and "frozen" in e["text"] for e in logs)
        service.close()


USDC_5_VOL = "[protocol.assets.USDC]\nsigma_fallback_annual = 0.05\n"


class TestCostAware:
    """[risk] cost_aware = true on real Aave: the bands priced at the chain's gas price now (anvil's base fee)."""

    def _at_base_fee(self, aave, tmp_path, user: str, wallet: dict[str, float], base_fee_wei: int, tables: str):
        """One cost-aware cycle with the next blocks' base fee at ``base_fee_wei``: (the action sent, the pure
        decision's action on the same read and inputs, the receipt's gas, the gas price the service used)."""
        before = aave.snapshot()
        base_fee_before = aave.w3.eth.get_block("latest")["baseFeePerGas"]
        try:
            _fund(aave, wallet)
            (tmp_path / "journal.sqlite").unlink(missing_ok=True)
            service = _service(aave, tmp_path, user, tables="[risk]\ncost_aware = true\n" + tables)
            try:
                aave.anvil.request("anvil_setNextBlockBaseFeePerGas", [hex(base_fee_wei)])
                aave.anvil.request("evm_mine", [])  # the latest block at that base fee; the next one 7/8 of it
                assert aave.w3.eth.get_block("latest")["baseFeePerGas"] == base_fee_wei
                book = service.accounts_adapter.read_book([user])
                interval_s = service.check_interval_s
                with capture_logs() as logs:
                    report = _run(service)
                (line,) = [e for e in logs if e["event"] == "cost_bands"]
                gas_price_wei = round(line["gas_price_gwei"] * 1e9)
                native_e8 = round(line["native_usd"] * 1e8)
                assert gas_price_wei >= base_fee_wei * 7 // 8
                # the pure decision on the same read, the policy built here from the protocol's measured gas
                gas_usd = GAS_USED_MEASURED["aave-v3"] * gas_price_wei / 10**18 * native_e8 / 1e8
                policy = dataclasses.replace(
                    service.policy, cost_bands=CostBands(gas_usd, service.config.risk.capital_rate_annual)
                )
                sigmas, gaps, corr = service.estimate_assets(book, policy)
                wallet_units, _ = service.accounts_adapter.wallet(service.signer_address)
                pure = decide_accounts(
                    list(book.accounts),
                    book.rules,
                    AccountBookState(wallet=wallet_units, symbols=service._symbols, decimals=book.decimals),
                    prices_e8=book.prices_e8,
                    sigmas_annual=sigmas,
                    policy=policy,
                    limits=service.limits,
                    check_interval_s=interval_s,
                    stress_gaps=gaps,
                    correlation=corr,
                )
                (sent,) = report.outcome.onchain_actions
                gas_used = aave.w3.eth.get_transaction_receipt(report.sent[0]["tx_hash"])["gasUsed"]
                return sent, pure.onchain_actions, gas_used, gas_price_wei, pure.risks[0]
            finally:
                service.close()
        finally:
            aave.revert(before)  # anvil keeps the base fee it was told: the next test's sends need the old one
            aave.anvil.request("anvil_setNextBlockBaseFeePerGas", [hex(base_fee_before)])

    @pytest.mark.parametrize(
        "wallet, kind, measured, method, tables",
        [({"WETH": 100.0}, AccountActionKind.ADD_COLLATERAL, AAVE_SUPPLY_GAS, "screen", ""),
         ({"USDC": 50_000.0}, AccountActionKind.REPAY_DEBT, AAVE_REPAY_GAS, "screen", ""),
         ({"WETH": 100.0}, AccountActionKind.ADD_COLLATERAL, AAVE_SUPPLY_GAS, "closed_form", USDC_5_VOL)],
        ids=["supply", "repay", "supply-one-factor"],
    )  # fmt: skip
    def test_dear_gas_sends_more_and_the_amount_is_the_pure_decision(
        self, aave, tmp_path, wallet, kind, measured, method, tables
    ):
        """The same endangered account at an L1-like (20 gwei) and an L2-like (0.05 gwei) base fee: the L1 action
        is larger, each amount equals the pure decide_accounts' under a policy built from the measured gas x the
        gas price x the gas token's price, to the unit; the receipt's gas is the measured figure (within 5 %).
        The devchain's USDC has too few rounds for a volatility (fallback 150 %): a several-factor account (the
        screen) unless its own fallback is set low, when WETH is the one factor."""
        aave.open_account(TRADER, LEVERED_ETH)
        user = aave.address(TRADER)
        l1 = self._at_base_fee(aave, tmp_path, user, wallet, 20 * 10**9, tables)
        l2 = self._at_base_fee(aave, tmp_path, user, wallet, 5 * 10**7, tables)
        for sent, pure, gas_used, _, risk in (l1, l2):
            assert risk.method == method
            assert sent.kind is kind
            (want,) = pure
            assert (want.kind, want.asset, want.amount) == (sent.kind, sent.asset, sent.amount)
            # the pool's state decides a few SSTOREs (whether the reserve's indexes move in this block): 141-147k
            # gas for the supply, 166-172k for the repay in these tests; the figure is the larger
            assert 0.95 * measured <= gas_used <= measured, (gas_used, measured)
        assert l1[3] > 10 * l2[3]  # the gas prices the service used
        assert l1[0].amount > l2[0].amount, (l1[0].amount, l2[0].amount)
        # the trigger is the breach constraint, the same at both prices; the restore level is wider at L1
        assert l1[4].trigger_distance == l2[4].trigger_distance
        assert l1[4].restore_distance > l2[4].restore_distance >= l2[4].trigger_distance


class TestEModeAndIsolation:
    def test_emode_account_is_protected_with_the_category_threshold(self, aave, tmp_path):
        """An e-mode stablecoin account (LT 95 %) near its limit gets a DAI repay; the pool's HF equals ours."""
        aave.open_account(TRADER, SeedAccount((("USDC", 100_000.0),), (("DAI", 93_000.0),), emode=1))
        user = aave.address(TRADER)
        assert aave.account_data(user)[3] == 9500
        _fund(aave, {"DAI": 100_000.0})
        service = _service(aave, tmp_path, user)
        report = _run(service)
        d = report.outcome.decision(user)
        assert d is not None and d.band == "trigger", d
        (action,) = report.outcome.onchain_actions
        assert action.kind is AccountActionKind.REPAY_DEBT and action.asset == aave.token("DAI")
        snap = service.accounts_adapter.read_accounts([user])
        assert health_factor(snap.accounts[user], snap.market) == aave.account_data(user)[5]
        service.close()

    def test_isolated_account_is_supplied_its_own_asset_only(self, aave, tmp_path):
        """In isolation mode a USDC-and-LINK wallet does not supply USDC (not collateral there): LINK or a repay."""
        aave.open_account(TRADER, SeedAccount((("LINK", 5_000.0),), (("USDC", 30_000.0),)))
        user = aave.address(TRADER)
        aave.set_price("LINK", 95 * 10**7)  # $9.50: HF 1.077, 7 % above the liquidation price
        _fund(aave, {"LINK": 100_000.0, "USDC": 1_000_000.0})
        service = _service(aave, tmp_path, user)
        report = _run(service)
        d = report.outcome.decision(user)
        assert d is not None and any("isolat" in b for b in d.blocked), d
        (action,) = report.outcome.onchain_actions
        assert action.asset != aave.token("USDC") or action.kind is AccountActionKind.REPAY_DEBT
        snap = service.accounts_adapter.read_accounts([user])
        assert health_factor(snap.accounts[user], snap.market) == aave.account_data(user)[5]
        service.close()


class TestWatchAll:
    def test_every_account_is_discovered_ranked_and_only_alerted(self, aave, tmp_path):
        """watch_all finds every account from the Pool's events; the endangered one is alerted, nothing is sent."""
        aave.open_account(TRADER, LEVERED_ETH)
        aave.open_account(ANVIL_KEYS[4], SeedAccount((("WETH", 10.0),), (("USDC", 2_000.0),)))
        service = _service(aave, tmp_path, None)
        with capture_logs() as logs:
            report = service.cycle(execute=True)
        found = {d.account.lower() for d in report.outcome.decisions}
        assert {aave.address(TRADER).lower(), aave.address(ANVIL_KEYS[4]).lower()} <= found
        assert not report.sent and service.txm is None
        ranked = next(e for e in logs if e["event"] == "accounts_ranked")["top"]
        assert ranked[0]["account"].lower() == aave.address(TRADER).lower()
        assert any(e["event"] == "alert" and "watch-only" in e["text"] for e in logs), [
            (d.band, d.reason) for d in report.outcome.decisions
        ]
        service.close()


class TestAlertNews:
    def test_an_endangered_account_is_alerted_when_its_state_changes_and_reminded_after_the_window(
        self, aave, tmp_path
    ):
        """A real webhook receiver: the endangered account's alert is posted once, not on the cycles after it
        (no ``alert`` line either: its ``account_decision`` line keeps the reason every cycle); a new cause (a
        little USDC in the wallet: short of the target instead of cannot act) and a worse severity (the crash:
        liquidatable, critical) are posted at once; out of danger its key is resolved, so its return is posted
        again inside the window; the same state after the window is the reminder, with the count suppressed."""
        aave.open_account(TRADER, LEVERED_ETH)
        user = aave.address(TRADER)
        opened_e8 = aave.price_e8("WETH")
        service = _service(aave, tmp_path, user)
        receiver = Receiver()
        clock = Clock()
        service.alerts = AlertSink(receiver.url, background=False, dedup_window_s=900, burst=20, clock=clock)
        posts: list[int] = []

        def cycle() -> list[dict]:
            aave.anvil.request("evm_mine", [])
            with capture_logs() as logs:
                report = service.cycle(execute=False)
            d = report.outcome.decision(user)
            assert d is not None
            lines = [e for e in logs if e["event"] == "account_decision"]
            assert [e["reason"] for e in lines] == [d.reason]  # a small book: every account's line, holds too
            posts.append(len(receiver.posts))
            return [e for e in logs if e["event"] == "alert"]

        try:
            first, second = cycle(), cycle()
            assert posts == [1, 1] and len(first) == 1 and second == []
            (post,) = receiver.posts
            assert post["key"] == f"{user.lower()}:alert" and post["severity"] == "warning"
            assert "cannot act" in post["text"] and "holds none of the pool's assets" in post["text"]

            _fund(aave, {"USDC": 100.0})  # a little: a repay toward the target, short of it (a new cause)
            assert len(cycle()) == 1 and cycle() == [] and posts[-2:] == [2, 2]
            assert receiver.posts[-1]["text"].startswith(f"[warning] margin keeper: {user}: cannot reach the target")

            aave.set_price("WETH", opened_e8 * 2)  # safe: held, nothing alerted, the key resolved
            assert cycle() == [] and posts[-1] == 2
            aave.set_price("WETH", opened_e8)  # endangered again inside the window: news
            assert len(cycle()) == 1 and posts[-1] == 3 and cycle() == [] and posts[-1] == 3

            clock.t += 901  # the reminder: the same state, 901 s after it was last posted
            assert len(cycle()) == 1 and posts[-1] == 4 and receiver.posts[-1]["suppressed"] == 1

            aave.set_price("WETH", CRASH_E8)  # liquidatable: critical, a worse severity
            assert len(cycle()) == 1 and posts[-1] == 5
            assert receiver.posts[-1]["severity"] == "critical" and "LIQUIDATABLE" in receiver.posts[-1]["text"]
            assert cycle() == [] and posts[-1] == 5
        finally:
            receiver.close()
            service.close()


def _cli(tmp_path: Path, command: str) -> dict:
    """``keeper <command> --config keeper.toml --json`` in a subprocess; its JSON line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEPER_")}
    env["KEEPER_PRIVATE_KEY"] = KEEPER_KEY
    proc = subprocess.run(
        [sys.executable, "-m", "keeper", command, "--config", str(tmp_path / "keeper.toml"), "--json"],
        capture_output=True, text=True, env=env, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


class TestCli:
    def test_keeper_check_shows_the_decisions_and_sends_nothing(self, aave, tmp_path):
        """``keeper check --json`` on an aave-v3 config: the endangered account, its repay, nothing sent."""
        aave.open_account(TRADER, LEVERED_ETH)
        user = aave.address(TRADER)
        _fund(aave, {"USDC": 50_000})
        _config(aave, tmp_path, user)  # writes keeper.toml
        hf_before = aave.account_data(user)[5]
        out = _cli(tmp_path, "check")
        (row,) = out["accounts"]
        assert row["account"].lower() == user.lower() and row["band"] == "trigger" and row["action"] == "repay_debt"
        assert row["health_factor"] == pytest.approx(hf_before / 1e18, rel=1e-12)
        assert 0 < row["breach_probability"] < 1 and row["vega"] > 0  # d breach_probability / d sigma
        assert out["sent"] == [] and out["executed"] is False
        assert aave.account_data(user)[5] == hf_before

    def test_keeper_status_prices_protection_per_gas_price(self, aave, tmp_path):
        """``keeper status --json`` on an aave-v3 config: ``cost_usd_per_year`` per account at the replay's presets
        and the chain's gas price now (at least 7/8 of the latest base fee: the next block's), positive and not
        falling as gas gets dearer; ``keeper check --json`` carries the same; the table shows the column."""
        aave.open_account(TRADER, LEVERED_ETH)
        user = aave.address(TRADER)
        _config(aave, tmp_path, user)
        base_fee_gwei = aave.w3.eth.get_block("latest")["baseFeePerGas"] / 1e9
        out = _cli(tmp_path, "status")
        gwei = out["gas_prices_gwei"]
        assert {k: gwei[k] for k in DEFAULT_GAS_PRESETS_GWEI} == DEFAULT_GAS_PRESETS_GWEI
        assert set(gwei) == {"l1", "l2", "chain"} and gwei["chain"] >= base_fee_gwei * 7 / 8
        (row,) = out["accounts"]
        costs = row["cost_usd_per_year"]
        assert set(costs) == set(gwei) and all(c > 0 for c in costs.values()), costs
        ordered = [costs[name] for name in sorted(gwei, key=gwei.__getitem__)]
        assert ordered == sorted(ordered) and costs["l1"] > costs["l2"], (gwei, costs)
        checked = _cli(tmp_path, "check")
        assert set(checked["accounts"][0]["cost_usd_per_year"]) == {"l1", "l2", "chain"}
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEEPER_")}
        env |= {"KEEPER_PRIVATE_KEY": KEEPER_KEY, "COLUMNS": "400"}  # one line per row: the header in one piece
        proc = subprocess.run(
            [sys.executable, "-m", "keeper", "status", "--config", str(tmp_path / "keeper.toml")],
            capture_output=True, text=True, env=env, timeout=120, check=False, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "protection $/yr l1 / l2 / chain" in proc.stdout, proc.stdout

    def test_keeper_stress_grid_on_real_aave(self, aave, tmp_path):
        """``keeper stress --json``: the levered account is liquidated by WETH -15 % and the HF there equals the
        pool's own getUserAccountData after that move."""
        aave.open_account(TRADER, LEVERED_ETH)
        user = aave.address(TRADER)
        _config(aave, tmp_path, user)
        grid = _cli(tmp_path, "stress")["accounts"]
        rows = {r["scenario"]: r for r in next(v for k, v in grid.items() if k.lower() == user.lower())}
        assert rows["WETH -15%"]["liquidated"] and not rows["WETH -10%"]["liquidated"]
        aave.set_price("WETH", int(aave.price_e8("WETH") * 0.85))
        assert rows["WETH -15%"]["health_factor"] == pytest.approx(aave.account_data(user)[5] / 1e18, rel=1e-9)


def test_structlog_is_configured_for_capture():
    """capture_logs sees the service's events (guards the assertions above against a silent logger)."""
    with capture_logs() as logs:
        structlog.get_logger("keeper").warning("alert", text="x")
    assert logs and logs[0]["text"] == "x"


def test_the_cycle_reads_afresh_the_accounts_the_last_decision_did_not_hold(aave, tmp_path):
    """A book read incrementally (the cross-check bound lowered to 0, as for a book of more than 1,000 accounts):
    after the first cycle's full read, a cycle with no event in its logs reads again only the account the last
    decision did not hold (endangered, an empty wallet: alerted), and says so in ``cycle_finished``."""
    safe_key = ANVIL_KEYS[4]
    aave.open_account(TRADER, LEVERED_ETH)
    aave.open_account(safe_key, SeedAccount((("WETH", 10.0),), (("USDC", 2_000.0),)))
    endangered, safe = aave.address(TRADER), aave.address(safe_key)
    aave.anvil.request("anvil_mine", [hex(13)])  # the opening transactions out of the logs' reorg overlap
    cfg = _config(aave, tmp_path, endangered)
    cfg = cfg.model_copy(update={"accounts": [*cfg.accounts, cfg.accounts[0].model_copy(update={"address": safe})]})
    service = AccountKeeperService.from_config(cfg, execute=True, send_alerts=False)
    service.start()
    service.accounts_adapter.cross_check_max_accounts = 0
    with capture_logs() as logs:
        first = service.cycle(execute=False)
        aave.anvil.request("evm_mine", [])
        second = service.cycle(execute=False)
    assert first.book is not None and second.book is not None
    assert first.book.accounts_read == 2 and second.book.accounts_read == 1
    bands = {d.key: d.band for d in first.outcome.decisions}
    assert bands[safe.lower()] == "hold" and bands[endangered.lower()] != "hold"
    finished = [e for e in logs if e["event"] == "cycle_finished"]
    assert [e["accounts_read"] for e in finished] == [2, 1]
    assert [e["reason"] for e in logs if e["event"] == "aave_full_read"] == ["first read"]
    # the account read afresh is the endangered one: its view equals a full read of the same block
    fresh = aave.adapter().read_accounts([endangered, safe], second.block_number, cross_check=False)
    rules = second.book.rules
    assert isinstance(rules, AaveRules) and dict(rules.accounts) == fresh.accounts
    service.close()
