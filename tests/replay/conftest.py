"""Shared paths for the replay tests (real bars copied into tests/data, see tests/data/PROVENANCE.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"
ETH_CSV = DATA / "ftx_2022-11-07T12_ETHUSDT_5m.csv"
BTC_CSV = DATA / "ftx_2022-11-07T12_BTCUSDT_5m.csv"


@pytest.fixture(scope="session")
def ftx_bars():
    """The 48 h FTX-crash window (5-minute bars) of ETH and BTC."""
    from keeper.replay.prices import load_bars

    return [load_bars(ETH_CSV, "ETH"), load_bars(BTC_CSV, "BTC")]
