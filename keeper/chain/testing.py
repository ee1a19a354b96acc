"""Fault injection for the chain layer, shipped as public test helpers.

* :class:`FaultTransport` wraps any :class:`~keeper.chain.rpc.Transport` in-process: fail the next N
  requests (timeout, connection error, HTTP 503/429), or every request of a method, and count what passed;
  ``refuse_logs_wider_than`` makes it answer every ``eth_getLogs`` over more blocks with a JSON-RPC error
  (``log_refusal``: a provider's real code and text), the other items of the batch passed through.
* :class:`FaultProxy` is a real HTTP server on a free loopback port in front of a node: switch it to answer
  503, to reset connections, to stall every request (``delay_s``), to forward to another node
  (:meth:`FaultProxy.serve`), or stop it entirely, to test failover against a real anvil; ``null_methods``
  makes it answer ``null`` for chosen methods (receipts missing while the nonce is already counted);
  ``lag_blocks`` makes it answer as a node that many blocks behind (head, state reads, receipts), for every
  request or, with ``lag_every = 2``, every other one (a load balancer over a synced and a lagging backend).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

from keeper.chain.anvil import free_port
from keeper.errors import TransientRpcError

# where the block tag sits in the params of the state reads a lagging node answers from its older head
_LAG_TAG_AT = {"eth_getTransactionCount": 1, "eth_call": 1, "eth_getBalance": 1, "eth_getCode": 1}


def _methods(body: bytes) -> list[str]:
    try:
        payload = json.loads(body)
    except ValueError:
        return []
    items = payload if isinstance(payload, list) else [payload]
    return [str(p.get("method")) for p in items if isinstance(p, dict)]


class FaultTransport:
    """Wraps a transport; ``fail_next(n)`` makes the next ``n`` sends raise TransientRpcError."""

    def __init__(self, inner, *, down: bool = False) -> None:
        self.inner = inner
        self.url = inner.url
        self.down = down
        self._fail_next = 0
        self.fail_methods: set[str] = set()
        self.seen: Counter[str] = Counter()  # method -> requests that reached this transport (including failed ones)
        self.refuse_logs_wider_than: int | None = None  # blocks (fromBlock..toBlock inclusive)
        self.log_refusal: tuple[int, str] = (-32005, "query returned more than 10000 results")  # Infura's
        self.refused = 0  # eth_getLogs answered with the refusal so far

    def fail_next(self, n: int = 1) -> None:
        self._fail_next += n

    def send(self, body: bytes, timeout_s: float) -> bytes:
        methods = _methods(body)
        self.seen.update(methods)
        if self.down:
            raise TransientRpcError(f"{self.url}: injected: endpoint down")
        if self._fail_next > 0:
            self._fail_next -= 1
            raise TransientRpcError(f"{self.url}: injected: HTTP 503")
        if self.fail_methods.intersection(methods):
            raise TransientRpcError(f"{self.url}: injected: timeout")
        if self.refuse_logs_wider_than is not None and "eth_getLogs" in methods:
            return self._refuse_wide_logs(body, timeout_s, self.refuse_logs_wider_than)
        return self.inner.send(body, timeout_s)

    def _refuse_wide_logs(self, body: bytes, timeout_s: float, limit: int) -> bytes:
        """The answer of a provider that refuses ``eth_getLogs`` over more than ``limit`` blocks."""
        payload = json.loads(body)
        items = payload if isinstance(payload, list) else [payload]

        def wide(item: dict) -> bool:
            if item.get("method") != "eth_getLogs":
                return False
            query = item["params"][0]
            return int(query["toBlock"], 16) - int(query["fromBlock"], 16) + 1 > limit

        code, message = self.log_refusal
        out = [{"jsonrpc": "2.0", "id": i["id"], "error": {"code": code, "message": message}} for i in items if wide(i)]
        self.refused += len(out)
        rest = [i for i in items if not wide(i)]
        if rest:
            answered = json.loads(self.inner.send(json.dumps(rest).encode(), timeout_s))
            out += answered if isinstance(answered, list) else [answered]
        return json.dumps(out if isinstance(payload, list) else out[0]).encode()

    def close(self) -> None:
        self.inner.close()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:  # a client hanging up mid-request is the point here
        pass


class FaultProxy:
    """An HTTP JSON-RPC proxy to ``upstream``; ``mode`` is ``"pass"``, ``"503"``, ``"429"`` or ``"reset"``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.mode = "pass"
        self.seen: Counter = Counter()
        self.port = free_port()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # silence
                pass

            def setup(self) -> None:
                super().setup()
                proxy._conns.add(self.connection)

            def do_POST(self) -> None:  # http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy.seen.update(_methods(body))
                proxy._stall()
                if proxy.mode == "reset" or proxy._stopped:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if proxy.mode in ("503", "429"):
                    self._reply(int(proxy.mode), b"unavailable")
                    return
                try:
                    lagged = proxy._lagged_head()
                    sent = body if lagged is None else proxy._lag_request(body, lagged)
                    req = urllib.request.Request(
                        proxy.upstream, data=sent, headers={"Content-Type": "application/json"}
                    )
                    with urllib.request.urlopen(req, timeout=30) as resp:
                        answer = proxy._rewrite(body, resp.read())
                    self._reply(resp.status, answer if lagged is None else proxy._lag_answer(body, answer, lagged))
                except urllib.error.URLError:
                    self._reply(502, b"bad gateway")

            def _reply(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.null_methods: set[str] = set()  # e.g. {"eth_getTransactionReceipt", "eth_getTransactionByHash"}
        self.nulled = 0  # answers replaced by null so far
        self._stopped = False
        self._conns: set = set()
        self._server = _QuietServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _rewrite(self, body: bytes, answer: bytes) -> bytes:
        """Answer ``null`` for every request whose method is in :attr:`null_methods` (what a load-balanced
        provider or a lagging backup node does for a receipt while it already counts the nonce)."""
        if not self.null_methods:
            return answer
        try:
            sent, got = json.loads(body), json.loads(answer)
        except ValueError:
            return answer
        reqs = sent if isinstance(sent, list) else [sent]
        nulled = {r.get("id") for r in reqs if isinstance(r, dict) and r.get("method") in self.null_methods}
        if not nulled:
            return answer
        items = got if isinstance(got, list) else [got]
        for item in items:
            if isinstance(item, dict) and item.get("id") in nulled:
                item.pop("error", None)
                item["result"] = None
                self.nulled += 1
        return json.dumps(items if isinstance(got, list) else items[0]).encode()

    # ---- a lagging backend (behind a load balancer: ``lag_every = 2`` answers alternately) ----------------

    lag_blocks: int = 0  # answer as a node this many blocks behind the upstream would
    lag_every: int = 1  # ... for every request (1), every other one (2: a load balancer over two backends), ...
    _requests: int = 0

    def _lagged_head(self) -> int | None:
        """The head the lagging backend is at, when this request goes to it; ``None`` for the synced one."""
        if self.lag_blocks <= 0:
            return None
        self._requests += 1
        if self._requests % self.lag_every != 0:
            return None
        req = urllib.request.Request(
            self.upstream,
            data=json.dumps({"jsonrpc": "2.0", "id": 0, "method": "eth_blockNumber", "params": []}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return max(0, int(json.loads(resp.read())["result"], 16) - self.lag_blocks)

    def _lag_request(self, body: bytes, lagged: int) -> bytes:
        """State reads at ``latest``/``pending`` are asked at the lagged head instead (what that node knows)."""
        try:
            sent = json.loads(body)
        except ValueError:
            return body
        for item in sent if isinstance(sent, list) else [sent]:
            method, params = item.get("method"), item.get("params") or []
            at = 0 if method == "eth_getBlockByNumber" else _LAG_TAG_AT.get(method)
            if at is not None and len(params) > at and params[at] in ("latest", "pending"):
                params[at] = hex(lagged)
        return json.dumps(sent).encode()

    def _lag_answer(self, body: bytes, answer: bytes, lagged: int) -> bytes:
        """The head is the lagged one; receipts, transactions and blocks newer than it are not known yet."""
        try:
            sent, got = json.loads(body), json.loads(answer)
        except ValueError:
            return answer
        methods = {r.get("id"): r.get("method") for r in (sent if isinstance(sent, list) else [sent])}
        items = got if isinstance(got, list) else [got]
        for item in items:
            method, result = methods.get(item.get("id")), item.get("result")
            if method == "eth_blockNumber":
                item["result"] = hex(lagged)
            elif method in ("eth_getTransactionReceipt", "eth_getTransactionByHash", "eth_getBlockByNumber"):
                number = result.get("blockNumber") or result.get("number") if isinstance(result, dict) else None
                if isinstance(result, dict) and (number is None or int(number, 16) > lagged):
                    item["result"] = None  # pending, or mined after the lagged head
                    self.nulled += 1
        return json.dumps(items if isinstance(got, list) else items[0]).encode()

    def stop(self) -> None:
        """Shut the proxy down: later connections are refused (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        for conn in list(self._conns):  # keep-alive connections would otherwise keep being served
            try:
                conn.shutdown(2)
            except OSError:
                pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- stall and other-chain modes (helper C: shutdown with a hung RPC, wrong chain mid-run) ----------

    delay_s: float = 0.0  # every request waits this long before it is forwarded (a slow or hung node)

    def _stall(self) -> None:
        if self.delay_s > 0:
            time.sleep(self.delay_s)

    def serve(self, upstream: str) -> None:
        """Forward from now on to another node (another chain id, or a chain without the protocol's code),
        as a load balancer that switched backends would; the keeper's connection stays the same."""
        self.upstream = upstream
