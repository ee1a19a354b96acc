"""The ``keeper`` command line: wires the command modules of ``keeper.commands`` into one typer app.

Each module in ``keeper/commands/`` exposes ``register(app: typer.Typer) -> None``. Errors the keeper
raises on purpose are printed as one line naming what is wrong (no traceback, which could carry a
secret) with a non-zero exit: 2 for bad configuration or input, 1 otherwise.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

from keeper import commands
from keeper.errors import ConfigError, InputError, KeeperError

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="keeper",
        help="margin keeper: keeps leveraged perpetual positions away from liquidation.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @app.callback()
    def _root() -> None:
        """margin keeper: keeps leveraged perpetual positions away from liquidation."""

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"keeper.commands.{info.name}")
        module.register(app)
    return app


def main(argv: list[str] | None = None) -> None:
    app = build_app()
    try:
        app(args=argv, prog_name="keeper")  # standalone: usage errors exit 2 with click's message
    except (ConfigError, InputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeeperError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_FAILURE)
