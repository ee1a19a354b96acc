"""Long price histories for the stress gap's tail (``[risk.long_history]``), read and fitted once at start.

``[risk.long_history] ETH = "data/eth_1h.csv"`` names, per market symbol, a CSV of years of that asset's bars
(the replay's format: ``unix_s, open, high, low, close``). At start each file is read, its closes (what an
oracle reports at each bar) are taken as rounds at the bar interval, and a :class:`~keeper.risk.tails.LongTail`
is fitted on the bars before now; the stress gap of that market is then the worse of its recent oracle rounds
and this tail, and the tail is its fallback while the keeper has too few rounds (:mod:`keeper.risk.gaps`). A
missing, unreadable or too short file stops the start with one line naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from keeper.errors import ConfigError, InputError
from keeper.risk.tails import LongTail

log = structlog.get_logger(__name__)

# an exchange's years of bars hold outages; the move across one can only overstate a per-round tail
MAX_GAP_S = 7 * 86_400.0


def load_long_tails(files: Mapping[str, str], now_s: float, tail_probability: float) -> dict[str, LongTail]:
    """Symbol (upper case) -> tail fitted on that file's bars before ``now_s``."""
    from keeper.replay.prices import load_bars  # the CSV reader the replay uses (one format, one parser)

    tails: dict[str, LongTail] = {}
    for symbol, path in files.items():
        field = f"risk.long_history.{symbol}"
        try:
            bars = load_bars(path, symbol.upper(), max_gap_s=MAX_GAP_S)
        except InputError as exc:
            raise ConfigError(f"{field}: {exc}", field=field) from None
        keep = bars.t_s < now_s
        tail = LongTail.fit(bars.t_s[keep], bars.close[keep], source=f"{path}, {int(keep.sum()):,} bars")
        if tail is None:
            raise ConfigError(
                f"{field}: {path} holds too few bars before now to fit a tail (give years of bars)", field=field
            )
        fall, rise = tail.side_gaps(tail_probability, tail.round_interval_s)
        log.info(
            "long_history_tail",
            symbol=symbol.upper(),
            source=tail.source,
            round_interval_s=tail.round_interval_s,
            fall_one_round=round(fall, 4),
            rise_one_round=round(rise, 4),
            probability=tail_probability,
        )
        tails[symbol.upper()] = tail
    return tails
