"""JSON-RPC access to a chain through one or more endpoints, with failover and read retries.

The client holds a list of :class:`Transport` objects (one method, :meth:`Transport.send`, bytes in and
bytes out, like httpx's ``handle_request``), so tests swap in a fault-injecting transport or put a proxy in
front of a real node. Foreign exceptions are mapped here, at the boundary::

    TransientRpcError      timeout, connection error, HTTP 429 / 5xx, JSON-RPC rate limit -> retry a read
    │                      with backoff on the next healthy endpoint; a send is NEVER retried here
    ChainMismatchError     an endpoint reports another chain id, or has no code at an address that must
    │                      have it (a reset chain): that endpoint is failed over like an outage; raised
    │                      to the caller only when no endpoint is left (the daemon halts on it)
    RpcRejectedError
    └── RpcErrorResponse   the node answered with a JSON-RPC error (``code``, ``message``, ``data``)
        └── ExecutionReverted  ``eth_call`` / ``eth_estimateGas`` revert, ``data`` = revert bytes

Resubmitting a transaction is the transaction manager's decision alone (keeper/tx/manager.py): the
transport treats ``eth_sendRawTransaction`` as non-idempotent and raises on the first failure. It still
marks the endpoint unhealthy so the next request goes elsewhere.

No hidden requests but one: the client sends exactly what it is asked to, plus one verification round trip
(``eth_chainId`` and ``eth_getCode`` of each address registered with :meth:`ChainClient.require_code`)
when it starts using an endpoint (first use, after that endpoint failed, every ``reverify_s``, or after
:meth:`ChainClient.suspect`). :meth:`ChainClient.web3` gives a ``Web3`` over the same client with no
middleware (web3's validation middleware adds two ``eth_chainId`` per call).

Every request is bounded in time: HTTP by a connect, read and whole-body deadline of ``timeout_s``,
WebSocket by its open and receive timeouts. :meth:`ChainClient.abort` (shutdown) makes every later request
and retry sleep fail at once.
"""

from __future__ import annotations

import binascii
import itertools
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import requests
import structlog

from keeper.errors import ChainMismatchError, RpcRejectedError, TransientRpcError
from keeper.redact import mask_text, mask_url, url_secrets


def _masked(exc: BaseException, url: str) -> str:
    """``exc``'s text without the URL's credentials (requests quotes the path: ``url: /v2/APIKEY``)."""
    return mask_text(str(exc), url_secrets(url))


if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

BlockId = int | str | dict[str, Any]
"""A block: its number, a tag ("latest"), or an EIP-1898 object (``{"blockHash": ..., "requireCanonical": True}``)."""

log = structlog.get_logger(__name__)

NON_IDEMPOTENT_METHODS = frozenset({"eth_sendRawTransaction", "eth_sendTransaction"})
_TRANSIENT_RPC_CODES = frozenset({-32005, 429})  # "limit exceeded" / rate limited
_TRANSIENT_MESSAGES = ("rate limit", "too many requests", "header not found", "try again")
# ... but not a query the node refuses as too large, whatever its code (Infura answers "query returned more than
# 10000 results" with -32005): asking again gets the same answer, the caller must ask for less
_QUERY_TOO_LARGE = ("returned more than", "block range", "range is too", "range too", "response size")


def _busy(code: Any, message: str) -> bool:
    """Whether a JSON-RPC error asks to back off and try again (a rate limit), not to ask differently."""
    lowered = message.lower()
    if any(m in lowered for m in _QUERY_TOO_LARGE):
        return False
    return code in _TRANSIENT_RPC_CODES or any(m in lowered for m in _TRANSIENT_MESSAGES)


class Transport(Protocol):
    """Moves one JSON-RPC request body (single or batch) to a node and returns the raw answer."""

    url: str

    def send(self, body: bytes, timeout_s: float) -> bytes:
        """Raise :class:`TransientRpcError` for anything a retry or another endpoint could fix."""
        ...

    def close(self) -> None: ...


class RpcErrorResponse(RpcRejectedError):
    """The node answered with a JSON-RPC error object."""

    def __init__(self, method: str, code: int | None, message: str, data: Any = None) -> None:
        super().__init__(f"{method}: [{code}] {message}")
        self.method = method
        self.code = code
        self.message = message
        self.data = data

    @property
    def data_bytes(self) -> bytes | None:
        """The error's ``data`` as bytes when it is a hex string (revert data), else ``None``."""
        data = self.data
        if isinstance(data, dict):  # some nodes nest it: {"data": "0x..."}
            data = data.get("data")
        if isinstance(data, str) and data.startswith("0x"):
            try:
                return bytes.fromhex(data[2:])
            except ValueError:
                return None
        return None


class ExecutionReverted(RpcErrorResponse):
    """``eth_call`` or ``eth_estimateGas`` reverted; :attr:`data_bytes` holds the revert data."""


class LaggingNodeError(TransientRpcError):
    """An endpoint's head is further behind the highest block already seen than ``max_head_lag_blocks``: its
    state is stale (a backup node that stopped syncing). Treated like an outage: fail over, never use it."""


class _NodeBusy(TransientRpcError):
    """The node answered but asked us to back off (rate limit): the connection itself is fine."""


class HttpTransport:
    """HTTP(S) JSON-RPC over a keep-alive ``requests.Session``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._session = requests.Session()
        self._headers = {"Content-Type": "application/json"}

    def send(self, body: bytes, timeout_s: float) -> bytes:
        deadline = time.monotonic() + timeout_s
        try:
            resp = self._session.post(self.url, data=body, headers=self._headers, timeout=timeout_s, stream=True)
            resp._content = _read_body(resp, deadline)
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise TransientRpcError(f"{mask_url(self.url)}: {type(exc).__name__}: {_masked(exc, self.url)}") from exc
        except requests.RequestException as exc:
            raise TransientRpcError(f"{mask_url(self.url)}: {_masked(exc, self.url)}") from exc
        if resp.status_code == 429 or resp.status_code >= 500:
            raise TransientRpcError(f"{mask_url(self.url)}: HTTP {resp.status_code}")
        if resp.status_code >= 400:
            raise RpcRejectedError(f"{mask_url(self.url)}: HTTP {resp.status_code}: {resp.text[:200]}")
        return resp.content

    def close(self) -> None:
        self._session.close()


class WebSocketTransport:
    """JSON-RPC over one WebSocket connection (requests are serialised; reconnects on failure)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: ClientConnection | None = None
        self._lock = threading.Lock()

    def send(self, body: bytes, timeout_s: float) -> bytes:
        from websockets.exceptions import WebSocketException
        from websockets.sync.client import connect

        with self._lock:
            try:
                if self._conn is None:
                    self._conn = connect(self.url, open_timeout=timeout_s, max_size=2**27)
                self._conn.send(body.decode())
                answer = self._conn.recv(timeout=timeout_s)
            except (OSError, TimeoutError, WebSocketException) as exc:
                self._drop()
                raise TransientRpcError(
                    f"{mask_url(self.url)}: {type(exc).__name__}: {_masked(exc, self.url)}"
                ) from exc
            return answer.encode() if isinstance(answer, str) else answer

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception as exc:  # noqa: BLE001 - closing a broken socket may fail in any way
                log.debug("ws_close_failed", url=mask_url(self.url), error=type(exc).__name__)
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._drop()


def _read_body(resp: requests.Response, deadline: float) -> bytes:
    """The whole body, or :class:`requests.Timeout` when it is still arriving at ``deadline`` (a node that
    trickles bytes would otherwise pass every per-read timeout forever)."""
    chunks: list[bytes] = []
    while True:
        # read1: what one recv brings (read(n) would wait for n bytes, each recv within the read timeout)
        chunk = resp.raw.read1(65_536, decode_content=True)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        if time.monotonic() > deadline:
            resp.close()  # drop the connection: the rest of this answer must not be read as the next one
            raise requests.Timeout("answer still arriving at the request deadline")


def transport_for(url: str) -> Transport:
    """An HTTP or WebSocket transport, chosen by the URL scheme."""
    if url.startswith(("ws://", "wss://")):
        return WebSocketTransport(url)
    if url.startswith(("http://", "https://")):
        return HttpTransport(url)
    raise RpcRejectedError(f"unsupported RPC URL scheme: {mask_url(url)!r} (use http(s):// or ws(s)://)")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Reads: up to ``attempts`` tries, sleeping ``base_s * 2**k`` (capped at ``max_s``) between them."""

    attempts: int = 5
    base_s: float = 0.05
    max_s: float = 1.0
    cooldown_s: float = 5.0  # a failed endpoint is skipped for this long while another one is healthy

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.base_s < 0 or self.max_s < 0:
            raise ValueError("backoff times must be non-negative")

    def delay_s(self, attempt: int) -> float:
        return min(self.max_s, self.base_s * (2**attempt))


@dataclass
class _Endpoint:
    transport: Transport
    verified: bool = False
    failed_at: float | None = None
    failures: int = 0
    verified_at: float = 0.0
    mismatch: str | None = None  # why the endpoint serves the wrong chain (None: it did not, last time)


@dataclass
class RpcStats:
    """Counters for benchmarks and metrics: HTTP/WS round trips and JSON-RPC requests inside them."""

    round_trips: int = 0
    requests: int = 0
    retries: int = 0
    failovers: int = 0
    by_method: dict[str, int] = field(default_factory=dict)

    def reset(self) -> None:
        self.round_trips = self.requests = self.retries = self.failovers = 0
        self.by_method.clear()


class ChainClient:
    """A chain seen through one or more RPC endpoints, all expected to serve ``chain_id``."""

    def __init__(
        self,
        transports: Sequence[Transport],
        chain_id: int | None = None,
        *,
        timeout_s: float = 10.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        max_head_lag_blocks: int | None = None,
        reverify_s: float | None = 30.0,
    ) -> None:
        if not transports:
            raise ValueError("at least one RPC endpoint is required")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if max_head_lag_blocks is not None and max_head_lag_blocks < 0:
            raise ValueError("max_head_lag_blocks must be >= 0 (or None: no check)")
        # the highest head any endpoint has reported (eth_blockNumber); an endpoint answering more than
        # max_head_lag_blocks below it is lagging (None: no check, e.g. on a dev chain that is reverted)
        self.max_head_lag_blocks = max_head_lag_blocks
        self.highest_block = -1
        self._endpoints = [_Endpoint(t) for t in transports]
        self._current = 0
        self.chain_id = chain_id
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()  # reads may run on several threads (Multicall's concurrent batches)
        self.stats = RpcStats()
        if reverify_s is not None and reverify_s <= 0:
            raise ValueError("reverify_s must be > 0 (or None: verify on first use and after failures only)")
        self.reverify_s = reverify_s
        self.required_code: dict[str, str] = {}  # name -> address that must hold code on this chain
        self._aborted = threading.Event()

    @classmethod
    def connect(
        cls,
        urls: Sequence[str] | str,
        chain_id: int | None = None,
        timeout_s: float = 10.0,
        *,
        retry: RetryPolicy | None = None,
        max_head_lag_blocks: int | None = None,
        reverify_s: float | None = 30.0,
    ) -> ChainClient:
        """Open endpoints for ``urls`` (first = preferred) and check the chain id on the first reachable one.

        With ``chain_id=None`` the first endpoint's chain id is adopted and every later endpoint must match it.
        """
        if isinstance(urls, str):
            urls = [urls]
        client = cls(
            [transport_for(u) for u in urls],
            chain_id,
            timeout_s=timeout_s,
            retry=retry,
            max_head_lag_blocks=max_head_lag_blocks,
            reverify_s=reverify_s,
        )
        client.request("eth_blockNumber", [])  # forces a chain-id check of the endpoint in use
        return client

    # ---- endpoint selection ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """URL of the endpoint currently in use."""
        return self._endpoints[self._current].transport.url

    @property
    def urls(self) -> list[str]:
        return [e.transport.url for e in self._endpoints]

    def _pick(self) -> _Endpoint:
        now = self._clock()
        n = len(self._endpoints)
        usable = [
            i
            for i, e in enumerate(self._endpoints)
            if e.mismatch is None or now - (e.failed_at or 0.0) >= self.retry.cooldown_s
        ]
        if not usable:
            raise ChainMismatchError(
                "no RPC endpoint left that serves the configured chain: "
                + "; ".join(f"{e.transport.url}: {e.mismatch}" for e in self._endpoints)
            )
        for k in range(n):
            idx = (self._current + k) % n
            ep = self._endpoints[idx]
            if idx not in usable:
                continue
            if ep.failed_at is None or now - ep.failed_at >= self.retry.cooldown_s:
                if idx != self._current:
                    log.warning("rpc_failover", from_url=mask_url(self.url), to_url=mask_url(ep.transport.url))
                    self.stats.failovers += 1
                    self._current = idx
                return ep
        # everything failed recently: try the one that failed longest ago
        idx = min(usable, key=lambda i: self._endpoints[i].failed_at or 0.0)
        if idx != self._current:
            self.stats.failovers += 1
            self._current = idx
        return self._endpoints[idx]

    def _mark_failed(self, ep: _Endpoint, exc: Exception, reconnect: bool = True) -> None:
        ep.failed_at = self._clock()
        ep.failures += 1
        if reconnect:
            ep.verified = False  # the next use is a reconnect: check the chain id again
        log.warning("rpc_endpoint_failed", url=mask_url(ep.transport.url), error=str(exc)[:200])

    def require_code(self, addresses: dict[str, str]) -> None:
        """Addresses (by name) that must hold code on every endpoint; checked at each verification, so a
        reset chain (anvil_reset, a node resynced from genesis) is failed over like a wrong chain id."""
        with self._lock:
            self.required_code = {name: addr for name, addr in addresses.items() if addr}
            for ep in self._endpoints:
                ep.verified = False

    def suspect(self) -> None:
        """Verify the endpoint in use again before its next request (an answer looked like another chain)."""
        with self._lock:
            self._endpoints[self._current].verified = False

    def confirm_chain(self) -> None:
        """A caller saw evidence of another chain (no code where the protocol should be): verify the endpoint in
        use again, failing over if it is wrong. Raises :class:`ChainMismatchError` only when no endpoint is left."""
        self.suspect()
        self.request("eth_blockNumber")

    def abort(self) -> None:
        """Shutting down: every later request (and retry sleep) raises :class:`TransientRpcError` at once."""
        self._aborted.set()

    def _needs_verify(self, ep: _Endpoint) -> bool:
        if not ep.verified:
            return True
        return self.reverify_s is not None and self._clock() - ep.verified_at >= self.reverify_s

    def _verify(self, ep: _Endpoint) -> None:
        names = list(self.required_code)
        payloads = [self._payload("eth_chainId", [])] + [
            self._payload("eth_getCode", [self.required_code[n], "latest"]) for n in names
        ]
        raw = self._roundtrip(ep, payloads)
        chain_id = int(self._unwrap("eth_chainId", raw[0]), 16)
        if self.chain_id is None:
            self.chain_id = chain_id
        elif chain_id != self.chain_id:
            raise ChainMismatchError(
                f"{mask_url(ep.transport.url)} serves chain id {chain_id}, expected {self.chain_id}"
            )
        missing = [
            n
            for n, answer in zip(names, raw[1:], strict=True)
            if self._unwrap("eth_getCode", answer) in ("0x", "0x0", "", None)
        ]
        if missing:
            raise ChainMismatchError(
                f"{ep.transport.url} has no code at "
                + ", ".join(f"{n} {self.required_code[n]}" for n in missing)
                + f" on chain id {chain_id}: a reset or different chain"
            )
        ep.verified = True
        ep.verified_at = self._clock()
        ep.failed_at = None
        ep.mismatch = None

    # ---- wire ------------------------------------------------------------------------------------

    def _payload(self, method: str, params: Any) -> dict:
        return {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}

    def _roundtrip(self, ep: _Endpoint, payloads: list[dict], body: bytes | None = None) -> list[dict]:
        """Send ``payloads`` (or ``body``, their JSON already encoded) and return the answers in their order."""
        if body is None:
            body = json.dumps(payloads if len(payloads) > 1 else payloads[0], separators=(",", ":")).encode()
        with self._stats_lock:
            self.stats.round_trips += 1
            self.stats.requests += len(payloads)
            for p in payloads:
                self.stats.by_method[p["method"]] = self.stats.by_method.get(p["method"], 0) + 1
        raw = ep.transport.send(body, self.timeout_s)
        try:
            answer = json.loads(raw)
        except ValueError as exc:
            raise TransientRpcError(f"{mask_url(ep.transport.url)}: answer is not JSON: {raw[:100]!r}") from exc
        if isinstance(answer, dict):
            if len(payloads) > 1:  # a batch answered with one error object (node refuses batches)
                self._unwrap("batch", answer)
                raise TransientRpcError(f"{mask_url(ep.transport.url)}: batch answered with a single object")
            answer = [answer]
        by_id = {a.get("id"): a for a in answer if isinstance(a, dict)}
        try:
            return [by_id[p["id"]] for p in payloads]
        except KeyError as exc:
            raise TransientRpcError(f"{mask_url(ep.transport.url)}: answer misses request id {exc}") from exc

    @staticmethod
    def _unwrap(method: str, answer: dict) -> Any:
        err = answer.get("error")
        if err is None:
            if "result" not in answer:
                raise TransientRpcError(f"{method}: answer has neither result nor error")
            return answer["result"]
        code = err.get("code")
        message = str(err.get("message", ""))
        lowered = message.lower()
        if _busy(code, message):
            raise _NodeBusy(f"{method}: [{code}] {message}")
        if code == 3 or "revert" in lowered:
            raise ExecutionReverted(method, code, message, err.get("data"))
        raise RpcErrorResponse(method, code, message, err.get("data"))

    def _execute(self, payloads: list[dict], *, retry: bool, body: bytes | None = None) -> list[dict]:
        attempts = self.retry.attempts if retry else 1
        last: Exception | None = None
        mismatches = 0
        attempt = 0
        while attempt < attempts:
            if self._aborted.is_set():
                raise TransientRpcError("RPC client aborted: the keeper is shutting down")
            with self._lock:
                ep = self._pick()
            try:
                if self._needs_verify(ep):
                    try:
                        self._verify(ep)
                    except ChainMismatchError as exc:
                        with self._lock:
                            ep.mismatch = str(exc)
                            self._mark_failed(ep, exc)
                        mismatches += 1
                        if mismatches > len(self._endpoints):
                            raise
                        continue  # fail over without spending a read attempt; _pick raises when none is left
                answers = self._roundtrip(ep, payloads, body)
                for a in answers:  # a rate-limit error inside the answer counts as transient
                    err = a.get("error")
                    if err and _busy(err.get("code"), str(err.get("message", ""))):
                        raise _NodeBusy(f"{mask_url(ep.transport.url)}: {err.get('message')}")
                self._check_head(ep, payloads, answers)
                return answers
            except TransientRpcError as exc:
                last = exc
                with self._lock:
                    # a lagging head may be a reset chain: the next use verifies chain id and code again
                    self._mark_failed(ep, exc, reconnect=not isinstance(exc, _NodeBusy))
                if attempt + 1 < attempts:
                    with self._stats_lock:
                        self.stats.retries += 1
                    self._sleep(self.retry.delay_s(attempt))  # at most RetryPolicy.max_s; abort is checked next
            attempt += 1
        if last is None:
            raise TransientRpcError("no RPC attempt was made")
        raise last

    def _check_head(self, ep: _Endpoint, payloads: list[dict], answers: list[dict]) -> None:
        """Raise :class:`LaggingNodeError` when an ``eth_blockNumber`` answer is too far behind the highest
        head seen; otherwise remember the new highest head."""
        for payload, answer in zip(payloads, answers, strict=False):
            if payload["method"] != "eth_blockNumber" or not isinstance(answer.get("result"), str):
                continue
            head = int(answer["result"], 16)
            if self.max_head_lag_blocks is not None and self.highest_block - head > self.max_head_lag_blocks:
                log.warning("rpc_head_lagging", url=mask_url(ep.transport.url), head=head, highest=self.highest_block)
                raise LaggingNodeError(
                    f"{mask_url(ep.transport.url)}: head {head} is {self.highest_block - head} blocks behind block "
                    f"{self.highest_block} already seen (limit {self.max_head_lag_blocks}): its state is stale"
                )
            self.highest_block = max(self.highest_block, head)

    # ---- public ----------------------------------------------------------------------------------

    def request(self, method: str, params: list | None = None) -> Any:
        """One JSON-RPC call; reads are retried/failed over, sends are tried exactly once."""
        retry = method not in NON_IDEMPOTENT_METHODS
        answer = self._execute([self._payload(method, params or [])], retry=retry)[0]
        return self._unwrap(method, answer)

    def batch(self, calls: Sequence[tuple[str, list]], *, raise_errors: bool = True) -> list[Any]:
        """Several read calls in one round trip (a JSON-RPC batch); results in order.

        With ``raise_errors=False`` a failed item is returned as its :class:`RpcErrorResponse` instead.
        """
        if not calls:
            return []
        if any(m in NON_IDEMPOTENT_METHODS for m, _ in calls):
            raise RpcRejectedError("sends cannot be batched: they are never retried")
        answers = self._execute([self._payload(m, p) for m, p in calls], retry=True)
        out: list[Any] = []
        for (method, _), answer in zip(calls, answers, strict=True):
            try:
                out.append(self._unwrap(method, answer))
            except RpcErrorResponse as exc:
                if raise_errors:
                    raise
                out.append(exc)
        return out

    def call_many(
        self, calls: Sequence[tuple[str, bytes]], block: BlockId = "latest"
    ) -> list[bytes | RpcErrorResponse]:
        """``eth_call`` of each (to, calldata) at ``block`` in one JSON-RPC batch (one round trip, retried like
        :meth:`batch`): the answers as bytes, a failed item as its :class:`RpcErrorResponse`.

        The same requests :meth:`batch` would send, with the body written directly: each calldata is hex-encoded
        once into the body (no ``json.dumps`` pass over megabytes of hex, which needs no escaping), and each
        answer is decoded from hex once. Thread-safe: several may run at once on different threads."""
        if not calls:
            return []
        tag = json.dumps(hex(block) if isinstance(block, int) else block).encode()
        ids = [next(self._ids) for _ in calls]
        payloads: list[dict] = [{"id": i, "method": "eth_call"} for i in ids]
        parts = [
            b'{"jsonrpc":"2.0","id":%d,"method":"eth_call","params":[{"to":%s,"data":"0x%s"},%s]}'
            % (i, json.dumps(to).encode(), binascii.hexlify(data), tag)
            for i, (to, data) in zip(ids, calls, strict=True)
        ]
        body = parts[0] if len(parts) == 1 else b"[" + b",".join(parts) + b"]"
        answers = self._execute(payloads, retry=True, body=body)
        out: list[bytes | RpcErrorResponse] = []
        for answer in answers:
            try:
                result = self._unwrap("eth_call", answer)
            except RpcErrorResponse as exc:
                out.append(exc)
                continue
            if not isinstance(result, str) or not result.startswith("0x"):
                raise TransientRpcError(f"eth_call answered {str(result)[:40]!r}, not hex data")
            out.append(binascii.unhexlify(result[2:]))
        return out

    def batch_each(self, calls: Sequence[tuple[str, list]]) -> list[list[Any]]:
        """The same read batch on every endpoint not cooling down after a failure (one try each, no failover):
        one result list per endpoint that answered (an item that errored is ``None``). For evidence that must
        not depend on which endpoint happens to be in use (e.g. looking our own transactions up by hash)."""
        out: list[list[Any]] = []
        now = self._clock()
        for ep in list(self._endpoints):
            if ep.failed_at is not None and now - ep.failed_at < self.retry.cooldown_s and len(out) > 0:
                continue
            try:
                if not ep.verified:
                    self._verify(ep)
                answers = self._roundtrip(ep, [self._payload(m, p) for m, p in calls])
            except (TransientRpcError, ChainMismatchError) as exc:
                with self._lock:
                    self._mark_failed(ep, exc)
                continue
            out.append([a.get("result") if a.get("error") is None else None for a in answers])
        if not out:
            raise TransientRpcError("no endpoint answered the lookup")
        return out

    # ---- typed helpers ---------------------------------------------------------------------------

    def block_number(self) -> int:
        return int(self.request("eth_blockNumber"), 16)

    def get_block(self, block: int | str = "latest", full: bool = False) -> dict | None:
        tag = hex(block) if isinstance(block, int) else block
        return self.request("eth_getBlockByNumber", [tag, full])

    def call(
        self,
        to: str,
        data: bytes | str,
        block: int | str = "latest",
        sender: str | None = None,
        value: int = 0,
        gas: int | None = None,
    ) -> bytes:
        """``eth_call``; raises :class:`ExecutionReverted` with the revert data on a revert."""
        tx: dict[str, Any] = {"to": to, "data": _hex(data)}
        if sender:
            tx["from"] = sender
        if value:
            tx["value"] = hex(value)
        if gas is not None:
            tx["gas"] = hex(gas)
        tag = hex(block) if isinstance(block, int) else block
        return bytes.fromhex(self.request("eth_call", [tx, tag])[2:])

    def estimate_gas(self, tx: dict) -> int:
        return int(self.request("eth_estimateGas", [tx]), 16)

    def get_transaction_count(self, address: str, block: str = "pending") -> int:
        return int(self.request("eth_getTransactionCount", [address, block]), 16)

    def get_balance(self, address: str, block: str = "latest") -> int:
        return int(self.request("eth_getBalance", [address, block]), 16)

    def get_code(self, address: str, block: str | dict[str, Any] = "latest") -> bytes:
        return bytes.fromhex(self.request("eth_getCode", [address, block])[2:])

    def get_receipt(self, tx_hash: str) -> dict | None:
        return self.request("eth_getTransactionReceipt", [tx_hash])

    def get_transaction(self, tx_hash: str) -> dict | None:
        return self.request("eth_getTransactionByHash", [tx_hash])

    def fee_history(self, blocks: int, newest: str = "latest", percentiles: Sequence[float] = ()) -> dict:
        return self.request("eth_feeHistory", [hex(blocks), newest, list(percentiles)])

    def get_logs(self, flt: dict) -> list[dict]:
        return self.request("eth_getLogs", [flt])

    def send_raw_transaction(self, raw: bytes) -> str:
        """Broadcast a signed transaction ONCE (no retry, see module docstring); returns its hash."""
        return self.request("eth_sendRawTransaction", [_hex(raw)])

    def web3(self):
        """A ``Web3`` over this client (no middleware: no hidden ``eth_chainId``), for non-hot paths."""
        from web3 import Web3

        return Web3(ClientProvider(self), middleware=[])

    def close(self) -> None:
        for ep in self._endpoints:
            ep.transport.close()


def _hex(data: bytes | str) -> str:
    if isinstance(data, str):
        return data if data.startswith("0x") else "0x" + data
    return "0x" + data.hex()


def _make_provider_class():
    from web3.providers.base import JSONBaseProvider

    class _ClientProvider(JSONBaseProvider):
        """web3 provider that sends through a :class:`ChainClient` (same failover and retries)."""

        def __init__(self, client: ChainClient) -> None:
            super().__init__()
            self._client = client

        def make_request(self, method, params):
            try:
                result = self._client.request(str(method), list(params))
            except RpcErrorResponse as exc:
                return {
                    "jsonrpc": "2.0",
                    "id": 0,
                    "error": {"code": exc.code, "message": exc.message, "data": exc.data},
                }
            return {"jsonrpc": "2.0", "id": 0, "result": result}

        def is_connected(self, show_traceback: bool = False) -> bool:
            return True

    return _ClientProvider


def ClientProvider(client: ChainClient):  # reads as a class at the call site
    """Build the web3 provider class lazily (web3 import is slow and off the hot path)."""
    global _PROVIDER_CLS
    if _PROVIDER_CLS is None:
        _PROVIDER_CLS = _make_provider_class()
    return _PROVIDER_CLS(client)


_PROVIDER_CLS = None
