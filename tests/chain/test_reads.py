"""Read path on the deployed devchain: Multicall3 codec, book reads, oracle history, event discovery."""

from __future__ import annotations

import pytest
from eth_abi import decode, encode
from hypothesis import given
from hypothesis import strategies as st

from keeper.chain.abi import Function
from keeper.chain.discovery import LogScanner
from keeper.chain.multicall import (
    AGGREGATE3,
    Call,
    Multicall,
    _decode_loop,
    _decode_vectorised,
    decode_aggregate3,
    encode_aggregate3,
)
from keeper.chain.rpc import ChainClient, HttpTransport, RpcErrorResponse
from keeper.domain import Side
from keeper.protocols.reference import POSITION_OPENED, ReferenceAdapter
from keeper.tx.journal import Journal

pytestmark = pytest.mark.chain


@pytest.fixture
def client(chain):
    c = ChainClient.connect([chain.anvil.url], chain.deployment.chain_id)
    yield c
    c.close()


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "j.db")
    yield j
    j.close()


@pytest.fixture
def adapter(chain, client, journal):
    return ReferenceAdapter.from_deployment(client, chain.deployment, journal=journal)


class TestCodec:
    def test_encode_matches_eth_abi(self):
        """The hand-written aggregate3 encoder produces exactly eth_abi's bytes (varied calldata lengths)."""
        calls = [Call("0x" + f"{i:040x}", bytes(range(i % 70)), i % 2 == 0) for i in range(25)]
        expected = AGGREGATE3 + encode(
            ["(address,bool,bytes)[]"], [[(c.target, c.allow_failure, c.data) for c in calls]]
        )
        assert encode_aggregate3(calls) == expected

    def test_decode_matches_eth_abi(self):
        """The hand-written result decoder agrees with eth_abi on (bool,bytes)[] data."""
        items = [(i % 3 != 0, bytes([i]) * (i * 7 % 65)) for i in range(30)]
        data = encode(["(bool,bytes)[]"], [items])
        assert [(r.success, r.data) for r in decode_aggregate3(data)] == items
        assert decode(["(bool,bytes)[]"], data)[0] == tuple(items)

    @given(st.lists(st.tuples(st.booleans(), st.binary(max_size=100)), max_size=40))
    def test_vectorised_decode_matches_eth_abi_and_the_loop(self, items):
        """The numpy decoder and the word-by-word loop agree with eth_abi on any (bool,bytes)[]; an answer whose
        offsets point outside it (or use the high limbs) falls back to the loop."""
        data = encode(["(bool,bytes)[]"], [items])
        assert [(r.success, r.data) for r in decode_aggregate3(data)] == items
        assert _decode_loop(data) == decode_aggregate3(data)
        if items:
            bad = bytearray(data)
            bad[64] = 1  # the first head offset's top byte: 2**248, beyond the answer
            assert _decode_vectorised(bytes(bad)) is None

    def test_chunks_respect_count_and_size(self, client):
        """Chunking keeps each chunk under max_calls and max_calldata_bytes, preserving order."""
        mc = Multicall(client, max_calls=7, max_calldata_bytes=2_000)
        calls = [Call("0x" + "11" * 20, bytes(100)) for _ in range(40)]
        chunks = mc.chunks(calls)
        assert [c for ch in chunks for c in ch] == calls
        assert all(len(ch) <= 7 and len(encode_aggregate3(ch)) <= 2_000 + 100 for ch in chunks)


class TestBook:
    def test_read_book_matches_contract_views(self, chain, adapter, client):
        """read_book returns the same positions, markets and prices as per-call web3 reads, in one request."""
        chain.seed_book(chain.keys[1])
        trader = chain.addresses[1].lower()
        adapter.load_markets()
        client.stats.reset()
        book = adapter.read_book([(trader, 0), (trader, 1), ("0x" + "12" * 20, 0)])
        assert client.stats.round_trips == 1 and client.stats.requests == 1
        for symbol, mid in chain.deployment.markets.items():
            view = chain.position(trader, symbol)
            pos = book.positions[(trader, mid)]
            assert (pos.size_e18, pos.entry_price_e8, pos.collateral_e6) == (view[2], view[3], view[4])
            assert pos.side is (Side.LONG if view[1] else Side.SHORT)
            assert book.extras[(trader, mid)].equity_e6 == view[6]
            assert book.prices[mid].price_e8 == chain.latest_price_e8(symbol)
        assert book.missing == (("0x" + "12" * 20, 0),)
        assert book.markets[0].symbol == "ETH" and book.markets[0].heartbeat_s == 3600
        assert book.block_number == chain.w3.eth.block_number

    def test_failed_call_reported_not_raised(self, chain, adapter):
        """A position read for an unknown market fails inside the multicall and is listed as failed."""
        adapter.load_markets()
        book = adapter.read_book([(chain.addresses[1], 7)])
        assert book.failed == ((chain.addresses[1].lower(), 7),)

    def test_oracle_history_incremental(self, chain, adapter, client):
        """Oracle history reads only rounds newer than the cache on the second call."""
        for p in (3010, 3020, 3030):
            chain.push_price("ETH", p * 10**8)
        first = adapter.oracle_history(0)
        assert [r.price_e8 for r in first[-3:]] == [3010 * 10**8, 3020 * 10**8, 3030 * 10**8]
        chain.push_price("ETH", 3040 * 10**8)
        client.stats.reset()
        second = adapter.oracle_history(0)
        assert second[-1].price_e8 == 3040 * 10**8 and len(second) == len(first) + 1
        assert client.stats.requests == 1  # latestRoundData only: the newest round is not read twice

    def test_oracle_history_with_the_latest_round_known(self, chain, adapter, client):
        """Given the latest round (the book read has it), one new round costs no request and three new rounds
        one getRoundData batch for the two older ones; the history equals a full read."""
        adapter.oracle_history(0)
        chain.push_price("ETH", 3050 * 10**8)
        book = adapter.read_book([])
        client.stats.reset()
        h1 = adapter.oracle_history(0, latest=book.prices[0])
        assert client.stats.round_trips == 0 and h1[-1] == book.prices[0]
        for p in (3060, 3070, 3080):
            chain.push_price("ETH", p * 10**8)
        book = adapter.read_book([])
        client.stats.reset()
        h2 = adapter.oracle_history(0, latest=book.prices[0])
        assert client.stats.round_trips == 1
        assert [r.price_e8 for r in h2[-4:]] == [p * 10**8 for p in (3050, 3060, 3070, 3080)]
        fresh = type(adapter).from_deployment(client, chain.deployment)
        assert fresh.oracle_history(0) == h2


class RangeLimitedTransport(HttpTransport):
    """An HTTP transport that refuses eth_getLogs ranges wider than ``max_range`` blocks (like hosted RPCs)."""

    def __init__(self, url, max_range):
        super().__init__(url)
        self.max_range = max_range
        self.refused = 0

    def send(self, body, timeout_s):
        import json

        req = json.loads(body)
        if isinstance(req, dict) and req["method"] == "eth_getLogs":
            f = req["params"][0]
            if int(f["toBlock"], 16) - int(f["fromBlock"], 16) + 1 > self.max_range:
                self.refused += 1
                return json.dumps(
                    {"jsonrpc": "2.0", "id": req["id"], "error": {"code": -32600, "message": "block range too large"}}
                ).encode()
        return super().send(body, timeout_s)


class TestDiscovery:
    def test_discovers_accounts_with_range_halving(self, chain, journal):
        """A node refusing wide eth_getLogs ranges gets halved chunks and every opener is still found."""
        chain.seed_book(chain.keys[1])
        chain.seed_book(chain.keys[5])
        t = RangeLimitedTransport(chain.anvil.url, max_range=3)
        client = ChainClient([t], 31337)
        adapter = ReferenceAdapter.from_deployment(client, chain.deployment, journal=journal, log_chunk_blocks=64)
        found = adapter.discover_accounts()
        expected = {(chain.addresses[k].lower(), m) for k in (1, 5) for m in (0, 1)}
        assert expected <= found
        assert t.refused > 0

    def test_cursor_survives_restart_and_rereads_overlap(self, chain, client, tmp_path):
        """After a restart the scan resumes at cursor - reorg_depth + 1 and finds later openers."""
        path = tmp_path / "cursor.db"
        j1 = Journal(path)
        a1 = ReferenceAdapter.from_deployment(client, chain.deployment, journal=j1, reorg_depth=4)
        chain.seed_book(chain.keys[1])
        a1.discover_accounts()
        cursor_block = j1.get_cursor(a1.scanner.name)[0]
        j1.close()
        chain.seed_book(chain.keys[6])
        j2 = Journal(path)
        a2 = ReferenceAdapter.from_deployment(client, chain.deployment, journal=j2, reorg_depth=4)
        assert a2.scanner.resume_block() == cursor_block - 3
        found = a2.discover_accounts()
        assert (chain.addresses[6].lower(), 0) in found and (chain.addresses[1].lower(), 1) in found
        j2.close()

    def test_non_range_errors_propagate(self, chain, client, journal):
        """An eth_getLogs error unrelated to range size is raised, not retried with smaller chunks."""
        scanner = LogScanner(client, journal, "bad", "0xnotanaddress", [POSITION_OPENED])
        with pytest.raises(RpcErrorResponse):
            scanner.fetch(0, 10)


class TestFastEncoder:
    @given(
        st.binary(min_size=20, max_size=20),
        st.integers(0, 2**256 - 1),
        st.booleans(),
        st.integers(-(2**255), 2**255 - 1),
        st.integers(0, 2**80 - 1),
    )
    def test_static_encoder_matches_eth_abi(self, addr, u, b, i, r):
        """The hand-written static-argument encoder is byte-identical to eth_abi."""
        f = Function("f(address,uint256,bool,int256,uint80)")
        args = ("0x" + addr.hex(), u, b, i, r)
        assert f.encode(*args) == f.selector + encode(list(f.input_types), list(args))

    def test_out_of_range_falls_back_to_eth_abi_error(self):
        """A value that does not fit its type raises eth_abi's encoding error, not a silent truncation."""
        with pytest.raises(Exception, match="(?i)uint80|value"):
            Function("g(uint80)").encode(2**80)


def test_history_round_ids_stay_inside_the_phase():
    """Consecutive ids (PriceFeed) and Chainlink phase-encoded ids: never ask for ids that do not exist."""
    from keeper.protocols.reference import history_round_ids

    assert history_round_ids(1000, None, 500) == range(501, 1000)
    assert history_round_ids(1000, 998, 500) == range(999, 1000)
    assert history_round_ids(1000, 1000, 500) == range(1001, 1000)  # nothing new
    assert history_round_ids(3, None, 500) == range(1, 3)
    phase2 = 2 << 64
    assert history_round_ids(phase2 + 5, None, 500) == range(phase2 + 1, phase2 + 5)
    # the cache holds the old phase's rounds: the new phase is read from its first round
    assert history_round_ids(phase2 + 5, (1 << 64) + 900, 500) == range(phase2 + 1, phase2 + 5)
    assert history_round_ids(phase2 + 900, phase2 + 880, 500) == range(phase2 + 881, phase2 + 900)
