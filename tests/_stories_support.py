"""A real HTTP feed server for the stories tests (http.server in a thread on 127.0.0.1).

It honours If-None-Match / If-Modified-Since like a well-behaved publisher and
records every request, so tests can assert what was sent and what was downloaded.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Served:
    """What the server answers for one path; mutate it to "publish" a new version."""

    body: bytes
    content_type: str = "application/rss+xml; charset=utf-8"
    etag: str | None = '"v1"'
    last_modified: str | None = formatdate(1_700_000_000, usegmt=True)
    status: int = 200
    delay: float = 0.0
    on_request: Callable[[], None] | None = None  # runs while the client waits


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    status: int


@dataclass
class FeedServer:
    server: ThreadingHTTPServer
    routes: dict[str, Served] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)

    def url(self, path: str) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def statuses(self, path: str) -> list[int]:
        return [r.status for r in self.requests if r.path == path]


def _handler(state: FeedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            served = state.routes.get(self.path)
            headers = {k.lower(): v for k, v in self.headers.items()}
            if served is None:
                status = 404
            elif served.status != 200:
                status = served.status
            elif (served.etag and headers.get("if-none-match") == served.etag) or (
                served.etag is None
                and served.last_modified
                and headers.get("if-modified-since") == served.last_modified
            ):
                status = 304
            else:
                status = 200
            state.requests.append(Request(self.path, headers, status))
            if served is not None and served.on_request is not None:
                served.on_request()
            if served is not None and served.delay:
                time.sleep(served.delay)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._answer(served, status)  # fails only when the client gave up (timeout test)

        def _answer(self, served: Served | None, status: int) -> None:
            self.send_response(status)
            if served is not None and status in (200, 304):
                if served.etag:
                    self.send_header("ETag", served.etag)
                if served.last_modified:
                    self.send_header("Last-Modified", served.last_modified)
            if status == 200 and served is not None:
                self.send_header("Content-Type", served.content_type)
                self.send_header("Content-Length", str(len(served.body)))
                self.end_headers()
                self.wfile.write(served.body)
            else:
                self.send_header("Content-Length", "0")
                self.end_headers()

    return Handler


@contextmanager
def feed_server() -> Iterator[FeedServer]:
    state = FeedServer(server=None)  # type: ignore[arg-type]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.server = server
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
