"""SQLite (WAL) journal of every on-chain action: the manager's memory across crashes.

Write order (each step committed before the next side effect)::

    intent  (idempotency key, call, value at stake)   before anything is signed
    attempt (nonce, fees, signed raw tx, hash)        after signing, BEFORE broadcasting
    sent / send_error on that attempt                 after the node answered
    receipt (block number + hash)  -> state mined     when seen
    final state                                       confirmed | reverted | cancelled | rejected | abandoned

Because the signed bytes are stored before the broadcast, a restart can always rebroadcast the very same
transaction (same hash, same nonce: it can execute at most once) or find its receipt; it never needs to
sign a second, different transaction for the same intent at a new nonce unless the old nonce was provably
consumed by something else. ``synchronous=FULL``: a commit survives a process kill and a power cut.

States::

    intent -> signed -> sent -> mined -> confirmed      (status 1 at confirmation depth)
                                      -> reverted       (status 0 at confirmation depth)
                                      -> cancelled      (our zero-value self-transfer took the nonce)
    intent -> rejected                                  (simulation reverted / node refused; nothing on chain)
    intent | signed | sent -> abandoned                 (purpose gone and nothing of ours can still mine)
    mined -> sent                                       (reorg removed the receipt: re-evaluated)
    abandoned -> confirmed | reverted                   (an attempt found mined later: what happened wins)
    (none) -> confirmed                                 (a landed tx of our key imported from the chain)

Opening a corrupt file, a folder or an uncreatable path raises JournalError (one line: path and fix). A
process that sends takes :meth:`Journal.lock_for_sending` (flock on ``<journal>.lock``, released by the
kernel when the process dies); readers never lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keeper.errors import JournalBusy, JournalError

OPEN_STATES = ("intent", "signed", "sent", "mined")
FINAL_STATES = ("confirmed", "reverted", "cancelled", "rejected", "abandoned")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS intents (
    id INTEGER PRIMARY KEY,
    idempotency_key TEXT NOT NULL,
    lane TEXT NOT NULL,
    sender TEXT NOT NULL,
    to_address TEXT NOT NULL,
    data TEXT NOT NULL,
    value_wei TEXT NOT NULL,
    value_at_stake_e6 INTEGER NOT NULL,
    meta TEXT NOT NULL,
    state TEXT NOT NULL,
    nonce INTEGER,
    gas_limit INTEGER,
    tx_hash TEXT,
    block_number INTEGER,
    block_hash TEXT,
    reason TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS intents_key ON intents(idempotency_key);
CREATE INDEX IF NOT EXISTS intents_state ON intents(state);
CREATE INDEX IF NOT EXISTS intents_created ON intents(created_at);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    intent_id INTEGER NOT NULL REFERENCES intents(id),
    kind TEXT NOT NULL,
    nonce INTEGER NOT NULL,
    tx_hash TEXT NOT NULL,
    raw_tx TEXT NOT NULL,
    max_fee_per_gas TEXT NOT NULL,
    max_priority_fee_per_gas TEXT NOT NULL,
    gas_limit INTEGER NOT NULL,
    signed_at REAL NOT NULL,
    sent_at REAL,
    sent_block INTEGER,
    error TEXT
);
CREATE INDEX IF NOT EXISTS attempts_intent ON attempts(intent_id);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    intent_id INTEGER,
    at REAL NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
    name TEXT PRIMARY KEY,
    block INTEGER NOT NULL,
    block_hash TEXT,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS accounts (
    scope TEXT NOT NULL,
    account TEXT NOT NULL,
    market_id INTEGER NOT NULL,
    first_block INTEGER NOT NULL,
    PRIMARY KEY (scope, account, market_id)
);
"""


@dataclass(frozen=True, slots=True)
class IntentRecord:
    id: int
    idempotency_key: str
    lane: str
    sender: str
    to: str
    data: bytes
    value_wei: int
    value_at_stake_e6: int
    meta: dict
    state: str
    nonce: int | None
    gas_limit: int | None
    tx_hash: str | None
    block_number: int | None
    block_hash: str | None
    reason: str | None
    created_at: float
    updated_at: float

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    id: int
    intent_id: int
    kind: str  # send | replace | cancel | resend
    nonce: int
    tx_hash: str
    raw_tx: bytes
    max_fee_per_gas: int
    max_priority_fee_per_gas: int
    gas_limit: int
    signed_at: float
    sent_at: float | None
    sent_block: int | None
    error: str | None


@dataclass
class Journal:
    """The SQLite journal; safe to share between threads of one process (one connection, one lock)."""

    path: str | Path
    clock: Any = time.time
    _conn: sqlite3.Connection = field(init=False, repr=False)
    _lock: threading.RLock = field(init=False, repr=False, default_factory=threading.RLock)
    _lock_fd: int | None = field(init=False, repr=False, default=None)  # the writer flock, when held

    def __post_init__(self) -> None:
        where = str(self.path)
        try:
            if where != ":memory:":
                path = Path(self.path)
                if path.is_dir():
                    raise JournalError(
                        f"journal path {where} is a folder: set journal.path to a file inside it,"
                        f" e.g. {path / 'journal.sqlite'}"
                    )
                path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(where, check_same_thread=False, isolation_level=None, timeout=30.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.executescript(_SCHEMA)
        except JournalError:
            raise
        except sqlite3.DatabaseError as exc:
            raise JournalError(
                f"journal {where} is not a usable SQLite database ({exc}): move it aside and restore"
                " a backup, or set journal.path to a new file (the chain is reconciled at start)"
            ) from None
        except OSError as exc:
            raise JournalError(
                f"journal {where} cannot be created ({exc.strerror or exc}): set journal.path to a writable location"
            ) from None

    def lock_for_sending(self) -> None:
        """Take the exclusive OS-level writer lock (``flock`` on ``<journal>.lock``) or raise JournalBusy.

        Only a process that signs takes it; readers (``status``, ``check`` without ``--execute``) never do. The
        kernel releases it when the process dies, even by SIGKILL, so a crash never leaves a stale lock."""
        if self._lock_fd is not None or str(self.path) == ":memory:":
            return
        lock_path = f"{self.path}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise JournalBusy(
                f"journal {self.path} is in use by another sending keeper (lock {lock_path}): stop"
                " it first, or run read-only (without --execute)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # ---- intents ---------------------------------------------------------------------------------

    def create_intent(
        self,
        *,
        idempotency_key: str,
        lane: str,
        sender: str,
        to: str,
        data: bytes,
        value_wei: int,
        value_at_stake_e6: int,
        meta: dict | None = None,
    ) -> IntentRecord:
        now = self.clock()
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO intents (idempotency_key, lane, sender, to_address, data, value_wei,"
                " value_at_stake_e6, meta, state, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,'intent',?,?)",
                (
                    idempotency_key,
                    lane,
                    sender,
                    to,
                    data.hex(),
                    str(value_wei),
                    value_at_stake_e6,
                    json.dumps(meta or {}, sort_keys=True),
                    now,
                    now,
                ),
            )
            intent_id = cur.lastrowid
            assert intent_id is not None, "lastrowid is set after an INSERT"
            self._event(c, intent_id, "intent_created", {"key": idempotency_key, "lane": lane})
        return self.get(intent_id)

    def find_active(self, idempotency_key: str, confirmed_within_s: float) -> IntentRecord | None:
        """The newest intent with this key that is open, or confirmed less than ``confirmed_within_s`` ago."""
        since = self.clock() - confirmed_within_s
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM intents WHERE idempotency_key = ? AND (state IN ('intent','signed','sent','mined')"
                " OR (state = 'confirmed' AND updated_at >= ?)) ORDER BY id DESC LIMIT 1",
                (idempotency_key, since),
            ).fetchone()
        return _intent(row) if row else None

    def get(self, intent_id: int) -> IntentRecord:
        with self._lock:
            row = self._conn.execute("SELECT * FROM intents WHERE id = ?", (intent_id,)).fetchone()
        if row is None:
            raise KeyError(f"no intent {intent_id}")
        return _intent(row)

    def by_key(self, idempotency_key: str) -> list[IntentRecord]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM intents WHERE idempotency_key = ? ORDER BY id", (idempotency_key,)
            ).fetchall()
        return [_intent(r) for r in rows]

    def open_intents(self, lane: str | None = None) -> list[IntentRecord]:
        q = "SELECT * FROM intents WHERE state IN ('intent','signed','sent','mined')"
        args: tuple = ()
        if lane is not None:
            q += " AND lane = ?"
            args = (lane,)
        with self._lock:
            rows = self._conn.execute(q + " ORDER BY id", args).fetchall()
        return [_intent(r) for r in rows]

    def intents_since(self, created_at: float) -> list[IntentRecord]:
        """Intents created at or after ``created_at`` (unix seconds), oldest first (indexed: the day budget
        reads this every cycle, so it must not scan the whole history)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM intents WHERE created_at >= ? ORDER BY id", (created_at,)
            ).fetchall()
        return [_intent(r) for r in rows]

    def all_intents(self) -> list[IntentRecord]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM intents ORDER BY id").fetchall()
        return [_intent(r) for r in rows]

    def update(
        self, intent_id: int, *, event: str | None = None, detail: dict | None = None, **fields: Any
    ) -> IntentRecord:
        """Set columns of an intent (``state``, ``nonce``, ``gas_limit``, ``tx_hash``, ``block_number``,
        ``block_hash``, ``reason``) and append an audit event, in one transaction."""
        allowed = {"state", "nonce", "gas_limit", "tx_hash", "block_number", "block_hash", "reason"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"unknown intent fields: {sorted(bad)}")
        if "state" in fields and fields["state"] not in OPEN_STATES + FINAL_STATES:
            raise ValueError(f"unknown state {fields['state']!r}")
        sets = ", ".join(f"{k} = ?" for k in fields) + (", " if fields else "") + "updated_at = ?"
        with self._tx() as c:
            c.execute(f"UPDATE intents SET {sets} WHERE id = ?", (*fields.values(), self.clock(), intent_id))
            if event:
                self._event(c, intent_id, event, {**(detail or {}), **{k: v for k, v in fields.items()}})
        return self.get(intent_id)

    # ---- attempts --------------------------------------------------------------------------------

    def add_attempt(
        self,
        intent_id: int,
        *,
        kind: str,
        nonce: int,
        tx_hash: str,
        raw_tx: bytes,
        max_fee_per_gas: int,
        max_priority_fee_per_gas: int,
        gas_limit: int,
    ) -> AttemptRecord:
        """Record a signed transaction before it is broadcast (and move the intent to ``signed``)."""
        now = self.clock()
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO attempts (intent_id, kind, nonce, tx_hash, raw_tx, max_fee_per_gas,"
                " max_priority_fee_per_gas, gas_limit, signed_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    intent_id,
                    kind,
                    nonce,
                    tx_hash,
                    raw_tx.hex(),
                    str(max_fee_per_gas),
                    str(max_priority_fee_per_gas),
                    gas_limit,
                    now,
                ),
            )
            attempt_id = cur.lastrowid
            assert attempt_id is not None, "lastrowid is set after an INSERT"
            c.execute(
                "UPDATE intents SET state = CASE WHEN state = 'intent' THEN 'signed' ELSE state END,"
                " nonce = ?, updated_at = ? WHERE id = ?",
                (nonce, now, intent_id),
            )
            self._event(
                c,
                intent_id,
                "tx_signed",
                {
                    "kind": kind,
                    "nonce": nonce,
                    "tx_hash": tx_hash,
                    "max_fee_per_gas": max_fee_per_gas,
                    "max_priority_fee_per_gas": max_priority_fee_per_gas,
                },
            )
        return self.attempt(attempt_id)

    def mark_sent(self, attempt_id: int, block: int | None) -> None:
        now = self.clock()
        with self._tx() as c:
            c.execute(
                "UPDATE attempts SET sent_at = ?, sent_block = ?, error = NULL WHERE id = ?", (now, block, attempt_id)
            )
            row = c.execute("SELECT intent_id, tx_hash FROM attempts WHERE id = ?", (attempt_id,)).fetchone()
            c.execute(
                "UPDATE intents SET state = CASE WHEN state IN ('intent','signed') THEN 'sent'"
                " ELSE state END, updated_at = ? WHERE id = ?",
                (now, row[0]),
            )
            self._event(c, row[0], "tx_sent", {"tx_hash": row[1], "block": block})

    def mark_send_error(self, attempt_id: int, error: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE attempts SET error = ? WHERE id = ?", (error[:500], attempt_id))
            row = c.execute("SELECT intent_id, tx_hash FROM attempts WHERE id = ?", (attempt_id,)).fetchone()
            self._event(c, row[0], "tx_send_error", {"tx_hash": row[1], "error": error[:500]})

    def attempt(self, attempt_id: int) -> AttemptRecord:
        with self._lock:
            row = self._conn.execute("SELECT * FROM attempts WHERE id = ?", (attempt_id,)).fetchone()
        return _attempt(row)

    def attempts(self, intent_id: int) -> list[AttemptRecord]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM attempts WHERE intent_id = ? ORDER BY id", (intent_id,)).fetchall()
        return [_attempt(r) for r in rows]

    def max_nonce(self, sender: str) -> int | None:
        """Highest nonce of an open intent of ``sender`` (a nonce the allocator must not hand out again)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT MAX(a.nonce) FROM attempts a JOIN intents i ON a.intent_id = i.id"
                " WHERE lower(i.sender) = lower(?) AND i.state IN ('signed','sent','mined')"
                " AND a.nonce = i.nonce",
                (sender,),
            ).fetchone()
        return row[0]

    def highest_nonce(self, sender: str) -> int | None:
        """Highest nonce this journal holds for ``sender`` in any state (signed attempts and transactions
        imported from the chain): the node's count above it is what the journal does not know."""
        with self._lock:
            row = self._conn.execute(
                "SELECT MAX(n) FROM (SELECT a.nonce AS n FROM attempts a JOIN intents i ON a.intent_id = i.id"
                " WHERE lower(i.sender) = lower(?) UNION ALL SELECT nonce FROM intents"
                " WHERE lower(sender) = lower(?) AND nonce IS NOT NULL)",
                (sender, sender),
            ).fetchone()
        return row[0]

    def signed_nonces(self, sender: str, lo: int, hi: int, *, exclude_intent: int | None = None) -> set[int]:
        """Nonces in ``[lo, hi)`` of any transaction we signed for ``sender`` (any intent state; imported landed
        transactions included), leaving out ``exclude_intent``'s own attempts."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT a.nonce FROM attempts a JOIN intents i ON a.intent_id = i.id"
                " WHERE lower(i.sender) = lower(?) AND a.nonce >= ? AND a.nonce < ? AND i.id != ?"
                " UNION SELECT nonce FROM intents WHERE lower(sender) = lower(?) AND nonce >= ? AND nonce < ?"
                " AND id != ? AND state = 'confirmed'",
                (sender, lo, hi, exclude_intent or -1, sender, lo, hi, exclude_intent or -1),
            ).fetchall()
        return {r[0] for r in rows}

    def knows_tx(self, tx_hash: str) -> bool:
        """Is ``tx_hash`` one of our attempts, or a landed transaction already imported from the chain?"""
        with self._lock:
            row = self._conn.execute(
                "SELECT 1 FROM attempts WHERE lower(tx_hash) = lower(?) UNION ALL"
                " SELECT 1 FROM intents WHERE lower(tx_hash) = lower(?) LIMIT 1",
                (tx_hash, tx_hash),
            ).fetchone()
        return row is not None

    def import_landed(
        self,
        *,
        idempotency_key: str,
        lane: str,
        sender: str,
        to: str,
        tx_hash: str,
        nonce: int | None,
        block_number: int,
        block_hash: str,
        landed_at: float,
        meta: dict,
        state: str = "confirmed",
    ) -> IntentRecord:
        """Record a transaction of our key found on chain but unknown to the journal (journal lost or restored
        from a backup) as a final intent (``confirmed``, or ``reverted`` when its receipt failed), dated by its
        block, so it counts (e.g. against the day budget) like one we sent. Idempotent per ``tx_hash``."""
        if state not in ("confirmed", "reverted"):
            raise ValueError(f"an imported transaction is confirmed or reverted, not {state!r}")
        with self._tx() as c:
            row = c.execute("SELECT id FROM intents WHERE lower(tx_hash) = lower(?)", (tx_hash,)).fetchone()
            if row is not None:
                intent_id = row[0]
            else:
                cur = c.execute(
                    "INSERT INTO intents (idempotency_key, lane, sender, to_address, data, value_wei,"
                    " value_at_stake_e6, meta, state, nonce, tx_hash, block_number, block_hash, reason,"
                    " created_at, updated_at) VALUES (?,?,?,?,'', '0', 0, ?, ?, ?,?,?,?,"
                    " 'found on chain, not in the journal (imported)', ?, ?)",
                    (
                        idempotency_key,
                        lane,
                        sender,
                        to,
                        json.dumps(meta, sort_keys=True),
                        state,
                        nonce,
                        tx_hash,
                        block_number,
                        block_hash,
                        landed_at,
                        self.clock(),
                    ),
                )
                intent_id = cur.lastrowid
                self._event(c, intent_id, "tx_imported_from_chain", {"tx_hash": tx_hash, "block": block_number})
        return self.get(intent_id)

    def abandoned_with_attempts(self, since: float) -> list[IntentRecord]:
        """Intents abandoned at or after ``since`` that had signed something (it may still turn up mined)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM intents WHERE state = 'abandoned' AND updated_at >= ? AND EXISTS"
                " (SELECT 1 FROM attempts a WHERE a.intent_id = intents.id) ORDER BY id",
                (since,),
            ).fetchall()
        return [_intent(r) for r in rows]

    def attempt_count(self, intent_id: int) -> int:
        with self._lock:
            return int(
                self._conn.execute("SELECT COUNT(*) FROM attempts WHERE intent_id = ?", (intent_id,)).fetchone()[0]
            )

    # ---- audit -----------------------------------------------------------------------------------

    def event(self, intent_id: int | None, name: str, **detail: Any) -> None:
        with self._tx() as c:
            self._event(c, intent_id, name, detail)

    def _event(self, c: sqlite3.Connection, intent_id: int | None, name: str, detail: dict) -> None:
        c.execute(
            "INSERT INTO events (intent_id, at, event, detail) VALUES (?,?,?,?)",
            (intent_id, self.clock(), name, json.dumps(detail, default=str, sort_keys=True)),
        )

    def events(self, intent_id: int | None = None) -> list[tuple[str, dict]]:
        with self._lock:
            if intent_id is None:
                rows = self._conn.execute("SELECT event, detail FROM events ORDER BY id").fetchall()
            else:
                rows = self._conn.execute(
                    "SELECT event, detail FROM events WHERE intent_id = ? ORDER BY id", (intent_id,)
                ).fetchall()
        return [(r[0], json.loads(r[1])) for r in rows]

    # ---- cursors and discovered accounts (keeper/chain/discovery.py) --------------------------------

    def get_cursor(self, name: str) -> tuple[int, str | None] | None:
        with self._lock:
            row = self._conn.execute("SELECT block, block_hash FROM cursors WHERE name = ?", (name,)).fetchone()
        return (row[0], row[1]) if row else None

    def save_scan(
        self, name: str, block: int, block_hash: str | None, accounts: AbstractSet[tuple[str, int, int]] = frozenset()
    ) -> None:
        """Persist discovered ``(account, market_id, first_block)`` and the cursor in one transaction."""
        with self._tx() as c:
            c.executemany(
                "INSERT OR IGNORE INTO accounts (scope, account, market_id, first_block) VALUES (?,?,?,?)",
                [(name, a.lower(), m, b) for a, m, b in accounts],
            )
            c.execute(
                "INSERT INTO cursors (name, block, block_hash, updated_at) VALUES (?,?,?,?)"
                " ON CONFLICT(name) DO UPDATE SET block = excluded.block,"
                " block_hash = excluded.block_hash, updated_at = excluded.updated_at",
                (name, block, block_hash, self.clock()),
            )

    def known_accounts(self, name: str) -> set[tuple[str, int]]:
        with self._lock:
            rows = self._conn.execute("SELECT account, market_id FROM accounts WHERE scope = ?", (name,)).fetchall()
        return {(r[0], r[1]) for r in rows}


def _intent(row: tuple) -> IntentRecord:
    (
        id_,
        key,
        lane,
        sender,
        to,
        data,
        value,
        stake,
        meta,
        state,
        nonce,
        gas,
        tx_hash,
        bn,
        bh,
        reason,
        created,
        updated,
    ) = row
    return IntentRecord(
        id_,
        key,
        lane,
        sender,
        to,
        bytes.fromhex(data),
        int(value),
        stake,
        json.loads(meta),
        state,
        nonce,
        gas,
        tx_hash,
        bn,
        bh,
        reason,
        created,
        updated,
    )


def _attempt(row: tuple) -> AttemptRecord:
    (id_, intent_id, kind, nonce, tx_hash, raw, max_fee, prio, gas, signed_at, sent_at, sent_block, error) = row
    return AttemptRecord(
        id_,
        intent_id,
        kind,
        nonce,
        tx_hash,
        bytes.fromhex(raw),
        int(max_fee),
        int(prio),
        gas,
        signed_at,
        sent_at,
        sent_block,
        error,
    )
