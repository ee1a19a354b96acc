"""Implied-volatility floors: parsed strictly at start, refreshed later without ever losing the last good values."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from keeper.errors import ConfigError
from keeper.runtime.implied_vol import ImpliedVolSource, parse_implied_vols


class TestParse:
    def test_symbols_are_upper_cased(self):
        """A valid document maps upper-cased symbols to floats."""
        assert parse_implied_vols('{"eth": 0.65, "BTC": 1}', "x") == {"ETH": 0.65, "BTC": 1.0}

    @pytest.mark.parametrize(
        "doc, msg",
        [
            ("not json", "not JSON"),
            ("[1, 2]", "JSON object"),
            ("{}", "JSON object"),
            ('{"ETH": 0}', "in \\(0, 20\\]"),
            ('{"ETH": "high"}', "annualised volatility"),
            ('{"ETH": true}', "ETH"),
        ],
    )
    def test_bad_documents_say_what_is_wrong(self, doc, msg):
        """Malformed documents raise ValueError naming the problem."""
        with pytest.raises(ValueError, match=msg):
            parse_implied_vols(doc, "src")


class TestFileSource:
    def test_missing_file_is_a_config_error(self, tmp_path):
        """A missing source file stops the keeper at start with the field named."""
        with pytest.raises(ConfigError) as info:
            ImpliedVolSource(str(tmp_path / "nope.json")).load()
        assert info.value.field == "implied_vol.source" and "nope.json" in str(info.value)

    def test_refresh_keeps_last_good_values(self, tmp_path):
        """After refresh_s a new file is read; a broken file later keeps the previous floors."""
        path = tmp_path / "iv.json"
        path.write_text('{"ETH": 0.5}')
        now = [0.0]
        src = ImpliedVolSource(str(path), refresh_s=10, clock=lambda: now[0])
        assert src.load() == {"ETH": 0.5}
        path.write_text('{"ETH": 0.9}')
        assert src.floors() == {"ETH": 0.5}  # not due yet
        now[0] = 11
        assert src.floors() == {"ETH": 0.9}
        path.write_text("{broken")
        now[0] = 22
        assert src.floors() == {"ETH": 0.9}


def test_url_source_over_real_http():
    """An http URL is fetched at start and on refresh."""
    body = {"value": json.dumps({"BTC": 0.7}).encode()}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body["value"])

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        now = [0.0]
        src = ImpliedVolSource(f"http://127.0.0.1:{server.server_address[1]}/iv", refresh_s=1, clock=lambda: now[0])
        assert src.load() == {"BTC": 0.7}
        body["value"] = json.dumps({"BTC": 0.9}).encode()
        now[0] = 2
        assert src.floors() == {"BTC": 0.9}
    finally:
        server.shutdown()


def test_unreachable_url_is_a_config_error():
    """A URL nobody answers is refused at start."""
    from keeper.chain.anvil import free_port

    with pytest.raises(ConfigError, match="implied_vol.source"):
        ImpliedVolSource(f"http://127.0.0.1:{free_port()}/iv", timeout_s=1).load()
