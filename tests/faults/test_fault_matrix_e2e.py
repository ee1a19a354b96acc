"""The fault matrix of issue 10 with real daemon processes on a real anvil: a journal lost or restored from an older
copy while a top-up is pending, two daemons on one journal, one key on two journals. Each ends with exactly the
intended number of ``MarginAdded`` events and a journal that says what happened on chain."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from keeper.chain.testing import FaultProxy
from keeper.dev.reference import ANVIL_KEYS
from keeper.tx.journal import Journal

pytestmark = pytest.mark.chain

ENV = {**os.environ, "KEEPER_PRIVATE_KEY": ANVIL_KEYS[1]}  # the trader of the dev chain (chain.trader_key)


def start(cfg: Path, log_path: Path) -> subprocess.Popen:
    with open(log_path, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "keeper", "run", "--config", str(cfg)], stdout=out, stderr=subprocess.STDOUT, env=ENV
        )


def stop(daemon: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    if daemon.poll() is None:
        daemon.send_signal(sig)
    return daemon.wait(30)


def open_safe_book(chain, open_book) -> None:
    """The trader's ETH long and BTC short far from liquidation: nothing to do until ETH falls to $2,500."""
    open_book(chain, reserve_e6=30_000 * 10**6, eth_collateral_e6=15_000 * 10**6, btc_collateral_e6=60_000 * 10**6)


CRASH_E8 = 2_500 * 10**8  # -17 %: inside the stress gap, one top-up restores the target


def pending(chain) -> int:
    return int(chain.anvil.request("txpool_status")["pending"], 16)


def backup(src: Path, dst: Path) -> None:
    """An online SQLite backup of the running daemon's journal (what an operator's backup job takes)."""
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)


def remove_journal(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


@pytest.mark.parametrize("fate", ["deleted", "restored_from_older_copy"])
def test_journal_lost_with_a_top_up_pending_waits_for_it_and_pays_once(
    chain, tmp_path, fate, open_book, write_config, wait_log, wait_for, log_lines, margin_events
):
    """SIGKILL with a top-up in the mempool, then the journal is deleted (or replaced by a backup taken before the
    top-up): the restarted daemon sees a pending nonce of its key that its journal does not know, acts on nothing
    for that key until it is mined, imports it as a top-up (it counts against the day budget), and never pays
    twice."""
    open_safe_book(chain, open_book)
    cfg = write_config(chain, tmp_path)
    journal = tmp_path / "journal.sqlite"
    daemon = start(cfg, tmp_path / "run1.log")
    try:
        wait_log(tmp_path / "run1.log", "cycle_finished", 60)
        backup(journal, tmp_path / "backup.sqlite")  # before the crash: knows nothing of the coming top-up
        chain.anvil.request("evm_setAutomine", [False])
        chain.push_price("ETH", CRASH_E8, wait=False)
        chain.anvil.request("evm_mine", [])
        wait_log(tmp_path / "run1.log", "action_sent", 30)
        assert pending(chain) == 1
    finally:
        stop(daemon, signal.SIGKILL)
    remove_journal(journal)
    if fate == "restored_from_older_copy":
        shutil.copy(tmp_path / "backup.sqlite", journal)

    daemon = start(cfg, tmp_path / "run2.log")
    try:
        wait_log(tmp_path / "run2.log", "lane_blocked", 60)
        wait_log(tmp_path / "run2.log", "cycle_finished", 60)  # a full cycle ran while the top-up is pending ...
        (waiting,) = [json.loads(x) for x in log_lines(tmp_path / "run2.log", "action_waits_for_unknown_transactions")]
        assert "not in this journal" in waiting["reason"]
        assert pending(chain) == 1 and margin_events(chain, "MarginAdded") == []  # ... and sent nothing
        chain.anvil.request("evm_mine", [])
        chain.anvil.request("evm_setAutomine", [True])
        wait_log(tmp_path / "run2.log", "lane_unblocked", 30)
        (imported,) = [
            e
            for e in map(json.loads, log_lines(tmp_path / "run2.log", "tx_imported_from_chain"))
            if e["kind"] == "top_up"  # (a deleted journal also imports the trader's own earlier transactions)
        ]
        cycles = len(log_lines(tmp_path / "run2.log", "cycle_finished"))
        chain.push_price("ETH", CRASH_E8)  # a new round: a cycle on the unblocked lane, at the crash price
        wait_log(tmp_path / "run2.log", "cycle_finished", 30, count=cycles + 1)
    finally:
        assert stop(daemon) == 0
    (added,) = margin_events(chain, "MarginAdded")
    assert imported["kind"] == "top_up" and imported["amount_e6"] == added["amount"]
    assert margin_events(chain, "MarginMoved") == []
    j = Journal(journal)
    try:
        (rec,) = [i for i in j.all_intents() if i.meta.get("kind") == "top_up"]
        assert rec.state == "confirmed" and rec.idempotency_key.startswith("chain:")
    finally:
        j.close()


def test_two_daemons_on_one_journal_second_refuses_in_one_line(
    chain, tmp_path, open_book, write_config, wait_log, wait_for, log_lines, margin_events
):
    """A second `keeper run` on a journal a running daemon holds exits non-zero with one line naming the lock."""
    open_book(chain, reserve_e6=30_000 * 10**6)
    cfg = write_config(chain, tmp_path)
    first = start(cfg, tmp_path / "run1.log")
    try:
        wait_log(tmp_path / "run1.log", "cycle_finished", 60)
        second = subprocess.run(
            [sys.executable, "-m", "keeper", "run", "--config", str(cfg)],
            check=False,
            capture_output=True,
            text=True,
            env=ENV,
            timeout=60,
        )
        assert second.returncode != 0
        errors = [ln for ln in second.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "in use by another sending keeper" in errors[0], second.stderr
        assert "Traceback" not in second.stderr + second.stdout
        chain.push_price("ETH", 2_900 * 10**8)
        wait_log(tmp_path / "run1.log", "tx_final", 60)
    finally:
        assert stop(first) == 0
    assert len(margin_events(chain, "MarginAdded")) == 1


def test_one_key_on_two_journals_one_daemon_halts_and_one_top_up_lands(
    chain, tmp_path, open_book, write_config, wait_log, wait_for, log_lines, margin_events
):
    """Two daemons with the same key and their own journals: the one whose nonce the other used stops sending,
    raises the critical alert and exits 1; the crash is paid for once."""
    open_safe_book(chain, open_book)
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    daemons = {"a": start(write_config(chain, a_dir), a_dir / "run.log")}
    try:
        wait_log(a_dir / "run.log", "cycle_finished", 60)
        daemons["b"] = start(write_config(chain, b_dir), b_dir / "run.log")
        wait_log(b_dir / "run.log", "cycle_finished", 60)
        assert margin_events(chain, "MarginAdded") == []
        chain.push_price("ETH", CRASH_E8)
        wait_for(lambda: margin_events(chain, "MarginAdded"), 60, "a top-up")
        wait_for(lambda: any(d.poll() is not None for d in daemons.values()), 60, "one daemon halting")
        (halted,) = [name for name, d in daemons.items() if d.poll() is not None]
        survivor = "b" if halted == "a" else "a"
        logs = {"a": a_dir / "run.log", "b": b_dir / "run.log"}
        n = len(log_lines(logs[survivor], "cycle_finished"))
        chain.push_price("ETH", CRASH_E8)  # a new round: the survivor decides again and pays nothing more
        wait_log(logs[survivor], "cycle_finished", 30, count=n + 1)
    finally:
        codes = {name: stop(d) for name, d in daemons.items()}
    assert codes[halted] == 1 and codes[survivor] == 0
    text = logs[halted].read_text()
    assert "same key" in text and '"event": "keeper_halting"' in text
    assert len(margin_events(chain, "MarginAdded")) == 1


def test_a_transaction_of_the_key_sent_elsewhere_halts_an_idle_daemon(
    chain, tmp_path, open_book, write_config, wait_log, wait_for, log_lines, margin_events
):
    """The key signs a transaction outside the keeper (a wallet, a script, another keeper) while the daemon has
    nothing to do: at its next head poll the daemon sees a nonce it did not sign, alerts and exits 1, before any
    decision could pay twice."""
    open_safe_book(chain, open_book)
    cfg = write_config(chain, tmp_path)
    daemon = start(cfg, tmp_path / "run.log")
    try:
        wait_log(tmp_path / "run.log", "cycle_finished", 60)
        assert daemon.poll() is None
        s = chain.sender(chain.trader_key)
        s.wait(s.transact(chain.usd.functions.transfer(chain.addresses[0], 1)))
        assert daemon.wait(30) == 1
    finally:
        stop(daemon)
    text = (tmp_path / "run.log").read_text()
    assert '"event": "keeper_halting"' in text and "another process sends with the same key" in text
    assert '"key": "tx:second_sender"' in text
    assert margin_events(chain, "MarginAdded") == []


def test_behind_a_load_balancer_with_a_lagging_backend_the_top_up_is_paid_once(
    chain, tmp_path, open_book, write_config, wait_log, wait_for, log_lines, margin_events
):
    """Every other answer comes from a backend 3 blocks behind (older head, older nonce counts and state, no receipt
    yet for the newest blocks) while blocks keep coming: the crash is topped up once, with one signed attempt, and
    the journal says confirmed."""
    open_safe_book(chain, open_book)
    mining = threading.Event()

    def mine() -> None:
        while not mining.wait(0.25):
            chain.anvil.request("evm_mine", [])

    miner = threading.Thread(target=mine, daemon=True)
    miner.start()
    try:
        with FaultProxy(chain.anvil.url) as proxy:
            proxy.lag_blocks, proxy.lag_every = 3, 2
            daemon = start(write_config(chain, tmp_path, rpc=proxy.url), tmp_path / "run.log")
            try:
                wait_log(tmp_path / "run.log", "cycle_finished", 60)
                finals = len(log_lines(tmp_path / "run.log", "tx_final"))  # (an approval the lagging state asked for)
                chain.push_price("ETH", CRASH_E8)
                wait_log(tmp_path / "run.log", "tx_final", 60, count=finals + 1)
                assert proxy.nulled > 0  # the lagging backend did hide receipts
            finally:
                assert stop(daemon) == 0
    finally:
        mining.set()
        miner.join(5)
    (added,) = margin_events(chain, "MarginAdded")
    j = Journal(tmp_path / "journal.sqlite")
    try:
        (rec,) = [i for i in j.all_intents() if i.meta.get("kind") == "top_up"]
        assert rec.state == "confirmed" and len(j.attempts(rec.id)) == 1 and rec.meta["amount_e6"] == added["amount"]
        assert all(i.state == "confirmed" for i in j.all_intents())  # nothing reverted, nothing abandoned
    finally:
        j.close()


def test_receipts_hidden_past_the_evidence_window_with_fast_blocks_pay_once(
    chain, tmp_path, open_book, write_config, wait_log, wait_for, log_lines, margin_events
):
    """Receipts answered null for 3 s while a block comes every 0.3 s (10 blocks: past the 4-block evidence window,
    the soak's seed 78): the landed top-up raised the collateral, so the daemon's "still needed" check says no and
    nothing is signed again, even though the fee accrued since leaves the position a hair below its target."""
    open_safe_book(chain, open_book)
    stop_mining = threading.Event()

    def mine() -> None:
        while not stop_mining.wait(0.3):
            chain.anvil.request("evm_mine", [])

    with FaultProxy(chain.anvil.url) as proxy:
        daemon = start(write_config(chain, tmp_path, rpc=proxy.url), tmp_path / "run.log")
        miner = threading.Thread(target=mine, daemon=True)
        try:
            wait_log(tmp_path / "run.log", "cycle_finished", 60)
            chain.anvil.request("evm_setAutomine", [False])
            miner.start()
            proxy.null_methods = {"eth_getTransactionReceipt", "eth_getTransactionByHash"}
            chain.push_price("ETH", CRASH_E8, wait=False)
            wait_log(tmp_path / "run.log", "action_sent", 30)
            wait_log(tmp_path / "run.log", "tx_nonce_taken", 30)  # the evidence window ran out with receipts hidden
            proxy.null_methods = set()
            # no longer needed -> abandoned, then corrected to confirmed once its receipt shows (chain truth)
            late = json.loads(wait_log(tmp_path / "run.log", "tx_late_receipt", 30))
            assert late["state"] == "confirmed"
        finally:
            stop_mining.set()
            if miner.is_alive():
                miner.join(5)
            assert stop(daemon) == 0
    (added,) = margin_events(chain, "MarginAdded")
    assert log_lines(tmp_path / "run.log", "tx_sent")[1:] == []  # one signature, never a second nonce
    j = Journal(tmp_path / "journal.sqlite")
    try:
        (rec,) = [i for i in j.all_intents() if i.meta.get("kind") == "top_up"]
        assert rec.state == "confirmed" and len(j.attempts(rec.id)) == 1 and rec.meta["amount_e6"] == added["amount"]
    finally:
        j.close()
