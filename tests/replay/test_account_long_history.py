"""``--long-history`` in the account replay: the stress gaps of a book's replayed assets take the worse of the recent
rounds and the long-history tail, read per decision by ``risk`` and at the cost-optimal level by
``risk:cost:PRESET`` where the history measures the feed, as the daemon reads ``[risk.long_history]``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from keeper.cli import main
from keeper.replay.aave_book import load_aave_book
from keeper.replay.accounts_fast import (
    AccountObservation,
    AccountsConfig,
    AccountsRisk,
    parse_account_policy,
    run_accounts_fast,
)
from keeper.replay.prices import load_bars, long_tail_before

BOOK = Path(__file__).resolve().parents[2] / "examples" / "aave_book.toml"
WINDOW_START_S = 1_667_822_400  # 2022-11-07 12:00 UTC


def write_hourly(path: Path, start_s: int, bars: int, scale: float, seed: int, level: float) -> Path:
    """Hourly bars of a Student-t(3) walk from ``start_s`` (synthetic, so the tail is known)."""
    rng = np.random.default_rng(seed)
    close = level * np.exp(np.cumsum(scale * rng.standard_t(3, bars)))
    lines = ["timestamp_utc,unix_s,open,high,low,close,volume"]
    prev = close[0]
    for k, c in enumerate(close):
        lines.append(f"x,{start_s + 3600 * k},{prev:.6f},{max(prev, c):.6f},{min(prev, c):.6f},{c:.6f},1")
        prev = c
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass(slots=True)
class Recording(AccountsRisk):
    """``AccountsRisk`` that keeps the stress gaps it was given each round."""

    seen: list[dict[str, tuple[float, float]]] = field(default_factory=list)

    def decide(self, obs: AccountObservation) -> list:
        self.seen.append(dict(obs.stress_gaps))
        return AccountsRisk.decide(self, obs)


def _recorded(tmp_path: Path, long_history: bool) -> tuple[list, list]:
    """``risk`` and ``risk:cost:l1`` over 36 hourly rounds after a 6 h warm-up, with or without an ETH and BTC
    history of 6,000 hourly bars (t(3), scale 2 %) before the window."""
    window, tails = [], {}
    for k, (sym, level) in enumerate((("ETH", 1_500.0), ("BTC", 20_000.0))):
        win = load_bars(write_hourly(tmp_path / f"{sym}_w.csv", WINDOW_START_S, 42, 0.01, 10 + k, level), sym)
        window.append(win)
        hist = write_hourly(tmp_path / f"{sym}_h.csv", WINDOW_START_S - 6_000 * 3600, 6_000, 0.02, 20 + k, level)
        tail = long_tail_before(load_bars(hist, sym), int(win.t_s[0]))
        assert tail is not None
        tails[sym] = tail
    base, cost = parse_account_policy("risk"), parse_account_policy("risk:cost:l1")
    assert isinstance(base, AccountsRisk) and isinstance(cost, AccountsRisk)
    plain = Recording(risk_policy=base.risk_policy, name="risk")
    priced = Recording(risk_policy=cost.risk_policy, name=cost.name, cost_preset=cost.cost_preset)
    config = AccountsConfig(warmup_s=6 * 3600, record=False, long_tails=tails if long_history else {})
    run_accounts_fast(load_aave_book(BOOK), window, [plain, priced], config)
    return plain.seen, priced.seen


def test_the_tail_is_read_per_decision_by_risk_and_priced_by_the_cost_aware_policy(tmp_path):
    """Without a long history both policies see the same gaps; with one, every replayed asset's gap is at least
    the recent rounds' for both, and the two readings differ (an hourly history measures an hourly feed); the
    fixed-price USDC keeps its fallback gap."""
    plain0, priced0 = _recorded(tmp_path, long_history=False)
    plain, priced = _recorded(tmp_path, long_history=True)
    assert plain0 == priced0 and len(plain0) == len(plain) > 20
    for before, per_decision, at_cost in zip(plain0, plain, priced, strict=True):
        assert per_decision["USDC"] == at_cost["USDC"] == before["USDC"]
        for asset in ("WETH", "WBTC"):
            assert min(per_decision[asset]) >= min(before[asset]) - 1e-12
            assert min(at_cost[asset]) >= min(before[asset]) - 1e-12
    differs = [p["WETH"] != c["WETH"] for p, c in zip(plain, priced, strict=True)]
    assert all(differs)


def test_the_cli_passes_long_history_to_an_account_book(tmp_path, capsys, crash_csv):
    """``keeper replay --book aave --long-history``: the tail is fitted and printed, and a violent history makes
    ``risk`` hold more idle collateral than without it on the 14 h FTX window (no more liquidations)."""

    def replay(name: str, *extra: str) -> dict:
        out = tmp_path / name
        args = ["replay", "--fast", "--no-plots", "--warmup-h", "6", "--book", str(BOOK), "--policy", "risk"]
        args += [a for sym, p in crash_csv.items() for a in ("--prices", f"{sym}={p}")]
        with pytest.raises(SystemExit) as exc:
            main([*args, "--out", str(out), *extra])
        assert exc.value.code in (0, None)
        return json.loads((out / "summary.json").read_text())["policies"]["risk"]

    base = replay("base")
    heavy = write_hourly(tmp_path / "eth_h.csv", WINDOW_START_S - 6_000 * 3600, 6_000, 0.05, 1, 1_500.0)
    tailed = replay("tail", "--long-history", f"ETH={heavy}")
    assert "long-history tail ETH:" in capsys.readouterr().err
    assert tailed["liquidations"] <= base["liquidations"]
    assert tailed["avg_idle_collateral"] > base["avg_idle_collateral"] * 1.05
