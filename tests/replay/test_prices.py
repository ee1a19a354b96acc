"""CSV loading, validation errors naming file and line, and the adverse intra-bar order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from keeper.errors import InputError
from keeper.replay.prices import SUBROUNDS_PER_BAR, bar_path, build_rounds, load_bars

HEADER = "timestamp_utc,unix_s,open,high,low,close,volume\n"


def _write(tmp_path: Path, body: str, header: str = HEADER) -> Path:
    p = tmp_path / "bars.csv"
    p.write_text(header + body, encoding="utf-8")
    return p


class TestLoadBars:
    def test_real_window_loads(self, ftx_bars):
        """The copied FTX window has 576 five-minute bars per asset with the README's first row."""
        eth, btc = ftx_bars
        assert len(eth) == 576 and len(btc) == 576
        assert eth.step_s == 300
        # first row of tests/data/ftx_2022-11-07T12_ETHUSDT_5m.csv
        assert (int(eth.t_s[0]), eth.open[0], eth.high[0], eth.low[0], eth.close[0]) == (
            1667822400,
            1579.99,
            1580.56,
            1577.93,
            1580.37,
        )

    def test_bad_header_names_file_and_line_1(self, tmp_path):
        """A header without the price columns is rejected at line 1 with the missing names."""
        p = _write(tmp_path, "1,2,3\n", header="a,b,c\n")
        with pytest.raises(InputError, match=r"bars\.csv:1: bad header.*missing column\(s\) unix_s, open"):
            load_bars(p, "ETH")

    def test_unparsable_number_names_line(self, tmp_path):
        """A non-numeric price names its 1-based line and column."""
        p = _write(tmp_path, "x,60,1,2,0.5,1,0\nx,120,1,abc,0.5,1,0\n")
        with pytest.raises(InputError, match=r"bars\.csv:3: column 'high': cannot parse 'abc'"):
            load_bars(p, "ETH")

    def test_high_below_low(self, tmp_path):
        """high < low is rejected with the line."""
        p = _write(tmp_path, "x,60,1,2,0.5,1,0\nx,120,1,0.9,1.1,1,0\n")
        with pytest.raises(InputError, match=r"bars\.csv:3: high 0\.9 < low 1\.1"):
            load_bars(p, "ETH")

    def test_close_outside_range(self, tmp_path):
        """An open or close outside [low, high] is rejected."""
        p = _write(tmp_path, "x,60,1,2,0.5,1,0\nx,120,1,2,0.5,3,0\n")
        with pytest.raises(InputError, match=r"bars\.csv:3: open/close outside"):
            load_bars(p, "ETH")

    def test_non_increasing_timestamp(self, tmp_path):
        """A timestamp equal to the previous one names both lines."""
        p = _write(tmp_path, "x,60,1,2,0.5,1,0\nx,120,1,2,0.5,1,0\nx,120,1,2,0.5,1,0\n")
        with pytest.raises(InputError, match=r"bars\.csv:4: timestamp 120 does not increase \(previous bar at line 3"):
            load_bars(p, "ETH")

    def test_gap_beyond_tolerance(self, tmp_path):
        """A gap longer than 4 median intervals is an error naming the line; --max-gap-s accepts it."""
        rows = "".join(f"x,{60 * i},1,2,0.5,1,0\n" for i in range(1, 6)) + "x,600,1,2,0.5,1,0\n"
        p = _write(tmp_path, rows)
        with pytest.raises(InputError, match=r"bars\.csv:7: gap of 300 s .*median interval 60 s, tolerance 240 s"):
            load_bars(p, "ETH")
        assert len(load_bars(p, "ETH", max_gap_s=300)) == 6

    def test_a_window_keeps_the_bars_opening_inside_it_and_checks_gaps_only_there(self, tmp_path, ftx_csv, ftx_bars):
        """``start_s`` / ``end_s`` keep the bars opening in ``[start_s, end_s)``, the same as the whole file sliced; a
        gap before the window is accepted, a bad row outside it is still an error, and an empty window names the
        file's span."""
        eth = ftx_bars[0]
        cut = load_bars(ftx_csv["ETH"], "ETH", start_s=int(eth.t_s[100]), end_s=int(eth.t_s[200]))
        assert len(cut) == 100 and cut.step_s == 300
        assert np.array_equal(cut.t_s, eth.t_s[100:200]) and np.array_equal(cut.close, eth.close[100:200])
        assert len(load_bars(ftx_csv["ETH"], "ETH", start_s=int(eth.t_s[570]))) == 6
        rows = "x,60,1,2,0.5,1,0\n" + "".join(f"x,{60 * i},1,2,0.5,1,0\n" for i in range(10, 16))
        gapped = _write(tmp_path, rows)
        with pytest.raises(InputError, match="gap of 540 s"):
            load_bars(gapped, "ETH")
        assert len(load_bars(gapped, "ETH", start_s=600)) == 6
        bad = _write(
            tmp_path,
            "x,60,1,2,0.5,1,0\nx,120,-1,2,0.5,1,0\n" + "".join(f"x,{60 * i},1,2,0.5,1,0\n" for i in range(3, 9)),
        )
        with pytest.raises(InputError, match=r"bars\.csv:3: column 'open': price -1.0 must be positive"):
            load_bars(bad, "ETH", start_s=180)
        with pytest.raises(
            InputError,
            match=r"2 bars in the window \[2030-01-01 00:00, \.\.\.\), found 0 "
            r"\(the file's bars open from 2022-11-07 12:00 to 2022-11-09 11:55\)",
        ):
            load_bars(ftx_csv["ETH"], "ETH", start_s=1893456000)

    def test_missing_file(self, tmp_path):
        """A missing file is an InputError naming it."""
        with pytest.raises(InputError, match="nope.csv: cannot open"):
            load_bars(tmp_path / "nope.csv", "ETH")


class TestIntrabarOrder:
    def test_falling_bar_high_first(self):
        """A falling bar goes O, H, L, C: the whole range is crossed downwards in one round."""
        assert bar_path(10, 12, 7, 8) == (10, 12, 7, 8)

    def test_rising_bar_low_first(self):
        """A rising (or flat) bar goes O, L, H, C."""
        assert bar_path(10, 12, 7, 11) == (10, 7, 12, 11)
        assert bar_path(10, 12, 7, 10) == (10, 7, 12, 10)

    def test_rounds_cover_both_extremes_of_every_bar(self, ftx_bars):
        """Every bar contributes four rounds and its high and low are both pushed (no extreme is lost)."""
        eth = ftx_bars[0]
        rounds = build_rounds([eth])
        assert len(rounds) == SUBROUNDS_PER_BAR * len(eth)
        pushed = [r.prices_e8["ETH"] for r in rounds]
        assert max(pushed) == round(float(eth.high.max()) * 1e8)
        assert min(pushed) == round(float(eth.low.min()) * 1e8)
        assert [r.t_s for r in rounds[:4]] == [1667822400, 1667822475, 1667822550, 1667822625]

    def test_two_assets_share_rounds(self, ftx_bars):
        """Series on the same clock merge into rounds carrying both prices."""
        rounds = build_rounds(ftx_bars)
        assert len(rounds) == 4 * 576
        assert all(set(r.prices_e8) == {"ETH", "BTC"} for r in rounds)
