"""Signed link tokens, checked value by value.

The web tests show the pages; these pin what each token decodes to and why a bad
one is refused, including payloads only someone holding the key could sign (an
old format, a forged oddity): those must be refused as cleanly as a tampered one.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from itsdangerous import URLSafeSerializer, URLSafeTimedSerializer

from newsletter.subscribers import tokens as tokens_module
from newsletter.subscribers.tokens import ExpiredToken, InvalidToken, Tokens

SECRET = "test-secret-key-for-tokens"
PAST = timedelta(seconds=-1)  # every token is already older than this


@pytest.fixture
def tokens() -> Tokens:
    return Tokens(SECRET)


def signed_confirm(payload: object) -> str:
    """A confirm token with any payload, signed with the real key and salt."""
    serializer = URLSafeTimedSerializer(SECRET, salt=tokens_module._CONFIRM_SALT)
    return str(serializer.dumps(payload))


def signed_untimed(salt: str, payload: object) -> str:
    return str(URLSafeSerializer(SECRET, salt=salt).dumps(payload))


def test_each_token_reads_back_its_own_id(tokens: Tokens) -> None:
    assert tokens.read_unsubscribe(tokens.unsubscribe(41)) == 41
    assert tokens.read_preferences(tokens.preferences(42)) == 42
    assert tokens.read_confirm(tokens.confirm(43)) == 43
    assert tokens.read_confirm_epoch(tokens.confirm(44, 6)) == (44, 6)


def test_a_confirm_token_carries_epoch_zero_unless_told(tokens: Tokens) -> None:
    assert tokens.read_confirm_epoch(tokens.confirm(9)) == (9, 0)


@pytest.mark.parametrize(
    ("read", "message"),
    [
        ("read_unsubscribe", "bad unsubscribe token"),
        ("read_preferences", "bad preferences token"),
        ("read_confirm", "bad confirmation token"),
    ],
)
def test_a_tampered_token_says_which_kind_was_bad(tokens: Tokens, read: str, message: str) -> None:
    minted = {
        "read_unsubscribe": tokens.unsubscribe,
        "read_preferences": tokens.preferences,
        "read_confirm": tokens.confirm,
    }[read](5)
    tampered = minted[:-2] + ("AA" if not minted.endswith("AA") else "BB")
    with pytest.raises(InvalidToken) as caught:
        getattr(tokens, read)(tampered)
    assert str(caught.value) == message
    assert type(caught.value) is InvalidToken


def test_a_token_for_one_purpose_is_refused_for_another(tokens: Tokens) -> None:
    with pytest.raises(InvalidToken, match=r"^bad preferences token$"):
        tokens.read_preferences(tokens.unsubscribe(5))
    with pytest.raises(InvalidToken, match=r"^bad unsubscribe token$"):
        tokens.read_unsubscribe(tokens.preferences(5))


def test_an_expired_confirm_token_still_says_whose_and_which_epoch(tokens: Tokens) -> None:
    with pytest.raises(ExpiredToken) as caught:
        tokens.read_confirm(tokens.confirm(12, 3), max_age=PAST)
    assert (caught.value.subscriber_id, caught.value.epoch) == (12, 3)
    assert str(caught.value) == "link expired"


def test_the_max_age_is_the_callers(tokens: Tokens) -> None:
    fresh = tokens.confirm(12, 3)
    assert tokens.read_confirm(fresh, max_age=timedelta(days=1)) == 12
    with pytest.raises(ExpiredToken):
        tokens.read_confirm_epoch(fresh, max_age=PAST)


def test_an_expired_token_with_an_unreadable_payload_offers_no_link(tokens: Tokens) -> None:
    for payload in (0, [0, 0], [7, -1], "seven"):
        with pytest.raises(ExpiredToken) as caught:
            tokens.read_confirm_epoch(signed_confirm(payload), max_age=PAST)
        assert (caught.value.subscriber_id, caught.value.epoch) == (None, 0), payload


def test_a_confirm_token_from_before_epochs_reads_as_epoch_zero(tokens: Tokens) -> None:
    assert tokens.read_confirm_epoch(signed_confirm(7)) == (7, 0)


@pytest.mark.parametrize("epoch", [-1, True, "1", 1.0, None])
def test_a_confirm_token_with_a_bad_epoch_is_refused(tokens: Tokens, epoch: object) -> None:
    with pytest.raises(InvalidToken) as caught:
        tokens.read_confirm_epoch(signed_confirm([7, epoch]))
    assert str(caught.value) == "token does not carry an epoch"


@pytest.mark.parametrize("sid", [0, -3, True, "7", None, 7.0])
def test_a_confirm_token_without_a_real_id_is_refused(tokens: Tokens, sid: object) -> None:
    with pytest.raises(InvalidToken) as caught:
        tokens.read_confirm_epoch(signed_confirm([sid, 1]))
    assert str(caught.value) == "token does not carry a subscriber id"


@pytest.mark.parametrize("payload", [[7], [7, 1, 2], {"id": 7}])
def test_a_confirm_token_of_another_shape_is_refused(tokens: Tokens, payload: object) -> None:
    with pytest.raises(InvalidToken, match=r"^token does not carry a subscriber id$"):
        tokens.read_confirm_epoch(signed_confirm(payload))


def test_epoch_zero_is_a_real_epoch(tokens: Tokens) -> None:
    assert tokens.read_confirm_epoch(signed_confirm([7, 0])) == (7, 0)


@pytest.mark.parametrize("payload", [0, True, "7", [7, 0]])
def test_untimed_tokens_carry_only_a_positive_id(tokens: Tokens, payload: object) -> None:
    for salt, read in (
        (tokens_module._UNSUBSCRIBE_SALT, tokens.read_unsubscribe),
        (tokens_module._PREFERENCES_SALT, tokens.read_preferences),
    ):
        with pytest.raises(InvalidToken, match=r"^token does not carry a subscriber id$"):
            read(signed_untimed(salt, payload))


def test_untimed_tokens_are_the_plain_itsdangerous_format(tokens: Tokens) -> None:
    """Links already in inboxes were made by the stock serializer: still read."""
    stock = signed_untimed(tokens_module._UNSUBSCRIBE_SALT, 77)
    assert tokens.unsubscribe(77) == stock
    assert tokens.read_unsubscribe(stock) == 77


def test_the_three_salts_differ(tokens: Tokens) -> None:
    salts = {
        tokens_module._UNSUBSCRIBE_SALT,
        tokens_module._CONFIRM_SALT,
        tokens_module._PREFERENCES_SALT,
    }
    assert len(salts) == 3
    assert tokens.unsubscribe(5) != tokens.preferences(5)


def test_another_key_is_refused() -> None:
    with pytest.raises(InvalidToken):
        Tokens("another-key").read_unsubscribe(Tokens(SECRET).unsubscribe(5))
