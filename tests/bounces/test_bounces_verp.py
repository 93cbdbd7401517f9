"""VERP tags: round trip, forgery, no address inside, the Feedback-ID format."""

from __future__ import annotations

import pytest

from newsletter.bounces.verp import (
    InvalidTag,
    TagSigner,
    envelope_sender,
    feedback_id,
    tag_from_address,
)


def test_round_trip_and_case_insensitive() -> None:
    signer = TagSigner("secret-one")
    tag = signer.tag(12, 345678)
    assert signer.read(tag) == (12, 345678)
    assert signer.read(tag.upper()) == (12, 345678)  # MTAs may change the case
    assert len(tag) < 40 and "@" not in tag


def test_forged_and_foreign_tags_refused() -> None:
    signer = TagSigner("secret-one")
    tag = signer.tag(1, 2)
    issue, _subscriber, mac = tag.split("-")[1:]
    with pytest.raises(InvalidTag):
        signer.read(f"nl-{issue}-3-{mac}")  # another subscriber, same MAC
    with pytest.raises(InvalidTag):
        TagSigner("secret-two").read(tag)  # another installation
    with pytest.raises(InvalidTag):
        signer.read("nl-1-2-" + "a" * 16)
    with pytest.raises(InvalidTag):
        signer.read("not a tag")


def test_envelope_sender_and_back() -> None:
    tag = TagSigner("k").tag(3, 4)
    address = envelope_sender("bounces@news.example.org", tag)
    assert address == f"bounces+{tag}@news.example.org"
    assert tag_from_address(address) == tag
    assert tag_from_address("bounces@news.example.org") is None
    with pytest.raises(ValueError):
        envelope_sender("no-at-sign", tag)


def test_feedback_id_fields_cannot_inject() -> None:
    value = feedback_id(7, "digest", "The Daily: Digest\r\nBcc: x", "news.example.org")
    assert value == "7:digest:The-Daily-Digest-Bcc-x:news.example.org"
    assert value.count(":") == 3
