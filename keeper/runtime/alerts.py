"""Alerts to a generic webhook: JSON POST (Slack-compatible), rate-limited, deduplicated, never raising.

Payload::

    {"text": "[critical] margin keeper: ...", "severity": "critical", "key": "...",
     "fields": {...}, "suppressed": 3, "source": "margin-keeper"}

Slack incoming webhooks read ``text`` and ignore the rest; other receivers get the structured fields.

Order of checks in :meth:`AlertSink.send`: dedup (an alert that brings no news is suppressed and counted,
without a log line; the count rides on the next alert of that key) -> the ``alert`` log line -> disabled (no
URL: logged only) -> token bucket (``rate_per_minute`` refill, ``burst`` capacity; over it the alert is
dropped and counted, and :meth:`AlertSink.send_digest` later says how many were) -> delivery. News is a key
not alerted within ``dedup_window_s`` (the reminder), a ``state`` other than the one last alerted under that
key (the caller's words for what the alert is about: a new cause), or a worse severity; :meth:`AlertSink.resolve`
forgets a key whose condition is over, so its return is news. Delivery runs on a background thread by default
so a slow webhook never stalls a check cycle; failures (timeout, connection refused, non-2xx) are logged as
``alert_failed`` and counted. The webhook URL is treated as a secret: only its host is ever logged.
"""

from __future__ import annotations

import enum
import json
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import structlog

from keeper.domain import Action, ActionKind
from keeper.runtime.metrics import KeeperMetrics

__all__ = ["AlertOutcome", "AlertSink", "TokenBucket", "alert_from_action", "gas_alert", "top_ups_of_gas_left"]

log = structlog.get_logger(__name__)


class AlertOutcome(enum.Enum):
    SENT = "sent"  # delivered (2xx)
    QUEUED = "queued"  # accepted for background delivery
    DEDUPLICATED = "deduplicated"
    RATE_LIMITED = "rate_limited"
    FAILED = "failed"
    DISABLED = "disabled"  # no webhook configured: logged only


class TokenBucket:
    """Token bucket: ``capacity`` tokens, refilled at ``rate_per_s``; ``clock`` is monotonic seconds."""

    def __init__(self, rate_per_s: float, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0 or capacity < 1:
            raise ValueError("rate_per_s must be > 0 and capacity >= 1")
        self.rate_per_s = rate_per_s
        self.capacity = capacity
        self._clock = clock
        self._tokens = float(capacity)
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate_per_s)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
"""Worse is higher: an alert of a worse severity than the one last sent under its key is news."""


class AlertSink:
    """Posts alerts to ``url`` (``None``: log only). Thread-safe; :meth:`send` never raises."""

    def __init__(
        self,
        url: str | None,
        *,
        rate_per_minute: float = 10.0,
        burst: int = 5,
        dedup_window_s: float = 900.0,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        metrics: KeeperMetrics | None = None,
        background: bool = True,
        queue_size: int = 100,
    ) -> None:
        if url is not None and urlsplit(url).scheme not in ("http", "https"):
            raise ValueError("alert webhook URL must be http(s)")
        if dedup_window_s < 0 or timeout_s <= 0:
            raise ValueError("dedup_window_s must be >= 0 and timeout_s > 0")
        self._url = url
        self.host = urlsplit(url).netloc.rsplit("@", 1)[-1] if url else None
        self._bucket = TokenBucket(rate_per_minute / 60.0, burst, clock)
        self._dedup_window_s = dedup_window_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._metrics = metrics
        self._background = background
        self._lock = threading.Lock()
        self._last_sent: dict[str, tuple[float, object, int]] = {}  # key -> (when, state, severity rank) alerted
        self.suppressed: dict[str, int] = {}
        self.rate_limited_since_digest = 0  # alerts dropped by the token bucket, not yet told (send_digest)
        self.counts: dict[AlertOutcome, int] = {o: 0 for o in AlertOutcome}
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=queue_size)
        self._worker: threading.Thread | None = None

    @classmethod
    def from_config(cls, config: Any, metrics: KeeperMetrics | None = None, **kw: Any) -> AlertSink:
        """Build from :class:`keeper.runtime.config.AlertsConfig`."""
        url = None if config.webhook_url is None else config.webhook_url.get_secret_value()
        return cls(
            url,
            rate_per_minute=config.rate_per_minute,
            burst=config.burst,
            dedup_window_s=config.dedup_window_s,
            timeout_s=config.timeout_s,
            metrics=metrics,
            **kw,
        )

    def _count(self, outcome: AlertOutcome) -> AlertOutcome:
        self.counts[outcome] += 1
        if self._metrics is not None:
            self._metrics.count_alert(outcome.value)
        return outcome

    def send(
        self,
        key: str,
        text: str,
        *,
        severity: str = "warning",
        fields: Mapping[str, Any] | None = None,
        state: object = None,
    ) -> AlertOutcome:
        """Alert ``key`` when it is news (see the module docstring: not alerted within the dedup window, another
        ``state``, a worse ``severity``), within the rate limit; returns what happened. ``state``: any value
        comparable with ``==`` that names what the alert is about without its changing figures."""
        try:
            return self._send(key, text, severity, fields or {}, state)
        except Exception as exc:  # noqa: BLE001 - an alert must never break the cycle
            log.warning("alert_failed", key=key, error=type(exc).__name__, detail=str(exc))
            return self._count(AlertOutcome.FAILED)

    def _send(self, key: str, text: str, severity: str, fields: Mapping[str, Any], state: object) -> AlertOutcome:
        rank = SEVERITY_RANK.get(severity, 1)
        with self._lock:
            now = self._clock()
            last = self._last_sent.get(key)
            if last is not None and now - last[0] < self._dedup_window_s and state == last[1] and rank <= last[2]:
                self.suppressed[key] = self.suppressed.get(key, 0) + 1
                return self._count(AlertOutcome.DEDUPLICATED)
            # news: the next repeat is measured from here, whether it is delivered, logged only or rate limited
            # (a rate-limited alert is in the log and in the next digest, not retried every cycle)
            self._last_sent[key] = (now, state, rank)
            suppressed = self.suppressed.pop(key, 0)
            limited = self._url is not None and not self._bucket.take()
            if limited:
                self.rate_limited_since_digest += 1
        log.warning("alert", key=key, severity=severity, text=text, **{f"field_{k}": v for k, v in fields.items()})
        if self._url is None:
            return self._count(AlertOutcome.DISABLED)
        if limited:
            log.warning("alert_rate_limited", key=key)
            return self._count(AlertOutcome.RATE_LIMITED)
        return self._deliver(key, text, severity, dict(fields), suppressed)

    def resolve(self, keys: Iterable[str]) -> None:
        """Forget ``keys`` (their condition is over): the next alert under one of them is news."""
        with self._lock:
            for key in keys:
                self._last_sent.pop(key, None)
                self.suppressed.pop(key, None)

    def send_digest(self) -> AlertOutcome | None:
        """One alert saying how many alerts the token bucket dropped since the last digest (each is in the log as
        an ``alert`` line), when there were any and a token is free; None when there is nothing to tell."""
        with self._lock:
            dropped = self.rate_limited_since_digest
            if self._url is None or dropped == 0 or not self._bucket.take():
                return None
            self.rate_limited_since_digest = 0
        text = (
            f"{dropped} more alert(s) over the rate limit were not sent here: the keeper's log has each "
            "(event alert); they are sent again when their state changes or after the reminder interval"
        )
        log.warning("alert", key="alerts:rate_limited", severity="warning", text=text)
        return self._deliver("alerts:rate_limited", text, "warning", {"rate_limited": dropped}, 0)

    def _deliver(self, key: str, text: str, severity: str, fields: dict[str, Any], suppressed: int) -> AlertOutcome:
        payload = {
            "text": f"[{severity}] margin keeper: {text}",
            "severity": severity,
            "key": key,
            "fields": fields,
            "suppressed": suppressed,
            "source": "margin-keeper",
        }
        if not self._background:
            return self._post(payload)
        self._ensure_worker()
        try:
            self._queue.put_nowait(payload)
        except queue.Full:
            log.warning("alert_failed", key=key, error="queue_full")
            return self._count(AlertOutcome.FAILED)
        return AlertOutcome.QUEUED

    def _post(self, payload: dict[str, Any]) -> AlertOutcome:
        body = json.dumps(payload, default=str).encode()
        request = urllib.request.Request(
            self._url or "", data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as resp:
                status = resp.status
        except urllib.error.HTTPError as err:
            log.warning("alert_failed", key=payload["key"], host=self.host, status=err.code)
            return self._count(AlertOutcome.FAILED)
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            reason = getattr(err, "reason", err)
            log.warning("alert_failed", key=payload["key"], host=self.host, error=type(reason).__name__)
            return self._count(AlertOutcome.FAILED)
        log.info("alert_sent", key=payload["key"], host=self.host, status=status)
        return self._count(AlertOutcome.SENT)

    # ---- background delivery ------------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="keeper-alerts", daemon=True)
                self._worker.start()

    def _run(self) -> None:
        while True:
            payload = self._queue.get()
            try:
                if payload is None:
                    return
                self._post(payload)
            except Exception as exc:  # noqa: BLE001 - keep the worker alive whatever happens
                log.warning("alert_failed", error=type(exc).__name__)
            finally:
                self._queue.task_done()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until queued alerts are delivered or failed; False if ``timeout_s`` ran out first."""
        deadline = time.monotonic() + timeout_s
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._queue.all_tasks_done.wait(remaining):
                    return False
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued (up to ``timeout_s``) and stop the worker."""
        self.flush(timeout_s)
        if self._worker is not None and self._worker.is_alive():
            self._queue.put(None)
            self._worker.join(timeout=timeout_s)


def alert_from_action(action: Action) -> tuple[str, str, str, dict[str, Any]]:
    """``(key, text, severity, fields)`` for a planner ALERT action or one that needs approval.

    The key is stable across cycles for the same position and kind of alert (amounts change from cycle
    to cycle, so they are not part of it): ``account:market:category``.
    """
    key = f"{action.account.lower()}:{action.market_id}:{_category(action)}"
    severity = "critical" if action.urgent else "warning"
    if action.kind is not ActionKind.ALERT and not action.needs_approval:
        severity = "info"
    fields = {
        "account": action.account,
        "market_id": action.market_id,
        "kind": action.kind.value,
        "amount_usd": action.amount_e6 / 1e6,
        "breach_probability": action.breach_probability,
        "needs_approval": action.needs_approval,
    }
    if action.size_delta_e18:
        fields["size_delta_e18"] = action.size_delta_e18
    if action.from_market_id is not None:
        fields["from_market_id"] = action.from_market_id
    return key, f"{action.account} market {action.market_id}: {action.reason}", severity, fields


def top_ups_of_gas_left(balance_wei: int, gas_per_top_up: int, max_fee_per_gas_wei: int) -> int:
    """How many top-ups the native balance pays: ``balance // (gas_limit * max_fee_per_gas)``.

    A node accepts an EIP-1559 transaction only when the sender holds ``gas_limit * max_fee_per_gas + value``
    (EIP-1559, "Specification": the balance check uses the maximum fee, not the fee finally paid), so that
    product, not the expected cost, is what each top-up needs in the wallet.
    """
    if gas_per_top_up <= 0 or max_fee_per_gas_wei <= 0:
        raise ValueError("gas_per_top_up and max_fee_per_gas_wei must be > 0")
    return max(0, balance_wei) // (gas_per_top_up * max_fee_per_gas_wei)


def gas_alert(
    account: str, balance_wei: int, gas_per_top_up: int, max_fee_per_gas_wei: int, min_top_ups: int
) -> tuple[str, str, str, dict[str, Any]] | None:
    """``(key, text, severity, fields)`` when the signer's gas pays for fewer than ``min_top_ups`` top-ups."""
    left = top_ups_of_gas_left(balance_wei, gas_per_top_up, max_fee_per_gas_wei)
    if left >= min_top_ups:
        return None
    need_wei = gas_per_top_up * max_fee_per_gas_wei
    text = (
        f"signer {account} holds {balance_wei / 1e18:.6f} ETH of gas: {left} top-up(s) left at "
        f"{gas_per_top_up:,} gas x {max_fee_per_gas_wei / 1e9:.2f} gwei ({need_wei / 1e18:.6f} ETH each), "
        f"alert below {min_top_ups}; send gas to {account}"
    )
    fields = {
        "account": account,
        "native_balance_eth": balance_wei / 1e18,
        "top_ups_left": left,
        "gas_per_top_up": gas_per_top_up,
        "max_fee_per_gas_gwei": max_fee_per_gas_wei / 1e9,
    }
    return f"gas:{account.lower()}", text, "critical" if left == 0 else "warning", fields


# reason prefixes written by keeper/planner.py, mapped to a stable dedup category
_CATEGORIES = (
    ("manual approval", "approval"),
    ("oracle price", "stale"),
    ("alert-only mode", "would_act"),
    ("watch-only account", "would_act"),
    ("position short", "short"),
)


def _category(action: Action) -> str:
    if action.needs_approval:
        return f"approval_{action.kind.value}"
    for prefix, category in _CATEGORIES:
        if action.reason.startswith(prefix):
            return category
    return action.kind.value
