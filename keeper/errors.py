"""The keeper's exception tree, named by what the caller should do next.

::

    KeeperError
    ├── ConfigError            bad configuration: report field, value, what is allowed; exit 2
    ├── InputError             bad user input (CLI arguments, CSV files): report and exit 2
    │   └── JournalError       the journal file cannot be opened (corrupt, a folder, no permission)
    ├── ToolchainError         anvil/forge/node missing: say how to install it
    ├── ChainError
    │   ├── TransientRpcError  timeout, connection error, 429, 5xx: retry with backoff or fail over
    │   ├── ChainMismatchError wrong chain id, no code at an address: halt
    │   └── RpcRejectedError   the node refused the request (bad params, unsupported): do not retry
    ├── TransactionError
    │   ├── SimulationRevert   eth_call says it would revert: do not sign; ``reason`` is decoded
    │   ├── TransactionRejected the node refused a signed tx (nonce too low, underpriced): manager decides
    │   ├── LaneBlocked        the lane's key has transactions pending that the journal does not know
    │   └── Reverted           mined with status 0
    └── HaltError              unsafe to continue (journal inconsistent, limits breached): stop
        ├── JournalBusy        another process holds the journal's writer lock: refuse to send
        └── SenderConflict     another process signs with our key (nonces we did not sign): stop sending
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


class JournalError(InputError):
    """The journal file cannot be opened or used; the message names the path and the fix (one line)."""


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


class LaneBlocked(TransactionError):
    """The lane's key has transactions pending on chain that the journal does not know: act on nothing for it
    until they are final (they may be ours from a lost journal)."""


class Reverted(TransactionError):
    """A transaction was mined with status 0."""


class HaltError(KeeperError):
    """Continuing would be unsafe; the daemon stops."""


class JournalBusy(HaltError):
    """Another process holds the journal's exclusive writer lock: this one must not send."""


class SenderConflict(HaltError):
    """Nonces of our key advanced that this process did not sign: a second sender uses the key."""
