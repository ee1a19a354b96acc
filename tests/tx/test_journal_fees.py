"""Journal persistence and fee rules, without a chain."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keeper.tx.fees import ETHER, GWEI, FeeCapExceeded, FeePolicy, Fees, MarketFees
from keeper.tx.journal import Journal


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def jrnl(tmp_path):
    clock = Clock()
    j = Journal(tmp_path / "j.db", clock=clock)
    j.test_clock = clock
    yield j
    j.close()


def _intent(j, key="k"):
    return j.create_intent(
        idempotency_key=key,
        lane="urgent",
        sender="0xAb" + "00" * 19,
        to="0x" + "11" * 20,
        data=b"\x01\x02",
        value_wei=3 * 10**30,
        value_at_stake_e6=5,
        meta={"kind": "top_up"},
    )


class TestJournal:
    def test_round_trip_survives_reopen(self, jrnl, tmp_path):
        """An intent and its signed attempt read back identically after the database is reopened."""
        rec = _intent(jrnl)
        att = jrnl.add_attempt(
            rec.id,
            kind="send",
            nonce=7,
            tx_hash="0xaa",
            raw_tx=b"\x02raw",
            max_fee_per_gas=3 * 10**20,
            max_priority_fee_per_gas=2,
            gas_limit=50_000,
        )
        jrnl.mark_sent(att.id, 12)
        jrnl.close()
        j2 = Journal(tmp_path / "j.db")
        got = j2.get(rec.id)
        assert (got.state, got.nonce, got.value_wei, got.data, got.meta) == (
            "sent",
            7,
            3 * 10**30,
            b"\x01\x02",
            {"kind": "top_up"},
        )
        (a,) = j2.attempts(rec.id)
        assert (a.raw_tx, a.max_fee_per_gas, a.sent_block) == (b"\x02raw", 3 * 10**20, 12)
        assert [e for e, _ in j2.events(rec.id)] == ["intent_created", "tx_signed", "tx_sent"]
        j2.close()

    def test_wal_mode(self, jrnl):
        """The journal runs in WAL mode with full synchronous commits."""
        assert jrnl._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert jrnl._conn.execute("PRAGMA synchronous").fetchone()[0] == 2

    def test_dedupe_window(self, jrnl):
        """An open intent always matches its key; a confirmed one only within the dedupe window."""
        rec = _intent(jrnl, "top_up:x")
        assert jrnl.find_active("top_up:x", 60).id == rec.id
        jrnl.update(rec.id, state="confirmed")
        assert jrnl.find_active("top_up:x", 60).id == rec.id
        jrnl.test_clock.now += 61
        assert jrnl.find_active("top_up:x", 60) is None
        jrnl.update(rec.id, state="rejected")
        assert jrnl.find_active("top_up:x", 1e9) is None

    def test_intents_since_reads_only_the_recent_ones(self, jrnl):
        """intents_since(t) returns the intents created at or after t, oldest first, and nothing earlier."""
        old = _intent(jrnl, "a")
        jrnl.test_clock.now += 100
        cut = jrnl.test_clock.now
        new1 = _intent(jrnl, "b")
        jrnl.test_clock.now += 1
        new2 = _intent(jrnl, "c")
        assert [r.id for r in jrnl.intents_since(cut)] == [new1.id, new2.id]
        assert old.id in [r.id for r in jrnl.intents_since(cut - 100)]

    def test_max_nonce_of_open_intents(self, jrnl):
        """max_nonce reports the highest nonce held by an open intent of that sender (case-insensitive)."""
        a, b = _intent(jrnl, "a"), _intent(jrnl, "b")
        for rec, n in ((a, 3), (b, 4)):
            jrnl.add_attempt(
                rec.id,
                kind="send",
                nonce=n,
                tx_hash=f"0x{n}",
                raw_tx=b"",
                max_fee_per_gas=1,
                max_priority_fee_per_gas=1,
                gas_limit=1,
            )
        assert jrnl.max_nonce("0xab" + "00" * 19) == 4
        jrnl.update(b.id, state="abandoned")
        assert jrnl.max_nonce("0xAB" + "00" * 19) == 3

    def test_unknown_state_refused(self, jrnl):
        """Writing a state outside the documented set raises instead of corrupting the journal."""
        rec = _intent(jrnl)
        with pytest.raises(ValueError):
            jrnl.update(rec.id, state="done")

    def test_cursor_and_accounts_saved_together(self, jrnl):
        """save_scan stores the cursor and the discovered accounts; re-saving the same account is idempotent."""
        jrnl.save_scan("s", 10, "0xh", {("0xA", 0, 5)})
        jrnl.save_scan("s", 12, "0xi", {("0xa", 0, 5), ("0xb", 1, 11)})
        assert jrnl.get_cursor("s") == (12, "0xi")
        assert jrnl.known_accounts("s") == {("0xa", 0), ("0xb", 1)}


class TestFees:
    def test_budget_from_value_at_stake(self):
        """$1,000 at stake, 25% share, ETH at $3,000 -> 1/12 ETH, capped at the absolute 0.05 ETH."""
        p = FeePolicy()
        assert p.budget_wei(1_000 * 10**6) == ETHER // 20
        assert p.budget_wei(120 * 10**6) == ETHER // 100  # $30 of gas at $3,000/ETH = 0.01 ETH
        assert p.budget_wei(0) == ETHER // 1_000  # the floor: an approval has nothing at stake

    def test_initial_fee_formula(self):
        """max fee = 2 * next base fee + tip when under the cap."""
        p = FeePolicy()
        f = p.initial(MarketFees(10 * GWEI, 2 * GWEI), cap_wei=10**12)
        assert f == Fees(22 * GWEI, 2 * GWEI)

    def test_cap_below_base_fee_refused(self):
        """A cap that cannot cover the next base fee plus the minimum tip raises FeeCapExceeded."""
        with pytest.raises(FeeCapExceeded):
            FeePolicy().initial(MarketFees(10 * GWEI, GWEI), cap_wei=10 * GWEI)

    @given(
        st.integers(1, 10**12),
        st.integers(1, 10**11),
        st.integers(0, 10**12),
        st.integers(0, 10**11),
        st.integers(1, 10**13),
    )
    def test_bump_raises_both_fields_and_respects_cap(self, max_fee, tip, base, mtip, cap):
        """A replacement raises both fee fields by >= 12.5% and never exceeds the cap (or is refused)."""
        tip = min(tip, max_fee)
        out = FeePolicy().bumped(Fees(max_fee, tip), MarketFees(base, mtip), cap)
        if out is not None:
            assert out.max_fee_per_gas * 8 >= max_fee * 9 and out.max_priority_fee_per_gas * 8 >= tip * 9
            assert out.max_fee_per_gas <= cap and out.max_priority_fee_per_gas <= out.max_fee_per_gas
        else:
            assert cap < -(-max_fee * 9 // 8) or cap < base or cap < -(-tip * 9 // 8)

    def test_bad_policy_fails_at_construction(self):
        """A bump below geth's 10% replacement rule is refused when the policy is built."""
        with pytest.raises(ValueError, match="bump"):
            FeePolicy(bump=0.05)
