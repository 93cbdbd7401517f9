"""Hostile peers for the attack tests: a feed server that drips, one that redirects.

Both are real servers on a loopback address (any of 127.0.0.0/8 answers on Linux,
so two "hosts" can be told apart by address: 127.0.0.2 is the "outside" feed
host a test allows, 127.0.0.1 the "internal" service it must never reach).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FEED = (
    b'<?xml version="1.0"?><rss version="2.0"><channel><title>T</title>'
    b"<link>https://site.example/</link>"
    b"<item><title>%s</title><link>https://site.example/%s</link><guid>%s</guid>"
    b"<description>Four words of summary here.</description></item></channel></rss>"
)


def feed(tag: str) -> bytes:
    """A one-item RSS feed whose story is titled and linked by ``tag``."""
    raw = tag.encode()
    return FEED % (raw, raw, raw)


@dataclass
class Drip:
    """Per connection: how much of the head was sent before the client hung up."""

    head_sent: int = 0
    head_total: int = 0
    hung_up: bool = False
    finished: bool = False


@dataclass
class DripServer:
    """Accepts connections and answers each by sending its headers one byte at a time.

    ``interval`` seconds between bytes, the head padded to ``head_bytes``; the body
    (a valid feed) follows at once.  Every connection's progress is kept.
    """

    interval: float = 0.05
    head_bytes: int = 200
    host: str = "127.0.0.1"
    drips: list[Drip] = field(default_factory=list)
    connected: threading.Event = field(default_factory=threading.Event)
    _sock: socket.socket | None = None
    _port: int = 0
    _closing: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._port}/drip.xml"

    def start(self) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((self.host, 0))
        self._sock.listen(16)
        self._port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closing.set()
        if self._sock is not None:
            self._sock.close()

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._closing.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        drip = Drip()
        self.drips.append(drip)
        body = feed("dripped")
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/rss+xml\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n".encode()
        )
        padding = max(self.head_bytes - len(head) - 4, 10)
        head += b"X-Pad: " + b"." * padding + b"\r\n\r\n"
        drip.head_total = len(head)
        with conn:
            conn.recv(65536)  # the request
            self.connected.set()
            try:
                for byte in head:
                    if self._closing.is_set():
                        return
                    conn.sendall(bytes([byte]))
                    drip.head_sent += 1
                    time.sleep(self.interval)
                conn.sendall(body)
                drip.finished = True
            except OSError:
                drip.hung_up = True


@contextmanager
def drip_server(**kwargs: float | int | str) -> Iterator[DripServer]:
    server = DripServer(**kwargs)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.close()


@dataclass
class Routes:
    """path -> (status, headers, body); every request path is recorded."""

    answers: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)


@contextmanager
def http_server(host: str = "127.0.0.1") -> Iterator[tuple[str, Routes]]:
    """A plain HTTP server on ``host``: yields its base URL and its routes."""
    routes = Routes()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            routes.hits.append(self.path)
            status, headers, body = routes.answers.get(self.path, (404, {}, b""))
            with contextlib.suppress(OSError):
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

    server = ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}", routes
    finally:
        server.shutdown()
        server.server_close()
