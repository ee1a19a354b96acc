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
  for an LTV-0 asset), and whether a repay is accepted (:func:`supply_blocker`, :func:`repay_blocker`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from keeper.accounts.base import ADD_COLLATERAL, BPS, REPAY_DEBT, ActionOption, Leg, LegKind, MarginAccount

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


def supply_blocker(account: AaveAccount, market: Market, asset: str, amount: int = 0) -> str | None:
    """Why ``supply(asset, amount, onBehalfOf=user)`` would fail or not raise the HF; None if it helps.

    ``ValidationLogic.validateSupply`` (active, not paused, not frozen, supply cap) and
    ``validateAutomaticUseAsCollateral`` (a first supply becomes collateral only if LTV != 0, the asset has
    no debt ceiling and the user is not in isolation mode).
    """
    reserve = market.reserves.get(asset)
    if reserve is None:
        return f"{asset} is not a reserve of this pool"
    cfg = reserve.config
    if not cfg.active:
        return f"reserve {asset} is not active (supply reverts 27)"
    if cfg.paused:
        return f"reserve {asset} is paused (supply reverts 29)"
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
    reserve = market.reserves.get(asset)
    if reserve is None:
        return f"{asset} is not a reserve of this pool"
    if not reserve.config.active:
        return f"reserve {asset} is not active (repay reverts 27)"
    if reserve.config.paused:
        return f"reserve {asset} is paused (repay reverts 29)"
    ur = account.reserve(asset)
    if ur is None or (ur.scaled_variable_debt == 0):
        return f"the user has no variable debt in {asset} (repay reverts 39)"
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


def min_supply(account: AaveAccount, market: Market, asset: str, target_hf_wad: int) -> int | None:
    """Fewest units of ``asset`` to supply on behalf so the exact HF reaches ``target_hf_wad``.

    Closed form as the starting point, ``(D target - sum C_i LT_i) / LT_a x 10^dec / P``; the answer is the
    exact integer found by a bracketed search on :func:`account_data`. None when a supply cannot help (see
    :func:`supply_blocker`).
    """
    if supply_blocker(account, market, asset) is not None:
        return None

    def hf(a: int) -> int:
        return health_factor(after_top_up(account, market, asset, add_collateral=a, enable_collateral=True), market)

    d = account_data(account, market)
    cfg = market.reserves[asset].config
    lt = _lt_of(account, market, asset)
    price = asset_price(account, market, asset)
    need_base = d.total_debt_base * target_hf_wad // WAD
    hi = max(1, (need_base * BPS // max(lt, 1) + 1) * 10**cfg.decimals // price + 1)
    for _ in range(64):
        if hf(hi) >= target_hf_wad:
            break
        hi *= 2
    have = d.total_collateral_base * d.current_liquidation_threshold_bps // BPS
    guess = max(1, (need_base - have) * BPS // max(lt, 1) * 10**cfg.decimals // price)
    return _min_amount(hf, target_hf_wad, hi, guess)


def min_repay(account: AaveAccount, market: Market, asset: str, target_hf_wad: int) -> int | None:
    """Fewest units of ``asset``'s variable debt to repay on behalf so the exact HF reaches the target
    (None if repaying the whole debt of this asset is not enough, or a repay cannot run). Closed form as the
    starting point: the debt that leaves ``HF = target``, ``D - C LT / target``, in the asset's units."""
    if repay_blocker(account, market, asset) is not None:
        return None
    ur = account.reserve(asset)
    assert ur is not None  # repay_blocker checked it
    debt = ray_mul(ur.scaled_variable_debt, market.reserves[asset].normalized_debt(market.timestamp_s))
    d = account_data(account, market)
    price = asset_price(account, market, asset)
    allowed_base = percent_mul(d.total_collateral_base, d.current_liquidation_threshold_bps) * WAD // target_hf_wad
    unit = 10 ** market.reserves[asset].config.decimals
    guess = (d.total_debt_base - allowed_base) * unit // price if price > 0 else None
    return _min_amount(
        lambda r: health_factor(after_top_up(account, market, asset, repay=r), market), target_hf_wad, debt, guess
    )


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
    account: AaveAccount, market: Market, collateral_asset: str, debt_asset: str, debt_to_cover: int = MAX_UINT256
) -> Liquidation:
    """What ``liquidationCall(collateral, debt, user, debtToCover, false)`` takes (what is at stake)."""
    hf = health_factor(account, market)
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
    base = d_price * actual * c_unit // (c_price * d_unit)
    max_coll = percent_mul(base, bonus)
    if max_coll > coll_balance:
        coll = coll_balance
        actual = percent_div(c_price * coll * d_unit // (d_price * c_unit), bonus)
    else:
        coll = max_coll
    fee = 0
    if c_res.config.liquidation_protocol_fee_bps:
        fee = percent_mul(coll - percent_div(coll, bonus), c_res.config.liquidation_protocol_fee_bps)
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
    _hf: dict[str, int] = field(default_factory=dict, compare=False, repr=False)  # per account, this read

    def _acct(self, account: str) -> AaveAccount:
        found = self.accounts.get(account) or self.accounts.get(account.lower())
        if found is None:
            found = next((a for k, a in self.accounts.items() if k.lower() == account.lower()), None)
        if found is None:
            raise KeyError(f"account {account} was not read")
        return found

    def _name(self, asset: str) -> str:
        return self.symbols.get(asset, asset)

    def health(self, account: str) -> int:
        key = account.lower()
        if key not in self._hf:
            self._hf[key] = health_factor(self._acct(account), self.market)
        return self._hf[key]

    def liquidatable(self, account: str) -> bool:
        """``liquidationCall``'s check, HF < 1e18 (:func:`is_liquidatable`)."""
        return self.health(account) < HF_LIQUIDATION_THRESHOLD

    def health_at(self, account: str, prices_e8: Mapping[str, int]) -> int:
        """The exact health factor of ``account`` at other prices (asset -> e8), this read's balances."""
        moved = replace(self.market, prices_e8={**self.market.prices_e8, **prices_e8})
        return health_factor(self._acct(account), moved)

    def margin_account(self, account: str, block_number: int = 0) -> MarginAccount:
        return margin_account(self._acct(account), self.market, block_number)

    def options(
        self, account: str, survive_prices_e8: Mapping[str, int], wallet: Mapping[str, int], budget_e6: int
    ) -> tuple[list[ActionOption], list[str]]:
        acct = self._acct(account)
        stressed = replace(self.market, prices_e8={**self.market.prices_e8, **survive_prices_e8})
        held = {a: q for a, q in wallet.items() if q > 0 and a in self.market.reserves}
        if not held:
            return [], ["the keeper's wallet holds none of the pool's assets"]
        out: list[ActionOption] = []
        why: list[str] = []
        for asset, q in sorted(held.items()):
            unit = 10 ** self.market.reserves[asset].config.decimals
            price = asset_price(acct, self.market, asset)  # today's price: what the action costs
            budget_units = budget_e6 * 100 * unit // price if price > 0 else 0
            name = self._name(asset)
            for kind, blocker, fn in (
                (ADD_COLLATERAL, supply_blocker, min_supply),
                (REPAY_DEBT, repay_blocker, min_repay),
            ):
                verb = "supply" if kind == ADD_COLLATERAL else "repay"
                blocked = blocker(acct, self.market, asset)
                if blocked is not None:
                    why.append(f"{verb} {name}: {blocked.replace(asset, name)}")
                    continue
                need = fn(acct, stressed, asset, HF_LIQUIDATION_THRESHOLD)
                if need == 0:
                    continue
                cap = min(q, budget_units)
                if kind == REPAY_DEBT:
                    ur = acct.reserve(asset)
                    debt = ur.debt_balance(self.market.reserves[asset], self.market.timestamp_s) if ur else 0
                    cap = min(cap, debt)
                reaches = need is not None and need <= cap
                amount = need if reaches and need is not None else cap
                if not reaches:
                    if need is None:
                        why.append(
                            f"{verb} {name}: even the whole {'debt' if kind == REPAY_DEBT else 'wallet'} "
                            "does not survive the move"
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
                after = after_top_up(
                    acct,
                    stressed,
                    asset,
                    add_collateral=amount if kind == ADD_COLLATERAL else 0,
                    repay=amount if kind == REPAY_DEBT else 0,
                    enable_collateral=kind == ADD_COLLATERAL,
                )
                out.append(
                    ActionOption(
                        kind, asset, amount, amount * price // unit // 100, reaches, health_factor(after, stressed)
                    )
                )
        return out, why

    def release(self, account: str, survive_prices_e8: Mapping[str, int], max_e6: int) -> ActionOption | None:
        """Never: the daemon does not send Aave's ``withdraw`` (it needs the owner's key; not wired yet)."""
        return None

    def value_at_stake_e6(self, account: str) -> int:
        """The liquidator's bonus on the closable debt (close factor x debt x (bonus - 1)), largest pair, USD e6."""
        acct = self._acct(account)
        best = 0
        colls = [r.asset for r in acct.reserves if r.using_as_collateral]
        debts = [r.asset for r in acct.reserves if r.borrowing]
        for c in colls:
            for d in debts:
                out = liquidation_outcome(acct, self.market, c, d)
                price_c = asset_price(acct, self.market, c)
                unit_c = 10 ** self.market.reserves[c].config.decimals
                seized = (out.collateral_to_liquidator + out.protocol_fee_collateral) * price_c // unit_c
                price_d = asset_price(acct, self.market, d)
                repaid = out.debt_covered * price_d // 10 ** self.market.reserves[d].config.decimals
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
]
