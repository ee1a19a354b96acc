"""The fast replay of Perp v2 accounts: real price bars through the Curie model, one policy at a time.

The clock, the warm-up, the inclusion delay and the daemon's inputs are :func:`keeper.replay.accounts_fast.
run_accounts_fast`'s (the Aave accounts' loop); each market's mark follows a replayed symbol (``vETH`` <- ``ETH``;
mark = index, :mod:`keeper.replay.perp_model`). At every round ``k``:

1. the ``Vault.depositFor`` decided at round ``k - inclusion_delay_rounds`` land, paid from the account's own
   wallet of USDC (a deposit beyond the wallet is a sent, failed transaction);
2. the marks move to round ``k``'s prices;
3. every account's health (account value / maintenance requirement) is recorded (closest approach);
4. the liquidator calls ``ClearingHouse.liquidate(trader, base)`` once on every liquidatable account, on its
   largest position (the size Curie allows: all of it below half the requirement, else half the account's
   position value); the penalty (2.5 % of the notional closed) is the account's loss;
5. idle collateral ``sum max(0, account value - requirement)`` is accumulated, time-weighted;
6. the policy decides.

Policies: ``risk`` is :class:`keeper.replay.accounts_fast.AccountsRisk` (the daemon's
:func:`keeper.decision.decide_accounts`) over :class:`keeper.accounts.perp_v2.PerpRules` of the model's state;
its stress gaps are the oracle history's plus the market's ``premium_gap`` (the daemon adds the pool's; a replay
has no pool). ``risk:cost:PRESET``: the same with the round's cost-aware bands, one ``depositFor`` priced at
Curie's measured gas (:data:`keeper.accounts.costs.GAS_USED_MEASURED`). The keeper holds no trader's key, so
it only deposits (no reduction, no release).
``fixed:X:Y``: below health X the least deposit that brings it to Y (:func:`keeper.accounts.perp_v2.
min_deposit_e6`); ``none`` does nothing.

Gas: ``Vault.depositFor`` at the daemon's measured :data:`keeper.accounts.costs.PERP_DEPOSIT_FOR_GAS` (the
on-chain check, tests/perp/test_perp_replay_chain.py, compares the chain's receipts with it), a refused one
``GAS_REVERT``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from keeper.accounts.costs import PERP_DEPOSIT_FOR_GAS
from keeper.accounts.perp_v2 import SETTLEMENT_SCALE, WAD, PerpRules, leg_size_e18, margin_at, min_deposit_e6
from keeper.domain import AccountAction, AccountActionKind
from keeper.errors import ConfigError
from keeper.replay.accounts_fast import (
    DEFAULT_MIN_ACTION_E6,
    GAS_REVERT,
    AccountObservation,
    AccountPolicy,
    AccountReplayResult,
    AccountsConfig,
    HealthTarget,
    _Inputs,
    decide_round,
    parse_account_policy,
    run_accounts_fast,
)
from keeper.replay.metrics import WALLET_LEFT_MIN_E6, Event, PolicyResult, plot_stride
from keeper.replay.perp_book import PerpAccountSpec, PerpBook
from keeper.replay.perp_model import PerpExchange, PerpLiquidation, PerpRevert, usd_x18
from keeper.replay.prices import Bars
from keeper.risk.policy import RiskPolicy

DEFAULT_PERP_POLICIES = ("risk", "fixed:1.3:1.6", "fixed:1.5:2", "fixed:2:3", "none")


@dataclass(slots=True)
class MarginTarget(HealthTarget):
    """``fixed:X:Y`` on Perp health (account value / maintenance requirement, 1 = liquidation; the fields and
    checks of the Aave rule): below X, the least ``Vault.depositFor`` from the wallet that brings it to Y."""

    def decide(self, obs: AccountObservation) -> list[AccountAction]:
        out = []
        for name in sorted(obs.rules):
            rules = obs.rules[name]
            assert isinstance(rules, PerpRules)
            health = rules.health(name)
            if health >= round(self.trigger * WAD):
                continue
            acct = rules.accounts[name]
            req = margin_at(acct, rules.marks_x18, rules.params).requirement_x18
            need = min_deposit_e6(acct, rules.marks_x18, rules.params, req * round((self.target - 1) * 1e6) // 10**6)
            amount = min(obs.wallets.get(name, 0), need)
            if amount <= 0 or amount < self.min_action_e6:
                continue
            out.append(
                AccountAction(
                    AccountActionKind.ADD_COLLATERAL,
                    name,
                    obs.wallet_asset,
                    amount,
                    amount,
                    f"health {health / WAD:.3f} < {self.trigger:g}: to {self.target:g}",
                )
            )
        return out


def parse_perp_policy(spec: str, *, min_action_e6: int = DEFAULT_MIN_ACTION_E6, **cost: Any) -> AccountPolicy:
    """``risk`` | ``risk:cost:PRESET`` (Curie's measured ``depositFor`` gas; ``cost``: the presets, capital rate
    and native symbol of :func:`keeper.replay.accounts_fast.parse_account_policy`) | ``fixed:X:Y`` (health =
    account value / maintenance requirement) | ``none``."""
    return parse_account_policy(
        spec,
        min_action_e6=min_action_e6,
        fixed=MarginTarget,
        accounts="Perp v2",
        health="health ratios",
        protocol="perp-v2",
        **cost,
    )


def open_perp_account(ex: PerpExchange, spec: PerpAccountSpec) -> dict:
    """Deposit the trader's collateral and open its positions at the marks; returns what was opened
    (``{"deposit": e6, "positions": [(base, is_long, notional_x18, size_e18)]}``, what the chain check opens)."""
    deposit = round(spec.collateral_usd * 10**6)
    ex.deposit(spec.name, deposit)
    opened = []
    for base, usd in spec.positions_usd:
        notional = usd_x18(abs(usd))
        leg = ex.open_position(spec.name, base, usd > 0, notional)
        opened.append((base, usd > 0, notional, leg.size_e18))
    if ex.free_collateral_by_im_x18(spec.name) < 0:
        raise ConfigError(
            f"perp account {spec.name}: its positions exceed the initial margin (Curie's CH_NEFCI: free "
            "collateral at imRatio < 0); lower the leverage",
            field="perp_accounts",
        )
    return {"deposit": deposit, "positions": opened}


class _PerpRun:
    def __init__(self, book: PerpBook, policy: AccountPolicy, config: AccountsConfig, n_rounds: int) -> None:
        self.book, self.policy, self.config = book, policy, config
        self.ex = PerpExchange(book.params, {b: m.fee_ratio_e6 for b, m in book.markets.items()})
        self.names = [a.name for a in book.accounts]
        self.res = PolicyResult(name=policy.name)
        self.wallet: dict[str, int] = {}
        self.pending: dict[int, list[AccountAction]] = {}
        self.spent: dict[str, tuple[int, int]] = {}
        self.deposits = 0
        self.bad_debt_e6 = 0
        self.min_health = math.inf
        self.trace: list[dict] = []
        self.opened: dict[str, dict] = {}
        if config.record:
            self.res.start_recording(n_rounds, len(self.names), plot_stride(n_rounds))

    def open(self, prices_e8: Mapping[str, int]) -> None:
        for b, p in prices_e8.items():
            self.ex.set_price(b, p)
        for spec in self.book.accounts:
            self.opened[spec.name] = open_perp_account(self.ex, spec)
            self.wallet[spec.name] = round(spec.wallet_usd * 10**6)
        self.res.wallet_start_e6 = self.res.wallet_min_e6 = sum(self.wallet.values())

    def apply(self, a: AccountAction, k: int, now_s: int) -> None:
        res, name = self.res, a.account
        if a.kind is not AccountActionKind.ADD_COLLATERAL:
            return  # the keeper holds no trader's key: no reduction, no release
        try:
            if a.asset != self.book.wallet_asset or a.amount > self.wallet.get(name, 0):
                raise PerpRevert("the wallet cannot pay (transfer amount exceeds balance)")
            self.ex.deposit(name, a.amount)
        except PerpRevert as exc:
            res.reverted += 1
            res.record_gas(now_s, GAS_REVERT)
            res.events.append(Event(now_s, k, "revert", name, 0, 0, 0, f"{a.kind.value}: {exc}"))
            return
        self.wallet[name] -= a.amount
        self.deposits += 1
        res.top_ups += 1
        res.collateral_added_e6 += a.amount
        day = now_s // 86_400
        d, s = self.spent.get(name, (-1, 0))
        self.spent[name] = (day, (s if d == day else 0) + a.amount)
        res.record_gas(now_s, PERP_DEPOSIT_FOR_GAS)
        res.events.append(Event(now_s, k, "deposit", name, 0, a.amount, 0, a.reason))
        if self.config.trace:
            self.trace[-1]["actions"].append((k, name, "deposit", a.asset, a.amount))

    def step(
        self, k: int, now_s: int, prices_e8: Mapping[str, int], dt_next: float, inputs: _Inputs, opening: bool
    ) -> None:
        res, ex = self.res, self.ex
        if self.config.trace:
            self.trace.append({"k": k, "t_s": now_s, "actions": [], "liquidations": []})
        if opening:
            self.open(prices_e8)
        for a in self.pending.pop(k, ()):  # 1. land
            self.apply(a, k, now_s)
        for b, p in prices_e8.items():  # 2. marks
            ex.set_price(b, p)
        before: dict[str, tuple[int, int]] = {}
        for j, name in enumerate(self.names):  # 3. closest approach, 4. liquidator
            m = ex.margin(name)
            if m.requirement_x18 == 0:
                continue
            before[name] = (m.account_value_x18, m.requirement_x18)
            res.record_position(k, j, name, now_s, m.account_value_x18, m.requirement_x18, 0)
            self.min_health = min(self.min_health, m.account_value_x18 / m.requirement_x18)
            if m.liquidatable:
                self._liquidated(k, now_s, name, ex.liquidate(name, ex.liquidation_order(name)[0]))
        idle = idle_equity = 0
        after: dict[str, tuple[int, int]] = {}
        for name in self.names:  # 5. idle
            m = ex.margin(name)
            after[name] = (m.account_value_x18, m.requirement_x18)
            idle += max(0, m.excess_x18) // SETTLEMENT_SCALE
            idle_equity += max(0, m.account_value_x18) // SETTLEMENT_SCALE
        res.record_idle(k, idle, idle_equity, dt_next)
        res.wallet_min_e6 = min(res.wallet_min_e6, sum(self.wallet.values()))
        if self.config.trace:
            self.trace[-1].update(before=before, after=after)
        rules = {  # 6. decide
            name: PerpRules({name: ex.account(name)}, dict(ex.marks_x18), ex.params, self.book.wallet_asset)
            for name in self.names
            if any(leg_size_e18(lg) for lg in ex.account(name).legs)
        }
        gaps = dict(inputs.gaps)
        for b, mkt in self.book.markets.items():  # the premium gap the daemon adds to the oracle's (log moves)
            if b in gaps and mkt.premium_gap:
                gaps[b] = (gaps[b][0] + mkt.premium_gap, gaps[b][1] + mkt.premium_gap)
        decimals = dict.fromkeys(self.book.markets, 18) | {self.book.wallet_asset: 6}
        prices_e8 = {b: m // 10**10 for b, m in ex.marks_x18.items()}
        decide_round(self, k, now_s, dt_next, inputs, None, rules, decimals, prices_e8, gaps)

    def _liquidated(self, k: int, now_s: int, name: str, liq: PerpLiquidation) -> None:
        res = self.res
        penalty_e6 = liq.penalty_x18 // SETTLEMENT_SCALE
        res.liquidations += 1
        res.liquidations_wallet_left += self.wallet.get(name, 0) >= WALLET_LEFT_MIN_E6  # USDC e6
        res.liquidation_penalty_e6 += penalty_e6
        res.liquidated.append(name)
        self.bad_debt_e6 += liq.bad_debt_e6
        res.events.append(Event(now_s, k, "liquidation", name, 0, penalty_e6, 0, liq.base_token))
        if self.config.trace:
            self.trace[-1]["liquidations"].append((name, liq.base_token, liq.size_e18, liq.penalty_x18))

    def finish(self, now_s: int) -> PolicyResult:
        res = self.res
        res.wallet_end_e6 = sum(self.wallet.values())
        values = [self.ex.equity_e6(n) for n in self.names]
        res.final_equity_e6 = sum(max(0, v) for v in values)
        res.bad_debt_e6 = self.bad_debt_e6 + sum(max(0, -v) for v in values)
        res.min_margin_ratio = self.min_health
        return res

    def extra(self) -> dict:
        return {"deposits": self.deposits, "min_health": None if math.isinf(self.min_health) else self.min_health}


def _new_run(book: PerpBook, policy: AccountPolicy, config: AccountsConfig, n_rounds: int) -> _PerpRun:
    return _PerpRun(book, policy, config, n_rounds)


def run_perp_fast(
    book: PerpBook,
    series: Sequence[Bars],
    policies: Sequence[AccountPolicy],
    config: AccountsConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    risk_policy: RiskPolicy | None = None,
) -> AccountReplayResult:
    """Replay ``series`` (one :class:`Bars` per symbol the book's markets follow) for each policy."""
    cfg = config or AccountsConfig()
    return run_accounts_fast(book, series, policies, cfg, progress, risk_policy, new_run=_new_run)
