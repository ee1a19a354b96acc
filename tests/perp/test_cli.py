"""``keeper devchain --protocol``: an unknown protocol is refused with one line and exit 2, nothing started.

The CLI runs in this process (``keeper_cli``); ``keeper devchain`` as a real process is tests/test_devchain.py.
"""

from __future__ import annotations


def test_unknown_protocol_is_refused_with_exit_2(keeper_cli):
    """`keeper devchain --protocol nope` exits 2 naming the allowed protocols, before any chain starts."""
    proc = keeper_cli("devchain", "--protocol", "nope", "--once")
    assert proc.returncode == 2
    assert "--protocol 'nope': allowed reference, aave-v3, perp-v2, all" in proc.stderr
    assert "anvil pid" not in proc.stdout
