"""Protocol adapters by name: ``protocol.name`` in the configuration picks the adapter the daemon builds.

A factory is ``factory(client, config, journal) -> ProtocolAdapter``: it reads what it needs from
``config.protocol`` (addresses, a deployment file) and returns a ready adapter. Built-in adapters are named
here as ``"module:attribute"`` strings and imported only when chosen, so that loading the registry (the
configuration validates names against it) never imports every protocol's ABIs. A third-party adapter
registers itself with :func:`register`::

    from keeper.protocols import registry
    registry.register("my-protocol", my_module.from_config)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from keeper.errors import ConfigError

if TYPE_CHECKING:
    from keeper.chain.rpc import ChainClient
    from keeper.protocols.base import ProtocolAdapter
    from keeper.runtime.config import KeeperConfig
    from keeper.tx.journal import Journal

AdapterFactory = Callable[["ChainClient", "KeeperConfig", "Journal | None"], "ProtocolAdapter"]

_BUILTIN: dict[str, str] = {
    "reference": "keeper.protocols.reference:from_config",
    "aave-v3": "keeper.protocols.aave_v3:from_config",
    "perp-v2": "keeper.protocols.perp_v2:from_config",
}
ACCOUNT_PROTOCOLS = frozenset({"aave-v3", "perp-v2"})
"""Protocols whose unit is a margin account (several assets, one health figure) rather than a position per
market: the daemon runs :class:`keeper.runtime.accounts_service.AccountKeeperService` for them."""
_FACTORIES: dict[str, AdapterFactory | str] = dict(_BUILTIN)


def register(name: str, factory: AdapterFactory | str) -> None:
    """Make ``name`` a valid ``protocol.name``; ``factory`` is a callable or a lazy ``"module:attribute"``."""
    if not name or name != name.strip().lower():
        raise ValueError(f"protocol name {name!r} must be non-empty lower case (e.g. 'aave-v3')")
    if isinstance(factory, str) and factory.count(":") != 1:
        raise ValueError(f"lazy factory {factory!r} must read 'package.module:attribute'")
    _FACTORIES[name] = factory


def unregister(name: str) -> None:
    """Forget ``name`` (tests that register a fake adapter clean up with this); built-ins cannot be removed."""
    if name in _BUILTIN:
        raise ValueError(f"{name!r} is a built-in protocol adapter")
    _FACTORIES.pop(name, None)


def is_account_protocol(name: str) -> bool:
    """Whether ``name`` is protected account by account (:data:`ACCOUNT_PROTOCOLS`)."""
    return name in ACCOUNT_PROTOCOLS


def names() -> tuple[str, ...]:
    """Every protocol name the configuration may use, sorted."""
    return tuple(sorted(_FACTORIES))


def factory(name: str) -> AdapterFactory:
    """The factory registered as ``name`` (a lazy one is imported now)."""
    found = _FACTORIES.get(name)
    if found is None:
        raise ConfigError(f"unknown protocol {name!r}: set protocol.name to one of {', '.join(names())}")
    if isinstance(found, str):
        module, _, attribute = found.partition(":")
        found = getattr(importlib.import_module(module), attribute)
        _FACTORIES[name] = found
    return found


def create(client: ChainClient, config: KeeperConfig, journal: Journal | None) -> ProtocolAdapter:
    """The adapter ``config.protocol.name`` names, built from ``config``."""
    return factory(config.protocol.name)(client, config, journal)
