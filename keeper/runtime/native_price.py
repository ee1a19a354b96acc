"""The gas token's USD price, from the chain: what a transaction's fee is worth against what it protects.

The fee cap of every protective transaction is a share of the USD value at stake turned into wei
(``keeper.tx.fees.FeePolicy.native_usd_e8``), and the gas-left alert and the cost of a transaction are priced
the same way. Where the price comes from, in order (``[fees]`` in the configuration):

1. ``native_usd``: a fixed price (a test chain, or a token the protocol does not price);
2. ``native_price_feed``: a Chainlink-compatible aggregator (``latestRoundData``, ``decimals``) read each
   cycle, e.g. ETH/USD on the chain the keeper runs on;
3. otherwise the protocol's own price of the asset named ``native_symbol`` (default ``ETH``; its wrapped form
   ``WETH`` too): the reference protocol's ETH market, Aave's WETH reserve, Perp v2's vETH mark.

When none answers, the fee policy's default stays and ``native_price_unknown`` is logged once.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from keeper.chain.abi import Function
from keeper.chain.rpc import ChainClient, RpcErrorResponse
from keeper.errors import ChainMismatchError, ConfigError, TransientRpcError
from keeper.runtime.config import FeesConfig

log = structlog.get_logger("keeper")

F_LATEST_ROUND = Function("latestRoundData()", ["uint80", "int256", "uint256", "uint256", "uint80"])
F_DECIMALS = Function("decimals()", ["uint8"])


class NativePrice:
    """The gas token's price (USD, 8 decimals) by the configured source; :meth:`update` each cycle."""

    def __init__(self, client: ChainClient, fees: FeesConfig) -> None:
        self.client = client
        self.fixed_e8 = int(fees.native_usd * 10**8) if fees.native_usd is not None else None
        self.feed = fees.native_price_feed
        self.symbol = fees.native_symbol.upper()
        self.feed_decimals: int | None = None
        self.price_e8: int | None = self.fixed_e8
        self.source = "native_usd" if self.fixed_e8 is not None else None
        self._warned = False

    def check(self) -> None:
        """At start: a configured feed must hold code and answer ``decimals`` (a config error otherwise)."""
        if self.feed is None or self.fixed_e8 is not None:
            return
        if not self.client.get_code(self.feed):
            raise ConfigError(
                f"fees.native_price_feed {self.feed} holds no contract on chain id {self.client.chain_id}",
                field="fees.native_price_feed",
            )
        try:
            self.feed_decimals = int(F_DECIMALS.decode(self.client.call(self.feed, F_DECIMALS.encode()))[0])
        except (RpcErrorResponse, ChainMismatchError, ValueError) as exc:
            raise ConfigError(
                f"fees.native_price_feed {self.feed} does not answer decimals(): not a price feed ({exc})",
                field="fees.native_price_feed",
            ) from exc

    def update(self, protocol_prices_e8: Mapping[str, int]) -> int | None:
        """The price now (USD e8) from the first source that answers; ``protocol_prices_e8`` is symbol -> the
        protocol's price this cycle. ``None`` when no source knows it."""
        if self.fixed_e8 is not None:
            return self.fixed_e8
        if self.feed is not None:
            try:
                answer = int(F_LATEST_ROUND.decode(self.client.call(self.feed, F_LATEST_ROUND.encode()))[1])
            except (TransientRpcError, RpcErrorResponse, ChainMismatchError, ValueError) as exc:
                log.warning("native_price_feed_unavailable", feed=self.feed, error=str(exc))
            else:
                if answer > 0:
                    decimals = 8 if self.feed_decimals is None else self.feed_decimals
                    self.price_e8, self.source = answer * 10**8 // 10**decimals, "native_price_feed"
                    return self.price_e8
        by_symbol = {s.upper(): p for s, p in protocol_prices_e8.items()}
        for name in (self.symbol, "W" + self.symbol):
            if by_symbol.get(name, 0) > 0:
                self.price_e8, self.source = by_symbol[name], f"protocol price of {name}"
                return self.price_e8
        if not self._warned:
            self._warned = True
            log.warning(
                "native_price_unknown",
                symbol=self.symbol,
                why="no fees.native_usd, no fees.native_price_feed and the protocol prices no such asset: "
                "the fee policy's default is used",
            )
        return self.price_e8
