"""Exactly once under real faults: a FaultProxy between the manager and a real anvil hides receipts while the nonce
is counted (finding 1 of issue 10); journal open errors and the one-writer lock (finding 3)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from keeper.chain.testing import FaultProxy
from keeper.errors import JournalBusy, JournalError
from keeper.tx.call import ContractCall
from keeper.tx.journal import Journal

HIDE = {"eth_getTransactionReceipt", "eth_getTransactionByHash"}
RECIPIENT = "0x" + "6b" * 20
AMOUNT = 10**15  # wei
STAKE_E6 = 1_000_000_000  # $1,000 at stake: a fee budget far above anvil's fees


def transfer() -> ContractCall:
    return ContractCall(to=RECIPIENT, value_wei=AMOUNT, description="exactly-once transfer")


def balance(anvil, address: str) -> int:
    return int(anvil.request("eth_getBalance", [address, "latest"]), 16)


def _mine(anvil, n: int = 1) -> None:
    for _ in range(n):
        anvil.request("evm_mine")


def _sent_count(anvil, address: str) -> int:
    return int(anvil.request("eth_getTransactionCount", [address, "latest"]), 16)


@pytest.mark.chain
class TestReceiptsHidden:
    def test_receipts_null_for_k_blocks_sends_once(self, anvil, make_manager):
        """Receipts answered null for fewer blocks than the evidence window: no second nonce, journal confirmed."""
        anvil.request("evm_setAutomine", [False])
        with FaultProxy(anvil.url) as proxy:
            m = make_manager([proxy.url])
            rec = m.submit(transfer(), "k:hidden", STAKE_E6)
            proxy.null_methods = set(HIDE)
            for _ in range(m.evidence_blocks - 1):
                _mine(anvil)
                m.poll()
            assert proxy.nulled > 0
            proxy.null_methods = set()
            _mine(anvil)
            done = m.wait(rec.id, timeout_s=10)
        assert done.state == "confirmed" and len(m.journal.attempts(rec.id)) == 1
        assert _sent_count(anvil, m.lane("urgent").address) == 1
        assert balance(anvil, RECIPIENT) == AMOUNT

    def test_receipts_hidden_longer_resimulates_and_never_pays_twice(self, anvil, make_manager):
        """Receipts hidden past the evidence window: the re-check finds the purpose met, nothing is re-signed, and the
        journal says confirmed once the receipt reappears (a landed transfer is never left 'abandoned')."""
        anvil.request("evm_setAutomine", [False])
        with FaultProxy(anvil.url) as proxy:
            m = make_manager([proxy.url], still_needed=lambda _i: balance(anvil, RECIPIENT) < AMOUNT)
            rec = m.submit(transfer(), "k:hidden-long", STAKE_E6)
            proxy.null_methods = set(HIDE)
            for _ in range(m.evidence_blocks + 3):
                _mine(anvil)
                m.poll()
            assert m.journal.get(rec.id).state == "abandoned"
            proxy.null_methods = set()
            _mine(anvil)
            m.poll()
        final = m.journal.get(rec.id)
        assert final.state == "confirmed" and final.reason == "found mined after it was abandoned"
        assert len(m.journal.attempts(rec.id)) == 1
        assert _sent_count(anvil, m.lane("urgent").address) == 1
        assert balance(anvil, RECIPIENT) == AMOUNT


class TestJournalOpen:
    def test_corrupt_journal_is_one_line_error(self, tmp_path):
        """A file that is not SQLite raises JournalError naming the path and the fix, in one line."""
        bad = tmp_path / "j.sqlite"
        bad.write_bytes(b"not a database at all" * 100)
        with pytest.raises(JournalError) as err:
            Journal(bad)
        assert str(bad) in str(err.value) and "\n" not in str(err.value) and "restore" in str(err.value)

    def test_folder_and_uncreatable_paths(self, tmp_path):
        """A folder as journal path and a parent that cannot be created both raise JournalError."""
        with pytest.raises(JournalError, match="is a folder"):
            Journal(tmp_path)
        blocker = tmp_path / "file"
        blocker.write_text("x")
        with pytest.raises(JournalError, match="cannot be created"):
            Journal(blocker / "sub" / "j.sqlite")


class TestWriterLock:
    def test_second_process_refused_until_first_exits(self, tmp_path):
        """The flock is exclusive across processes and released when the holder dies (even by SIGKILL)."""
        path = tmp_path / "j.sqlite"
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                (
                    "import sys, time; from keeper.tx.journal import Journal; j = Journal(sys.argv[1]); "
                    "j.lock_for_sending(); print('locked', flush=True); time.sleep(60)"
                ),  # the holder keeps the lock, sleeping, until the test kills it
                str(path),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            mine = Journal(path)
            with pytest.raises(JournalBusy, match="in use by another sending keeper"):
                mine.lock_for_sending()
            assert mine.open_intents() == []  # reading still works
        finally:
            holder.kill()
            holder.wait(10)
        mine.lock_for_sending()
        mine.close()


class TestHaltReported:
    def test_health_reports_unsafe_halt(self):
        """After a halt for a second sender, /healthz answers 503 with the reason even while cycles are fresh."""
        from keeper.runtime.health import HealthState

        state = HealthState(600.0, 120.0, clock=lambda: 1_000.0)
        state.mark_cycle(1_000.0)
        assert state.snapshot()[0] == 200
        state.mark_unsafe("sending stopped: nonce 7 was used by a transaction this keeper did not sign")
        code, body = state.snapshot()
        assert code == 503 and body["status"] == "stale" and "nonce 7" in body["reasons"][0]
