"""The daemon as a process under the faults of issue 10, findings 4 and 6: SIGTERM with a stalled RPC, a second
signal, an endpoint that starts serving another chain mid-run, a reset chain. Facts are read back from the chain
(``MarginAdded`` events), the exit code, the log lines and the health endpoint, never from the keeper's word."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from keeper.chain.anvil import Anvil, free_port
from keeper.chain.testing import FaultProxy

pytestmark = pytest.mark.chain

STALL_S = 3.5  # the slow RPC: 3-4 s per request


def start_daemon(chain, cfg: Path, log_path: Path, env: dict | None = None) -> subprocess.Popen:
    """``keeper run`` as a process signing as ``chain``'s trader, its output in ``log_path``."""
    full_env = {**os.environ, "KEEPER_PRIVATE_KEY": chain.trader_key, **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "keeper", "run", "--config", str(cfg)],
        stdout=open(log_path, "w"),
        stderr=subprocess.STDOUT,
        env=full_env,
    )


def stop_daemon(daemon: subprocess.Popen) -> None:
    if daemon.poll() is None:
        daemon.kill()
        daemon.wait(10)


def events(log_path: Path) -> list[dict]:
    out = []
    for line in log_path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def count_events(log_path: Path, name: str) -> int:
    return sum(1 for e in events(log_path) if e.get("event") == name)


def with_sections(cfg: Path, *, schedule: str = "", http_port: int | None = None) -> Path:
    text = cfg.read_text()
    if schedule:
        text = text.replace("[schedule]\n", f"[schedule]\n{schedule}\n")
    if http_port is not None:
        text = text.replace("[http]\nport = 0", f"[http]\nport = {http_port}")
    cfg.write_text(text)
    return cfg


def requests_seen(proxy: FaultProxy) -> int:
    """How many requests the proxy has received in total."""
    return sum(proxy.seen.values())


class WebhookThatChecksHealth:
    """An alert receiver that, on each alert, asks the daemon's /healthz before answering (the daemon waits
    for its alerts to be delivered before it exits, so the health answer is the one of that moment)."""

    def __init__(self, health_url: str) -> None:
        self.alerts: list[dict] = []
        self.health_at_alert: list[tuple[int, dict]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.alerts.append(payload)
                if payload["key"] == "keeper:halted":
                    try:
                        with urllib.request.urlopen(health_url, timeout=5) as resp:
                            receiver.health_at_alert.append((resp.status, json.loads(resp.read())))
                    except urllib.error.HTTPError as err:
                        receiver.health_at_alert.append((err.code, json.loads(err.read())))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TestStopsThatStop:
    def test_sigterm_with_stalled_rpc_exits_within_the_bound_and_restart_adds_once(
        self, chain, tmp_path, wait_log, margin_events, open_book, write_config, wait_for
    ):
        """SIGTERM while every RPC request stalls 3.5 s mid top-up exits within shutdown_timeout_s, and a restart on
        the same journal ends with exactly one MarginAdded for the endangered position."""
        open_book(chain, reserve_e6=30_000 * 10**6, eth_collateral_e6=15_000 * 10**6, btc_collateral_e6=60_000 * 10**6)
        with FaultProxy(chain.anvil.url) as proxy:
            cfg = with_sections(write_config(chain, tmp_path, rpc=proxy.url), schedule="shutdown_timeout_s = 6")
            daemon = start_daemon(chain, cfg, tmp_path / "run1.log")
            try:
                wait_log(tmp_path / "run1.log", "cycle_finished", 60)
                proxy.delay_s = STALL_S
                chain.push_price("ETH", 2_500 * 10**8)  # -17 %: the next cycle plans a top-up, through the stall
                more_than = requests_seen(proxy) + 4
                wait_for(lambda: requests_seen(proxy) > more_than, 60, "4 more requests")  # deep in slow requests
                daemon.send_signal(signal.SIGTERM)
                sent_at = time.monotonic()
                daemon.wait(30)
                took_s = time.monotonic() - sent_at
            finally:
                stop_daemon(daemon)
            assert took_s < 6 + 3.0, f"exit took {took_s:.1f} s for a 6 s bound"  # 3 s: process exit under load
            names = [e.get("event") for e in events(tmp_path / "run1.log")]
            assert "shutdown_requested" in names and "daemon_stopped" in names
            proxy.delay_s = 0.0
            daemon = start_daemon(chain, cfg, tmp_path / "run2.log")
            try:
                wait_for(
                    lambda: margin_events(chain, "MarginAdded"),
                    90,
                    "MarginAdded event",
                    detail=lambda: (tmp_path / "run2.log").read_text()[-3000:],
                )
                wait_log(tmp_path / "run2.log", "tx_final", 30)
                n_cycles = count_events(tmp_path / "run2.log", "cycle_finished")
                chain.push_price("ETH", 2_500 * 10**8)  # a new round: one more cycle on the same state
                wait_for(
                    lambda: count_events(tmp_path / "run2.log", "cycle_finished") > n_cycles,
                    30,
                    "cycle on the new round",
                    detail=lambda: (tmp_path / "run2.log").read_text()[-3000:],
                )
                daemon.send_signal(signal.SIGTERM)
                assert daemon.wait(20) == 0
            finally:
                stop_daemon(daemon)
        added = margin_events(chain, "MarginAdded")
        assert len(added) == 1 and added[0]["marketId"] == 0, added

    def test_second_signal_exits_at_once(self, chain, tmp_path, wait_log, open_book, write_config, wait_for):
        """With a 60 s shutdown bound and a stalled RPC, a second SIGTERM ends the process within 2 s, exit 143."""
        open_book(chain, reserve_e6=1_000 * 10**6, eth_collateral_e6=15_000 * 10**6, btc_collateral_e6=60_000 * 10**6)
        with FaultProxy(chain.anvil.url) as proxy:
            cfg = with_sections(write_config(chain, tmp_path, rpc=proxy.url), schedule="shutdown_timeout_s = 60")
            daemon = start_daemon(chain, cfg, tmp_path / "run.log")
            try:
                wait_log(tmp_path / "run.log", "cycle_finished", 60)
                proxy.delay_s = 20.0  # a hung node: one request outlives the whole test
                more_than = requests_seen(proxy) + 1
                wait_for(lambda: requests_seen(proxy) > more_than, 30, "another request through the hung node")
                daemon.send_signal(signal.SIGTERM)
                wait_log(tmp_path / "run.log", "shutdown_requested", 10)
                assert daemon.poll() is None  # the first signal waits for the stalled work
                daemon.send_signal(signal.SIGTERM)
                sent_at = time.monotonic()
                code = daemon.wait(15)
                took_s = time.monotonic() - sent_at
            finally:
                stop_daemon(daemon)
                proxy.delay_s = 0.0
        assert code == 128 + signal.SIGTERM and took_s < 2.0
        assert "shutdown_forced" in (tmp_path / "run.log").read_text()


class TestHaltOnWrongChain:
    def test_endpoint_switching_chain_id_halts_alerts_and_reports_unhealthy(
        self, chain, tmp_path, wait_log, margin_events, open_book, write_config
    ):
        """The only endpoint starts serving chain id 999 mid-run: `run` stops acting, alerts critically, /healthz
        answers 503 "halted" while the alert is delivered, and the process exits 1 within seconds."""
        open_book(chain, reserve_e6=30_000 * 10**6, eth_collateral_e6=15_000 * 10**6, btc_collateral_e6=60_000 * 10**6)
        other = Anvil.start(chain_id=999)
        port = free_port()
        hook = WebhookThatChecksHealth(f"http://127.0.0.1:{port}/healthz")
        try:
            with FaultProxy(chain.anvil.url) as proxy:
                cfg = with_sections(write_config(chain, tmp_path, rpc=proxy.url), http_port=port)
                daemon = start_daemon(chain, cfg, tmp_path / "run.log", env={"KEEPER_ALERTS__WEBHOOK_URL": hook.url})
                try:
                    wait_log(tmp_path / "run.log", "cycle_finished", 60)
                    proxy.serve(other.url)
                    switched = time.monotonic()
                    code = daemon.wait(30)
                    took_s = time.monotonic() - switched
                finally:
                    stop_daemon(daemon)
        finally:
            hook.close()
            other.stop()
        text = (tmp_path / "run.log").read_text()
        assert code == 1 and took_s < 15, text[-3000:]
        halted = [a for a in hook.alerts if a["key"] == "keeper:halted"]
        assert len(halted) == 1 and halted[0]["severity"] == "critical" and "chain id 999" in halted[0]["text"]
        status, body = hook.health_at_alert[0]
        assert status == 503 and body["status"] == "halted" and "chain id 999" in body["reasons"][0]
        assert '"event": "keeper_halting"' in text
        chain.push_price("ETH", 2_500 * 10**8)  # nobody is watching any more: nothing is sent
        assert margin_events(chain, "MarginAdded") == []

    def test_wrong_chain_behind_one_endpoint_is_failed_over(
        self, chain, tmp_path, wait_log, margin_events, open_book, write_config
    ):
        """With a second, correct endpoint, the one that switched to chain id 999 is failed over and the keeper
        still tops up the endangered position exactly once."""
        open_book(chain, reserve_e6=30_000 * 10**6, eth_collateral_e6=15_000 * 10**6, btc_collateral_e6=60_000 * 10**6)
        other = Anvil.start(chain_id=999)
        try:
            with FaultProxy(chain.anvil.url) as proxy:
                cfg = write_config(chain, tmp_path, rpc=proxy.url)
                cfg.write_text(
                    cfg.read_text().replace(
                        f'rpc_urls = ["{proxy.url}"]', f'rpc_urls = ["{proxy.url}", "{chain.anvil.url}"]'
                    )
                )
                daemon = start_daemon(chain, cfg, tmp_path / "run.log")
                try:
                    wait_log(tmp_path / "run.log", "cycle_finished", 60)
                    proxy.serve(other.url)
                    chain.push_price("ETH", 2_500 * 10**8)
                    wait_log(tmp_path / "run.log", "tx_final", 60)
                    assert daemon.poll() is None
                    daemon.send_signal(signal.SIGTERM)
                    assert daemon.wait(20) == 0
                finally:
                    stop_daemon(daemon)
        finally:
            other.stop()
        text = (tmp_path / "run.log").read_text()
        assert "serves chain id 999" in text and '"event": "keeper_halting"' not in text
        assert len(margin_events(chain, "MarginAdded")) == 1

    def test_reset_chain_halts(self, tmp_path, fresh_devchain, open_book, write_config, wait_log):
        """anvil_reset under a running daemon (no code at the protocol or Multicall3 any more) halts it: exit 1
        with a critical alert naming the missing code."""
        own = fresh_devchain  # its own anvil: the reset must not reach the worker's shared chain
        open_book(own, reserve_e6=1_000 * 10**6, eth_collateral_e6=15_000 * 10**6, btc_collateral_e6=60_000 * 10**6)
        cfg = write_config(own, tmp_path)
        daemon = start_daemon(own, cfg, tmp_path / "run.log")
        try:
            wait_log(tmp_path / "run.log", "cycle_finished", 60)
            own.anvil.request("anvil_reset", [])
            code = daemon.wait(30)
        finally:
            stop_daemon(daemon)
        text = (tmp_path / "run.log").read_text()
        assert code == 1, text[-3000:]
        alert = next(
            e for e in events(tmp_path / "run.log") if e.get("event") == "alert" and e.get("key") == "keeper:halted"
        )
        assert alert["severity"] == "critical" and "no code at" in alert["text"]
