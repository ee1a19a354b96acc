"""Helpers the daemon tests share, as fixtures: a keeper configuration for the dev chain, the trader's book,
the engine's margin events (read back from the chain)."""

from __future__ import annotations

import pytest

from tests.conftest import margin_events, open_book, write_config


@pytest.fixture(name="write_config")
def _write_config_fixture():
    """``write_config(chain, tmp_path, **overrides) -> Path``: a keeper.toml for the dev chain."""
    return write_config


@pytest.fixture(name="open_book")
def _open_book_fixture():
    """``open_book(chain, reserve_e6, ...)``: the trader's ETH long and BTC short."""
    return open_book


@pytest.fixture(name="margin_events")
def _margin_events_fixture():
    """``margin_events(chain, name) -> list[dict]``: the engine's events of ``name`` since deployment."""
    return margin_events
