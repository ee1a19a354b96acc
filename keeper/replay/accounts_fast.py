"""The fast replay of Aave v3 accounts: real price bars through the pool model, one policy at a time.

The same clock as the reference replay (:mod:`keeper.replay.fast`): every bar becomes four oracle rounds
(adverse intra-bar order), the first ``warmup_s`` only calibrate, the book opens at the first round after it.
Prices: each reserve follows a replayed symbol (``WETH`` <- ``ETH``, ``WBTC`` <- ``BTC``) or is fixed (``USDC``
at 1). At every round ``k``:

1. the supplies and repays decided at round ``k - inclusion_delay_rounds`` land (from the account's own
   wallet; a supply beyond the wallet, or a repay the pool refuses, is a sent, failed transaction);
2. the oracle pushes round ``k``'s prices;
3. every account's health factor is recorded (closest approach; ``ratio`` series = HF);
4. the liquidator calls ``liquidationCall(collateral, debt, user, max, false)`` once on every account with
   HF < 1: the collateral and the debt of largest value; the close factor of the debt is repaid and the
   collateral seized with the bonus (:mod:`keeper.replay.aave_model`); the bonus is the penalty;
5. idle collateral ``sum max(0, percentMul(collateral, avg LT) - debt)`` is accumulated, time-weighted;
6. the policy decides.

Policies: ``risk`` is the daemon's decision function :func:`keeper.decision.decide_accounts` with
:class:`keeper.accounts.aave_v3.AaveRules` over the model's state, fed what the daemon computes from its oracle
history (:meth:`keeper.runtime.accounts_service.AccountKeeperService.estimate_assets`): per asset the EWMA
sigma of the last 2,000 rounds (the policy's fallback with fewer than 30 returns, never below its floor; a
fixed-price reserve, whose feed has one round, its ``sigma_fallback_annual`` as ``[protocol.assets.X]``), the
stress gaps (down, up) of :meth:`keeper.risk.policy.RiskPolicy.estimate_stress_gap`, the pairwise correlations,
and the Monte Carlo for multi-factor accounts seeded per round; the check interval is the time to the next round.
Each account is decided alone with its own wallet (one wallet per account, as the reference book). The daemon
never withdraws from an Aave account, so ``risk`` only supplies and repays. ``risk:cost:PRESET`` is ``risk`` with
the cost-aware restore and release levels (:func:`keeper.risk.accounts.account_bands`) of the round: one action
priced at the protocol's measured gas (:data:`keeper.accounts.costs.GAS_USED_MEASURED`, the daemon's figure) x the
preset's gas price x the replayed native token's latest price (``ETH``), idle capital at the capital rate; the
same trigger. With :attr:`AccountsConfig.long_tails` (``--long-history``) the stress gap of a replayed
asset is the worse of its recent rounds and its long-history tail, read per decision for ``risk`` and at the
cost-optimal level for ``risk:cost:PRESET`` (priced at the book's liquidation penalty), as the daemon reads
``[risk.long_history]``. ``fixed:X:Y`` is the DeFi Saver
style rule on the health factor: below HF X repay (or supply, when the wallet's asset is not a debt) the least
that brings the HF to Y; ``none`` does nothing.

Gas: each landed supply and repay on behalf is charged the daemon's measured figure
(:data:`keeper.accounts.costs.AAVE_SUPPLY_GAS`, :data:`~keeper.accounts.costs.AAVE_REPAY_GAS`: receipts of the
real contracts on anvil), a refused one ``GAS_REVERT``; the approval is one-off and not counted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from keeper.accounts.aave_v3 import (
    WAD,
    AaveRules,
    AccountData,
    Market,
    MarketTerms,
    account_data_fast,
    min_repay,
    min_supply,
    percent_mul,
)
from keeper.accounts.base import AccountRules
from keeper.accounts.costs import AAVE_REPAY_GAS, AAVE_SUPPLY_GAS, GAS_USED_MEASURED
from keeper.decision import AccountBookState, decide_accounts
from keeper.domain import AccountAction, AccountActionKind
from keeper.errors import ConfigError, InputError
from keeper.planner import PlanLimits
from keeper.replay.aave_book import AaveAccountSpec, AaveBook
from keeper.replay.aave_model import AavePool, AaveRevert, LiquidationResult
from keeper.replay.cost import DEFAULT_CAPITAL_RATE_ANNUAL, DEFAULT_GAS_PRESETS_GWEI, gas_preset_gwei
from keeper.replay.fast import OracleVol
from keeper.replay.metrics import WALLET_LEFT_MIN_E6, Event, PolicyResult, plot_stride
from keeper.replay.prices import Bars, build_round_grid
from keeper.risk.accounts import AccountMonteCarlo, AccountRisk, assess_accounts, correlation_from_histories
from keeper.risk.policy import CostBands, RiskPolicy
from keeper.risk.tails import LongTail
from keeper.risk.volatility import estimate_volatility

GAS_REVERT = 60_000
DEFAULT_MIN_ACTION_E6 = 10_000_000
DEFAULT_ACCOUNT_POLICIES = (
    "risk",
    "fixed:1.1:1.25",
    "fixed:1.2:1.4",
    "fixed:1.3:1.6",
    "fixed:1.5:2",
    "none",
)


@dataclass(frozen=True, slots=True)
class AccountsConfig:
    order: str = "adverse"
    warmup_s: int = 24 * 3600
    inclusion_delay_rounds: int = 1
    record: bool = True
    trace: bool = False  # keep every round's HF per account and every action (the chain check)
    chunk_rounds: int = 4096
    # replayed symbol -> its long-history tail (``--long-history``): the stress gaps take the worse of the recent
    # rounds and the tail, read per decision for ``risk`` and at its cost-optimal level for ``risk:cost:PRESET``
    # (at the book's liquidation penalty), as the daemon does with ``[risk.long_history]``
    long_tails: Mapping[str, LongTail] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.inclusion_delay_rounds < 1:
            raise InputError("inclusion_delay_rounds must be >= 1 (a decision cannot land before it is taken)")
        if self.warmup_s < 0:
            raise InputError("warmup_s must be >= 0")


@dataclass(frozen=True, slots=True)
class AccountObservation:
    """What a policy knows after round ``round_index`` (nothing from the future). ``market`` is the Aave pool's
    (``None`` for Perp v2 accounts, whose rules hold their marks); ``prices_e8`` what the decision prices at."""

    now_s: int
    round_index: int
    market: Market | None
    rules: Mapping[str, AccountRules]  # per live account: the protocol's exact rules over the model's state
    wallets: Mapping[str, int]  # account -> units of the wallet asset
    wallet_asset: str
    sigmas_annual: Mapping[str, float]
    stress_gaps: Mapping[str, tuple[float, float]]
    correlation: Mapping[tuple[str, str], float]
    check_interval_s: float
    spent_today_e6: Mapping[str, int]
    decimals: Mapping[str, int]
    prices_e8: Mapping[str, int]
    replayed_e8: Mapping[str, int] = field(default_factory=dict)  # replayed symbol -> its latest price (gas's USD)


class AccountPolicy(Protocol):
    name: str

    def decide(self, obs: AccountObservation) -> list[AccountAction]: ...


@dataclass(slots=True)
class NoKeeperAccounts:
    name: str = "none"

    def decide(self, obs: AccountObservation) -> list[AccountAction]:
        return []


@dataclass(slots=True)
class HealthTarget:
    """``fixed:X:Y``: below HF X, the least repay (or supply) from the wallet that brings the HF to Y."""

    trigger: float
    target: float
    min_action_e6: int = DEFAULT_MIN_ACTION_E6
    name: str = ""

    def __post_init__(self) -> None:
        if not 1.0 <= self.trigger < self.target:
            raise InputError(f"fixed policy needs 1 <= X < Y (health factors), got X={self.trigger} Y={self.target}")
        if not self.name:
            self.name = f"fixed:{self.trigger:g}:{self.target:g}"

    def decide(self, obs: AccountObservation) -> list[AccountAction]:
        out = []
        asset = obs.wallet_asset
        target = round(self.target * WAD)
        assert obs.market is not None, "fixed:X:Y on health factors is the Aave accounts' rule"
        for name in sorted(obs.rules):
            rules = obs.rules[name]
            assert isinstance(rules, AaveRules)
            hf = rules.health(name)
            if hf >= round(self.trigger * WAD):
                continue
            acct = rules.accounts[name]
            held = obs.wallets.get(name, 0)
            ur = acct.reserve(asset)
            repay = ur is not None and ur.scaled_variable_debt > 0
            need = (min_repay if repay else min_supply)(acct, obs.market, asset, target)
            amount = min(held, need if need is not None else held)
            price, unit = obs.market.prices_e8[asset], 10 ** obs.decimals[asset]
            cost = amount * price // unit // 100
            if amount <= 0 or cost < self.min_action_e6:
                continue
            kind = AccountActionKind.REPAY_DEBT if repay else AccountActionKind.ADD_COLLATERAL
            out.append(
                AccountAction(
                    kind, name, asset, amount, cost, f"HF {hf / WAD:.3f} < {self.trigger:g}: to {self.target:g}"
                )
            )
        return out


@dataclass(slots=True)
class AccountsRisk:
    """The keeper: :func:`keeper.decision.decide_accounts` per account, its own wallet, the daemon's inputs.

    ``cost_preset`` (gas price in gwei, capital rate per year): the cost-aware bands of each round, one action
    priced at ``gas_per_tx`` x that gas price x the latest round of the replayed ``native_symbol``."""

    risk_policy: RiskPolicy = field(default_factory=RiskPolicy)
    limits: PlanLimits | None = None
    name: str = "risk"
    monte_carlo: bool = True
    screen: bool = True  # skip the accounts the screen holds (exact; False: decide every account, for the test)
    cost_preset: tuple[float, float] | None = None
    native_symbol: str = "ETH"
    gas_per_tx: int = GAS_USED_MEASURED["aave-v3"]

    def __post_init__(self) -> None:
        if self.limits is None:
            self.limits = PlanLimits.from_policy(self.risk_policy, max_per_tx_e6=10**15, max_per_day_e6=10**15)

    def policy_now(self, obs: AccountObservation) -> RiskPolicy:
        """The risk policy, with this round's cost bands when the policy is cost-aware (the native token's price
        moves the USD cost of a transaction)."""
        if self.cost_preset is None:
            return self.risk_policy
        gwei, rate = self.cost_preset
        native_e8 = obs.replayed_e8.get(self.native_symbol.upper())
        if native_e8 is None:
            raise InputError(f"cost-aware policy {self.name}: no replayed {self.native_symbol} prices the gas")
        bands = CostBands(gas_usd_per_tx=self.gas_per_tx * gwei * 1e-9 * native_e8 / 1e8, capital_rate_annual=rate)
        return replace(self.risk_policy, cost_bands=bands)

    def may_act(self, r: AccountRisk, policy: RiskPolicy) -> bool:
        """Whether :func:`keeper.decision.decide_accounts` could do anything but hold an account the screen
        assessed as ``r`` (under ``policy``): endangered or above ``p_release`` (the Monte Carlo refines only
        those; no source is stale in a replay), or, with releases enabled, in the release band (below
        ``p_release``; cost-aware: beyond the release level whatever ``p_release`` says). ``False`` is exact."""
        assert self.limits is not None
        if r.liquidatable or r.stress_breach or r.breach_probability > self.limits.p_release:
            return True
        if not (self.limits.allow_release and r.has_debt):
            return False
        if policy.cost_bands is not None:
            return bool(r.band_distance >= r.release_distance)
        return r.breach_probability < self.limits.p_release

    def decide(self, obs: AccountObservation) -> list[AccountAction]:
        assert self.limits is not None
        out: list[AccountAction] = []
        names = sorted(obs.rules)
        if not names:
            return out
        policy = self.policy_now(obs)
        # exact shortcut: an account the screen says decide_accounts holds whatever its wallet (may_act) is not
        # decided; the others are, each alone with its own wallet
        accounts = [obs.rules[n].margin_account(n) for n in names]
        screen = assess_accounts(
            accounts,
            obs.prices_e8,
            obs.sigmas_annual,
            policy,
            obs.check_interval_s,
            stress_gaps=obs.stress_gaps,
            correlation=obs.correlation,
            liquidatable={n: obs.rules[n].liquidatable(n) for n in names},
        )
        for name, acct, r in zip(names, accounts, screen, strict=True):
            if self.screen and not self.may_act(r, policy):
                continue
            rules = obs.rules[name]
            state = AccountBookState(
                wallet={obs.wallet_asset: obs.wallets.get(name, 0)},
                spent_today_e6=obs.spent_today_e6.get(name, 0),
                decimals=obs.decimals,
            )
            outcome = decide_accounts(
                [acct],
                rules,
                state,
                prices_e8=obs.prices_e8,
                sigmas_annual=obs.sigmas_annual,
                policy=policy,
                limits=self.limits,
                check_interval_s=obs.check_interval_s,
                stress_gaps=obs.stress_gaps,
                correlation=obs.correlation,
                monte_carlo=AccountMonteCarlo(np.random.default_rng(obs.round_index)) if self.monte_carlo else None,
            )
            out.extend(outcome.onchain_actions)
        return out


def parse_account_policy(
    spec: str,
    *,
    min_action_e6: int = DEFAULT_MIN_ACTION_E6,
    fixed: type[HealthTarget] | None = None,
    accounts: str = "Aave",
    health: str = "health factors",
    protocol: str = "aave-v3",
    gas_presets_gwei: Mapping[str, float] | None = None,
    capital_rate_annual: float = DEFAULT_CAPITAL_RATE_ANNUAL,
    native_symbol: str = "ETH",
) -> AccountPolicy:
    """``risk`` | ``risk:cost:PRESET`` | ``fixed:X:Y`` (``fixed``'s rule on ``health``; default the Aave health
    factors) | ``none``. ``risk:cost:PRESET``: ``risk`` with the cost bands at that gas preset
    (``gas_presets_gwei``, default ``l1``/``l2``), ``capital_rate_annual`` and ``protocol``'s measured gas per
    action."""
    s = spec.strip().lower()
    if s == "none":
        return NoKeeperAccounts()
    if s.startswith("risk:cost:"):
        preset = s.split(":", 2)[2]
        gwei = gas_preset_gwei(spec, preset, DEFAULT_GAS_PRESETS_GWEI if gas_presets_gwei is None else gas_presets_gwei)
        return AccountsRisk(
            name=f"risk:cost:{preset}",
            cost_preset=(gwei, capital_rate_annual),
            native_symbol=native_symbol,
            gas_per_tx=GAS_USED_MEASURED[protocol],
        )
    if s in ("risk", "risk:norelease"):
        return AccountsRisk(name=s)
    if s.startswith("fixed:"):
        parts = s.split(":")[1:]
        try:
            x, y = (float(p) for p in parts)
        except ValueError:
            raise InputError(f"bad policy {spec!r}: for {accounts} accounts fixed:X:Y takes two {health}") from None
        return (fixed or HealthTarget)(x, y, min_action_e6=min_action_e6)
    raise InputError(
        f"unknown policy {spec!r} for {accounts} accounts; allowed: risk, risk:cost:PRESET, fixed:X:Y ({health}), none"
    )


class _History(OracleVol):
    """The last ``window`` oracle rounds of one asset, as the daemon's VolatilityCache keeps: the positions'
    replay's window, ignoring a round that does not advance the clock (every sub-round is pushed here)."""

    __slots__ = ()

    def add(self, t_s: int, price_e8: int) -> None:
        if self._n and t_s <= self._t[self._n - 1]:
            return
        super().add(t_s, price_e8)


@dataclass(slots=True)
class AccountReplayResult:
    """The account replay's outcome, shaped like :class:`keeper.replay.fast.ReplayResult` for the report."""

    book: Any  # AaveBook | keeper.replay.perp_book.PerpBook (protocol, accounts, wallet_asset, source)
    config: AccountsConfig
    start_s: int
    end_s: int
    t_s: np.ndarray
    prices: dict[str, np.ndarray]  # replayed symbol -> USD per round
    labels: list[str]
    results: dict[str, PolicyResult]
    sources: dict[str, str]
    extra: dict[str, dict] = field(default_factory=dict)  # per policy: supplies, repays, min HF ...
    trace: dict[str, list[dict]] = field(default_factory=dict)  # per policy, per round (config.trace)


class _AccountRun:
    def __init__(self, book: AaveBook, policy: AccountPolicy, config: AccountsConfig, n_rounds: int) -> None:
        self.book, self.policy, self.config = book, policy, config
        self.pool: AavePool | None = None
        self.names = [a.name for a in book.accounts]
        self.res = PolicyResult(name=policy.name)
        self.wallet: dict[str, int] = {}
        self.pending: dict[int, list[AccountAction]] = {}
        self.spent: dict[str, tuple[int, int]] = {}
        self.supplies = self.repays = 0
        self.min_hf = math.inf
        self.trace: list[dict] = []
        self.opened: dict[str, dict] = {}
        if config.record:
            self.res.start_recording(n_rounds, len(self.names), plot_stride(n_rounds))

    # ---- opening ------------------------------------------------------------------------------
    def open(self, prices_e8: Mapping[str, int], now_s: int) -> None:
        book = self.book
        pool = AavePool.with_reserves([r.params for r in book.reserves.values()], now_s)
        for a, p in prices_e8.items():
            pool.set_price(a, p)
        wa = book.wallet_asset
        w_unit = 10 ** book.reserves[wa].params.decimals
        for spec in book.accounts:
            self.opened[spec.name] = open_account(pool, book, spec, now_s)
            self.wallet[spec.name] = round(spec.wallet_usd * 1e8) * w_unit // pool.prices_e8[wa]
        self.pool = pool
        self.res.wallet_start_e6 = self.wallet_usd_e6()
        self.res.wallet_min_e6 = self.res.wallet_start_e6

    def wallet_usd_e6(self, name: str | None = None) -> int:
        """The wallets' value in USD e6 at the oracle's prices: every account's, or ``name``'s."""
        assert self.pool is not None
        wa = self.book.wallet_asset
        unit = 10 ** self.book.reserves[wa].params.decimals
        held = self.wallet.values() if name is None else [self.wallet.get(name, 0)]
        return sum(v * self.pool.prices_e8[wa] // unit // 100 for v in held)

    # ---- actions --------------------------------------------------------------------------------
    def apply(self, a: AccountAction, k: int, now_s: int) -> None:
        pool, res = self.pool, self.res
        assert pool is not None
        name = a.account
        supply = a.kind is AccountActionKind.ADD_COLLATERAL
        if a.kind not in (AccountActionKind.ADD_COLLATERAL, AccountActionKind.REPAY_DEBT):
            return
        gas = AAVE_SUPPLY_GAS if supply else AAVE_REPAY_GAS
        unit = 10 ** self.book.reserves[a.asset].params.decimals
        try:
            if a.asset != self.book.wallet_asset or a.amount > self.wallet.get(name, 0):
                raise AaveRevert("the wallet cannot pay (transfer amount exceeds balance)")
            if supply:
                pool.supply(name, a.asset, a.amount, now_s)
                paid = a.amount
                self.supplies += 1
            else:
                paid = pool.repay(name, a.asset, a.amount, now_s)
                self.repays += 1
            self.wallet[name] -= paid
            usd_e6 = paid * pool.prices_e8[a.asset] // unit // 100
            res.top_ups += 1
            res.collateral_added_e6 += usd_e6
            day = now_s // 86_400
            d, s = self.spent.get(name, (-1, 0))
            self.spent[name] = (day, (s if d == day else 0) + usd_e6)
            res.record_gas(now_s, gas)
            res.events.append(Event(now_s, k, "supply" if supply else "repay", name, 0, usd_e6, 0, a.reason))
            if self.config.trace:
                self.trace_actions.append((k, name, "supply" if supply else "repay", a.asset, paid))
        except AaveRevert as exc:
            res.reverted += 1
            res.record_gas(now_s, GAS_REVERT)
            res.events.append(Event(now_s, k, "revert", name, 0, 0, 0, f"{a.kind.value}: {exc}"))

    @property
    def trace_actions(self) -> list:
        if not self.trace or "actions" not in self.trace[-1]:
            raise RuntimeError("trace row missing")
        return self.trace[-1]["actions"]

    # ---- one round --------------------------------------------------------------------------------
    def step(
        self, k: int, now_s: int, prices_e8: Mapping[str, int], dt_next: float, inputs: _Inputs, opening: bool
    ) -> None:
        res = self.res
        if self.config.trace:
            self.trace.append({"k": k, "t_s": now_s, "actions": [], "liquidations": []})
        if opening:
            self.open(prices_e8, now_s)
        pool = self.pool
        assert pool is not None
        for a in self.pending.pop(k, ()):  # 1. land
            self.apply(a, k, now_s)
        for asset, p in prices_e8.items():  # 2. oracle
            pool.set_price(asset, p)
        market = pool.market(now_s)
        terms = MarketTerms(market, 0)
        datas: dict[str, AccountData] = {}
        hf_before: dict[str, int] = {}
        for j, name in enumerate(self.names):  # 3. closest approach, 4. liquidator
            d = datas[name] = account_data_fast(pool.account(name), terms)
            if d.total_debt_base == 0:
                continue
            hf_before[name] = d.health_factor_wad
            weighted = percent_mul(d.total_collateral_base, d.current_liquidation_threshold_bps)
            res.record_position(k, j, name, now_s, weighted, d.total_debt_base, 0)
            self.min_hf = min(self.min_hf, d.health_factor_wad / WAD)
            if d.health_factor_wad >= WAD:
                continue
            pair = pool.liquidation_pair(name, now_s)
            if pair is None:
                continue
            try:
                liq = pool.liquidate(name, pair[0], pair[1], now_s)
            except AaveRevert:
                continue
            self._liquidated(k, now_s, name, liq)
            market = pool.market(now_s)  # the indices may have moved
            terms = MarketTerms(market, 0)
            datas = {n: account_data_fast(pool.account(n), terms) for n in datas}
            datas[name] = account_data_fast(pool.account(name), terms)
        idle = idle_equity = 0
        hf_after: dict[str, int] = {}
        for name in self.names:  # 5. idle
            d = datas[name]
            if d.total_debt_base == 0 and d.total_collateral_base == 0:
                continue
            hf_after[name] = d.health_factor_wad
            weighted = percent_mul(d.total_collateral_base, d.current_liquidation_threshold_bps)
            idle += max(0, weighted - d.total_debt_base) // 100
            idle_equity += max(0, d.total_collateral_base - d.total_debt_base) // 100
        res.record_idle(k, idle, idle_equity, dt_next)
        res.wallet_min_e6 = min(res.wallet_min_e6, self.wallet_usd_e6())
        if self.config.trace:
            self.trace[-1].update(hf_before=hf_before, hf_after=hf_after)
        shared: dict[int, MarketTerms] = {0: terms}  # 6. decide: every account's rules over this read
        rules = {
            name: AaveRules({name: pool.account(name)}, market, _terms=shared)
            for name in self.names
            if datas[name].total_debt_base > 0
        }
        decimals = {a: r.params.decimals for a, r in self.book.reserves.items()}
        decide_round(self, k, now_s, dt_next, inputs, market, rules, decimals, market.prices_e8)

    def _liquidated(self, k: int, now_s: int, name: str, liq: LiquidationResult) -> None:
        res = self.res
        res.liquidations += 1
        res.liquidations_wallet_left += self.wallet_usd_e6(name) >= WALLET_LEFT_MIN_E6
        res.liquidation_penalty_e6 += liq.penalty_base // 100
        res.liquidated.append(name)
        res.events.append(
            Event(
                now_s, k, "liquidation", name, 0, liq.penalty_base // 100, 0, f"{liq.collateral_asset}/{liq.debt_asset}"
            )
        )
        if self.config.trace:
            self.trace[-1]["liquidations"].append(
                (
                    name,
                    liq.collateral_asset,
                    liq.debt_asset,
                    liq.outcome.debt_covered,
                    liq.outcome.collateral_to_liquidator,
                )
            )

    def finish(self, now_s: int) -> PolicyResult:
        res = self.res
        pool = self.pool
        assert pool is not None
        res.wallet_end_e6 = self.wallet_usd_e6()
        equity = bad = 0
        for name in self.names:
            d = pool.account_data(name, now_s)
            equity += max(0, d.total_collateral_base - d.total_debt_base) // 100
            if d.total_collateral_base == 0 and d.total_debt_base > 0:
                bad += d.total_debt_base // 100
        res.final_equity_e6 = equity
        res.bad_debt_e6 = bad
        res.min_margin_ratio = self.min_hf
        return res

    def extra(self) -> dict:
        return {
            "supplies": self.supplies,
            "repays": self.repays,
            "min_health_factor": None if math.isinf(self.min_hf) else self.min_hf,
        }


def decide_round(
    run: Any,
    k: int,
    now_s: int,
    dt_next: float,
    inputs: _Inputs,
    market: Market | None,
    rules: Mapping[str, AccountRules],
    decimals: Mapping[str, int],
    prices_e8: Mapping[str, int],
    gaps: Mapping[str, tuple[float, float]] | None = None,
) -> None:
    """Step 6 of a round (Aave and Perp v2 runs alike): the observation from ``run``'s wallets, spending today
    and the daemon's inputs, the policy's decision, its actions pending ``inclusion_delay_rounds``."""
    day = now_s // 86_400
    obs = AccountObservation(
        now_s=now_s,
        round_index=k,
        market=market,
        rules=rules,
        wallets=dict(run.wallet),
        wallet_asset=run.book.wallet_asset,
        sigmas_annual=inputs.sigmas,
        stress_gaps=inputs.gaps if gaps is None else gaps,
        correlation=inputs.correlation,
        check_interval_s=max(1.0, dt_next),
        spent_today_e6={n: s for n, (d, s) in run.spent.items() if d == day},
        decimals=decimals,
        prices_e8=prices_e8,
        replayed_e8=inputs.replayed_e8,
    )
    actions = run.policy.decide(obs)
    if actions:
        run.pending.setdefault(k + run.config.inclusion_delay_rounds, []).extend(actions)


def open_account(pool: AavePool, book: AaveBook, spec: AaveAccountSpec, now_s: int) -> dict:
    """Supply an account's collateral and borrow its debt at the pool's prices; returns the units used
    (``{"supply": {asset: units}, "borrow": (asset, units)}``, what the chain check opens too)."""
    supplies: dict[str, int] = {}
    for asset, usd in spec.collateral_usd:
        unit = 10 ** book.reserves[asset].params.decimals
        supplies[asset] = supplies.get(asset, 0) + round(usd * 1e8) * unit // pool.prices_e8[asset]
    for asset, units in spec.collateral_units:
        unit = 10 ** book.reserves[asset].params.decimals
        supplies[asset] = supplies.get(asset, 0) + round(units * unit)
    for asset, units in supplies.items():
        pool.supply(spec.name, asset, units, now_s)
    d_asset = spec.debt_asset
    d_unit = 10 ** book.reserves[d_asset].params.decimals
    d_price = pool.prices_e8[d_asset]
    if spec.debt_usd is not None:
        debt = round(spec.debt_usd * 1e8) * d_unit // d_price
    else:
        data = pool.account_data(spec.name, now_s)
        weighted = percent_mul(data.total_collateral_base, data.current_liquidation_threshold_bps)
        debt = int(weighted / (spec.health_factor or 1.0)) * d_unit // d_price
    try:
        pool.borrow(spec.name, d_asset, debt, now_s)
    except AaveRevert as exc:
        raise ConfigError(
            f"aave account {spec.name}: cannot open its debt ({exc}); the debt must stay within the LTV "
            "(a health factor of at least LT / LTV)",
            field="aave_accounts",
        ) from None
    return {"supply": supplies, "borrow": (d_asset, debt)}


@dataclass(slots=True)
class _Inputs:
    sigmas: dict[str, float]
    gaps: dict[str, tuple[float, float]]
    correlation: dict[tuple[str, str], float]
    replayed_e8: dict[str, int] = field(default_factory=dict)  # replayed symbol -> its latest price


class AccountRun(Protocol):
    """One policy's replay of a book of accounts (:class:`_AccountRun` for Aave, the Perp v2 one in
    :mod:`keeper.replay.perp_accounts`): the loop of :func:`run_accounts_fast` drives it round by round."""

    policy: AccountPolicy
    trace: list[dict]
    opened: dict[str, dict]

    def step(
        self, k: int, now_s: int, prices_e8: Mapping[str, int], dt_next: float, inputs: _Inputs, opening: bool
    ) -> None: ...

    def finish(self, now_s: int) -> PolicyResult: ...

    def extra(self) -> dict: ...


def run_accounts_fast(
    book: Any,
    series: Sequence[Bars],
    policies: Sequence[AccountPolicy],
    config: AccountsConfig = AccountsConfig(),
    progress: Callable[[int, int], None] | None = None,
    risk_policy: RiskPolicy | None = None,
    new_run: Callable[[Any, AccountPolicy, AccountsConfig, int], AccountRun] | None = None,
) -> AccountReplayResult:
    """Replay ``series`` (one :class:`Bars` per symbol the book's reserves follow) for each policy.

    ``book`` is an :class:`AaveBook` (default ``new_run``: the Aave pool model) or another protocol's book with
    the same ``symbols``, ``asset_of_symbol()``, ``fixed_prices_e8()`` and ``accounts``, replayed by
    ``new_run(book, policy, config, n_rounds)``."""
    if len({id(p) for p in policies}) != len(policies):
        raise InputError("the same policy object is given twice")
    by_sym = {b.symbol: b for b in series}
    missing = [s for s in book.symbols if s not in by_sym]
    if missing:
        raise InputError(f"no price series for {', '.join(missing)} (the book's assets follow them)")
    used = [by_sym[s] for s in book.symbols]
    grid = build_round_grid(used, config.order)
    n_all = len(grid)
    t0 = int(grid.t_s[0])
    open_k = int(np.searchsorted(grid.t_s, t0 + config.warmup_s, side="left"))
    full = np.flatnonzero(grid.has[open_k:].all(axis=1)) if open_k < n_all else np.zeros(0, np.int64)
    if not full.size or open_k + int(full[0]) >= n_all - 1:
        raise InputError("the price window is not longer than the warm-up (no round after it prices every asset)")
    open_k += int(full[0])
    n = n_all - open_k
    rp = risk_policy or next((p.risk_policy for p in policies if isinstance(p, AccountsRisk)), RiskPolicy())
    by_symbol = book.asset_of_symbol()
    fixed = book.fixed_prices_e8()
    hist = {s: _History() for s in by_symbol}
    t_arr = grid.t_s[open_k:]
    dts = np.diff(t_arr, append=t_arr[-1])
    runs = [(new_run or _AccountRun)(book, p, config, n) for p in policies]
    # fixed-price reserves: a feed with one round (the daemon's per-asset fallback sigma, the fallback gap)
    fixed_inputs = {}
    for a, px in fixed.items():
        g = rp.estimate_stress_gap([t0], [px], 60.0, now_s=t0).side_gaps
        sigma = max(book.reserves[a].sigma_fallback_annual, rp.sigma_floor_annual)
        fixed_inputs[a] = (sigma, (float(g[0]), float(g[1])))
    needs_inputs = any(isinstance(p, AccountsRisk) for p in policies)
    # the stress gaps differ between policies only through a long-history tail: read per decision (``risk``), or
    # priced at a capital rate (``risk:cost:PRESET``); one set of inputs per distinct reading, shared by the runs
    readings = {key: _reading_policy(rp, key) for key in {_gap_reading(p, config) for p in policies}}
    reading_of = [_gap_reading(p, config) for p in policies]  # per run, in the order of ``runs``
    penalties = {a: book.liquidation_penalty(a) for v in by_symbol.values() for a in v} if config.long_tails else {}
    total = n * len(policies)
    if progress is not None:
        progress(0, total)
    prices_usd = {s: grid.latest_price_usd(s, open_k, None) for s in by_symbol}
    latest_e8: dict[str, int] = {}
    for k_all, rnd in enumerate(grid.iter_rounds(0, None, config.chunk_rounds)):
        for sym, px in rnd.prices_e8.items():
            hist[sym].add(rnd.t_s, px)
        latest_e8.update(rnd.prices_e8)
        if k_all < open_k:
            continue
        k = k_all - open_k
        dt = float(dts[k])
        prices = {a: px for sym, px in rnd.prices_e8.items() for a in by_symbol[sym]}
        if k == 0:
            prices |= fixed
        by_reading = {key: _Inputs({}, {}, {}) for key in readings}
        if needs_inputs:
            by_reading = _inputs(hist, by_symbol, fixed_inputs, rp, readings, max(1.0, dt), rnd.t_s, config, penalties)
        for inputs in by_reading.values():
            inputs.replayed_e8 = dict(latest_e8)
        for run, key in zip(runs, reading_of, strict=True):
            run.step(k, rnd.t_s, prices, dt, by_reading[key], opening=k == 0)
        if progress is not None and ((k + 1) % 64 == 0 or k == n - 1):
            progress((k + 1) * len(runs), total)
    end_s = int(t_arr[-1])
    results: dict[str, PolicyResult] = {}
    extra: dict[str, dict] = {}
    trace: dict[str, list[dict]] = {}
    for run in runs:
        r = run.finish(end_s)
        r.t_s = t_arr
        results[run.policy.name] = r
        extra[run.policy.name] = run.extra()
        if config.trace:
            trace[run.policy.name] = run.trace
    first = runs[0] if runs else None
    if first is not None and config.trace:
        extra["_opening"] = first.opened
    return AccountReplayResult(
        book=book,
        config=config,
        start_s=int(t_arr[0]),
        end_s=end_s,
        t_s=t_arr,
        prices=prices_usd,
        labels=[a.name for a in book.accounts],
        results=results,
        sources={b.symbol: b.source for b in used},
        extra=extra,
        trace=trace,
    )


_Reading = tuple[str, float] | None
"""How a policy reads the long-history tails (:func:`_gap_reading`)."""


def _gap_reading(policy: AccountPolicy, config: AccountsConfig) -> _Reading:
    """How ``policy`` reads the long-history tails: ``None`` (no tail given, or a policy without the daemon's
    estimates), ``("decision", 0)`` per decision, ``("cost", capital rate)`` at the cost-optimal level."""
    if not config.long_tails or not isinstance(policy, AccountsRisk):
        return None
    if policy.cost_preset is None:
        return ("decision", 0.0)
    return ("cost", policy.cost_preset[1])


def _reading_policy(rp: RiskPolicy, key: _Reading) -> RiskPolicy:
    """``rp`` as :meth:`RiskPolicy.estimate_stress_gap` must see it for reading ``key`` (a cost-aware reading
    prices the tail at its capital rate; the gas price does not enter the gap)."""
    if key is None or key[0] != "cost":
        return rp
    return replace(rp, cost_bands=CostBands(gas_usd_per_tx=0.0, capital_rate_annual=key[1]))


def _inputs(
    hist: Mapping[str, _History],
    by_symbol: Mapping[str, list[str]],
    fixed_inputs: Mapping[str, tuple[float, tuple[float, float]]],
    rp: RiskPolicy,
    readings: Mapping[_Reading, RiskPolicy],
    check_interval_s: float,
    now_s: int,
    config: AccountsConfig,
    penalties: Mapping[str, float],
) -> dict[_Reading, _Inputs]:
    """The daemon's estimates per asset from the oracle rounds so far (see the module docstring), one set per
    reading of the long-history tails (:func:`_gap_reading`): the volatilities and correlations are the same for
    every reading, only the stress gaps differ (a tail from ``config.long_tails``, at the asset's liquidation
    penalty from ``penalties``, as :meth:`keeper.runtime.accounts_service.AccountKeeperService.estimate_assets`
    passes them)."""
    sigmas: dict[str, float] = {}
    gaps: dict[_Reading, dict[str, tuple[float, float]]] = {key: {} for key in readings}
    histories: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for sym, h in hist.items():
        times, prices = h.arrays()
        est = estimate_volatility(
            times,
            prices / 1e8,
            model="ewma",
            floor_annual=rp.sigma_floor_annual,
            fallback_annual=rp.sigma_fallback_annual,
        )
        tail = config.long_tails.get(sym)
        for key, policy in readings.items():
            if key is None or tail is None:  # the recent rounds alone: one gap for every asset of the symbol
                g = policy.estimate_stress_gap(times, prices, check_interval_s, now_s=now_s).side_gaps
                gaps[key].update((a, (float(g[0]), float(g[1]))) for a in by_symbol[sym])
                continue
            for a in by_symbol[sym]:
                side = policy.estimate_stress_gap(times, prices, check_interval_s, now_s, tail, penalties.get(a, 0.0))
                gaps[key][a] = (float(side.side_gaps[0]), float(side.side_gaps[1]))
        for a in by_symbol[sym]:
            sigmas[a] = est.sigma_annual
            histories[a] = (times, prices)
    for a, (sigma, fixed_gap) in fixed_inputs.items():
        sigmas[a] = sigma
        for by_asset in gaps.values():
            by_asset[a] = fixed_gap
    correlation = correlation_from_histories(histories)  # type: ignore[arg-type]
    return {key: _Inputs(dict(sigmas), gaps[key], correlation) for key in readings}
