"""The inputs both kinds of ``keeper replay`` read (the reference book's and the account books'): the ``--prices``
files cut to ``--from`` / ``--until``, and the ``--long-history`` tails fitted on the bars before that window."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from keeper.errors import InputError
from keeper.replay.prices import Bars
from keeper.risk.tails import LongTail

# years of an exchange's bars hold outages (hours to days without a bar): the move across one is a move over a
# longer interval, which can only overstate the per-round tail, so long gaps are accepted in a long history
LONG_HISTORY_MAX_GAP_S = 7 * 86_400.0
_UTC_FORMATS = ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S")


def parse_prices(items: list[str]) -> dict[str, Path]:
    """``--prices SYMBOL=path.csv`` (repeated) -> symbol -> path."""
    out: dict[str, Path] = {}
    for item in items:
        sym, sep, path = item.partition("=")
        if not sep or not sym.strip() or not path.strip():
            raise InputError(f"--prices {item!r}: expected SYMBOL=path.csv (e.g. ETH=data/eth.csv)")
        out[sym.strip().upper()] = Path(path.strip())
    if not out:
        raise InputError("give at least one --prices SYMBOL=path.csv")
    return out


def parse_utc(text: str | None, option: str) -> int | None:
    """A UTC instant as unix seconds: ``2020-03-09``, ``2020-03-09T12:00[:00]`` (a trailing ``Z`` allowed) or
    unix seconds; ``None`` stays ``None``."""
    if text is None:
        return None
    raw = text.strip().removesuffix("Z")
    if raw.isdigit():
        return int(raw)
    for fmt in _UTC_FORMATS:
        try:
            return int(datetime.strptime(raw, fmt).replace(tzinfo=UTC).timestamp())
        except ValueError:
            continue
    raise InputError(f"{option} {text!r}: expected a UTC date or time (2020-03-09, 2020-03-09T12:00) or unix seconds")


def replay_window(start: str | None, until: str | None) -> tuple[int | None, int | None]:
    """``--from`` / ``--until`` as ``[start_s, end_s)`` in unix seconds, checked in order."""
    start_s, end_s = parse_utc(start, "--from"), parse_utc(until, "--until")
    if start_s is not None and end_s is not None and end_s <= start_s:
        raise InputError(f"--until {until!r} is not after --from {start!r}: give a window that ends after it starts")
    return start_s, end_s


def load_series(
    files: dict[str, Path],
    *,
    max_gap_s: float | None,
    window: tuple[int | None, int | None] = (None, None),
    console: Console,
    note: Callable[[str], None] | None = None,
) -> list[Bars]:
    """Each ``--prices`` file's bars that open inside ``window`` (the gaps checked only there); ``note`` gets one
    line per file (for logs and pipes, where the status spinner is not drawn)."""
    from keeper.replay.prices import load_bars

    series = []
    for sym, path in files.items():
        started = time.monotonic()
        with console.status(f"loading {sym} bars from {path}"):
            bars = load_bars(path, sym, max_gap_s=max_gap_s, start_s=window[0], end_s=window[1])
        series.append(bars)
        if note is not None:
            note(f"{sym}: {len(bars):,} bars from {path} ({time.monotonic() - started:.1f} s)")
    return series


def long_tails(items: list[str], series: list[Bars], order: str, max_gap_s: float | None) -> dict[str, LongTail]:
    """Symbol -> LongTail fitted on the ``--long-history`` bars that open before that symbol's replayed window (so
    the file of ``--prices`` itself may be given, with ``--from``)."""
    from keeper.replay.prices import load_bars, long_tail_before

    tails = {}
    by_symbol = {b.symbol: b for b in series}
    for sym, path in (parse_prices(items) if items else {}).items():
        if sym not in by_symbol:
            raise InputError(f"--long-history {sym}: no --prices {sym}=... to replay (give the same symbol)")
        window = by_symbol[sym]
        history = load_bars(path, sym, max_gap_s=max(max_gap_s or 0.0, LONG_HISTORY_MAX_GAP_S))
        tail = long_tail_before(history, int(window.t_s[0]), order)
        if tail is None:
            raise InputError(
                f"--long-history {sym}={path}: too few bars before the replayed window"
                " (it starts at the first bar of --prices, or at --from) to fit a tail"
            )
        tails[sym] = tail
        down, up = (tail.down[0][1], tail.up[0][1])
        print(
            f"long-history tail {sym}: {tail.source}; one-round falls: u={down.threshold:.4f} xi={down.shape:.3f},"
            f" rises: u={up.threshold:.4f} xi={up.shape:.3f}",
            file=sys.stderr,
        )
    return tails
