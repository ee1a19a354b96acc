"""RPC client: retries, failover, chain-id checks and the never-retry-a-send rule (fault transport + anvil)."""

from __future__ import annotations

import json

import pytest

from keeper.chain.anvil import Anvil
from keeper.chain.rpc import (
    ChainClient,
    ExecutionReverted,
    HttpTransport,
    LaggingNodeError,
    RetryPolicy,
    RpcErrorResponse,
)
from keeper.chain.testing import FaultProxy, FaultTransport
from keeper.errors import ChainMismatchError, TransientRpcError

FAST = RetryPolicy(attempts=4, base_s=0.0, max_s=0.0, cooldown_s=60.0)


class ScriptedTransport:
    """Answers from a list of canned JSON bodies (or raises), recording every request body."""

    def __init__(self, answers, url="scripted://"):
        self.answers = list(answers)
        self.url = url
        self.bodies = []

    def send(self, body, timeout_s):
        self.bodies.append(json.loads(body))
        nxt = self.answers.pop(0)
        if isinstance(nxt, Exception):
            raise nxt
        req = self.bodies[-1]
        if callable(nxt):
            return nxt(req)
        return json.dumps({"jsonrpc": "2.0", "id": req["id"], **nxt}).encode()

    def close(self):
        pass


CHAIN = {"result": "0x7a69"}


@pytest.fixture(scope="module")
def node():
    a = Anvil.start()
    yield a
    a.stop()


class TestRetries:
    def test_read_retried_after_transient_errors(self):
        """A read that hits two transport errors is retried (chain id re-checked after each) and succeeds."""
        t = ScriptedTransport(
            [CHAIN, TransientRpcError("503"), CHAIN, TransientRpcError("timeout"), CHAIN, {"result": "0x10"}]
        )
        sleeps = []
        c = ChainClient([t], 31337, retry=RetryPolicy(attempts=4, base_s=0.1, max_s=1.0), sleep=sleeps.append)
        assert c.block_number() == 16
        assert sleeps == [0.1, 0.2]
        assert c.stats.retries == 2

    def test_send_not_retried(self):
        """eth_sendRawTransaction is sent exactly once even when the transport fails transiently."""
        t = ScriptedTransport([CHAIN, TransientRpcError("503"), {"result": "0x1"}])
        c = ChainClient([t], 31337, retry=FAST, sleep=lambda s: None)
        with pytest.raises(TransientRpcError):
            c.send_raw_transaction(b"\x02")
        sends = [b for b in t.bodies if b["method"] == "eth_sendRawTransaction"]
        assert len(sends) == 1

    def test_rate_limit_error_object_is_transient(self):
        """A JSON-RPC error with code -32005 (rate limited) is retried like HTTP 429."""
        t = ScriptedTransport([CHAIN, {"error": {"code": -32005, "message": "limit exceeded"}}, {"result": "0x2"}])
        c = ChainClient([t], 31337, retry=FAST, sleep=lambda s: None)
        assert c.block_number() == 2

    def test_a_query_refused_as_too_large_is_not_retried_whatever_its_code(self):
        """Infura answers "query returned more than 10000 results" with -32005, its rate-limit code: asking the
        same range again gets the same answer, so it is raised at once (the caller asks for less)."""
        refusal = {"error": {"code": -32005, "message": "query returned more than 10000 results"}}
        t = ScriptedTransport([CHAIN, refusal])
        c = ChainClient([t], 31337, retry=FAST, sleep=lambda s: None)
        with pytest.raises(RpcErrorResponse) as err:
            c.request("eth_getLogs", [{"fromBlock": "0x0", "toBlock": "0x2710"}])
        assert err.value.code == -32005 and "more than 10000 results" in err.value.message
        assert len(t.bodies) == 2 and c.stats.retries == 0

    def test_revert_maps_to_execution_reverted_with_data(self):
        """An eth_call revert becomes ExecutionReverted carrying the revert bytes; it is not retried."""
        t = ScriptedTransport([CHAIN, {"error": {"code": 3, "message": "execution reverted", "data": "0xdeadbeef"}}])
        c = ChainClient([t], 31337, retry=FAST, sleep=lambda s: None)
        with pytest.raises(ExecutionReverted) as err:
            c.call("0x" + "11" * 20, b"")
        assert err.value.data_bytes == bytes.fromhex("deadbeef")
        assert len(t.bodies) == 2

    def test_other_rpc_error_not_retried(self):
        """A plain JSON-RPC error (bad params) raises RpcErrorResponse after one request."""
        t = ScriptedTransport([CHAIN, {"error": {"code": -32602, "message": "invalid params"}}])
        c = ChainClient([t], 31337, retry=FAST, sleep=lambda s: None)
        with pytest.raises(RpcErrorResponse):
            c.block_number()
        assert len(t.bodies) == 2


@pytest.mark.chain
class TestFailoverOnAnvil:
    def test_failover_to_second_endpoint_and_chain_id_rechecked(self, node):
        """When the first endpoint goes down mid-run, reads continue on the second after an eth_chainId check."""
        first = FaultTransport(HttpTransport(node.url))
        second = FaultTransport(HttpTransport(node.url))
        c = ChainClient([first, second], 31337, retry=FAST, sleep=lambda s: None)
        c.block_number()
        first.down = True
        c.block_number()
        assert c.stats.failovers == 1
        assert second.seen["eth_chainId"] == 1 and second.seen["eth_blockNumber"] == 1

    def test_failover_to_wrong_chain_is_never_used(self, node):
        """A failover endpoint serving another chain id is skipped like an outage: reads fail transiently while
        the right endpoint is down, and go to it again when it is back, never to the wrong chain."""
        other = Anvil.start(chain_id=999)
        try:
            first = FaultTransport(HttpTransport(node.url))
            wrong = FaultTransport(HttpTransport(other.url))
            c = ChainClient([first, wrong], 31337, retry=FAST, sleep=lambda s: None)
            c.block_number()
            first.down = True
            with pytest.raises(TransientRpcError):
                c.block_number()
            assert wrong.seen["eth_blockNumber"] == 0 and wrong.seen["eth_chainId"] >= 1
            first.down = False
            c._endpoints[0].failed_at = None  # its cooldown is over
            assert c.block_number() == int(node.request("eth_blockNumber"), 16)
            assert wrong.seen["eth_blockNumber"] == 0
        finally:
            other.stop()

    def test_only_wrong_chains_left_raises_mismatch(self, node):
        """With every endpoint serving another chain id the client raises ChainMismatchError naming each one."""
        other = Anvil.start(chain_id=999)
        try:
            c = ChainClient([HttpTransport(other.url)], 31337, retry=FAST, sleep=lambda s: None)
            with pytest.raises(ChainMismatchError, match="serves chain id 999"):
                c.block_number()
            with pytest.raises(ChainMismatchError, match="no RPC endpoint left"):
                c.block_number()  # within the cooldown the endpoint is not even asked again
        finally:
            other.stop()

    def test_proxy_503_then_killed_fails_over(self, node):
        """A real HTTP proxy answering 503 and then refusing connections is failed over to the direct URL."""
        proxy = FaultProxy(node.url)
        try:
            c = ChainClient.connect([proxy.url, node.url], 31337, timeout_s=2.0)
            c.retry = FAST
            assert c.url == proxy.url
            proxy.mode = "503"
            c.block_number()
            assert c.url == node.url
            proxy.stop()
            c._endpoints[0].failed_at = -1e9  # pretend the cooldown has passed: it is tried again
            c.block_number()
            assert c.url == node.url
        finally:
            proxy.stop()

    def test_websocket_endpoint(self, node):
        """The same client works over anvil's WebSocket endpoint."""
        c = ChainClient.connect([node.ws_url], 31337)
        assert c.block_number() >= 0
        assert c.batch([("eth_chainId", []), ("eth_blockNumber", [])])[0] == "0x7a69"
        c.close()

    def test_web3_view_sends_no_hidden_chain_id(self, node):
        """ChainClient.web3() calls add no eth_chainId requests beyond the one endpoint check."""
        c = ChainClient.connect([node.url], 31337)
        w3 = c.web3()
        before = c.stats.by_method.get("eth_chainId", 0)
        for _ in range(3):
            w3.eth.get_balance("0x" + "11" * 20)
        assert c.stats.by_method.get("eth_chainId", 0) == before


@pytest.mark.chain
class TestLaggingNode:
    """A backup endpoint that stopped syncing is detected by its head and never read from (three real anvils:
    the fresh ones have mined 20 blocks, the stale one none)."""

    @pytest.fixture()
    def nodes(self):
        fresh_a, stale, fresh_c = Anvil.start(), Anvil.start(), Anvil.start()
        try:
            for n in (fresh_a, fresh_c):
                n.request("anvil_mine", [hex(20)])
            stale.request("anvil_mine", [hex(17)])
            yield fresh_a, stale, fresh_c
        finally:
            for n in (fresh_a, stale, fresh_c):
                n.stop()

    def test_failover_skips_a_lagging_endpoint(self, nodes):
        fresh_a, stale, fresh_c = nodes
        first = FaultTransport(HttpTransport(fresh_a.url))
        c = ChainClient(
            [first, HttpTransport(stale.url), HttpTransport(fresh_c.url)],
            31337,
            retry=FAST,
            sleep=lambda s: None,
            max_head_lag_blocks=2,
        )
        assert c.block_number() == 20
        first.down = True
        assert c.block_number() == 20  # the stale node (17, 3 behind) was tried and skipped
        assert c.url == fresh_c.url and c.stats.failovers == 2
        assert c.highest_block == 20

    def test_only_lagging_endpoints_left_is_an_error_not_stale_data(self, nodes):
        fresh_a, stale, _ = nodes
        first = FaultTransport(HttpTransport(fresh_a.url))
        c = ChainClient(
            [first, HttpTransport(stale.url)], 31337, retry=FAST, sleep=lambda s: None, max_head_lag_blocks=2
        )
        c.block_number()
        first.down = True
        with pytest.raises(LaggingNodeError, match="3 blocks behind block 20"):
            c.block_number()

    def test_lag_within_the_limit_and_no_limit_are_accepted(self, nodes):
        fresh_a, stale, _ = nodes
        for limit in (3, None):
            first = FaultTransport(HttpTransport(fresh_a.url))
            c = ChainClient(
                [first, HttpTransport(stale.url)], 31337, retry=FAST, sleep=lambda s: None, max_head_lag_blocks=limit
            )
            c.block_number()
            first.down = True
            assert c.block_number() == 17


class TestWrongChainAndDeadlines:
    @pytest.mark.chain
    def test_reset_chain_without_required_code_is_a_mismatch(self):
        """After anvil_reset the address registered with require_code has no code: the endpoint is a mismatch."""
        own = Anvil.start()
        try:
            address = "0x00000000000000000000000000000000000c0de1"
            own.request("anvil_setCode", [address, "0x6001600055"])
            c = ChainClient([HttpTransport(own.url)], 31337, retry=FAST, sleep=lambda s: None)
            c.require_code({"engine": address})
            c.block_number()
            own.request("anvil_reset", [])
            c.suspect()
            with pytest.raises(ChainMismatchError, match="no code at engine 0x0+c0de1"):
                c.block_number()
        finally:
            own.stop()

    @pytest.mark.chain
    def test_endpoint_is_verified_again_every_reverify_s(self, node):
        """With reverify_s = 30 the chain id is asked once at first use and once more only after 30 s."""
        now = [0.0]
        t = FaultTransport(HttpTransport(node.url))
        c = ChainClient([t], 31337, retry=FAST, sleep=lambda s: None, clock=lambda: now[0], reverify_s=30.0)
        for _ in range(3):
            c.block_number()
        assert t.seen["eth_chainId"] == 1
        now[0] = 31.0
        c.block_number()
        assert t.seen["eth_chainId"] == 2

    @pytest.mark.chain
    def test_abort_fails_every_later_request_at_once(self, node):
        """After abort() a request raises TransientRpcError without reaching the node."""
        t = FaultTransport(HttpTransport(node.url))
        c = ChainClient([t], 31337, retry=FAST, sleep=lambda s: None)
        c.block_number()
        seen = sum(t.seen.values())
        c.abort()
        with pytest.raises(TransientRpcError, match="shutting down"):
            c.block_number()
        assert sum(t.seen.values()) == seen

    def test_trickling_answer_hits_the_whole_request_deadline(self):
        """A server sending one byte every 0.2 s passes every per-read timeout; the 1 s request deadline stops it."""
        import socket
        import threading
        import time

        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        stop = threading.Event()

        def serve() -> None:
            conn, _ = server.accept()
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
            while not stop.is_set():
                try:
                    conn.sendall(b" ")
                except OSError:
                    break
                time.sleep(0.2)  # a trickling server: letting time pass between bytes is the point
            conn.close()

        threading.Thread(target=serve, daemon=True).start()
        transport = HttpTransport(f"http://127.0.0.1:{server.getsockname()[1]}")
        started = time.monotonic()
        try:
            with pytest.raises(TransientRpcError):
                transport.send(b'{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}', 1.0)
            assert time.monotonic() - started < 3.0
        finally:
            stop.set()
            transport.close()
            server.close()
