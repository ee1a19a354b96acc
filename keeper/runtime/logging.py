"""structlog setup: timestamps, secret redaction, JSON off a terminal and colours on one.

Event names are stable snake_case (``cycle_done``, ``top_up_planned``, ``tx_sent``) with key/value
fields. :class:`SecretRedactor` runs last before rendering (after exception formatting), so a private
key, password or mnemonic is masked wherever it appears: as a field named like a secret, as a value
shaped like a key (``0x`` + 64 hex), inside a string (an exception message, a traceback), or nested in
dicts and lists. Fields whose name ends in ``hash`` (``tx_hash``, ``block_hash``) keep 32-byte hex values,
which have the same shape as a key but are public. URL credentials become ``scheme://host:port/…`` and the
configured secrets (``known_secrets``: keystore password, RPC URL paths and queries) are masked as text.

Third-party libraries log through stdlib ``logging`` (APScheduler, urllib3, web3): one root handler with a
structlog ``ProcessorFormatter`` renders their records with the same redaction and renderer, so no
plain-text line lands in the JSON log.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from typing import Any, Literal, TextIO, cast

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from keeper.redact import REDACTED, DataMasker

__all__ = ["REDACTED", "SecretRedactor", "configure_logging", "route_stdlib_logging"]

_SECRET_NAMES = ("private_key", "privkey", "secret", "password", "passphrase", "mnemonic", "seed", "webhook_url")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# third-party loggers (apscheduler, urllib3, web3, websockets) below this level are dropped: at info
# APScheduler writes a line per job run (the head poll runs every second)
FOREIGN_MIN_LEVEL = logging.WARNING


class SecretRedactor:
    """A structlog processor masking secrets in an event dict (choices fixed at construction).

    ``extra_names``: more substrings that mark a field as secret; ``public_hash_suffixes``: field-name
    suffixes whose 32-byte hex values are public (transaction and block hashes); ``known``: exact strings
    to mask anywhere (the keystore password, the secret parts of configured URLs). URL credentials are
    masked to ``scheme://host:port/…`` (:func:`keeper.redact.mask_text`).
    """

    def __init__(
        self,
        extra_names: Iterable[str] = (),
        public_hash_suffixes: Iterable[str] = ("hash", "hashes", "topic", "topics", "root"),
        known: Iterable[str] = (),
    ) -> None:
        self._names = tuple(n.lower() for n in (*_SECRET_NAMES, *extra_names))
        self._public = tuple(s.lower() for s in public_hash_suffixes)
        self._known = tuple(k for k in known if k)
        self._mask = DataMasker(known=self._known, secret_names=self._names, public_suffixes=self._public)

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        return cast(EventDict, self._mask(event_dict))  # a new dict: the masker copies every mapping it cleans


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _renderer(fmt: Literal["json", "pretty"]) -> Processor:
    if fmt == "json":
        return structlog.processors.JSONRenderer(serializer=_JsonLine(), sort_keys=True)
    return structlog.dev.ConsoleRenderer(colors=True)


class _JsonLine:
    """``json.dumps`` for the renderer, with one encoder made on the first line and kept: ``json.dumps`` with any
    option builds a new :class:`json.JSONEncoder` on every call. Same options (the renderer's ``sort_keys`` and
    structlog's fallback for what JSON has no type for), hence the same text."""

    def __init__(self) -> None:
        self._encoder: json.JSONEncoder | None = None

    def __call__(self, event_dict: EventDict, **options: Any) -> str:
        if self._encoder is None:
            self._encoder = json.JSONEncoder(**options)
        return self._encoder.encode(event_dict)


def processors(fmt: Literal["json", "pretty"], known: Iterable[str] = ()) -> list[Processor]:
    """The processor chain for ``fmt`` (exposed for tests and for the daemon's own loggers)."""
    chain: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    # exceptions are turned into text before the redactor so a key inside a traceback is masked too
    return [*chain, structlog.processors.format_exc_info, SecretRedactor(known=known), _renderer(fmt)]


class _ForeignHandler(logging.StreamHandler):
    """Marks the root handler installed by :func:`configure_logging` (replaced, not stacked, on a second call)."""


def route_stdlib_logging(
    fmt: Literal["json", "pretty"], stream: TextIO, known: Iterable[str] = (), level: int = FOREIGN_MIN_LEVEL
) -> None:
    """Send every stdlib ``logging`` record (APScheduler, urllib3, web3...) through the same redaction and renderer.

    One handler on the root logger with a structlog ``ProcessorFormatter``: the record's message and
    traceback become fields of one JSON (or pretty) line, masked like the keeper's own events.
    """
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_logger_name,
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            SecretRedactor(known=known),
            _renderer(fmt),
        ],
    )
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, _ForeignHandler)]:
        root.removeHandler(h)
    handler = _ForeignHandler(stream)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(level)


def configure_logging(
    fmt: Literal["auto", "json", "pretty"] = "auto",
    level: str | int = "info",
    stream: TextIO | None = None,
    known_secrets: Iterable[str] = (),
) -> Literal["json", "pretty"]:
    """Configure structlog (and stdlib logging) for the process; returns the format chosen
    (``auto`` -> pretty on a TTY).

    ``known_secrets``: exact strings masked in every line (keystore password, secret parts of RPC URLs).
    Third-party stdlib loggers are routed through the same chain at ``FOREIGN_MIN_LEVEL`` or above.
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
    known = tuple(known_secrets)
    structlog.configure(
        processors=processors(chosen, known),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    route_stdlib_logging(chosen, stream, known, max(level, FOREIGN_MIN_LEVEL))
    return chosen
