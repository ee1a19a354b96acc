"""Shared plumbing of the commands that talk to a deployment (run, check, status, stress)."""

from __future__ import annotations

from pathlib import Path

import typer

from keeper.runtime.config import KeeperConfig, load_config
from keeper.runtime.logging import configure_logging

CONFIG_OPTION = typer.Option(
    None, "--config", "-c", envvar="KEEPER_CONFIG", help="TOML configuration file (see examples/keeper.toml)."
)
ENV_FILE_OPTION = typer.Option(
    Path(".env"), "--env-file", envvar="KEEPER_ENV_FILE", help="dotenv file read for KEEPER_* variables."
)


def load(config: Path | None, env_file: Path | None, *, log_level: str | None = None) -> KeeperConfig:
    """Load and validate the configuration (ConfigError -> exit 2 in keeper.cli) and set up logging."""
    cfg = load_config(config, dotenv_path=env_file)
    configure_logging(cfg.log.format, log_level or cfg.log.level)
    return cfg
