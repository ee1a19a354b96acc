"""The ``keeper`` command line: wires the command modules of ``keeper.commands`` into one typer app.

Each module in ``keeper/commands/`` exposes ``register(app: typer.Typer) -> None``. Errors the keeper
raises on purpose are printed as one line naming what is wrong (no traceback, which could carry a
secret) with a non-zero exit: 2 for bad configuration or input, 1 otherwise.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback

import typer

from keeper import commands
from keeper.errors import ChainError, HaltError, KeeperError, TransactionError
from keeper.redact import mask_text

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention


def build_app(command: str | None = None) -> typer.Typer:
    """The app with every command module's commands; with ``command`` the name of a module in
    ``keeper.commands`` (``keeper risk ...``), that module's only: a command loads its own dependencies, not every
    other command's (the daemon, web3, the dev chain tooling: ~2 s of start-up ``keeper risk`` does not need)."""
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

    names = sorted(m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_"))
    for name in [command] if command in names else names:
        importlib.import_module(f"keeper.commands.{name}").register(app)
    return app


def exit_code(exc: KeeperError) -> int:
    """2 for bad configuration or input (config, journal, files: fix and rerun), 1 for a runtime failure or a halt."""
    return EXIT_FAILURE if isinstance(exc, ChainError | TransactionError | HaltError) else EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    try:
        app = build_app(args[0] if args else None)
    except KeyboardInterrupt:  # Ctrl-C while the commands load: nothing started, nothing to report
        sys.exit(EXIT_INTERRUPTED)
    try:
        app(args=argv, prog_name="keeper")  # standalone: usage errors exit 2 with click's message
    except KeeperError as exc:
        # masked: a message may quote a URL with credentials or a key-shaped value
        line = " ".join(mask_text(str(exc)).split())
        print(f"error: {line}", file=sys.stderr)
        sys.exit(exit_code(exc))
    # a bug, not bad input: keep the traceback for the report, without secrets
    except Exception:  # noqa: BLE001 - top-level boundary of the CLI, must catch everything
        print(mask_text(traceback.format_exc()), file=sys.stderr, end="")
        sys.exit(EXIT_FAILURE)
