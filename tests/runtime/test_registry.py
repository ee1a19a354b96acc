"""Protocol adapters are found by name: the registry, and the configuration that validates names against it."""

from __future__ import annotations

import pytest

from keeper.chain.rpc import ChainClient, HttpTransport
from keeper.errors import ConfigError
from keeper.protocols import registry
from keeper.protocols.testing import FakeAdapter


def test_reference_is_built_in_and_loaded_lazily():
    """`reference` is a registered name, and its factory is the reference module's from_config."""
    from keeper.protocols import reference

    assert "reference" in registry.names()
    assert registry.factory("reference") is reference.from_config


def test_unknown_name_is_a_config_error_listing_the_known_ones(fake_config):
    """A protocol name nobody registered fails validation naming the field and the names that exist."""
    with pytest.raises(ConfigError, match="unknown protocol 'nope'.*reference"):
        fake_config("nope", mode="watch")
    with pytest.raises(ConfigError, match="unknown protocol 'nope'"):
        registry.factory("nope")


def test_a_registered_adapter_is_built_from_config(fake_config):
    """After register('fake', factory), protocol.name = 'fake' validates and create() returns that adapter."""
    built: list[FakeAdapter] = []

    def factory(client, config, journal):
        built.append(FakeAdapter([]))
        return built[-1]

    registry.register("fake", factory)
    try:
        cfg = fake_config("fake", mode="watch")
        client = ChainClient([HttpTransport("http://127.0.0.1:1")], 31337)  # never called by this factory
        assert registry.create(client, cfg, None) is built[0]
    finally:
        registry.unregister("fake")
    assert "fake" not in registry.names()
    with pytest.raises(ValueError, match="built-in"):
        registry.unregister("reference")
