"""Transaction manager against a real anvil with signed EIP-1559 ETH transfers (no chain mocks)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from eth_account import Account

from keeper.dev.reference import ANVIL_KEYS
from keeper.tx.call import ContractCall
from keeper.tx.fees import GWEI, FeePolicy

pytestmark = pytest.mark.chain  # every test here starts its own anvil (the ``anvil`` fixture)

URGENT_KEY, ROUTINE_KEY = ANVIL_KEYS[2], ANVIL_KEYS[4]

RECIPIENT = "0x" + "5a" * 20
AMOUNT = 10**15
STAKE_E6 = 1_000_000_000  # $1,000 at stake: budget far above anvil's fees
URGENT = Account.from_key(URGENT_KEY).address


def transfer(amount: int = AMOUNT, to: str = RECIPIENT) -> ContractCall:
    return ContractCall(to=to, value_wei=amount, description="test transfer")


def balance(anvil, address: str) -> int:
    return int(anvil.request("eth_getBalance", [address, "latest"]), 16)


def nonce(anvil, address: str, tag: str = "latest") -> int:
    return int(anvil.request("eth_getTransactionCount", [address, tag]), 16)


def pool_hashes(anvil) -> set[str]:
    content = anvil.request("txpool_content")
    return {tx["hash"] for by_sender in content["pending"].values() for tx in by_sender.values()}


def send_from_other_process(url: str, key: str, nonce_: int, max_fee: int, tip: int, to: str) -> str:
    """Sign and send a transfer with ``key`` from a separate Python process; returns its hash."""
    code = textwrap.dedent(f"""
        import json, urllib.request
        from eth_account import Account
        signed = Account.from_key({key!r}).sign_transaction(dict(type=2, chainId=31337, nonce={nonce_},
            to={to!r}, value=1, gas=21000, maxFeePerGas={max_fee}, maxPriorityFeePerGas={tip}, data=b""))
        body = json.dumps(dict(jsonrpc="2.0", id=1, method="eth_sendRawTransaction",
                               params=["0x" + signed.raw_transaction.hex()])).encode()
        req = urllib.request.Request({url!r}, data=body, headers={{"Content-Type": "application/json"}})
        print(json.loads(urllib.request.urlopen(req).read())["result"])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


class TestSubmit:
    def test_transfer_confirmed_once_and_deduplicated(self, anvil, make_manager):
        """A submitted transfer is confirmed, and resubmitting the same key sends nothing new."""
        m = make_manager()
        rec = m.submit(transfer(), "k:1", STAKE_E6)
        assert m.wait(rec.id, timeout_s=10).state == "confirmed"
        again = m.submit(transfer(), "k:1", STAKE_E6)
        assert again.id == rec.id
        assert balance(anvil, RECIPIENT) == AMOUNT
        assert nonce(anvil, URGENT) == 1

    def test_gas_limit_is_estimate_times_1_2_plus_10k(self, make_manager):
        """The gas limit is the node's estimate * 1.2 + 10,000 (21,000 for a plain transfer -> 35,200)."""
        m = make_manager()
        rec = m.submit(transfer(), "k:gas", STAKE_E6)
        assert rec.gas_limit == 21_000 * 12 // 10 + 10_000

    def test_fee_cap_refuses_when_stake_too_small(self, anvil, make_manager):
        """A transaction whose fee budget (share of the value at stake) cannot pay the base fee is refused."""
        from keeper.tx.fees import FeeCapExceeded

        m = make_manager(fee_policy=FeePolicy(min_budget_wei=0))
        with pytest.raises(FeeCapExceeded):
            m.submit(transfer(), "k:tiny", value_at_stake_e6=1)  # $0.000001 at stake
        assert m.journal.by_key("k:tiny")[0].state == "rejected"
        assert nonce(anvil, URGENT, "pending") == 0


class TestStuckAndReplacement:
    def test_stuck_tx_replaced_with_both_fees_bumped(self, anvil, make_manager, clock):
        """With automine off, a tx older than stuck_s is replaced at the same nonce with both fees +>=12.5%."""
        anvil.request("evm_setAutomine", [False])
        m = make_manager(stuck_s=30.0, stuck_blocks=100)
        rec = m.submit(transfer(), "k:stuck", STAKE_E6)
        first = m.journal.attempts(rec.id)[0]
        m.poll()
        assert len(m.journal.attempts(rec.id)) == 1  # not stuck yet
        clock.advance(31)
        m.poll()
        attempts = m.journal.attempts(rec.id)
        assert [a.kind for a in attempts] == ["send", "replace"]
        second = attempts[1]
        assert second.nonce == first.nonce
        assert second.max_fee_per_gas * 1000 >= first.max_fee_per_gas * 1125
        assert second.max_priority_fee_per_gas * 1000 >= first.max_priority_fee_per_gas * 1125
        assert pool_hashes(anvil) == {second.tx_hash}
        anvil.request("evm_mine")
        done = m.wait(rec.id, timeout_s=10)
        assert done.state == "confirmed" and done.tx_hash == second.tx_hash
        assert balance(anvil, RECIPIENT) == AMOUNT

    def test_base_fee_spike_repriced_within_cap(self, anvil, make_manager, clock):
        """After a base-fee spike above the sent max fee, the tx is repriced at the same nonce and mined."""
        anvil.request("evm_setAutomine", [False])
        m = make_manager(stuck_blocks=1)
        rec = m.submit(transfer(), "k:spike", STAKE_E6)
        first = m.journal.attempts(rec.id)[0]
        spike = first.max_fee_per_gas * 4
        anvil.request("anvil_setNextBlockBaseFeePerGas", [hex(spike)])
        anvil.request("evm_mine")  # the spiked block cannot include our tx
        assert anvil.request("eth_getTransactionReceipt", [first.tx_hash]) is None
        for _ in range(3):
            m.poll()
            anvil.request("evm_mine")
        done = m.wait(rec.id, timeout_s=10)
        assert done.state == "confirmed"
        mined = next(a for a in m.journal.attempts(rec.id) if a.tx_hash == done.tx_hash)
        assert mined.nonce == first.nonce and mined.max_fee_per_gas > first.max_fee_per_gas
        assert balance(anvil, RECIPIENT) == AMOUNT and nonce(anvil, URGENT) == 1

    def test_base_fee_spike_above_cap_waits(self, anvil, make_manager):
        """When the spike is above the absolute cap, nothing is overpaid: the intent waits, flagged."""
        anvil.request("evm_setAutomine", [False])
        m = make_manager(stuck_blocks=1, fee_policy=FeePolicy(max_fee_per_gas_cap_wei=5 * GWEI))
        rec = m.submit(transfer(), "k:capped", STAKE_E6)
        anvil.request("anvil_setNextBlockBaseFeePerGas", [hex(100 * GWEI)])
        anvil.request("evm_mine")
        m.poll()
        m.poll()
        assert all(a.max_fee_per_gas <= 5 * GWEI for a in m.journal.attempts(rec.id))
        assert m.journal.get(rec.id).is_open
        assert any(e == "tx_fee_cap_reached" for e, _ in m.journal.events(rec.id))

    def test_dropped_tx_rebroadcast_same_hash(self, anvil, make_manager):
        """A tx dropped from the pool is rebroadcast byte for byte (same hash), then confirmed once."""
        anvil.request("evm_setAutomine", [False])
        m = make_manager()
        rec = m.submit(transfer(), "k:drop", STAKE_E6)
        h = m.journal.attempts(rec.id)[0].tx_hash
        anvil.request("anvil_dropTransaction", [h])
        assert pool_hashes(anvil) == set()
        m.poll()
        assert pool_hashes(anvil) == {h}
        anvil.request("evm_mine")
        done = m.wait(rec.id, timeout_s=10)
        assert done.state == "confirmed" and done.tx_hash == h
        assert len(m.journal.attempts(rec.id)) == 1

    def test_cancel_when_purpose_gone(self, anvil, make_manager):
        """An unmined tx whose purpose is gone is cancelled by a zero-value self-transfer at its nonce."""
        anvil.request("evm_setAutomine", [False])
        needed = {"yes": True}
        m = make_manager(still_needed=lambda intent: needed["yes"])
        rec = m.submit(transfer(), "k:cancel", STAKE_E6)
        needed["yes"] = False
        m.poll()
        cancel = m.journal.attempts(rec.id)[-1]
        assert cancel.kind == "cancel" and cancel.nonce == rec.nonce
        assert pool_hashes(anvil) == {cancel.tx_hash}
        anvil.request("evm_mine")
        assert m.wait(rec.id, timeout_s=10).state == "cancelled"
        assert balance(anvil, RECIPIENT) == 0


class TestNonceConflicts:
    def test_nonce_used_by_other_process_before_send(self, anvil, make_manager):
        """Another process signing with our key takes our next nonce: sending stops (no retry at the next nonce)."""
        from keeper.errors import SenderConflict

        m = make_manager()
        first = m.submit(transfer(), "k:a", STAKE_E6)
        m.wait(first.id, timeout_s=10)
        send_from_other_process(anvil.url, URGENT_KEY, 1, 10 * GWEI, GWEI, "0x" + "77" * 20)
        with pytest.raises(SenderConflict):
            m.submit(transfer(), "k:b", STAKE_E6)
        assert m.halted is not None and "same key" in m.halted
        assert [r.state for r in m.journal.by_key("k:b")] == ["rejected"]
        assert anvil.request("eth_getTransactionCount", [m.lane("urgent").address, "latest"]) == "0x2"
        assert balance(anvil, RECIPIENT) == AMOUNT
        with pytest.raises(SenderConflict):
            m.submit(transfer(), "k:c", STAKE_E6)

    def test_pending_tx_replaced_by_other_process(self, anvil, make_manager):
        """Our pending tx is replaced by another process's tx at the same nonce; we resend at a new nonce."""
        anvil.request("evm_setAutomine", [False])
        m = make_manager()
        rec = m.submit(transfer(), "k:stolen", STAKE_E6)
        other = send_from_other_process(anvil.url, URGENT_KEY, rec.nonce, 50 * GWEI, 10 * GWEI, "0x" + "77" * 20)
        assert pool_hashes(anvil) == {other}
        anvil.request("evm_mine")
        m.poll()  # nonce used, no receipt of ours: wait evidence_blocks before giving the nonce up
        assert m.journal.get(rec.id).nonce == rec.nonce
        for _ in range(m.evidence_blocks):
            anvil.request("evm_mine")
            m.poll()
        latest = m.journal.get(rec.id)
        assert latest.nonce == rec.nonce + 1
        anvil.request("evm_mine")
        done = m.wait(rec.id, timeout_s=10)
        assert done.state == "confirmed"
        assert balance(anvil, RECIPIENT) == AMOUNT
        assert any(e == "tx_nonce_taken" for e, _ in m.journal.events(rec.id))


class TestLanes:
    def test_urgent_lane_not_blocked_by_stuck_routine(self, anvil, make_manager):
        """A routine tx stuck behind a nonce gap does not delay an urgent top-up on its own key."""
        m = make_manager()
        anvil.request("evm_setAutomine", [False])
        routine = m.submit(transfer(to="0x" + "66" * 20), "k:routine", STAKE_E6, lane="routine")
        anvil.request("anvil_dropTransaction", [m.journal.attempts(routine.id)[0].tx_hash])
        anvil.request("evm_setAutomine", [True])
        urgent = m.submit(transfer(), "k:urgent", STAKE_E6, lane="urgent")
        m.poll()
        assert m.journal.get(urgent.id).state == "confirmed"
        assert m.journal.get(routine.id).is_open
        assert m.wait(routine.id, timeout_s=10).state == "confirmed"
        assert Account.from_key(ROUTINE_KEY).address != URGENT
