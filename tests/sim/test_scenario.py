"""The demo scenario: deterministic for a seed, with the advertised totals and gap; the player lands it on chain."""

from __future__ import annotations

import numpy as np
import pytest

from keeper.sim.scenario import ScenarioPlayer, demo_crash


class TestDemoCrash:
    def test_same_seed_same_rounds(self):
        """Two scenarios built with the same seed are identical round by round."""
        a, b = demo_crash(11), demo_crash(11)
        assert a.rounds == b.rounds

    def test_other_seed_other_noise(self):
        """Another seed changes the noise but not the totals."""
        a, b = demo_crash(11), demo_crash(12)
        assert not np.array_equal(a.path_e8("ETH"), b.path_e8("ETH"))
        assert a.total_return("ETH") == pytest.approx(b.total_return("ETH"), abs=1e-8)

    def test_totals_and_gap(self):
        """ETH ends -35 % with exactly one -12 % round, BTC ends +25 % (tolerance: e8 rounding, 1e-8)."""
        s = demo_crash(7)
        assert s.total_return("ETH") == pytest.approx(-0.35, abs=1e-8)
        assert s.total_return("BTC") == pytest.approx(0.25, abs=1e-8)
        eth = s.round_returns("ETH")
        gaps = np.flatnonzero(np.isclose(eth, -0.12, atol=1e-8))
        assert gaps.tolist() == [10]
        assert s.rounds[10].label == "ETH gap"
        others = np.delete(eth, 10)
        assert others.min() > -0.05  # no other round comes close to the gap

    def test_calm_phase_returns_to_start(self):
        """The calm rounds carry noise only: each asset is back at its start price when the crash begins."""
        s = demo_crash(7, calm_rounds=3)
        for sym in ("ETH", "BTC"):
            assert s.path_e8(sym)[3] == pytest.approx(s.start_prices_e8[sym], rel=1e-9)
            assert np.abs(s.round_returns(sym)[:3]).max() > 0

    def test_times_follow_step(self):
        """Round i lands (i + 1) * step_s seconds after the start."""
        s = demo_crash(7, step_s=20, n_rounds=10, calm_rounds=2, gap_round=5)
        assert [r.t_s for r in s.rounds] == [20 * (i + 1) for i in range(10)]

    def test_bad_gap_round_rejected(self):
        """A gap placed in the calm phase is refused with a message naming it."""
        with pytest.raises(ValueError, match="gap_round"):
            demo_crash(7, calm_rounds=5, gap_round=2)


@pytest.mark.chain
def test_player_pushes_rounds_with_chain_time(chain):
    """Each round's answers reach the feeds, stamped t0 + t_s of chain time, and the hook sees every round."""
    s = demo_crash(3, n_rounds=4, calm_rounds=1, gap_round=2, step_s=30)
    t0 = chain.w3.eth.get_block("latest")["timestamp"]
    seen = []
    played = ScenarioPlayer(chain, s, on_round=[seen.append]).play()
    assert [p.round.index for p in seen] == [0, 1, 2, 3]
    assert played == seen
    for sym, feed in chain.feeds.items():
        _, answer, _, updated_at, _ = feed.functions.latestRoundData().call()
        assert answer == s.rounds[-1].prices_e8[sym]
        assert updated_at >= t0 + s.rounds[-1].t_s
    eth_round = chain.feeds["ETH"].functions.latestRound().call()
    _, answer, _, updated_at, _ = chain.feeds["ETH"].functions.getRoundData(eth_round - 1).call()
    assert answer == s.rounds[-2].prices_e8["ETH"]
    assert updated_at == t0 + s.rounds[-2].t_s
