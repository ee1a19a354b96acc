"""structlog setup: timestamps, secret redaction, JSON off a terminal and colours on one.

Event names are stable snake_case (``cycle_done``, ``top_up_planned``, ``tx_sent``) with key/value
fields. :class:`SecretRedactor` runs last before rendering (after exception formatting), so a private
key, password or mnemonic is masked wherever it appears: as a field named like a secret, as a value
shaped like a key (``0x`` + 64 hex), inside a string (an exception message, a traceback), or nested in
dicts and lists. Fields whose name ends in ``hash`` (``tx_hash``, ``block_hash``) keep 32-byte hex values,
which have the same shape as a key but are public.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["REDACTED", "SecretRedactor", "configure_logging"]

REDACTED = "***redacted***"
_HEX32 = re.compile(r"(?<![0-9a-fA-F])(0x)?[0-9a-fA-F]{64}(?![0-9a-fA-F])")
_SECRET_NAMES = ("private_key", "privkey", "secret", "password", "passphrase", "mnemonic", "seed", "webhook_url")
_MNEMONIC = re.compile(r"^\s*(?:[a-z]{3,8}\s+){11,23}[a-z]{3,8}\s*$")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class SecretRedactor:
    """A structlog processor masking secrets in an event dict (choices fixed at construction).

    ``extra_names``: more substrings that mark a field as secret; ``public_hash_suffixes``: field-name
    suffixes whose 32-byte hex values are public (transaction and block hashes).
    """

    def __init__(
        self,
        extra_names: Iterable[str] = (),
        public_hash_suffixes: Iterable[str] = ("hash", "hashes", "topic", "topics", "root"),
    ) -> None:
        self._names = tuple(n.lower() for n in (*_SECRET_NAMES, *extra_names))
        self._public = tuple(s.lower() for s in public_hash_suffixes)

    def _secret_name(self, name: str) -> bool:
        low = name.lower()
        return any(n in low for n in self._names)

    def _public_name(self, name: str) -> bool:
        return name.lower().endswith(self._public)

    def _clean(self, value: Any, public: bool) -> Any:
        if isinstance(value, str):
            if _MNEMONIC.match(value):
                return REDACTED
            return value if public else _HEX32.sub(REDACTED, value)
        if isinstance(value, bytes) and len(value) == 32 and not public:
            return REDACTED
        if isinstance(value, Mapping):
            return {k: self._field(str(k), v) for k, v in value.items()}
        if isinstance(value, set | frozenset):
            value = sorted(value, key=repr)
        if isinstance(value, list):
            return [self._clean(v, public) for v in value]
        if isinstance(value, tuple):
            return tuple(self._clean(v, public) for v in value)
        return value

    def _field(self, name: str, value: Any) -> Any:
        if self._secret_name(name) and value is not None:
            return REDACTED
        return self._clean(value, self._public_name(name))

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        return {k: self._field(str(k), v) for k, v in event_dict.items()}


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def processors(fmt: Literal["json", "pretty"]) -> list[Processor]:
    """The processor chain for ``fmt`` (exposed for tests and for the daemon's own loggers)."""
    chain: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    # exceptions are turned into text before the redactor so a key inside a traceback is masked too
    chain += [structlog.processors.format_exc_info, SecretRedactor()]
    if fmt == "json":
        chain.append(structlog.processors.JSONRenderer(sort_keys=True))
    else:
        chain.append(structlog.dev.ConsoleRenderer(colors=True))
    return chain


def configure_logging(
    fmt: Literal["auto", "json", "pretty"] = "auto",
    level: str | int = "info",
    stream: TextIO | None = None,
) -> Literal["json", "pretty"]:
    """Configure structlog globally for the process; returns the format chosen (``auto`` -> pretty on a TTY).

    Raises ``ValueError`` for an unknown format or level (the config layer validates both first).
    """
    stream = sys.stderr if stream is None else stream
    if fmt not in ("auto", "json", "pretty"):
        raise ValueError(f"log format must be auto, json or pretty, got {fmt!r}")
    if isinstance(level, str):
        if level.lower() not in _LEVELS:
            raise ValueError(f"log level must be one of {', '.join(_LEVELS)}, got {level!r}")
        level = _LEVELS[level.lower()]
    chosen: Literal["json", "pretty"] = ("pretty" if _is_tty(stream) else "json") if fmt == "auto" else fmt
    structlog.configure(
        processors=processors(chosen),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    return chosen
