"""The transaction manager: every top-up happens exactly once, or the journal says why not.

Life of an action (each step is journaled before the next side effect, see keeper/tx/journal.py)::

    submit(call, key, value_at_stake_e6, lane)
      ├─ same key open (or confirmed < dedupe window)  -> that intent is returned, nothing is sent
      ├─ intent written
      ├─ one batched round trip: eth_call (simulate) + eth_feeHistory + latest block; then eth_estimateGas
      │     at a block 60 s ahead (time-dependent storage writes cost more later; see _estimate_gas)
      │     revert -> intent ``rejected`` with the decoded reason, SimulationRevert raised, nothing signed
      ├─ gas = estimate * 1.2 + 10,000; fees from FeePolicy (capped by the value at stake)
      └─ under the lane's nonce lock: allocate nonce, sign, journal the signed bytes, broadcast once
    poll()  (call every block or few seconds)
      ├─ receipts of every attempt (original, replacements, cancel) in one batch
      ├─ mined -> ``mined``; at ``confirmations`` depth on a canonical block -> confirmed | reverted | cancelled
      ├─ receipt gone after ``mined`` (reorg)            -> re-evaluate: still needed ? rebroadcast : cancel
      ├─ nonce used, no receipt of ours: a lagging / load-balanced node answers like this while our attempt
      │     landed, so every attempt is looked up by hash (receipt + transaction) on every endpoint, and the
      │     nonce is only given up after ``evidence_blocks`` blocks without any trace of ours; then still
      │     needed AND eth_call re-simulates ? new nonce : ``abandoned`` (a top-up that landed no longer
      │     simulates as needed, so it is never paid twice)
      ├─ an abandoned intent's attempt turns up mined later  -> the journal is corrected (confirmed)
      ├─ unknown to the node (dropped, lost send)        -> rebroadcast the same signed bytes (same hash)
      │     refused for a too-low fee                    -> replacement priced at the market, within the cap
      └─ not mined after ``stuck_blocks`` / ``stuck_s``  -> still needed ? replace (+12.5% both fees) : cancel
    reconcile()  (at start, before anything new): intents never signed -> abandoned; then poll();
                 then the nonce allocators are re-read.

One writer per key: the service takes the journal's flock before building a manager; a nonce the allocator
believed free that turns out used by a transaction we never signed ("nonce too low" / "replacement
underpriced" on a first send) means a second sender uses the key: :attr:`TransactionManager.halted` is set,
the intent is ``rejected`` (ours was refused, it cannot land) and every later submit raises SenderConflict.
Among several mined attempts of one intent, a successful one decides the final state.

"Still needed" is a callback the caller gives (per submit, or one for the manager) that looks at the
intent (its ``meta`` carries the action) and today's chain state; default: always needed. It may answer
:data:`LANDED` (the effect is already on chain): then nothing is rebroadcast, replaced or cancelled.

Lanes: each lane has its own key, nonce allocator and stuck/fee settings, so an urgent top-up never waits
behind a routine rebalance stuck in another lane's nonce queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from eth_account import Account
from eth_utils import to_checksum_address

from keeper.chain.abi import ErrorDecoder
from keeper.chain.rpc import ChainClient, ExecutionReverted, RpcErrorResponse
from keeper.errors import LaneBlocked, SenderConflict, SimulationRevert, TransactionRejected, TransientRpcError
from keeper.tx.call import ContractCall
from keeper.tx.fees import FeeCapExceeded, FeePolicy, Fees
from keeper.tx.journal import AttemptRecord, IntentRecord, Journal
from keeper.tx.nonce import NonceAllocator
from keeper.tx.reconcile import Describe, LaneBlock, find_landed

log = structlog.get_logger(__name__)

# estimate * 1.2 + 10k: never ran out of gas in 520 calls writing timestamp-dependent state (measured on anvil)
GAS_MARGIN_NUM, GAS_MARGIN_DEN, GAS_EXTRA = 12, 10, 10_000
CANCEL_GAS = 21_000
GAS_ESTIMATE_AHEAD_S = 60

LANDED = "landed"
"""What a ``still_needed`` callback returns (instead of ``False``) when the chain shows the intent's effect already
happened (e.g. the collateral rose by the amount): nothing is resent or cancelled, the receipt is waited for."""
StillNeeded = Callable[[IntentRecord], bool | str]


@dataclass
class Lane:
    """A signing key with its own nonce queue and timing. ``account`` is an eth_account LocalAccount."""

    name: str
    account: Any
    tip_percentile: float = 50.0
    stuck_blocks: int = 3
    stuck_s: float = 30.0

    @classmethod
    def from_key(cls, name: str, private_key: str, **kw: Any) -> Lane:
        return cls(name, Account.from_key(private_key), **kw)

    @property
    def address(self) -> str:
        return self.account.address

    def __repr__(self) -> str:  # never show the key
        return f"Lane({self.name!r}, {self.address})"


@dataclass
class _LaneState:
    lane: Lane
    nonces: NonceAllocator


@dataclass
class PollReport:
    """What one :meth:`TransactionManager.poll` changed."""

    head: int = 0
    finalized: list[IntentRecord] = field(default_factory=list)
    actions: list[tuple[int, str]] = field(default_factory=list)  # (intent id, what was done)


class TransactionManager:
    """Submits, watches, replaces and cancels transactions; the journal is the source of truth."""

    def __init__(
        self,
        client: ChainClient,
        journal: Journal,
        lanes: Sequence[Lane],
        fee_policy: FeePolicy | None = None,
        *,
        confirmations: int = 1,
        dedupe_window_s: float = 120.0,
        still_needed: StillNeeded | None = None,
        error_decoder: ErrorDecoder | None = None,
        on_signed: Callable[[AttemptRecord], None] | None = None,
        evidence_blocks: int = 4,
        describe_transaction: Describe | None = None,
    ) -> None:
        if not lanes:
            raise ValueError("at least one signer lane is required")
        if confirmations < 1:
            raise ValueError("confirmations must be at least 1 (1 = the inclusion block itself)")
        names = [ln.name for ln in lanes]
        if len(set(names)) != len(names):
            raise ValueError(f"lane names must be unique: {names}")
        self.client = client
        self.journal = journal
        self.fees = fee_policy or FeePolicy()
        self.confirmations = confirmations
        self.dedupe_window_s = dedupe_window_s
        self._still_needed_default = still_needed
        self._still_needed: dict[int, StillNeeded] = {}
        self.errors = error_decoder or ErrorDecoder()
        self._on_signed = on_signed  # test hook (e.g. SIGKILL between signing and broadcasting)
        self._lanes: dict[str, _LaneState] = {}
        by_address: dict[str, _LaneState] = {}
        for ln in lanes:
            addr = ln.address.lower()
            state = by_address.get(addr) or _LaneState(ln, NonceAllocator(client, journal, ln.address))
            by_address[addr] = state  # two lanes with one key share one nonce queue
            self._lanes[ln.name] = _LaneState(ln, state.nonces)
        self._head = 0
        # blocks to wait, after our nonce is counted as used with no receipt of ours anywhere, before it is
        # given up (a lagging endpoint's receipts catch up within that many blocks)
        self.evidence_blocks = evidence_blocks
        self.halted: str | None = None  # set when a second sender of our key is detected: no new sends
        self._nonce_taken_since: dict[int, int] = {}  # intent id -> head when first seen used without receipt
        # lower-case address -> transactions of that key in flight that the journal does not know (see
        # keeper/tx/reconcile.py): nothing new is signed for it until they are final
        self._blocks: dict[str, LaneBlock] = {}
        # what an imported transaction of ours did (the protocol adapter decodes its input: kind, account,
        # amount), so a top-up found on chain counts against the day budget like one we sent
        self._describe = describe_transaction

    # ---- public API ------------------------------------------------------------------------------

    def lane(self, name: str) -> Lane:
        return self._lane(name).lane

    def submit(
        self,
        call: ContractCall,
        idempotency_key: str,
        value_at_stake_e6: int,
        lane: str = "urgent",
        *,
        still_needed: StillNeeded | None = None,
        meta: dict | None = None,
    ) -> IntentRecord:
        """Simulate, sign and broadcast ``call`` once per idempotency key; returns the journaled intent.

        Raises SimulationRevert (decoded reason), FeeCapExceeded, TransactionRejected; a transient error
        while broadcasting is NOT raised: the intent stays ``signed`` and :meth:`poll` resolves it.
        """
        ls = self._lane(lane)
        if self.halted is not None:
            raise SenderConflict(f"sending stopped: {self.halted}")
        block = self._blocks.get(ls.lane.address.lower())
        if block is not None:
            raise LaneBlocked(f"lane {lane!r}: {block.reason}")
        existing = self.journal.find_active(idempotency_key, self.dedupe_window_s)
        if existing is not None:
            log.info("tx_deduplicated", key=idempotency_key, intent=existing.id, state=existing.state)
            if still_needed is not None:
                self._still_needed[existing.id] = still_needed
            return existing
        intent = self.journal.create_intent(
            idempotency_key=idempotency_key,
            lane=lane,
            sender=ls.lane.address,
            to=call.to,
            data=call.data,
            value_wei=call.value_wei,
            value_at_stake_e6=value_at_stake_e6,
            meta={**call.meta, **(meta or {}), "description": call.description},
        )
        if still_needed is not None:
            self._still_needed[intent.id] = still_needed
        tx = {"from": ls.lane.address, "to": call.to, "data": "0x" + call.data.hex(), "value": hex(call.value_wei)}
        try:
            sim, hist, head = self.client.batch(
                [
                    ("eth_call", [tx, "latest"]),
                    ("eth_feeHistory", [hex(self.fees.history_blocks), "latest", [ls.lane.tip_percentile]]),
                    ("eth_getBlockByNumber", ["latest", False]),
                ],
                raise_errors=False,
            )
            if isinstance(sim, RpcErrorResponse):
                self._reject_simulation(intent, sim)
            for answer in (hist, head):
                if isinstance(answer, RpcErrorResponse):
                    self.journal.update(intent.id, state="rejected", reason=str(answer), event="tx_rejected")
                    raise TransactionRejected(str(answer))
            est = self._estimate_gas(tx, int(head["timestamp"], 16))
        except TransientRpcError as exc:
            self.journal.update(intent.id, state="abandoned", reason=f"rpc unavailable: {exc}", event="tx_abandoned")
            raise
        except ExecutionReverted as exc:
            self._reject_simulation(intent, exc)
        self._head = int(head["number"], 16)
        gas_limit = est * GAS_MARGIN_NUM // GAS_MARGIN_DEN + GAS_EXTRA
        market = self.fees.market_from_history(hist)
        cap = self.fees.cap_per_gas(gas_limit, value_at_stake_e6)
        try:
            fees = self.fees.initial(market, cap)
        except FeeCapExceeded as exc:
            self.journal.update(intent.id, state="rejected", reason=str(exc), event="tx_fee_cap_exceeded")
            log.warning("tx_fee_cap_exceeded", intent=intent.id, key=idempotency_key, error=str(exc))
            raise
        intent = self.journal.update(intent.id, gas_limit=gas_limit)
        self._send_new_nonce(intent, ls, fees)
        return self.journal.get(intent.id)

    def poll(self) -> PollReport:
        """Advance every open intent of this manager's lanes by one step (see module docstring)."""
        return self._poll(at_start=False)

    def _poll(self, *, at_start: bool) -> PollReport:
        report = PollReport()
        intents = [i for i in self.journal.open_intents() if i.lane in self._lanes and i.state != "intent"]
        senders = sorted({ls.lane.address.lower() for ls in self._lanes.values()} | {i.sender.lower() for i in intents})
        first = self.client.batch(
            [("eth_blockNumber", [])]
            + [("eth_getTransactionCount", [s, tag]) for s in senders for tag in ("latest", "pending")]
        )
        head = self._head = int(first[0], 16)
        report.head = head
        counts = [int(n, 16) for n in first[1:]]
        mined_nonce = dict(zip(senders, counts[0::2], strict=True))
        pending_nonce = dict(zip(senders, counts[1::2], strict=True))
        self._late_evidence(head, report)
        if intents:
            self._advance_all(intents, head, mined_nonce, report)
        self._audit_nonces(head, mined_nonce, pending_nonce, at_start=at_start)
        return report

    def _advance_all(
        self, intents: list[IntentRecord], head: int, mined_nonce: dict[str, int], report: PollReport
    ) -> None:
        attempts = {i.id: self.journal.attempts(i.id) for i in intents}
        hashes = [a.tx_hash for i in intents for a in attempts[i.id]]
        receipts = dict(
            zip(hashes, self.client.batch([("eth_getTransactionReceipt", [h]) for h in hashes]), strict=True)
        )
        mined_blocks = sorted({int(r["blockNumber"], 16) for r in receipts.values() if r})
        canon = dict(
            zip(
                mined_blocks,
                self.client.batch([("eth_getBlockByNumber", [hex(b), False]) for b in mined_blocks]),
                strict=True,
            )
        )
        for intent in intents:
            try:
                final = self._advance(
                    intent, attempts[intent.id], receipts, canon, head, mined_nonce[intent.sender.lower()], report
                )
            except TransientRpcError as exc:
                log.warning("tx_poll_rpc_error", intent=intent.id, error=str(exc))
                continue
            if final is not None:
                report.finalized.append(final)

    def reconcile(self) -> PollReport:
        """Bring the journal in line with the chain after a restart; call before submitting anything.

        Unsigned intents are abandoned; open ones advance one step; then each key's nonces on the node are
        compared with the journal: landed transactions the journal does not know are imported (so they count),
        and pending ones it does not know block the lane until they are final (:meth:`blocked_lanes`)."""
        for intent in self.journal.open_intents():
            if intent.lane in self._lanes and intent.state == "intent":
                self.journal.update(
                    intent.id, state="abandoned", reason="not signed before restart", event="tx_abandoned"
                )
        report = self._poll(at_start=True)
        for nonces in self._allocators():
            nonces.sync()
        log.info(
            "journal_reconciled",
            open=len(self.journal.open_intents()),
            finalized=len(report.finalized),
            blocked_lanes=sorted(self.blocked_lanes()),
        )
        return report

    def blocked_lanes(self) -> dict[str, str]:
        """Lane name -> why nothing is signed for it now (transactions of its key the journal does not know are
        in flight); empty when every lane may send."""
        return {
            name: self._blocks[ls.lane.address.lower()].reason
            for name, ls in self._lanes.items()
            if ls.lane.address.lower() in self._blocks
        }

    def _allocators(self) -> list[NonceAllocator]:
        unique: dict[int, NonceAllocator] = {}
        for ls in self._lanes.values():
            unique.setdefault(id(ls.nonces), ls.nonces)
        return list(unique.values())

    def _allocator_of(self, address: str) -> NonceAllocator:
        return next(ls.nonces for ls in self._lanes.values() if ls.lane.address.lower() == address)

    def _lane_of(self, address: str) -> str:
        return next(name for name, ls in self._lanes.items() if ls.lane.address.lower() == address)

    def _audit_nonces(self, head: int, mined: dict[str, int], pending: dict[str, int], *, at_start: bool) -> None:
        """Compare each key's nonces on the node with what this journal signed (module keeper/tx/reconcile.py).

        At start: pending nonces no attempt of ours holds block the lane; landed ones are imported. While
        running: a count beyond the next nonce this process would hand out was signed by someone else (a second
        sender of the key, on another journal): sending stops. A blocked lane is released once its unknown
        transactions are ``confirmations`` deep, after importing them."""
        for address in sorted(self._lanes_by_address()):
            latest, in_pool = mined.get(address, 0), pending.get(address, 0)
            block = self._blocks.get(address)
            if block is not None:
                if in_pool > block.until_nonce:
                    self._halt(
                        f"nonces of {address} keep advancing (pending {in_pool} > {block.until_nonce} when the"
                        " lane was blocked) with transactions this keeper did not sign: another process sends"
                        " with the same key"
                    )
                if block.final(latest, head, self.confirmations):
                    self._import_from_chain(address, range(block.from_nonce, block.until_nonce), head)
                    del self._blocks[address]
                    self._allocator_of(address).sync()
                    log.warning("lane_unblocked", lane=self._lane_of(address), address=address, head=head)
                    self.journal.event(None, "lane_unblocked", address=address, head=head)
                continue
            if at_start:
                top = self.journal.highest_nonce(address)
                landed_from = 0 if top is None else top + 1
                if latest > landed_from:
                    self._import_from_chain(address, range(landed_from, latest), head)
                known = self.journal.signed_nonces(address, latest, max(in_pool, latest))
                unknown = [n for n in range(latest, in_pool) if n not in known]
                if unknown:
                    self._block(address, latest, in_pool, head, unknown)
                continue
            nxt = self._allocator_of(address).next_nonce
            if nxt is not None and max(latest, in_pool) > nxt:
                self._halt(
                    f"the node counts {max(latest, in_pool)} transactions of {address} but this keeper signed"
                    f" nonces below {nxt} only: another process sends with the same key"
                )

    def _lanes_by_address(self) -> set[str]:
        return {ls.lane.address.lower() for ls in self._lanes.values()}

    def _block(self, address: str, latest: int, pending: int, head: int, unknown: list[int]) -> None:
        reason = (
            f"{len(unknown)} transaction(s) of {address} (nonces {unknown[0]}-{unknown[-1]}) are pending on the node"
            " but not in this journal (journal lost or restored from an older copy, or another process using the"
            " key); nothing is sent for this key until they are final"
        )
        self._blocks[address] = LaneBlock(address, latest, pending, head, reason)
        log.warning("lane_blocked", lane=self._lane_of(address), address=address, nonces=unknown, head=head)
        self.journal.event(None, "lane_blocked", address=address, nonces=unknown, head=head)

    def _import_from_chain(self, address: str, nonces: range, head: int) -> None:
        """Journal the mined transactions of ``address`` with ``nonces`` that it does not know (as confirmed or
        reverted, dated by their block, described by the protocol adapter), so the day budget counts them."""
        known = self.journal.signed_nonces(address, nonces.start, nonces.stop)
        wanted = [n for n in nonces if n not in known]
        if not wanted:
            return
        found, missing = find_landed(self.client, address, wanted, head)
        lane = self._lane_of(address)
        for tx in found:
            if self.journal.knows_tx(tx.tx_hash):
                continue
            meta = (self._describe(tx.to, tx.data) if self._describe is not None else None) or {"kind": "unknown"}
            rec = self.journal.import_landed(
                idempotency_key=f"chain:{tx.tx_hash}",
                lane=lane,
                sender=address,
                to=tx.to,
                tx_hash=tx.tx_hash,
                nonce=tx.nonce,
                block_number=tx.block_number,
                block_hash=tx.block_hash,
                landed_at=float(tx.block_timestamp),
                meta=meta,
                state="confirmed" if tx.succeeded else "reverted",
            )
            log.warning(
                "tx_imported_from_chain",
                intent=rec.id,
                tx_hash=tx.tx_hash,
                nonce=tx.nonce,
                block=tx.block_number,
                state=rec.state,
                kind=meta.get("kind"),
                amount_e6=meta.get("amount_e6"),
            )
        if missing:
            log.warning("chain_import_incomplete", address=address, nonces=missing)
            self.journal.event(None, "chain_import_incomplete", address=address, nonces=missing)

    def wait(
        self,
        intent_id: int,
        timeout_s: float = 60.0,
        poll_interval_s: float = 0.25,
        between_polls: Callable[[], None] | None = None,
    ) -> IntentRecord:
        """Poll until the intent is final (or ``timeout_s`` passes); returns its latest record."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.poll()
            rec = self.journal.get(intent_id)
            if not rec.is_open or time.monotonic() >= deadline:
                return rec
            if between_polls is not None:
                between_polls()
            else:
                time.sleep(poll_interval_s)

    # ---- submission internals --------------------------------------------------------------------

    def _lane(self, name: str) -> _LaneState:
        try:
            return self._lanes[name]
        except KeyError:
            raise ValueError(f"unknown lane {name!r}; lanes: {sorted(self._lanes)}") from None

    def _estimate_gas(self, tx: dict, latest_ts: int) -> int:
        """Gas estimate at a block ``GAS_ESTIMATE_AHEAD_S`` later than ``latest``.

        Calls whose storage writes depend on elapsed time (PerpEngine's fee accrual writes zero -> non-zero
        slots, +20k gas each, only once a second has passed) ran out of gas when estimated in the same
        second as the previous accrual: measured 49.5k estimated vs 91.1k used. Estimating with a later
        block timestamp (block override, 4th parameter) sees the costlier path. Nodes that do not accept
        block overrides get a plain estimate.
        """
        try:
            return int(
                self.client.request(
                    "eth_estimateGas", [tx, "latest", {}, {"time": hex(latest_ts + GAS_ESTIMATE_AHEAD_S)}]
                ),
                16,
            )
        except ExecutionReverted:
            raise
        except RpcErrorResponse as exc:
            log.info("estimate_gas_no_block_override", error=exc.message[:120])
            return self.client.estimate_gas(tx)

    def _reject_simulation(self, intent: IntentRecord, err: RpcErrorResponse) -> None:
        data = err.data_bytes
        reason = str(self.errors.decode(data)) if isinstance(err, ExecutionReverted) else err.message
        if isinstance(err, ExecutionReverted) and not data:
            reason = err.message
        self.journal.update(intent.id, state="rejected", reason=reason, event="tx_simulation_reverted")
        log.warning("tx_simulation_reverted", intent=intent.id, key=intent.idempotency_key, reason=reason)
        raise SimulationRevert(reason, data)

    def _sign(
        self, ls: _LaneState, *, nonce: int, to: str, data: bytes, value: int, gas: int, fees: Fees
    ) -> tuple[str, bytes]:
        signed = ls.lane.account.sign_transaction(
            {
                "type": 2,
                "chainId": self.client.chain_id,
                "nonce": nonce,
                "to": to_checksum_address(to),
                "value": value,
                "data": data,
                "gas": gas,
                "maxFeePerGas": fees.max_fee_per_gas,
                "maxPriorityFeePerGas": fees.max_priority_fee_per_gas,
            }
        )
        return "0x" + bytes(signed.hash).hex(), bytes(signed.raw_transaction)

    def _sign_and_journal(
        self, intent: IntentRecord, ls: _LaneState, *, kind: str, nonce: int, fees: Fees
    ) -> AttemptRecord:
        if kind == "cancel":
            to, data, value, gas = intent.sender, b"", 0, CANCEL_GAS
        else:
            assert intent.gas_limit is not None, "gas_limit is set at submit, before any signing"
            to, data, value, gas = intent.to, intent.data, intent.value_wei, intent.gas_limit
        tx_hash, raw = self._sign(ls, nonce=nonce, to=to, data=data, value=value, gas=gas, fees=fees)
        attempt = self.journal.add_attempt(
            intent.id,
            kind=kind,
            nonce=nonce,
            tx_hash=tx_hash,
            raw_tx=raw,
            max_fee_per_gas=fees.max_fee_per_gas,
            max_priority_fee_per_gas=fees.max_priority_fee_per_gas,
            gas_limit=gas,
        )
        if self._on_signed is not None:
            self._on_signed(attempt)
        return attempt

    def _send_new_nonce(self, intent: IntentRecord, ls: _LaneState, fees: Fees, retries: int = 3) -> None:
        """Allocate a nonce, sign, journal, broadcast; on a nonce conflict resync and try the next nonce."""
        with ls.nonces.lock:
            for _ in range(retries):
                nonce = ls.nonces.allocate()
                attempt = self._sign_and_journal(intent, ls, kind="send", nonce=nonce, fees=fees)
                outcome = self._broadcast(attempt)
                if outcome in ("sent", "unknown"):
                    return
                if outcome == "nonce_taken":
                    if not self.journal.signed_nonces(ls.lane.address, nonce, nonce + 1, exclude_intent=intent.id):
                        # a nonce the allocator believed free is used by a transaction we never signed: a
                        # second sender uses this key. Signing on at the next nonce could pay twice: stop.
                        self._halt(
                            f"nonce {nonce} of {ls.lane.address} was used by a transaction this keeper"
                            " did not sign: another process sends with the same key"
                        )
                        self.journal.update(
                            intent.id, state="rejected", reason="second sender on this key", event="tx_rejected"
                        )
                        raise SenderConflict(self.halted or "second sender")
                    ls.nonces.sync()
                    continue
                ls.nonces.release(nonce)
                self.journal.update(intent.id, state="rejected", reason=outcome, event="tx_rejected")
                raise TransactionRejected(f"intent {intent.id}: node refused the transaction: {outcome}")
            self.journal.update(intent.id, state="rejected", reason="nonce conflicts persisted", event="tx_rejected")
            raise TransactionRejected(f"intent {intent.id}: nonce kept being taken by another sender")

    def _halt(self, reason: str) -> None:
        if self.halted is None:
            self.halted = reason
            log.critical("tx_sending_halted", reason=reason)
            self.journal.event(None, "tx_sending_halted", reason=reason)

    def _broadcast(self, attempt: AttemptRecord) -> str:
        """Send signed bytes once. Returns sent | unknown | nonce_taken | underpriced | <refusal message>."""
        try:
            self.client.send_raw_transaction(attempt.raw_tx)
        except TransientRpcError as exc:
            self.journal.mark_send_error(attempt.id, f"transient: {exc}")
            log.warning("tx_send_outcome_unknown", intent=attempt.intent_id, tx_hash=attempt.tx_hash, error=str(exc))
            return "unknown"
        except RpcErrorResponse as exc:
            msg = exc.message.lower()
            if "already known" in msg or "already imported" in msg or "known transaction" in msg:
                self.journal.mark_sent(attempt.id, self._head)
                return "sent"
            self.journal.mark_send_error(attempt.id, exc.message)
            log.warning(
                "tx_send_refused",
                intent=attempt.intent_id,
                tx_hash=attempt.tx_hash,
                nonce=attempt.nonce,
                error=exc.message,
            )
            if "nonce too low" in msg or "nonce has already been used" in msg:
                return "nonce_taken"
            if "replacement" in msg and "underpriced" in msg:
                return "nonce_taken" if attempt.kind == "send" else "underpriced"
            if "base fee" in msg or "fee cap" in msg or "underpriced" in msg:
                return "underpriced"
            return exc.message
        self.journal.mark_sent(attempt.id, self._head)
        log.info(
            "tx_sent",
            intent=attempt.intent_id,
            kind=attempt.kind,
            tx_hash=attempt.tx_hash,
            nonce=attempt.nonce,
            max_fee_per_gas=attempt.max_fee_per_gas,
            max_priority_fee_per_gas=attempt.max_priority_fee_per_gas,
        )
        return "sent"

    # ---- polling internals -----------------------------------------------------------------------

    def _needed(self, intent: IntentRecord) -> bool:
        """Still worth sending (``LANDED`` counts as not: it must not be sent again)."""
        return self._verdict(intent) not in (False, LANDED)

    def _verdict(self, intent: IntentRecord) -> bool | str:
        fn = self._still_needed.get(intent.id) or self._still_needed_default
        if fn is None:
            return True
        try:
            answer = fn(intent)
        except Exception as exc:  # noqa: BLE001 - a broken callback must not stop the manager; keep going
            log.error("still_needed_failed", intent=intent.id, error=str(exc))
            return True
        return LANDED if answer == LANDED else bool(answer)

    def _advance(
        self,
        intent: IntentRecord,
        attempts: list[AttemptRecord],
        receipts: dict,
        canon: dict,
        head: int,
        mined_nonce: int,
        report: PollReport,
    ) -> IntentRecord | None:
        ls = self._lanes[intent.lane]
        mined = None
        for a in attempts:
            r = receipts.get(a.tx_hash)
            if r:
                block = canon.get(int(r["blockNumber"], 16))
                # a landed attempt wins over a revert
                if (
                    block is not None
                    and block["hash"] == r["blockHash"]
                    and (mined is None or int(r["status"], 16) == 1)
                ):
                    mined = (a, r)
        if mined is not None:
            a, r = mined
            bn, bh = int(r["blockNumber"], 16), r["blockHash"]
            if intent.state != "mined" or intent.block_hash != bh or intent.tx_hash != a.tx_hash:
                intent = self.journal.update(
                    intent.id,
                    state="mined",
                    tx_hash=a.tx_hash,
                    block_number=bn,
                    block_hash=bh,
                    nonce=a.nonce,
                    event="tx_mined",
                    detail={"status": r["status"], "kind": a.kind},
                )
                log.info("tx_mined", intent=intent.id, tx_hash=a.tx_hash, block=bn, status=r["status"])
            if head - bn + 1 >= self.confirmations:
                ok = int(r["status"], 16) == 1
                state = "cancelled" if a.kind == "cancel" and ok else ("confirmed" if ok else "reverted")
                final = self.journal.update(
                    intent.id,
                    state=state,
                    event=f"tx_{state}",
                    detail={"gas_used": int(r["gasUsed"], 16), "depth": head - bn + 1},
                )
                log.info(f"tx_{state}", intent=intent.id, tx_hash=a.tx_hash, block=bn, key=intent.idempotency_key)
                self._still_needed.pop(intent.id, None)
                return final
            return None

        if intent.state == "mined":  # the receipt we recorded is gone: reorg
            log.warning("tx_reorged", intent=intent.id, tx_hash=intent.tx_hash, block=intent.block_number)
            intent = self.journal.update(
                intent.id,
                state="sent",
                block_number=None,
                block_hash=None,
                tx_hash=None,
                event="tx_reorged",
                detail={"old_block": intent.block_number},
            )
            report.actions.append((intent.id, "reorged"))

        live = [a for a in attempts if a.nonce == intent.nonce]
        if not live or intent.nonce is None:  # a live attempt implies intent.nonce is set
            return None
        if mined_nonce > intent.nonce:
            # our nonce is counted as used but no receipt of ours was seen. A lagging or load-balanced node
            # answers exactly like this while our own attempt landed, so first look every attempt up by hash
            # and wait ``evidence_blocks`` for consistent evidence; only then re-simulate before any new nonce.
            if self._attempt_landed_or_known(attempts):
                self._nonce_taken_since.pop(intent.id, None)
                return None
            first = self._nonce_taken_since.setdefault(intent.id, head)
            if head - first < self.evidence_blocks:
                report.actions.append((intent.id, "nonce_used:awaiting_evidence"))
                return None
            self._nonce_taken_since.pop(intent.id, None)
            log.warning(
                "tx_nonce_taken", intent=intent.id, nonce=intent.nonce, sender=intent.sender, waited_blocks=head - first
            )
            self.journal.event(intent.id, "tx_nonce_taken", nonce=intent.nonce, waited_blocks=head - first)
            report.actions.append((intent.id, "nonce_taken"))
            if not self._needed(intent) or not self._simulates(intent):
                return self.journal.update(
                    intent.id,
                    state="abandoned",
                    reason="nonce used by another transaction; no longer needed",
                    event="tx_abandoned",
                )
            ls.nonces.sync()
            fees = self._fees_for(intent, None, ls)
            if fees is None:
                return None
            try:
                self._send_new_nonce(intent, ls, fees)
            except TransactionRejected as exc:
                return self.journal.get(intent.id) if "refused" in str(exc) else None
            return None

        last = live[-1]
        verdict = self._verdict(intent)
        if verdict == LANDED:  # an endpoint shows the effect while this one has no receipt yet: wait for it
            report.actions.append((intent.id, "landed:awaiting_receipt"))
            return None
        needed = bool(verdict)
        known = self.client.get_transaction(last.tx_hash)
        if known is None and not (last.kind != "cancel" and not needed):
            # dropped from the pool (or the broadcast was lost): the same signed bytes again
            outcome = self._broadcast(last)
            report.actions.append((intent.id, f"rebroadcast:{outcome}"))
            self.journal.event(intent.id, "tx_rebroadcast", tx_hash=last.tx_hash, outcome=outcome)
            if outcome == "underpriced":
                self._replace(intent, ls, last, kind=last.kind, report=report)
            elif outcome == "nonce_taken":
                pass  # resolved next poll (a receipt of ours, or nonce taken by someone else)
            return None
        sent_block = last.sent_block if last.sent_block is not None else head
        sent_at = last.sent_at or last.signed_at
        stuck = head - sent_block >= ls.lane.stuck_blocks or self.journal.clock() - sent_at >= ls.lane.stuck_s
        if last.kind != "cancel" and not needed:
            if self._mined_anywhere(attempts):
                # "not needed" because it landed: an endpoint behind the others has no receipt yet; never cancel
                # a nonce that is already mined (the cancel would only be refused), wait for the receipt instead
                report.actions.append((intent.id, "mined_elsewhere:awaiting_receipt"))
                return None
            self._replace(intent, ls, last, kind="cancel", report=report)
        elif stuck:
            self._replace(intent, ls, last, kind=last.kind if last.kind == "cancel" else "replace", report=report)
        return None

    def _late_evidence(self, head: int, report: PollReport, window_s: float = 3600.0) -> None:
        """An intent abandoned in the last hour whose attempt turns up mined after all (a receipt a lagging
        node hid for longer than ``evidence_blocks``): the journal is corrected to what happened on chain."""
        recent = [
            i for i in self.journal.abandoned_with_attempts(self.journal.clock() - window_s) if i.lane in self._lanes
        ]
        if not recent:
            return
        attempts = [a for i in recent for a in self.journal.attempts(i.id)]
        receipts = self.client.batch([("eth_getTransactionReceipt", [a.tx_hash]) for a in attempts])
        for a, r in zip(attempts, receipts, strict=True):
            if r and head - int(r["blockNumber"], 16) + 1 >= self.confirmations:
                ok = int(r["status"], 16) == 1
                state = "cancelled" if a.kind == "cancel" and ok else ("confirmed" if ok else "reverted")
                rec = self.journal.update(
                    a.intent_id,
                    state=state,
                    tx_hash=a.tx_hash,
                    nonce=a.nonce,
                    block_number=int(r["blockNumber"], 16),
                    block_hash=r["blockHash"],
                    reason="found mined after it was abandoned",
                    event="tx_late_receipt",
                )
                log.warning("tx_late_receipt", intent=a.intent_id, tx_hash=a.tx_hash, state=state)
                report.finalized.append(rec)
                recent = [i for i in recent if i.id != a.intent_id]

    def _attempt_landed_or_known(self, attempts: Sequence[AttemptRecord]) -> bool:
        """Does any endpoint know any of these attempts by hash (mined or pending)? Each endpoint is asked."""
        calls: list[tuple[str, list]] = []
        for a in attempts:
            calls += [("eth_getTransactionReceipt", [a.tx_hash]), ("eth_getTransactionByHash", [a.tx_hash])]
        if not calls:
            return False
        for answers in self.client.batch_each(calls):
            if any(isinstance(x, dict) for x in answers):
                return True
        return False

    def _mined_anywhere(self, attempts: Sequence[AttemptRecord]) -> bool:
        """Has any endpoint a receipt for any of these attempts?"""
        calls = [("eth_getTransactionReceipt", [a.tx_hash]) for a in attempts]
        return bool(calls) and any(isinstance(x, dict) for answers in self.client.batch_each(calls) for x in answers)

    def _simulates(self, intent: IntentRecord) -> bool:
        """Re-simulate the intent's call at ``latest`` (a top-up that already landed no longer passes)."""
        tx = {"from": intent.sender, "to": intent.to, "data": "0x" + intent.data.hex(), "value": hex(intent.value_wei)}
        try:
            self.client.request("eth_call", [tx, "latest"])
        except RpcErrorResponse as exc:
            log.info("tx_resimulation_failed", intent=intent.id, error=exc.message[:200])
            return False
        return True

    def _fees_for(
        self, intent: IntentRecord, previous: Fees | None, ls: _LaneState, gas: int | None = None
    ) -> Fees | None:
        market = self.fees.market(self.client, ls.lane.tip_percentile)
        gas = gas or intent.gas_limit
        assert gas is not None, "gas_limit is set at submit, before any fee bump"
        cap = self.fees.cap_per_gas(gas, intent.value_at_stake_e6)
        try:
            if previous is None:
                return self.fees.initial(market, cap)
            return self.fees.bumped(previous, market, cap)
        except FeeCapExceeded as exc:
            log.warning("tx_fee_cap_reached", intent=intent.id, error=str(exc))
            self.journal.event(intent.id, "tx_fee_cap_reached", error=str(exc))
            return None

    def _replace(
        self, intent: IntentRecord, ls: _LaneState, last: AttemptRecord, *, kind: str, report: PollReport
    ) -> None:
        """Same nonce, both fee fields raised (>= bump and >= market), within the cap."""
        previous = Fees(last.max_fee_per_gas, last.max_priority_fee_per_gas)
        gas = CANCEL_GAS if kind == "cancel" else intent.gas_limit
        fees = self._fees_for(intent, previous, ls, gas=gas)
        if fees is None:
            log.warning("tx_fee_cap_reached", intent=intent.id, kind=kind, max_fee=previous.max_fee_per_gas)
            self.journal.event(intent.id, "tx_fee_cap_reached", kind=kind)
            report.actions.append((intent.id, f"{kind}:capped"))
            return
        with ls.nonces.lock:
            attempt = self._sign_and_journal(intent, ls, kind=kind, nonce=last.nonce, fees=fees)
            outcome = self._broadcast(attempt)
        log.info(
            f"tx_{kind}d" if kind != "cancel" else "tx_cancel_sent",
            intent=intent.id,
            old_hash=last.tx_hash,
            new_hash=attempt.tx_hash,
            nonce=last.nonce,
            max_fee_per_gas=fees.max_fee_per_gas,
            outcome=outcome,
        )
        report.actions.append((intent.id, f"{kind}:{outcome}"))


def default_lanes(keys: Iterable[tuple[str, str]], **kw: Any) -> list[Lane]:
    """Lanes from ``(name, private_key)`` pairs, e.g. ``[("urgent", k1), ("routine", k2)]``."""
    return [Lane.from_key(name, key, **kw) for name, key in keys]
