"""Aave v3 (``@aave/core-v3`` 1.19.3) account arithmetic, exact to the wei (pure core: ints in, ints out).

Every function mirrors the contract it names, rounding included (sources under
``contracts/protocol/libraries`` of the package):

* ``ReserveConfiguration``: the reserve bitmap (:func:`decode_reserve_configuration`).
* ``WadRayMath`` / ``PercentageMath``: ``rayMul(a,b) = (a b + RAY/2) / RAY``, ``rayDiv``, ``wadDiv(a,b) =
  (a WAD + b/2) / b``, ``percentMul(v,p) = (v p + 5000) / 1e4``, ``percentDiv(v,p) = (v 1e4 + p/2) / p``.
* ``MathUtils``: linear (supply) and 3rd-order Taylor compounded (borrow) interest;
  ``ReserveLogic.getNormalizedIncome/Debt``.
* ``GenericLogic.calculateUserAccountData`` (:func:`account_data`): collateral and debt per reserve in the
  base currency (USD, 8 decimals) floored per reserve, e-mode LTV/LT and price source for assets of the
  user's category, average LTV and LT floored to whole bps, ``HF = wadDiv(percentMul(C, avgLT), D)``;
  ``calculateAvailableBorrows``.
* ``LiquidationLogic``: close factor (50 % while HF > 0.95, else 100 %) and the collateral seized with the
  bonus (:func:`liquidation_outcome`).
* ``ValidationLogic``: whether a supply is accepted and whether it becomes collateral
  (``validateAutomaticUseAsCollateral``: not for an isolated asset, not for a user in isolation mode, not
  for an LTV-0 asset), and whether a repay is accepted (:func:`supply_blocker`, :func:`repay_blocker`);
  ``validateWithdraw`` and ``validateHFAndLtv`` for the owner's own withdraw (:func:`withdraw_blocker`,
  :func:`after_withdraw`, :meth:`AaveRules.release`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from keeper.accounts.base import (
    ADD_COLLATERAL,
    BPS,
    RELEASE,
    REPAY_DEBT,
    ActionOption,
    Leg,
    LegKind,
    MarginAccount,
)

RAY = 10**27
HALF_RAY = RAY // 2
WAD = 10**18
SECONDS_PER_YEAR = 365 * 24 * 3600
MAX_UINT256 = 2**256 - 1
HF_LIQUIDATION_THRESHOLD = WAD
CLOSE_FACTOR_HF_THRESHOLD = 95 * 10**16
DEFAULT_CLOSE_FACTOR_BPS = 5_000
MAX_CLOSE_FACTOR_BPS = 10_000


# ---- fixed-point math (WadRayMath, PercentageMath) ---------------------------------------------


def ray_mul(a: int, b: int) -> int:
    return (a * b + HALF_RAY) // RAY


def ray_div(a: int, b: int) -> int:
    return (a * RAY + b // 2) // b


def wad_div(a: int, b: int) -> int:
    return (a * WAD + b // 2) // b


def percent_mul(value: int, bps: int) -> int:
    return (value * bps + BPS // 2) // BPS


def percent_div(value: int, bps: int) -> int:
    return (value * BPS + bps // 2) // bps


def linear_interest(rate_ray: int, last_update_s: int, now_s: int) -> int:
    """``MathUtils.calculateLinearInterest``: RAY + rate x dt / year (floored)."""
    return RAY + rate_ray * (now_s - last_update_s) // SECONDS_PER_YEAR


def compounded_interest(rate_ray: int, last_update_s: int, now_s: int) -> int:
    """``MathUtils.calculateCompoundedInterest``: the binomial expansion of (1 + r/year)^dt to 3rd order."""
    exp = now_s - last_update_s
    if exp <= 0:
        return RAY
    exp_minus_one = exp - 1
    exp_minus_two = exp - 2 if exp > 2 else 0
    base_power_two = ray_mul(rate_ray, rate_ray) // (SECONDS_PER_YEAR * SECONDS_PER_YEAR)
    base_power_three = ray_mul(base_power_two, rate_ray) // SECONDS_PER_YEAR
    second = exp * exp_minus_one * base_power_two // 2
    third = exp * exp_minus_one * exp_minus_two * base_power_three // 6
    return RAY + rate_ray * exp // SECONDS_PER_YEAR + second + third


# ---- reserves --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReserveConfig:
    """The reserve configuration bitmap, decoded (bps, whole tokens, USD with 2 decimals for the ceiling)."""

    ltv_bps: int
    liquidation_threshold_bps: int
    liquidation_bonus_bps: int
    decimals: int
    active: bool
    frozen: bool
    borrowing_enabled: bool
    stable_borrowing_enabled: bool
    paused: bool
    borrowable_in_isolation: bool
    siloed_borrowing: bool
    flashloan_enabled: bool
    reserve_factor_bps: int
    borrow_cap: int
    supply_cap: int
    liquidation_protocol_fee_bps: int
    emode_category: int
    unbacked_mint_cap: int
    debt_ceiling_e2: int


def _bits(x: int, start: int, width: int) -> int:
    return (x >> start) & ((1 << width) - 1)


def decode_reserve_configuration(bitmap: int) -> ReserveConfig:
    """Decode ``ReserveConfigurationMap.data`` (bit layout of ``ReserveConfiguration.sol``)."""
    return ReserveConfig(
        ltv_bps=_bits(bitmap, 0, 16),
        liquidation_threshold_bps=_bits(bitmap, 16, 16),
        liquidation_bonus_bps=_bits(bitmap, 32, 16),
        decimals=_bits(bitmap, 48, 8),
        active=bool(_bits(bitmap, 56, 1)),
        frozen=bool(_bits(bitmap, 57, 1)),
        borrowing_enabled=bool(_bits(bitmap, 58, 1)),
        stable_borrowing_enabled=bool(_bits(bitmap, 59, 1)),
        paused=bool(_bits(bitmap, 60, 1)),
        borrowable_in_isolation=bool(_bits(bitmap, 61, 1)),
        siloed_borrowing=bool(_bits(bitmap, 62, 1)),
        flashloan_enabled=bool(_bits(bitmap, 63, 1)),
        reserve_factor_bps=_bits(bitmap, 64, 16),
        borrow_cap=_bits(bitmap, 80, 36),
        supply_cap=_bits(bitmap, 116, 36),
        liquidation_protocol_fee_bps=_bits(bitmap, 152, 16),
        emode_category=_bits(bitmap, 168, 8),
        unbacked_mint_cap=_bits(bitmap, 176, 36),
        debt_ceiling_e2=_bits(bitmap, 212, 40),
    )


@dataclass(frozen=True, slots=True)
class ReserveState:
    """``Pool.getReserveData(asset)`` with the configuration decoded (rates and indices in ray)."""

    asset: str
    config: ReserveConfig
    liquidity_index_ray: int
    liquidity_rate_ray: int
    variable_borrow_index_ray: int
    variable_borrow_rate_ray: int
    last_update_s: int
    reserve_id: int
    a_token: str = ""
    stable_debt_token: str = ""
    variable_debt_token: str = ""
    isolation_mode_total_debt_e2: int = 0

    def normalized_income(self, now_s: int) -> int:
        """``ReserveLogic.getNormalizedIncome`` at ``now_s``."""
        if now_s == self.last_update_s:
            return self.liquidity_index_ray
        return ray_mul(linear_interest(self.liquidity_rate_ray, self.last_update_s, now_s), self.liquidity_index_ray)

    def normalized_debt(self, now_s: int) -> int:
        """``ReserveLogic.getNormalizedDebt`` at ``now_s``."""
        if now_s == self.last_update_s:
            return self.variable_borrow_index_ray
        return ray_mul(
            compounded_interest(self.variable_borrow_rate_ray, self.last_update_s, now_s),
            self.variable_borrow_index_ray,
        )


@dataclass(frozen=True, slots=True)
class EModeCategory:
    """``Pool.getEModeCategoryData(id)``: LTV, LT and bonus in bps; price source (``""`` = none)."""

    category_id: int
    ltv_bps: int
    liquidation_threshold_bps: int
    liquidation_bonus_bps: int
    price_source: str = ""


# ---- accounts ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserReserve:
    """One reserve of a user: scaled balances (as the tokens store them) and the user-configuration bits."""

    asset: str
    scaled_a_balance: int
    scaled_variable_debt: int
    stable_debt: int  # StableDebtToken.balanceOf at the read block (not projected)
    using_as_collateral: bool
    borrowing: bool

    def collateral_balance(self, reserve: ReserveState, now_s: int) -> int:
        """aToken balance: ``scaledBalance.rayMul(normalizedIncome)``."""
        return ray_mul(self.scaled_a_balance, reserve.normalized_income(now_s))

    def debt_balance(self, reserve: ReserveState, now_s: int) -> int:
        """Variable debt ``scaled.rayMul(normalizedDebt)`` plus stable debt."""
        variable = (
            ray_mul(self.scaled_variable_debt, reserve.normalized_debt(now_s)) if self.scaled_variable_debt else 0
        )
        return variable + self.stable_debt


@dataclass(frozen=True, slots=True)
class AaveAccount:
    """A user of an Aave v3 pool: e-mode category and the reserves its configuration flags."""

    user: str
    emode_category: int
    reserves: tuple[UserReserve, ...]

    def reserve(self, asset: str) -> UserReserve | None:
        for r in self.reserves:
            if r.asset == asset:
                return r
        return None


@dataclass(frozen=True, slots=True)
class Market:
    """What the arithmetic needs from the pool at one block: reserves, oracle prices, e-mode categories."""

    reserves: Mapping[str, ReserveState]
    prices_e8: Mapping[str, int]  # AaveOracle.getAssetPrice per asset (and per e-mode price source)
    emode_categories: Mapping[int, EModeCategory]
    timestamp_s: int

    def with_price(self, asset: str, price_e8: int) -> Market:
        return replace(self, prices_e8={**self.prices_e8, asset: price_e8})

    def at(self, timestamp_s: int) -> Market:
        return replace(self, timestamp_s=timestamp_s)


@dataclass(frozen=True, slots=True)
class AccountData:
    """``Pool.getUserAccountData``'s six values, in its order."""

    total_collateral_base: int
    total_debt_base: int
    available_borrows_base: int
    current_liquidation_threshold_bps: int
    ltv_bps: int
    health_factor_wad: int

    def as_tuple(self) -> tuple[int, int, int, int, int, int]:
        return (
            self.total_collateral_base,
            self.total_debt_base,
            self.available_borrows_base,
            self.current_liquidation_threshold_bps,
            self.ltv_bps,
            self.health_factor_wad,
        )


def _emode(account: AaveAccount, market: Market) -> tuple[EModeCategory | None, int]:
    cat = market.emode_categories.get(account.emode_category) if account.emode_category else None
    price = market.prices_e8.get(cat.price_source, 0) if cat is not None and cat.price_source else 0
    return cat, price


def asset_price(account: AaveAccount, market: Market, asset: str) -> int:
    """The price ``calculateUserAccountData`` uses for ``asset``: the e-mode source's for the user's category."""
    cat, emode_price = _emode(account, market)
    if emode_price and cat is not None and market.reserves[asset].config.emode_category == cat.category_id:
        return emode_price
    return market.prices_e8[asset]


def account_data(account: AaveAccount, market: Market) -> AccountData:
    """``PoolLogic.executeGetUserAccountData`` / ``GenericLogic.calculateUserAccountData``, to the wei."""
    if not any(r.using_as_collateral or r.borrowing for r in account.reserves):
        return AccountData(0, 0, 0, 0, 0, MAX_UINT256)
    cat, _ = _emode(account, market)
    total_c = total_d = ltv_acc = lt_acc = 0
    now = market.timestamp_s
    for ur in account.reserves:
        reserve = market.reserves[ur.asset]
        cfg = reserve.config
        unit = 10**cfg.decimals
        price = asset_price(account, market, ur.asset)
        if cfg.liquidation_threshold_bps != 0 and ur.using_as_collateral:
            value = ur.collateral_balance(reserve, now) * price // unit
            total_c += value
            in_cat = cat is not None and cfg.emode_category == cat.category_id
            if cfg.ltv_bps != 0:
                ltv_acc += value * (cat.ltv_bps if in_cat and cat is not None else cfg.ltv_bps)
            lt_acc += value * (
                cat.liquidation_threshold_bps if in_cat and cat is not None else cfg.liquidation_threshold_bps
            )
        if ur.borrowing:
            total_d += price * ur.debt_balance(reserve, now) // unit
    avg_ltv = ltv_acc // total_c if total_c else 0
    avg_lt = lt_acc // total_c if total_c else 0
    hf = MAX_UINT256 if total_d == 0 else wad_div(percent_mul(total_c, avg_lt), total_d)
    borrowable = percent_mul(total_c, avg_ltv)
    available = borrowable - total_d if borrowable >= total_d else 0
    return AccountData(total_c, total_d, available, avg_lt, avg_ltv, hf)


def health_factor(account: AaveAccount, market: Market) -> int:
    return account_data(account, market).health_factor_wad


def is_liquidatable(account: AaveAccount, market: Market) -> bool:
    """``liquidationCall`` passes its health-factor check iff HF < 1e18 (else revert 45)."""
    return health_factor(account, market) < HF_LIQUIDATION_THRESHOLD


def isolation_mode(account: AaveAccount, market: Market) -> str | None:
    """``UserConfiguration.getIsolationModeState``: the isolated asset when it is the ONLY collateral."""
    coll = [r.asset for r in account.reserves if r.using_as_collateral]
    if len(coll) == 1 and market.reserves[coll[0]].config.debt_ceiling_e2 != 0:
        return coll[0]
    return None


def margin_account(account: AaveAccount, market: Market, block_number: int = 0) -> MarginAccount:
    """The protocol-neutral view: collateral legs weighted by the effective LT, debts at face value."""
    cat, emode_price = _emode(account, market)
    legs: list[Leg] = []
    for ur in account.reserves:
        reserve = market.reserves[ur.asset]
        cfg = reserve.config
        in_cat = cat is not None and cfg.emode_category == cat.category_id
        key = cat.price_source if in_cat and emode_price and cat is not None else ""
        if ur.using_as_collateral and cfg.liquidation_threshold_bps:
            lt = cat.liquidation_threshold_bps if in_cat and cat is not None else cfg.liquidation_threshold_bps
            legs.append(
                Leg(
                    ur.asset,
                    LegKind.COLLATERAL,
                    ur.collateral_balance(reserve, market.timestamp_s),
                    cfg.decimals,
                    lt,
                    key,
                    reserve.liquidity_rate_ray / RAY,
                )
            )
        if ur.borrowing:
            legs.append(
                Leg(
                    ur.asset,
                    LegKind.DEBT,
                    ur.debt_balance(reserve, market.timestamp_s),
                    cfg.decimals,
                    BPS,
                    key,
                    reserve.variable_borrow_rate_ray / RAY,
                )
            )
    return MarginAccount("aave-v3", account.user, tuple(legs), block_number)


# ---- what would change the health factor ------------------------------------------------------------


def after_top_up(
    account: AaveAccount,
    market: Market,
    asset: str,
    *,
    add_collateral: int = 0,
    repay: int = 0,
    enable_collateral: bool = False,
) -> AaveAccount:
    """``account`` after supplying ``add_collateral`` / repaying ``repay`` (underlying units) of ``asset``."""
    reserve = market.reserves[asset]
    now = market.timestamp_s
    ur = account.reserve(asset) or UserReserve(asset, 0, 0, 0, False, False)
    scaled_a = ur.scaled_a_balance + (ray_div(add_collateral, reserve.normalized_income(now)) if add_collateral else 0)
    scaled_v, stable = ur.scaled_variable_debt, ur.stable_debt
    if repay:
        variable = ray_mul(scaled_v, reserve.normalized_debt(now))
        left = max(variable - repay, 0)
        scaled_v = ray_div(left, reserve.normalized_debt(now)) if left else 0
    new = UserReserve(
        asset,
        scaled_a,
        scaled_v,
        stable,
        ur.using_as_collateral or enable_collateral,
        ur.borrowing and (scaled_v > 0 or stable > 0),
    )
    others = tuple(r for r in account.reserves if r.asset != asset)
    return replace(account, reserves=(*others, new))


def _closed_reserve(market: Market, asset: str, verb: str) -> str | None:
    """Why ``verb`` (supply, repay, withdraw) of ``asset`` reverts for every user: not a reserve, not active
    (27), paused (29); None when the reserve takes it."""
    reserve = market.reserves.get(asset)
    if reserve is None:
        return f"{asset} is not a reserve of this pool"
    if not reserve.config.active:
        return f"reserve {asset} is not active ({verb} reverts 27)"
    if reserve.config.paused:
        return f"reserve {asset} is paused ({verb} reverts 29)"
    return None


def supply_blocker(account: AaveAccount, market: Market, asset: str, amount: int = 0) -> str | None:
    """Why ``supply(asset, amount, onBehalfOf=user)`` would fail or not raise the HF; None if it helps.

    ``ValidationLogic.validateSupply`` (active, not paused, not frozen, supply cap) and
    ``validateAutomaticUseAsCollateral`` (a first supply becomes collateral only if LTV != 0, the asset has
    no debt ceiling and the user is not in isolation mode).
    """
    closed = _closed_reserve(market, asset, "supply")
    if closed is not None:
        return closed
    cfg = market.reserves[asset].config
    if cfg.frozen:
        return f"reserve {asset} is frozen (supply reverts 28)"
    ur = account.reserve(asset)
    if ur is not None and ur.scaled_a_balance > 0 and not ur.using_as_collateral:
        return f"{asset} is supplied but not enabled as collateral by the user: a supply does not raise the HF"
    if ur is None or ur.scaled_a_balance == 0:
        if cfg.ltv_bps == 0 or cfg.liquidation_threshold_bps == 0:
            return f"{asset} has LTV 0: a first supply is not enabled as collateral"
        if any(r.using_as_collateral for r in account.reserves):
            if cfg.debt_ceiling_e2 != 0:
                return f"{asset} is an isolated asset: supplied on behalf it is not enabled as collateral"
            if isolation_mode(account, market) is not None:
                return "the user is in isolation mode: a new collateral asset is not enabled"
        elif cfg.debt_ceiling_e2 != 0:
            return f"{asset} is an isolated asset: supplied on behalf it is not enabled as collateral"
    return None


def repay_blocker(account: AaveAccount, market: Market, asset: str) -> str | None:
    """Why ``repay(asset, amount, 2, onBehalfOf=user)`` would fail; None if it can run."""
    closed = _closed_reserve(market, asset, "repay")
    if closed is not None:
        return closed
    ur = account.reserve(asset)
    if ur is None or (ur.scaled_variable_debt == 0):
        return f"the user has no variable debt in {asset} (repay reverts 39)"
    return None


def after_withdraw(account: AaveAccount, market: Market, asset: str, amount: int) -> AaveAccount:
    """``account`` after the owner's ``withdraw(asset, amount, to)`` (``SupplyLogic.executeWithdraw``): the
    aToken burns ``rayDiv(amount, normalizedIncome)`` scaled units, and withdrawing the whole balance clears
    the reserve's collateral flag."""
    reserve = market.reserves[asset]
    ur = account.reserve(asset)
    if ur is None:
        raise ValueError(f"the user has no {asset} supplied")
    income = reserve.normalized_income(market.timestamp_s)
    whole = amount == ur.collateral_balance(reserve, market.timestamp_s)
    scaled = ur.scaled_a_balance - (ray_div(amount, income) if amount else 0)
    new = replace(ur, scaled_a_balance=scaled, using_as_collateral=ur.using_as_collateral and not whole)
    return replace(account, reserves=tuple(new if r.asset == asset else r for r in account.reserves))


def withdraw_blocker(account: AaveAccount, market: Market, asset: str) -> str | None:
    """Why the owner's ``withdraw`` of ``asset`` would revert whatever the amount; None if some amount can pass.

    ``ValidationLogic.validateWithdraw``: the reserve active (27) and not paused (29; a frozen reserve still
    lets its suppliers withdraw), a balance to withdraw (32); ``validateHFAndLtv``: while any other collateral
    of the user has LTV 0, only an LTV-0 asset may be withdrawn (57). The health factor after the withdraw
    (35) depends on the amount: :meth:`AaveRules.release` finds the most that passes."""
    closed = _closed_reserve(market, asset, "withdraw")
    if closed is not None:
        return closed
    cfg = market.reserves[asset].config
    ur = account.reserve(asset)
    if ur is None or ur.scaled_a_balance == 0:
        return f"the user has no {asset} supplied (withdraw reverts 32)"
    # validateHFAndLtv runs only for a collateral withdraw by a user who borrows
    if cfg.ltv_bps != 0 and ur.using_as_collateral and any(r.borrowing for r in account.reserves):
        for other in account.reserves:
            o = market.reserves[other.asset].config
            if other.asset != asset and other.using_as_collateral and o.liquidation_threshold_bps and not o.ltv_bps:
                return (
                    f"the user also holds {other.asset} as collateral with LTV 0: only an LTV-0 asset may be "
                    "withdrawn (withdraw reverts 57)"
                )
    return None


def _bisect(pred: Callable[[int], bool], lo: int, hi: int) -> int:
    """Least x in (lo, hi] with pred(x), given pred(lo) false, pred(hi) true and pred monotone."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _min_amount(hf_of: Callable[[int], int], target_wad: int, hi: int, guess: int | None = None) -> int | None:
    """Smallest integer a in [0, hi] with hf_of(a) >= target (hf_of nondecreasing); None if hi is not enough.

    With a ``guess`` (a closed form, usually within a few units of the answer) the bracket is found by
    galloping from it (steps 1, 2, 4, ...) before the bisection: about ``2 log2(error)`` evaluations instead
    of ``log2(hi)``. The answer is the same exact integer either way (only monotonicity is used)."""
    if hf_of(0) >= target_wad:
        return 0

    def ok(a: int) -> bool:
        return hf_of(a) >= target_wad

    if guess is None or not 0 < guess < hi:
        return _bisect(ok, 0, hi) if ok(hi) else None
    if ok(guess):
        good, step = guess, 1
        while True:
            low = max(0, good - step)
            if low == 0 or not ok(low):
                return _bisect(ok, low, good)
            good, step = low, step * 2
    bad, step = guess, 1
    while True:
        up = min(hi, bad + step)
        if ok(up):
            return _bisect(ok, bad, up)
        if up == hi:
            return None
        bad, step = up, step * 2


def _lt_of(account: AaveAccount, market: Market, asset: str) -> int:
    cfg = market.reserves[asset].config
    cat = market.emode_categories.get(account.emode_category)
    if cat is not None and cfg.emode_category == cat.category_id:
        return cat.liquidation_threshold_bps
    return cfg.liquidation_threshold_bps


# ---- the same arithmetic with each reserve's constants computed once (the book-wide path) ---------------


class ReserveTerms(NamedTuple):
    """What ``calculateUserAccountData`` multiplies one reserve's balances by, for the users of one e-mode
    category at one market: the price it uses (the category's price source for its assets), 10^decimals,
    whether the reserve's collateral counts at all (configured LT != 0), the effective LT and LTV (the
    category's for its assets; LTV 0 where the reserve's is 0), the normalized income and debt at the
    market's timestamp, and what :func:`margin_account` needs besides (price key, decimals, rates)."""

    price: int
    unit: int
    counted: bool
    lt: int
    ltv: int
    income: int
    debt_index: int
    decimals: int
    price_key: str
    supply_rate: float
    borrow_rate: float


class MarketTerms:
    """:class:`ReserveTerms` of every priced reserve of ``market`` for the users of e-mode ``category`` (0:
    none), in ``table``: one ``normalized_income`` / ``normalized_debt`` per reserve per read instead of one per
    account. ``like``: the terms of the same reserves at the same timestamp (another price vector): its
    indices are reused. A reserve without a price is left out (an account holding it fails as in
    :func:`account_data`)."""

    __slots__ = ("market", "table")
    market: Market
    table: dict[str, ReserveTerms]

    def __init__(self, market: Market, category: int, *, like: MarketTerms | None = None) -> None:
        cat = market.emode_categories.get(category) if category else None
        prices = market.prices_e8
        emode_price = prices.get(cat.price_source, 0) if cat is not None and cat.price_source else 0
        now = market.timestamp_s
        same = like is not None and like.market.reserves is market.reserves and like.market.timestamp_s == now
        known = like.table if like is not None and same else {}
        table: dict[str, ReserveTerms] = {}
        for asset, reserve in market.reserves.items():
            cfg = reserve.config
            in_cat = cat is not None and cfg.emode_category == cat.category_id
            emode = emode_price if in_cat else 0
            price = emode or prices.get(asset)
            if price is None:
                continue
            lt, ltv = cfg.liquidation_threshold_bps, cfg.ltv_bps
            if in_cat and cat is not None:
                lt = cat.liquidation_threshold_bps
                ltv = cat.ltv_bps if ltv else 0
            prior = known.get(asset)
            table[asset] = ReserveTerms(
                price,
                10**cfg.decimals,
                cfg.liquidation_threshold_bps != 0,
                lt,
                ltv,
                prior.income if prior is not None else reserve.normalized_income(now),
                prior.debt_index if prior is not None else reserve.normalized_debt(now),
                cfg.decimals,
                cat.price_source if emode and cat is not None else "",
                reserve.liquidity_rate_ray / RAY,
                reserve.variable_borrow_rate_ray / RAY,
            )
        self.market = market
        self.table = table

    def __getitem__(self, asset: str) -> ReserveTerms:
        return self.table[asset]


def _totals(account: AaveAccount, terms: MarketTerms, skip: str = "") -> tuple[int, int, int, int]:
    """(total collateral, sum collateral x LTV, sum collateral x LT, total debt) in the base currency, the
    reserve ``skip`` left out: :func:`account_data`'s sums."""
    total_c = total_d = ltv_acc = lt_acc = 0
    table = terms.table
    for ur in account.reserves:
        t = table[ur.asset]
        if ur.asset == skip:
            continue
        if ur.using_as_collateral and t.counted:
            value = (ur.scaled_a_balance * t.income + HALF_RAY) // RAY * t.price // t.unit
            total_c += value
            ltv_acc += value * t.ltv
            lt_acc += value * t.lt
        if ur.borrowing:
            variable = (ur.scaled_variable_debt * t.debt_index + HALF_RAY) // RAY if ur.scaled_variable_debt else 0
            total_d += t.price * (variable + ur.stable_debt) // t.unit
    return total_c, ltv_acc, lt_acc, total_d


def _health(total_c: int, lt_acc: int, total_d: int) -> int:
    if total_d == 0:
        return MAX_UINT256
    avg_lt = lt_acc // total_c if total_c else 0
    return wad_div(percent_mul(total_c, avg_lt), total_d)


def account_data_fast(account: AaveAccount, terms: MarketTerms) -> AccountData:
    """:func:`account_data` with the reserves' constants taken from ``terms`` (the same integers; an account
    with no reserve flagged has no collateral and no debt: health factor ``type(uint256).max``)."""
    total_c, ltv_acc, lt_acc, total_d = _totals(account, terms)
    avg_ltv = ltv_acc // total_c if total_c else 0
    avg_lt = lt_acc // total_c if total_c else 0
    borrowable = percent_mul(total_c, avg_ltv)
    available = borrowable - total_d if borrowable >= total_d else 0
    return AccountData(total_c, total_d, available, avg_lt, avg_ltv, _health(total_c, lt_acc, total_d))


def margin_account_fast(account: AaveAccount, terms: MarketTerms, block_number: int = 0) -> MarginAccount:
    """:func:`margin_account` with the reserves' constants taken from ``terms``."""
    return margin_account_and_health(account, terms, block_number)[0]


def margin_account_and_health(
    account: AaveAccount, terms: MarketTerms, block_number: int = 0
) -> tuple[MarginAccount, int]:
    """:func:`margin_account_fast` and :func:`account_data_fast`'s health factor from the same balances (one
    ``rayMul`` per balance for both: the book's read builds every view and the decision asks every health)."""
    legs: list[Leg] = []
    table = terms.table
    total_c = lt_acc = total_d = 0
    collateral, debt = LegKind.COLLATERAL, LegKind.DEBT
    for ur in account.reserves:
        t = table[ur.asset]
        if ur.using_as_collateral and t.counted:
            amount = (ur.scaled_a_balance * t.income + HALF_RAY) // RAY
            legs.append(Leg(ur.asset, collateral, amount, t.decimals, t.lt, t.price_key, t.supply_rate))
            value = amount * t.price // t.unit
            total_c += value
            lt_acc += value * t.lt
        if ur.borrowing:
            variable = (ur.scaled_variable_debt * t.debt_index + HALF_RAY) // RAY if ur.scaled_variable_debt else 0
            owed = variable + ur.stable_debt
            legs.append(Leg(ur.asset, debt, owed, t.decimals, BPS, t.price_key, t.borrow_rate))
            total_d += t.price * owed // t.unit
    return MarginAccount("aave-v3", account.user, tuple(legs), block_number), _health(total_c, lt_acc, total_d)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class _SupplyCurve:
    """The exact health factor of ``account`` after supplying ``x`` of ``asset`` on its behalf (enabled as
    collateral): :func:`after_top_up` then :func:`account_data`, with the other reserves summed once."""

    __slots__ = ("c0", "d", "l0", "s", "t")

    def __init__(self, account: AaveAccount, terms: MarketTerms, asset: str) -> None:
        self.c0, _, self.l0, _ = _totals(account, terms, skip=asset)
        self.d = _totals(account, terms)[3]  # a supply leaves every debt as it is
        ur = account.reserve(asset)
        self.s = ur.scaled_a_balance if ur is not None else 0
        self.t = terms[asset]

    def value(self, x: int) -> int:
        t = self.t
        if not t.counted:
            return 0
        scaled = self.s + ((x * RAY + t.income // 2) // t.income if x else 0)
        return (scaled * t.income + HALF_RAY) // RAY * t.price // t.unit

    def hf(self, x: int) -> int:
        v = self.value(x)
        return _health(self.c0 + v, self.l0 + v * self.t.lt, self.d)

    def least(self, target_wad: int) -> int | None:
        """Fewest units that reach ``target_wad``; None when no supply does; :data:`_UNSURE` when the closed
        form does not apply (a price or LT that is 0 or 1) or its answer fails the check.

        With ``V`` the asset's value after the supply, ``HF >= target`` is ``Q(V) = C floor(L / C) >= B``
        (``C = C0 + V``, ``L = L0 + LT V``). Where the asset's LT is at least the other collateral's average
        (``LT C0 >= L0``) the floored average never falls and ``Q`` only rises: the least ``V`` by bisection
        on ``Q``. Below it the average falls one bp at a time as ``V`` grows and ``Q`` saw-tooths: on each
        stretch of one average ``a`` it is ``C a``, so the least ``V`` is found stretch by stretch
        (:func:`_least_value_falling`). Then the fewest units whose value reaches that ``V``; should that
        amount's value overshoot onto a tooth that misses the target, the search goes on from there."""
        t, c0, l0, d = self.t, self.c0, self.l0, self.d
        if self.hf(0) >= target_wad:
            return 0
        if not t.counted:
            return None  # the reserve's collateral does not count: no supply helps
        if t.price <= 0 or t.lt < 2 or target_wad < 1:
            return _UNSURE
        # HF >= target  <=>  percentMul(C, avgLT) >= A  <=>  C * floor(L / C) >= B
        a_min = _ceil_div(target_wad * d - d // 2, WAD)
        b = BPS * a_min - BPS // 2
        v = self.value(0)  # Q(v) < B: the HF misses the target without a supply
        rising = t.lt * c0 >= l0
        for _ in range(64 if not rising else 1):
            if rising:
                v_star = _least_value_rising(c0, l0, t.lt, b, v)
            else:
                v_star = _least_value_falling(c0, l0, t.lt, b, v)
            # the fewest units whose value reaches v_star: back through floor(bal P / U), rayMul and rayDiv
            bal = _ceil_div(v_star * t.unit, t.price)
            scaled = max(0, _ceil_div(bal * RAY - HALF_RAY, t.income))
            x = max(0, _ceil_div((scaled - self.s) * t.income - t.income // 2, RAY))
            if self.hf(x) >= target_wad:
                return x if x == 0 or self.hf(x - 1) < target_wad else _UNSURE
            v = self.value(x) + 1  # x's value overshot v_star onto a tooth below the target
        return _UNSURE


def _least_value_rising(c0: int, l0: int, lt: int, b: int, v: int) -> int:
    """Least ``V >= v`` with ``(C0 + V) floor((L0 + LT V) / (C0 + V)) >= B`` when the average rises with V
    (``LT C0 >= L0``, ``LT >= 2``): from ``(B - L0) / LT`` (below it ``Q <= L0 + LT V < B``), stretch by
    stretch of one floored average ``a`` (``Q = (C0 + V) a``); the answer is within a stretch or two of it."""
    v = max(v, _ceil_div(b - l0, lt))
    while True:
        c = c0 + v
        if c == 0:
            v = 1
            continue
        a = (l0 + lt * v) // c
        # the stretch of this average ends where (L0 + LT V) / (C0 + V) reaches a + 1 (never when LT <= a + 1)
        end = _ceil_div((a + 1) * c0 - l0, lt - a - 1) - 1 if lt > a + 1 else None
        if a > 0:
            need = max(v, _ceil_div(b, a) - c0)
            if end is None or need <= end:
                return need
        if end is None:  # a == 0 for ever: cannot happen with LT >= 2 (the average tends to LT)
            raise ArithmeticError("the average LT does not rise")
        v = end + 1


def _least_value_falling(c0: int, l0: int, lt: int, b: int, v: int) -> int:
    """Least ``V >= v`` with ``(C0 + V) floor((L0 + LT V) / (C0 + V)) >= B`` when the average falls with V
    (``LT C0 < L0``, ``LT >= 1``): stretch by stretch of one floored average ``a`` (where ``Q = (C0 + V) a``
    rises), skipping at once every ``a`` above ``B LT / (B - K)``, ``K = L0 - LT C0`` (there the stretch
    ends, ``V <= K / (a - LT) - C0``, before ``Q`` can reach ``B``, ``V >= B / a - C0``)."""
    k = l0 - lt * c0
    a = (l0 + lt * v) // (c0 + v)
    if b > k:
        a_star = b * lt // (b - k)
        if a > a_star:  # start at the first V whose average is at most a_star
            v = max(v, (l0 - (a_star + 1) * c0) // (a_star + 1 - lt) + 1)
            a = (l0 + lt * v) // (c0 + v)
    while True:
        need = max(v, _ceil_div(b, a) - c0)  # Q = (C0 + V) a on this stretch
        if a == lt or need <= (l0 - a * c0) // (a - lt):  # the average never falls to LT: the last stretch
            return need
        v = (l0 - a * c0) // (a - lt) + 1
        a = (l0 + lt * v) // (c0 + v)


class _RepayCurve:
    """The exact health factor of ``account`` after repaying ``r`` of its variable debt in ``asset`` on its
    behalf: :func:`after_top_up` then :func:`account_data`, with the other reserves summed once."""

    __slots__ = ("c", "d0", "lt_acc", "t", "ur", "variable")

    def __init__(self, account: AaveAccount, terms: MarketTerms, asset: str) -> None:
        self.c, _, self.lt_acc, _ = _totals(account, terms)  # a repay leaves every collateral as it is
        self.d0 = _totals(account, terms, skip=asset)[3]
        ur = account.reserve(asset)
        assert ur is not None, "repay_blocker checks that the user has this debt"
        self.ur = ur
        self.t = terms[asset]
        self.variable = (ur.scaled_variable_debt * self.t.debt_index + HALF_RAY) // RAY

    def debt_value(self, r: int) -> int:
        t, ur = self.t, self.ur
        left = max(self.variable - r, 0)
        scaled = (left * RAY + t.debt_index // 2) // t.debt_index if left else 0
        if not (ur.borrowing and (scaled > 0 or ur.stable_debt > 0)):
            return 0
        variable = (scaled * t.debt_index + HALF_RAY) // RAY if scaled else 0
        return t.price * (variable + ur.stable_debt) // t.unit

    def hf(self, r: int) -> int:
        return _health(self.c, self.lt_acc, self.d0 + self.debt_value(r))

    def least(self, target_wad: int) -> int | None:
        """Fewest units that reach ``target_wad`` (the health factor only rises as the debt falls), in
        closed form; None when repaying all of it is not enough; :data:`_UNSURE` when the closed form does
        not apply or its answer fails the check."""
        t, ur = self.t, self.ur
        if self.hf(0) >= target_wad:
            return 0
        if not ur.borrowing or t.price <= 0 or target_wad < 1:
            return _UNSURE
        kw = _health_numerator(self.c, self.lt_acc) * WAD
        # wadDiv(K, D) >= target  <=>  K WAD + floor(D / 2) >= target D: the largest such D, even or odd
        d_max = 2 * (kw // (2 * target_wad - 1))
        if kw >= target_wad:
            d_max = max(d_max, 2 * ((kw - target_wad) // (2 * target_wad - 1)) + 1)
        dv_max = d_max - self.d0  # the most this asset's debt may be worth
        if dv_max < 0:
            return None if self.hf(self.variable) < target_wad else _UNSURE
        balance = ((dv_max + 1) * t.unit - 1) // t.price - ur.stable_debt  # floor(P bal / U) <= dv_max
        if balance < 0:
            return None if self.hf(self.variable) < target_wad else _UNSURE
        scaled = ((balance + 1) * RAY - HALF_RAY - 1) // t.debt_index  # rayMul(scaled, index) <= balance
        left = ((scaled + 1) * t.debt_index - t.debt_index // 2 - 1) // RAY  # rayDiv(left, index) <= scaled
        r = max(0, self.variable - left)
        if self.hf(r) >= target_wad and (r == 0 or self.hf(r - 1) < target_wad):
            return r
        return _UNSURE


class _WithdrawCurve:
    """The exact health factor of ``account`` after its owner withdraws ``x`` of collateral ``asset``:
    :func:`after_withdraw` then :func:`account_data`, with the other reserves summed once. Withdrawing the
    whole balance clears the collateral flag (the asset then counts for nothing)."""

    __slots__ = ("b", "balance", "c0", "d", "l0", "s", "t")

    def __init__(self, account: AaveAccount, terms: MarketTerms, asset: str) -> None:
        self.c0, _, self.l0, _ = _totals(account, terms, skip=asset)
        self.d = _totals(account, terms)[3]  # a withdraw leaves every debt as it is
        ur = account.reserve(asset)
        assert ur is not None and ur.using_as_collateral, "release withdraws a collateral the user holds"
        self.s = ur.scaled_a_balance
        self.t = terms[asset]
        self.balance = (self.s * self.t.income + HALF_RAY) // RAY
        # HF >= 1  <=>  percentMul(C, avgLT) >= ceil((WAD D - D/2) / WAD)  <=>  C floor(L / C) >= b
        self.b = BPS * _ceil_div(WAD * self.d - self.d // 2, WAD) - BPS // 2 if self.d else 0

    def value(self, x: int) -> int:
        t = self.t
        if not t.counted or x >= self.balance:
            return 0
        scaled = self.s - ((x * RAY + t.income // 2) // t.income if x else 0)
        return (scaled * t.income + HALF_RAY) // RAY * t.price // t.unit

    def hf(self, x: int) -> int:
        v = self.value(x)
        return _health(self.c0 + v, self.l0 + v * self.t.lt, self.d)

    def weighted(self, x: int) -> int:
        """``L``, the collateral times its LT summed (bps x base units): ``C floor(L / C) <= L``."""
        return self.l0 + self.value(x) * self.t.lt

    def average(self, x: int) -> int:
        """The floored average LT after withdrawing ``x`` (monotone in ``x``)."""
        v = self.value(x)
        c = self.c0 + v
        return (self.l0 + v * self.t.lt) // c if c else 0


def _largest_withdraw(curves: tuple[_WithdrawCurve, ...], cap: int) -> int:
    """The largest ``x`` in ``[0, cap]`` whose health factor is at least 1 on every curve (0 when none; ``x = 0``
    is assumed to pass), exactly.

    Each curve's HF is ``wadDiv(percentMul(C, a), D)`` with ``a = floor(L / C)`` the floored average LT. ``C``
    and ``L`` only fall as ``x`` grows, and ``a`` moves one way only (up when the asset's LT is below the
    others' average, down otherwise), so on a stretch of ``x`` where every curve's ``a`` is constant the HFs
    only fall: what passes is a prefix of the stretch. ``C a <= L``: past the last ``x`` with ``L >= b`` on
    every curve nothing passes, and where ``L - C >= b`` everything does; between the two the averages take a
    handful of values. So: from that last ``x`` down, stretch by stretch (bisected on the averages), the first
    stretch whose first ``x`` passes holds the answer, bisected within it."""

    def ok(x: int) -> bool:
        return all(c.hf(x) >= HF_LIQUIDATION_THRESHOLD for c in curves)

    if ok(cap):
        return cap
    if not ok(0):
        return 0

    def under(x: int) -> bool:
        return any(c.weighted(x) < c.b for c in curves)

    hi = _bisect(under, 0, cap) - 1 if under(cap) else cap
    while True:
        key = tuple(c.average(hi) for c in curves)

        def same(x: int, key: tuple[int, ...] = key) -> bool:
            return tuple(c.average(x) for c in curves) == key

        lo = 0 if same(0) else _bisect(same, 0, hi)
        if ok(lo):
            return hi if ok(hi) else _bisect(lambda x: not ok(x), lo, hi) - 1
        hi = lo - 1


def _health_numerator(total_c: int, lt_acc: int) -> int:
    return percent_mul(total_c, lt_acc // total_c if total_c else 0)


_UNSURE = -1
"""``least`` could not answer in closed form: the caller runs the bracketed search."""


def min_supply(
    account: AaveAccount, market: Market, asset: str, target_hf_wad: int, *, terms: MarketTerms | None = None
) -> int | None:
    """Fewest units of ``asset`` to supply on behalf so the exact HF reaches ``target_hf_wad``.

    Where the health factor cannot fall as the supply grows (the asset's LT at least the other collateral's
    average), the answer is computed in closed form on the integers (:meth:`_SupplyCurve.least`: the least
    value of the asset that reaches the target, then the least amount of that value through the floors of
    the price, ``rayMul`` and ``rayDiv``) and checked: the HF reaches the target at it and not one unit
    below. Otherwise a bracketed search on the exact HF starts from the closed form ``(D target - sum C_i
    LT_i) / LT_a x 10^dec / P``. None when a supply cannot help (see :func:`supply_blocker`). ``terms``: the
    market's reserve constants for the account's e-mode category, when the caller has them.
    """
    if supply_blocker(account, market, asset) is not None:
        return None
    terms = terms if terms is not None else MarketTerms(market, account.emode_category)
    return _min_supply_on(_SupplyCurve(account, terms, asset), account, terms, asset, target_hf_wad)


def _min_supply_on(
    curve: _SupplyCurve, account: AaveAccount, terms: MarketTerms, asset: str, target_hf_wad: int
) -> int | None:
    found = curve.least(target_hf_wad)
    if found != _UNSURE:
        return found
    hf = curve.hf
    d = account_data_fast(account, terms)
    t = terms[asset]
    lt, price = t.lt, t.price
    need_base = d.total_debt_base * target_hf_wad // WAD
    hi = max(1, (need_base * BPS // max(lt, 1) + 1) * t.unit // price + 1)
    for _ in range(64):
        if hf(hi) >= target_hf_wad:
            break
        hi *= 2
    have = d.total_collateral_base * d.current_liquidation_threshold_bps // BPS
    guess = max(1, (need_base - have) * BPS // max(lt, 1) * t.unit // price)
    return _min_amount(hf, target_hf_wad, hi, guess)


def min_repay(
    account: AaveAccount, market: Market, asset: str, target_hf_wad: int, *, terms: MarketTerms | None = None
) -> int | None:
    """Fewest units of ``asset``'s variable debt to repay on behalf so the exact HF reaches the target
    (None if repaying the whole debt of this asset is not enough, or a repay cannot run). The HF only rises
    as the debt falls: the answer is computed in closed form on the integers (:meth:`_RepayCurve.least`:
    the most debt that still reaches the target, back through the floors of the price, ``rayMul`` and
    ``rayDiv``) and checked; should the check fail, a bracketed search starts from ``D - C LT / target``."""
    if repay_blocker(account, market, asset) is not None:
        return None
    terms = terms if terms is not None else MarketTerms(market, account.emode_category)
    return _min_repay_on(_RepayCurve(account, terms, asset), account, terms, asset, target_hf_wad)


def _min_repay_on(
    curve: _RepayCurve, account: AaveAccount, terms: MarketTerms, asset: str, target_hf_wad: int
) -> int | None:
    found = curve.least(target_hf_wad)
    if found != _UNSURE:
        return found
    d = account_data_fast(account, terms)
    t = terms[asset]
    allowed_base = percent_mul(d.total_collateral_base, d.current_liquidation_threshold_bps) * WAD // target_hf_wad
    guess = (d.total_debt_base - allowed_base) * t.unit // t.price if t.price > 0 else None
    return _min_amount(curve.hf, target_hf_wad, curve.variable, guess)


@dataclass(frozen=True, slots=True)
class TopUp:
    """An action on behalf of the user: ``kind`` ("supply" | "repay"), asset, amount, its cost in base units."""

    kind: str
    asset: str
    amount: int
    cost_base: int
    reason: str = ""


def cheapest_top_up(
    account: AaveAccount, market: Market, target_hf_wad: int, wallet: Mapping[str, int]
) -> TopUp | None:
    """Among the supplies and repays ``wallet`` (asset -> units held) can pay for, the one of least value.

    Repaying $1 raises the HF more than supplying $1 whenever HF > LT, so with both in the wallet the repay
    usually wins; the comparison is made on exact amounts, not on that rule. None when nothing in the wallet
    reaches the target.
    """
    best: TopUp | None = None
    for asset, held in wallet.items():
        if asset not in market.reserves or held <= 0:
            continue
        unit = 10 ** market.reserves[asset].config.decimals
        price = asset_price(account, market, asset)
        for kind, fn in (("supply", min_supply), ("repay", min_repay)):
            amount = fn(account, market, asset, target_hf_wad)
            if amount is None or amount == 0 or amount > held:
                continue
            cost = amount * price // unit
            if best is None or cost < best.cost_base:
                best = TopUp(kind, asset, amount, cost)
    return best


def no_top_up_reasons(account: AaveAccount, market: Market, target_hf_wad: int, wallet: Mapping[str, int]) -> list[str]:
    """Why :func:`cheapest_top_up` found nothing: one line per asset of the wallet (for the alert)."""
    held = {a: q for a, q in wallet.items() if q > 0 and a in market.reserves}
    if not held:
        return ["the keeper's wallet holds none of the pool's assets"]
    reasons = []
    for asset, q in held.items():
        for kind, blocker, fn in (("supply", supply_blocker, min_supply), ("repay", repay_blocker, min_repay)):
            why = blocker(account, market, asset)
            if why is None:
                need = fn(account, market, asset, target_hf_wad)
                why = (
                    f"{kind} of {asset} cannot reach the target HF"
                    if need is None
                    else f"{kind} of {asset} needs {need} units, the wallet holds {q}"
                )
            reasons.append(f"{kind}: {why}")
    return reasons


def liquidation_price(account: AaveAccount, market: Market, asset: str, *, hi_e8: int | None = None) -> int | None:
    """Exact one-factor liquidation price of ``asset`` (e8), all other prices held.

    For a collateral asset (HF rises with its price): the least integer P with HF >= 1 at P, so HF < 1 at
    P - 1. For a debt asset (HF falls with its price): the greatest such P. Bisection on the integer HF of
    :func:`account_data` (the single-collateral closed form ``D 1e4 10^dec / (LT q)`` is off by up to one bp
    of the floored average LT when there are several collaterals). None if no price in (0, hi] liquidates.
    """

    def hf(p: int) -> int:
        return health_factor(account, market.with_price(asset, p))

    top = hi_e8 or max(market.prices_e8[asset] * 1_000, 10**8)
    low_hf, high_hf = hf(1), hf(top)
    one = HF_LIQUIDATION_THRESHOLD
    if low_hf < one <= high_hf:  # collateral-like: least P with HF(P) >= 1
        return _bisect(lambda p: hf(p) >= one, 1, top)
    if high_hf < one <= low_hf:  # debt-like: greatest P with HF(P) >= 1
        return _bisect(lambda p: hf(p) < one, 1, top) - 1
    return None


@dataclass(frozen=True, slots=True)
class Liquidation:
    """``LiquidationLogic`` outcome: debt repaid, collateral to the liquidator and to the treasury."""

    close_factor_bps: int
    debt_covered: int
    collateral_to_liquidator: int
    protocol_fee_collateral: int


def liquidation_outcome(
    account: AaveAccount,
    market: Market,
    collateral_asset: str,
    debt_asset: str,
    debt_to_cover: int = MAX_UINT256,
    *,
    health_wad: int | None = None,
) -> Liquidation:
    """What ``liquidationCall(collateral, debt, user, debtToCover, false)`` takes (what is at stake).
    ``health_wad``: the account's health factor at ``market`` when the caller has it."""
    hf = health_factor(account, market) if health_wad is None else health_wad
    close = DEFAULT_CLOSE_FACTOR_BPS if hf > CLOSE_FACTOR_HF_THRESHOLD else MAX_CLOSE_FACTOR_BPS
    now = market.timestamp_s
    d_res, c_res = market.reserves[debt_asset], market.reserves[collateral_asset]
    d_ur, c_ur = account.reserve(debt_asset), account.reserve(collateral_asset)
    total_debt = d_ur.debt_balance(d_res, now) if d_ur else 0
    actual = min(debt_to_cover, percent_mul(total_debt, close))
    coll_balance = c_ur.collateral_balance(c_res, now) if c_ur else 0
    cat = market.emode_categories.get(account.emode_category)
    bonus = c_res.config.liquidation_bonus_bps
    if cat is not None and c_res.config.emode_category == cat.category_id:
        bonus = cat.liquidation_bonus_bps
    c_price, d_price = asset_price(account, market, collateral_asset), asset_price(account, market, debt_asset)
    c_unit, d_unit = 10**c_res.config.decimals, 10**d_res.config.decimals
    fee_bps = c_res.config.liquidation_protocol_fee_bps
    return _liquidation(close, actual, coll_balance, bonus, c_price, d_price, c_unit, d_unit, fee_bps)


def _liquidation(
    close: int,
    actual: int,
    coll_balance: int,
    bonus: int,
    c_price: int,
    d_price: int,
    c_unit: int,
    d_unit: int,
    fee_bps: int,
) -> Liquidation:
    """``LiquidationLogic``'s collateral to seize for ``actual`` debt covered (capped by the balance) and the
    protocol's fee on the bonus."""
    base = d_price * actual * c_unit // (c_price * d_unit)
    max_coll = percent_mul(base, bonus)
    if max_coll > coll_balance:
        coll = coll_balance
        actual = percent_div(c_price * coll * d_unit // (d_price * c_unit), bonus)
    else:
        coll = max_coll
    fee = 0
    if fee_bps:
        fee = percent_mul(coll - percent_div(coll, bonus), fee_bps)
    return Liquidation(close, actual, coll - fee, fee)


# ---- the rules the protocol-neutral decision asks for (keeper.accounts.base.AccountRules) ---------------


@dataclass(frozen=True, slots=True)
class AaveRules:
    """Aave v3's exact rules over one read (accounts keyed by lower-case address), for
    :func:`keeper.decision.decide_accounts`. ``symbols`` (asset -> symbol) only names assets in the reasons."""

    accounts: Mapping[str, AaveAccount]
    market: Market
    symbols: Mapping[str, str] = field(default_factory=dict)
    protocol: str = "aave-v3"
    releasable: frozenset[str] = frozenset()  # accounts (lower case) whose owner's key the keeper holds, releases on
    _hf: dict[str, int] = field(default_factory=dict, compare=False, repr=False)  # per account, this read
    _terms: dict[int, MarketTerms] = field(default_factory=dict, compare=False, repr=False)  # per e-mode category

    def _acct(self, account: str) -> AaveAccount:
        found = self.accounts.get(account) or self.accounts.get(account.lower())
        if found is None:
            found = next((a for k, a in self.accounts.items() if k.lower() == account.lower()), None)
        if found is None:
            raise KeyError(f"account {account} was not read")
        return found

    def _name(self, asset: str) -> str:
        return self.symbols.get(asset, asset)

    def terms(self, category: int) -> MarketTerms:
        """This read's reserve constants for the users of e-mode ``category`` (computed once per read)."""
        found = self._terms.get(category)
        if found is None:
            found = self._terms[category] = MarketTerms(self.market, category)
        return found

    def health(self, account: str) -> int:
        key = account.lower()
        found = self._hf.get(key)
        if found is None:
            acct = self._acct(account)
            found = self._hf[key] = account_data_fast(acct, self.terms(acct.emode_category)).health_factor_wad
        return found

    def liquidatable(self, account: str) -> bool:
        """``liquidationCall``'s check, HF < 1e18 (:func:`is_liquidatable`)."""
        return self.health(account) < HF_LIQUIDATION_THRESHOLD

    def health_at(self, account: str, prices_e8: Mapping[str, int]) -> int:
        """The exact health factor of ``account`` at other prices (asset -> e8), this read's balances."""
        moved = replace(self.market, prices_e8={**self.market.prices_e8, **prices_e8})
        acct = self._acct(account)
        terms = MarketTerms(moved, acct.emode_category, like=self.terms(acct.emode_category))
        return account_data_fast(acct, terms).health_factor_wad

    def margin_account(self, account: str, block_number: int = 0) -> MarginAccount:
        acct = self._acct(account)
        view, hf = margin_account_and_health(acct, self.terms(acct.emode_category), block_number)
        self._hf.setdefault(account.lower(), hf)  # the same integers health() computes: asked next by the decision
        return view

    def options(
        self, account: str, survive_prices_e8: Mapping[str, int], wallet: Mapping[str, int], budget_e6: int
    ) -> tuple[list[ActionOption], list[str]]:
        acct = self._acct(account)
        held = {a: q for a, q in wallet.items() if q > 0 and a in self.market.reserves}
        if not held:
            return [], ["the keeper's wallet holds none of the pool's assets"]
        stressed = replace(self.market, prices_e8={**self.market.prices_e8, **survive_prices_e8})
        today = self.terms(acct.emode_category)
        at_stress = MarketTerms(stressed, acct.emode_category, like=today)
        out: list[ActionOption] = []
        why: list[str] = []
        for asset, q in sorted(held.items()):
            unit = today[asset].unit
            price = today[asset].price  # today's price: what the action costs
            budget_units = budget_e6 * 100 * unit // price if price > 0 else 0
            name = self._name(asset)
            for kind in (ADD_COLLATERAL, REPAY_DEBT):
                supply = kind == ADD_COLLATERAL
                verb = "supply" if supply else "repay"
                blocked = (
                    supply_blocker(acct, self.market, asset) if supply else repay_blocker(acct, self.market, asset)
                )
                if blocked is not None:
                    why.append(f"{verb} {name}: {blocked.replace(asset, name)}")
                    continue
                # the exact HF at the prices to survive after supplying / repaying x (after_top_up + account_data)
                curve: _SupplyCurve | _RepayCurve
                if supply:
                    curve = _SupplyCurve(acct, at_stress, asset)
                    need = _min_supply_on(curve, acct, at_stress, asset, HF_LIQUIDATION_THRESHOLD)
                else:
                    curve = _RepayCurve(acct, at_stress, asset)
                    need = _min_repay_on(curve, acct, at_stress, asset, HF_LIQUIDATION_THRESHOLD)
                if need == 0:
                    continue
                cap = min(q, budget_units)
                if not supply:
                    ur = acct.reserve(asset)
                    debt = ur.debt_balance(self.market.reserves[asset], self.market.timestamp_s) if ur else 0
                    cap = min(cap, debt)
                reaches = need is not None and need <= cap
                amount = need if reaches and need is not None else cap
                if not reaches:
                    if need is None:
                        why.append(
                            f"{verb} {name}: even the whole {'wallet' if supply else 'debt'} does not survive the move"
                        )
                    elif need > q:
                        why.append(f"{verb} {name}: needs {need} units, the wallet holds {q}")
                    else:
                        why.append(
                            f"{verb} {name}: needs ${need * price // unit / 1e8:,.2f}, over the cap of "
                            f"${budget_e6 / 1e6:,.2f}"
                        )
                if amount <= 0:
                    continue
                out.append(ActionOption(kind, asset, amount, amount * price // unit // 100, reaches, curve.hf(amount)))
        return out, why

    def release_refusal(self, account: str) -> str | None:
        """Why the keeper may not withdraw from ``account`` at all (``withdraw`` burns msg.sender's aTokens: only
        the owner's own key can send it), None when it holds that key with releases enabled (``releasable``)."""
        if account.lower() not in self.releasable:
            return "the keeper does not hold the owner's key (Aave's withdraw is the owner's own transaction)"
        return None

    def release(self, account: str, survive_prices_e8: Mapping[str, int], max_e6: int) -> ActionOption | None:
        """The largest ``withdraw`` of one collateral (owner's key, ``releasable``) that the Pool accepts and
        after which the account still survives ``survive_prices_e8``, at most ``max_e6`` USD at today's price.

        Per collateral asset that :func:`withdraw_blocker` lets through (active, not paused, frozen allowed;
        the LTV-0 rule of ``validateHFAndLtv``): the most units ``x`` with the exact health factor after the
        withdraw at least 1 both at today's prices (``validateHealthFactor``, else revert 35) and at the survive
        prices, on the integers (:func:`_largest_withdraw`: the floored average LT makes the health factor
        saw-tooth by under a bp where the asset's LT is below the other collateral's average, so the answer is
        searched stretch by stretch of one average, not by a plain bisection): no larger amount up to the whole
        balance or the cap passes both. The asset whose withdraw is worth most is released (a tie: the one
        leaving the higher health factor at the survive prices). The aToken's available liquidity is not read:
        the transaction's simulation refuses a withdraw the reserve cannot pay."""
        if self.release_refusal(account) is not None:
            return None
        acct = self._acct(account)
        today = self.terms(acct.emode_category)
        stressed = replace(self.market, prices_e8={**self.market.prices_e8, **survive_prices_e8})
        at_stress = MarketTerms(stressed, acct.emode_category, like=today)
        best: ActionOption | None = None
        for ur in acct.reserves:
            if not ur.using_as_collateral or withdraw_blocker(acct, self.market, ur.asset) is not None:
                continue
            now, hard = _WithdrawCurve(acct, today, ur.asset), _WithdrawCurve(acct, at_stress, ur.asset)
            t = today[ur.asset]
            cap = min(now.balance, max_e6 * 100 * t.unit // t.price if t.price > 0 else 0)

            amount = _largest_withdraw((now, hard), cap) if cap > 0 else 0
            if amount <= 0:
                continue
            cost = amount * t.price // t.unit // 100
            option = ActionOption(RELEASE, ur.asset, amount, cost, True, hard.hf(amount), "withdraw")
            if best is None or (option.cost_e6, option.health_after) > (best.cost_e6, best.health_after):
                best = option
        return best

    def value_at_stake_e6(self, account: str) -> int:
        """The liquidator's bonus on the closable debt (close factor x debt x (bonus - 1)), largest pair, USD e6."""
        acct = self._acct(account)
        colls = [r.asset for r in acct.reserves if r.using_as_collateral]
        debts = [r.asset for r in acct.reserves if r.borrowing]
        if not (colls and debts):
            return 0
        # liquidation_outcome for every (collateral, debt) pair, the balances and prices from this read's terms
        terms = self.terms(acct.emode_category)
        close = DEFAULT_CLOSE_FACTOR_BPS if self.health(account) > CLOSE_FACTOR_HF_THRESHOLD else MAX_CLOSE_FACTOR_BPS
        cat = self.market.emode_categories.get(acct.emode_category)
        best = 0
        for d in debts:
            td = terms[d]
            d_ur = acct.reserve(d)
            assert d_ur is not None
            variable = ray_mul(d_ur.scaled_variable_debt, td.debt_index) if d_ur.scaled_variable_debt else 0
            actual = percent_mul(variable + d_ur.stable_debt, close)
            for c in colls:
                tc = terms[c]
                c_ur = acct.reserve(c)
                assert c_ur is not None
                cfg = self.market.reserves[c].config
                bonus = cfg.liquidation_bonus_bps
                if cat is not None and cfg.emode_category == cat.category_id:
                    bonus = cat.liquidation_bonus_bps
                coll_balance = ray_mul(c_ur.scaled_a_balance, tc.income)
                out = _liquidation(
                    close,
                    actual,
                    coll_balance,
                    bonus,
                    tc.price,
                    td.price,
                    tc.unit,
                    td.unit,
                    cfg.liquidation_protocol_fee_bps,
                )
                seized = (out.collateral_to_liquidator + out.protocol_fee_collateral) * tc.price // tc.unit
                repaid = out.debt_covered * td.price // td.unit
                best = max(best, (seized - repaid) // 100)
        return best


__all__ = [
    "AaveAccount",
    "AaveRules",
    "AccountData",
    "EModeCategory",
    "Liquidation",
    "Market",
    "ReserveConfig",
    "ReserveState",
    "TopUp",
    "UserReserve",
    "account_data",
    "after_top_up",
    "after_withdraw",
    "cheapest_top_up",
    "compounded_interest",
    "decode_reserve_configuration",
    "health_factor",
    "is_liquidatable",
    "isolation_mode",
    "linear_interest",
    "liquidation_outcome",
    "liquidation_price",
    "margin_account",
    "min_repay",
    "min_supply",
    "no_top_up_reasons",
    "repay_blocker",
    "supply_blocker",
    "withdraw_blocker",
]
