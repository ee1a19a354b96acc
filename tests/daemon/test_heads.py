"""newHeads over WebSocket: every mined block is announced, and a lost node is retried."""

from __future__ import annotations

import threading

import pytest

from keeper.chain.anvil import Anvil
from keeper.chain.heads import NewHeadsSubscription

pytestmark = pytest.mark.chain


def test_every_block_is_announced_in_order():
    """Three mined blocks arrive as three notifications with consecutive numbers."""
    seen: list[int] = []
    got = threading.Event()

    def on_head(number: int, _ts: int) -> None:
        seen.append(number)
        if len(seen) >= 3:
            got.set()

    with Anvil.start() as node:
        sub = NewHeadsSubscription(node.ws_url, on_head).start()
        try:
            assert sub.connected.wait(5)
            for _ in range(3):
                node.request("evm_mine", [])
            assert got.wait(5)
        finally:
            sub.stop()
    assert seen[:3] == [1, 2, 3]


def test_reconnects_after_the_node_goes_away(wait_for):
    """When the node disappears the subscription counts a reconnect attempt and keeps trying."""
    node = Anvil.start()
    sub = NewHeadsSubscription(node.ws_url, lambda n, t: None, max_backoff_s=0.2).start()
    try:
        assert sub.connected.wait(5)
        node.stop()
        wait_for(lambda: sub.reconnects >= 2, 5, "second reconnect attempt")
        assert not sub.connected.is_set()
    finally:
        sub.stop()


def test_rejects_http_urls():
    """An http:// URL is refused at construction."""
    with pytest.raises(ValueError, match="ws://"):
        NewHeadsSubscription("http://127.0.0.1:1", lambda n, t: None)
