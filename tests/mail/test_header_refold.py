"""Display names that must stay one address after a downstream re-fold (issue 16, finding 11).

Each message goes through a real SMTP server; what arrived is parsed and written
again with Python 3.11.7's ``email.policy.default`` (as a Python relay or archive
would, with a 40-column line length to force re-folding, and by copying the header
into a new message), then parsed again: exactly one address must come back.
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable
from email.message import EmailMessage

import pytest
from conftest import SMTPServer

from newsletter.config import Settings
from newsletter.context import Context
from newsletter.delivery import open_transport
from newsletter.mail import build_single
from newsletter.mail.headers import phrase

HOSTILE = [
    "Ålice, attacker@evil.example",
    "Ålice <attacker@evil.example>",
    "Zoë: attacker@evil.example;",
    'Zoë" <attacker@evil.example>, "x',
    'x\\", evil@attacker.example, "y',  # ASCII: a quoted-string whose \\ must be escaped
    "Bob, attacker@evil.example",
    "Müller (evil@attacker.example), Joe",
    "J. R. Smith, attacker@evil.example",
    "x" * 70 + ", attacker@evil.example",  # long ASCII: encoded too
]


def refolded(data: bytes) -> list[EmailMessage]:
    """``data`` re-serialised three ways by policy.default and parsed back."""
    first = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(first, EmailMessage)
    outputs = [
        first.as_bytes(policy=email.policy.default),
        first.as_bytes(policy=email.policy.default.clone(max_line_length=40)),
    ]
    copy = EmailMessage(policy=email.policy.default)
    copy["To"] = first["To"]
    outputs.append(copy.as_bytes())
    parsed = []
    for out in outputs:
        again = email.message_from_bytes(out, policy=email.policy.default)
        assert isinstance(again, EmailMessage)
        parsed.append(again)
    return parsed


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_display_name_is_one_address_after_any_refold(
    make_settings: Callable[..., Settings], smtp_server: SMTPServer, name: str
) -> None:
    ctx = Context.open(make_settings(NEWSLETTER_SMTP_URL=smtp_server.url))
    try:
        built = build_single(ctx, "bob@example.com", name, "Hello", "<p>Hi</p>", "Hi")
        transport = open_transport(ctx.settings)
        try:
            transport.send(ctx.settings.from_email, "bob@example.com", built.data)
        finally:
            transport.close()
    finally:
        ctx.close()
    (received,) = smtp_server.messages
    for message in [received.message, *refolded(received.data)]:
        addresses = message["To"].addresses
        assert [a.addr_spec for a in addresses] == ["bob@example.com"], message["To"]


def test_plain_names_keep_their_text() -> None:
    assert phrase("Ålice Smith") == "=?utf-8?b?w4VsaWNlIFNtaXRo?="
    assert phrase("Alice Smith") == "Alice Smith"
    assert phrase("Smith, Alice") == "Smith Alice"
    assert phrase("J. R. Smith") == '"J. R. Smith"'
    # Quotes, backslashes, commas and @ go: escapes do not survive a re-fold.
    assert phrase('x\\", evil@attacker.example, "y') == '"x evil attacker.example y"'


@pytest.mark.parametrize(
    "address", ["=?utf-8?q?=0D=0ABcc=3A_x?=@example.com", "a=?b?=@example.com"]
)
def test_an_address_with_an_encoded_word_is_refused(address: str) -> None:
    """Legal atext, but parsers decode it even in a local part (a CR/LF on re-fold)."""
    from newsletter.mail.headers import addr_spec

    with pytest.raises(ValueError, match="encoded word"):
        addr_spec(address)
