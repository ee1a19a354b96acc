"""Multicall3 ``aggregate3`` reads: many view calls in one ``eth_call``, all chunks in one round trip.

Encoding and decoding of the ``aggregate3((address,bool,bytes)[]) -> (bool,bytes)[]`` envelope is done by
hand (plain word arithmetic, checked against eth_abi in tests/chain): at 10,000 calls eth_abi's generic
codec costs more than the node's execution. Calls are split into chunks by calldata size and count (a node
caps request size and ``eth_call`` gas) and chunks are grouped into JSON-RPC batches of at most
``max_request_bytes`` (anvil refuses bodies of a few MB); every chunk starts with ``getBlockNumber()`` and
``getCurrentBlockTimestamp()`` so the reader knows which block answered. Up to ~5,000 position reads
fit one batch (one round trip); if a block arrived between chunks (their block numbers differ) the whole
read is repeated pinned to the newest of them, so every value always comes from one block.

A read of several batches sends up to ``concurrency`` of them at once, each on its own keep-alive connection
(:meth:`ChainClient.call_many`, thread-safe): the node executes one while the keeper encodes the next and
decodes the previous one (at 10,000 accounts each pass is 6-7 batches). The requests are exactly those of one
batch after another; answers are taken in order, so the results do not depend on the concurrency.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from keeper.chain.abi import selector
from keeper.chain.rpc import BlockId, ChainClient, RpcErrorResponse
from keeper.errors import ChainMismatchError, TransientRpcError

MULTICALL3_ADDRESS = "0xcA11bde05977b3631167028862bE2a173976CA11"
AGGREGATE3 = selector("aggregate3((address,bool,bytes)[])")
GET_BLOCK_NUMBER = selector("getBlockNumber()")
GET_TIMESTAMP = selector("getCurrentBlockTimestamp()")
_W = 32


class Call(NamedTuple):
    """One view call: ``target`` address (0x hex), calldata; a failure is allowed unless told otherwise."""

    target: str
    data: bytes
    allow_failure: bool = True


class Result(NamedTuple):
    """One call's outcome (a named tuple: built once per call of a read, 4x cheaper than a frozen dataclass)."""

    success: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class Prepared:
    """Calls split into chunks (:meth:`Multicall.chunks`) and each chunk's ``aggregate3`` calldata, filled in
    as the chunks are first sent (kept by a reader whose calls repeat: a book's accounts every cycle)."""

    chunks: list[list[Call]]
    payloads: list[bytes]


@dataclass(frozen=True, slots=True)
class MulticallResult:
    results: list[Result]
    block_number: int
    block_timestamp: int
    round_trips: int


def _word(n: int) -> bytes:
    return n.to_bytes(_W, "big")


def encode_aggregate3(calls: Sequence[Call]) -> bytes:
    """Calldata of ``aggregate3(calls)`` (standard ABI head/tail layout). The words before a call's data
    (target, allowFailure, the data's offset and length) are built once per (target, flag, length): a
    book's reads repeat a few targets with one calldata size."""
    n = len(calls)
    heads: list[bytes] = []
    tails: list[bytes] = []
    offset = n * _W
    prefixes: dict[tuple[str, bool, int], bytes] = {}
    for c in calls:
        data = c.data
        size = len(data)
        key = (c.target, c.allow_failure, size)
        prefix = prefixes.get(key)
        if prefix is None:
            prefix = (
                bytes(12) + bytes.fromhex(c.target[2:]) + _FLAGS[bool(c.allow_failure)] + _THREE_WORDS + _word(size)
            )
            prefixes[key] = prefix
        pad = (-size) % _W
        heads.append(offset.to_bytes(_W, "big"))
        tails.append(prefix)
        tails.append(data)
        if pad:
            tails.append(bytes(pad))
        offset += 4 * _W + size + pad
    return AGGREGATE3 + _word(_W) + _word(n) + b"".join(heads) + b"".join(tails)


def decode_aggregate3(data: bytes) -> list[Result]:
    """Return data of ``aggregate3``: ``(bool success, bytes returnData)[]``.

    The head and tail words of all results are read at once as numpy arrays of 64-bit limbs (offsets and
    lengths checked to fit well inside the answer), and each result's bytes sliced out; an answer outside
    those checks (never one a node returns) takes the word-by-word loop, which gives the same results."""
    fast = _decode_vectorised(data) if len(data) >= 2 * _W and len(data) % _W == 0 else None
    return fast if fast is not None else _decode_loop(data)


def _decode_vectorised(data: bytes) -> list[Result] | None:
    size = len(data)
    # one row per 32-byte word, its big-endian limbs in native order (the checks below run on native integers:
    # a reduction over a byte-swapped view costs several times more)
    words = np.frombuffer(data, dtype=">u8").reshape(-1, 4).astype(np.uint64)
    count = len(words)
    if words[0, :3].any() or words[0, 3] % _W or words[0, 3] // _W >= count:
        return None
    at = int(words[0, 3]) // _W
    if words[at, :3].any() or words[at, 3] > count:
        return None
    n, start = int(words[at, 3]), at + 1
    if n == 0 or start + n > count:
        return [] if n == 0 else None
    heads = words[start : start + n]
    if heads[:, :3].any() or (heads[:, 3] % _W).any() or (heads[:, 3] >= size).any():
        return None
    tail = start + (heads[:, 3] // _W).astype(np.int64)  # word index of each (success, offset, length, data)
    if tail.max() + 2 >= count:
        return None
    inner = words[tail + 1]
    if inner[:, :3].any() or (inner[:, 3] % _W).any() or (inner[:, 3] >= size).any():
        return None
    at_len = tail + (inner[:, 3] // _W).astype(np.int64)
    if at_len.max() >= count:
        return None
    lengths = words[at_len]
    if lengths[:, :3].any() or (lengths[:, 3] >= size).any():
        return None
    begin = (at_len + 1) * _W
    end = begin + lengths[:, 3].astype(np.int64)
    if end.max() > size:
        return None
    success = np.frombuffer(data, dtype=np.uint8)[tail * _W + _W - 1] == 1
    pieces = map(data.__getitem__, map(slice, begin.tolist(), end.tolist()))
    new = tuple.__new__  # Result's own __new__ is a Python function: 2x the cost of the tuple itself
    return [new(Result, pair) for pair in zip(success.tolist(), pieces, strict=True)]


def _decode_loop(data: bytes) -> list[Result]:
    word = int.from_bytes
    base = word(data[0:_W], "big")
    n = word(data[base : base + _W], "big")
    start = base + _W
    out: list[Result] = []
    append = out.append
    for h in range(start, start + n * _W, _W):
        t = start + word(data[h : h + _W], "big")
        b = t + word(data[t + _W : t + 2 * _W], "big")
        append(Result(data[t + _W - 1] == 1, data[b + _W : b + _W + word(data[b : b + _W], "big")]))
    return out


_FLAGS = {False: _word(0), True: _word(1)}
_THREE_WORDS = _word(3 * _W)


class Multicall:
    """Batched view calls through Multicall3 at ``address`` on ``client``'s chain."""

    def __init__(
        self,
        client: ChainClient,
        address: str = MULTICALL3_ADDRESS,
        *,
        max_calldata_bytes: int = 100_000,
        max_calls: int = 400,
        max_request_bytes: int = 1_500_000,
        concurrency: int = 2,
    ) -> None:
        if max_calldata_bytes < 1_000 or max_calls < 1 or concurrency < 1:
            raise ValueError("max_calldata_bytes must be >= 1000, max_calls >= 1 and concurrency >= 1")
        self.client = client
        self.address = address
        self.max_calldata_bytes = max_calldata_bytes
        self.max_calls = max_calls
        self.max_request_bytes = max_request_bytes  # anvil refuses HTTP bodies of a few MB; hosted RPCs less
        self.concurrency = concurrency  # JSON-RPC batches of one read in flight at once (1: one after another)
        self._meta = [Call(address, GET_BLOCK_NUMBER, False), Call(address, GET_TIMESTAMP, False)]

    def chunks(self, calls: Sequence[Call]) -> list[list[Call]]:
        """Split by count and by encoded size (each call costs ~160 bytes + its calldata)."""
        out: list[list[Call]] = []
        cur: list[Call] = []
        size = 0
        for c in calls:
            cost = 5 * _W + len(c.data) + (-len(c.data)) % _W
            if cur and (len(cur) >= self.max_calls or size + cost > self.max_calldata_bytes):
                out.append(cur)
                cur, size = [], 0
            cur.append(c)
            size += cost
        if cur or not out:
            out.append(cur)
        return out

    def prepare(self, calls: Sequence[Call]) -> Prepared:
        """``calls`` chunked, for :meth:`aggregate3` (a reader that sends the same calls every cycle keeps it:
        the chunks are encoded on first use only)."""
        return Prepared(self.chunks(calls), [])

    def aggregate3(self, calls: Sequence[Call] | Prepared, block: BlockId = "latest") -> MulticallResult:
        """Run ``calls``; results in order; one round trip (two if a block landed between chunks)."""
        prepared = calls if isinstance(calls, Prepared) else self.prepare(calls)
        chunks, payloads = prepared.chunks, prepared.payloads  # encoded while the first batches are on the wire
        trips_before = self.client.stats.round_trips
        results, numbers, stamps = self._run(chunks, payloads, block)
        if len(set(numbers)) > 1:  # chunks answered by different blocks: re-read at one block
            results, numbers, stamps = self._run(chunks, payloads, max(numbers))
        flat = [r for chunk_results in results for r in chunk_results]
        return MulticallResult(flat, numbers[0], stamps[0], self.client.stats.round_trips - trips_before)

    def _groups(self, chunks: list[list[Call]], payloads: list[bytes]) -> Iterator[list[bytes]]:
        """The chunks' calldata (encoded into ``payloads`` on first use) in JSON-RPC batches of at most
        ``max_request_bytes`` (hex doubles the size), each batch yielded as soon as it is encoded."""
        group: list[bytes] = []
        size = 0
        for k, chunk in enumerate(chunks):
            if k == len(payloads):
                payloads.append(encode_aggregate3(self._meta + chunk))
            p = payloads[k]
            if group and size + 2 * len(p) > self.max_request_bytes:
                yield group
                group, size = [], 0
            group.append(p)
            size += 2 * len(p) + 120
        if group:
            yield group

    def _send(self, group: list[bytes], block: BlockId) -> list[bytes | RpcErrorResponse]:
        return self.client.call_many([(self.address, q) for q in group], block)

    def _run(
        self, chunks: list[list[Call]], payloads: list[bytes], block: BlockId
    ) -> tuple[list[list[Result]], list[int], list[int]]:
        """Every batch sent, up to ``concurrency`` at once on their own connections: the node executes one
        while this thread encodes the next and decodes the previous. Answers are taken in order."""
        results: list[list[Result]] = []
        numbers: list[int] = []
        stamps: list[int] = []
        groups = self._groups(chunks, payloads)
        first = next(groups)
        batches = itertools.chain([first], groups)
        if self.concurrency == 1 or len(first) == len(chunks):  # one batch (or told to): one after another
            for group in batches:
                for answer in self._send(group, block):
                    self._decode_into(answer, block, results, numbers, stamps)
            return results, numbers, stamps
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="multicall") as pool:
            futures = [pool.submit(self._send, group, block) for group in batches]
            try:
                for future in futures:
                    for answer in future.result():
                        self._decode_into(answer, block, results, numbers, stamps)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        return results, numbers, stamps

    def _decode_into(
        self,
        answer: bytes | RpcErrorResponse,
        block: BlockId,
        results: list[list[Result]],
        numbers: list[int],
        stamps: list[int],
    ) -> None:
        if isinstance(answer, RpcErrorResponse):
            raise answer
        if not answer:  # lagging node or wrong chain: no code at the multicall address
            tag = hex(block) if isinstance(block, int) else block
            code = self.client.get_code(self.address, tag)
            if not code:
                raise ChainMismatchError(f"no Multicall3 code at {self.address} on chain {self.client.chain_id}")
            raise TransientRpcError("empty answer from eth_call (lagging node?)")
        res = decode_aggregate3(answer)
        numbers.append(int.from_bytes(res[0].data, "big"))
        stamps.append(int.from_bytes(res[1].data, "big"))
        results.append(res[2:])
