"""The chain as the source of truth for our own keys: what the journal does not know, found on chain.

Two questions the transaction manager asks at start and on every poll, per signing address:

* **Does the node count nonces the journal never signed?** ``pending > latest`` with nonces in between that
  no journaled attempt holds means transactions of our key are in flight that this journal did not write
  (journal lost, restored from an older copy, or another process using the key). Acting on anything for
  that lane could pay twice, so the lane is *blocked* (:class:`LaneBlock`) until those nonces are mined and
  ``confirmations`` deep; then the landed transactions are imported.
* **Which transaction used nonce n?** A node cannot be asked by (sender, nonce), but the account's
  transaction count at a block is monotone in the block number, so the block that used nonce ``n`` is the
  first block whose count exceeds ``n``: a binary search of ``eth_getTransactionCount(address, block)``
  (about log2(head) calls per nonce; a full node answers for its recent state window, an archive node for
  any block). That block's transactions then give the hash, target and input, which the protocol adapter
  describes (``describe_transaction``) so the journal can count an imported top-up against the day budget.

Everything here reads; nothing signs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from keeper.chain.rpc import ChainClient, RpcErrorResponse
from keeper.errors import TransientRpcError

log = structlog.get_logger(__name__)

# at most this many unknown landed nonces are looked up at start (the most recent ones): a key that sent
# thousands of transactions before this journal existed is not scanned back to its first
MAX_IMPORTED_NONCES = 64


@dataclass
class LaneBlock:
    """Transactions of ``address`` the journal does not know are in flight: nothing new for it until they are
    final. ``until_nonce``: the node's pending count when the block was set; ``reached_head``: the head at which
    the node's mined count first reached it (``None`` while still pending)."""

    address: str
    from_nonce: int
    until_nonce: int
    since_head: int
    reason: str
    reached_head: int | None = None

    def final(self, mined_count: int, head: int, confirmations: int) -> bool:
        """Have the blocked nonces been mined and reached ``confirmations`` depth?"""
        if mined_count < self.until_nonce:
            self.reached_head = None  # a reorg can take a mined transaction back
            return False
        if self.reached_head is None:
            self.reached_head = head
        return head - self.reached_head + 1 >= confirmations


@dataclass(frozen=True, slots=True)
class LandedTransaction:
    """One transaction of our key found on chain."""

    tx_hash: str
    nonce: int
    to: str
    data: bytes
    block_number: int
    block_hash: str
    block_timestamp: int
    succeeded: bool


def _count_at(client: ChainClient, address: str, block: int) -> int:
    return int(client.request("eth_getTransactionCount", [address, hex(block)]), 16)


def block_of_nonce(client: ChainClient, address: str, nonce: int, lo: int, hi: int) -> int | None:
    """The first block in ``[lo, hi]`` after which ``address`` had sent more than ``nonce`` transactions, i.e.
    the block holding its transaction with ``nonce``; ``None`` when that nonce is not mined by ``hi``."""
    if _count_at(client, address, hi) <= nonce:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if _count_at(client, address, mid) > nonce:
            hi = mid
        else:
            lo = mid + 1
    return lo


def find_landed(
    client: ChainClient, address: str, nonces: Sequence[int], head: int, *, receipts: bool = True
) -> tuple[list[LandedTransaction], list[int]]:
    """Look up the mined transactions of ``address`` with ``nonces`` (ascending, at most
    :data:`MAX_IMPORTED_NONCES` of the highest). Returns what was found and the nonces that could not be (the
    node's state window ends, or an endpoint failed); a missing one is reported, never guessed."""
    wanted = sorted(set(nonces))[-MAX_IMPORTED_NONCES:]
    found: list[LandedTransaction] = []
    missing: list[int] = []
    lo = 0
    addr = address.lower()
    for nonce in wanted:
        try:
            block_number = block_of_nonce(client, address, nonce, lo, head)
        except (RpcErrorResponse, TransientRpcError) as exc:
            log.warning("chain_import_lookup_failed", address=address, nonce=nonce, error=str(exc)[:200])
            missing.append(nonce)
            continue
        if block_number is None:
            missing.append(nonce)
            continue
        lo = block_number
        block = client.get_block(block_number, full=True) or {}
        tx = next(
            (
                t
                for t in block.get("transactions", [])
                if isinstance(t, dict) and t.get("from", "").lower() == addr and int(t["nonce"], 16) == nonce
            ),
            None,
        )
        if tx is None:
            missing.append(nonce)
            continue
        ok = True
        if receipts:
            receipt = client.get_receipt(tx["hash"]) or {}
            ok = int(receipt.get("status", "0x1"), 16) == 1  # no receipt yet: counted as spent (the safe side)
        found.append(
            LandedTransaction(
                tx_hash=tx["hash"],
                nonce=nonce,
                to=(tx.get("to") or "").lower(),
                data=bytes.fromhex((tx.get("input") or "0x")[2:]),
                block_number=block_number,
                block_hash=block["hash"],
                block_timestamp=int(block["timestamp"], 16),
                succeeded=ok,
            )
        )
    return found, missing


Describe = Callable[[str, bytes], dict | None]
