"""Tests of keeper/runtime/alerts.py against a real local HTTP server capturing the posts."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs
from webhook import Clock as FakeClock
from webhook import Receiver

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


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


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

    def test_news_is_a_new_state_or_a_worse_severity_and_a_repeat_writes_no_line(self, receiver):
        """Under one key: the same state and severity again is suppressed without an ``alert`` line; a new state
        or a worse severity is sent at once (inside the window); a better severity is not news; after the window
        the reminder goes out carrying the count of what it suppressed."""
        clock = FakeClock()
        sink = AlertSink(receiver.url, background=False, dedup_window_s=900, clock=clock, burst=10)
        sends = [
            ("cannot act, wallet empty", "warning", ("cannot act", "wallet empty")),
            ("cannot act, wallet empty (new figures)", "warning", ("cannot act", "wallet empty")),
            ("short of the target", "warning", ("short", "over the cap")),
            ("short of the target, liquidatable", "critical", ("short", "over the cap")),
            ("short of the target, less urgent", "warning", ("short", "over the cap")),
        ]
        with capture_logs() as logs:
            got = [sink.send("0xabc:alert", text, severity=sev, state=state) for text, sev, state in sends]
        assert got == [
            AlertOutcome.SENT,
            AlertOutcome.DEDUPLICATED,
            AlertOutcome.SENT,
            AlertOutcome.SENT,
            AlertOutcome.DEDUPLICATED,
        ]
        assert [e["text"] for e in logs if e["event"] == "alert"] == [sends[0][0], sends[2][0], sends[3][0]]
        assert [p["severity"] for p in receiver.posts] == ["warning", "warning", "critical"]
        clock.t += 899
        assert sink.send("0xabc:alert", "again", severity="critical", state=sends[3][2]) is AlertOutcome.DEDUPLICATED
        clock.t += 2  # 901 s after the last one sent: the reminder
        assert sink.send("0xabc:alert", "reminder", severity="warning", state=sends[3][2]) is AlertOutcome.SENT
        assert receiver.posts[-1]["text"].endswith("reminder") and receiver.posts[-1]["suppressed"] == 2

    def test_a_resolved_key_is_news_when_it_comes_back(self, receiver):
        """resolve() forgets a key: the same alert right after is sent again; other keys keep their memory."""
        sink = AlertSink(receiver.url, background=False, dedup_window_s=900, clock=FakeClock(), burst=10)
        assert sink.send("a", "x", state=1) is AlertOutcome.SENT and sink.send("b", "y", state=1) is AlertOutcome.SENT
        sink.resolve({"a"})
        assert sink.send("a", "x", state=1) is AlertOutcome.SENT
        assert sink.send("b", "y", state=1) is AlertOutcome.DEDUPLICATED
        assert [p["key"] for p in receiver.posts] == ["a", "b", "a"]

    def test_rate_limited_news_is_logged_once_and_told_in_a_digest(self, receiver):
        """Over the bucket, news is logged (an ``alert`` line) and counted, not retried on every repeat; the next
        digest with a free token tells how many were not sent, once."""
        clock = FakeClock()
        sink = AlertSink(receiver.url, background=False, rate_per_minute=6, burst=2, clock=clock)
        with capture_logs() as logs:
            got = [sink.send(f"k{i}", f"x{i}", state="s") for i in range(4)]
            again = [sink.send(f"k{i}", f"x{i}", state="s") for i in range(4)]
        assert got == [AlertOutcome.SENT, AlertOutcome.SENT, AlertOutcome.RATE_LIMITED, AlertOutcome.RATE_LIMITED]
        assert again == [AlertOutcome.DEDUPLICATED] * 4
        assert [e["key"] for e in logs if e["event"] == "alert"] == ["k0", "k1", "k2", "k3"]
        assert sink.send_digest() is None  # no token yet
        clock.t += 10  # 6/min: one token per 10 s
        assert sink.send_digest() is AlertOutcome.SENT
        digest = receiver.posts[-1]
        assert digest["key"] == "alerts:rate_limited" and digest["fields"] == {"rate_limited": 2}
        assert digest["text"].startswith("[warning] margin keeper: 2 more alert(s)")
        clock.t += 10
        assert sink.send_digest() is None and len(receiver.posts) == 3

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
        """Without a webhook the alert is logged and reported DISABLED; the log is its channel, so a repeat that
        is no news writes no second line."""
        sink = AlertSink(None)
        with capture_logs() as logs:
            assert sink.send("k", "hello", state="s") is AlertOutcome.DISABLED
            assert sink.send("k", "hello again", state="s") is AlertOutcome.DEDUPLICATED
            assert sink.send_digest() is None
        assert [(e["event"], e["text"]) for e in logs] == [("alert", "hello")]


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
