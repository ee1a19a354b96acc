"""The keeper's exception tree, named by what the caller should do next.

::

    KeeperError
    ├── ConfigError            bad configuration: report field, value, what is allowed; exit 2
    ├── InputError             bad user input (CLI arguments, CSV files): report and exit 2
    ├── ToolchainError         anvil/forge/node missing: say how to install it
    ├── ChainError
    │   ├── TransientRpcError  timeout, connection error, 429, 5xx: retry with backoff or fail over
    │   ├── ChainMismatchError wrong chain id, no code at an address: halt
    │   └── RpcRejectedError   the node refused the request (bad params, unsupported): do not retry
    ├── TransactionError
    │   ├── SimulationRevert   eth_call says it would revert: do not sign; ``reason`` is decoded
    │   ├── TransactionRejected the node refused a signed tx (nonce too low, underpriced): manager decides
    │   └── Reverted           mined with status 0
    └── HaltError              unsafe to continue (journal inconsistent, limits breached): stop
"""

from __future__ import annotations


class KeeperError(Exception):
    """Root of every error the keeper raises on purpose."""


class ConfigError(KeeperError):
    """A configuration value is invalid. ``field`` names it; the message says what is allowed."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InputError(KeeperError):
    """User input (command-line arguments, data files) is invalid."""


class ToolchainError(KeeperError):
    """A required tool (anvil, forge, node) is missing or broken; the message says how to get it."""


class ChainError(KeeperError):
    """Something went wrong talking to a chain."""


class TransientRpcError(ChainError):
    """Timeout, connection error, HTTP 429 or 5xx: safe to retry a read or fail over."""


class ChainMismatchError(ChainError):
    """The chain is not the one configured (chain id, missing contract code)."""


class RpcRejectedError(ChainError):
    """The node answered with an error that retrying will not fix."""


class TransactionError(KeeperError):
    """A transaction could not be made to succeed."""


class SimulationRevert(TransactionError):
    """``eth_call`` shows the call would revert; it was not signed."""

    def __init__(self, reason: str, data: bytes | None = None) -> None:
        super().__init__(f"simulation reverted: {reason}")
        self.reason = reason
        self.data = data


class TransactionRejected(TransactionError):
    """The node refused a signed transaction."""


class Reverted(TransactionError):
    """A transaction was mined with status 0."""


class HaltError(KeeperError):
    """Continuing would be unsafe; the daemon stops."""
