"""``keeper risk``: JSON keys and values, human output, impossible inputs (exit 2 or 'already liquidatable')."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from scipy.stats import norm
from typer.testing import CliRunner

from keeper.cli import build_app
from keeper.risk import barrier

KEEPER = Path(sys.executable).with_name("keeper")
BASE = [
    "risk",
    "--side",
    "long",
    "--size",
    "1",
    "--entry",
    "3000",
    "--collateral",
    "60",
    "--price",
    "3000",
    "--maintenance",
    "0.005",
    "--sigma",
    "0.8",
    "--horizon",
    "1h",
]
KEYS = {
    "liquidation_price",
    "breach_probability",
    "breach_probability_mc",
    "breach_probability_mc_stderr",
    "var_99",
    "es_99",
    "required_collateral",
    "top_up",
    "check_interval_s",
}


def run_json(args: list[str]) -> dict:
    res = CliRunner().invoke(build_app(), [*args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


class TestRiskCommand:
    def test_gbm_json_matches_closed_form_and_mc(self):
        """--model gbm prints the reflection-principle closed form 2 Phi(-d / sigma_h) (kappa 1, driftless), close
        to the drifted GBM barrier formula, and its Monte Carlo agrees within 3 SE."""
        out = run_json([*BASE, "--model", "gbm"])
        assert KEYS <= out.keys()
        s_liq = (3000 - 60) / 0.995
        assert out["liquidation_price"] == pytest.approx(s_liq)
        d = math.log(3000 / s_liq)
        assert out["log_distance"] == pytest.approx(d, rel=1e-9)
        sig_h = 0.8 * math.sqrt(3600 / 31_536_000)
        assert out["breach_probability"] == pytest.approx(2 * norm.cdf(-d / sig_h), rel=1e-9)
        gbm = float(barrier.breach_probability(3000, s_liq, 0.8, 3600, is_long=True))
        assert out["breach_probability"] == pytest.approx(gbm, rel=1e-2)  # the log drift -sigma^2/2 over 1 h
        assert (
            abs(out["breach_probability_mc"] - out["breach_probability"])
            < 3 * out["breach_probability_mc_stderr"] + 1e-4
        )
        assert out["top_up"] == pytest.approx(out["required_collateral"] - 60)

    def test_fat_tailed_needs_more_collateral_than_gbm(self):
        """The fat-tailed model (default) asks for at least the stress-gap distance, more than plain GBM."""
        fat, gbm = run_json(BASE), run_json([*BASE, "--model", "gbm"])
        assert fat["required_collateral"] > gbm["required_collateral"]
        assert fat["breach_probability"] > gbm["breach_probability"]

    def test_short_with_fees_and_suffixes(self):
        """A short over 30m with a fee rate gives finite values; the horizon suffix is parsed."""
        out = run_json(
            [
                "risk",
                "--side",
                "short",
                "--size",
                "2",
                "--entry",
                "60000",
                "--collateral",
                "3000",
                "--maintenance",
                "0.005",
                "--sigma",
                "0.6",
                "--horizon",
                "30m",
                "--fee-rate",
                "0.1",
                "--drift",
                "0.2",
            ]
        )
        assert out["horizon_s"] == 1800 and out["liquidation_price"] > 60000
        numbers = [v for v in out.values() if not isinstance(v, (str, bool, type(None), dict))]
        numbers += [v for est in out["cost_estimate"].values() for v in est.values()]
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers)

    def test_already_liquidatable_is_a_clear_answer(self):
        """Past its liquidation price the answer is liquidatable with probability 1 and a top-up, no NaN."""
        out = run_json([*BASE[:-8], "--price", "2950", "--maintenance", "0.005", "--sigma", "0.8", "--horizon", "1h"])
        assert out["liquidatable"] is True and out["breach_probability"] == 1.0 and out["top_up"] > 0
        res = CliRunner().invoke(
            build_app(), [*BASE[:-8], "--price", "2950", "--maintenance", "0.005", "--sigma", "0.8"]
        )
        assert "ALREADY LIQUIDATABLE" in res.output

    def test_history_csv_sets_sigma(self, tmp_path):
        """--history with timestamp,price columns estimates sigma (EWMA under gbm) and says so."""
        import numpy as np

        rng = np.random.default_rng(3)
        prices = 3000 * np.exp(np.cumsum(0.8 * np.sqrt(60 / 31_536_000) * rng.standard_normal(3000)))
        csv = tmp_path / "p.csv"
        csv.write_text("timestamp,price\n" + "".join(f"{60 * i},{p}\n" for i, p in enumerate(prices)))
        out = run_json([*BASE[:-4], "--horizon", "1h", "--history", str(csv), "--model", "gbm"])
        assert out["sigma_source"].startswith("history:ewma") and 0.5 < out["sigma_annual"] < 1.2

    def test_human_output_names_the_quantities(self):
        """The rich table shows liquidation price, breach probability, VaR/ES and the interval."""
        res = CliRunner().invoke(build_app(), BASE)
        assert res.exit_code == 0
        for word in ("liquidation price", "breach probability", "VaR 99", "check interval"):
            assert word in res.output

    @pytest.mark.parametrize(
        ("flag", "value"),
        [
            ("--size", "-1"),
            ("--collateral", "-5"),
            ("--price", "0"),
            ("--sigma", "0"),
            ("--horizon", "soon"),
            ("--side", "sideways"),
            ("--maintenance", "1.5"),
            ("--target", "0.01"),
        ],
    )
    def test_impossible_inputs_raise_input_error(self, flag, value):
        """Bad numbers raise InputError naming the flag (the CLI maps it to exit 2)."""
        from keeper.errors import InputError

        args = list(BASE)
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
        res = CliRunner().invoke(build_app(), args)
        assert isinstance(res.exception, InputError) and flag in str(res.exception)

    def test_exit_code_2_through_the_installed_command(self):
        """The installed ``keeper`` exits 2 with one 'error:' line for a negative size."""
        args = list(BASE)
        args[args.index("--size") + 1] = "-1"
        proc = subprocess.run([str(KEEPER), *args], check=False, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2
        assert proc.stderr.startswith("error:") and "--size" in proc.stderr and proc.stderr.count("\n") == 1


def test_cost_estimate_per_preset_is_the_band_formula_and_dear_gas_widens_the_bands():
    """`keeper risk --json` estimates the yearly cost of protection per gas preset from the cost-aware bands;
    the figure is band_cost_per_year at those bands, and l1 (20 gwei) has wider bands and costs more."""
    from keeper.risk.policy import CostBands, band_cost_per_year

    out = run_json([*BASE, "--native-usd", "2500", "--capital-rate", "0.1"])
    est = out["cost_estimate"]
    assert set(est) == {"l1", "l2"}
    l1, l2 = est["l1"], est["l2"]
    assert l1["gas_usd_per_tx"] == pytest.approx(78_200 * 20e-9 * 2_500)
    assert l1["restore_distance"] >= l2["restore_distance"] >= l2["trigger_distance"] == l1["trigger_distance"]
    assert l1["release_distance"] - l1["restore_distance"] > l2["release_distance"] - l2["restore_distance"]
    assert l1["usd_per_year"] > l2["usd_per_year"] > 0
    again = band_cost_per_year(
        l1["trigger_distance"], l1["restore_distance"], l1["release_distance"], 0.8, 3_000.0,
        CostBands(l1["gas_usd_per_tx"], 0.1),
    )  # fmt: skip
    assert l1["usd_per_year"] == pytest.approx(again, rel=1e-12)
    from keeper.errors import InputError

    bad = CliRunner().invoke(build_app(), [*BASE, "--native-usd", "0"])
    assert isinstance(bad.exception, InputError) and "--native-usd must be a positive price" in str(bad.exception)
