"""Aave v3 pool state for the fast account replay: reserves, users, oracle prices, and the state changes of
``supply``, ``borrow``, ``repay`` and ``liquidationCall`` to the wei (pure core: ints in, ints out).

The arithmetic is :mod:`keeper.accounts.aave_v3` (health factor, close factor and bonus); this module keeps
the state those functions read and applies what the contracts write (``@aave/core-v3`` 1.19.3):

* ``ReserveLogic.updateState`` before every action on a reserve: at a new timestamp the liquidity index grows
  by the linear interest when the supply rate is not 0 and the variable borrow index by the compounded
  interest when the reserve has variable debt, then ``lastUpdateTimestamp`` is the block's.
* ``supply``: the aToken mints ``amount.rayDiv(liquidityIndex)`` scaled; a first supply becomes collateral
  when the reserve's LTV is not 0 (``validateAutomaticUseAsCollateral``; no isolated assets here).
* ``borrow`` (variable): ``amount.rayDiv(variableBorrowIndex)`` scaled debt.
* ``repay`` (variable, on behalf): ``min(amount, debt)`` paid, ``paid.rayDiv(index)`` scaled burnt; the
  borrowing flag clears when the debt is paid off.
* ``liquidationCall(collateral, debt, user, MAX, false)``: the debt reserve updated, HF < 1 checked,
  :func:`keeper.accounts.aave_v3.liquidation_outcome` (close factor 50 % above HF 0.95, else 100 %; the
  bonus; the protocol's fee on the bonus), the flags cleared when the debt or the collateral is all taken,
  the debt burnt, the collateral reserve updated and the seized aTokens burnt, the fee moved to the treasury
  (capped at the user's scaled balance, as the contract does).

Rates are constants per reserve (the book's), not the utilisation curve of ``DefaultReserveInterestRateStrategy``:
a replay does not know the rest of the pool. Prices are the oracle's (USD, 8 decimals). No e-mode, no
isolation mode, no stable debt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from keeper.accounts.aave_v3 import (
    HF_LIQUIDATION_THRESHOLD,
    MAX_UINT256,
    RAY,
    AaveAccount,
    AccountData,
    Liquidation,
    Market,
    ReserveConfig,
    ReserveState,
    UserReserve,
    account_data,
    compounded_interest,
    linear_interest,
    liquidation_outcome,
    percent_mul,
    ray_div,
    ray_mul,
)

__all__ = ["AavePool", "AaveRevert", "LiquidationResult", "ReserveParams", "rate_ray"]


class AaveRevert(Exception):
    """An action the pool would refuse (the message says which rule)."""


def rate_ray(rate_annual: float) -> int:
    """A yearly rate in ray, rounded to the bp as ``RateStrategy.args`` (keeper.dev.aave_v3) deploys it."""
    return round(rate_annual * 10_000) * RAY // 10_000


@dataclass(frozen=True, slots=True)
class ReserveParams:
    """One reserve: decimals, LTV / LT / bonus (bonus as ``10500`` = 5 %), the protocol's share of the bonus
    (bps), and the constant yearly supply and variable borrow rates (ray)."""

    asset: str
    decimals: int
    ltv_bps: int
    liquidation_threshold_bps: int
    liquidation_bonus_bps: int
    liquidation_protocol_fee_bps: int = 1000
    supply_rate_ray: int = 0
    borrow_rate_ray: int = 0

    def config(self) -> ReserveConfig:
        return ReserveConfig(
            ltv_bps=self.ltv_bps,
            liquidation_threshold_bps=self.liquidation_threshold_bps,
            liquidation_bonus_bps=self.liquidation_bonus_bps,
            decimals=self.decimals,
            active=True,
            frozen=False,
            borrowing_enabled=True,
            stable_borrowing_enabled=False,
            paused=False,
            borrowable_in_isolation=False,
            siloed_borrowing=False,
            flashloan_enabled=False,
            reserve_factor_bps=0,
            borrow_cap=0,
            supply_cap=0,
            liquidation_protocol_fee_bps=self.liquidation_protocol_fee_bps,
            emode_category=0,
            unbacked_mint_cap=0,
            debt_ceiling_e2=0,
        )


@dataclass(slots=True)
class _Reserve:
    params: ReserveParams
    reserve_id: int
    liquidity_index: int = RAY
    debt_index: int = RAY
    last_update_s: int = 0
    total_scaled_debt: int = 0
    cfg: ReserveConfig | None = None

    def state(self) -> ReserveState:
        if self.cfg is None:
            self.cfg = self.params.config()
        return ReserveState(
            asset=self.params.asset,
            config=self.cfg,
            liquidity_index_ray=self.liquidity_index,
            liquidity_rate_ray=self.params.supply_rate_ray,
            variable_borrow_index_ray=self.debt_index,
            variable_borrow_rate_ray=self.params.borrow_rate_ray,
            last_update_s=self.last_update_s,
            reserve_id=self.reserve_id,
        )


@dataclass(slots=True)
class _User:
    scaled_a: int = 0
    scaled_v: int = 0
    collateral: bool = False
    borrowing: bool = False


@dataclass(frozen=True, slots=True)
class LiquidationResult:
    """What one ``liquidationCall`` did: the contract's amounts, and the bonus the user paid in USD e8
    (collateral seized, the protocol's fee included, minus the debt repaid, at the oracle's prices)."""

    collateral_asset: str
    debt_asset: str
    outcome: Liquidation
    health_before_wad: int
    penalty_base: int
    seized_base: int
    repaid_base: int


@dataclass(slots=True)
class AavePool:
    """Reserves, oracle prices and users of one pool (mutable; see the module docstring)."""

    reserves: dict[str, _Reserve] = field(default_factory=dict)
    prices_e8: dict[str, int] = field(default_factory=dict)
    users: dict[str, dict[str, _User]] = field(default_factory=dict)

    @classmethod
    def with_reserves(cls, params: list[ReserveParams], now_s: int) -> AavePool:
        return cls(reserves={p.asset: _Reserve(p, i, last_update_s=now_s) for i, p in enumerate(params)})

    # ---- reads ----------------------------------------------------------------------------------
    def market(self, now_s: int) -> Market:
        """The :class:`keeper.accounts.aave_v3.Market` at ``now_s`` (what ``calculateUserAccountData`` reads)."""
        return Market(
            reserves={a: r.state() for a, r in self.reserves.items()},
            prices_e8=dict(self.prices_e8),
            emode_categories={},
            timestamp_s=now_s,
        )

    def account(self, user: str) -> AaveAccount:
        rows = self.users.get(user, {})
        return AaveAccount(
            user,
            0,
            tuple(UserReserve(a, u.scaled_a, u.scaled_v, 0, u.collateral, u.borrowing) for a, u in rows.items()),
        )

    def account_data(self, user: str, now_s: int, market: Market | None = None) -> AccountData:
        return account_data(self.account(user), market or self.market(now_s))

    def balances(self, user: str, now_s: int) -> dict[str, tuple[int, int]]:
        """asset -> (aToken balance, variable debt) in the asset's units at ``now_s``."""
        out = {}
        for a, u in self.users.get(user, {}).items():
            st = self.reserves[a].state()
            out[a] = (ray_mul(u.scaled_a, st.normalized_income(now_s)), ray_mul(u.scaled_v, st.normalized_debt(now_s)))
        return out

    def weighted_excess_base(self, user: str, now_s: int, market: Market | None = None) -> int:
        """``max(0, percentMul(collateral, average LT) - debt)`` in USD e8: the collateral above what the debt
        needs at the liquidation threshold (the account's idle collateral)."""
        d = self.account_data(user, now_s, market)
        return max(0, percent_mul(d.total_collateral_base, d.current_liquidation_threshold_bps) - d.total_debt_base)

    # ---- oracle -----------------------------------------------------------------------------------
    def set_price(self, asset: str, price_e8: int) -> None:
        if price_e8 <= 0:
            raise AaveRevert(f"price of {asset} must be > 0")
        self.prices_e8[asset] = int(price_e8)

    # ---- writes -------------------------------------------------------------------------------------
    def update_state(self, asset: str, now_s: int) -> None:
        """``ReserveLogic.updateState``: the indices to ``now_s`` (each only when it accrues), then the clock."""
        r = self.reserves[asset]
        if now_s == r.last_update_s:
            return
        if now_s < r.last_update_s:
            raise AaveRevert(f"time runs backwards on {asset}: {now_s} < {r.last_update_s}")
        p = r.params
        if p.supply_rate_ray != 0:
            r.liquidity_index = ray_mul(linear_interest(p.supply_rate_ray, r.last_update_s, now_s), r.liquidity_index)
        if r.total_scaled_debt != 0:
            r.debt_index = ray_mul(compounded_interest(p.borrow_rate_ray, r.last_update_s, now_s), r.debt_index)
        r.last_update_s = now_s

    def _user(self, user: str, asset: str) -> _User:
        if asset not in self.reserves:
            raise AaveRevert(f"{asset} is not a reserve")
        return self.users.setdefault(user, {}).setdefault(asset, _User())

    def supply(self, user: str, asset: str, amount: int, now_s: int) -> None:
        """``Pool.supply(asset, amount, onBehalfOf=user)``."""
        if amount <= 0:
            raise AaveRevert("supply: amount must be > 0 (26)")
        self.update_state(asset, now_s)
        r, u = self.reserves[asset], self._user(user, asset)
        scaled = ray_div(amount, r.liquidity_index)
        if scaled == 0:
            raise AaveRevert("supply: invalid mint amount (56)")
        first = u.scaled_a == 0
        u.scaled_a += scaled
        if first and r.params.ltv_bps != 0:
            u.collateral = True

    def borrow(self, user: str, asset: str, amount: int, now_s: int) -> None:
        """``Pool.borrow(asset, amount, 2, 0, user)`` (checked against the available borrows)."""
        if amount <= 0:
            raise AaveRevert("borrow: amount must be > 0 (26)")
        self.update_state(asset, now_s)
        r = self.reserves[asset]
        d = self.account_data(user, now_s)
        need = amount * self.prices_e8[asset] // 10**r.params.decimals
        if d.total_collateral_base == 0 or need > d.available_borrows_base:
            raise AaveRevert("borrow: collateral cannot cover the new borrow (36)")
        u = self._user(user, asset)
        scaled = ray_div(amount, r.debt_index)
        u.scaled_v += scaled
        r.total_scaled_debt += scaled
        u.borrowing = True

    def repay(self, user: str, asset: str, amount: int, now_s: int) -> int:
        """``Pool.repay(asset, amount, 2, onBehalfOf=user)``; returns what was paid (at most the debt)."""
        if amount <= 0:
            raise AaveRevert("repay: amount must be > 0 (26)")
        self.update_state(asset, now_s)
        r, u = self.reserves[asset], self._user(user, asset)
        debt = ray_mul(u.scaled_v, r.debt_index)
        if debt == 0:
            raise AaveRevert("repay: no variable debt (39)")
        paid = min(amount, debt)
        burn = ray_div(paid, r.debt_index)
        if burn == 0 or burn > u.scaled_v:
            raise AaveRevert("repay: invalid burn amount (57)")
        u.scaled_v -= burn
        r.total_scaled_debt -= burn
        if debt - paid == 0:
            u.borrowing = False
        return paid

    def liquidate(self, user: str, collateral: str, debt: str, now_s: int) -> LiquidationResult:
        """``liquidationCall(collateral, debt, user, type(uint256).max, false)``."""
        self.update_state(debt, now_s)
        cu, du = self._user(user, collateral), self._user(user, debt)
        market = self.market(now_s)
        acct = self.account(user)
        hf = account_data(acct, market).health_factor_wad
        if hf >= HF_LIQUIDATION_THRESHOLD:
            raise AaveRevert("liquidation: health factor not below 1 (45)")
        if not cu.collateral or self.reserves[collateral].params.liquidation_threshold_bps == 0:
            raise AaveRevert("liquidation: collateral cannot be liquidated (46)")
        if du.scaled_v == 0:
            raise AaveRevert("liquidation: no debt of the selected type (47)")
        out = liquidation_outcome(acct, market, collateral, debt, MAX_UINT256, health_wad=hf)
        c_res, d_res = self.reserves[collateral], self.reserves[debt]
        d_index = d_res.debt_index  # updated above: the stored index is the normalised debt now
        total_debt = ray_mul(du.scaled_v, d_index)
        c_income = market.reserves[collateral].normalized_income(now_s)
        c_balance = ray_mul(cu.scaled_a, c_income)
        seized = out.collateral_to_liquidator
        fee = out.protocol_fee_collateral
        if total_debt == out.debt_covered:
            du.borrowing = False
        if seized + fee == c_balance:
            cu.collateral = False
        burn = ray_div(out.debt_covered, d_index)
        du.scaled_v -= burn
        d_res.total_scaled_debt -= burn
        self.update_state(collateral, now_s)
        c_index = c_res.liquidity_index
        if seized:
            cu.scaled_a -= ray_div(seized, c_index)
        if fee:
            if ray_div(fee, c_index) > cu.scaled_a:
                fee = ray_mul(cu.scaled_a, c_index)
            cu.scaled_a -= ray_div(fee, c_index)
        c_price, d_price = self.prices_e8[collateral], self.prices_e8[debt]
        seized_base = (seized + fee) * c_price // 10**c_res.params.decimals
        repaid_base = out.debt_covered * d_price // 10**d_res.params.decimals
        return LiquidationResult(collateral, debt, out, hf, max(0, seized_base - repaid_base), seized_base, repaid_base)

    def liquidation_pair(self, user: str, now_s: int) -> tuple[str, str] | None:
        """The liquidator's choice: the enabled collateral and the debt of largest value (ties by name)."""
        bal = self.balances(user, now_s)
        colls = [
            (v * self.prices_e8[a] // 10 ** self.reserves[a].params.decimals, a)
            for a, (v, _) in bal.items()
            if v > 0 and self.users[user][a].collateral and self.reserves[a].params.liquidation_threshold_bps
        ]
        debts = [(d * self.prices_e8[a] // 10 ** self.reserves[a].params.decimals, a) for a, (_, d) in bal.items() if d]
        if not colls or not debts:
            return None
        return max(colls, key=lambda x: (x[0], x[1]))[1], max(debts, key=lambda x: (x[0], x[1]))[1]
