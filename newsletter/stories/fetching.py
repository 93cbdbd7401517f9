"""One HTTP GET under one deadline, to an address that was checked (the feed fetcher's wire).

Why not urllib: its only clock is the per-read socket timeout, so a server that
sends its status line and headers one byte every few seconds keeps a fetch alive
for ever (the digest once waited behind such a feed all day), and it resolves
and connects on its own, so a redirect to ``http://127.0.0.1/...`` or a name that
resolves to a private address is followed blindly (SSRF).  Here:

* :class:`Deadline` is the whole fetch's budget.  Each socket operation gets the
  time that is left as its timeout, and a watchdog timer shuts the socket down
  when the budget runs out, which ends any read in progress (http.client reads
  headers line by line through a buffer; only closing the socket stops that).
* :func:`resolve` looks the host up (in a helper thread, so the lookup is bounded
  too) and refuses loopback, private, link-local, multicast, unspecified and
  reserved addresses unless private feeds are allowed; the connection then goes
  to the checked address (TLS still verifies the host name), so DNS cannot
  answer differently between the check and the connect (rebinding).
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from email.message import Message
from typing import TypeVar
from urllib.parse import urlsplit

from .text import SourceError

_T = TypeVar("_T")


WATCH_EVERY = 0.2  # how often a running fetch looks at its deadline and the stop event


class Deadline:
    """A budget of ``timeout`` seconds from now, shared by every step of a fetch.

    ``stop`` (the timetable's shutdown event) ends the fetch early the same way:
    SIGTERM must stop ``schedule`` promptly whatever a feed server is doing.
    """

    def __init__(self, timeout: float, stop: threading.Event | None = None) -> None:
        self.timeout = timeout
        self.ends = time.monotonic() + timeout
        self.stop = stop

    def left(self) -> float:
        """Seconds left; raises the "timed out" SourceError once the budget is spent."""
        if self.stopped:
            raise self.error()
        remaining = self.ends - time.monotonic()
        if remaining <= 0:
            raise self.error()
        return remaining

    @property
    def stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    @property
    def expired(self) -> bool:
        return self.stopped or time.monotonic() >= self.ends

    def error(self) -> SourceError:
        if self.stopped:
            return SourceError("stopped: the process is shutting down")
        return SourceError(f"timed out after {self.timeout:g}s")

    def wait(self, future: Future[_T]) -> _T:
        """``future``'s result, waiting no longer than the deadline (or the stop event)."""
        while True:
            try:
                return future.result(timeout=min(self.left(), WATCH_EVERY))
            except FutureTimeout:
                continue


def forbidden(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why a feed may not be fetched from ``ip`` (None when it is a public address)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for label, hit in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("unspecified", ip.is_unspecified),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
    ):
        if hit:
            return label
    return None


_LOOKUPS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="feed-dns")


AllowPrivate = bool | tuple[str, ...]
"""True: any address; a tuple of networks ("10.0.0.0/8", "192.168.1.20"): those only."""


def allowed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_private: AllowPrivate) -> bool:
    """``allow_private`` (NEWSLETTER_FEEDS_ALLOW_PRIVATE) lets a feed use ``ip``."""
    if allow_private is True:
        return True
    if allow_private is False:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(net, strict=False) for net in allow_private)


def resolve(host: str, port: int, deadline: Deadline, allow_private: AllowPrivate) -> list[str]:
    """The addresses to connect to for ``host``; SourceError when any is not allowed.

    Every answer is checked (not just the first): a name with one public and one
    private address would otherwise reach the private one on a retry.
    """
    future = _LOOKUPS.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
    try:
        infos = deadline.wait(future)
    except OSError as exc:
        raise SourceError(f"cannot connect: {exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        reason = forbidden(ip)
        if reason is not None and not allowed(ip, allow_private):
            raise SourceError(
                f"refused: {host} resolves to {reason} address {address} "
                "(NEWSLETTER_FEEDS_ALLOW_PRIVATE allows intranet feeds)"
            )
    if not addresses:
        raise SourceError(f"cannot connect: no address for {host}")
    return addresses


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to an already checked address (the Host header keeps the name)."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPS(_PinnedHTTP):
    default_port = http.client.HTTPS_PORT

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, address, timeout)
        self.context = ssl.create_default_context()

    def connect(self) -> None:
        super().connect()
        self.sock = self.context.wrap_socket(self.sock, server_hostname=self.host)


@dataclass
class Answer:
    """One hop's response: a redirect's Location, or a status with its body."""

    status: int
    reason: str
    headers: Message
    body: bytes = b""
    location: str | None = None


def _watchdog(connection: http.client.HTTPConnection, deadline: Deadline) -> threading.Event:
    """Shut the connection's socket down once the deadline passes or stop is set.

    That ends a read blocked inside http.client.  Returns the event that tells the
    watchdog the fetch is over.
    """
    done = threading.Event()

    def watch() -> None:
        while not done.wait(WATCH_EVERY):
            if deadline.expired:
                sock = connection.sock
                if sock is not None:
                    # The plain-socket shutdown, also for an SSLSocket: no TLS alert.
                    with contextlib.suppress(OSError):
                        socket.socket.shutdown(sock, socket.SHUT_RDWR)
                return

    threading.Thread(target=watch, name="feed-watchdog", daemon=True).start()
    return done


def get(
    url: str,
    headers: dict[str, str],
    deadline: Deadline,
    allow_private: AllowPrivate,
    max_bytes: int,
) -> Answer:
    """One GET of ``url`` (no redirect followed) within what is left of ``deadline``."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if https else 80)
    except ValueError:
        raise SourceError("cannot request this URL: bad port") from None
    address = resolve(host, port, deadline, allow_private)[0]
    kind = _PinnedHTTPS if https else _PinnedHTTP
    connection = kind(host, port, address, timeout=deadline.left())
    done = _watchdog(connection, deadline)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    try:
        connection.request("GET", target, headers=headers)
        response = connection.getresponse()
        if deadline.expired:  # the watchdog cut the head short: what was parsed is partial
            raise deadline.error()
        if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
            return Answer(response.status, response.reason, response.headers,
                          location=response.getheader("Location"))  # fmt: skip
        body = _read_body(response, deadline, max_bytes) if response.status == 200 else b""
        if deadline.expired:
            raise deadline.error()
        return Answer(response.status, response.reason, response.headers, body)
    except SourceError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if deadline.expired:
            raise deadline.error() from None
        if isinstance(exc, TimeoutError):
            raise SourceError(f"timed out after {deadline.timeout:g}s") from None
        if isinstance(exc, ConnectionRefusedError | socket.gaierror):
            raise SourceError(f"cannot connect: {exc}") from None
        if isinstance(exc, ValueError):  # e.g. a header value http.client refuses
            raise SourceError(f"cannot request this URL: {exc}") from None
        raise SourceError(f"network error: {exc}") from None
    finally:
        done.set()
        connection.close()


def _read_body(response: http.client.HTTPResponse, deadline: Deadline, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    # read1: one socket read at a time, so the deadline is checked between reads.
    while chunk := response.read1(65536):
        size += len(chunk)
        if size > max_bytes:
            raise SourceError(f"response larger than {max_bytes // 2**20} MB")
        deadline.left()
        chunks.append(chunk)
    return b"".join(chunks)
