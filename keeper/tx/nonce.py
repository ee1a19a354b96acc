"""Local nonce allocation for one signing address, under a lock, reconciled with the chain.

The next nonce is ``max(pending transaction count on chain, highest nonce of an open journal intent + 1)``:
the pending count covers what the node has seen (ours or anyone's using the same key), the journal covers
what we signed but the node may not have (crash between signing and broadcasting, a dropped transaction).
It is re-read at start, after "nonce too low", and whenever the manager finds a nonce taken by someone else.
"""

from __future__ import annotations

import threading

import structlog

log = structlog.get_logger(__name__)


class NonceAllocator:
    """Hands out consecutive nonces for ``address``; hold :attr:`lock` across allocate -> sign -> send."""

    def __init__(self, client, journal, address: str) -> None:
        self._client = client
        self._journal = journal
        self.address = address
        self.lock = threading.RLock()
        self._next: int | None = None

    def sync(self) -> int:
        """Re-read the chain's pending count and the journal; returns the next nonce."""
        with self.lock:
            chain = self._client.get_transaction_count(self.address, "pending")
            journal_max = self._journal.max_nonce(self.address)
            nxt = max(chain, (journal_max + 1) if journal_max is not None else 0)
            if self._next is not None and nxt != self._next:
                log.info("nonce_resynced", address=self.address, old=self._next, new=nxt, chain_pending=chain)
            self._next = nxt
            return nxt

    def allocate(self) -> int:
        with self.lock:
            if self._next is None:
                self.sync()
            assert self._next is not None
            nonce = self._next
            self._next += 1
            return nonce

    def release(self, nonce: int) -> None:
        """Give back the most recent nonce when nothing signed with it reached the node."""
        with self.lock:
            if self._next is not None and nonce == self._next - 1:
                self._next = nonce

    @property
    def next_nonce(self) -> int | None:
        return self._next
