"""The keeper's signing key: an eth_account ``LocalAccount`` from ``KEEPER_PRIVATE_KEY`` or a keystore.

Errors say what is wrong (missing file, not a keystore, wrong password, key not on the curve) and never
contain the key or the password: they are raised outside the library's exception (no chained context
that a traceback would print).
"""

from __future__ import annotations

import json
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from keeper.errors import ConfigError
from keeper.runtime.config import SignerConfig

__all__ = ["load_signer"]


def _from_key(key: str, variable: str = "KEEPER_PRIVATE_KEY", field: str = "signer.private_key") -> LocalAccount:
    problem: str | None = None
    try:
        return Account.from_key(key.strip())
    except Exception as exc:  # noqa: BLE001 - any error (eth_keys ValidationError, ValueError, ...) may echo the key
        problem = f"{variable} is not a valid secp256k1 private key ({type(exc).__name__}; value hidden)"
    raise ConfigError(problem, field=field)


def load_routine_signer(config: SignerConfig) -> LocalAccount | None:
    """The optional second signer of the routine lane (releases), or ``None`` when not configured."""
    if config.routine_private_key is None:
        return None
    return _from_key(
        config.routine_private_key.get_secret_value(), "KEEPER_ROUTINE_PRIVATE_KEY", "signer.routine_private_key"
    )


def _from_keystore(keystore: Path, password_file: Path) -> LocalAccount:
    try:
        keyfile = json.loads(keystore.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"keystore file {str(keystore)!r} does not exist", field="signer.keystore") from None
    except IsADirectoryError:
        raise ConfigError(
            f"keystore {str(keystore)!r} is a directory: give the keystore file inside it", field="signer.keystore"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"keystore file {str(keystore)!r} is not a JSON keystore ({type(exc).__name__})", field="signer.keystore"
        ) from None
    try:
        password = password_file.read_text(encoding="utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(
            f"password_file {str(password_file)!r} is not UTF-8 text (a binary file?): write the password as one line",
            field="signer.password_file",
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"password_file {str(password_file)!r} cannot be read ({type(exc).__name__})", field="signer.password_file"
        ) from None
    problem: ConfigError | None = None
    try:
        key = Account.decrypt(keyfile, password)
    except ValueError as exc:
        wrong = "MAC mismatch" in str(exc)
        problem = ConfigError(
            f"cannot decrypt keystore {str(keystore)!r}: "
            + ("wrong password (MAC mismatch)" if wrong else "unsupported or damaged keystore"),
            field="signer.password_file" if wrong else "signer.keystore",
        )
    except Exception as exc:  # noqa: BLE001 - malformed keystore JSON structure (KeyError, TypeError, ...)
        problem = ConfigError(
            f"cannot decrypt keystore {str(keystore)!r}: not a v3 keystore ({type(exc).__name__})",
            field="signer.keystore",
        )
    if problem is not None:
        raise problem
    return Account.from_key(key)


def load_signer(config: SignerConfig) -> LocalAccount:
    """The account the keeper signs with; :class:`ConfigError` when none is configured or it is unusable."""
    if config.private_key is not None:
        return _from_key(config.private_key.get_secret_value())
    if config.keystore is not None and config.password_file is not None:
        return _from_keystore(config.keystore, config.password_file)
    raise ConfigError(
        "no signer configured: set KEEPER_PRIVATE_KEY or signer.keystore + signer.password_file",
        field="signer",
    )
