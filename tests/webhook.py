"""A real webhook receiver for the alert tests (a local HTTP server recording the JSON posts)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    """A webhook receiver on 127.0.0.1:<free port> that records JSON bodies and answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.posts: list[dict] = []
        self.status = status
        self.block = threading.Event()
        self.block.set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                outer.block.wait(10)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts.append({"ctype": self.headers["Content-Type"], **json.loads(body)})
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )  # shutdown() returns within one poll interval (default 0.5 s)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/SECRETTOKEN"

    def close(self):
        self.block.set()
        self.server.shutdown()
        self.server.server_close()


class Clock:
    """A monotonic clock the test moves (``t``, seconds): the sink's dedup window and token bucket without waiting."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t
