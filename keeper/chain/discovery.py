"""Event-log scanning with a persisted cursor: chunked ``eth_getLogs`` that survives node limits and reorgs.

* Ranges are scanned in chunks of ``chunk_blocks``; when a node refuses a range ("block range too large",
  "query returned more than 10000 results", "limit exceeded", ...) the chunk is halved and retried, down to
  one block. A successful chunk grows back (x2) up to ``chunk_blocks``.
* The cursor (last block scanned and its hash) and what was found are saved together in one SQLite
  transaction (keeper/tx/journal.py, tables ``cursors`` and ``accounts``), so a restart neither misses nor
  double-counts. Each scan re-reads the last ``reorg_depth`` blocks (results are idempotent sets); if the
  cursor block's hash changed, a reorg deeper than that happened and the scan rewinds further.
* Scans go up to the head (a new account must be watched at once); the overlap covers reorgs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from keeper.chain.rpc import ChainClient, RpcErrorResponse
from keeper.errors import TransientRpcError

log = structlog.get_logger(__name__)

RANGE_ERROR_HINTS = (
    "range",
    "too large",
    "too many",
    "limit",
    "exceed",
    "more than",
    "10000",
    "timeout",
    "response size",
)


def is_range_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(h in text for h in RANGE_ERROR_HINTS)


@dataclass(frozen=True, slots=True)
class ScanResult:
    logs: list[dict]
    from_block: int
    to_block: int
    requests: int


class LogScanner:
    """Scans ``address``'s logs matching ``topics`` from ``start_block``; the cursor is named ``name``."""

    def __init__(
        self,
        client: ChainClient,
        store,
        name: str,
        address: str | Sequence[str],
        topics: list,
        start_block: int = 0,
        *,
        chunk_blocks: int = 5_000,
        reorg_depth: int = 12,
        min_chunk: int = 1,
    ) -> None:
        if chunk_blocks < 1 or reorg_depth < 0:
            raise ValueError("chunk_blocks must be >= 1 and reorg_depth >= 0")
        self.client = client
        self.store = store  # Journal: get_cursor / save_scan / known_accounts
        self.name = name
        self.address = address
        self.topics = topics
        self.start_block = start_block
        self.chunk_blocks = chunk_blocks
        self.reorg_depth = reorg_depth
        self.min_chunk = min_chunk
        self._chunk = chunk_blocks

    def resume_block(self) -> int:
        """First block the next scan reads: cursor - reorg_depth + 1 (never before ``start_block``)."""
        cur = self.store.get_cursor(self.name)
        if cur is None:
            return self.start_block
        block, block_hash = cur
        back = self.reorg_depth
        if block_hash is not None:
            now = self.client.get_block(block)
            if now is None or now["hash"] != block_hash:
                log.warning("scan_cursor_reorged", name=self.name, block=block)
                back = max(4 * self.reorg_depth, 64)
        return max(self.start_block, block - back + 1)

    def fetch(self, from_block: int, to_block: int) -> ScanResult:
        """All matching logs in [from_block, to_block], halving the chunk on range errors."""
        logs: list[dict] = []
        requests = 0
        lo = from_block
        while lo <= to_block:
            hi = min(to_block, lo + self._chunk - 1)
            flt = {"address": self.address, "topics": self.topics, "fromBlock": hex(lo), "toBlock": hex(hi)}
            try:
                requests += 1
                part = self.client.get_logs(flt)
            except (RpcErrorResponse, TransientRpcError) as exc:
                if not is_range_error(exc) or self._chunk <= self.min_chunk:
                    raise
                self._chunk = max(self.min_chunk, self._chunk // 2)
                log.info("get_logs_range_shrunk", name=self.name, chunk=self._chunk, error=str(exc)[:120])
                continue
            logs.extend(part)
            lo = hi + 1
            self._chunk = min(self.chunk_blocks, self._chunk * 2)
        return ScanResult(logs, from_block, to_block, requests)

    def scan(self, found: Callable[[list[dict]], set[tuple[str, int, int]]], to_block: int | None = None) -> ScanResult:
        """Scan from the cursor to ``to_block`` (default head); save ``found(logs)`` and the cursor atomically."""
        head = self.client.get_block(to_block if to_block is not None else "latest")
        if head is None:  # a block past the node's head: it may not have caught up yet
            raise TransientRpcError(f"block {to_block} not found: the node is behind")
        end = int(head["number"], 16)
        begin = self.resume_block()
        if begin > end:
            return ScanResult([], begin, end, 0)
        result = self.fetch(begin, end)
        self.store.save_scan(self.name, end, head["hash"], found(result.logs))
        log.info(
            "logs_scanned",
            name=self.name,
            from_block=begin,
            to_block=end,
            logs=len(result.logs),
            requests=result.requests,
        )
        return result
