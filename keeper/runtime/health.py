"""``GET /healthz`` and ``GET /metrics`` on a loopback address, from a small threaded HTTP server.

``/healthz`` answers 200 with JSON ``{"status": "ok", "last_cycle_age_s", "head_age_s", "head_block",
"uptime_s", "reasons": []}`` and 503 with ``status`` ``"stale"`` when the last completed cycle or the
newest block is older than its threshold. Before the first cycle it answers 200 ``"starting"`` for
``max_cycle_age_s`` after start (then 503): a supervisor does not kill a daemon that is still warming up.
After :meth:`HealthState.mark_halted` it answers 503 ``"halted"`` with the reason (no endpoint serves the
configured chain, a second sender of our key, ...) until the process exits.
``/metrics`` serves the Prometheus text of :class:`~keeper.runtime.metrics.KeeperMetrics`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import structlog

from keeper.runtime.metrics import CONTENT_TYPE_LATEST, KeeperMetrics

__all__ = ["HealthServer", "HealthState"]

log = structlog.get_logger(__name__)


class HealthState:
    """What the daemon reports about its own progress (thread-safe); ``clock`` returns unix seconds."""

    def __init__(
        self, max_cycle_age_s: float = 600.0, max_head_age_s: float = 120.0, clock: Callable[[], float] = time.time
    ) -> None:
        if max_cycle_age_s <= 0 or max_head_age_s <= 0:
            raise ValueError("max_cycle_age_s and max_head_age_s must be > 0")
        self.max_cycle_age_s = max_cycle_age_s
        self.max_head_age_s = max_head_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._started_s = clock()
        self._last_cycle_s: float | None = None
        self._head_seen_s: float | None = None
        self._head_block: int | None = None
        self._halted: str | None = None
        self._unsafe: str | None = None

    def mark_halted(self, reason: str) -> None:
        """The keeper stopped acting for ``reason``: report unhealthy from now on."""
        with self._lock:
            self._halted = reason

    def mark_cycle(self, finished_at_s: float | None = None) -> None:
        with self._lock:
            self._last_cycle_s = self._clock() if finished_at_s is None else finished_at_s

    def mark_head(self, block_number: int, block_timestamp_s: float | None = None) -> None:
        """Record a new head; its age is measured from the block's timestamp (or from now when not given)."""
        with self._lock:
            self._head_block = block_number
            self._head_seen_s = self._clock() if block_timestamp_s is None else block_timestamp_s

    def mark_unsafe(self, reason: str) -> None:
        """The keeper stopped sending for a safety reason (e.g. a second sender of its key): report 503."""
        with self._lock:
            self._unsafe = reason

    def snapshot(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) of ``/healthz`` right now."""
        with self._lock:
            now = self._clock()
            cycle_age = None if self._last_cycle_s is None else max(0.0, now - self._last_cycle_s)
            head_age = None if self._head_seen_s is None else max(0.0, now - self._head_seen_s)
            uptime = now - self._started_s
            head_block = self._head_block
            halted = self._halted
            unsafe = self._unsafe
        reasons = [f"halted: {halted}"] if halted else []
        if unsafe:
            reasons.append(unsafe)
        if cycle_age is None:
            if uptime > self.max_cycle_age_s:
                reasons.append(f"no cycle completed in {uptime:.0f}s since start")
        elif cycle_age > self.max_cycle_age_s:
            reasons.append(f"last cycle {cycle_age:.0f}s ago (> {self.max_cycle_age_s:.0f}s)")
        if head_age is not None and head_age > self.max_head_age_s:
            reasons.append(f"newest block {head_age:.0f}s old (> {self.max_head_age_s:.0f}s)")
        if halted:
            status, code = "halted", 503
        elif reasons:
            status, code = "stale", 503
        elif cycle_age is None:
            status, code = "starting", 200
        else:
            status, code = "ok", 200
        body = {
            "status": status,
            "last_cycle_age_s": cycle_age,
            "head_age_s": head_age,
            "head_block": head_block,
            "uptime_s": uptime,
            "reasons": reasons,
        }
        return code, body


def _handler(state: HealthState, metrics: KeeperMetrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "margin-keeper"

        def do_GET(self) -> None:  # http.server API
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                code, body = state.snapshot()
                self._send(code, "application/json", json.dumps(body).encode())
            elif path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, metrics.render())
            else:
                self._send(404, "application/json", b'{"error": "not found", "paths": ["/healthz", "/metrics"]}')

        def _send(self, code: int, ctype: str, payload: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # stdlib signature
            log.debug("http_request", client=self.client_address[0], line=format % args)

    return Handler


class HealthServer:
    """A background ``ThreadingHTTPServer``; ``port=0`` picks a free port (read it from ``.port``).

    The config layer refuses non-loopback hosts unless ``http.allow_public``; this class binds what it
    is given. Use as a context manager or call :meth:`start` / :meth:`stop`.
    """

    def __init__(self, state: HealthState, metrics: KeeperMetrics, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = state
        self.metrics = metrics
        self._host, self._port = host, port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("server not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def start(self) -> Self:
        if self._server is not None:
            return self
        server = ThreadingHTTPServer((self._host, self._port), _handler(self.state, self.metrics))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="keeper-health", daemon=True)
        self._thread.start()
        log.info("http_listening", host=self._host, port=self.port, paths=["/healthz", "/metrics"])
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
