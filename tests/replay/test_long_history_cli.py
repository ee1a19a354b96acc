"""`keeper replay --long-history`: the risk policy's stress gap takes the worse of the recent rounds and a tail
fitted on years of bars before the window; bad long-history input is a one-line error."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from keeper.cli import main

DATA = Path(__file__).resolve().parents[1] / "data"
WINDOW = {"ETH": DATA / "ftx_2022-11-07T12_ETHUSDT_5m.csv", "BTC": DATA / "ftx_2022-11-07T12_BTCUSDT_5m.csv"}
WINDOW_START_S = 1667822400


def write_history(path: Path, bars: int, scale: float, seed: int) -> Path:
    """Hourly bars of a Student-t(3) walk ending one hour before the window (synthetic, so the tail is known)."""
    rng = np.random.default_rng(seed)
    close = 1_500.0 * np.exp(np.cumsum(scale * rng.standard_t(3, bars)))
    t = WINDOW_START_S - 3600 * np.arange(bars, 0, -1)
    lines = ["timestamp_utc,unix_s,open,high,low,close,volume"]
    prev = close[0]
    for ts, c in zip(t, close, strict=True):
        lines.append(f"x,{ts},{prev:.6f},{max(prev, c):.6f},{min(prev, c):.6f},{c:.6f},1")
        prev = c
    path.write_text("\n".join(lines) + "\n")
    return path


def replay(tmp_path: Path, window: dict[str, Path], name: str, *extra: str) -> dict:
    out = tmp_path / name
    args = ["replay", "--fast", "--no-plots", "--warmup-h", "6", "--policy", "risk", "--out", str(out)]
    args += [a for sym, p in window.items() for a in ("--prices", f"{sym}={p}")]
    with pytest.raises(SystemExit) as exc:
        main([*args, *extra])
    assert exc.value.code in (0, None)
    return json.loads((out / "summary.json").read_text())["policies"]["risk"]


def test_a_heavy_tailed_history_makes_the_keeper_hold_more_and_calm_history_changes_little(tmp_path, capsys, crash_csv):
    """The FTX crash window (14 h) with a violent synthetic ETH history (t(3) hourly moves of scale 5 %) before it:
    the keeper's average idle collateral rises (by a quarter; by three quarters on the whole 48 h window, ten times
    the cost); the tail it used is printed with its source."""
    base = replay(tmp_path, crash_csv, "base")
    heavy = write_history(tmp_path / "eth_history.csv", 6_000, 0.05, 1)
    tailed = replay(tmp_path, crash_csv, "tail", "--long-history", f"ETH={heavy}")
    assert "long-history tail ETH:" in capsys.readouterr().err
    assert tailed["liquidations"] == base["liquidations"] == 0
    assert tailed["avg_idle_collateral"] > base["avg_idle_collateral"] * 1.1


def test_long_history_input_errors_are_one_line(tmp_path, capsys):
    """Too few bars before the window, or a symbol that is not replayed: exit 2 naming what to fix."""
    short = write_history(tmp_path / "short.csv", 20, 0.01, 2)
    for flag, needle in ((f"ETH={short}", "too few bars before the replayed window"), (f"SOL={short}", "--prices SOL")):
        with pytest.raises(SystemExit) as exc:
            main(["replay", "--fast", "--prices", f"ETH={WINDOW['ETH']}", "--long-history", flag])
        assert exc.value.code == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
        assert len(err) == 1 and needle in err[0]


def test_from_until_cut_the_window_out_of_one_long_file_and_its_history_is_the_same_file(tmp_path, crash_csv):
    """One file holding the history and the window (as the exchanges' hourly files do): ``--from`` / ``--until`` replay
    the window alone and ``--long-history`` of that same file fits the tail on the bars before ``--from``; the
    result equals the replay of the window cut into its own file beside the history in another, to the unit."""
    heavy = write_history(tmp_path / "eth_history.csv", 6_000, 0.05, 3)
    expected = replay(tmp_path, crash_csv, "cut", "--long-history", f"ETH={heavy}")
    _header, *window = crash_csv["ETH"].read_text().splitlines()
    both = tmp_path / "eth_history_and_window.csv"
    both.write_text("\n".join([*heavy.read_text().splitlines(), *window]) + "\n")
    start, end = int(window[0].split(",")[1]), int(window[-1].split(",")[1]) + 300
    until = datetime.fromtimestamp(end, UTC).strftime("%Y-%m-%dT%H:%M")
    got = replay(
        tmp_path,
        {"ETH": both, "BTC": WINDOW["BTC"]},
        "window",
        *("--from", str(start), "--until", until, "--long-history", f"ETH={both}"),
    )
    assert got == expected and got["top_ups"] > 0


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (("--from", "2022-13-01"), "--from '2022-13-01': expected a UTC date or time"),
        (("--from", "2022-11-08", "--until", "2022-11-08"), "is not after --from"),
        (("--from", "2030-01-01"), "needs at least 2 bars in the window [2030-01-01 00:00, ...)"),
    ],
)
def test_bad_windows_are_one_line_errors(capsys, flags, needle):
    with pytest.raises(SystemExit) as exc:
        main(["replay", "--fast", "--prices", f"ETH={WINDOW['ETH']}", *flags])
    assert exc.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and needle in err[0]
