"""Tests of keeper/runtime/logging.py: redaction of secrets, renderer choice, levels."""

from __future__ import annotations

import io
import json

import pytest
import structlog
from structlog.testing import capture_logs

from keeper.redact import DataMasker
from keeper.runtime.logging import REDACTED, SecretRedactor, configure_logging

KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
TX_HASH = "0x" + "ab" * 32
MNEMONIC = "test test test test test test test test test test test junk"


@pytest.fixture(autouse=True)
def _reset_structlog():
    yield
    structlog.reset_defaults()


class TestSecretRedactor:
    def test_masks_by_field_name(self):
        """Fields named like secrets are masked whatever their value."""
        with capture_logs(processors=[SecretRedactor()]) as logs:
            structlog.get_logger().info("signer_loaded", private_key="abc", keystore_password="pw", address="0x1")
        assert logs[0]["private_key"] == REDACTED and logs[0]["keystore_password"] == REDACTED
        assert logs[0]["address"] == "0x1" and logs[0]["event"] == "signer_loaded"

    def test_masks_key_shaped_values_anywhere(self):
        """A 0x+64-hex value is masked in any field, inside strings, and nested in dicts and lists."""
        with capture_logs(processors=[SecretRedactor()]) as logs:
            structlog.get_logger().error(
                "oops", detail=f"bad key {KEY} given", nested={"inner": [KEY[2:]]}, phrase=MNEMONIC
            )
        entry = logs[0]
        assert KEY[2:] not in repr(entry)
        assert entry["detail"] == f"bad key {REDACTED} given"
        assert entry["nested"] == {"inner": [REDACTED]} and entry["phrase"] == REDACTED

    def test_hash_fields_are_public(self):
        """tx_hash / block_hash keep their 32-byte hex values (public, same shape as a key)."""
        with capture_logs(processors=[SecretRedactor()]) as logs:
            structlog.get_logger().info("tx_sent", tx_hash=TX_HASH, block_hash=TX_HASH, nonce=3)
        assert logs[0]["tx_hash"] == TX_HASH and logs[0]["block_hash"] == TX_HASH

    def test_shorter_hex_left_alone(self):
        """Addresses (20 bytes) and prices are not mistaken for keys."""
        red = SecretRedactor()
        out = red(None, "info", {"event": "x", "account": "0x" + "12" * 20, "price_e8": 300000000000})
        assert out["account"] == "0x" + "12" * 20 and out["price_e8"] == 300000000000

    def test_key_between_other_characters_is_masked_and_63_digits_are_not(self):
        """The quick test before the key pattern (64 hex digits in a row) lets no key through: next to
        non-ASCII text, a lone surrogate or punctuation; 63 digits are not a key, 65 are not one either."""
        red = SecretRedactor()
        for text in (f"é{KEY[2:]}é", f"\udc80{KEY}", f"({KEY}).", f"a-{KEY[2:]}"):
            assert KEY[2:] not in str(red(None, "info", {"event": "x", "detail": text})["detail"]), text
        for text in ("é" + "a" * 63 + "é", "a" * 65, "ab" * 31 + "-" + "cd" * 31):
            assert red(None, "info", {"event": "x", "detail": text})["detail"] == text

    def test_field_names_are_judged_the_same_on_every_line(self):
        """The redactor remembers what a field name says (secret, public): the same verdict on the next line."""
        red = SecretRedactor()
        for _ in range(3):
            out = red(None, "info", {"event": "x", "db_password": "pw", "tx_hash": TX_HASH, "detail": KEY})
            assert out["db_password"] == REDACTED and out["tx_hash"] == TX_HASH and out["detail"] == REDACTED

    def test_numbers_under_secret_names_are_masked_on_every_line(self):
        """Plain numbers and None skip the masker's call, but not under a secret's name (a seed, a password's
        digits): masked on the first line and on the lines after it, None left as None; the event not mutated."""
        red = SecretRedactor()
        for _ in range(3):
            event = {"event": "x", "seed": 1234, "pin_password": 5.5, "mnemonic": None, "amount": 7, "ok": True}
            out = red(None, "info", event)
            assert out["seed"] == REDACTED and out["pin_password"] == REDACTED and out["mnemonic"] is None
            assert out["amount"] == 7 and out["ok"] is True and event["seed"] == 1234

    def test_short_strings_are_masked_as_the_full_masker_masks_them(self):
        """The in-place path for short strings (under 47 characters, no ``://``, no ``@``) gives what the full
        path gives: known secrets masked inside them, 46- and 47-character word runs, a URL, userinfo and
        a key left to the full path; the first line and the next ones alike."""
        mnemonic_like = " ".join(["abc"] * 12)  # 47 characters: the shortest a mnemonic can be
        texts = [
            "0x" + "12" * 20,
            "USDC",
            "pw-hunter22 in it",
            mnemonic_like,
            mnemonic_like[:-4],
            "http://h/x",
            "u:p@host",
            KEY,
            "2026-12-03T17:49:00.657731Z",
            "",
        ]
        masker = DataMasker(known=("hunter22",), secret_names=("password",), public_suffixes=("hash",))
        for _ in range(2):
            line = masker({f"f{i}": t for i, t in enumerate(texts)} | {"tx_hash": "pw hunter22"})
            full = [masker._field(f"f{i}", t) for i, t in enumerate(texts)]
            assert [line[f"f{i}"] for i in range(len(texts))] == full
            assert line["f2"] == f"pw-{REDACTED} in it" and line["f3"] == REDACTED and line["f4"] == mnemonic_like[:-4]
            assert line["f7"] == REDACTED and line["tx_hash"] == f"pw {REDACTED}"


class TestConfigureLogging:
    def test_json_on_non_tty_with_timestamp_and_level(self):
        """auto picks JSON off a terminal; each line carries event, level, ISO UTC timestamp and fields."""
        buf = io.StringIO()
        assert configure_logging("auto", "info", stream=buf) == "json"
        structlog.get_logger().info("cycle_done", positions=3, duration_s=0.25)
        line = json.loads(buf.getvalue())
        assert line["event"] == "cycle_done" and line["level"] == "info" and line["positions"] == 3
        assert line["timestamp"].endswith("Z")

    def test_exception_traceback_redacted(self):
        """A key inside an exception's message is masked in the rendered traceback."""
        buf = io.StringIO()
        configure_logging("json", "info", stream=buf)
        try:
            raise RuntimeError(f"cannot use {KEY}")
        except RuntimeError:
            structlog.get_logger().exception("load_failed")
        line = json.loads(buf.getvalue())
        assert "RuntimeError" in line["exception"] and KEY[2:] not in buf.getvalue()

    def test_pretty_renderer_and_level_filter(self):
        """pretty uses the console renderer; debug events are dropped at info level."""
        buf = io.StringIO()
        configure_logging("pretty", "info", stream=buf)
        log = structlog.get_logger()
        log.debug("hidden_event")
        log.info("shown_event", password="pw123")
        out = buf.getvalue()
        assert "shown_event" in out and "hidden_event" not in out and "pw123" not in out
        with pytest.raises(json.JSONDecodeError):
            json.loads(out)

    def test_json_line_is_json_dumps_sorted(self):
        """The renderer's shared encoder writes what ``json.dumps(sort_keys=True)`` writes, line after line:
        integers past 64 bits (wei), nested mappings, NaN, and repr() for what JSON has no type for."""

        class Odd:
            def __repr__(self) -> str:
                return "Odd()"

        buf = io.StringIO()
        configure_logging("json", "info", stream=buf)
        fields = {"amount": 4_999_990 * 10**18, "exposure_usd": {"WETH": 1.5, "DAI": -2.0}, "x": float("nan")}
        for _ in range(2):
            structlog.get_logger().info("account_decision", odd=Odd(), **fields)
        lines = buf.getvalue().splitlines()
        assert len(lines) == 2
        for line in lines:
            parsed = json.loads(line)
            assert parsed["amount"] == 4_999_990 * 10**18 and parsed["odd"] == "Odd()"
            rest = {k: v for k, v in parsed.items() if k not in ("odd", "x")} | {"odd": "Odd()", "x": float("nan")}
            assert line == json.dumps(rest, sort_keys=True)

    def test_bad_arguments(self):
        """Unknown format or level fail at configuration time."""
        with pytest.raises(ValueError, match="format"):
            configure_logging("xml")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="level"):
            configure_logging("json", "loud")
