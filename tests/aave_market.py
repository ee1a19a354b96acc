"""A small Aave v3 market in memory (WETH, WBTC, USDC with realistic parameters) and accounts on it, for the pure
account tests (tests/test_account_decision.py, tests/test_account_cost_bands.py)."""

from __future__ import annotations

from keeper.accounts.aave_v3 import RAY, AaveAccount, Market, ReserveState, UserReserve, decode_reserve_configuration

PRICES = {"WETH": 3_000 * 10**8, "WBTC": 60_000 * 10**8, "USDC": 10**8}
SIGMAS = {"WETH": 0.8, "WBTC": 0.6, "USDC": 0.01}
SYMBOLS = {a: a for a in PRICES}


def _bitmap(ltv: int, lt: int, bonus: int, decimals: int, *, frozen: bool = False, paused: bool = False) -> int:
    """A reserve configuration word: LTV, liquidation threshold and bonus (bps), decimals, active, borrowing on."""
    return ltv | lt << 16 | bonus << 32 | decimals << 48 | 1 << 56 | int(frozen) << 57 | 1 << 58 | int(paused) << 60


def market(*, frozen: frozenset[str] = frozenset(), paused: frozenset[str] = frozenset(), borrow_rate=0.0) -> Market:
    """The three reserves at ``PRICES`` (indexes 1, the variable borrow rate ``borrow_rate`` a year)."""
    params = {"WETH": (8000, 8250, 10500, 18), "WBTC": (7300, 7800, 10500, 8), "USDC": (7700, 8000, 10450, 6)}
    reserves = {}
    for rid, (asset, (ltv, lt, bonus, dec)) in enumerate(params.items()):
        cfg = decode_reserve_configuration(
            _bitmap(ltv, lt, bonus, dec, frozen=asset in frozen, paused=asset in paused) | 1000 << 152
        )
        reserves[asset] = ReserveState(asset, cfg, RAY, 0, RAY, int(borrow_rate * RAY), 0, rid)
    return Market(reserves, dict(PRICES), {}, 0)


def account(user: str, weth: float = 10.0, usdc_debt: float = 22_000.0, wbtc: float = 0.0) -> AaveAccount:
    """WETH (and WBTC) collateral against a USDC variable debt."""
    reserves = [UserReserve("WETH", int(weth * 10**18), 0, 0, True, False)]
    if wbtc:
        reserves.append(UserReserve("WBTC", int(wbtc * 10**8), 0, 0, True, False))
    reserves.append(UserReserve("USDC", 0, int(usdc_debt * 10**6), 0, False, True))
    return AaveAccount(user, 0, tuple(reserves))
