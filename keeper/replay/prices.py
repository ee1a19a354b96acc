"""Price bars from CSV files, and the oracle rounds a replay pushes for each bar.

CSV format (the one of the bar files in ``tests/data``, see its PROVENANCE.md): a header
``timestamp_utc,unix_s,open,high,low,close,volume`` (``timestamp_utc`` and ``volume`` are optional; the others
are required, in any order), one bar per line,
``unix_s`` = bar open in seconds, prices in USD (or USDT). Bad input raises :class:`keeper.errors.InputError`
whose message names the file and the 1-based line: missing columns, unparsable or non-positive numbers,
``high < max(open, close)`` or ``low > min(open, close)``, timestamps that do not increase, and gaps longer
than ``max_gap_s`` (default: ``DEFAULT_MAX_GAP_BARS`` times the file's median bar interval). A missing bar is
never filled: the caller decides whether a gap is acceptable.

Intra-bar order. A bar only tells us its four prices, not the path between them; a replay that pushed the
close alone would miss every intra-bar extreme. Each bar becomes four oracle rounds, at ``t``, ``t + d/4``,
``t + d/2`` and ``t + 3d/4`` (``d`` = bar length):

* ``"adverse"`` (default): ``O, H, L, C`` when ``close < open`` and ``O, L, H, C`` otherwise. The bar's whole
  range is crossed in ONE round, in the direction of the bar's net move: a long in a falling bar first sees
  the high (a keeper may feel safe, a release policy may release) and then the full drop to the low with no
  round in between to react; a short in a rising bar gets the mirror image. This is the adverse order for
  the side that loses on the bar; both extremes are always pushed, so every position's worst price of the
  bar is seen by the liquidator whatever its side.
* ``"long_adverse"``: always ``O, H, L, C``; ``"short_adverse"``: always ``O, L, H, C`` (for one-sided books
  or sensitivity checks).
"""

from __future__ import annotations

import csv
import math
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from keeper.errors import InputError
from keeper.risk.tails import LongTail

REQUIRED_COLUMNS = ("unix_s", "open", "high", "low", "close")
DEFAULT_MAX_GAP_BARS = 4.0
INTRABAR_ORDERS = ("adverse", "long_adverse", "short_adverse")
SUBROUNDS_PER_BAR = 4


@dataclass(frozen=True, slots=True)
class Bars:
    """OHLC bars of one asset, column arrays (``t_s`` = bar open, int seconds; prices float USD)."""

    symbol: str
    source: str
    t_s: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    step_s: int  # median bar interval

    def __len__(self) -> int:
        return int(self.t_s.size)

    def slice_time(self, start_s: int, end_s: int) -> Bars:
        """Bars whose open lies in ``[start_s, end_s]``."""
        m = (self.t_s >= start_s) & (self.t_s <= end_s)
        return Bars(
            self.symbol, self.source, self.t_s[m], self.open[m], self.high[m], self.low[m], self.close[m], self.step_s
        )


def _utc_text(t_s: int | None) -> str:
    if t_s is None:
        return "..."
    return datetime.fromtimestamp(t_s, UTC).strftime("%Y-%m-%d %H:%M")


def _num(text: str, path: Path, line: int, column: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise InputError(f"{path}:{line}: column {column!r}: cannot parse {text!r} as a number") from None
    if not math.isfinite(v):
        raise InputError(f"{path}:{line}: column {column!r}: {text!r} is not a finite number")
    return v


def load_bars(
    path: str | Path,
    symbol: str,
    *,
    max_gap_s: float | None = None,
    max_gap_bars: float = DEFAULT_MAX_GAP_BARS,
    start_s: int | None = None,
    end_s: int | None = None,
) -> Bars:
    """Read and validate one OHLC CSV; raises :class:`InputError` naming the file and line of the first problem.

    ``start_s`` / ``end_s`` keep only the bars that open in ``[start_s, end_s)`` (``None``: no bound): every row
    of the file is still checked, the gaps and the interval only between the bars kept (years of an exchange's
    bars hold outages; a window cut from them need not). ``max_gap_s`` (default ``max_gap_bars`` x the median
    interval) is the longest accepted distance between consecutive bar opens.
    """
    p = Path(path)
    try:
        fh = p.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{p}: cannot open price file: {exc.strerror or exc}") from None
    with fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise InputError(f"{p}:1: empty file, expected a header with {', '.join(REQUIRED_COLUMNS)}") from None
        cols = [h.strip().lower() for h in header]
        missing = [c for c in REQUIRED_COLUMNS if c not in cols]
        if missing:
            raise InputError(
                f"{p}:1: bad header {','.join(header)!r}: missing column(s) {', '.join(missing)} "
                f"(expected timestamp_utc,unix_s,open,high,low,close,volume)"
            )
        idx = {c: cols.index(c) for c in REQUIRED_COLUMNS}
        # typed arrays, not lists: 8 bytes a value (a list of floats holds 32), so years of minute bars load in tens
        # of MB rather than hundreds
        t = array("q")
        o = array("d")
        h = array("d")
        lo = array("d")
        c = array("d")
        lines = array("q")
        first_s: int | None = None  # the first and last open of the rows read, kept or not
        last_s: int | None = None
        last_line = 0
        for row in reader:
            line = reader.line_num
            if not row or all(not x.strip() for x in row):
                continue
            if len(row) < len(cols):
                raise InputError(f"{p}:{line}: expected {len(cols)} fields, found {len(row)}")
            ts = _num(row[idx["unix_s"]], p, line, "unix_s")
            if ts != int(ts):
                raise InputError(f"{p}:{line}: column 'unix_s': {row[idx['unix_s']]!r} is not whole seconds")
            vals = {k: _num(row[idx[k]], p, line, k) for k in ("open", "high", "low", "close")}
            for k, v in vals.items():
                if v <= 0:
                    raise InputError(f"{p}:{line}: column {k!r}: price {v} must be positive")
            if vals["high"] < vals["low"]:
                raise InputError(f"{p}:{line}: high {vals['high']} < low {vals['low']}")
            if vals["high"] < max(vals["open"], vals["close"]) or vals["low"] > min(vals["open"], vals["close"]):
                raise InputError(
                    f"{p}:{line}: open/close outside [low, high]: o={vals['open']} h={vals['high']} "
                    f"l={vals['low']} c={vals['close']}"
                )
            if last_s is not None and ts <= last_s:
                raise InputError(
                    f"{p}:{line}: timestamp {int(ts)} does not increase (previous bar at line {last_line}: {last_s})"
                )
            last_s, last_line = int(ts), line
            first_s = last_s if first_s is None else first_s
            if (start_s is not None and ts < start_s) or (end_s is not None and ts >= end_s):
                continue
            t.append(int(ts))
            o.append(vals["open"])
            h.append(vals["high"])
            lo.append(vals["low"])
            c.append(vals["close"])
            lines.append(line)
    if len(t) < 2:
        if first_s is not None and (start_s is not None or end_s is not None):
            raise InputError(
                f"{p}: needs at least 2 bars in the window [{_utc_text(start_s)}, {_utc_text(end_s)}), found {len(t)}"
                f" (the file's bars open from {_utc_text(first_s)} to {_utc_text(last_s)})"
            )
        raise InputError(f"{p}: needs at least 2 bars, found {len(t)}")
    ta = np.array(t, dtype=np.int64)
    diffs = np.diff(ta)
    step = int(np.median(diffs))
    limit = max_gap_s if max_gap_s is not None else max_gap_bars * step
    bad = np.nonzero(diffs > limit)[0]
    if bad.size:
        i = int(bad[0])
        raise InputError(
            f"{p}:{lines[i + 1]}: gap of {int(diffs[i])} s after the bar at line {lines[i]} "
            f"(median interval {step} s, tolerance {limit:g} s); a missing bar is not filled — "
            f"pass a larger --max-gap-s or cut the window"
        )
    return Bars(
        symbol=symbol,
        source=str(p),
        t_s=ta,
        open=np.array(o, dtype=np.float64),
        high=np.array(h, dtype=np.float64),
        low=np.array(lo, dtype=np.float64),
        close=np.array(c, dtype=np.float64),
        step_s=step,
    )


def bar_path(o: float, h: float, lo: float, c: float, order: str = "adverse") -> tuple[float, float, float, float]:
    """The four prices a bar is pushed as, in the intra-bar order documented in the module docstring."""
    if order == "adverse":
        down = c < o
    elif order == "long_adverse":
        down = True
    elif order == "short_adverse":
        down = False
    else:
        raise InputError(f"unknown intra-bar order {order!r}; allowed: {', '.join(INTRABAR_ORDERS)}")
    return (o, h, lo, c) if down else (o, lo, h, c)


def to_e8(price: float) -> int:
    """USD float -> e8 integer (round half to even of the decimal value, as the CSV is in cents or finer)."""
    return round(price * 1e8)


@dataclass(frozen=True, slots=True)
class Round:
    """One replay round: the time and the oracle answers pushed at it (symbol -> price e8).

    ``closes`` lists the symbols whose bar completes at this round (its close is known from here on).
    """

    t_s: int
    prices_e8: dict[str, int]
    closes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RoundGrid:
    """The oracle rounds of several series merged on one clock, as columns (no Python object per round).

    ``t_s[i]`` is round ``i``'s time; ``has[i, j]`` whether symbol ``symbols[j]`` is pushed at it, at
    ``price_e8[i, j]`` (0 where it is not); ``closes[i, j]`` whether that symbol's bar completes at it. About 30
    bytes a round for two symbols, where a list of :class:`Round` objects took over a kilobyte. :meth:`round` and
    :meth:`iter_rounds` give the same :class:`Round` objects :func:`build_rounds` lists, made when asked for.
    """

    symbols: tuple[str, ...]
    t_s: np.ndarray  # int64 (n,)
    price_e8: np.ndarray  # int64 (n, len(symbols))
    has: np.ndarray  # bool (n, len(symbols))
    closes: np.ndarray  # bool (n, len(symbols))

    def __len__(self) -> int:
        return int(self.t_s.size)

    def round(self, i: int) -> Round:
        """Round ``i`` (negative indices count from the end)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"round {i} out of range ({len(self)} rounds)")
        return next(self.iter_rounds(i % len(self), i % len(self) + 1))

    def iter_rounds(self, lo: int = 0, hi: int | None = None, chunk: int = 4096) -> Iterator[Round]:
        """Rounds ``lo .. hi - 1`` in order, converted from the columns ``chunk`` rounds at a time (0: all at once)."""
        n = len(self)
        hi = n if hi is None else min(hi, n)
        step = chunk if chunk > 0 else max(1, hi - lo)
        syms = self.symbols
        for a in range(max(0, lo), hi, step):
            b = min(hi, a + step)
            ts = self.t_s[a:b].tolist()
            px = self.price_e8[a:b].tolist()
            has = self.has[a:b].tolist()
            cl = self.closes[a:b].tolist()
            for t, p, hs, c in zip(ts, px, has, cl, strict=True):
                yield Round(
                    t,
                    {s: p[j] for j, s in enumerate(syms) if hs[j]},
                    tuple(s for j, s in enumerate(syms) if c[j]),
                )

    def latest_price_usd(self, symbol: str, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """The latest known price (USD float) of ``symbol`` at every round of ``lo .. hi - 1``, known prices counted
        from round ``lo`` on (0.0 before the first)."""
        j = self.symbols.index(symbol)
        has = self.has[lo:hi, j]
        px = self.price_e8[lo:hi, j]
        last = np.maximum.accumulate(np.where(has, np.arange(has.size), -1)) if has.size else np.zeros(0, np.int64)
        out = np.zeros(has.size)
        known = last >= 0
        out[known] = px[last[known]].astype(np.float64) / 1e8
        return out


def build_round_grid(series: Sequence[Bars], order: str = "adverse", start_s: int | None = None) -> RoundGrid:
    """Merge the sub-rounds of every series on one clock (series updating at the same second share a round).

    Only the common window of all series is used (from the latest first bar to the earliest last bar),
    optionally from ``start_s`` on. Where two sub-rounds of one series fall on the same second (bars closer
    together than their median interval), the later bar's price is the one pushed. Vectorised: the same
    rounds :func:`build_rounds` lists, in arrays.
    """
    if not series:
        raise InputError("no price series given")
    if order not in INTRABAR_ORDERS:
        raise InputError(f"unknown intra-bar order {order!r}; allowed: {', '.join(INTRABAR_ORDERS)}")
    lo_t = max(int(b.t_s[0]) for b in series)
    hi_t = min(int(b.t_s[-1]) for b in series)
    if start_s is not None:
        lo_t = max(lo_t, start_s)
    if hi_t <= lo_t:
        raise InputError(
            "the price series do not overlap in time: "
            + "; ".join(f"{b.symbol} {int(b.t_s[0])}..{int(b.t_s[-1])}" for b in series)
        )
    per_series = []
    for b in series:
        d = b.step_s
        offs = np.array([0, d // 4, d // 2, (3 * d) // 4], dtype=np.int64)
        keep = (b.t_s >= lo_t) & (b.t_s <= hi_t)
        t0 = b.t_s[keep].astype(np.int64)
        o, h, lo, c = b.open[keep], b.high[keep], b.low[keep], b.close[keep]
        if order == "adverse":
            down = c < o
        else:
            down = np.full(t0.size, order == "long_adverse")
        path = np.stack([o, np.where(down, h, lo), np.where(down, lo, h), c], axis=1)  # bar_path, per bar
        times = (t0[:, None] + offs[None, :]).ravel()
        prices = np.rint(path * 1e8).astype(np.int64).ravel()  # to_e8: round half to even, exact below 2**53
        del path, down, o, h, lo, c
        if times.size > 1 and not bool((times[1:] > times[:-1]).all()):
            # sub-rounds that run past the next bar's open, or share a second: in time order, and the last write
            # of a second wins, as a dict filled bar after bar would keep it (a stable sort keeps the bar order)
            order_ = np.argsort(times, kind="stable")
            times, prices = times[order_], prices[order_]
            last = np.append(times[1:] != times[:-1], True)
            times, prices = times[last], prices[last]
        per_series.append((times, prices, t0 + offs[-1]))
    t_all = per_series[0][0]
    if any(u.size != t_all.size or not np.array_equal(u, t_all) for u, _, _ in per_series[1:]):
        t_all = np.sort(np.concatenate([u for u, _, _ in per_series]))  # np.unique hashes: 20 s for 8M
        t_all = t_all[np.append(True, t_all[1:] != t_all[:-1])]
    n, m = t_all.size, len(series)
    price_e8 = np.zeros((n, m), dtype=np.int64)
    has = np.zeros((n, m), dtype=bool)
    closes = np.zeros((n, m), dtype=bool)
    for j, (uniq, px, close_t) in enumerate(per_series):
        at = np.searchsorted(t_all, uniq)
        price_e8[at, j] = px
        has[at, j] = True
        closes[np.searchsorted(t_all, close_t), j] = True
    return RoundGrid(tuple(b.symbol for b in series), t_all, price_e8, has, closes)


def build_rounds(series: Sequence[Bars], order: str = "adverse", start_s: int | None = None) -> list[Round]:
    """Merge the sub-rounds of every series on one clock (series updating at the same second share a round).

    Only the common window of all series is used (from the latest first bar to the earliest last bar),
    optionally from ``start_s`` on. A list of :class:`Round` objects (about a kilobyte each): a long replay
    walks :func:`build_round_grid` instead.
    """
    return list(build_round_grid(series, order, start_s).iter_rounds())


def long_tail_before(bars: Bars, before_s: int, order: str = "adverse") -> LongTail | None:
    """The asset's long-history tail (:class:`keeper.risk.tails.LongTail`) from the bars that open strictly before
    ``before_s`` (a replay calibrates it on data before the window it scores: no look-ahead), at the round interval
    the replay gives them (sub-rounds of each bar, :func:`build_round_grid`); ``None`` with too little history."""
    older = bars.slice_time(int(bars.t_s[0]) if len(bars) else 0, before_s - 1)
    if len(older) < 2:
        return None
    grid = build_round_grid([older], order)
    times = grid.t_s.tolist()
    prices = grid.price_e8[:, 0].tolist()
    first, last = _utc(int(older.t_s[0])), _utc(int(older.t_s[-1]))
    return LongTail.fit(times, prices, source=f"{bars.symbol} {first}..{last}, {len(older):,} bars of {bars.source}")


def _utc(t_s: int) -> str:
    return datetime.fromtimestamp(t_s, UTC).strftime("%Y-%m-%d")
