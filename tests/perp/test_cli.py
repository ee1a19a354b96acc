"""``keeper devchain --protocol``: an unknown protocol is refused with one line and exit 2, nothing started."""

from __future__ import annotations

import subprocess
import sys


def test_unknown_protocol_is_refused_with_exit_2():
    """`keeper devchain --protocol nope` exits 2 naming the allowed protocols, before any chain starts."""
    proc = subprocess.run(
        [sys.executable, "-m", "keeper", "devchain", "--protocol", "nope", "--once"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--protocol 'nope': allowed reference, aave-v3, perp-v2, all" in proc.stderr
    assert "anvil pid" not in proc.stdout
