"""The keeper against a real chain: `keeper check` / `run` as processes, journal restarts, bad config, stale oracles,
an empty wallet. Every assertion is read back from the chain (events, balances), not from the keeper's word."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.chain


def wallet(chain) -> int:
    return chain.usd.functions.balanceOf(chain.trader).call()


class TestCheck:
    def test_check_without_execute_sends_nothing(self, chain, tmp_path, write_config, open_book, margin_events, keeper):
        """`keeper check` plans a top-up for an endangered position but sends nothing: nonce, wallet, collateral
        unchanged."""
        open_book(chain, reserve_e6=30_000 * 10**6)
        chain.push_price("ETH", 2_900 * 10**8)
        nonce = chain.w3.eth.get_transaction_count(chain.trader)
        before = chain.position(chain.trader, "ETH")[4]
        cfg = write_config(chain, tmp_path)
        proc = keeper("check", "--config", str(cfg), "--json")
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert [a["kind"] for a in out["actions"]][:1] == ["top_up"]
        assert out["sent"] == [] and out["executed"] is False
        assert chain.w3.eth.get_transaction_count(chain.trader) == nonce
        assert chain.position(chain.trader, "ETH")[4] == before
        assert margin_events(chain, "MarginAdded") == []

    def test_check_execute_tops_up_on_chain(self, chain, tmp_path, write_config, open_book, margin_events, keeper):
        """`keeper check --execute` sends the planned top-up; the chain shows it and the position leaves the trigger
        band."""
        open_book(chain, reserve_e6=30_000 * 10**6)
        chain.push_price("ETH", 2_900 * 10**8)
        cfg = write_config(chain, tmp_path)
        proc = keeper("check", "--config", str(cfg), "--execute", "--json")
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        added = margin_events(chain, "MarginAdded")
        assert len(added) == 1 and added[0]["marketId"] == 0
        assert added[0]["amount"] == out["actions"][0]["amount_e6"]
        assert out["sent"][0]["state"] == "confirmed"
        tx = chain.w3.eth.get_transaction(out["sent"][0]["tx_hash"])
        assert tx["type"] == 2 and tx["maxPriorityFeePerGas"] >= 1_500_000_000  # fees.priority_fee_gwei floor
        again = json.loads(keeper("check", "--config", str(cfg), "--json").stdout)
        assert not any(a["kind"] == "top_up" for a in again["actions"])

    def test_implied_vol_floor_raises_sigma(self, chain, tmp_path, write_config, open_book, keeper):
        """An implied volatility above the history estimate becomes the sigma used for that market only."""
        open_book(chain, reserve_e6=0)
        (tmp_path / "iv.json").write_text('{"ETH": 4.5}')
        cfg = write_config(chain, tmp_path)
        cfg.write_text(cfg.read_text() + f'\n[implied_vol]\nsource = "{tmp_path / "iv.json"}"\n')
        rows = {
            r["market"]: r for r in json.loads(keeper("status", "--config", str(cfg), "--json").stdout)["positions"]
        }
        assert rows["ETH"]["sigma_annual"] == pytest.approx(4.5)
        assert rows["BTC"]["sigma_annual"] < 4.5

    def test_watch_all_discovers_every_account_and_never_sends(self, chain, tmp_path, write_config, open_book, keeper):
        """Risk-team mode: no accounts listed, watch_all = true; positions come from events, actions become alerts."""
        open_book(chain, reserve_e6=30_000 * 10**6)
        other = chain.keys[5]
        chain.mint(chain.addresses[5], 5_000 * 10**6)
        chain.approve_engine(other)
        chain.open_position(other, "BTC", True, 10**17, 2_000 * 10**6)
        chain.push_price("ETH", 2_900 * 10**8)
        cfg = write_config(chain, tmp_path)
        text = cfg.read_text()
        start = text.index("[[accounts]]")
        cfg.write_text("watch_all = true\n" + text[:start] + text[text.index("[risk]") :])
        nonce = chain.w3.eth.get_transaction_count(chain.trader)
        proc = keeper("check", "--config", str(cfg), "--execute", "--json", env={"KEEPER_PRIVATE_KEY": ""})
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        seen = {(r["account"].lower(), r["market"]) for r in out["positions"]}
        assert seen == {
            (chain.trader.lower(), "ETH"),
            (chain.trader.lower(), "BTC"),
            (chain.addresses[5].lower(), "BTC"),
        }
        assert out["sent"] == [] and all(a["kind"] == "alert" for a in out["actions"])
        assert any("watch-only" in a["reason"] for a in out["actions"])
        assert chain.w3.eth.get_transaction_count(chain.trader) == nonce

    def test_status_and_stress_tables(self, chain, tmp_path, write_config, open_book, keeper):
        """`keeper status --json` lists both positions with a liquidation price; `keeper stress --json` names
        liquidations."""
        open_book(chain, reserve_e6=0)
        cfg = write_config(chain, tmp_path)
        status = json.loads(keeper("status", "--config", str(cfg), "--json").stdout)
        rows = {r["market"]: r for r in status["positions"]}
        assert set(rows) == {"ETH", "BTC"}
        assert rows["ETH"]["liquidation_price"] == pytest.approx((3000 - 150) / 0.995, rel=1e-3)
        stress = json.loads(keeper("stress", "--config", str(cfg), "--json").stdout)
        down20 = next(s for s in stress["scenarios"] if s["scenario"].startswith("-20%"))
        assert {"account": chain.trader.lower(), "market": "ETH"} in down20["liquidated"]


class TestBadInput:
    def test_bad_config_value_exits_2_naming_the_field(self, chain, tmp_path, write_config, keeper):
        """An invalid value is reported at start with the field and what is allowed, exit code 2."""
        cfg = write_config(chain, tmp_path, risk="p_trigger = 2.0")
        proc = keeper("check", "--config", str(cfg))
        assert proc.returncode == 2
        assert "risk.p_trigger" in proc.stderr and "Traceback" not in proc.stderr

    def test_bad_private_key_is_not_printed(self, chain, tmp_path, write_config, keeper):
        """A malformed key exits 2 without echoing it."""
        cfg = write_config(chain, tmp_path)
        secret = "0x" + "ab" * 31 + "zz"
        proc = keeper("check", "--config", str(cfg), env={"KEEPER_PRIVATE_KEY": secret})
        assert proc.returncode == 2
        assert secret not in proc.stderr + proc.stdout and "ab" * 31 not in proc.stderr

    def test_wrong_chain_id_refused(self, chain, tmp_path, write_config, keeper):
        """A config that expects another chain id stops at start (exit 2 for the mismatch between file and config)."""
        cfg = write_config(chain, tmp_path, chain_id="5")
        proc = keeper("check", "--config", str(cfg))
        assert proc.returncode != 0
        assert "chain id" in proc.stderr

    def test_deployment_without_code_refused(self, chain, tmp_path, write_config, keeper):
        """A deployment naming an address with no code stops at start, naming which contract and why."""
        from dataclasses import replace

        cfg = write_config(chain, tmp_path)
        replace(chain.deployment, collateral="0x000000000000000000000000000000000000dEaD").save(
            tmp_path / "deployment.json"
        )
        proc = keeper("check", "--config", str(cfg))
        assert proc.returncode == 1
        assert "no contract at the configured collateral address" in proc.stderr and "Traceback" not in proc.stderr

    def test_bad_implied_vol_source_exits_2(self, chain, tmp_path, write_config, keeper):
        """A configured implied-vol file that does not exist stops `check` at start with exit 2."""
        cfg = write_config(chain, tmp_path)
        cfg.write_text(cfg.read_text() + f'\n[implied_vol]\nsource = "{tmp_path / "missing.json"}"\n')
        proc = keeper("check", "--config", str(cfg))
        assert proc.returncode == 2 and "implied_vol.source" in proc.stderr


class TestDanger:
    def test_stale_oracle_alerts_and_never_releases(self, chain, tmp_path, write_config, open_book, keeper):
        """With release enabled and a huge excess, a stale oracle gives an alert and no release."""
        open_book(chain, reserve_e6=0, btc_collateral_e6=100_000 * 10**6)
        chain.anvil.request("evm_increaseTime", [3_700])
        chain.anvil.request("evm_mine", [])
        cfg = write_config(chain, tmp_path, limits="allow_release = true")
        out = json.loads(keeper("check", "--config", str(cfg), "--json").stdout)
        kinds = [a["kind"] for a in out["actions"]]
        assert "release" not in kinds
        assert any(a["kind"] == "alert" and "stale" in a["reason"] for a in out["actions"])
        fresh = write_config(chain, tmp_path, limits="allow_release = true")
        chain.push_price("BTC", 60_000 * 10**8)
        chain.push_price("ETH", 3_000 * 10**8)
        out = json.loads(keeper("check", "--config", str(fresh), "--json").stdout)
        assert any(a["kind"] == "release" and a["market_id"] == 1 for a in out["actions"])

    def test_empty_wallet_moves_margin_and_alerts_the_rest(
        self, chain, tmp_path, write_config, open_book, margin_events, keeper
    ):
        """With no wallet funds the keeper moves excess from the BTC short to the endangered ETH long, on chain."""
        open_book(chain, reserve_e6=0, btc_collateral_e6=60_000 * 10**6)  # BTC short at 2x: far from liquidation
        chain.push_price("ETH", 2_880 * 10**8)
        assert wallet(chain) == 0
        cfg = write_config(chain, tmp_path)
        proc = keeper("check", "--config", str(cfg), "--execute", "--json")
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        moved = margin_events(chain, "MarginMoved")
        assert len(moved) >= 1 and moved[0]["fromMarketId"] == 1 and moved[0]["toMarketId"] == 0
        assert margin_events(chain, "MarginAdded") == []
        eth = chain.position(chain.trader, "ETH")
        btc = chain.position(chain.trader, "BTC")
        fees = sum(f["fee"] for f in margin_events(chain, "FeeSettled") if f["marketId"] == 0)
        assert not eth[11] and eth[4] == 3_000 * 10**6 + sum(m["amount"] for m in moved) - fees
        planned = {r["market"]: r for r in out["positions"]}
        assert btc[4] >= planned["BTC"]["buffer_target"] * 1e6  # the source keeps its own target buffer
        short = (
            eth[4] + fees < planned["ETH"]["buffer_target"] * 1e6 - 1
        )  # the fee settled on the move is not a shortfall
        alerts = [a for a in out["actions"] if a["kind"] == "alert" and a["market_id"] == 0]
        assert bool(alerts) == short  # an alert exactly when the move could not reach the target


class TestDaemon:
    def test_killed_mid_crash_resumes_without_duplicate(
        self, chain, tmp_path, write_config, open_book, margin_events, wait_log, log_lines
    ):
        """SIGKILL while a top-up is pending in the mempool; the restarted daemon reconciles and sends no second
        top-up."""
        open_book(
            chain, reserve_e6=30_000 * 10**6, eth_collateral_e6=15_000 * 10**6, btc_collateral_e6=60_000 * 10**6
        )  # both far from liquidation: nothing to do at start
        cfg = write_config(chain, tmp_path)
        env = {**os.environ, "KEEPER_PRIVATE_KEY": chain.trader_key}
        with open(tmp_path / "run1.log", "w") as log1:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "keeper", "run", "--config", str(cfg)],
                stdout=log1,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            wait_log(tmp_path / "run1.log", "cycle_finished", 60)
            assert margin_events(chain, "MarginAdded") == []
            chain.anvil.request("evm_setAutomine", [False])
            chain.push_price("ETH", 2_500 * 10**8, wait=False)  # -17 %: inside the stress gap
            chain.anvil.request("evm_mine", [])  # the price lands; the keeper's top-up now waits in the pool
            wait_log(tmp_path / "run1.log", "action_sent", 30)
            pending = chain.anvil.request("txpool_status")
            assert int(pending["pending"], 16) == 1
        finally:
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(10)
        with open(tmp_path / "run2.log", "w") as log2:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "keeper", "run", "--config", str(cfg)],
                stdout=log2,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            wait_log(tmp_path / "run2.log", "daemon_started", 60)
            wait_log(tmp_path / "run2.log", "cycle_finished", 60)  # a cycle ran while the top-up is pending ...
            eth = json.loads(
                next(
                    line for line in log_lines(tmp_path / "run2.log", "position_decision") if '"market": "ETH"' in line
                )
            )
            assert eth["action"] == "awaiting_tx:sent"  # ... saw the journaled intent and held
            assert int(chain.anvil.request("txpool_status")["pending"], 16) == 1  # still one: no second top-up
            assert margin_events(chain, "MarginAdded") == []
            chain.anvil.request("evm_mine", [])
            wait_log(tmp_path / "run2.log", "tx_final", 30)
            chain.anvil.request("evm_setAutomine", [True])
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(20)
        assert daemon.returncode == 0
        added = margin_events(chain, "MarginAdded")
        assert len(added) == 1, added
        assert '"event": "daemon_stopped"' in (tmp_path / "run2.log").read_text()

    def test_sigterm_exits_cleanly_and_health_answers(
        self, chain, tmp_path, write_config, open_book, wait_log, wait_for
    ):
        """The daemon serves /healthz and /metrics while running and exits 0 on SIGTERM."""
        import urllib.request

        open_book(chain, reserve_e6=1_000 * 10**6)
        cfg = write_config(chain, tmp_path)
        env = {**os.environ, "KEEPER_PRIVATE_KEY": chain.trader_key}
        with open(tmp_path / "run.log", "w") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "keeper", "run", "--config", str(cfg)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            line = wait_log(tmp_path / "run.log", "http_listening", 60)
            listening = json.loads(line)
            url = f"http://{listening['host']}:{listening['port']}"
            wait_log(tmp_path / "run.log", "cycle_finished", 30)
            health = json.loads(urllib.request.urlopen(url + "/healthz", timeout=5).read())
            assert health["status"] == "ok"
            metrics = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
            assert "keeper_position_breach_probability{" in metrics and "keeper_cycle_duration_seconds" in metrics
            chain.push_price("ETH", 2_900 * 10**8)
            wait_log(tmp_path / "run.log", "tx_final", 30)

            def samples() -> dict[str, str]:
                text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
                return dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))

            key = 'keeper_actions_total{kind="top_up",outcome="confirmed"}'
            metrics = wait_for(lambda: (m := samples()).get(key) and m, 10, f"{key} in /metrics")
            assert float(metrics["keeper_gas_used_total"]) > 21_000
            assert float(metrics[key]) == 1.0
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(20)
        assert daemon.returncode == 0
        text = (tmp_path / "run.log").read_text()
        assert chain.trader_key[2:] not in text


class TestWebSocket:
    def test_new_round_over_websocket_triggers_a_top_up(
        self, chain, tmp_path, write_config, open_book, margin_events, wait_log
    ):
        """With a ws:// endpoint and slow polling, a new oracle round still brings a top-up within seconds."""
        open_book(chain, reserve_e6=30_000 * 10**6, eth_collateral_e6=15_000 * 10**6, btc_collateral_e6=60_000 * 10**6)
        cfg = write_config(chain, tmp_path, rpc=chain.anvil.ws_url, head_poll_s="30")
        env = {**os.environ, "KEEPER_PRIVATE_KEY": chain.trader_key}
        with open(tmp_path / "run.log", "w") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "keeper", "run", "--config", str(cfg)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            wait_log(tmp_path / "run.log", "newheads_subscribed", 60)
            wait_log(tmp_path / "run.log", "cycle_finished", 30)
            chain.push_price("ETH", 2_500 * 10**8)
            pushed = time.monotonic()
            wait_log(tmp_path / "run.log", "action_sent", 10)
            assert time.monotonic() - pushed < 10  # the 30 s poll and the 300 s interval could not have done it
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(20)
        assert len(margin_events(chain, "MarginAdded")) == 1
