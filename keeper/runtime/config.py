"""Configuration: a TOML file plus ``KEEPER_*`` environment variables, validated into a frozen model.

Precedence (later wins): defaults < TOML file < ``.env`` file < process environment.

Environment names: ``KEEPER_<SECTION>__<FIELD>`` (double underscore between levels), e.g.
``KEEPER_CHAIN__CHAIN_ID=31337``, ``KEEPER_LIMITS__MAX_TOP_UP_USD=500``; top-level fields are
``KEEPER_DRY_RUN``, ``KEEPER_WATCH_ALL``. Lists are comma-separated (``KEEPER_CHAIN__RPC_URLS``) or JSON.
``KEEPER_ACCOUNTS`` is ``0xaddr[:protect|watch],...``. Secrets: ``KEEPER_PRIVATE_KEY`` and
``KEEPER_ALERTS__WEBHOOK_URL`` (a Slack webhook URL is a bearer token). ``KEEPER_CONFIG`` and
``KEEPER_ENV_FILE`` are reserved for the CLI and not configuration fields. An empty value means unset.

Every bad value raises :class:`keeper.errors.ConfigError` naming the field path (and the environment
variable when it came from one), the value (never for secrets) and what is allowed. Secrets are
``SecretStr`` and the error is raised outside the pydantic exception, so neither ``repr``, ``str``,
validation errors nor tracebacks show them (tests/runtime/test_config.py checks each).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from dotenv import dotenv_values
from eth_utils import to_checksum_address
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from keeper.errors import ConfigError
from keeper.planner import PlanLimits
from keeper.protocols import registry
from keeper.redact import mask_text, url_secrets
from keeper.risk.policy import RiskPolicy

__all__ = [
    "ENV_PREFIX",
    "MULTICALL3_ADDRESS",
    "SECRET_FIELDS",
    "KeeperConfig",
    "known_secrets",
    "load_config",
]

ENV_PREFIX = "KEEPER_"
RESERVED_ENV = {"KEEPER_CONFIG", "KEEPER_ENV_FILE"}
ENV_ALIASES = {
    "KEEPER_PRIVATE_KEY": ("signer", "private_key"),
    "KEEPER_ROUTINE_PRIVATE_KEY": ("signer", "routine_private_key"),
}
SECRET_FIELDS = frozenset({"private_key", "routine_private_key", "webhook_url", "password", "password_file_content"})
MULTICALL3_ADDRESS = "0xcA11bde05977b3631167028862bE2a173976CA11"
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_PRIVATE_KEY = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")
_DEFAULT_POLICY = RiskPolicy()


def _usd_to_e6(value: Decimal) -> int:
    """USD (decimal) to the canonical 1e-6 USD integer, exact (no float rounding)."""
    return int(value * 1_000_000)


def _check_address(v: str) -> str:
    """A 20-byte address, not zero; mixed case must pass the EIP-55 checksum (all-lower/all-upper accepted)."""
    if not isinstance(v, str) or not _ADDRESS.match(v):
        raise ValueError("must be a 0x-prefixed 20-byte hex address (42 characters)")
    if int(v, 16) == 0:
        raise ValueError("is the zero address (nothing lives there): give the real contract or account address")
    digits = v[2:]
    checksummed = to_checksum_address(v)
    if digits != digits.lower() and digits != digits.upper() and v != checksummed:
        raise ValueError(f"fails the EIP-55 checksum (a typo?): the checksummed form is {checksummed}")
    return v


def _check_usd(v: Decimal | None) -> Decimal | None:
    if v is not None and v.as_tuple().exponent < -6:  # type: ignore[operator]
        raise ValueError("at most 6 decimals (the collateral token has 6)")
    return v


_NUMBER_TYPES = (int, float, Decimal)


def _is_number_type(annotation: Any) -> bool:
    types = [t for t in get_args(annotation) if t is not type(None)] if get_args(annotation) else [annotation]
    return bool(types) and all(t in _NUMBER_TYPES for t in types)


class _Model(BaseModel):
    # allow_inf_nan=False: `p_trigger = nan` says "finite number", not "less than 1"
    model_config = ConfigDict(
        extra="forbid", frozen=True, hide_input_in_errors=True, validate_default=True, allow_inf_nan=False
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        """``chain_id = true`` is a mistake, not 1: a bool is refused wherever a number is expected."""
        if (
            isinstance(v, bool)
            and info.field_name is not None
            and _is_number_type(cls.model_fields[info.field_name].annotation)
        ):
            raise ValueError("must be a number, not true/false")
        return v


class ChainConfig(_Model):
    """Where to read and send. ``rpc_urls`` are tried in order (failover); ws:// enables newHeads."""

    rpc_urls: tuple[str, ...] = Field(min_length=1)
    chain_id: int = Field(gt=0)
    request_timeout_s: float = Field(default=10.0, gt=0, le=120)
    # an endpoint whose head is this many blocks behind the highest head already seen is stale: failed over,
    # never read from (0: off). 16 blocks is ~3 min on Ethereum; raise it on fast-block chains.
    max_head_lag_blocks: int = Field(default=16, ge=0, le=1_000_000)

    @field_validator("rpc_urls")
    @classmethod
    def _urls(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        for url in urls:
            parts = urlsplit(url)
            shown = mask_text(url)
            if parts.scheme not in {"http", "https", "ws", "wss"} or not parts.netloc:
                raise ValueError(f"{shown!r} is not an http(s):// or ws(s):// URL")
            try:
                _ = parts.port  # evaluating .port validates it
            except ValueError:
                raise ValueError(f"{shown!r} has a port outside 1-65535") from None
            if parts.port == 0:
                raise ValueError(f"{shown!r} has port 0 (give the node's real port, 1-65535)")
        return urls


class MarketConfig(_Model):
    symbol: str = Field(min_length=1, max_length=16)


class AssetConfig(_Model):
    """Per-asset settings of a margin-account protocol (``[protocol.assets.USDC]``), keyed by token symbol."""

    # its price source's heartbeat: a latest round older than this is stale (default: protocol.stale_after_s)
    stale_after_s: int | None = Field(default=None, gt=0, le=30 * 86_400)
    # the volatility assumed while its source has too little history (default: risk.sigma_fallback_annual);
    # a stablecoin's feed may update once a day: without this it looks as volatile as the fallback says
    sigma_fallback_annual: float | None = Field(default=None, gt=0, le=20)


class ProtocolConfig(_Model):
    """The deployment: a deployment JSON file (written by ``keeper devchain``) or explicit addresses."""

    name: str = "reference"  # a name in keeper.protocols.registry
    deployment: Path | None = None
    engine: str | None = None
    collateral: str | None = None
    multicall: str = MULTICALL3_ADDRESS
    markets: dict[int, MarketConfig] = Field(default_factory=dict)
    # aave-v3: the market's PoolAddressesProvider, or a market name of the built-in table
    provider: str | None = None
    market: str | None = None
    start_block: int = Field(default=0, ge=0)  # where watch_all's event scan starts
    # aave-v3: a read at the head reads again only the accounts the logs name since the last read; every account
    # after this many blocks without a read (the keeper was down) or this much chain time (0: every cycle)
    full_read_after_blocks: int = Field(default=1_000, ge=1, le=100_000)
    full_read_every_s: int = Field(default=300, ge=0, le=86_400)
    # a price source whose latest round is older than this is stale (danger); Chainlink's longest heartbeat
    # on the Aave markets' feeds is a day (stablecoins), ETH/USD is an hour
    stale_after_s: int = Field(default=86_400, gt=0, le=30 * 86_400)
    assets: dict[str, AssetConfig] = Field(default_factory=dict)  # by token symbol (aave-v3, perp-v2)
    # perp-v2: the adverse market order (USD) the buffer must survive beside the index's gap: it pushes the
    # mark by the pool's depth (default: keeper.protocols.perp_v2.DEFAULT_MARK_PUSH_USD)
    mark_push_usd: float | None = Field(default=None, ge=0, le=1e12)

    @field_validator("engine", "collateral", "multicall", "provider")
    @classmethod
    def _addr(cls, v: str | None) -> str | None:
        return None if v is None else _check_address(v)

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        if v not in registry.names():
            raise ValueError(f"unknown protocol {v!r}: one of {', '.join(registry.names())}")
        return v

    @field_validator("markets", mode="before")
    @classmethod
    def _markets(cls, v: Any) -> Any:
        if isinstance(v, Mapping):  # TOML: markets = { 0 = "ETH" } or [protocol.markets.0] symbol = "ETH"
            return {k: ({"symbol": s} if isinstance(s, str) else s) for k, s in v.items()}
        return v

    @model_validator(mode="after")
    def _source(self) -> ProtocolConfig:
        if self.name == "aave-v3":
            return self._aave_source()
        if self.provider or self.market:
            raise ValueError(f"provider / market are fields of aave-v3, not of protocol {self.name!r}")
        if self.name == "perp-v2":
            if self.engine or self.collateral:
                raise ValueError("perp-v2 takes deployment = 'path/to/devchain-perp-v2.json', not engine / collateral")
            if self.deployment is None:
                raise ValueError(
                    "perp-v2 needs deployment = 'path/to/devchain-perp-v2.json' (keeper devchain writes it)"
                )
            _check_file("deployment file", self.deployment)
            return self
        if self.assets:
            raise ValueError(f"assets are fields of the account protocols, not of protocol {self.name!r}")
        if self.deployment is not None and (self.engine or self.collateral):
            raise ValueError("give either deployment (a file) or engine + collateral addresses, not both")
        if self.deployment is None and not (self.engine and self.collateral):
            raise ValueError("needs deployment = 'path/to/deployment.json' or both engine and collateral addresses")
        if self.deployment is not None:
            _check_file("deployment file", self.deployment)
        return self

    def _aave_source(self) -> ProtocolConfig:
        if self.deployment is not None or self.engine or self.collateral:
            raise ValueError(f"{self.name} takes provider or market, not deployment / engine / collateral")
        if bool(self.provider) == bool(self.market):
            raise ValueError(
                f"{self.name} needs exactly one of provider = '0x...' (the market's PoolAddressesProvider) or "
                "market = 'ethereum' (or arbitrum, base, optimism, polygon, avalanche)"
            )
        if self.market is not None:
            from keeper.protocols.aave_v3 import AAVE_V3_MARKETS  # only when this protocol is chosen

            if self.market.strip().lower() not in AAVE_V3_MARKETS:
                raise ValueError(
                    f"unknown Aave v3 market {self.market!r}: one of {', '.join(AAVE_V3_MARKETS)}, "
                    "or give its PoolAddressesProvider as provider"
                )
        return self

    @model_validator(mode="after")
    def _full_reads(self) -> ProtocolConfig:
        fields = self.model_fields_set & {"full_read_after_blocks", "full_read_every_s"}
        if fields and self.name != "aave-v3":
            raise ValueError(f"{' / '.join(sorted(fields))}: fields of aave-v3, not of protocol {self.name!r}")
        return self


class AccountConfig(_Model):
    """An account to look after: ``protect`` (the keeper may transact) or ``watch`` (alerts only)."""

    address: str
    mode: Literal["protect", "watch"] = "protect"

    @field_validator("address")
    @classmethod
    def _addr(cls, v: str) -> str:
        return _check_address(v)


class SignerConfig(_Model):
    """The key the keeper signs with: ``KEEPER_PRIVATE_KEY`` (env only) or an encrypted keystore file."""

    private_key: SecretStr | None = None
    keystore: Path | None = None
    password_file: Path | None = None
    routine_private_key: SecretStr | None = None  # optional second lane (releases); must be an approved operator

    @field_validator("private_key", "routine_private_key")
    @classmethod
    def _key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not _PRIVATE_KEY.match(v.get_secret_value().strip()):
            raise ValueError("must be 64 hex characters with an optional 0x prefix (value hidden)")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> SignerConfig:
        if self.private_key is not None and self.keystore is not None:
            raise ValueError("set either KEEPER_PRIVATE_KEY or keystore + password_file, not both")
        if self.keystore is not None:
            if self.password_file is None:
                raise ValueError("keystore needs password_file (a file holding the keystore password)")
            _check_file("keystore file", self.keystore)
            _check_file("password_file", self.password_file)
            try:
                self.password_file.read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(
                    f"password_file {str(self.password_file)!r} is not UTF-8 text (a binary file?): "
                    "write the keystore password as one line of text"
                ) from None
            except OSError as exc:
                raise ValueError(
                    f"password_file {str(self.password_file)!r} cannot be read ({exc.strerror or type(exc).__name__})"
                ) from None
        elif self.password_file is not None:
            raise ValueError("password_file given without keystore")
        return self

    @property
    def configured(self) -> bool:
        return self.private_key is not None or self.keystore is not None


def _check_file(name: str, path: Path) -> None:
    if path.is_dir():
        raise ValueError(f"{name} {str(path)!r} is a directory: give the file inside it")
    if not path.is_file():
        raise ValueError(f"{name} {str(path)!r} does not exist")


class RiskConfig(_Model):
    """Every :class:`~keeper.risk.policy.RiskPolicy` field; defaults are the policy's own defaults."""

    p_trigger: float = Field(default=_DEFAULT_POLICY.p_trigger, gt=0, lt=1)
    p_target: float = Field(default=_DEFAULT_POLICY.p_target, gt=0, lt=1)
    p_release: float = Field(default=_DEFAULT_POLICY.p_release, gt=0, lt=1)
    kappa: float = Field(default=_DEFAULT_POLICY.kappa, ge=1, le=10)
    stress_gap: float = Field(default=_DEFAULT_POLICY.stress_gap, ge=0, lt=1)
    stress_headroom: float = Field(default=_DEFAULT_POLICY.stress_headroom, ge=0, le=10)
    release_headroom: float = Field(default=_DEFAULT_POLICY.release_headroom, ge=0, le=10)
    release_min_fraction: float = Field(default=_DEFAULT_POLICY.release_min_fraction, ge=0, lt=1)
    stress_window_s: float = Field(default=_DEFAULT_POLICY.stress_window_s, ge=0, le=30 * 86_400)
    stress_factor: float = Field(default=_DEFAULT_POLICY.stress_factor, gt=0, le=20)
    stress_floor: float = Field(default=_DEFAULT_POLICY.stress_floor, ge=0, lt=1)
    stress_cap: float = Field(default=_DEFAULT_POLICY.stress_cap, ge=0, lt=1)
    stress_min_rounds: int = Field(default=_DEFAULT_POLICY.stress_min_rounds, ge=1, le=100_000)
    inclusion_latency_s: float = Field(default=_DEFAULT_POLICY.inclusion_latency_s, ge=0, le=3600)
    oracle_lag_s: float = Field(default=_DEFAULT_POLICY.oracle_lag_s, ge=0, le=3600)
    check_interval_min_s: float = Field(default=_DEFAULT_POLICY.check_interval_min_s, gt=0)
    check_interval_max_s: float = Field(default=_DEFAULT_POLICY.check_interval_max_s, gt=0, le=86_400)
    k_sigmas: float = Field(default=_DEFAULT_POLICY.k_sigmas, gt=0, le=20)
    min_action_usd: Decimal = Field(default=Decimal(_DEFAULT_POLICY.min_action_e6) / 10**6, ge=0)
    sigma_floor_annual: float = Field(default=_DEFAULT_POLICY.sigma_floor_annual, ge=0, le=20)
    sigma_fallback_annual: float = Field(default=_DEFAULT_POLICY.sigma_fallback_annual, gt=0, le=20)
    stress_tail_probability: float | None = Field(default=None, gt=0, lt=1)
    # market symbol -> CSV of years of its bars: the stress gap's long-history tail (keeper/runtime/long_history.py)
    long_history: dict[str, str] = Field(default_factory=dict)
    # cost-aware restore and release bands (keeper.risk.policy.cost_aware_bands): a transaction priced from the
    # chain's fee history and the gas token's price, idle collateral at capital_rate_annual (positions and accounts)
    cost_aware: bool = False
    capital_rate_annual: float = Field(default=0.08, ge=0, lt=10)

    @field_validator("min_action_usd")
    @classmethod
    def _usd(cls, v: Decimal) -> Decimal | None:
        return _check_usd(v)

    @model_validator(mode="after")
    def _order(self) -> RiskConfig:
        if not self.p_release < self.p_target < self.p_trigger:
            raise ValueError(
                f"need p_release < p_target < p_trigger, got {self.p_release} / {self.p_target} / {self.p_trigger}"
            )
        if self.check_interval_min_s > self.check_interval_max_s:
            raise ValueError("check_interval_min_s must be <= check_interval_max_s")
        if self.stress_headroom > self.release_headroom:
            raise ValueError("stress_headroom must be <= release_headroom")
        if self.stress_floor > self.stress_cap:
            raise ValueError("stress_floor must be <= stress_cap")
        return self

    def to_policy(self) -> RiskPolicy:
        data = self.model_dump(exclude={"long_history", "cost_aware", "capital_rate_annual"})
        data["min_action_e6"] = _usd_to_e6(data.pop("min_action_usd"))
        return RiskPolicy(**data)


class LimitsConfig(_Model):
    """Spending caps (USD) and escalation switches of the planner."""

    max_top_up_usd: Decimal = Field(default=Decimal(5_000), gt=0)
    max_per_day_usd: Decimal = Field(default=Decimal(20_000), gt=0)
    manual_approval_above_usd: Decimal | None = Field(default=None, ge=0)
    allow_release: bool = False
    allow_reduce: bool = False
    alert_only: bool = False
    urgent_probability: float = Field(default=1e-2, gt=0, le=1)

    @field_validator("max_top_up_usd", "max_per_day_usd", "manual_approval_above_usd")
    @classmethod
    def _usd(cls, v: Decimal | None) -> Decimal | None:
        return _check_usd(v)

    @model_validator(mode="after")
    def _caps(self) -> LimitsConfig:
        if self.max_top_up_usd > self.max_per_day_usd:
            raise ValueError("max_top_up_usd must be <= max_per_day_usd")
        return self

    @property
    def max_per_tx_e6(self) -> int:
        return _usd_to_e6(self.max_top_up_usd)

    @property
    def max_per_day_e6(self) -> int:
        return _usd_to_e6(self.max_per_day_usd)


class FeesConfig(_Model):
    """EIP-1559 fee policy: an absolute cap on maxFeePerGas, a tip, confirmations, replacement timing."""

    max_fee_gwei: Decimal = Field(default=Decimal(200), gt=0, le=100_000)
    priority_fee_gwei: Decimal = Field(default=Decimal("1.5"), ge=0)
    confirmations: int = Field(default=1, ge=1, le=64)
    replace_after_blocks: int = Field(default=3, ge=1, le=1_000)
    replace_after_s: float = Field(default=36.0, gt=0, le=3_600)
    # the gas token's USD price (fee caps, gas-left alert, the cost of a transaction): fixed, from a Chainlink-
    # compatible feed, or else the protocol's own price of native_symbol (keeper/runtime/native_price.py)
    native_usd: Decimal | None = Field(default=None, gt=0, le=10**9)
    native_price_feed: str | None = None
    native_symbol: str = Field(default="ETH", min_length=1, max_length=16)

    @field_validator("native_price_feed")
    @classmethod
    def _feed(cls, v: str | None) -> str | None:
        return None if v is None else _check_address(v)

    @model_validator(mode="after")
    def _tip(self) -> FeesConfig:
        if self.priority_fee_gwei > self.max_fee_gwei:
            raise ValueError("priority_fee_gwei must be <= max_fee_gwei")
        return self

    @property
    def max_fee_wei(self) -> int:
        return int(self.max_fee_gwei * 10**9)

    @property
    def priority_fee_wei(self) -> int:
        return int(self.priority_fee_gwei * 10**9)


class ImpliedVolConfig(_Model):
    """Optional implied-volatility floors per market symbol, from a JSON file or an http(s) URL."""

    source: str | None = None
    refresh_s: float = Field(default=300.0, gt=0, le=86_400)
    timeout_s: float = Field(default=5.0, gt=0, le=60)


class ScheduleConfig(_Model):
    """How often the daemon looks for news between risk-driven checks."""

    # under 0.1 s the poll is a busy loop against the node (block times are >= 0.25 s even on L2s)
    head_poll_s: float = Field(default=1.0, ge=0.1, le=60)
    stall_after_s: float = Field(default=120.0, gt=0, le=86_400)
    initial_interval_s: float = Field(default=30.0, gt=0, le=86_400)
    # SIGTERM/SIGINT: running work gets this long to finish or be journaled, then the daemon exits anyway
    shutdown_timeout_s: float = Field(default=10.0, ge=1, le=600)


class JournalConfig(_Model):
    path: Path = Path(".keeper/journal.sqlite")


class HttpConfig(_Model):
    """The /healthz + /metrics listener. Loopback only unless ``allow_public`` (metrics reveal the book)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65_535)
    allow_public: bool = False
    max_cycle_age_s: float = Field(default=600.0, gt=0)
    max_head_age_s: float = Field(default=120.0, gt=0)

    @model_validator(mode="after")
    def _loopback(self) -> HttpConfig:
        if not self.allow_public and not _is_loopback(self.host):
            raise ValueError(
                f"host {self.host!r} is not a loopback address (127.0.0.0/8, ::1, localhost); "
                "set http.allow_public = true to expose metrics beyond this machine"
            )
        return self


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AlertsConfig(_Model):
    """Webhook alerts (JSON POST, Slack-compatible), token-bucket rate limit, dedup window."""

    webhook_url: SecretStr | None = None
    rate_per_minute: float = Field(default=10.0, gt=0, le=600)
    burst: int = Field(default=5, ge=1, le=100)
    dedup_window_s: float = Field(default=900.0, ge=0)
    timeout_s: float = Field(default=5.0, gt=0, le=60)
    # alert when the signer's native balance pays for fewer top-ups than this (gas of a top-up x current fee)
    min_gas_top_ups: int = Field(default=5, ge=0, le=10_000)

    @field_validator("webhook_url")
    @classmethod
    def _url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            parts = urlsplit(v.get_secret_value())
            if parts.scheme not in {"http", "https"} or not parts.netloc:
                raise ValueError("must be an http(s):// URL (value hidden: webhook URLs carry a token)")
        return v


class LogConfig(_Model):
    format: Literal["auto", "json", "pretty"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("level", "format", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v


class KeeperConfig(_Model):
    """The whole, validated configuration (frozen). Build it with :func:`load_config`."""

    chain: ChainConfig
    protocol: ProtocolConfig
    accounts: tuple[AccountConfig, ...] = ()
    watch_all: bool = False
    signer: SignerConfig = SignerConfig()
    risk: RiskConfig = RiskConfig()
    limits: LimitsConfig = LimitsConfig()
    fees: FeesConfig = FeesConfig()
    journal: JournalConfig = JournalConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    implied_vol: ImpliedVolConfig = ImpliedVolConfig()
    http: HttpConfig = HttpConfig()
    alerts: AlertsConfig = AlertsConfig()
    log: LogConfig = LogConfig()
    dry_run: bool = False

    @model_validator(mode="after")
    def _book(self) -> KeeperConfig:
        if not self.accounts and not self.watch_all:
            raise ValueError("no accounts: add [[accounts]] entries or set watch_all = true")
        seen: set[str] = set()
        for a in self.accounts:
            if a.address.lower() in seen:
                raise ValueError(f"account {a.address} is listed twice")
            seen.add(a.address.lower())
        if self.protected_accounts and not self.dry_run and not self.limits.alert_only and not self.signer.configured:
            raise ValueError(
                "accounts in protect mode need a signer: set KEEPER_PRIVATE_KEY or signer.keystore + "
                "signer.password_file (or dry_run = true, or limits.alert_only = true)"
            )
        return self

    @property
    def protected_accounts(self) -> tuple[str, ...]:
        return tuple(a.address for a in self.accounts if a.mode == "protect")

    @property
    def watched_accounts(self) -> tuple[str, ...]:
        return tuple(a.address for a in self.accounts if a.mode == "watch")

    def risk_policy(self) -> RiskPolicy:
        return self.risk.to_policy()

    def plan_limits(self) -> PlanLimits:
        policy = self.risk_policy()
        approval = self.limits.manual_approval_above_usd
        return PlanLimits.from_policy(
            policy,
            max_per_tx_e6=self.limits.max_per_tx_e6,
            max_per_day_e6=self.limits.max_per_day_e6,
            manual_approval_above_e6=None if approval is None else _usd_to_e6(approval),
            allow_release=self.limits.allow_release,
            allow_reduce=self.limits.allow_reduce,
            alert_only=self.limits.alert_only,
            urgent_probability=self.limits.urgent_probability,
        )


# ---- loading ---------------------------------------------------------------------------------------

_SECTIONS = {name for name, f in KeeperConfig.model_fields.items()}


def _env_value(name: str, raw: str) -> Any:
    raw = raw.strip()
    if raw.startswith(("[", "{")):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def _split_list(raw: Any) -> Any:
    return [p.strip() for p in raw.split(",") if p.strip()] if isinstance(raw, str) else raw


def _accounts_from_env(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    out = []
    for item in _split_list(raw):
        address, _, mode = item.partition(":")
        out.append({"address": address, **({"mode": mode} if mode else {})})
    return out


def _apply_env(data: dict[str, Any], env: Mapping[str, str], origin: dict[tuple[str, ...], str]) -> None:
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in RESERVED_ENV or not env[name].strip():
            continue  # empty means unset (a copied .env.example has empty secrets)
        path: tuple[str, ...]
        if name in ENV_ALIASES:
            path = ENV_ALIASES[name]
        else:
            path = tuple(p.lower() for p in name[len(ENV_PREFIX) :].split("__"))
            if path[0] not in _SECTIONS:
                continue  # not ours (KEEPER_HOME, ...); nested typos below a section are rejected
        value = _env_value(name, env[name])
        if path == ("chain", "rpc_urls"):
            value = _split_list(value)
        elif path == ("accounts",):
            value = _accounts_from_env(value)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
        origin[path] = name


def _is_secret(loc: tuple[Any, ...]) -> bool:
    """Fields whose value is never shown: the secret ones and anything in [signer] but the two paths."""
    if loc and str(loc[0]) == "signer" and tuple(map(str, loc[1:])) not in {("keystore",), ("password_file",)}:
        return True
    return any(str(p) in SECRET_FIELDS for p in loc)


def known_secrets(config: KeeperConfig) -> tuple[str, ...]:
    """Exact strings to mask in every log line: keys, keystore password, webhook URL, RPC URL credentials."""
    out: list[str] = []
    for secret in (config.signer.private_key, config.signer.routine_private_key, config.alerts.webhook_url):
        if secret is not None:
            value = secret.get_secret_value().strip()
            out += [value, value.removeprefix("0x")]
    if config.signer.password_file is not None:
        try:
            password = config.signer.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError):
            password = ""
        if password:
            out.append(password)
    for url in config.chain.rpc_urls:
        out += url_secrets(url)
    return tuple(dict.fromkeys(out))


def _describe(err: Mapping[str, Any], origin: Mapping[tuple[str, ...], str], source: str) -> tuple[str, str]:
    loc = tuple(str(p) for p in err["loc"])
    field = ".".join(loc) if loc else "(top level)"
    where = next((f" (from ${v})" for k, v in origin.items() if loc[: len(k)] == k), f" (in {source})")
    msg = mask_text(err["msg"].removeprefix("Value error, "))
    unknown = err["type"] == "extra_forbidden"
    if unknown:
        msg = "unknown field (check the spelling; see examples/keeper.toml; value hidden)"
    elif err["type"] == "model_type":
        msg = f"must be a [{field}] table of fields, not a single value (see examples/keeper.toml)"
    value = err.get("input")
    scalar = isinstance(value, str | int | float | bool | Decimal) or (
        isinstance(value, list | tuple) and all(isinstance(v, str | int | float) for v in value)
    )
    # a section's own check receives the whole section (which may hold a secret): show scalars only; an
    # unknown field may be a misspelled secret (`privatekey`, `password`): never shown; what is shown is masked
    shown = ""
    if scalar and not unknown and not _is_secret(loc) and err["type"] != "missing":
        shown = f" = {mask_text(repr(value))}"
    return field, f"{field}{shown}{where}: {msg}"


def load_config(
    path: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None = None,
    *,
    dotenv_path: str | os.PathLike[str] | None = ".env",
) -> KeeperConfig:
    """Read the TOML file at ``path`` (``None``: environment only), overlay ``.env`` then ``env``.

    ``env`` defaults to ``os.environ``; ``dotenv_path`` (default ``.env`` in the working directory;
    ``None`` to skip) is read with python-dotenv without touching ``os.environ``. Raises
    :class:`ConfigError` (``.field`` = dotted path) on the first file problem or with every
    validation problem listed, one per line.
    """
    env = os.environ if env is None else env
    source = "defaults"
    data: dict[str, Any] = {}
    problem: ConfigError | None = None
    if path is not None:
        source = str(path)
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {source!r} does not exist", field="--config") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {source!r} is not valid TOML: {exc}", field="--config") from None
        signer = data.get("signer", {})
        if isinstance(signer, Mapping) and {"private_key", "routine_private_key"} & set(signer):
            raise ConfigError(
                "signer.private_key must not be written in the config file (value hidden): "
                "set KEEPER_PRIVATE_KEY in the environment or .env, or use signer.keystore",
                field="signer.private_key",
            )
    merged: dict[str, str] = {}
    if dotenv_path is not None and Path(dotenv_path).is_file():
        merged.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
    merged.update(env)
    origin: dict[tuple[str, ...], str] = {}
    _apply_env(data, merged, origin)
    try:
        return KeeperConfig.model_validate(data)
    except ValidationError as exc:
        described = [_describe(e, origin, source) for e in exc.errors()]
        problem = ConfigError(
            "invalid configuration: " + "; ".join(text for _, text in described),
            field=described[0][0] if described else None,
        )
    # raised here, outside the `except`, so the pydantic error (which holds the inputs) is not chained
    raise problem
