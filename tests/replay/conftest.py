"""Shared inputs of the replay tests, as fixtures: the real bars copied into tests/data (see
tests/data/PROVENANCE.md) and a shorter window of them around the sharpest drop, for the tests that only need a
crash to happen (the CLI runs, the fast replay's outcomes and timing, the bound against the policies)."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"
FILES = {"ETH": "ftx_2022-11-07T12_ETHUSDT_5m.csv", "BTC": "ftx_2022-11-07T12_BTCUSDT_5m.csv"}
# hours after the window's start (2022-11-07 12:00 UTC): 6 h of warm-up, then ETH's fall from about $1,480 to $1,310
# (2022-11-08 16:00-21:00 UTC) and the hours after it
CRASH_HOURS = (22, 36)


@pytest.fixture(scope="session")
def ftx_csv() -> dict[str, Path]:
    """``{"ETH": path, "BTC": path}``: the 48 h FTX-crash window (5-minute bars)."""
    paths = {symbol: DATA / name for symbol, name in FILES.items()}
    assert all(p.is_file() for p in paths.values()), paths
    return paths


@pytest.fixture(scope="session")
def ftx_bars(ftx_csv):
    """The 48 h FTX-crash window (5-minute bars) of ETH and BTC."""
    from keeper.replay.prices import load_bars

    return [load_bars(ftx_csv["ETH"], "ETH"), load_bars(ftx_csv["BTC"], "BTC")]


@pytest.fixture(scope="session")
def crash_csv(ftx_csv, tmp_path_factory) -> dict[str, Path]:
    """``{"ETH": path, "BTC": path}``: 14 h of the same bars (``CRASH_HOURS``), enough for the CLI tests'
    claims (an unkept book is liquidated, a funded buffer is not) at a third of the full window's cost."""
    out = tmp_path_factory.mktemp("crash")
    first, last = (h * 12 for h in CRASH_HOURS)  # 12 five-minute bars an hour
    paths = {}
    for symbol, src in ftx_csv.items():
        header, *rows = src.read_text().splitlines()
        paths[symbol] = out / src.name
        paths[symbol].write_text("\n".join([header, *rows[first:last]]) + "\n")
    return paths


@pytest.fixture(scope="session")
def crash_bars(crash_csv):
    """The 14 h crash window (``crash_csv``) of ETH and BTC as bars: 6 h of warm-up, then the fall and after."""
    from keeper.replay.prices import load_bars

    return [load_bars(crash_csv["ETH"], "ETH"), load_bars(crash_csv["BTC"], "BTC")]
