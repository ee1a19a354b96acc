"""The chain is the source of truth at start and while running (findings 2 and 3 of issue 10), at the manager level
on a real anvil: a journal lost or restored from an older copy while a transaction of ours is pending blocks the lane
until it is final and then imports it; a second sender of the key on another journal stops sending at the next poll,
before anything is signed."""

from __future__ import annotations

import shutil

import pytest
from eth_account import Account

from keeper.dev.reference import ANVIL_KEYS
from keeper.errors import LaneBlocked, SenderConflict
from keeper.tx.call import ContractCall
from keeper.tx.journal import Journal

pytestmark = pytest.mark.chain

URGENT_KEY = ANVIL_KEYS[2]  # the urgent lane of the make_manager fixture (tests/conftest.py)
RECIPIENT = "0x" + "6b" * 20
AMOUNT = 10**15
STAKE_E6 = 1_000_000_000
URGENT = Account.from_key(URGENT_KEY).address


def pay(key: str) -> ContractCall:
    return ContractCall(to=RECIPIENT, value_wei=AMOUNT, description=f"transfer {key}")


def received(anvil) -> int:
    return int(anvil.request("eth_getBalance", [RECIPIENT, "latest"]), 16)


def count(anvil, tag: str = "latest") -> int:
    return int(anvil.request("eth_getTransactionCount", [URGENT, tag]), 16)


class TestJournalLost:
    def test_pending_transaction_unknown_to_a_new_journal_blocks_the_lane_until_final(
        self, anvil, make_manager, tmp_path
    ):
        """Journal lost with a transfer pending: the restarted manager signs nothing for that key while the node's
        pending count holds a nonce it does not know; once mined it imports the transfer and may send again."""
        anvil.request("evm_setAutomine", [False])
        first = make_manager()
        sent = first.submit(pay("a"), "k:a", STAKE_E6)
        (attempt,) = first.journal.attempts(sent.id)
        assert (count(anvil), count(anvil, "pending")) == (0, 1)

        fresh = Journal(tmp_path / "lost.db", clock=first.journal.clock)  # the old journal is gone
        m = make_manager(jrnl=fresh)
        m.reconcile()
        assert set(m.blocked_lanes()) == {"urgent"}  # routine has another key: not blocked
        assert "not in this journal" in m.blocked_lanes()["urgent"]
        with pytest.raises(LaneBlocked):
            m.submit(pay("b"), "k:b", STAKE_E6)
        assert count(anvil, "pending") == 1 and fresh.by_key("k:b") == []  # nothing signed, nothing journaled

        anvil.request("evm_mine")
        m.poll()
        assert m.blocked_lanes() == {}
        (imported,) = [i for i in fresh.all_intents() if i.tx_hash == attempt.tx_hash]
        assert imported.state == "confirmed" and imported.nonce == 0 and imported.meta == {"kind": "unknown"}

        anvil.request("evm_setAutomine", [True])
        again = m.submit(pay("b"), "k:b", STAKE_E6)
        assert again.nonce == 1 and m.wait(again.id, timeout_s=10).state == "confirmed"
        assert received(anvil) == 2 * AMOUNT and count(anvil) == 2

    def test_journal_restored_from_an_older_copy_imports_what_landed_since(self, anvil, make_manager, tmp_path):
        """A backup taken after the first transfer is restored after two more landed: both are imported as
        confirmed with their block's time, nothing is blocked, and the next nonce follows the chain."""
        m = make_manager()
        one = m.submit(pay("1"), "k:1", STAKE_E6)
        m.wait(one.id, timeout_s=10)
        m.journal.close()
        backup = tmp_path / "backup.db"
        shutil.copy(tmp_path / "journal.db", backup)
        m = make_manager(jrnl=Journal(tmp_path / "journal.db", clock=m.journal.clock))
        later = [m.submit(pay(k), f"k:{k}", STAKE_E6) for k in ("2", "3")]
        for rec in later:
            m.wait(rec.id, timeout_s=10)
        later_hashes = {m.journal.attempts(r.id)[0].tx_hash for r in later}
        m.journal.close()

        restored = Journal(backup, clock=m.journal.clock)
        m2 = make_manager(jrnl=restored)
        m2.reconcile()
        assert m2.blocked_lanes() == {}
        imported = {i.tx_hash: i for i in restored.all_intents() if i.idempotency_key.startswith("chain:")}
        assert set(imported) == later_hashes
        for rec in imported.values():
            block = anvil.request("eth_getBlockByNumber", [hex(rec.block_number), False])
            assert rec.state == "confirmed" and rec.created_at == int(block["timestamp"], 16)
        nxt = m2.submit(pay("4"), "k:4", STAKE_E6)
        assert nxt.nonce == 3 and m2.wait(nxt.id, timeout_s=10).state == "confirmed"
        assert received(anvil) == 4 * AMOUNT


class TestSecondSender:
    def test_a_nonce_signed_on_another_journal_stops_sending_at_the_next_poll(self, anvil, make_manager, tmp_path):
        """Two managers, one key, two journals: when the other one's transfer lands, this one halts at its next
        poll, before it signs anything more (the duplicate would otherwise follow at the next decision)."""
        a = make_manager()
        b = make_manager(jrnl=Journal(tmp_path / "other.db", clock=a.journal.clock))
        a.reconcile()
        b.reconcile()
        rec = b.submit(pay("b"), "k:b", STAKE_E6)
        b.wait(rec.id, timeout_s=10)
        report = a.poll()
        assert a.halted is not None and "same key" in a.halted
        assert report.head >= 1
        with pytest.raises(SenderConflict):
            a.submit(pay("a"), "k:a", STAKE_E6)
        assert a.journal.by_key("k:a") == [] and count(anvil) == 1 and received(anvil) == AMOUNT
        assert b.halted is None  # b signed every nonce the node counts


class TestLandedVerdict:
    def test_landed_means_no_rebroadcast_no_replacement_no_cancel(self, anvil, make_manager, clock):
        """A still-needed callback answering LANDED (its effect is on chain) while the node does not know the
        transaction: the manager neither rebroadcasts, replaces nor cancels, however long it waits."""
        from keeper.tx.manager import LANDED

        anvil.request("evm_setAutomine", [False])
        m = make_manager(still_needed=lambda _i: LANDED, stuck_blocks=1, stuck_s=1.0)
        rec = m.submit(pay("x"), "k:landed", STAKE_E6)
        (attempt,) = m.journal.attempts(rec.id)
        anvil.request("anvil_dropTransaction", [attempt.tx_hash])
        for _ in range(3):
            clock.advance(60)
            anvil.request("evm_mine")
            report = m.poll()
            assert (rec.id, "landed:awaiting_receipt") in report.actions
        assert len(m.journal.attempts(rec.id)) == 1 and count(anvil, "pending") == 0
