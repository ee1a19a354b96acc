"""The daemon's account service on real Perpetual Protocol v2 (Curie 2.8.4): read, assess, decide, depositFor.

Each test runs the service built from a real configuration file (``[protocol] name = "perp-v2"``) against the
seeded devchain of tests/perp/conftest.py, and checks what it did on chain: liquidations attempted by a
liquidator after the move either go through (control) or revert ``CH_EAV`` (the keeper's deposit landed).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from eth_account import Account
from structlog.testing import capture_logs

from keeper.accounts.costs import PERP_DEPOSIT_FOR_GAS, liquidation_penalty
from keeper.accounts.perp_v2 import margin_at
from keeper.chain.abi import Function
from keeper.chain.rpc import ExecutionReverted
from keeper.dev.perp_v2 import KEEPER, LIQUIDATOR
from keeper.domain import AccountActionKind
from keeper.runtime.accounts_service import AccountKeeperService
from keeper.runtime.config import load_config

pytestmark = pytest.mark.chain

F_LIQUIDATE = Function("liquidate(address,address)")
CROSS_TRADER = 1  # long ETH $6,000 + long BTC $3,000 on $1,000 (DEFAULT_PERP_BOOK)
BTC_SHORT = 5  # short BTC $10,000 on $1,500
CRASH = {"ETH": 2_000.0 * 0.93, "BTC": 40_000.0 * 0.93}  # both markets -7 %: the 9x long is liquidatable


def _config_text(perp, tmp_path: Path, traders: list[str] | None, *, protocol: str = "", mode: str = "protect"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    deployment = perp.ops.deployment.save(tmp_path / "perp.json")
    accounts = "".join(f'[[accounts]]\naddress = "{t}"\nmode = "{mode}"\n' for t in traders or [])
    return f"""{"watch_all = true" if traders is None else ""}
[chain]
rpc_urls = ["{perp.anvil.url}"]
chain_id = {perp.ops.deployment.chain_id}

[protocol]
name = "perp-v2"
deployment = "{deployment}"
{protocol}

{accounts}
[limits]
max_top_up_usd = 50000
max_per_day_usd = 100000

[journal]
path = "{tmp_path / "journal.sqlite"}"

[http]
enabled = false
"""


def _config(perp, tmp_path: Path, traders: list[str] | None, *, key: str | None = None, limits: str = "", **kw):
    text = _config_text(perp, tmp_path, traders, **kw).replace("[limits]\n", f"[limits]\n{limits}")
    path = tmp_path / "keeper.toml"
    path.write_text(text)
    return load_config(path, env={"KEEPER_PRIVATE_KEY": key or perp.keys[KEEPER]}, dotenv_path=None)


def _service(perp, tmp_path, traders, **kw) -> AccountKeeperService:
    service = AccountKeeperService.from_config(_config(perp, tmp_path, traders, **kw), execute=True, send_alerts=False)
    service.start()
    return service


def _run(service: AccountKeeperService):
    report = service.cycle(execute=True)
    assert service.txm is not None
    for sent in report.sent:
        assert "intent" in sent, sent
        assert service.txm.wait(int(sent["intent"]), timeout_s=60).state == "confirmed", sent
    return report


def _liquidate_reason(perp, trader: str, symbol: str) -> str | None:
    base = perp.ops.deployment.markets[symbol].base_token
    try:
        perp.client.call(
            perp.ops.deployment.clearing_house, F_LIQUIDATE.encode(trader, base), sender=perp.addresses[LIQUIDATOR]
        )
    except ExecutionReverted as exc:
        return str(perp.adapter.errors.decode(exc.data_bytes))
    return None


def _vault_balance(perp, trader: str) -> int:
    return perp.ops.vault.functions.getBalance(trader).call()


def test_control_liquidated_keeper_deposit_saves_both_markets_and_health_equals_the_contract(perp, tmp_path):
    """Control: ETH and BTC -7 % let a liquidator take the 9x cross-margin long. Keeper run: the service sends
    one depositFor, sized on both markets, before the move; after it neither market can be liquidated."""
    trader = perp.addresses[CROSS_TRADER]
    before = perp.snapshot()
    perp.ops.set_prices(CRASH)
    assert _liquidate_reason(perp, trader, "ETH") is None and _liquidate_reason(perp, trader, "BTC") is None
    perp.revert(before)

    perp.ops.mint(perp.addresses[KEEPER], 100_000 * 10**6)
    service = _service(perp, tmp_path, [trader])
    try:
        vault_before = _vault_balance(perp, trader)
        report = _run(service)
        d = report.outcome.decision(trader)
        assert d is not None and d.band == "trigger", d
        (action,) = report.outcome.onchain_actions
        assert action.kind is AccountActionKind.ADD_COLLATERAL
        assert action.asset.lower() == perp.ops.deployment.settlement_token.lower()
        assert f"deposit {action.amount / 1e6:,.6g} USDC" in action.reason
        assert _vault_balance(perp, trader) == vault_before + action.amount
        # the keeper's health figure (value / requirement) equals the contract's numbers, to the unit
        book = service.accounts_adapter.read_book([trader])
        assert book.rules.health(trader) == book.onchain_health[trader.lower()]
        perp.ops.set_prices(CRASH)
        for symbol in ("ETH", "BTC"):
            reason = _liquidate_reason(perp, trader, symbol)
            assert reason is not None and reason.startswith("CH_EAV"), (symbol, reason)
    finally:
        service.close()


def test_cost_aware_deposit_is_priced_at_curies_measured_depositfor_gas(perp, tmp_path):
    """[risk] cost_aware = true on Curie: the bands price one depositFor at PERP_DEPOSIT_FOR_GAS (the receipt of the
    deposit the service sends is that figure within 3 %), the stress-gap tail at the clearing house's penalty."""
    trader = perp.addresses[CROSS_TRADER]
    perp.ops.mint(perp.addresses[KEEPER], 100_000 * 10**6)
    service = _service(perp, tmp_path, [trader], protocol="\n[risk]\ncost_aware = true")
    try:
        with capture_logs() as logs:
            report = _run(service)
        (line,) = [e for e in logs if e["event"] == "cost_bands"]
        assert line["top_up_gas"] == PERP_DEPOSIT_FOR_GAS and line["gas_usd_per_tx"] > 0
        (action,) = report.outcome.onchain_actions
        assert action.kind is AccountActionKind.ADD_COLLATERAL
        gas_used = int(perp.client.get_receipt(report.sent[0]["tx_hash"])["gasUsed"], 16)
        assert abs(gas_used - PERP_DEPOSIT_FOR_GAS) <= 0.03 * PERP_DEPOSIT_FOR_GAS, gas_used
        risk = report.outcome.risks[0]
        assert risk.restore_distance >= risk.trigger_distance > 0
        book = service.accounts_adapter.read_book([trader])
        raw = perp.client.call(perp.ops.deployment.config, Function("getLiquidationPenaltyRatio()").encode())
        ratio = int.from_bytes(raw, "big") / 1e6  # ClearingHouseConfig's own view (2.5 % on the devchain)
        assert {liquidation_penalty(book.rules, a) for a in book.rounds} == {ratio}
    finally:
        service.close()


def test_a_pump_against_a_short_is_covered_by_the_same_deposit_rule(perp, tmp_path):
    """The BTC short: the adverse move is up; the service deposits and a +8 % BTC pump then cannot liquidate."""
    trader = perp.addresses[BTC_SHORT]
    perp.ops.mint(perp.addresses[KEEPER], 100_000 * 10**6)
    service = _service(perp, tmp_path, [trader])
    try:
        report = _run(service)
        risk = next(r for r in report.outcome.risks if r.account.lower() == trader.lower())
        btc = perp.ops.deployment.markets["BTC"].base_token
        assert risk.survive_prices_e8[btc] > risk.stress_prices_e8[btc] // 2  # sanity: a price, not 0
        assert risk.survive_prices_e8[btc] > book_price(service, trader, btc)  # the adverse side is up
        assert len(report.outcome.onchain_actions) == 1
        perp.ops.set_prices({"BTC": 40_000.0 * 1.08})
        reason = _liquidate_reason(perp, trader, "BTC")
        assert reason is not None and reason.startswith("CH_EAV"), reason
    finally:
        service.close()


def book_price(service: AccountKeeperService, trader: str, asset: str) -> int:
    return service.accounts_adapter.read_book([trader]).prices_e8[asset]


def test_the_mark_decides_not_the_index_and_the_log_says_so(perp, tmp_path):
    """The ETH pool pushed 5 % below an unchanged index, 16 min later: the book prices ETH at the mark, its
    margin equals the contract's account value - requirement there, and the decision names the basis."""
    perp.ops.move_market("ETH", 2_000.0 * 0.95)
    perp.ops.push_index("ETH", 2_000.0)
    perp.ops.advance(960)
    perp.ops.push_index("ETH", 2_000.0)
    perp.ops.push_index("BTC", 40_000.0)
    trader = perp.addresses[CROSS_TRADER]
    service = _service(perp, tmp_path, [trader])
    try:
        book = service.accounts_adapter.read_book([trader])
        eth = perp.ops.deployment.markets["ETH"].base_token
        basis = book.price_basis[eth]
        assert basis["basis"] == "mark" and float(basis["premium"]) < -0.03  # type: ignore[arg-type]
        assert book.prices_e8[eth] == perp.ops.mark_price("ETH") // 10**10
        view = next(a for a in book.accounts if a.account == trader.lower())
        snap = service.accounts_adapter.read([trader])  # type: ignore[attr-defined]
        exact = margin_at(snap.traders[trader.lower()].account, snap.marks_x18, snap.params)
        assert exact.account_value_x18 == snap.traders[trader.lower()].contract_account_value_x18
        assert abs(view.margin_excess_e8(book.prices_e8) / 1e8 - exact.excess_x18 / 1e18) < 1e-4
        # at the index the same account would look healthier: the keeper did not use it
        at_index = {**book.prices_e8, eth: int(float(basis["index"]) * 1e8)}  # type: ignore[arg-type]
        assert view.margin_excess_e8(at_index) > view.margin_excess_e8(book.prices_e8)
        # the mark's premium gap (a push of mark_push_usd on the pool's depth) widens ETH's stress gap
        assert book.premium_gaps[eth][0] > 0
        _, gaps, _ = service.estimate_assets(book)
        bare = service.policy.estimate_stress_gap([], [], service.check_interval_s, now_s=book.timestamp_s)
        assert gaps[eth][0] >= bare.side_gaps[0] - 1e-12 and gaps[eth][0] > book.premium_gaps[eth][0]
    finally:
        service.close()


def test_a_bigger_market_push_asks_for_a_bigger_deposit(perp, tmp_path):
    """mark_push_usd $5M instead of 0: the premium gap is wider and the deposit larger (a decision, no send)."""
    trader = perp.addresses[CROSS_TRADER]
    amounts = []
    for push in (0, 5_000_000):
        service = AccountKeeperService.from_config(
            _config(perp, tmp_path / str(push), [trader], protocol=f"mark_push_usd = {push}"),
            execute=False,
            send_alerts=False,
        )
        try:
            service.start()
            book = service.accounts_adapter.read_book([trader])
            outcome, _, _ = service.decide_snapshot(book, {perp.ops.deployment.settlement_token: 10**12})
            d = outcome.decision(trader)
            assert d is not None and d.band == "trigger"
            amounts.append((book.premium_gaps, d.amount))
        finally:
            service.close()
    (gaps0, small), (gaps5, large) = amounts
    for base, (down, up) in gaps5.items():  # the book's own $9,000 long still pushes a little with no push
        assert down > gaps0[base][0] > 0 and up > gaps0[base][1] >= 0, (gaps0, gaps5)
    assert large > small > 0


def test_stale_index_is_danger_and_said_so(perp, tmp_path):
    """No index round for longer than stale_after_s: the account's decision says its index feed is stale."""
    trader = perp.addresses[4]  # short ETH + long BTC: hedged, healthy at fresh prices
    perp.ops.advance(700)
    service = _service(perp, tmp_path, [trader], protocol="stale_after_s = 600", mode="watch")
    try:
        report = service.cycle(execute=True)
        d = report.outcome.decision(trader)
        assert d is not None and d.band == "trigger" and d.stale_assets, d
        assert "stale price source" in d.reason and "ETH" in d.reason
        assert report.sent == []  # watch mode: alerts only
    finally:
        service.close()


def test_watch_all_discovers_every_trader_from_events_and_only_alerts(perp, tmp_path):
    """watch_all: the seeded traders come from the ClearingHouse's PositionChanged events, ranked, never acted on."""
    service = _service(perp, tmp_path, None)
    try:
        found = set(service.watched_users())
        seeded = {perp.addresses[i].lower() for i in (1, 4, 5)}
        assert seeded <= found
        report = service.cycle(execute=True)
        assert report.sent == []
        assert {d.key for d in report.outcome.decisions} >= seeded
        assert all(a.kind is AccountActionKind.ALERT for a in report.outcome.actions)
    finally:
        service.close()


def test_wrong_deployment_file_is_refused_at_start(perp, tmp_path):
    """A deployment naming a ClearingHouse the chain does not hold stops the start with a one-line error."""
    from keeper.errors import ChainMismatchError, ConfigError

    cfg = _config(perp, tmp_path, [perp.addresses[1]])
    assert cfg.protocol.deployment is not None
    bad = dataclasses.replace(perp.ops.deployment, clearing_house=Account.create().address)
    bad.save(cfg.protocol.deployment)
    service = AccountKeeperService.from_config(cfg, execute=False, send_alerts=False)
    try:
        with pytest.raises(ChainMismatchError, match="no contract at the ClearingHouse address"):
            service.start()
    finally:
        service.close()
    with pytest.raises(ConfigError, match="perp-v2 needs deployment"):
        (tmp_path / "bad.toml").write_text('[chain]\nrpc_urls=["http://x"]\n[protocol]\nname = "perp-v2"\n')
        load_config(tmp_path / "bad.toml", env={}, dotenv_path=None)


def test_check_and_stress_show_the_account_and_its_markets(perp, tmp_path, keeper_cli):
    """`keeper check --json` lists the cross-margin account with both markets priced at the mark; `keeper
    stress --json` gives its grid per market and for all longs together, liquidated where the rule says so."""
    trader = perp.addresses[CROSS_TRADER]
    _config(perp, tmp_path, [trader])
    env = {"KEEPER_PRIVATE_KEY": perp.keys[KEEPER]}
    proc = keeper_cli("check", "--config", str(tmp_path / "keeper.toml"), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    (row,) = out["accounts"]
    assert row["account"].lower() == trader.lower() and row["band"] == "trigger"
    assert set(row["markets"]) == {"ETH", "BTC"}
    assert all(m["basis"] == "mark" and m["exposure_usd"] > 0 for m in row["markets"].values())
    assert row["vega"] >= 0 and (row["vega"] > 0 or row["breach_probability"] == 1.0)  # per account
    assert out["executed"] is False and out["sent"] == []
    proc = keeper_cli("stress", "--config", str(tmp_path / "keeper.toml"), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    grid = {r["scenario"]: r for r in json.loads(proc.stdout)["accounts"][trader.lower()]}
    assert {"ETH -10%", "BTC -10%", "collateral -10%"} <= set(grid)
    assert grid["collateral -10%"]["liquidated"] and not grid["collateral +10%"]["liquidated"]
    assert grid["collateral -10%"]["loss_usd"] > grid["ETH -10%"]["loss_usd"] > grid["BTC -10%"]["loss_usd"] > 0
    assert grid["ETH -10%"]["liquidated"] == (grid["ETH -10%"]["health_factor"] < 1)


def _seed_index_history(perp, rounds: int = 40, step_s: int = 60, seed: int = 3) -> None:
    """A quiet hour of index rounds (0.03 % per minute): enough rounds for the measured stress gaps, so the
    buffer is set by volatility and depth, not by the fallback gap."""
    import numpy as np

    rng = np.random.default_rng(seed)
    level = {"ETH": 2_000.0, "BTC": 40_000.0}
    for _ in range(rounds):
        perp.ops.advance(step_s)
        for symbol, price in list(level.items()):
            level[symbol] = price * float(np.exp(rng.normal(0.0, 0.0003)))
            perp.ops.push_index(symbol, level[symbol])


def test_a_mark_dragged_below_an_unchanged_index_is_acted_on(perp, tmp_path):
    """The hedged trader (short ETH $8,000, long BTC $8,000 on $2,000) holds with measured gaps. The BTC pool is
    then pushed 9 % down while the index stays put: 16 min later the mark, not the index, has the account near
    its requirement and the service deposits; the index alone would have said hold."""
    trader = perp.addresses[4]
    _seed_index_history(perp)
    perp.ops.mint(perp.addresses[KEEPER], 100_000 * 10**6)
    service = _service(perp, tmp_path, [trader])
    try:
        first = service.cycle(execute=True)
        d = first.outcome.decision(trader)
        assert d is not None and d.band == "hold", d.reason if d else None
        btc = perp.ops.deployment.markets["BTC"].base_token
        index_btc = perp.ops.aggregators["BTC"].functions.latestRoundData().call()[1] / 1e8
        perp.ops.move_market("BTC", index_btc * 0.91)
        for _ in range(16):  # the premium TWAP catches up; the index keeps its level and stays fresh
            perp.ops.advance(60)
            perp.ops.push_index("BTC", index_btc)
            perp.ops.push_index("ETH", perp.ops.aggregators["ETH"].functions.latestRoundData().call()[1] / 1e8)
        book = service.accounts_adapter.read_book([trader])
        assert float(book.price_basis[btc]["premium"]) < -0.05  # type: ignore[arg-type]
        # at the index prices the same account holds: only the mark makes it act
        at_index = {a: int(float(b["index"]) * 1e8) for a, b in book.price_basis.items()}  # type: ignore[arg-type]
        index_book = dataclasses.replace(book, prices_e8=at_index, rules=_rules_at(book, at_index))
        held, _, _ = service.decide_snapshot(index_book, {perp.ops.deployment.settlement_token: 10**12})
        assert held.decision(trader).band == "hold", held.decision(trader).reason  # type: ignore[union-attr]
        report = _run(service)
        d = report.outcome.decision(trader)
        assert d is not None and d.band == "trigger" and d.amount > 0, d.reason if d else None
        assert len(report.sent) == 1  # and confirmed (_run waits for it)
    finally:
        service.close()


def _rules_at(book, prices_e8):
    """The book's Perp rules with every mark replaced by ``prices_e8`` (e8, scaled to 18 decimals)."""
    rules = book.rules
    marks = {b: prices_e8[b] * 10**10 for b in rules.marks_x18}
    return dataclasses.replace(rules, marks_x18=marks)


def test_the_owner_with_no_settlement_token_reduces_with_allow_reduce_and_is_only_alerted_without(perp, tmp_path):
    """The keeper runs with the trader's own key and an empty USDC wallet: without allow_reduce it can only
    alert; with it, it closes part of one position (openPosition the other way, the least size given the
    pool's depth) and the -7 % crash then cannot liquidate the account."""
    trader = perp.addresses[CROSS_TRADER]
    assert perp.ops.usdc.functions.balanceOf(trader).call() == 0  # its whole balance went into the vault
    key = perp.keys[CROSS_TRADER]
    service = AccountKeeperService.from_config(
        _config(perp, tmp_path / "alert", [trader], key=key), execute=True, send_alerts=False
    )
    try:
        service.start()
        d = service.cycle(execute=True).outcome.decision(trader)
        assert d is not None and d.action == "alert" and "no settlement token" in d.reason, d
    finally:
        service.close()

    cfg = _config(perp, tmp_path / "reduce", [trader], key=key, limits="allow_reduce = true\n")
    service = AccountKeeperService.from_config(cfg, execute=True, send_alerts=False)
    try:
        service.start()
        sizes = perp.ops.account_balance.functions.getTakerPositionSize
        d0 = service.cycle(execute=False).outcome.decision(trader)
        assert d0 is not None and d0.action == "reduce_exposure", d0
        before = sizes(trader, d0.asset).call()
        report = _run(service)
        d = report.outcome.decision(trader)
        assert d is not None and d.action == "reduce_exposure" and d.asset == d0.asset, d
        assert "reduce" in d.reason and 0 < d.amount < abs(before)
        after = sizes(trader, d.asset).call()
        assert abs(after) == abs(before) - d.amount  # exactly the size decided, the rest kept
        perp.ops.set_prices(CRASH)
        for symbol in ("ETH", "BTC"):
            reason = _liquidate_reason(perp, trader, symbol)
            assert reason is not None and reason.startswith("CH_EAV"), (symbol, reason)
    finally:
        service.close()


def test_the_owner_releases_what_a_safe_account_does_not_need_with_allow_release(perp, tmp_path):
    """A 2x long ($10,000 of ETH on $5,000), the keeper holding the trader's key and allow_release: it withdraws
    the excess (Vault.withdraw to the owner) and the account still survives the move of the target; a second
    cycle does not release again (the account now sits between the release and the trigger probabilities)."""
    from keeper.dev.perp_v2 import SeedLeg, SeedTrader

    _seed_index_history(perp)
    perp.ops.open_trader(SeedTrader(6, 5_000.0, (SeedLeg("ETH", True, 10_000.0),)))
    trader, key = perp.addresses[6], perp.keys[6]
    cfg = _config(perp, tmp_path, [trader], key=key, limits="allow_release = true\n")
    service = AccountKeeperService.from_config(cfg, execute=True, send_alerts=False)
    try:
        service.start()
        wallet_before = perp.ops.usdc.functions.balanceOf(trader).call()
        vault_before = _vault_balance(perp, trader)
        report = _run(service)
        d = report.outcome.decision(trader)
        assert d is not None and d.action == "release" and d.amount > 0, d
        assert "release" in d.reason and "to the owner" in d.reason
        assert perp.ops.usdc.functions.balanceOf(trader).call() == wallet_before + d.amount  # exactly
        # withdraw first settles the owed PnL and the funding accrued since the read into the vault balance: a few
        # units of 1e-6 USD over the seconds between the read and the block
        assert abs(_vault_balance(perp, trader) - (vault_before - d.amount)) <= 1_000
        book = service.accounts_adapter.read_book([trader])
        risk = next(r for r in report.outcome.risks if r.account.lower() == trader.lower())
        assert book.rules.health_at(trader, risk.survive_prices_e8) >= 10**18  # still survives the target move
        again = service.cycle(execute=True).outcome.decision(trader)
        assert again is not None and again.band == "hold", again
    finally:
        service.close()
