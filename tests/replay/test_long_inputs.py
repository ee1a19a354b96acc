"""Long inputs: the rounds as columns give exactly the per-round merge, a chunked run equals an unchunked one and
one policy at a time, long replays keep only the rows their plots draw, and progress comes at a steady cadence
(also when stderr is not a terminal)."""

from __future__ import annotations

import io
import math
from dataclasses import replace

import numpy as np
import pytest

from keeper.replay.book import load_book
from keeper.replay.fast import PROGRESS_EVERY_ROUNDS, ReplayConfig, plan_timeline, run_fast
from keeper.replay.metrics import PLOT_POINTS
from keeper.replay.policies import parse_policy
from keeper.replay.prices import Bars, Round, bar_path, build_round_grid, build_rounds, load_bars, to_e8

from .conftest import DATA

OFFGRID = {"ETH": DATA / "binance_2018-02-10_ETHUSDT_1h.csv", "BTC": DATA / "binance_2018-02-10_BTCUSDT_1h.csv"}


def _merge_per_round(series, order="adverse"):
    """The merge as it was written before the columns: one dict per second, filled bar after bar."""
    lo_t = max(int(b.t_s[0]) for b in series)
    hi_t = min(int(b.t_s[-1]) for b in series)
    by_t: dict[int, dict[str, int]] = {}
    closes: dict[int, list[str]] = {}
    for b in series:
        d = b.step_s
        offs = [0, d // 4, d // 2, (3 * d) // 4]
        for i in range(len(b)):
            t0 = int(b.t_s[i])
            if t0 < lo_t or t0 > hi_t:
                continue
            path = bar_path(float(b.open[i]), float(b.high[i]), float(b.low[i]), float(b.close[i]), order)
            for k in range(4):
                by_t.setdefault(t0 + offs[k], {})[b.symbol] = to_e8(path[k])
            closes.setdefault(t0 + offs[-1], []).append(b.symbol)
    return [Round(t, by_t[t], tuple(closes.get(t, ()))) for t in sorted(by_t)]


def _same_rounds(a: list[Round], b: list[Round]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x.t_s, x.prices_e8, x.closes) == (y.t_s, y.prices_e8, y.closes)
        assert list(x.prices_e8) == list(y.prices_e8)  # the order the oracle pushes them in, too
        assert all(type(v) is int for v in x.prices_e8.values()) and type(x.t_s) is int


def _bars(symbol: str, t_s, o, h, lo, c, step: int) -> Bars:
    return Bars(symbol, "test", np.asarray(t_s, np.int64), *(np.asarray(a, float) for a in (o, h, lo, c)), step)


def _synthetic(n: int, step_s: int = 300, seed: int = 7) -> list[Bars]:
    """``n`` bars of ETH and BTC on one clock: a random walk at 80 %/yr, then a 25 % fall over two hours."""
    rng = np.random.default_rng(seed)
    out = []
    for sym, p0 in (("ETH", 1_500.0), ("BTC", 20_000.0)):
        r = rng.normal(0.0, 0.8 * math.sqrt(step_s / 3.15e7), n)
        r[n // 2 : n // 2 + 24] -= 0.012
        c = p0 * np.exp(np.cumsum(r))
        o = np.concatenate([[p0], c[:-1]])
        wig = np.abs(rng.normal(0.0, 0.002, n))
        h, lo = np.maximum(o, c) * (1 + wig), np.minimum(o, c) * (1 - wig)
        out.append(_bars(sym, 1_650_000_000 + step_s * np.arange(n), o, h, lo, c, step_s))
    return out


class TestRoundGrid:
    @pytest.mark.parametrize("order", ["adverse", "long_adverse", "short_adverse"])
    def test_real_off_grid_bars_merge_as_per_round(self, order):
        """Real hourly bars stamped hh:28:14 then back on the hour (a bar's sub-rounds run past the next bar's
        open): the columns give the per-round merge exactly, prices, closes and push order."""
        series = [load_bars(OFFGRID["BTC"], "BTC"), load_bars(OFFGRID["ETH"], "ETH")]
        assert any(int(t) % 3600 for t in series[0].t_s) and any(int(t) % 3600 == 0 for t in series[0].t_s)
        _same_rounds(build_rounds(series, order), _merge_per_round(series, order))

    def test_ftx_window_merges_as_per_round(self, ftx_bars):
        _same_rounds(build_rounds(ftx_bars), _merge_per_round(ftx_bars))

    def test_mixed_intervals_offsets_and_colliding_seconds(self):
        """Series of different intervals and starts, a bar that closes 1 s after the next opens, and a 2-second
        series whose sub-rounds share seconds (the later bar's price is pushed)."""
        a = _bars("A", [0, 300, 590, 900, 1200], [10, 11, 12, 11, 10], [12, 13, 14, 13, 12], [9, 10, 11, 9, 8],
                  [11, 12, 11, 10, 9], 300)  # fmt: skip
        b = _bars("B", [60, 960], [5, 6], [6, 7], [4, 5], [6, 5], 900)
        c = _bars("C", list(range(0, 1300, 2)), *([np.linspace(1, 2, 650)] * 4), 2)
        for series in ([a, b], [b, a], [a, b, c], [c]):
            _same_rounds(build_rounds(series), _merge_per_round(series))

    def test_grid_round_and_latest_price(self, ftx_bars):
        grid = build_round_grid(ftx_bars)
        rounds = build_rounds(ftx_bars)
        assert grid.round(-1) == rounds[-1] and grid.round(17) == rounds[17]
        eth = grid.latest_price_usd("ETH", 5, 40)
        assert eth.tolist() == [r.prices_e8["ETH"] / 1e8 for r in rounds[5:40]]


def _fingerprint(res):
    """Everything a report or a later check reads from a replay, exactly."""
    out = {"t": res.t_s.tolist(), "prices": {s: p.tolist() for s, p in res.prices.items()}}
    for name, r in res.results.items():
        out[name] = (
            r.summary(),
            r.idle_time_integral,
            r.idle_equity_time_integral,
            r.duration_s,
            r.gas_log,
            [
                (e.t_s, e.round_index, e.kind, e.account, e.market_id, e.amount_e6, e.price_e8, e.detail)
                for e in r.events
            ],
            None if r.idle_e6 is None else r.idle_e6.tolist(),
            None if r.ratio is None else r.ratio.tobytes(),
            None if r.liq_price is None else r.liq_price.tobytes(),
        )
    return out


POLICIES = ("risk", "fixed:5:10:20", "none")
CFG = ReplayConfig(warmup_s=6 * 3600, record_every=1)


@pytest.fixture(scope="module")
def short_window(ftx_bars):
    """10 h of the FTX window around the fall: 6 h warm-up, 4 h replayed (ETH -8 %)."""
    start = int(ftx_bars[0].t_s[0]) + 20 * 3600
    return [b.slice_time(start, start + 10 * 3600) for b in ftx_bars]


@pytest.fixture(scope="module")
def unchunked(short_window):
    return run_fast(load_book(), short_window, [parse_policy(p) for p in POLICIES], replace(CFG, chunk_rounds=0))


class TestChunkedRun:
    def test_chunked_equals_unchunked(self, short_window, unchunked):
        """Rounds made 7 at a time (chunk edges inside the warm-up and the replay) change nothing."""
        chunked = run_fast(load_book(), short_window, [parse_policy(p) for p in POLICIES], replace(CFG, chunk_rounds=7))
        assert unchunked.results["risk"].transactions > 0 and unchunked.results["none"].liquidations > 0
        assert _fingerprint(chunked) == _fingerprint(unchunked)

    def test_policies_stepping_together_equal_each_alone(self, short_window, unchunked):
        """The policies step through each round together; each one's replay is the one it has alone."""
        for p in POLICIES:
            alone = run_fast(load_book(), short_window, [parse_policy(p)], CFG)
            want = _fingerprint(unchunked)
            got = _fingerprint(alone)
            assert got[p] == want[p]

    def test_the_same_policy_object_twice_is_refused(self, short_window):
        from keeper.errors import InputError

        pol = parse_policy("none")
        with pytest.raises(InputError, match="twice"):
            run_fast(load_book(), short_window, [pol, pol], CFG)

    def test_recorded_rows_are_every_eth_round_of_the_full_series(self, short_window, unchunked):
        """``record_every = 5`` keeps rows 0, 5, 10, ... of the full series; the metrics do not change."""
        sparse = run_fast(load_book(), short_window, [parse_policy(p) for p in POLICIES], replace(CFG, record_every=5))
        for name, full in unchunked.results.items():
            r = sparse.results[name]
            assert r.record_every == 5 and r.summary() == full.summary()
            assert r.idle_time_integral == full.idle_time_integral
            np.testing.assert_array_equal(r.idle_e6, full.idle_e6[::5])
            np.testing.assert_array_equal(r.ratio, full.ratio[::5])
            np.testing.assert_array_equal(r.liq_price, full.liq_price[::5])
            np.testing.assert_array_equal(r.recorded_t_s, full.t_s[::5])


@pytest.mark.slow  # 12,000 rounds (record_every = 3 needs three plot widths of them) and the plots: 6-9 s
def test_long_replay_keeps_only_the_rows_its_plots_draw(tmp_path):
    """12,000 replayed rounds: the per-position series hold one row in 3 (the plots' spacing), not 12,000 rows."""
    from keeper.replay.report import write_report

    bars = _synthetic(3_000 + 72)  # 6 h of warm-up (72 five-minute bars), then 3,000 bars = 12,000 rounds
    res = run_fast(
        load_book(), bars, [parse_policy("fixed:5:10:20"), parse_policy("none")], replace(CFG, record_every=0)
    )
    n = res.t_s.size
    assert n == 12_000
    for r in res.results.values():
        assert r.record_every == n // PLOT_POINTS == 3
        assert r.ratio.shape == (4_000, 24) and r.idle_e6.shape == (4_000,)
    paths = write_report(res, tmp_path / "out")
    assert paths["margin_ratio"].stat().st_size > 0 and paths["price_ETH"].stat().st_size > 0


def test_progress_comes_from_the_first_round_at_a_steady_cadence(short_window):
    """run_fast reports 0 once the rounds are built, then every PROGRESS_EVERY_ROUNDS rounds, then the end."""
    calls: list[tuple[int, int]] = []
    pols = [parse_policy(p) for p in ("fixed:5:10:20", "none")]
    run_fast(load_book(), short_window, pols, replace(CFG, record=False), progress=lambda d, t: calls.append((d, t)))
    n = len(plan_timeline(load_book(), short_window, CFG).rounds)
    total = n * len(pols)
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    steps = np.diff([d for d, _ in calls])
    assert (steps > 0).all() and steps.max() <= PROGRESS_EVERY_ROUNDS * len(pols)


class TestPlainProgress:
    def _progress(self):
        from keeper.commands.replay import PlainProgress

        now = [100.0]
        out = io.StringIO()
        return PlainProgress(out, step=0.05, every_s=10.0, clock=lambda: now[0]), now, out

    def test_lines_every_five_percent_or_ten_seconds_and_one_at_the_end(self):
        prog, now, out = self._progress()
        now[0] = 130.0  # 30 s of loading before the first update
        prog.update(0, 1_000)
        for done in range(10, 1_001, 10):  # 1 % a second
            now[0] += 1.0
            prog.update(done, 1_000)
        prog.update(1_000, 1_000)  # a repeated end prints nothing
        lines = out.getvalue().splitlines()
        assert all(ln.startswith("replay: ") for ln in lines)
        assert lines[0] == "replay: 0/1,000 policy-rounds (0%), 30 s elapsed"
        # 5 % comes every 5 s, before 10 s: 20 lines after the first, the last at 100 %
        assert len(lines) == 21 and lines[-1].startswith("replay: 1,000/1,000 policy-rounds (100%), 130 s elapsed")
        # the pace is the replay's (10/s), not diluted by the 30 s of loading: 950 left at 10/s
        assert lines[1] == "replay: 50/1,000 policy-rounds (5%), 35 s elapsed, 10/s, ~95 s left"

    def test_slow_work_prints_every_ten_seconds(self):
        prog, now, out = self._progress()
        prog.update(0, 1_000_000)
        for _ in range(60):  # one minute at 100 a second: 0.6 % in all
            now[0] += 1.0
            prog.update(prog_done := int((now[0] - 100.0) * 100), 1_000_000)
        lines = out.getvalue().splitlines()
        assert len(lines) == 7 and prog_done == 6_000  # at 0 s, then at 10, 20, ..., 60 s
        assert lines[-1] == "replay: 6,000/1,000,000 policy-rounds (0%), 60 s elapsed, 100/s, ~9940 s left"

    def test_percent_never_rounds_up_to_a_hundred_before_the_end(self):
        prog, _, out = self._progress()
        prog.update(999, 1_000)
        assert "(99%)" in out.getvalue()


def test_cli_piped_prints_phases_and_progress_lines(tmp_path):
    """Through a pipe (stderr not a terminal): a line per price file loaded, then progress lines from 0 % to
    100 %, all before the table; the off-grid hourly window replays."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "keeper", "replay", "--fast", "--prices", f"ETH={OFFGRID['ETH']}",
         "--prices", f"BTC={OFFGRID['BTC']}", "--warmup-h", "6", "--policy", "fixed:5:10:20", "--policy", "none",
         "--no-plots", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("replay: ")]
    assert lines[0].startswith("replay: ETH: 48 bars from ") and lines[1].startswith("replay: BTC: 48 bars from ")
    assert "(0%)" in lines[2] and "(100%)" in lines[-1]
    assert (tmp_path / "o" / "summary.json").is_file()
