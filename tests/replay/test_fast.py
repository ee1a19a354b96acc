"""The fast replay on the real FTX crash (the 14 h window around the sharpest drop, ``crash_bars``; the 48 h window
where a test needs its first hours): liquidations without a keeper, none with a funded buffer, inclusion delay, no
look-ahead, and the volatility estimator against the risk engine's."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import pytest

from keeper.domain import Action, ActionKind
from keeper.replay.book import load_book
from keeper.replay.fast import GAS_PER_ACTION, GAS_REVERT, EwmaVol, ReplayConfig, run_fast
from keeper.replay.metrics import best_fixed_baseline, check_target
from keeper.replay.policies import FixedRatio, NoKeeper, Observation, parse_policy
from keeper.risk.volatility import estimate_volatility

CFG = ReplayConfig(warmup_s=6 * 3600)


@pytest.fixture(scope="module")
def baseline_run(crash_bars):
    """none, a thin and a thick fixed-ratio baseline on the default book, over the crash window."""
    pols = [NoKeeper(), FixedRatio(1.5, 3.0), FixedRatio(12, 24, 48)]
    return run_fast(load_book(), crash_bars, pols, CFG)


class TestOutcomes:
    def test_no_keeper_loses_positions(self, baseline_run):
        """Without a keeper the FTX crash liquidates the high-leverage longs (ETH fell 17 % in the window, from
        $1,489 when the book opens to a low of $1,233)."""
        r = baseline_run.results["none"]
        assert r.liquidations >= 8
        assert r.top_ups == 0 and r.gas_used == 0
        assert any(lbl.startswith("long-50x:ETH") for lbl in r.liquidated)
        assert r.min_margin_ratio < 1.0

    def test_thick_fixed_buffer_saves_everything(self, baseline_run):
        """fixed:12:24:48 (top up below ratio 12 to 24) has no liquidation, and its closest approach stays above 1."""
        r = baseline_run.results["fixed:12:24:48"]
        assert r.liquidations == 0
        assert r.min_margin_ratio > 1.0
        assert r.top_ups > 0 and r.collateral_added_e6 > 0
        gas = GAS_PER_ACTION
        assert r.gas_used == (
            r.top_ups * gas[ActionKind.TOP_UP] + r.releases * gas[ActionKind.RELEASE] + r.reverted * GAS_REVERT
        )
        assert best_fixed_baseline(baseline_run.results) == "fixed:12:24:48"

    def test_liquidations_with_a_wallet_left_follow_the_wallet(self, crash_bars, baseline_run):
        """A liquidation counts as ``wallet left`` when the account's wallet still held the least action ($10). Without
        a keeper nothing is spent: with the book's $100,000 wallets every liquidation had its wallet left, with $5
        wallets none did (the same liquidations). For a keeper that spends, the count equals the wallets rebuilt
        from the events (start, minus top-ups, plus releases and what each liquidation returned)."""
        none = baseline_run.results["none"]
        assert none.liquidations >= 8 and none.liquidations_wallet_left == none.liquidations
        book = load_book()
        poor = replace(book, wallets_e6=dict.fromkeys(book.wallets_e6, 5_000_000))
        r = run_fast(poor, crash_bars, [NoKeeper()], CFG).results["none"]
        assert r.liquidations == none.liquidations and r.liquidations_wallet_left == 0
        assert r.summary()["liquidations_wallet_left"] == 0
        thin = baseline_run.results["fixed:1.5:3"]
        wallet = dict(book.wallets_e6)
        left = 0
        for e in thin.events:
            if e.kind == "top_up":
                wallet[e.account] -= e.amount_e6
            elif e.kind == "release":
                wallet[e.account] += e.amount_e6
            elif e.kind == "liquidation":
                left += wallet[e.account] >= 10_000_000
                wallet[e.account] += int(e.detail.rsplit(" ", 1)[1])
        assert thin.liquidations > 0 and thin.liquidations_wallet_left == left

    def test_idle_is_time_weighted(self, baseline_run):
        """Average idle equals the recorded per-round idle weighted by the time to the next round."""
        r = baseline_run.results["fixed:1.5:3"]
        t = baseline_run.t_s
        dt = np.diff(t, append=t[-1])
        assert r.avg_idle_e6 == pytest.approx(float(np.sum(r.idle_e6 * dt) / np.sum(dt)), rel=1e-12)
        assert r.peak_idle_e6 == int(r.idle_e6.max())

    def test_summary_has_issue_keys(self, baseline_run):
        """Every policy summary carries the keys issue 6 requires, in USD."""
        for r in baseline_run.results.values():
            s = r.summary()
            for k in ("liquidations", "top_ups", "collateral_added", "gas_used", "avg_idle_collateral"):
                assert k in s
            assert s["collateral_added"] == r.collateral_added_e6 / 1e6


@dataclass
class _OneShot:
    """Tops up $100 on the first position once, and remembers the round it decided on."""

    name: str = "oneshot"
    decided_at: list[int] = field(default_factory=list)

    def decide(self, obs: Observation) -> list[Action]:
        if self.decided_at:
            return []
        self.decided_at.append(obs.round_index)
        p = obs.positions[0]
        return [Action(ActionKind.TOP_UP, p.account, p.market_id, amount_e6=100_000_000)]


class TestTiming:
    @pytest.mark.parametrize("delay", [1, 3])
    def test_action_lands_after_the_inclusion_delay(self, crash_bars, delay):
        """A decision taken at round k is applied at round k + delay, before that round's oracle update."""
        pol = _OneShot()
        res = run_fast(load_book(), crash_bars, [pol], replace(CFG, inclusion_delay_rounds=delay, record=False))
        ev = [e for e in res.results["oneshot"].events if e.kind == "top_up"]
        assert len(ev) == 1 and ev[0].round_index == pol.decided_at[0] + delay

    def test_no_look_ahead(self, crash_bars):
        """Changing bars after a cut leaves every decision and liquidation before the cut unchanged (and the
        different future does change what comes after it)."""
        cut = 96  # bars: 6 h of warm-up, then 2 h of decisions in the fall before the cut
        short = [b.slice_time(int(b.t_s[0]), int(b.t_s[cut + 24])) for b in crash_bars]  # 2 h of future is enough
        alt = []
        for b in short:
            hi, lo, op, cl = (a.copy() for a in (b.high, b.low, b.open, b.close))
            for a in (hi, lo, op, cl):
                a[cut:] *= 0.7  # a different future: a further 30 % crash
            alt.append(replace(b, high=hi, low=lo, open=op, close=cl))
        pols = lambda: [FixedRatio(5, 10, 20), parse_policy("risk")]
        a = run_fast(load_book(), short, pols(), replace(CFG, record=False))
        b = run_fast(load_book(), alt, pols(), replace(CFG, record=False))
        t_cut = int(short[0].t_s[cut])
        for name in a.results:
            ea = [(e.t_s, e.kind, e.account, e.market_id, e.amount_e6) for e in a.results[name].events]
            eb = [(e.t_s, e.kind, e.account, e.market_id, e.amount_e6) for e in b.results[name].events]
            before = [e for e in ea if e[0] < t_cut]
            assert before and before == [e for e in eb if e[0] < t_cut], name
            assert ea != eb, name  # the other future is seen once it comes


class TestVolatility:
    def test_incremental_ewma_matches_risk_engine(self, ftx_bars):
        """The replay's incremental EWMA equals keeper.risk.volatility.estimate_volatility on the same closes (1e-9)."""
        eth = ftx_bars[0]
        t = eth.t_s + 3 * eth.step_s // 4  # closes are known at the bar's last sub-round
        v = EwmaVol()
        for ti, c in zip(t[:200], eth.close[:200], strict=True):
            v.add_close(int(ti), float(c))
        ref = estimate_volatility(t[:200], eth.close[:200], model="ewma")
        assert ref.model == "ewma"
        assert v.sigma_annual(1.5) == pytest.approx(ref.sigma_annual, rel=1e-9)

    def test_fallback_before_thirty_returns(self):
        """With fewer than 30 returns the estimator gives the fallback, like the risk engine."""
        v = EwmaVol()
        for i in range(30):
            v.add_close(i * 60, 100.0 + i)
        assert v.sigma_annual(1.5) == 1.5
        v.add_close(30 * 60, 131.0)
        assert v.sigma_annual(1.5) != 1.5 and math.isfinite(v.sigma_annual(1.5))


def test_target_check_names_best_baseline(baseline_run):
    """check_target compares a policy with the least-idle zero-liquidation fixed baseline."""
    res = dict(baseline_run.results)
    res["risk"] = res["fixed:1.5:3"]
    tc = check_target(res)
    assert tc.baseline == "fixed:12:24:48"
    assert not tc.met and "liquidation" in tc.reason


def test_oracle_vol_window_survives_compaction_bit_identical():
    """The rolling window (float arrays compacted every few windows) gives exactly the estimate of the last
    ``window`` rounds computed from scratch, round after round, across several compactions."""
    from keeper.replay.fast import OracleVol

    rng = np.random.default_rng(3)
    v = OracleVol(window=50)
    ts, ps = [], []
    t, p = 1_700_000_000, 2_000 * 10**8
    for i in range(430):
        t += int(rng.integers(10, 400))
        p = max(1, int(p * math.exp(rng.normal(0, 0.01))))
        v.add(t, p)
        ts.append(t)
        ps.append(p)
        if i % 7 == 0 or i > 420:
            tt = np.array(ts[-50:], dtype=float)
            pp = np.array(ps[-50:], dtype=float) / 1e8
            est = estimate_volatility(tt, pp, model="ewma", fallback_annual=1.0)
            want = None if est.model == "fallback" else est.raw_sigma_annual
            assert v.raw_sigma_annual() == want
            assert len(v) == min(i + 1, 50)


def test_a_policy_object_replayed_twice_starts_from_nothing(ftx_bars):
    """The risk policy remembers oracle rounds (stress-gap history); a second run of the same object on
    another window must not carry the first window's rounds: it equals a fresh object's run."""
    from keeper.replay.prices import Bars

    book = load_book()
    start = int(ftx_bars[0].t_s[0])
    cut = [b.slice_time(start, start + 9 * 3600) for b in ftx_bars]  # 6 h of warm-up, 3 h replayed
    assert all(isinstance(b, Bars) for b in cut)
    reused = parse_policy("risk")
    # another, later window: the crash (its 6 h of warm-up rounds, which the policy observes, and 1 h replayed);
    # without the reset the policy's history would end there, and it would ignore every earlier round of ``cut``
    later = [b.slice_time(start + 28 * 3600, start + 35 * 3600) for b in ftx_bars]
    run_fast(book, later, [reused], CFG)
    again = run_fast(book, cut, [reused], CFG).results["risk"]
    fresh = run_fast(book, cut, [parse_policy("risk")], CFG).results["risk"]
    assert again.transactions > 0
    assert (again.transactions, again.avg_idle_e6, again.collateral_added_e6) == (
        fresh.transactions,
        fresh.avg_idle_e6,
        fresh.collateral_added_e6,
    )
