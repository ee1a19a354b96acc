"""Aave v3 accounts in a replay book (TOML): the reserves' parameters and the accounts to open.

Format (example: ``examples/aave_book.toml``)::

    [aave.reserves.WETH]
    price = "ETH"                  # a replayed symbol (--prices ETH=...), or price_usd = 1.0 for a fixed price
    decimals = 18
    ltv = 0.80
    liquidation_threshold = 0.825
    liquidation_bonus = 0.05       # the liquidator's bonus on the debt it repays
    liquidation_protocol_fee = 0.10   # the protocol's share of the bonus (default 0.10)
    supply_rate = 0.0              # constant yearly rates (default 0)
    borrow_rate = 0.0
    sigma_fallback_annual = 0.05   # fixed-price reserves: the keeper's volatility (as [protocol.assets.X])
    [aave.wallet]
    asset = "USDC"                 # what each account's wallet holds (pays supplies and repays)
    per_account_usd = 50000.0
    [[aave_accounts]]
    name = "weth-hf{hf}"           # template ({hf}: each health factor)
    collateral = { WETH = 100000.0 }          # USD at the opening price (or collateral_units = { WETH = 40.0 })
    debt_asset = "USDC"
    health_factors = [1.1, 1.3]    # the debt that opens at each HF (or debt = { USDC = 60000.0 }, USD)
    wallet_usd = 20000.0           # optional, else [aave.wallet]

E-mode is off and every reserve is a plain one (no isolation, no caps). Bad values raise
:class:`keeper.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from keeper.errors import ConfigError
from keeper.replay.aave_model import ReserveParams, rate_ray

DEFAULT_AAVE_BOOK_PATH = Path(__file__).resolve().parents[2] / "examples" / "aave_book.toml"


@dataclass(frozen=True, slots=True)
class AaveReserveSpec:
    """A reserve of the book: its parameters and where its price comes from (a replayed symbol or fixed)."""

    params: ReserveParams
    price_symbol: str | None  # replayed symbol (ETH, BTC), or None with ``fixed_price_e8``
    fixed_price_e8: int
    sigma_fallback_annual: float


@dataclass(frozen=True, slots=True)
class AaveAccountSpec:
    """One account to open at the first replayed round: collateral (USD or units) and debt (USD or by HF)."""

    name: str
    collateral_usd: tuple[tuple[str, float], ...]
    collateral_units: tuple[tuple[str, float], ...]
    debt_asset: str
    debt_usd: float | None
    health_factor: float | None
    wallet_usd: float


@dataclass(frozen=True, slots=True)
class AaveBook:
    reserves: dict[str, AaveReserveSpec]
    accounts: tuple[AaveAccountSpec, ...]
    wallet_asset: str
    source: str = ""
    protocol: str = "aave-v3"

    @property
    def symbols(self) -> list[str]:
        """The replayed symbols the book's prices need."""
        return sorted({r.price_symbol for r in self.reserves.values() if r.price_symbol})

    def fixed_prices_e8(self) -> dict[str, int]:
        """The fixed-price reserves' prices (USD e8)."""
        return {a: r.fixed_price_e8 for a, r in self.reserves.items() if r.price_symbol is None}

    def asset_of_symbol(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for a, r in self.reserves.items():
            if r.price_symbol:
                out.setdefault(r.price_symbol, []).append(a)
        return out

    def liquidation_penalty(self, asset: str) -> float:
        """What a liquidation seizing ``asset`` takes beyond the debt it repays, as a fraction: the reserve's
        liquidation bonus (the daemon's :func:`keeper.accounts.costs.liquidation_penalty` of the same reserve)."""
        return max(self.reserves[asset].params.liquidation_bonus_bps / 10_000 - 1.0, 0.0)


def _num(d: dict, key: str, where: str, *, lo: float, hi: float, default: float | None = None) -> float:
    if key not in d:
        if default is None:
            raise ConfigError(f"{where}.{key} is required", field=f"{where}.{key}")
        return default
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= float(v) <= hi):
        raise ConfigError(f"{where}.{key} = {v!r}: must be a number in [{lo:g}, {hi:g}]", field=f"{where}.{key}")
    return float(v)


RESERVE_KEYS = {
    "price",
    "price_usd",
    "decimals",
    "ltv",
    "liquidation_threshold",
    "liquidation_bonus",
    "liquidation_protocol_fee",
    "supply_rate",
    "borrow_rate",
    "sigma_fallback_annual",
}


def _reserve(asset: str, raw: dict, where: str) -> AaveReserveSpec:
    unknown = set(raw) - RESERVE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}", field=where)
    if ("price" in raw) == ("price_usd" in raw):
        raise ConfigError(f"{where}: give price = SYMBOL or price_usd = number (one of them)", field=f"{where}.price")
    ltv = _num(raw, "ltv", where, lo=0.0, hi=0.99)
    lt = _num(raw, "liquidation_threshold", where, lo=0.0, hi=0.99)
    bonus = _num(raw, "liquidation_bonus", where, lo=0.0, hi=0.5)
    if lt < ltv:
        raise ConfigError(f"{where}: liquidation_threshold {lt} < ltv {ltv}", field=f"{where}.liquidation_threshold")
    if lt * (1 + bonus) > 1.0:
        raise ConfigError(f"{where}: liquidation_threshold x (1 + bonus) must be <= 1 (Aave's rule)", field=where)
    decimals = int(_num(raw, "decimals", where, lo=0, hi=36))
    params = ReserveParams(
        asset=asset,
        decimals=decimals,
        ltv_bps=round(ltv * 10_000),
        liquidation_threshold_bps=round(lt * 10_000),
        liquidation_bonus_bps=10_000 + round(bonus * 10_000),
        liquidation_protocol_fee_bps=round(_num(raw, "liquidation_protocol_fee", where, lo=0, hi=1, default=0.1) * 1e4),
        supply_rate_ray=rate_ray(_num(raw, "supply_rate", where, lo=0, hi=10, default=0.0)),
        borrow_rate_ray=rate_ray(_num(raw, "borrow_rate", where, lo=0, hi=10, default=0.0)),
    )
    symbol = str(raw["price"]).upper() if "price" in raw else None
    fixed = 0 if symbol else round(_num(raw, "price_usd", where, lo=1e-8, hi=1e12) * 1e8)
    sigma = _num(raw, "sigma_fallback_annual", where, lo=1e-6, hi=20, default=0.05)
    return AaveReserveSpec(params, symbol, fixed, sigma)


def _amounts(raw: object, where: str, reserves: dict[str, AaveReserveSpec]) -> tuple[tuple[str, float], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table {{ ASSET = amount }}", field=where)
    out = []
    for a, v in raw.items():
        if a.upper() not in reserves:
            raise ConfigError(f"{where}.{a}: not a reserve of [aave.reserves]", field=f"{where}.{a}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise ConfigError(f"{where}.{a} = {v!r}: must be > 0", field=f"{where}.{a}")
        out.append((a.upper(), float(v)))
    return tuple(out)


def has_aave_accounts(data: dict) -> bool:
    return bool(data.get("aave_accounts"))


def parse_aave_book(data: dict, source: str = "") -> AaveBook:
    """Build an :class:`AaveBook` from parsed TOML (see the module docstring)."""
    aave = data.get("aave") or {}
    raw_reserves = aave.get("reserves") or {}
    if not raw_reserves:
        raise ConfigError(f"{source}: an Aave book needs [aave.reserves.<ASSET>]", field="aave.reserves")
    reserves = {a.upper(): _reserve(a.upper(), r, f"aave.reserves.{a}") for a, r in raw_reserves.items()}
    wallet = aave.get("wallet") or {}
    wallet_asset = str(wallet.get("asset", "USDC")).upper()
    if wallet_asset not in reserves:
        raise ConfigError(f"aave.wallet.asset = {wallet_asset!r}: not a reserve", field="aave.wallet.asset")
    per_account = _num(wallet, "per_account_usd", "aave.wallet", lo=0, hi=1e12, default=50_000.0)
    accounts: list[AaveAccountSpec] = []
    for i, raw in enumerate(data.get("aave_accounts") or []):
        where = f"aave_accounts[{i}]"
        coll_usd = _amounts(raw.get("collateral"), f"{where}.collateral", reserves)
        coll_units = _amounts(raw.get("collateral_units"), f"{where}.collateral_units", reserves)
        if not coll_usd and not coll_units:
            raise ConfigError(f"{where}: give collateral (USD) or collateral_units", field=f"{where}.collateral")
        debt = _amounts(raw.get("debt"), f"{where}.debt", reserves)
        hfs = raw.get("health_factors", [raw["health_factor"]] if "health_factor" in raw else None)
        if bool(debt) == bool(hfs):
            raise ConfigError(f"{where}: give debt = {{ ASSET = USD }} or health_factor(s)", field=f"{where}.debt")
        if len(debt) > 1:
            raise ConfigError(f"{where}.debt: one debt asset per account", field=f"{where}.debt")
        debt_asset = debt[0][0] if debt else str(raw.get("debt_asset", wallet_asset)).upper()
        if debt_asset not in reserves:
            raise ConfigError(f"{where}.debt_asset = {debt_asset!r}: not a reserve", field=f"{where}.debt_asset")
        wallet_usd = _num(raw, "wallet_usd", where, lo=0, hi=1e12, default=per_account)
        template = str(raw.get("name", f"aave-{i}" + ("-hf{hf}" if hfs and len(hfs) > 1 else "")))
        for hf in hfs or [None]:
            if hf is not None and (isinstance(hf, bool) or not isinstance(hf, (int, float)) or not 1.0 < hf < 100):
                raise ConfigError(
                    f"{where}.health_factor = {hf!r}: must be in (1, 100)", field=f"{where}.health_factor"
                )
            name = template.format(hf=f"{hf:g}" if hf is not None else "").lower()
            if any(a.name == name for a in accounts):
                raise ConfigError(f"{where}: account name {name!r} is used twice", field=f"{where}.name")
            accounts.append(
                AaveAccountSpec(
                    name,
                    coll_usd,
                    coll_units,
                    debt_asset,
                    debt[0][1] if debt else None,
                    float(hf) if hf is not None else None,
                    wallet_usd,
                )
            )
    if not accounts:
        raise ConfigError(f"{source}: the book has no [[aave_accounts]]", field="aave_accounts")
    return AaveBook(reserves, tuple(accounts), wallet_asset, source)


def read_book_toml(path: str | Path) -> tuple[dict, str]:
    """The parsed TOML of a book file and its name (errors as :class:`ConfigError`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read book: {exc.strerror or exc}", field="book") from None
    try:
        return tomllib.loads(text), str(path)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}", field="book") from None


def load_aave_book(path: str | Path | None = None) -> AaveBook:
    """Read an Aave book TOML (``None``: ``examples/aave_book.toml``)."""
    data, source = read_book_toml(path or DEFAULT_AAVE_BOOK_PATH)
    return parse_aave_book(data, source if path else "examples/aave_book.toml")
