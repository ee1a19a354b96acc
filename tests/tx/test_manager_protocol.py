"""Transaction manager with the reference protocol on the devchain: top-ups through crashes, reorgs, outages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from keeper.chain.anvil import Anvil
from keeper.chain.rpc import ChainClient, RetryPolicy
from keeper.chain.testing import FaultProxy
from keeper.dev.reference import ANVIL_KEYS as _KEYS
from keeper.errors import SimulationRevert
from keeper.protocols.reference import ReferenceAdapter
from keeper.tx.fees import FeePolicy
from keeper.tx.journal import Journal
from keeper.tx.manager import Lane, TransactionManager

pytestmark = pytest.mark.chain

TOP_UP = 100 * 10**6
STAKE = 600 * 10**6
FAST = RetryPolicy(attempts=3, base_s=0.0, max_s=0.0, cooldown_s=60.0)


@pytest.fixture
def book(chain):
    """A seeded trader (key 1) and a funded keeper (key 2) that approved the engine."""
    try:
        chain.seed_book(chain.keys[1])
    except RuntimeError:
        # devchain.Sender's gas = estimate*1.2+10k can run out of gas when the estimate ran in the same
        # second as the market's last fee accrual (see TransactionManager._estimate_gas); one retry.
        chain.reset_nonces()
        chain.seed_book(chain.keys[1])
    chain.mint(chain.addresses[2], 10_000 * 10**6)
    chain.approve_engine(chain.keys[2])
    return chain


def make(url_or_urls, journal, *, confirmations=1, still_needed=None, deployment=None, **kw):
    urls = url_or_urls if isinstance(url_or_urls, list) else [url_or_urls]
    client = ChainClient.connect(urls, 31337, timeout_s=5.0, retry=FAST)
    adapter = ReferenceAdapter.from_deployment(client, deployment)
    manager = TransactionManager(
        client,
        journal,
        [Lane.from_key("urgent", _KEYS[2], stuck_blocks=3)],
        FeePolicy(),
        confirmations=confirmations,
        still_needed=still_needed,
        error_decoder=adapter.errors,
        **kw,
    )
    return client, adapter, manager


def collateral(chain, symbol="ETH", who=1) -> int:
    return chain.position(chain.addresses[who], symbol)[4]


def topped_up_once(before: int, after: int) -> bool:
    """Collateral rose by one TOP_UP, less the borrow fee settled meanwhile (~$0.0002/s here; allow $1)."""
    return before + TOP_UP - 10**6 < after <= before + TOP_UP


def margin_added_count(chain) -> int:
    logs = chain.engine.events.MarginAdded().get_logs(from_block=0)
    return sum(1 for lg in logs if lg["args"]["payer"] == chain.addresses[2])


class TestSimulation:
    def test_custom_error_decoded(self, book, tmp_path):
        """A top-up for a position that does not exist is refused in simulation with NoPosition(...)."""
        j = Journal(tmp_path / "j.db")
        _, adapter, m = make(book.anvil.url, j, deployment=book.deployment)
        nobody = "0x" + "ab" * 20
        with pytest.raises(SimulationRevert) as err:
            m.submit(adapter.add_margin_call(nobody, 0, TOP_UP), "k:nopos", STAKE)
        assert err.value.reason.startswith("NoPosition(") and nobody[2:12] in err.value.reason.lower()
        assert j.by_key("k:nopos")[0].state == "rejected"

    def test_require_string_decoded(self, book, tmp_path):
        """A top-up larger than the keeper's token balance is refused with the ERC-20 require string."""
        j = Journal(tmp_path / "j.db")
        _, adapter, m = make(book.anvil.url, j, deployment=book.deployment)
        with pytest.raises(SimulationRevert) as err:
            m.submit(adapter.add_margin_call(book.addresses[1], 0, 10**15), "k:broke", STAKE)
        assert err.value.reason == "ERC20: transfer amount exceeds balance"
        nonce = book.w3.eth.get_transaction_count(book.addresses[2])
        assert nonce == book.w3.eth.get_transaction_count(book.addresses[2], "pending")


CHILD = textwrap.dedent(
    f"""
    import os, signal, sys, time
    from keeper.chain.rpc import ChainClient
    from keeper.dev.reference import ANVIL_KEYS, Deployment
    from keeper.protocols.reference import ReferenceAdapter
    from keeper.tx.journal import Journal
    from keeper.tx.manager import Lane, TransactionManager
    url, journal_path, deployment_path, mode, trader = sys.argv[1:6]
    client = ChainClient.connect([url], 31337)
    adapter = ReferenceAdapter.from_deployment(client, Deployment.load(deployment_path))
    die = lambda *_: os.kill(os.getpid(), signal.SIGKILL)
    journal = Journal(journal_path)
    m = TransactionManager(client, journal, [Lane.from_key("urgent", ANVIL_KEYS[2])],
                           confirmations=1, on_signed=die if mode == "after_sign" else None)
    m.reconcile()
    if mode == "after_intent":  # killed with the intent written, before simulating or signing
        create = journal.create_intent
        journal.create_intent = lambda **kw: die(create(**kw))
    rec = m.submit(adapter.add_margin_call(trader, 0, {TOP_UP}), "top_up:crash", {STAKE})
    print("SENT", rec.nonce, flush=True)
    if mode == "after_mined":  # automine: mined at broadcast; killed before any poll saw the receipt
        die()
    time.sleep(60)  # stay alive, the transaction pending, until the test kills this process
"""
)


class TestCrashSafety:
    @pytest.mark.parametrize("mode", ["after_intent", "after_sign", "after_send", "after_mined"])
    def test_sigkill_then_restart_gives_exactly_one_top_up(self, book, tmp_path, mode):
        """A manager SIGKILLed after each step of a send (intent written, signed, broadcast, mined) is restarted on
        its journal and asked for the same top-up again: exactly one top-up on chain, the journal confirmed."""
        dep = book.deployment.save(tmp_path / "deployment.json")
        jpath = tmp_path / "journal.db"
        before = collateral(book)
        if mode == "after_send":
            book.anvil.request("evm_setAutomine", [False])
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, book.anvil.url, str(jpath), str(dep), mode, book.addresses[1]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            if mode == "after_send":
                lines = iter(proc.stdout.readline, "")
                assert any(line.startswith("SENT") for line in lines)  # structlog also writes to stdout
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        if mode == "after_send":
            book.anvil.request("evm_mine")
            book.anvil.request("evm_setAutomine", [True])
        elif mode == "after_mined":
            assert topped_up_once(before, collateral(book))  # landed before the kill
        else:
            assert collateral(book) == before  # killed before the broadcast: nothing on chain yet
        j = Journal(jpath)
        _, adapter, m = make(book.anvil.url, j, deployment=book.deployment)
        m.reconcile()
        assert m.blocked_lanes() == {} and m.halted is None  # every nonce the node counts is in the journal
        (intent,) = j.by_key("top_up:crash")
        if mode == "after_intent":  # never signed: abandoned at start, so the same top-up is sent now, once
            assert intent.state == "abandoned" and j.attempts(intent.id) == []
        else:
            assert m.wait(intent.id, timeout_s=20).state == "confirmed"
        again = m.submit(adapter.add_margin_call(book.addresses[1], 0, TOP_UP), "top_up:crash", STAKE)
        final = m.wait(again.id, timeout_s=20)
        assert final.state == "confirmed" and (again.id == intent.id) == (mode != "after_intent")
        assert topped_up_once(before, collateral(book))
        assert margin_added_count(book) == 1


class TestReorg:
    def test_reorged_top_up_reevaluated_and_remined(self, book, tmp_path):
        """A mined top-up removed by a reorg is detected (receipt gone) and, still needed, mined again once."""
        j = Journal(tmp_path / "j.db")
        _, adapter, m = make(book.anvil.url, j, confirmations=3, deployment=book.deployment)
        before = collateral(book)
        snap = book.anvil.request("evm_snapshot")
        rec = m.submit(adapter.add_margin_call(book.addresses[1], 0, TOP_UP), "k:reorg", STAKE)
        m.poll()
        mined = j.get(rec.id)
        assert mined.state == "mined"
        book.anvil.request("evm_revert", [snap])  # the block with our top-up is gone
        book.anvil.request("anvil_mine", ["0x2"])  # a longer chain without it
        report = m.poll()
        assert (rec.id, "reorged") in report.actions
        book.anvil.request("anvil_mine", ["0x3"])
        final = m.wait(rec.id, timeout_s=20, between_polls=lambda: book.anvil.request("evm_mine"))
        assert final.state == "confirmed" and final.block_hash != mined.block_hash
        assert topped_up_once(before, collateral(book))
        assert any(e == "tx_reorged" for e, _ in j.events(rec.id))

    def test_reorged_top_up_no_longer_needed_is_cancelled(self, book, tmp_path):
        """After a reorg, a top-up whose purpose is gone is cancelled at its nonce and never lands."""
        j = Journal(tmp_path / "j.db")
        needed = {"v": True}
        _, adapter, m = make(
            book.anvil.url, j, confirmations=3, still_needed=lambda i: needed["v"], deployment=book.deployment
        )
        before = collateral(book)
        snap = book.anvil.request("evm_snapshot")
        rec = m.submit(adapter.add_margin_call(book.addresses[1], 0, TOP_UP), "k:reorg2", STAKE)
        m.poll()
        book.anvil.request("evm_revert", [snap])
        needed["v"] = False
        final = m.wait(rec.id, timeout_s=20, between_polls=lambda: book.anvil.request("evm_mine"))
        assert final.state == "cancelled"
        assert collateral(book) == before


class TestFailoverMidCycle:
    def test_endpoint_dies_after_send(self, book, tmp_path):
        """The primary endpoint dies after the broadcast; the manager confirms through the second one."""
        proxy = FaultProxy(book.anvil.url)
        try:
            j = Journal(tmp_path / "j.db")
            client, adapter, m = make([proxy.url, book.anvil.url], j, deployment=book.deployment)
            book.anvil.request("evm_setAutomine", [False])
            before = collateral(book)
            rec = m.submit(adapter.add_margin_call(book.addresses[1], 0, TOP_UP), "k:fo", STAKE)
            assert proxy.seen["eth_sendRawTransaction"] == 1
            proxy.stop()
            book.anvil.request("evm_mine")
            fin = m.wait(rec.id, timeout_s=20)
            assert fin.state == "confirmed"
            assert client.stats.failovers >= 1 and topped_up_once(before, collateral(book))
        finally:
            proxy.stop()

    def test_send_during_outage_not_retried_then_rebroadcast(self, book, tmp_path):
        """A broadcast that meets HTTP 503 is not retried by the transport; poll rebroadcasts it via the backup."""
        proxy = FaultProxy(book.anvil.url)
        try:
            j = Journal(tmp_path / "j.db")
            client, adapter, m = make([proxy.url, book.anvil.url], j, deployment=book.deployment)
            before = collateral(book)
            orig = client.send_raw_transaction

            def flaky_send(raw):
                proxy.mode = "503"
                return orig(raw)

            client.send_raw_transaction = flaky_send
            rec = m.submit(adapter.add_margin_call(book.addresses[1], 0, TOP_UP), "k:503", STAKE)
            client.send_raw_transaction = orig
            assert rec.state == "signed" and proxy.seen["eth_sendRawTransaction"] == 1
            assert m.wait(rec.id, timeout_s=20).state == "confirmed"
            assert topped_up_once(before, collateral(book)) and margin_added_count(book) == 1
            assert len(j.attempts(rec.id)) == 1
        finally:
            proxy.stop()


class TestFork:
    def test_fork_read_and_written_like_original(self, book, tmp_path):
        """A fork of the devchain reads the same book and takes a top-up without touching the original."""
        fork = Anvil.start(fork_url=book.anvil.url)
        try:
            j = Journal(tmp_path / "j.db")
            _, fork_adapter, m = make(fork.url, j, deployment=book.deployment)
            orig_client = ChainClient.connect([book.anvil.url], 31337)
            orig_adapter = ReferenceAdapter.from_deployment(orig_client, book.deployment)
            keys = [(book.addresses[1], 0), (book.addresses[1], 1)]
            a, b = orig_adapter.read_book(keys), fork_adapter.read_book(keys)
            assert a.positions == b.positions and a.prices == b.prices and a.markets == b.markets
            before = collateral(book)
            rec = m.submit(fork_adapter.add_margin_call(book.addresses[1], 0, TOP_UP), "k:fork", STAKE)
            assert m.wait(rec.id, timeout_s=20).state == "confirmed"
            after = fork_adapter.read_book(keys).positions[(book.addresses[1].lower(), 0)]
            assert topped_up_once(before, after.collateral_e6)
            assert collateral(book) == before  # the original chain is untouched
        finally:
            fork.stop()
