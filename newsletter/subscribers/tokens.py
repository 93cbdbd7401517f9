"""Signed link tokens (itsdangerous), one salt per purpose.

Tokens carry the subscriber id, never the address, so a forwarded email leaks no
address and a token minted for one purpose cannot be replayed for another.
Unsubscribe and preferences tokens never expire (a years-old email must still
unsubscribe, and its "your preferences" link still open the page);
confirmation tokens expire after :data:`CONFIRM_MAX_AGE` and carry the
subscription's epoch (``[id, epoch]``; a bare id from before epochs reads as
epoch 0), so a link minted before an unsubscribe and a new signup cannot bring
the reader back (:meth:`Tokens.read_confirm_epoch`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from itsdangerous import (
    BadSignature,
    SignatureExpired,
    URLSafeSerializer,
    URLSafeTimedSerializer,
    base64_encode,
)
from itsdangerous.serializer import Serializer

CONFIRM_MAX_AGE = timedelta(days=7)
_UNSUBSCRIBE_SALT = "newsletter.unsubscribe.v1"
_CONFIRM_SALT = "newsletter.confirm.v1"
_PREFERENCES_SALT = "newsletter.preferences.v1"


class InvalidToken(ValueError):
    """Tampered, malformed or minted for another purpose."""


class ExpiredToken(InvalidToken):
    """Genuine but too old; ``subscriber_id`` lets the page offer a fresh link."""

    def __init__(self, subscriber_id: int | None, epoch: int = 0) -> None:
        super().__init__("link expired")
        self.subscriber_id = subscriber_id
        self.epoch = epoch


class _UncompressedSerializer(URLSafeSerializer):
    """URLSafeSerializer minus the zlib attempt on every dump.

    A subscriber id never compresses, yet itsdangerous tries on each token: that
    was a third of the per-recipient cost of a message.  The output is the same
    format (loads() accepts it unchanged), so existing links keep working.
    """

    def dump_payload(self, obj: object) -> bytes:
        return base64_encode(Serializer.dump_payload(self, obj))


class Tokens:
    """Mint and check tokens with one secret key."""

    def __init__(self, secret_key: str) -> None:
        self._unsubscribe = _UncompressedSerializer(secret_key, salt=_UNSUBSCRIBE_SALT)
        self._confirm = URLSafeTimedSerializer(secret_key, salt=_CONFIRM_SALT)
        self._preferences = _UncompressedSerializer(secret_key, salt=_PREFERENCES_SALT)

    def unsubscribe(self, subscriber_id: int) -> str:
        return str(self._unsubscribe.dumps(subscriber_id))

    def read_unsubscribe(self, token: str) -> int:
        try:
            value = self._unsubscribe.loads(token)
        except BadSignature:
            raise InvalidToken("bad unsubscribe token") from None
        return _as_id(value)

    def preferences(self, subscriber_id: int) -> str:
        """The ``/preferences/<token>`` link's token (signed like the unsubscribe one)."""
        return str(self._preferences.dumps(subscriber_id))

    def read_preferences(self, token: str) -> int:
        try:
            value = self._preferences.loads(token)
        except BadSignature:
            raise InvalidToken("bad preferences token") from None
        return _as_id(value)

    def confirm(self, subscriber_id: int, epoch: int = 0) -> str:
        return str(self._confirm.dumps([subscriber_id, epoch]))

    def read_confirm(self, token: str, max_age: timedelta = CONFIRM_MAX_AGE) -> int:
        """The subscriber id of a genuine, unexpired confirm token."""
        return self.read_confirm_epoch(token, max_age)[0]

    def read_confirm_epoch(
        self, token: str, max_age: timedelta = CONFIRM_MAX_AGE
    ) -> tuple[int, int]:
        """(subscriber id, epoch) of a genuine, unexpired confirm token."""
        try:
            value = self._confirm.loads(token, max_age=int(max_age.total_seconds()))
        except SignatureExpired as exc:
            raise self._expired(exc.payload) from None
        except BadSignature:
            raise InvalidToken("bad confirmation token") from None
        return _id_epoch(value)

    def _expired(self, payload: Any) -> ExpiredToken:
        """The error for a genuine but old token: who it was for, when that can be read.

        The signature checked out, so the payload is ours; it can still be one no
        current reader understands (a format from before, or a forged-with-the-key
        oddity), and then the page offers no fresh link rather than failing.
        """
        try:
            sid, epoch = _id_epoch(self._confirm.load_payload(payload))
        except (BadSignature, InvalidToken):
            return ExpiredToken(None)
        return ExpiredToken(sid, epoch)


def _id_epoch(value: object) -> tuple[int, int]:
    if isinstance(value, list) and len(value) == 2:
        epoch = value[1]
        if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0:
            return _as_id(value[0]), epoch
        raise InvalidToken("token does not carry an epoch")
    return _as_id(value), 0  # a token minted before epochs existed


def _as_id(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise InvalidToken("token does not carry a subscriber id")
