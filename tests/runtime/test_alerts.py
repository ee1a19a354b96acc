"""Tests of keeper/runtime/alerts.py against a real local HTTP server capturing the posts."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from structlog.testing import capture_logs

from keeper.domain import Action, ActionKind
from keeper.runtime.alerts import (
    AlertOutcome,
    AlertSink,
    TokenBucket,
    alert_from_action,
    gas_alert,
    top_ups_of_gas_left,
)
from keeper.runtime.metrics import KeeperMetrics


class Receiver:
    """A webhook receiver on 127.0.0.1:<free port> that records JSON bodies and answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.posts: list[dict] = []
        self.status = status
        self.block = threading.Event()
        self.block.set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                outer.block.wait(10)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts.append({"ctype": self.headers["Content-Type"], **json.loads(body)})
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )  # shutdown() returns within one poll interval (default 0.5 s)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/SECRETTOKEN"

    def close(self):
        self.block.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class TestTokenBucket:
    def test_burst_then_refill(self):
        """A bucket gives `capacity` tokens at once, then one per 1/rate seconds."""
        clock = FakeClock()
        b = TokenBucket(rate_per_s=0.5, capacity=2, clock=clock)
        assert [b.take(), b.take(), b.take()] == [True, True, False]
        clock.t += 2.0
        assert [b.take(), b.take()] == [True, False]


class TestAlertSink:
    def test_posts_slack_compatible_json(self, receiver):
        """An alert arrives as a JSON POST with Slack's `text` plus structured fields."""
        sink = AlertSink(receiver.url, background=False)
        assert sink.send("k1", "ETH position short", severity="critical", fields={"market_id": 0}) is AlertOutcome.SENT
        (post,) = receiver.posts
        assert post["ctype"] == "application/json" and post["text"].startswith("[critical] margin keeper: ETH")
        assert post["fields"] == {"market_id": 0} and post["key"] == "k1" and post["suppressed"] == 0

    def test_dedup_within_window_counted(self, receiver):
        """The same key inside the window is suppressed; the count rides on the next alert of that key."""
        clock = FakeClock()
        metrics = KeeperMetrics()
        sink = AlertSink(receiver.url, background=False, dedup_window_s=60, clock=clock, metrics=metrics)
        outcomes = [sink.send("k", "x") for _ in range(3)]
        assert outcomes == [AlertOutcome.SENT, AlertOutcome.DEDUPLICATED, AlertOutcome.DEDUPLICATED]
        assert sink.send("other", "y") is AlertOutcome.SENT
        clock.t += 61
        assert sink.send("k", "x again") is AlertOutcome.SENT
        assert [p["suppressed"] for p in receiver.posts] == [0, 0, 2]
        assert metrics.value("keeper_alerts_total", {"outcome": "deduplicated"}) == 2

    def test_rate_limit(self, receiver):
        """Beyond the burst, distinct alerts are dropped until tokens refill."""
        clock = FakeClock()
        sink = AlertSink(receiver.url, background=False, rate_per_minute=6, burst=2, clock=clock)
        got = [sink.send(f"k{i}", "x") for i in range(4)]
        assert got == [AlertOutcome.SENT, AlertOutcome.SENT, AlertOutcome.RATE_LIMITED, AlertOutcome.RATE_LIMITED]
        clock.t += 10  # 6/min -> one token per 10 s
        assert sink.send("k9", "x") is AlertOutcome.SENT and len(receiver.posts) == 3

    def test_http_error_logged_not_raised(self, receiver):
        """A 500 from the webhook is a FAILED outcome and an alert_failed log without the URL's token."""
        receiver.status = 500
        sink = AlertSink(receiver.url, background=False)
        with capture_logs() as logs:
            assert sink.send("k", "x") is AlertOutcome.FAILED
        failed = [e for e in logs if e["event"] == "alert_failed"]
        assert failed and failed[0]["status"] == 500 and "SECRETTOKEN" not in repr(logs)

    def test_connection_refused_and_timeout(self, receiver):
        """Unreachable and too-slow webhooks fail quietly (no exception into the caller)."""
        dead = AlertSink("http://127.0.0.1:9/x", background=False, timeout_s=2)  # port 9 (discard): refused
        assert dead.send("k", "x") is AlertOutcome.FAILED
        receiver.block.clear()  # the receiver now hangs until released
        slow = AlertSink(receiver.url, background=False, timeout_s=0.2)
        assert slow.send("k", "x") is AlertOutcome.FAILED
        receiver.block.set()

    def test_background_delivery(self, receiver):
        """In background mode send() returns QUEUED at once and flush() waits for delivery."""
        sink = AlertSink(receiver.url)
        assert sink.send("a", "1") is AlertOutcome.QUEUED and sink.send("b", "2") is AlertOutcome.QUEUED
        assert sink.flush(10)
        assert sorted(p["key"] for p in receiver.posts) == ["a", "b"] and sink.counts[AlertOutcome.SENT] == 2
        sink.close()

    def test_disabled_without_url(self):
        """Without a webhook the alert is logged and reported DISABLED."""
        with capture_logs() as logs:
            assert AlertSink(None).send("k", "hello") is AlertOutcome.DISABLED
        assert logs[0]["event"] == "alert" and logs[0]["text"] == "hello"


class TestAlertFromAction:
    def test_key_stable_across_amounts_and_categories(self):
        """Shortfall alerts of one position share a key whatever the amount; stale alerts get another."""
        a = Action(
            ActionKind.ALERT, "0xAbC", 0, amount_e6=5, reason="position short of its target buffer by $5", urgent=True
        )
        b = Action(ActionKind.ALERT, "0xabc", 0, amount_e6=9, reason="position short of its target buffer by $9")
        c = Action(ActionKind.ALERT, "0xabc", 0, reason="oracle price of market 0 is stale: ...")
        ka, text, sev, fields = alert_from_action(a)
        assert ka == alert_from_action(b)[0] == "0xabc:0:short" and alert_from_action(c)[0] == "0xabc:0:stale"
        assert sev == "critical" and fields["amount_usd"] == 5e-6 and "0xAbC market 0" in text


class TestGasLeft:
    def test_top_ups_left_is_balance_over_gas_limit_times_max_fee(self):
        """0.01 ETH at 150,000 gas x 20 gwei (0.003 ETH per top-up, the node's balance check) pays 3 top-ups."""
        assert top_ups_of_gas_left(10**16, 150_000, 20 * 10**9) == 3
        assert top_ups_of_gas_left(3 * 150_000 * 20 * 10**9 - 1, 150_000, 20 * 10**9) == 2  # one wei short
        assert top_ups_of_gas_left(0, 150_000, 10**9) == 0

    def test_alert_below_threshold_only_and_critical_at_zero(self):
        """No alert at the threshold; a warning below it; critical when not even one top-up is paid."""
        per = 150_000 * 10**9
        assert gas_alert("0xAb", 5 * per, 150_000, 10**9, 5) is None
        key, text, severity, fields = gas_alert("0xAb", 4 * per, 150_000, 10**9, 5)
        assert key == "gas:0xab" and severity == "warning" and fields["top_ups_left"] == 4 and "4 top-up(s)" in text
        assert gas_alert("0xAb", per - 1, 150_000, 10**9, 5)[2] == "critical"
