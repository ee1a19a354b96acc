"""``[protocol] name = "aave-v3"``: provider or market, checked when the configuration loads (one-line errors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from keeper.errors import ConfigError
from keeper.runtime.config import load_config

BASE = """
dry_run = true
[chain]
rpc_urls = ["http://127.0.0.1:8545"]
chain_id = 1
[protocol]
name = "aave-v3"
{protocol}
[[accounts]]
address = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
"""


def _load(tmp_path: Path, protocol: str):
    path = tmp_path / "keeper.toml"
    path.write_text(BASE.format(protocol=protocol))
    return load_config(path, env={}, dotenv_path=None)


class TestAaveConfig:
    def test_market_name_is_accepted(self, tmp_path):
        """``market = "ethereum"`` loads, with the default staleness bound of a day."""
        cfg = _load(tmp_path, 'market = "ethereum"')
        assert cfg.protocol.market == "ethereum" and cfg.protocol.stale_after_s == 86_400

    def test_provider_address_is_accepted(self, tmp_path):
        """An EIP-55 provider address loads."""
        cfg = _load(tmp_path, 'provider = "0x2f39d218133AFaB8F2B819B1066c7E434Ad94E9e"')
        assert cfg.protocol.provider == "0x2f39d218133AFaB8F2B819B1066c7E434Ad94E9e"

    def test_per_asset_table(self, tmp_path):
        """``[protocol.assets.USDC]`` sets that asset's heartbeat and fallback volatility."""
        path = tmp_path / "keeper.toml"
        path.write_text(
            BASE.format(protocol='market = "ethereum"')
            + "[protocol.assets.USDC]\nstale_after_s = 90000\nsigma_fallback_annual = 0.05\n"
        )
        cfg = load_config(path, env={}, dotenv_path=None)
        assert cfg.protocol.assets["USDC"].stale_after_s == 90_000
        assert cfg.protocol.assets["USDC"].sigma_fallback_annual == 0.05

    @pytest.mark.parametrize(
        "protocol, words",
        [
            ('market = "mars"', "unknown Aave v3 market 'mars'"),
            ("", "needs exactly one of provider"),
            ('market = "ethereum"\nprovider = "0x2f39d218133AFaB8F2B819B1066c7E434Ad94E9e"', "exactly one of"),
            ('provider = "0x2f39d218133afab8f2b819b1066c7e434ad94e9E"', "EIP-55"),
            ('market = "base"\nengine = "0x5FbDB2315678afecb367f032d93F642f64180aa3"', "not deployment / engine"),
            ('market = "base"\nfull_read_after_blocks = 0', "full_read_after_blocks = 0"),
            ('market = "base"\nfull_read_every_s = -1', "full_read_every_s = -1"),
        ],
        ids=["unknown-market", "neither", "both", "bad-checksum", "reference-fields", "after-blocks", "every-s"],
    )
    def test_bad_protocol_section_is_one_line(self, tmp_path, protocol, words):
        """Each mistake is one line naming the field and what is allowed."""
        with pytest.raises(ConfigError) as info:
            _load(tmp_path, protocol)
        text = str(info.value)
        assert words in text and "\n" not in text and "protocol" in text

    def test_aave_fields_refused_for_the_reference_protocol(self, tmp_path):
        """``provider`` under the reference protocol is a mistake, said so."""
        path = tmp_path / "keeper.toml"
        path.write_text(
            BASE.replace('name = "aave-v3"', 'engine = "0x5FbDB2315678afecb367f032d93F642f64180aa3"').format(
                protocol='collateral = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"\nmarket = "ethereum"'
            )
        )
        with pytest.raises(ConfigError, match="fields of aave-v3"):
            load_config(path, env={}, dotenv_path=None)

    def test_full_read_bounds_load_with_their_defaults(self, tmp_path):
        """Incremental reads: a full read after 1,000 blocks or 300 s by default; 0 s means every cycle."""
        cfg = _load(tmp_path, 'market = "ethereum"')
        assert (cfg.protocol.full_read_after_blocks, cfg.protocol.full_read_every_s) == (1_000, 300)
        cfg = _load(tmp_path, 'market = "ethereum"\nfull_read_after_blocks = 50\nfull_read_every_s = 0')
        assert (cfg.protocol.full_read_after_blocks, cfg.protocol.full_read_every_s) == (50, 0)

    def test_full_read_fields_refused_for_the_reference_protocol(self, tmp_path):
        """``full_read_every_s`` under the reference protocol is a mistake, said so on one line."""
        path = tmp_path / "keeper.toml"
        path.write_text(
            BASE.replace('name = "aave-v3"', 'engine = "0x5FbDB2315678afecb367f032d93F642f64180aa3"').format(
                protocol='collateral = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"\nfull_read_every_s = 10'
            )
        )
        with pytest.raises(ConfigError, match="full_read_every_s: fields of aave-v3") as info:
            load_config(path, env={}, dotenv_path=None)
        assert "\n" not in str(info.value)
