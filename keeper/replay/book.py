"""The book a replay protects: markets, positions and wallets, from a TOML file (default:
keeper/data/default_book.toml).

Format::

    [wallet]
    per_account_usd = 100000.0          # every account's reserve (USD); [wallets] overrides per account
    [wallets]
    "long-50x" = 20000.0
    [markets.ETH]                       # devchain values when omitted
    market_id = 0
    maintenance_margin = 0.005          # of current notional
    max_leverage = 50.0
    liquidation_penalty = 0.01          # of notional, paid to the liquidator
    fee_rate_annual = 0.10              # borrow fee, of entry notional per 365-day year
    heartbeat_s = 3600
    [defaults]
    notional_usd = 100000.0
    account = "{side}-{leverage}x"      # template ({symbol}, {side}, {leverage})
    [[positions]]
    symbol = "ETH"
    side = "long"                       # or "short"
    leverages = [3, 5, 10]              # or leverage = 10
    notional_usd = 50000.0              # optional, else [defaults]
    account = "alice"                   # optional, else the template

A position opens with ``collateral = ceil(notional / leverage)`` at the first replayed price. Bad values
raise :class:`keeper.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

from keeper.domain import SECONDS_PER_YEAR, WAD, Market, Side
from keeper.errors import ConfigError

DEFAULT_MARKET = {
    "maintenance_margin": 0.005,
    "max_leverage": 50.0,
    "liquidation_penalty": 0.01,
    "fee_rate_annual": 0.10,
    "heartbeat_s": 3600,
}
DEFAULT_MARKET_IDS = {"ETH": 0, "BTC": 1}
DEFAULT_BOOK_PATH = Path(__file__).resolve().parent.parent / "data" / "default_book.toml"


@dataclass(frozen=True, slots=True)
class BookPosition:
    """One position to open at the start of the replay."""

    account: str
    symbol: str
    side: Side
    leverage: float
    notional_e6: int

    @property
    def label(self) -> str:
        return f"{self.account}:{self.symbol}:{self.side.value}:{self.leverage:g}x"


@dataclass(frozen=True, slots=True)
class Book:
    """Markets by symbol, positions to open, and each account's wallet (USD e6)."""

    markets: dict[str, Market]
    positions: tuple[BookPosition, ...]
    wallets_e6: dict[str, int]
    source: str = ""

    @property
    def accounts(self) -> tuple[str, ...]:
        return tuple(sorted({p.account for p in self.positions}))

    def market(self, symbol: str) -> Market:
        return self.markets[symbol]


def _wad(x: float) -> int:
    return round(x * WAD)


def _number(d: dict, key: str, where: str, *, lo: float, hi: float) -> float:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= float(v) <= hi):
        raise ConfigError(f"{where}.{key} = {v!r}: must be a number in [{lo:g}, {hi:g}]", field=f"{where}.{key}")
    return float(v)


def _market(symbol: str, raw: dict, where: str) -> Market:
    d = {**DEFAULT_MARKET, **raw}
    unknown = set(d) - set(DEFAULT_MARKET) - {"market_id", "feed"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}", field=where)
    if "market_id" not in d:
        if symbol not in DEFAULT_MARKET_IDS:
            raise ConfigError(f"{where}.market_id is required for {symbol}", field=f"{where}.market_id")
        d["market_id"] = DEFAULT_MARKET_IDS[symbol]
    mm = _number(d, "maintenance_margin", where, lo=1e-6, hi=0.5)
    lev = _number(d, "max_leverage", where, lo=1.0, hi=1000.0)
    pen = _number(d, "liquidation_penalty", where, lo=0.0, hi=0.5)
    fee = _number(d, "fee_rate_annual", where, lo=0.0, hi=10.0)
    hb = _number(d, "heartbeat_s", where, lo=1, hi=10**9)
    return Market(
        market_id=int(d["market_id"]),
        symbol=symbol,
        maintenance_margin_wad=_wad(mm),
        max_leverage_wad=_wad(lev),
        liquidation_penalty_wad=_wad(pen),
        fee_rate_per_s_wad=int(fee * WAD) // SECONDS_PER_YEAR,
        heartbeat_s=int(hb),
        feed=str(d.get("feed", "")),
    )


def parse_book(data: dict, source: str = "") -> Book:
    """Build a :class:`Book` from parsed TOML (see the module docstring)."""
    raw_markets = data.get("markets") or {}
    defaults = data.get("defaults") or {}
    raw_positions = data.get("positions") or []
    if not raw_positions:
        raise ConfigError(f"{source}: the book has no [[positions]]", field="positions")
    symbols = {str(p.get("symbol", "")).upper() for p in raw_positions}
    markets: dict[str, Market] = {}
    for sym in sorted(symbols | {k.upper() for k in raw_markets}):
        markets[sym] = _market(sym, raw_markets.get(sym, {}), f"markets.{sym}")
    ids = [m.market_id for m in markets.values()]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{source}: two markets share a market_id ({ids})", field="markets")
    positions: list[BookPosition] = []
    seen: set[tuple[str, str]] = set()
    for i, p in enumerate(raw_positions):
        where = f"positions[{i}]"
        sym = str(p.get("symbol", "")).upper()
        if not sym:
            raise ConfigError(f"{where}.symbol is required", field=f"{where}.symbol")
        side_s = str(p.get("side", "")).lower()
        if side_s not in ("long", "short"):
            raise ConfigError(f"{where}.side = {p.get('side')!r}: must be 'long' or 'short'", field=f"{where}.side")
        levs = p.get("leverages", [p["leverage"]] if "leverage" in p else None)
        if not levs:
            raise ConfigError(f"{where}: give leverage or leverages", field=f"{where}.leverage")
        notional = p.get("notional_usd", defaults.get("notional_usd", 100_000.0))
        if not isinstance(notional, (int, float)) or notional <= 0:
            raise ConfigError(f"{where}.notional_usd = {notional!r}: must be > 0", field=f"{where}.notional_usd")
        template = str(p.get("account", defaults.get("account", "{side}-{leverage}x")))
        max_lev = markets[sym].max_leverage
        for lev in levs:
            if isinstance(lev, bool) or not isinstance(lev, (int, float)) or not (1.0 <= lev <= max_lev):
                raise ConfigError(
                    f"{where}.leverage = {lev!r}: must be in [1, {max_lev:g}] (the market's max leverage)",
                    field=f"{where}.leverage",
                )
            account = template.format(symbol=sym, side=side_s, leverage=f"{lev:g}").lower()
            if (account, sym) in seen:
                raise ConfigError(
                    f"{where}: account {account!r} already holds a {sym} position (one per account and market)",
                    field=f"{where}.account",
                )
            seen.add((account, sym))
            positions.append(BookPosition(account, sym, Side(side_s), float(lev), round(notional * 1e6)))
    per_account = (data.get("wallet") or {}).get("per_account_usd", 100_000.0)
    if not isinstance(per_account, (int, float)) or per_account < 0:
        raise ConfigError(f"wallet.per_account_usd = {per_account!r}: must be >= 0", field="wallet.per_account_usd")
    wallets = {p.account: round(per_account * 1e6) for p in positions}
    for acct, usd in (data.get("wallets") or {}).items():
        if not isinstance(usd, (int, float)) or usd < 0:
            raise ConfigError(f"wallets.{acct} = {usd!r}: must be >= 0", field=f"wallets.{acct}")
        wallets[acct.lower()] = round(usd * 1e6)
    return Book(markets=markets, positions=tuple(positions), wallets_e6=wallets, source=source)


def load_book(path: str | Path | None = None) -> Book:
    """Read a book TOML; ``None`` reads the packaged default (keeper/data/default_book.toml)."""
    if path is None:
        text = DEFAULT_BOOK_PATH.read_text(encoding="utf-8")
        source = "keeper/data/default_book.toml"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read book: {exc.strerror or exc}", field="book") from None
        source = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}", field="book") from None
    return parse_book(data, source)


def opening_collateral_e6(p: BookPosition) -> int:
    """``ceil(notional / leverage)`` in e6."""
    return math.ceil(p.notional_e6 / p.leverage)
