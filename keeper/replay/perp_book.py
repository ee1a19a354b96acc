"""Perp v2 accounts in a replay book (TOML): Curie's ratios, the markets and the accounts to open.

Format (example: ``examples/perp_book.toml``)::

    [perp]
    mm_ratio = 0.0625              # ClearingHouseConfig (defaults: Curie's 6.25 %, 10 %, 2.5 %)
    im_ratio = 0.10
    liquidation_penalty = 0.025
    [perp.markets.vETH]            # a base token
    price = "ETH"                  # the replayed symbol it follows (mark = index = that price)
    fee_ratio = 0.001              # MarketRegistry feeRatio (default 0.1 %)
    premium_gap = 0.0              # optional log gap the keeper adds to both sides (the daemon's pool gap)
    [perp.wallet]
    per_account_usd = 20000.0      # USDC each account's wallet holds for the keeper's Vault.depositFor
    [[perp_accounts]]
    name = "eth-long-{leverage}x"  # template ({leverage}: each leverage)
    collateral_usd = 10000.0       # the trader's own deposit
    positions = { vETH = 1.0 }     # weights (+ long, - short) of the total notional = leverage x collateral
    leverages = [4.0, 8.0]         # or positions_usd = { vETH = 60000.0, vBTC = -20000.0 } (signed notionals)
    wallet_usd = 5000.0            # optional, else [perp.wallet]

Every position must open within the initial margin (Curie's ``CH_NEFCI``: free collateral at imRatio >= 0
after the trade). Bad values raise :class:`keeper.errors.ConfigError` naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from keeper.accounts.perp_v2 import PerpParams
from keeper.errors import ConfigError
from keeper.replay.aave_book import _num, read_book_toml

DEFAULT_PERP_BOOK_PATH = Path(__file__).resolve().parents[2] / "examples" / "perp_book.toml"
SETTLEMENT_TOKEN = "USDC"


@dataclass(frozen=True, slots=True)
class PerpMarketSpec:
    """A market of the book: the base token, the replayed symbol its mark follows, fee ratio and gaps."""

    base_token: str
    price_symbol: str
    fee_ratio_e6: int
    premium_gap: float


@dataclass(frozen=True, slots=True)
class PerpAccountSpec:
    """One trader opened at the first replayed round: its deposit and its positions (signed USD notionals)."""

    name: str
    collateral_usd: float
    positions_usd: tuple[tuple[str, float], ...]
    wallet_usd: float


@dataclass(frozen=True, slots=True)
class PerpBook:
    params: PerpParams
    markets: dict[str, PerpMarketSpec]
    accounts: tuple[PerpAccountSpec, ...]
    source: str = ""
    wallet_asset: str = SETTLEMENT_TOKEN
    protocol: str = "perp-v2"

    def fixed_prices_e8(self) -> dict[str, int]:
        """Markets at a fixed price: none (every mark follows a replayed symbol)."""
        return {}

    @property
    def symbols(self) -> list[str]:
        """The replayed symbols the book's marks need."""
        return sorted({m.price_symbol for m in self.markets.values()})

    def asset_of_symbol(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for b, m in self.markets.items():
            out.setdefault(m.price_symbol, []).append(b)
        return out

    def liquidation_penalty(self, asset: str) -> float:
        """What a liquidation of a position in ``asset`` takes, as a fraction of the notional closed: the clearing
        house's penalty ratio (every market; the daemon's :func:`keeper.accounts.costs.liquidation_penalty`)."""
        return self.params.liquidation_penalty_ratio_e6 / 1e6


MARKET_KEYS = {"price", "fee_ratio", "premium_gap"}
ACCOUNT_KEYS = {"name", "collateral_usd", "positions", "positions_usd", "leverage", "leverages", "wallet_usd"}


def _market(base: str, raw: dict, where: str) -> PerpMarketSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table", field=where)
    unknown = set(raw) - MARKET_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}", field=where)
    if not isinstance(raw.get("price"), str) or not raw["price"].strip():
        raise ConfigError(f'{where}.price: give the replayed symbol the mark follows (price = "ETH")', field=where)
    fee = _num(raw, "fee_ratio", where, lo=0.0, hi=0.1, default=0.001)
    gap = _num(raw, "premium_gap", where, lo=0.0, hi=1.0, default=0.0)
    return PerpMarketSpec(base, raw["price"].strip().upper(), round(fee * 1e6), gap)


def _signed(raw: object, where: str, markets: dict[str, PerpMarketSpec]) -> tuple[tuple[str, float], ...]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where} must be a table {{ BASE = amount }} (+ long, - short)", field=where)
    out = []
    by_upper = {b.upper(): b for b in markets}
    for b, v in raw.items():
        if b.upper() not in by_upper:
            raise ConfigError(f"{where}.{b}: not a market of [perp.markets]", field=f"{where}.{b}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v == 0:
            raise ConfigError(f"{where}.{b} = {v!r}: must be a non-zero number (+ long, - short)", field=f"{where}.{b}")
        out.append((by_upper[b.upper()], float(v)))
    return tuple(out)


def has_perp_accounts(data: dict) -> bool:
    return bool(data.get("perp_accounts"))


def parse_perp_book(data: dict, source: str = "") -> PerpBook:
    """Build a :class:`PerpBook` from parsed TOML (see the module docstring)."""
    perp = data.get("perp") or {}
    params = PerpParams(
        mm_ratio_e6=round(_num(perp, "mm_ratio", "perp", lo=0.001, hi=0.5, default=0.0625) * 1e6),
        im_ratio_e6=round(_num(perp, "im_ratio", "perp", lo=0.001, hi=1.0, default=0.10) * 1e6),
        liquidation_penalty_ratio_e6=round(
            _num(perp, "liquidation_penalty", "perp", lo=0, hi=0.5, default=0.025) * 1e6
        ),
    )
    if params.im_ratio_e6 < params.mm_ratio_e6:
        raise ConfigError("perp.im_ratio must be >= perp.mm_ratio (Curie's rule)", field="perp.im_ratio")
    raw_markets = perp.get("markets") or {}
    if not raw_markets:
        raise ConfigError(f"{source}: a Perp v2 book needs [perp.markets.<BASE>]", field="perp.markets")
    markets = {b: _market(b, m, f"perp.markets.{b}") for b, m in raw_markets.items()}
    wallet = perp.get("wallet") or {}
    per_account = _num(wallet, "per_account_usd", "perp.wallet", lo=0, hi=1e12, default=20_000.0)
    accounts: list[PerpAccountSpec] = []
    for i, raw in enumerate(data.get("perp_accounts") or []):
        where = f"perp_accounts[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must be a table", field=where)
        unknown = set(raw) - ACCOUNT_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}", field=where)
        collateral = _num(raw, "collateral_usd", where, lo=1.0, hi=1e12)
        wallet_usd = _num(raw, "wallet_usd", where, lo=0, hi=1e12, default=per_account)
        levs = raw.get("leverages", [raw["leverage"]] if "leverage" in raw else None)
        if ("positions_usd" in raw) == ("positions" in raw) or ("positions" in raw) != (levs is not None):
            raise ConfigError(
                f"{where}: give positions_usd = {{ BASE = +/-USD }}, or positions = {{ BASE = weight }} with "
                "leverage(s)",
                field=f"{where}.positions",
            )
        template = str(raw.get("name", f"perp-{i}" + ("-{leverage}x" if levs and len(levs) > 1 else "")))
        sized: list[tuple[float | None, tuple[tuple[str, float], ...]]]
        if levs is None:
            sized = [(None, _signed(raw["positions_usd"], f"{where}.positions_usd", markets))]
        else:
            weights = _signed(raw["positions"], f"{where}.positions", markets)
            total = sum(abs(w) for _, w in weights)
            sized = []
            for lev in levs if isinstance(levs, list) else [levs]:
                if isinstance(lev, bool) or not isinstance(lev, (int, float)) or not 0 < lev <= 100:
                    raise ConfigError(f"{where}.leverage = {lev!r}: must be in (0, 100]", field=f"{where}.leverage")
                notional = collateral * lev
                sized.append((lev, tuple((b, notional * w / total) for b, w in weights)))
        for lev, positions in sized:
            name = template.format(leverage=f"{lev:g}" if lev is not None else "").lower()
            if any(a.name == name for a in accounts):
                raise ConfigError(f"{where}: account name {name!r} is used twice", field=f"{where}.name")
            accounts.append(PerpAccountSpec(name, collateral, positions, wallet_usd))
    if not accounts:
        raise ConfigError(f"{source}: the book has no [[perp_accounts]]", field="perp_accounts")
    return PerpBook(params, markets, tuple(accounts), source)


def load_perp_book(path: str | Path | None = None) -> PerpBook:
    """Read a Perp v2 book TOML (``None``: ``examples/perp_book.toml``)."""
    data, source = read_book_toml(path or DEFAULT_PERP_BOOK_PATH)
    return parse_perp_book(data, source if path else "examples/perp_book.toml")
