"""Finished message bytes: structure, every header, hostile names, real SMTP acceptance."""

from __future__ import annotations

import re
import smtplib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.headerregistry import Address
from email.utils import parsedate_to_datetime

import pytest
from _digest_support import (
    FrozenIssue,
    decoded_to_name,
    fixture_digest,
    open_ctx,
    parse_strict,
    part_text,
)

from newsletter.config import Settings
from newsletter.context import Context
from newsletter.mail import message
from newsletter.mail.headers import addr_spec, header_safe, without_specials
from newsletter.mail.message import MessageFactory, build_single

REQUIRED = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "X-Newsletter-Tag",  # issue 11: names the delivery for bounces
    "Feedback-ID",
    "Content-Type",
]


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrozenIssue]:
    """A real 10-story digest from the fixture feeds (BBC, El Mundo, ...), built once."""
    ctx = open_ctx(tmp_path_factory.mktemp("message"))
    yield fixture_digest(ctx)
    ctx.close()


@pytest.fixture
def factory(frozen: FrozenIssue) -> MessageFactory:
    return MessageFactory(frozen.ctx, frozen.issue_id, frozen.subject, frozen.html, frozen.text)


def assert_wire_format(data: bytes) -> None:
    """CRLF only, no line over 998 octets (headers also fold at 78 where they can)."""
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    lines = data.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    head, _, body = data.partition(b"\r\n\r\n")
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))
    assert all(len(line) <= 76 for line in body.split(b"\r\n"))  # QP bodies
    assert data.isascii()


def test_structure_and_every_header(factory: MessageFactory, frozen: FrozenIssue) -> None:
    ctx, issue_id, subject = frozen.ctx, frozen.issue_id, frozen.subject
    built = factory.build(42, "ana@example.net", "Ana María López")
    assert_wire_format(built.data)
    msg = parse_strict(built.data)
    assert not msg.defects
    for name in REQUIRED:
        assert len(msg.get_all(name) or []) == 1, name

    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert all(p["Content-Transfer-Encoding"] == "quoted-printable" for p in parts)
    assert all(not p.defects for p in parts)

    assert msg["From"].addresses[0] == Address("The Daily Digest", "news", "example.com")
    to = msg["To"].addresses
    assert len(to) == 1 and to[0].display_name == "Ana María López"
    assert to[0].addr_spec == "ana@example.net"
    assert b"To: =?utf-8?" in built.data  # non-ASCII display name is RFC 2047-encoded
    assert msg["Subject"] == subject
    assert msg["Date"].endswith("+0000")
    sent = parsedate_to_datetime(msg["Date"])
    assert sent.utcoffset() is not None and sent.utcoffset().total_seconds() == 0
    assert abs((datetime.now(UTC) - sent).total_seconds()) < 60
    assert msg["Message-ID"] == built.message_id
    assert re.fullmatch(r"<[^<>@\s]+@example\.com>", built.message_id)
    assert msg["MIME-Version"] == "1.0"
    assert msg["List-Id"] == "The Daily Digest <the-daily-digest.example.com>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe = re.fullmatch(
        r"<(https://news\.example\.com/unsubscribe/([A-Za-z0-9_.-]+))>", msg["List-Unsubscribe"]
    )
    assert unsubscribe, msg["List-Unsubscribe"]
    url, token = unsubscribe.groups()
    assert ctx.tokens.read_unsubscribe(token) == 42
    assert "ana" not in token.lower()

    text, html = part_text(msg, "plain"), part_text(msg, "html")
    archive = f"https://news.example.com/archive/{issue_id}"
    for body in (text, html):
        assert url in body
        assert archive in body
        assert "1 Fleet Street, London EC4Y 1AA" in body
        assert "__NL_" not in body
    assert "Hi Ana," in text  # the first name only
    assert "Hi Ana," in html and "López" not in html
    assert html.lstrip().startswith("<!DOCTYPE html>")


def test_message_ids_unique_and_tokens_per_recipient(factory: MessageFactory) -> None:
    seen_ids: set[str] = set()
    seen_unsub: set[str] = set()
    for sid in range(1, 301):
        built = factory.build(sid, f"reader{sid}@example.org", "")
        msg = parse_strict(built.data)
        assert msg["Message-ID"] == built.message_id
        seen_ids.add(built.message_id)
        seen_unsub.add(msg["List-Unsubscribe"])
        assert "\nHi " not in part_text(msg, "plain")  # no name: no greeting
    assert len(seen_ids) == 300 and len(seen_unsub) == 300
    again = factory.build(1, "reader1@example.org", "")
    assert again.message_id not in seen_ids  # a retry is a new message


@pytest.mark.parametrize(
    "name",
    [
        "Eve\r\nBcc: victim@example.com",
        "Eve\nBcc: victim@example.com",
        "=?utf-8?q?x=0D=0ABcc:_victim@example.com?=",
        "=?utf-8?b?eA0KQmNjOiB2aWN0aW1AZXhhbXBsZS5jb20=?=",
        "Mallory <mallory@evil.example>, victim@example.com",
        '"quoted", name; with (comments) \\ backslash',
        "<script>alert('x')</script> & Co",
        "\u202eevil\u202c \x00\x07\x1b[31m",
        "Zoë 🎉 Ωμέγα 山田太郎 " * 8,
        "",
    ],
)
def test_hostile_names_stay_inert(factory: MessageFactory, name: str) -> None:
    built = factory.build(7, "target@example.org", name)
    assert_wire_format(built.data)
    msg = parse_strict(built.data)
    assert not msg.defects
    assert msg.get_all("Bcc") is None and msg.get_all("Cc") is None
    assert len(msg.get_all("To") or []) == 1
    to = msg["To"].addresses
    assert [a.addr_spec for a in to] == ["target@example.org"]
    shown = decoded_to_name(built.data)
    assert not any(c in to[0].display_name for c in "\r\n\x00")
    assert "\r" not in shown and "\n" not in shown and "\x00" not in shown
    assert "\u202e" not in shown
    if "=?" in name:
        # Shown literally, never decoded into headers (address specials become spaces).
        assert shown == without_specials(name)
    header_names = [k.lower() for k in msg]
    assert sorted(header_names) == sorted(h.lower() for h in REQUIRED)
    html = part_text(msg, "html")
    assert "<script>" not in html
    if "<script>" in name:
        assert "Hi &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;," in html
        assert "Hi <script>alert('x')</script>," in part_text(msg, "plain")


@pytest.mark.parametrize(
    "address",
    ["a@b.example\r\nBcc: x@y.example", "a b@example.com", "<a@example.com>", "no-at-sign", ""],
)
def test_bad_addresses_are_refused(factory: MessageFactory, address: str) -> None:
    with pytest.raises(ValueError):
        factory.build(1, address, "x")


def test_idn_domain_is_encoded_and_utf8_local_part_refused() -> None:
    assert addr_spec("user@bücher.example") == "user@xn--bcher-kva.example"
    with pytest.raises(ValueError, match="SMTPUTF8"):
        addr_spec("üser@example.com")


@pytest.mark.parametrize(
    "value", ["a\rb", "a\nb", "a\x00b", "tab\there", "=?utf-8?q?hi?=", "x\u2028y", "\x85"]
)
def test_header_safe_refuses(value: str) -> None:
    with pytest.raises(ValueError):
        header_safe(value)


def test_header_safe_passes_normal_text() -> None:
    assert header_safe("Le Café – 27 Nov: “quotes” & more") == "Le Café – 27 Nov: “quotes” & more"


def test_non_ascii_everywhere(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(
        NEWSLETTER_FROM="Le Café Quotidien <cafe@example.com>",
        NEWSLETTER_SITE_NAME="Le Café Quotidien",
        NEWSLETTER_POSTAL_ADDRESS="12 Rue de la Paix, 75002 Paris — France",
    )
    ctx = Context.open(settings)
    try:
        subject = "Ça démarre : « Été » 🌞 à Zürich – 東京"
        built = MessageFactory(
            ctx, 5, subject, "<p>__NL_GREETING__ é</p>", "__NL_GREETING__ é\n"
        ).build(3, "juergen@bücher.example", "Jürgen Straße")
        assert_wire_format(built.data)
        msg = parse_strict(built.data)
        assert msg["Subject"] == subject
        assert msg["From"].addresses[0].display_name == "Le Café Quotidien"
        assert msg["To"].addresses[0].display_name == "Jürgen Straße"
        assert msg["To"].addresses[0].addr_spec == "juergen@xn--bcher-kva.example"
        assert msg["List-Id"] == "Le Café Quotidien <le-cafe-quotidien.example.com>"
        assert part_text(msg, "plain") == "Hi Jürgen, é\n"
    finally:
        ctx.close()


def test_long_values_keep_lines_short(ctx: Context) -> None:
    long_subject = "Headline " * 30
    long_line = "x" * 5000 + " é " + "y" * 5000
    factory = MessageFactory(ctx, 9, long_subject, f"<p>{long_line}</p>", long_line)
    built = factory.build(1, "a@example.com", "N" * 200)
    assert_wire_format(built.data)
    msg = parse_strict(built.data)
    assert msg["Subject"] == long_subject.strip()
    assert decoded_to_name(built.data) == "N" * 200
    assert part_text(msg, "plain") == long_line + "\n" or part_text(msg, "plain") == long_line


def test_placeholders_at_edges_and_percent_signs(ctx: Context) -> None:
    text = "__NL_GREETING__100% sure %s %b __NL_UNSUBSCRIBE_URL__"
    html = "__NL_UNSUBSCRIBE_URL__<p>50%% __NL_GREETING__</p>"
    built = MessageFactory(ctx, 1, "Percent % subject", html, text).build(12, "a@example.com", "Al")
    msg = parse_strict(built.data)
    url = msg["List-Unsubscribe"].strip("<>")
    assert part_text(msg, "plain") == f"Hi Al,100% sure %s %b {url}"
    assert part_text(msg, "html") == f"{url}<p>50%% Hi Al,</p>"
    assert msg["Subject"] == "Percent % subject"


def test_build_single_confirmation_has_no_list_unsubscribe(ctx: Context) -> None:
    built = build_single(
        ctx, "new@example.org", "Nia", "Confirm your subscription", "<p>Hi</p>", "Hi\n"
    )
    msg = parse_strict(built.data)
    assert msg["List-Unsubscribe"] is None and msg["List-Unsubscribe-Post"] is None
    assert msg["To"].addresses[0].addr_spec == "new@example.org"
    assert msg["Message-ID"] == built.message_id
    assert_wire_format(built.data)


def test_build_single_with_unsubscribe_url(ctx: Context) -> None:
    url = "https://news.example.com/unsubscribe/abc.def"
    built = build_single(
        ctx, "a@example.org", "", "Test copy", "<a href='__NL_UNSUBSCRIBE_URL__'>u</a>",
        "u: __NL_UNSUBSCRIBE_URL__", url, issue_id=3,
    )  # fmt: skip
    msg = parse_strict(built.data)
    assert msg["List-Unsubscribe"] == f"<{url}>"
    assert url in part_text(msg, "plain") and url in part_text(msg, "html")
    with pytest.raises(ValueError):
        build_single(ctx, "a@example.org", "", "x", "h", "t", "javascript:alert(1)")
    with pytest.raises(ValueError):
        build_single(ctx, "a@example.org", "", "x", "h", "t", "https://x.example/\r\nBcc: y")


def test_real_smtp_server_accepts_and_round_trips(
    factory: MessageFactory, smtp_server: object
) -> None:
    server = smtp_server
    built = [factory.build(i, f"r{i}@example.org", n) for i, n in ((1, "Ana"), (2, "Ωmega"))]
    host, port = server.controller.hostname, server.controller.port  # type: ignore[attr-defined]
    with smtplib.SMTP(host, port) as client:
        for i, b in enumerate(built, start=1):
            client.sendmail("bounces@example.com", [f"r{i}@example.org"], b.data)
    received = server.messages  # type: ignore[attr-defined]
    assert [r.data for r in received] == [b.data for b in built]
    for r in received:
        assert not parse_strict(r.data).defects


def test_module_exports() -> None:
    assert message.header_safe is header_safe


def test_unfoldable_subject_word_and_long_site_name(make_settings: Callable[..., Settings]) -> None:
    ctx = Context.open(make_settings(NEWSLETTER_SITE_NAME="Very Long Site Name " * 20))
    try:
        subject = "Start " + "x" * 3000 + " end"
        built = MessageFactory(ctx, 1, subject, "<p>x</p>", "x").build(1, "a@example.com", "")
        assert_wire_format(built.data)
        msg = parse_strict(built.data)
        assert msg["Subject"] == subject
        assert msg["List-Id"].endswith(".example.com>")
    finally:
        ctx.close()
