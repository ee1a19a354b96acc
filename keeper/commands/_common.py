"""Shared plumbing of the commands that talk to a deployment (run, check, status, stress)."""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from keeper.errors import ConfigError
from keeper.runtime.config import KeeperConfig, known_secrets, load_config
from keeper.runtime.logging import configure_logging

if TYPE_CHECKING:
    from keeper.runtime.service import KeeperService

CONFIG_OPTION = typer.Option(
    None, "--config", "-c", envvar="KEEPER_CONFIG", help="TOML configuration file (see examples/keeper.toml)."
)
ENV_FILE_OPTION = typer.Option(
    Path(".env"), "--env-file", envvar="KEEPER_ENV_FILE", help="dotenv file read for KEEPER_* variables."
)


def load(config: Path | None, env_file: Path | None, *, log_level: str | None = None) -> KeeperConfig:
    """Load and validate the configuration (ConfigError -> exit 2 in keeper.cli) and set up logging.

    The configured secrets (keys, keystore password, RPC URL credentials) are masked in every log line.
    """
    cfg = load_config(config, dotenv_path=env_file)
    configure_logging(cfg.log.format, log_level or cfg.log.level, known_secrets=known_secrets(cfg))
    return cfg


def service_class(protocol: str) -> type[KeeperService]:
    """The service for ``protocol``: positions (the reference protocol) or margin accounts (Aave v3)."""
    from keeper.protocols import registry

    if registry.is_account_protocol(protocol):
        from keeper.runtime.accounts_service import AccountKeeperService

        return AccountKeeperService
    from keeper.runtime.service import KeeperService

    return KeeperService


def check_http_port(cfg: KeeperConfig) -> None:
    """Fail with a one-line :class:`ConfigError` when the health listener cannot bind ``http.host:http.port``.

    Called before the journal is opened or anything is sent, so a port already in use stops the daemon
    while nothing has happened yet. Port 0 (any free port) always binds. Binds the way the listener
    does (``SO_REUSEADDR``, like ``http.server``), then closes.
    """
    if not cfg.http.enabled or cfg.http.port == 0:
        return
    where = f"{cfg.http.host}:{cfg.http.port}"
    try:
        infos = socket.getaddrinfo(cfg.http.host, cfg.http.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"http.host {cfg.http.host!r} does not resolve ({exc.strerror})", field="http.host") from None
    family, kind, proto, _, address = infos[0]
    problem: str | None = None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                problem = (
                    f"http.port {cfg.http.port} on {cfg.http.host} is already in use (another keeper?): "
                    "stop that process or choose another http.port (0 = any free port)"
                )
            else:
                problem = f"cannot listen on {where} ({exc.strerror or type(exc).__name__}): set http.host/http.port"
    if problem is not None:
        raise ConfigError(problem, field="http.port")
