"""Tests of keeper/runtime/config.py and keeper/runtime/signer.py: precedence, errors, secrets."""

from __future__ import annotations

import traceback
from decimal import Decimal
from pathlib import Path

import pydantic
import pytest
from eth_account import Account

from keeper.errors import ConfigError
from keeper.runtime.config import KeeperConfig, load_config
from keeper.runtime.signer import load_signer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "keeper.toml"
# anvil's well-known dev key #1 (public test mnemonic); any 32-byte value works for format checks
KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
KEY_ADDRESS = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
WEBHOOK = "https://hooks.example.com/services/T000/B000/SECRETTOKEN123"

MINIMAL = """
dry_run = true
[chain]
rpc_urls = ["http://127.0.0.1:8545"]
chain_id = 31337
[protocol]
engine = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
collateral = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
[[accounts]]
address = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
"""


def write(tmp_path: Path, text: str, name: str = "keeper.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def load(tmp_path: Path, text: str = MINIMAL, env: dict | None = None, **kw) -> KeeperConfig:
    kw.setdefault("dotenv_path", None)
    return load_config(write(tmp_path, text), env=env or {}, **kw)


def error_of(tmp_path: Path, text: str = MINIMAL, env: dict | None = None, **kw) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env, **kw)
    return info.value


def all_text(exc: BaseException) -> str:
    """Everything an operator could see of an exception: str, repr, full formatted traceback."""
    return str(exc) + repr(exc) + "".join(traceback.format_exception(exc))


class TestLoading:
    def test_example_file_loads(self):
        """The documented sample config is valid (with a key from the environment)."""
        cfg = load_config(EXAMPLE, env={"KEEPER_PRIVATE_KEY": KEY}, dotenv_path=None)
        assert cfg.chain.chain_id == 31337 and cfg.protected_accounts == (KEY_ADDRESS,)
        assert cfg.watched_accounts == ("0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",)
        assert cfg.protocol.markets[1].symbol == "BTC"
        assert cfg.journal.path == Path(".keeper/journal.sqlite")

    def test_defaults_and_conversions(self, tmp_path):
        """USD limits convert exactly to e6 integers and the risk section maps onto RiskPolicy."""
        cfg = load(tmp_path, MINIMAL + "[limits]\nmax_top_up_usd = 0.1\nmanual_approval_above_usd = 2500.5\n")
        lim = cfg.plan_limits()
        assert lim.max_per_tx_e6 == 100_000 and lim.manual_approval_above_e6 == 2_500_500_000
        assert lim.max_per_day_e6 == 20_000 * 10**6 and not lim.allow_release
        assert cfg.risk_policy().min_action_e6 == 10_000_000 == lim.min_action_e6
        assert cfg.fees.max_fee_wei == 200 * 10**9 and cfg.fees.priority_fee_wei == 1_500_000_000

    def test_env_overrides_file_and_dotenv(self, tmp_path):
        """Precedence is file < .env < environment, with nested names and comma lists."""
        dotenv = write(tmp_path, "KEEPER_CHAIN__CHAIN_ID=5\nKEEPER_LIMITS__MAX_TOP_UP_USD=123\n", ".env")
        env = {
            "KEEPER_CHAIN__CHAIN_ID": "10",
            "KEEPER_CHAIN__RPC_URLS": "http://a:1, ws://b:2",
            "KEEPER_DRY_RUN": "false",
            "KEEPER_PRIVATE_KEY": KEY,
            "KEEPER_HOME": "/ignored",  # not a config section: ignored
            "KEEPER_CONFIG": "reserved.toml",
        }
        cfg = load(tmp_path, env=env, dotenv_path=dotenv)
        assert cfg.chain.chain_id == 10  # env beats .env
        assert cfg.limits.max_top_up_usd == Decimal(123)  # .env beats the file default
        assert cfg.chain.rpc_urls == ("http://a:1", "ws://b:2") and cfg.dry_run is False

    def test_accounts_from_env(self, tmp_path):
        """KEEPER_ACCOUNTS takes address[:mode] pairs and replaces the file's list."""
        cfg = load(tmp_path, env={"KEEPER_ACCOUNTS": f"{KEY_ADDRESS}:watch,0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"})
        assert [(a.address[-4:], a.mode) for a in cfg.accounts] == [("79C8", "watch"), ("93BC", "protect")]

    def test_config_is_frozen(self, tmp_path):
        """The loaded config cannot be mutated."""
        cfg = load(tmp_path)
        with pytest.raises(pydantic.ValidationError):
            cfg.dry_run = False  # type: ignore[misc]


class TestErrors:
    @pytest.mark.parametrize(
        "extra, field, words",
        [
            ("[http]\nhost = '0.0.0.0'\n", "http", ["'0.0.0.0'", "loopback", "allow_public"]),
            ("[risk]\np_target = 0.01\n", "risk", ["p_release < p_target < p_trigger"]),
            ("[fees]\nconfirmations = 0\n", "fees.confirmations", ["= 0", "greater than or equal to 1"]),
            ("[limits]\nmax_top_up_usd = -5\n", "limits.max_top_up_usd", ["-5", "greater than 0"]),
            ("[log]\nformat = 'xml'\n", "log.format", ["'xml'", "'auto', 'json' or 'pretty'"]),
            ("[chian]\nx = 1\n", "chian", ["unknown field"]),
        ],
    )
    def test_invalid_value_names_field_value_and_allowed(self, tmp_path, extra, field, words):
        """A bad value raises ConfigError with the dotted field path, the value and what is allowed."""
        exc = error_of(tmp_path, MINIMAL + extra)
        assert exc.field == field
        for w in words:
            assert w in str(exc)

    def test_bad_chain_id_at_load(self, tmp_path):
        """chain_id must be positive; the message names the file it came from."""
        exc = error_of(tmp_path, MINIMAL.replace("chain_id = 31337", "chain_id = 0"))
        assert exc.field == "chain.chain_id" and "keeper.toml" in str(exc) and "= 0" in str(exc)

    def test_env_error_names_variable(self, tmp_path):
        """A bad value from the environment names the variable it came from."""
        exc = error_of(tmp_path, env={"KEEPER_CHAIN__REQUEST_TIMEOUT_S": "fast"})
        assert exc.field == "chain.request_timeout_s" and "$KEEPER_CHAIN__REQUEST_TIMEOUT_S" in str(exc)
        assert "'fast'" in str(exc)

    def test_bad_rpc_url_and_address(self, tmp_path):
        """Non-http/ws URLs and malformed addresses are rejected with the offending value."""
        exc = error_of(tmp_path, MINIMAL.replace("http://127.0.0.1:8545", "ftp://x").replace("0x5FbDB", "0xZZ"))
        assert "ftp://x" in str(exc) and "protocol.engine" in str(exc) and "20-byte hex address" in str(exc)

    def test_protect_needs_signer_unless_dry_run(self, tmp_path):
        """Protect-mode accounts without a signer are rejected when the keeper would transact."""
        exc = error_of(tmp_path, MINIMAL.replace("dry_run = true", "dry_run = false"))
        assert "KEEPER_PRIVATE_KEY" in str(exc)

    def test_missing_and_broken_file(self, tmp_path):
        """A missing file or invalid TOML is a ConfigError naming the file."""
        with pytest.raises(ConfigError, match="does not exist"):
            load_config(tmp_path / "nope.toml", env={}, dotenv_path=None)
        with pytest.raises(ConfigError, match="not valid TOML"):
            load(tmp_path, "[chain\n")

    def test_missing_deployment_file(self, tmp_path):
        """A deployment path that does not exist is found at load, not later."""
        text = MINIMAL.replace('engine = "0x5FbDB2315678afecb367f032d93F642f64180aa3"', 'deployment = "missing.json"')
        text = text.replace('collateral = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"', "")
        assert "missing.json" in str(error_of(tmp_path, text))


class TestSecrets:
    def test_key_hidden_in_repr_and_str(self, tmp_path):
        """The private key and webhook URL appear in neither repr nor str nor model_dump_json of the config."""
        cfg = load(tmp_path, env={"KEEPER_PRIVATE_KEY": KEY, "KEEPER_ALERTS__WEBHOOK_URL": WEBHOOK})
        for text in (repr(cfg), str(cfg), cfg.model_dump_json(), repr(cfg.signer), str(cfg.alerts)):
            assert KEY[2:] not in text and "SECRETTOKEN" not in text
        assert cfg.signer.private_key.get_secret_value() == KEY

    def test_bad_key_hidden_in_error_and_traceback(self, tmp_path):
        """A malformed key is reported without its value, in the message and in the full traceback."""
        bad = KEY[:-1] + "Z"
        exc = error_of(tmp_path, env={"KEEPER_PRIVATE_KEY": bad})
        assert exc.field == "signer.private_key" and "$KEEPER_PRIVATE_KEY" in str(exc)
        text = all_text(exc)
        assert bad[2:40] not in text and "ValidationError" not in text  # no chained pydantic error

    def test_valid_key_hidden_when_other_field_fails(self, tmp_path):
        """When another field fails, the traceback does not carry the (valid) key via the pydantic error."""
        exc = error_of(tmp_path, env={"KEEPER_PRIVATE_KEY": KEY, "KEEPER_CHAIN__CHAIN_ID": "-1"})
        assert KEY[2:] not in all_text(exc)
        assert exc.__cause__ is None and exc.__context__ is None

    def test_webhook_hidden_in_error(self, tmp_path):
        """A bad webhook URL is rejected without echoing it (it carries a token)."""
        exc = error_of(tmp_path, env={"KEEPER_ALERTS__WEBHOOK_URL": "hooks.example.com/SECRETTOKEN123"})
        assert exc.field == "alerts.webhook_url" and "SECRETTOKEN" not in all_text(exc)

    def test_key_in_file_refused(self, tmp_path):
        """A private key written into the TOML file is refused without echoing it."""
        exc = error_of(tmp_path, MINIMAL + f'[signer]\nprivate_key = "{KEY}"\n')
        assert exc.field == "signer.private_key" and KEY[2:] not in all_text(exc)


class TestSigner:
    def test_from_env_key(self, tmp_path):
        """KEEPER_PRIVATE_KEY yields the matching account (anvil dev account #1)."""
        cfg = load(tmp_path, env={"KEEPER_PRIVATE_KEY": KEY})
        assert load_signer(cfg.signer).address == KEY_ADDRESS

    def test_off_curve_key(self, tmp_path):
        """A well-formed but invalid key (zero) is refused without showing it."""
        zero = "0x" + "00" * 32
        cfg = load(tmp_path, env={"KEEPER_PRIVATE_KEY": zero})
        with pytest.raises(ConfigError) as info:
            load_signer(cfg.signer)
        assert "not a valid secp256k1" in str(info.value) and "00" * 32 not in all_text(info.value)

    def test_keystore_round_trip_and_wrong_password(self, tmp_path):
        """A keystore decrypts with its password file; a wrong password is reported without the password."""
        import json

        keystore = write(
            tmp_path, json.dumps(Account.encrypt(KEY, "hunter2-pass", kdf="pbkdf2", iterations=2)), "ks.json"
        )
        pw = write(tmp_path, "hunter2-pass\n", "pw.txt")
        text = MINIMAL + f'[signer]\nkeystore = "{keystore}"\npassword_file = "{pw}"\n'
        cfg = load(tmp_path, text)
        assert load_signer(cfg.signer).address == KEY_ADDRESS
        pw.write_text("wrong-password-xyz")
        with pytest.raises(ConfigError, match="wrong password") as info:
            load_signer(cfg.signer)
        assert "wrong-password-xyz" not in all_text(info.value) and "hunter2" not in all_text(info.value)

    def test_keystore_without_password_file(self, tmp_path):
        """A keystore without a password file is a config error at load."""
        keystore = write(tmp_path, "{}", "ks.json")
        exc = error_of(tmp_path, MINIMAL + f'[signer]\nkeystore = "{keystore}"\n')
        assert "password_file" in str(exc)

    def test_damaged_keystore(self, tmp_path):
        """A keystore file that is not JSON is reported as such."""
        keystore = write(tmp_path, "not json", "ks.json")
        pw = write(tmp_path, "x", "pw.txt")
        cfg = load(tmp_path, MINIMAL + f'[signer]\nkeystore = "{keystore}"\npassword_file = "{pw}"\n')
        with pytest.raises(ConfigError, match="not a JSON keystore"):
            load_signer(cfg.signer)


def test_section_level_error_hides_section_values(tmp_path):
    """A check on the whole signer section (key and keystore both set) does not print the section's values."""
    keystore = write(tmp_path, "{}", "ks.json")
    pw = write(tmp_path, "x", "pw.txt")
    text = MINIMAL + f'[signer]\nkeystore = "{keystore}"\npassword_file = "{pw}"\n'
    exc = error_of(tmp_path, text, env={"KEEPER_PRIVATE_KEY": KEY})
    assert exc.field == "signer" and "not both" in str(exc) and KEY[2:] not in all_text(exc)
    exc = error_of(tmp_path, MINIMAL.replace("[[accounts]]", "[x]"), env={"KEEPER_PRIVATE_KEY": KEY})
    assert KEY[2:] not in all_text(exc)


def leaf_env_names(model=KeeperConfig, prefix="KEEPER_") -> set[str]:
    """Every KEEPER_* name that sets a leaf field of the config model."""
    from pydantic import BaseModel

    names = set()
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            names |= leaf_env_names(ann, f"{prefix}{name.upper()}__")
        else:
            names.add(f"{prefix}{name.upper()}")
    return names


def test_env_example_documents_every_variable():
    """.env.example names every configuration variable (keys by their short names), so it cannot drift."""
    text = (ROOT / ".env.example").read_text()
    keys = {"KEEPER_SIGNER__PRIVATE_KEY", "KEEPER_SIGNER__ROUTINE_PRIVATE_KEY"}
    expected = (leaf_env_names() - keys) | {"KEEPER_PRIVATE_KEY", "KEEPER_ROUTINE_PRIVATE_KEY"}
    missing = sorted(n for n in expected if f"{n}=" not in text)
    assert missing == []


def test_env_example_copied_as_dotenv_loads(tmp_path):
    """A .env copied from .env.example (empty secrets) is accepted: empty values mean unset."""
    dotenv = tmp_path / ".env"
    dotenv.write_text((ROOT / ".env.example").read_text())
    cfg = load(tmp_path, dotenv_path=dotenv)
    assert cfg.signer.private_key is None and cfg.alerts.webhook_url is None


def test_routine_key_is_secret_and_loads_a_second_signer(tmp_path):
    """KEEPER_ROUTINE_PRIVATE_KEY is hidden like the main key and yields a second, different signer."""
    from keeper.dev.reference import ANVIL_KEYS
    from keeper.runtime.signer import load_routine_signer, load_signer

    cfg = load(tmp_path, env={"KEEPER_PRIVATE_KEY": ANVIL_KEYS[1], "KEEPER_ROUTINE_PRIVATE_KEY": ANVIL_KEYS[2]})
    assert ANVIL_KEYS[2][2:] not in repr(cfg) and ANVIL_KEYS[2][2:] not in str(cfg.model_dump())
    assert load_routine_signer(cfg.signer).address != load_signer(cfg.signer).address
    assert load_routine_signer(load(tmp_path, env={"KEEPER_PRIVATE_KEY": ANVIL_KEYS[1]}).signer) is None
