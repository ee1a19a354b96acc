"""Ctrl-C during `keeper check --execute`: what was sent and what is pending is printed (with real hashes), exit 130."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from keeper.dev.reference import ANVIL_KEYS

pytestmark = pytest.mark.chain

TRADER = 1  # anvil key index: the keeper signs for its own account
CHILD_WITH_SIGINT = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);"
    " sys.argv[0] = 'keeper'; runpy.run_module('keeper', run_name='__main__', alter_sys=True)"
)


def endangered_book(chain, tmp_path: Path) -> Path:
    """Trader long 20 ETH at 3,000 with $3k collateral, ETH pushed to 2,900: `check` plans a top-up."""
    key = ANVIL_KEYS[TRADER]
    chain.mint(chain.trader, 33_000 * 10**6)
    chain.approve_engine(key)
    chain.open_position(key, "ETH", True, 20 * 10**18, 3_000 * 10**6)
    chain.push_price("ETH", 2_900 * 10**8)
    dep = chain.deployment.save(tmp_path / "deployment.json")
    path = tmp_path / "keeper.toml"
    path.write_text(f"""
[chain]
rpc_urls = ["{chain.anvil.url}"]
chain_id = {chain.deployment.chain_id}
[protocol]
deployment = "{dep}"
[[accounts]]
address = "{chain.trader}"
[limits]
max_top_up_usd = 50000
max_per_day_usd = 200000
[journal]
path = "{tmp_path / "journal.sqlite"}"
[log]
format = "json"
""")
    return path


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "text"])
def test_ctrl_c_reports_sent_and_pending(chain, tmp_path, as_json, secret_leaks, wait_for):
    """SIGINT while a top-up is pending prints its intent, nonce and the hash the node holds, and exits 130."""
    cfg = endangered_book(chain, tmp_path)
    trader = chain.trader
    chain.anvil.request("evm_setAutomine", [False])  # the top-up stays pending until the test mines
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KEEPER_")},
        "KEEPER_PRIVATE_KEY": ANVIL_KEYS[TRADER],
    }
    args = [
        sys.executable,
        "-c",
        # a suite started in the background (`make test &`, a CI runner) inherits SIGINT ignored, and Python then
        # installs no KeyboardInterrupt handler: the child gets the handler a terminal's Ctrl-C would meet
        CHILD_WITH_SIGINT,
        "check",
        "--config",
        str(cfg),
        "--execute",
        "--env-file",
        str(tmp_path / "none.env"),
        *(["--json"] if as_json else []),
    ]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        wait_for(  # the node holds a pending (unmined) transaction from the trader
            lambda: chain.w3.eth.get_transaction_count(trader, "pending") > chain.w3.eth.get_transaction_count(trader),
            90,
            "pending transaction from the trader (the keeper never broadcast one)",
        )
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    pool = chain.anvil.request("txpool_content")["pending"]
    pending = {
        int(nonce): tx["hash"]
        for sender, txs in pool.items()
        if sender.lower() == trader.lower()
        for nonce, tx in txs.items()
    }
    assert proc.returncode == 130, err
    assert "Traceback" not in err and pending
    assert secret_leaks(out + err) == []
    nonce, tx_hash = next(iter(pending.items()))
    if as_json:
        report = json.loads(out)
        assert report["interrupted"] is True and len(report["pending"]) == 1
        entry = report["pending"][0]
        assert entry["nonce"] == nonce and entry["tx_hash"] == tx_hash and entry["state"] in ("sent", "signed")
        assert entry["key"].startswith("top_up") and entry["attempts"][0]["broadcast"] is True
    else:
        assert "1 still pending" in err and tx_hash in err and f"nonce {nonce}" in err
    chain.anvil.request("evm_mine")
