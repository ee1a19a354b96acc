"""Secrets never printed, strict config, one-line errors: keeper.redact, config validation, the CLI's errors.

The CLI's error paths run ``keeper.cli.main`` in this process (the ``keeper_cli`` fixture: exit code, stdout and
stderr as a process would give them); one test runs the real ``python -m keeper`` process on the same input.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import structlog
from eth_account import Account
from structlog.testing import capture_logs

from keeper.chain.rpc import ChainClient
from keeper.cli import exit_code
from keeper.dev.reference import ANVIL_KEYS
from keeper.errors import ChainMismatchError, ConfigError, HaltError, InputError, KeeperError, Reverted
from keeper.redact import REDACTED, mask_data, mask_text, mask_url
from keeper.runtime.config import known_secrets, load_config
from keeper.runtime.logging import configure_logging

KEY = ANVIL_KEYS[5]
CRED_URL = "https://alice:s3cr3tpw@eth.example.com:8443/v2/APIKEY123456?token=QUERYTOKEN9"
ENGINE = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
COLLATERAL = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
TRADER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"

BASE = f"""
dry_run = true
[chain]
rpc_urls = ["http://127.0.0.1:8545"]
chain_id = 31337
[protocol]
engine = "{ENGINE}"
collateral = "{COLLATERAL}"
[[accounts]]
address = "{TRADER}"
"""


def keeper_process(
    tmp_path: Path, *args: str, env: dict | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    """``python -m keeper ...`` as a real process, no ``KEEPER_*`` variable inherited, an empty dotenv file."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KEEPER_")}
    return subprocess.run(
        [sys.executable, "-m", "keeper", *args, "--env-file", str(tmp_path / "none.env")],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**clean, **(env or {})},
        cwd=tmp_path,
    )


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keeper.toml"
    path.write_text(text)
    return path


def config_error(tmp_path: Path, text: str, env: dict | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(config_file(tmp_path, text), env=env or {}, dotenv_path=None)
    return str(info.value)


@pytest.fixture
def keeper(keeper_cli, tmp_path):
    """``keeper(*args, env=None)``: the CLI in this process, run from ``tmp_path`` with an empty dotenv file."""

    def run(*args: str, env: dict | None = None):
        return keeper_cli(*args, "--env-file", str(tmp_path / "none.env"), env=env, cwd=tmp_path)

    return run


def assert_one_line_error(proc, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


class TestRedact:
    def test_mask_url_keeps_scheme_host_port(self):
        """A URL with userinfo, path or query shows scheme://host:port/… only; a bare endpoint is kept."""
        assert mask_url(CRED_URL) == "https://eth.example.com:8443/…"
        assert mask_url("wss://mainnet.infura.io/ws/v3/abcdef0123") == "wss://mainnet.infura.io/…"
        assert mask_url("http://127.0.0.1:8545") == "http://127.0.0.1:8545"
        assert mask_url("http://127.0.0.1:99999/x") == "http://…"

    def test_mask_text_finds_keys_and_urls_in_prose(self):
        """Keys with and without 0x, URLs with credentials and bare user:pass@host are masked inside text."""
        text = f"bad {KEY} and {KEY[2:]}; endpoint {CRED_URL}, also ftp-less bob:hunter@10.0.0.1 end."
        out = mask_text(text)
        assert KEY[2:] not in out and "s3cr3tpw" not in out and "APIKEY123456" not in out
        assert "QUERYTOKEN9" not in out and "bob:hunter" not in out
        assert out.count(REDACTED) == 3 and "https://eth.example.com:8443/…," in out

    def test_mask_text_known_strings(self):
        """Exact known strings (a password, a URL's path) are masked wherever they appear."""
        assert (
            mask_text("requests: url: /v2/APIKEY123456 failed", ["/v2/APIKEY123456"])
            == f"requests: url: {REDACTED} failed"
        )

    def test_mask_data_keeps_hashes_masks_keys(self):
        """In nested data a tx_hash keeps its 32-byte hex, the same shape elsewhere and secret names are masked."""
        tx = "0x" + "ab" * 32
        out = mask_data(
            {"tx_hash": tx, "sent": [{"tx_hash": tx, "reason": f"key {KEY}"}], "password": "x"},
            secret_names=["password"],
        )
        assert out == {"tx_hash": tx, "sent": [{"tx_hash": tx, "reason": f"key {REDACTED}"}], "password": REDACTED}


class TestSecretsInConfigErrors:
    @pytest.mark.parametrize(
        "text, env",
        [
            (BASE + f'[signer]\nprivatekey = "{KEY}"\n', {}),
            (BASE + f'[signer]\nkey = "{KEY[2:]}"\n', {}),
            (f'signer = "{KEY}"\n' + BASE, {}),
            (BASE, {"KEEPER_SIGNER__KEY": KEY}),
            (BASE + '[signer]\npassword = "keystore-pw-7f3a"\n', {}),
        ],
        ids=["privatekey", "key-no-0x", "top-level-signer", "env-signer-key", "password-field"],
    )
    def test_misspelled_secret_not_echoed(self, keeper, secret_leaks, tmp_path, text, env):
        """A key or password under a wrong field name is reported by field, exit 2, its value never printed."""
        proc = keeper("check", "--config", str(config_file(tmp_path, text)), env=env)
        assert_one_line_error(proc, "signer")
        assert secret_leaks(proc.stderr + proc.stdout) == []

    def test_misspelled_secret_not_echoed_by_the_process(self, secret_leaks, tmp_path):
        """The same as a real `python -m keeper check` process: exit 2, one line, the key in neither stream."""
        text = BASE + f'[signer]\nprivatekey = "{KEY}"\n'
        proc = keeper_process(tmp_path, "check", "--config", str(config_file(tmp_path, text)))
        assert_one_line_error(proc, "signer")
        assert secret_leaks(proc.stderr + proc.stdout) == []

    def test_url_credentials_masked_in_config_error(self, tmp_path):
        """An RPC URL with credentials and a bad port is reported as scheme://… without user, password or API key."""
        bad = "https://alice:s3cr3tpw@eth.example.com:99999/v2/APIKEY123456"
        msg = config_error(tmp_path, BASE.replace('"http://127.0.0.1:8545"', f'"{bad}"'))
        assert "port outside 1-65535" in msg
        assert "s3cr3tpw" not in msg and "APIKEY123456" not in msg and "alice" not in msg


class TestOneLineErrors:
    def test_binary_password_file(self, keeper, tmp_path):
        """A password file that is not UTF-8 stops at load with one line and exit 2 (no UnicodeDecodeError)."""
        ks = tmp_path / "ks.json"
        ks.write_text(json.dumps(Account.encrypt(KEY, "keystore-pw-7f3a", kdf="pbkdf2", iterations=2)))
        pw = tmp_path / "pw.bin"
        pw.write_bytes(b"\xff\xfe\x00\x81binary")
        text = BASE.replace("dry_run = true", "") + f'[signer]\nkeystore = "{ks}"\npassword_file = "{pw}"\n'
        proc = keeper("check", "--config", str(config_file(tmp_path, text)))
        assert_one_line_error(proc, "password_file", "not UTF-8")

    def test_signer_not_a_table(self, keeper, tmp_path):
        """`signer = 5` is a config error naming the field, exit 2 (no TypeError)."""
        proc = keeper("check", "--config", str(config_file(tmp_path, "signer = 5\n" + BASE)))
        assert_one_line_error(proc, "signer", "must be a [signer] table")

    def test_http_port_in_use_before_journal(self, keeper, tmp_path):
        """`run` with its HTTP port taken exits 2 with one line before the journal file is created."""
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            port = busy.getsockname()[1]
            journal = tmp_path / "j" / "journal.sqlite"
            text = BASE + f'[journal]\npath = "{journal}"\n[http]\nport = {port}\n'
            proc = keeper("run", "--config", str(config_file(tmp_path, text)))
        assert_one_line_error(proc, f"http.port {port}", "already in use")
        assert not journal.exists() and not journal.parent.exists()

    def test_exit_codes(self):
        """Bad input, config, journal and halt errors exit 2; chain and transaction failures exit 1."""
        assert [exit_code(e) for e in (ConfigError("x"), InputError("x"), KeeperError("x"))] == [2] * 3
        assert [exit_code(e) for e in (ChainMismatchError("x"), Reverted("x"), HaltError("x"))] == [1, 1, 1]


class TestStrictValidation:
    def test_eip55_checksum(self, tmp_path):
        """A mixed-case address failing EIP-55 is refused with the correct checksum; all-lower/all-upper pass."""
        wrong = "0x70997970c51812dc3A010C7d01b50e0d17dc79C8"  # one letter lowered
        msg = config_error(tmp_path, BASE.replace(TRADER, wrong))
        assert "EIP-55" in msg and TRADER in msg
        for ok in (TRADER.lower(), "0x" + TRADER[2:].upper()):
            cfg = load_config(config_file(tmp_path, BASE.replace(TRADER, ok)), env={}, dotenv_path=None)
            assert cfg.accounts[0].address == ok

    @pytest.mark.parametrize(
        "old, new, words",
        [
            (TRADER, "0x" + "0" * 40, "zero address"),
            ("chain_id = 31337", "chain_id = true", "must be a number, not true/false"),
            ('"http://127.0.0.1:8545"', '"http://127.0.0.1:99999"', "port outside 1-65535"),
            ("[[accounts]]", "[schedule]\nhead_poll_s = 0.001\n[[accounts]]", "greater than or equal to 0.1"),
            ("[[accounts]]", "[risk]\np_trigger = nan\n[[accounts]]", "finite number"),
            ("[[accounts]]", "[limits]\nallow_release = 1\nmax_top_up_usd = false\n[[accounts]]", "not true/false"),
        ],
        ids=["zero-address", "bool-chain-id", "port-range", "head-poll-min", "nan", "bool-usd"],
    )
    def test_refused_with_reason(self, tmp_path, old, new, words):
        """Values that used to be accepted or misexplained are refused, saying what is wrong."""
        msg = config_error(tmp_path, BASE.replace(old, new))
        assert words in msg, msg
        assert "less than 1" not in msg

    def test_keystore_directory(self, tmp_path):
        """A keystore path that is a folder says "is a directory", not "does not exist"."""
        pw = tmp_path / "pw.txt"
        pw.write_text("x")
        msg = config_error(tmp_path, BASE + f'[signer]\nkeystore = "{tmp_path}"\npassword_file = "{pw}"\n')
        assert "is a directory" in msg and "does not exist" not in msg


def test_known_secrets_of_a_config(tmp_path):
    """The strings masked in every log line include the keystore password and the RPC URL's credentials."""
    ks = tmp_path / "ks.json"
    ks.write_text("{}")
    pw = tmp_path / "pw.txt"
    pw.write_text("keystore-pw-7f3a\n")
    text = (
        BASE.replace('"http://127.0.0.1:8545"', f'"{CRED_URL}"')
        + f'[signer]\nkeystore = "{ks}"\npassword_file = "{pw}"\n'
    )
    secrets = known_secrets(load_config(config_file(tmp_path, text), env={}, dotenv_path=None))
    assert {"keystore-pw-7f3a", "alice", "s3cr3tpw", "/v2/APIKEY123456", "token=QUERYTOKEN9"} <= set(secrets)
    line = mask_text(f"GET {CRED_URL.split('@', 1)[1]} pw keystore-pw-7f3a", secrets)
    assert "APIKEY123456" not in line and "QUERYTOKEN9" not in line and "keystore-pw-7f3a" not in line


class TestLogRouting:
    @pytest.fixture(autouse=True)
    def _reset(self):
        yield
        structlog.reset_defaults()
        root = logging.getLogger()
        for h in list(root.handlers):
            if type(h).__name__ == "_ForeignHandler":
                root.removeHandler(h)
        root.setLevel(logging.WARNING)

    def test_third_party_logger_is_json_and_redacted(self, secret_leaks):
        """An APScheduler/urllib3 warning becomes one JSON line, key, URL credentials and known secrets masked."""
        stream = io.StringIO()
        configure_logging("json", "info", stream=stream, known_secrets=["keystore-pw-7f3a"])
        root = logging.getLogger()
        pytest_handlers = [h for h in root.handlers if type(h).__name__ != "_ForeignHandler"]
        for h in pytest_handlers:  # pytest's own capture would keep the raw record (the test's input)
            root.removeHandler(h)
        try:
            logging.getLogger("apscheduler.scheduler").warning(
                "job failed with %s at %s pw=%s", KEY, CRED_URL, "keystore-pw-7f3a"
            )
            logging.getLogger("urllib3").info("dropped below the foreign minimum level")
        finally:
            for h in pytest_handlers:
                root.addHandler(h)
        lines = stream.getvalue().splitlines()
        assert len(lines) == 1
        entry = json.loads(lines[0])
        assert entry["logger"] == "apscheduler.scheduler" and entry["level"] == "warning"
        assert secret_leaks(lines[0]) == [] and "s3cr3tpw" not in lines[0] and "APIKEY" not in lines[0]
        assert "https://eth.example.com:8443/…" in entry["event"]

    def test_rpc_endpoint_failed_masks_url(self):
        """A failing endpoint with credentials is logged and raised as scheme://host:port/… only."""
        with socket.socket() as s:  # a port that refuses connections
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://alice:s3cr3tpw@127.0.0.1:{port}/v2/APIKEY123456"
        from keeper.chain.rpc import RetryPolicy

        with capture_logs() as logs, pytest.raises(KeeperError) as info:
            ChainClient.connect(url, 31337, timeout_s=2, retry=RetryPolicy(attempts=1))
        failed = [e for e in logs if e["event"] == "rpc_endpoint_failed"]
        assert failed and all(e["url"] == f"http://127.0.0.1:{port}/…" for e in failed)
        text = str(info.value) + json.dumps(failed, default=str)
        assert "s3cr3tpw" not in text and "APIKEY123456" not in text and "alice" not in text


def test_scanner_detects_each_secret_kind(secret_leaks):
    """The autouse output scanner recognises a dev key (with and without 0x), a test password and URL userinfo."""
    assert secret_leaks(f"x {ANVIL_KEYS[2]} y") == ["anvil key #2"]
    assert secret_leaks(ANVIL_KEYS[0][2:].upper()) == ["anvil key #0"]
    assert secret_leaks("pw keystore-pw-7f3a") == ["test password #2"]
    assert secret_leaks("GET https://u:p@host/") == ["URL userinfo (user:pass@)"]
    assert secret_leaks("tx 0x" + "ab" * 32 + " and git@github.com:x") == []
