"""Implied volatility from a file or a URL, used as a per-market floor under the oracle-history estimate.

The source is a JSON object mapping a market symbol to an annualised volatility, e.g.
``{"ETH": 0.65, "BTC": 0.52}`` (values in (0, 20]; a symbol not listed gets no floor). Options markets
price the volatility traders expect; when it is above what the oracle history says (a quiet market ahead of
an announcement) the keeper sizes buffers from it instead.

The source is read once at start (a missing file, an unreachable URL or a malformed document is a
configuration error, exit 2), then re-read every ``refresh_s``; a failed refresh keeps the last good values
and is logged, so a flaky endpoint can never lower a floor to nothing in the middle of a crash.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import structlog

from keeper.errors import ConfigError

log = structlog.get_logger(__name__)


def parse_implied_vols(text: str, origin: str) -> dict[str, float]:
    """Validate a JSON ``{symbol: annual volatility}`` document; ``ValueError`` says what is wrong."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{origin} is not JSON (line {exc.lineno}): {exc.msg}") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f'{origin} must be a JSON object like {{"ETH": 0.65}}')
    out: dict[str, float] = {}
    for symbol, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 20:
            raise ValueError(f"{origin}: {symbol} = {value!r} must be an annualised volatility in (0, 20]")
        out[str(symbol).upper()] = float(value)
    return out


class ImpliedVolSource:
    """A file path or http(s) URL with implied volatilities per symbol, refreshed every ``refresh_s``."""

    def __init__(
        self,
        source: str,
        *,
        refresh_s: float = 300.0,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._is_url = source.startswith(("http://", "https://"))
        self._values: dict[str, float] = {}
        self._loaded_at = -float("inf")

    def _read(self) -> str:
        if self._is_url:
            with urllib.request.urlopen(self.source, timeout=self.timeout_s) as resp:  # configured URL
                return resp.read().decode()
        return Path(self.source).read_text()

    def load(self) -> dict[str, float]:
        """First read, at start: any problem is a ConfigError naming the source."""
        try:
            self._values = parse_implied_vols(self._read(), self.source)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"implied_vol.source {self.source!r}: {exc}", field="implied_vol.source") from None
        self._loaded_at = self._clock()
        log.info("implied_vol_loaded", source=self.source, floors=self._values)
        return dict(self._values)

    def floors(self) -> dict[str, float]:
        """The current floors, re-read when ``refresh_s`` has passed (the last good values on failure)."""
        if self._clock() - self._loaded_at >= self.refresh_s:
            self._loaded_at = self._clock()
            try:
                self._values = parse_implied_vols(self._read(), self.source)
            except (OSError, ValueError) as exc:
                log.warning("implied_vol_refresh_failed", source=self.source, error=str(exc), keeping=self._values)
        return dict(self._values)
