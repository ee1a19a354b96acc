"""One writer per journal, end to end: `keeper check --execute` beside a running `keeper run` on the same journal
refuses to send with a one-line message; read-only `keeper check` still works (issue 10, finding 3)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.chain


def test_check_execute_beside_daemon_refuses(chain, tmp_path, keeper, wait_log, margin_events, open_book, write_config):
    """A second sending process on the daemon's journal exits non-zero naming the lock; nothing extra is sent."""
    open_book(chain, reserve_e6=30_000 * 10**6)
    chain.push_price("ETH", 2_900 * 10**8)  # the daemon's first cycle tops up once
    cfg = write_config(chain, tmp_path)
    env = {**os.environ, "KEEPER_PRIVATE_KEY": chain.trader_key}
    with open(tmp_path / "run.log", "w") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "keeper", "run", "--config", str(cfg)], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:
        wait_log(tmp_path / "run.log", "tx_final", 60)
        nonce = chain.w3.eth.get_transaction_count(chain.trader)
        second = keeper("check", "--config", str(cfg), "--execute", "--json")
        assert second.returncode != 0
        lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "in use by another sending keeper" in lines[0], second.stderr
        assert "Traceback" not in second.stderr
        reader = keeper("check", "--config", str(cfg), "--json")
        assert reader.returncode == 0, reader.stderr
        assert chain.w3.eth.get_transaction_count(chain.trader) == nonce
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    assert len(margin_events(chain, "MarginAdded")) == 1
    assert chain.trader_key[2:] not in (tmp_path / "run.log").read_text() + second.stderr + second.stdout
