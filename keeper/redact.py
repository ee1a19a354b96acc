"""Masking of secrets in text and plain data (pure: no I/O, no logging).

What is masked, wherever it appears (config errors, log lines, tracebacks, ``--json`` output):

* any value shaped like a private key: 64 hex digits, with or without ``0x`` (a 32-byte transaction or
  block hash has the same shape; callers keep those only under field names that say ``hash``);
* URL credentials: a URL with userinfo (``user:pass@``), a path or a query (where providers put API
  keys, ``https://host/v2/KEY``) is shown as ``scheme://host:port/…``; a bare ``user:pass@host`` too;
* the exact strings given as ``known`` (the keystore password, configured URLs' secret parts).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["REDACTED", "DataMasker", "mask_data", "mask_text", "mask_url", "url_secrets"]

REDACTED = "***redacted***"
_HEX32 = re.compile(r"(?<![0-9a-fA-F])(0x)?[0-9a-fA-F]{64}(?![0-9a-fA-F])")
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>`]+")
_USERINFO = re.compile(r"(?<![\w/])[^\s:/@'\"<>]+:[^\s/@'\"<>]+@(?=[\w.\[\]-])")
_MNEMONIC = re.compile(r"^\s*(?:[a-z]{3,8}\s+){11,23}[a-z]{3,8}\s*$")
_TRAILING = ".,;:)]}"
# RFC 3986 section 3 split (regex, not urllib: this module is pure core): scheme, userinfo, host, port, rest
_PARTS = re.compile(
    r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*)://(?:(?P<userinfo>[^@/?#]*)@)?"
    r"(?P<host>\[[^\]/]*\]|[^:/?#]*)(?::(?P<port>[^/?#]*))?(?P<path>[^?#]*)(?P<tail>[?#].*)?$"
)


def _split(url: str) -> re.Match[str] | None:
    return _PARTS.match(url)


def mask_url(url: str) -> str:
    """``url`` without credentials: ``scheme://host[:port]/…`` when it has userinfo, a path or a query."""
    m = _split(url)
    if m is None or not m["host"]:
        return url
    port = m["port"]
    if port is not None and not (port.isdigit() and int(port) <= 65_535):  # a bad port: show the scheme only
        return f"{m['scheme']}://…"
    if m["userinfo"] is None and not m["path"].strip("/") and not m["tail"]:
        return url
    return f"{m['scheme']}://{m['host']}{f':{port}' if port else ''}/…"


def url_secrets(url: str) -> tuple[str, ...]:
    """The parts of ``url`` that may be credentials (userinfo, path, query), to mask as ``known`` strings."""
    m = _split(url)
    if m is None:
        return (url,)
    user, _, password = (m["userinfo"] or "").partition(":")
    out = [user, password, (m["tail"] or "").lstrip("?#")]
    if m["path"].strip("/"):
        out.append(m["path"].rstrip("/"))
    return tuple(p for p in out if len(p) >= 4)


def _url_sub(match: re.Match[str]) -> str:
    url = match.group(0)
    tail = ""
    while url and url[-1] in _TRAILING:
        url, tail = url[:-1], url[-1] + tail
    return mask_url(url) + tail


def mask_text(text: str, known: Iterable[str] = ()) -> str:
    """``text`` with key-shaped values, URL credentials and every ``known`` string masked."""
    return _mask_text(text, _longest_first(known))


def _mask_text(text: str, known: tuple[str, ...]) -> str:
    # each pattern is tried only where it can match (a URL needs "://", userinfo an "@", a key 64 hex digits in
    # a row): a log line's dozens of strings cost a substring test each, not three regular expressions
    text = _mask_urls(_replace_known(text, known))
    return _HEX32.sub(REDACTED, text) if _has_hex_run(text) else text


_HEX_BYTES = bytes(1 if chr(i) in "0123456789abcdefABCDEF" else 0 for i in range(256))
_HEX_RUN = b"\x01" * 64


def _has_hex_run(text: str) -> bool:
    """Whether ``text`` holds 64 hex digits in a row (what a key needs): one pass in C over its UTF-8 bytes
    (a non-ASCII character is never a hex digit), against the regular expression's attempt at every position."""
    return len(text) >= 64 and _HEX_RUN in text.encode("utf-8", "surrogatepass").translate(_HEX_BYTES)


def _mask_urls(text: str) -> str:
    if "://" in text:
        text = _URL.sub(_url_sub, text)
    return _USERINFO.sub(REDACTED + "@", text) if "@" in text else text


def mask_data(
    value: Any,
    *,
    known: Iterable[str] = (),
    secret_names: Iterable[str] = (),
    public_suffixes: Iterable[str] = ("hash", "hashes"),
) -> Any:
    """``value`` (nested dicts, lists, tuples, strings) with secrets masked; mapping keys decide per field.

    A field whose name contains one of ``secret_names`` is masked whole; one whose name ends with a
    ``public_suffixes`` entry keeps 64-hex values (hashes are public) but still has URLs and ``known``
    strings masked.
    """
    return DataMasker(known=known, secret_names=secret_names, public_suffixes=public_suffixes)(value)


class DataMasker:
    """:func:`mask_data` with its choices fixed once, for masking many values (a log line each): what a field
    name says (secret, public) is remembered per name, for the first ``FIELD_NAMES_KEPT`` names."""

    FIELD_NAMES_KEPT = 4_096

    def __init__(
        self,
        *,
        known: Iterable[str] = (),
        secret_names: Iterable[str] = (),
        public_suffixes: Iterable[str] = ("hash", "hashes"),
    ) -> None:
        self._known = _longest_first(known)
        self._names = tuple(n.lower() for n in secret_names)
        self._public = tuple(s.lower() for s in public_suffixes)
        self._fields: dict[str, tuple[bool, bool]] = {}

    def __call__(self, value: Any) -> Any:
        return self._clean(value, False)

    def _clean(self, v: Any, is_public: bool) -> Any:
        if v is None or v.__class__ in _SCALARS:
            return v
        if isinstance(v, str):
            if _MNEMONIC.match(v):
                return REDACTED
            if is_public:
                return _mask_urls(_replace_known(v, self._known))
            return _mask_text(v, self._known)
        if isinstance(v, bytes) and len(v) == 32 and not is_public:
            return REDACTED
        if isinstance(v, Mapping):
            return self._mapping(v)
        if isinstance(v, set | frozenset):
            v = sorted(v, key=repr)
        if isinstance(v, list):
            return [self._clean(x, is_public) for x in v]
        if isinstance(v, tuple):
            return tuple(self._clean(x, is_public) for x in v)
        return v

    def _mapping(self, v: Mapping[Any, Any]) -> dict[Any, Any]:
        """:meth:`_field` of every item, with a field's kind looked up in place and the plain numbers and
        ``None`` kept without a call (most of a log line's fields: 2x faster on an ``account_decision``), and
        the short strings of a field that is not secret masked in place (:func:`_short_is_plain`)."""
        out = {}
        fields, scalars, known = self._fields, _SCALARS, self._known
        for k, x in v.items():
            name = k if k.__class__ is str else str(k)
            kind = fields.get(name)
            if kind is None or (kind[0] and x is not None):
                out[k] = self._field(name, x)
            elif x is None or x.__class__ in scalars:
                out[k] = x
            elif x.__class__ is str and _short_is_plain(x):
                out[k] = _replace_known(x, known) if known else x
            else:
                out[k] = self._field(name, x)
        return out

    def _field(self, name: str, v: Any) -> Any:
        kind = self._fields.get(name)
        if kind is None:
            low = name.lower()
            kind = (any(n in low for n in self._names), low.endswith(self._public))
            if len(self._fields) < self.FIELD_NAMES_KEPT:
                self._fields[name] = kind
        secret, public = kind
        if v is not None and secret:
            return REDACTED
        return self._clean(v, public)


def _short_is_plain(text: str) -> bool:
    """Whether only the ``known`` strings can be masked in ``text``: shorter than any mnemonic (12 words of 3
    letters and 11 spaces: 47 characters) and any key (64 hex digits), no ``://`` (a URL) and no ``@`` (userinfo).
    The address, symbol, band and timestamp fields of a log line."""
    return len(text) < _MNEMONIC_MIN_CHARS and "://" not in text and "@" not in text


_MNEMONIC_MIN_CHARS = 12 * 3 + 11  # what _MNEMONIC matches at least
_SCALARS = frozenset({int, float, bool})  # nothing to mask in them (exact types: a str subclass is a string)


def _longest_first(known: Iterable[str]) -> tuple[str, ...]:
    """The distinct non-empty ``known`` strings, longest first (the order they are replaced in)."""
    return tuple(sorted({k for k in known if k}, key=len, reverse=True))


def _replace_known(text: str, known: tuple[str, ...]) -> str:
    """``known`` as :func:`_longest_first` returns it."""
    for secret in known:
        text = text.replace(secret, REDACTED)
    return text
