"""One raw message in, what it reports out: :func:`analyse`.

Four kinds of mail come back to a bounce address, and each is read its own way:

* RFC 3464 DSNs (``message/delivery-status``): one finding per recipient group;
  ``Action: delayed`` is a warning (type ``none``), never a bounce.
* RFC 5965 ARF complaints (``message/feedback-report``): type ``complaint``; the
  reader is whoever the embedded original was addressed to.
* Free-text bounces from MTAs that predate or ignore RFC 3464 (old Sendmail,
  qmail, Exchange, appliances...): recipients from ``flufl.bounce`` (Mailman's
  detectors), else from the notice's own words; the class from :mod:`.classify`.
* RFC 3834 auto-replies (vacation, out of office): type ``autoreply``, ignored.

Anything else is type ``none``.  The embedded original (``message/rfc822``,
``text/rfc822-headers`` or the copy appended to a text bounce) is never mistaken
for the notice: a quoted newsletter about spam must not make a bounce "policy",
and a bounce of a bounce is not a bounce for the address inside it.

Every finding carries what identifies the delivery: the VERP/X-Newsletter-Tag
tag, the original's Message-ID and its List-Unsubscribe token.  They are only
candidates here; the caller checks the tag's signature (see :mod:`.verp`).
"""

from __future__ import annotations

import email
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from email.message import Message
from email.policy import compat32

from . import classify as cls
from .verp import TAG_PATTERN

__all__ = ["Finding", "analyse"]

# flufl.bounce logs a traceback for any detector that trips on odd MIME before
# re-raising; we catch it (see _flufl) and read the message our own way, so the
# traceback would only alarm whoever runs ``bounces scan``.
logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)

TYPES = ("hard", "soft", "policy", "complaint", "autoreply", "none")


@dataclass(frozen=True, slots=True)
class Finding:
    """One recipient's fate as one message reports it."""

    recipient: str | None
    type: str
    status: str | None = None
    text: str = ""
    original_recipient: str | None = None
    action: str | None = None
    tag: str | None = None
    message_id: str | None = None
    unsubscribe_token: str | None = None
    feedback_type: str | None = None


_ADDRESS = re.compile(r"[\w.+'=!#$%&*/?^`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+", re.ASCII)
_DAEMON = re.compile(
    r"^(mailer[-_]?daemon|post[-_]?master|mail[-_]?daemon|mail\.?delivery|maildelivery|"
    r"mdaemon|mailer|bounce[sd]?|nobody|root|sysadmin|mmsc|notify)\b",
    re.IGNORECASE,
)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|returned (mail|to sender)|delivery (status|failure|failed|"
    r"notification|problem|report|error)|failure notice|mail delivery|non-?delivery|"
    r"could not be delivered|not delivered|delivery has failed|mail system error|"
    r"returned mail|rejected|error sending|mail error|bounce",
    re.IGNORECASE,
)
_REPLY_SUBJECT = re.compile(r"\s*(re|fwd?|aw|wg|sv|vs|tr|rif|antw)\s*(\[\d+\])?\s*:", re.I)
# A delay warning in words (the DSN form is Action: delayed): not a bounce.
_WARNING = re.compile(
    r"\bTHIS IS A WARNING\b|\bwarning: message\b.{0,40}\bdelayed\b|has not yet been delivered|"
    r"\bno action is required\b|\bwill (continue to )?(be )?retr(y|ied)\b|"
    r"\bdelivery attempts will continue\b|\bstill (being )?(retried|trying)\b|"
    r"^\s*delayed mail\b|\bdelivery (status notification )?\(delay\)",
    re.IGNORECASE | re.MULTILINE,
)
_SUCCESS = re.compile(
    r"\(success\)|\bsuccessfully delivered\b|\bdelivery (to the following recipients? )?"
    r"(was |has been )?(completed|successful|succeeded)|\b(has|have) been (relayed|delivered)\b",
    re.IGNORECASE,
)
_AWAY = re.compile(  # the opening words of a vacation or out-of-office message
    r"\b(out of (the )?office|on (annual |parental |sick )?(leave|vacation|holiday)|"
    r"away from (the |my )?(office|desk)|i am (currently )?away|i'm (currently )?away|"
    r"limited access to (my )?e-?mail|(respond|reply|get back to you)\b.{0,40}\b(upon|on|after) "
    r"my return|no longer (work|working) (at|for|with))",
    re.IGNORECASE,
)
_AUTOREPLY_SUBJECT = re.compile(
    r"^\s*(auto(matic)?[ -]?(reply|response|antwort)|auto:|out of (the )?office|away|"
    r"vacation|on leave|abwesenheit|absence|r[ée]ponse automatique|respuesta autom)",
    re.IGNORECASE,
)
# Where the notice ends and the copy of the original begins (text bounces).
_CUT = re.compile(
    r"^[ \t>-]*(-+ ?)?(original message|returned message|unsent message|"
    r"below (this line )?is a copy|this is a copy of|a copy of the (original )?message|"
    r"message headers follow|(original|returned) (message )?headers|"
    r"the (original|returned) message (follows|headers|is (attached|below|included))|"
    r"-+ ?(message|headers) (follows|below)|text of the (original|returned) message)"
    r"|^(Received|Return-Path|DKIM-Signature|Message-I[Dd]|MIME-Version|Content-Type|"
    r"X-[A-Za-z-]+): ",
    re.IGNORECASE | re.MULTILINE,
)
_MIME_NOISE = re.compile(
    r"^(--.*|\s*boundary=.*|Content-(Type|Transfer-Encoding|Disposition):.*)$",
    re.IGNORECASE | re.MULTILINE,
)
_ORIGINAL_TYPES = ("message/rfc822", "message/global", "text/rfc822-headers")
_FAILURE_WORDS = re.compile(
    r"could not be delivered|couldn't be delivered|undeliverable|was not delivered|"
    r"wasn't delivered|delivery (has )?failed|failed permanently|permanent (fatal )?error|"
    r"rejected by|returned to (the )?sender|unable to deliver|delivery to the following",
    re.IGNORECASE,
)
_SENDER_LINE = re.compile(
    r"(^|\b)(from|mail from|sender|envelope-from|return-path|reply-to|original sender|"
    r"message-id|x-postfix-sender)\b\s*[:=]?",
    re.IGNORECASE,
)
_NOT_A_READER = re.compile(
    r"(postmaster|mailer-?daemon|hostmaster|abuse|no-?reply|noreply)@|[0-9a-f.$-]{20,}@", re.I
)
_RCPT_TO = re.compile(r"RCPT TO:\s*<?([^\s>]+@[^\s>]+)>?", re.IGNORECASE)
_SMTP_REPLY = re.compile(
    r"(?<![\w.])(?:[245]\d\d[ -]|[245]\.\d{1,3}\.\d{1,3}(?![\d.])|#[245]\.\d).*"
)
_REFERENCE_MSGID = re.compile(r"^Message-I[Dd]:[ \t]*(?:\r?\n[ \t]+)?(<[^>\s]+>)", re.MULTILINE)
_TAG_HEADER = re.compile(r"^X-Newsletter-Tag:[ \t]*(" + TAG_PATTERN + r")", re.I | re.M)
_VERP = re.compile(r"\+(" + TAG_PATTERN + r")@", re.IGNORECASE)
_UNSUB = re.compile(
    r"List-Unsubscribe:[ \t]*(?:\r?\n[ \t]+)?<https?://[^>\s]*/unsubscribe/([\w.-]+)>"
)
_FIELD = re.compile(r"^([A-Za-z][A-Za-z0-9-]*):[ \t]*(.*)$")


def analyse(raw: bytes) -> list[Finding]:
    """Everything ``raw`` reports, one finding per recipient (at least one)."""
    msg = email.message_from_bytes(raw, policy=compat32)
    parts = list(_own_parts(msg))
    notice = _notice_text(msg, parts)
    originals = _original_texts(msg, parts, raw)
    refs = _references(msg, raw, originals)
    findings = (
        _feedback(parts, originals)
        or _dsn(parts, notice)
        or _autoreply(msg, parts, notice)
        or _text_bounce(msg, parts, notice, originals)
    )
    if not findings:
        findings = [Finding(None, "none", text=_first_line(notice))]
    return [
        replace(f, tag=refs[0], message_id=refs[1], unsubscribe_token=refs[2]) for f in findings
    ]


# --- MIME walking -------------------------------------------------------------------


def _own_parts(msg: Message) -> Iterator[Message]:
    """Leaf parts of the notice itself: never inside an attached message."""
    if msg.is_multipart():
        for part in msg.get_payload():
            if not isinstance(part, Message):
                continue
            if part.get_content_maintype() == "message":
                yield part  # an attached original, or a report: a leaf either way
            elif part.is_multipart():
                yield from _own_parts(part)
            else:
                yield part
    else:
        yield msg


def _decoded(part: Message) -> str:
    """The part's text, whatever its transfer encoding and charset claim."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        inner = part.get_payload()
        if isinstance(inner, list):
            return "\n\n".join(_block(m) for m in inner if isinstance(m, Message))
        return str(inner or "")
    charset = part.get_content_charset() or "us-ascii"
    try:
        text = payload.decode(charset, errors="replace")
    except LookupError:
        text = payload.decode("latin-1")
    return text.replace("\r\n", "\n")


def _block(msg: Message, body: bool = True) -> str:
    """A header-only Message (one group of a delivery-status part) back as text."""
    payload = msg.get_payload() if body else None
    lines = [f"{k}: {v}" for k, v in msg.items()]
    if isinstance(payload, str) and payload.strip():  # lines the header parser gave up on
        lines.append(payload.rstrip("\n"))
    return "\n".join(lines)


def _notice_text(msg: Message, parts: list[Message]) -> str:
    """The human-readable notice: text parts, up to where the original is quoted."""
    texts = []
    for part in parts:
        if part.get_content_type() == "text/plain" and not part.get_filename():
            texts.append(_decoded(part))
        elif part.get_content_maintype() == "multipart":  # MIME too broken to split
            texts.append(_MIME_NOISE.sub("", _decoded(part)))
        elif part.get_content_type() == "text/html" and not texts:
            texts.append(re.sub(r"<[^>]+>", " ", _decoded(part)))
    if not texts and not msg.is_multipart():
        texts.append(_decoded(msg))
    text = "\n".join(texts)
    cut = _CUT.search(text)
    return text[: cut.start()] if cut else text


def _original_texts(msg: Message, parts: list[Message], raw: bytes) -> str:
    """What is quoted of the original: attached message/headers, or the appended copy."""
    pieces = []
    for part in parts:
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                pieces.append(_block(inner[0], body=False))  # its headers identify it
            else:
                pieces.append(_decoded(part))
        elif ctype == "text/rfc822-headers" or part.get_filename():
            pieces.append(_decoded(part))
        elif ctype == "text/plain":
            text = _decoded(part)
            cut = _CUT.search(text)
            if cut:
                pieces.append(text[cut.start() :])
    if not msg.is_multipart():
        text = _decoded(msg)
        cut = _CUT.search(text)
        if cut:
            pieces.append(text[cut.start() :])
    return "\n".join(pieces)


def _references(
    msg: Message, raw: bytes, originals: str
) -> tuple[str | None, str | None, str | None]:
    """Candidate tag, original Message-ID and unsubscribe token (unverified)."""
    own = " ".join(_header(msg, h) for h in ("To", "Delivered-To", "X-Original-To", "Envelope-To"))
    text = raw.decode("latin-1")
    tag = _VERP.search(own) or _TAG_HEADER.search(originals) or _TAG_HEADER.search(text)
    tag = tag or _VERP.search(originals)
    msgid = _REFERENCE_MSGID.search(originals)
    unsub = _UNSUB.search(originals) or _UNSUB.search(text)
    return (
        tag.group(1).lower() if tag else None,
        msgid.group(1) if msgid else None,
        unsub.group(1) if unsub else None,
    )


# --- ARF ----------------------------------------------------------------------------


def _fields(text: str) -> list[dict[str, str]]:
    """``Name: value`` groups (blank-line separated, folded lines joined), names lowered."""
    groups: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = None
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            if current:
                groups.append(current)
            current, last = {}, None
            continue
        if line[0] in " \t" and last is not None:
            current[last] += " " + line.strip()
            continue
        match = _FIELD.match(line)
        if match:
            last = match.group(1).lower()
            current.setdefault(last, match.group(2).strip())
        elif last is not None:  # an unindented continuation (seen in the wild)
            current[last] += " " + line.strip()
    if current:
        groups.append(current)
    return groups


def _address(value: str | None) -> str | None:
    """``rfc822; <A@B>`` → ``a@b``."""
    if not value:
        return None
    value = value.split(";", 1)[1] if ";" in value else value
    match = _ADDRESS.search(value)
    return match.group(0).strip(".").lower() if match else None


def _feedback(parts: list[Message], originals: str) -> list[Finding]:
    for part in parts:
        if part.get_content_type() != "message/feedback-report":
            continue
        report: dict[str, str] = {}
        for group in _fields(_decoded(part)):
            for key, value in group.items():
                report.setdefault(key, value)
        recipient = _address(report.get("original-rcpt-to")) or _original_to(originals)
        kind = (report.get("feedback-type") or "abuse").strip().lower()
        verdict = _FEEDBACK_TYPES.get(kind, "complaint")
        return [Finding(recipient, verdict, text=f"feedback: {kind}", feedback_type=kind)]
    return []


# RFC 5965/6591 feedback types: only a reader's "this is spam" is a complaint.  An
# auth-failure report is about our SPF/DKIM/DMARC; "not-spam" is the opposite.
_FEEDBACK_TYPES = {"auth-failure": "policy", "virus": "policy", "not-spam": "none"}


def _original_to(originals: str) -> str | None:
    """The single To address of the quoted original, if it has exactly one."""
    match = re.search(r"^To:[ \t]*(.*(?:\n[ \t].*)*)", originals, re.MULTILINE | re.IGNORECASE)
    if not match:
        return None
    found = {a.lower() for a in _ADDRESS.findall(match.group(1))}
    return found.pop() if len(found) == 1 else None


# --- DSN ----------------------------------------------------------------------------


def _dsn(parts: list[Message], notice: str) -> list[Finding]:
    groups: list[dict[str, str]] = []
    for part in parts:
        if part.get_content_type() in ("message/delivery-status", "message/global-delivery-status"):
            groups += _fields(_decoded(part))
    recipients = [g for g in groups if "final-recipient" in g or "original-recipient" in g]
    if not recipients:  # the fields written into the text part instead (some gateways)
        recipients = [
            g
            for g in _fields(notice)
            if "final-recipient" in g and ("action" in g or "status" in g)
        ]
    return [_dsn_finding(g, notice) for g in recipients]


def _dsn_finding(group: dict[str, str], notice: str) -> Finding:
    final = _address(group.get("final-recipient"))
    original = _address(group.get("original-recipient"))
    diagnostic = group.get("diagnostic-code", "")
    diagnostic = diagnostic.split(";", 1)[1].strip() if ";" in diagnostic[:12] else diagnostic
    raw_status = group.get("status", "").split()[0] if group.get("status") else None
    status = cls.best_status(raw_status, diagnostic)
    action = (group.get("action") or "").split()[0].lower() if group.get("action") else None
    if action is None and status:
        action = {"5": "failed", "4": "delayed", "2": "delivered"}.get(status[0])
    text = _squash(diagnostic) or _first_line(notice)
    if action != "failed":
        return Finding(final or original, "none", status, text, original, action)
    kind = cls.classify(status, diagnostic, notice)
    return Finding(final or original, kind, status, text, original, action)


# --- RFC 3834 auto-replies ------------------------------------------------------------


def _from_address(msg: Message) -> str | None:
    return _address(str(msg.get("From", "")))


def _is_daemon(msg: Message) -> bool:
    sender = str(msg.get("From", ""))
    local = (_from_address(msg) or "").split("@")[0]
    return bool(
        _DAEMON.match(local)
        or re.search(r"mail delivery|mailer-daemon|postmaster", sender, re.I)
        or (
            str(msg.get("Return-Path", "")).strip() == "<>"
            and _BOUNCE_SUBJECT.search(str(msg.get("Subject", "")))
        )
    )


def _autoreply(msg: Message, parts: list[Message], notice: str) -> list[Finding]:
    """An RFC 3834 auto-reply (or a pre-3834 vacation message), but never a bounce."""
    if _is_daemon(msg) or _bounce_subject(msg):
        return []
    submitted = str(msg.get("Auto-Submitted", "")).strip().lower()
    precedence = str(msg.get("Precedence", "")).strip().lower()
    flagged = (
        submitted.startswith("auto-replied")
        or msg.get("X-Autoreply") is not None
        or msg.get("X-Autorespond") is not None
        or precedence == "auto_reply"
        or bool(_AUTOREPLY_SUBJECT.search(str(msg.get("Subject", ""))))
        or bool(_AWAY.search(notice[:800]))
    )
    if not flagged:
        return []
    return [Finding(_from_address(msg), "autoreply", text=_first_line(notice))]


# --- free-text bounces ---------------------------------------------------------------


def _bounce_subject(msg: Message) -> bool:
    """A failure title, not a person's reply or forward ("Re: delivery failure?")."""
    subject = str(msg.get("Subject", ""))
    return not _REPLY_SUBJECT.match(subject) and bool(_BOUNCE_SUBJECT.search(subject))


def _is_bounce(msg: Message, parts: list[Message], notice: str) -> bool:
    """From a mail system, titled as a failure, or a failure notice quoting the original."""
    if _is_daemon(msg) or _bounce_subject(msg):
        return True
    if msg.get("X-Failed-Recipients") is not None:
        return True
    quotes = any(p.get_content_type() in _ORIGINAL_TYPES for p in parts)
    return quotes and bool(_FAILURE_WORDS.search(notice))


def _text_bounce(msg: Message, parts: list[Message], notice: str, originals: str) -> list[Finding]:
    if not _is_bounce(msg, parts, notice):
        return []
    diagnostic = _diagnostic(notice)
    status = cls.best_status(None, diagnostic)
    explained = bool(diagnostic or cls.rule_class(notice))
    recipients = _text_recipients(msg, notice)
    if not recipients and explained:
        single = _original_to(originals)
        recipients = [single] if single else []
    if not (recipients or explained):
        return []  # says that something failed, but neither for whom nor why
    if _delivered(status, diagnostic, notice, str(msg.get("Subject", ""))):
        first = recipients[0] if recipients else None
        return [Finding(first, "none", status, _first_line(notice), action="delivered")]
    if _WARNING.search(notice) or _WARNING.search(str(msg.get("Subject", ""))):
        text = _squash(diagnostic) or _first_line(notice)
        targets: list[str | None] = list(recipients) or [None]
        return [Finding(r, "none", status, text, action="delayed") for r in targets]
    kind = cls.classify(status, diagnostic, notice)
    text = _squash(diagnostic) or _first_line(notice)
    if not recipients:
        return [Finding(None, kind, status, text)]
    return [Finding(r, kind, status, text) for r in recipients]


def _delivered(status: str | None, diagnostic: str, notice: str, subject: str) -> bool:
    """A success notice (delivered, relayed) in words: every quoted reply is 2xx, or it says so."""
    codes = re.findall(r"(?<![\w.])([245])\d\d[ -]", diagnostic)
    if (status or "").startswith("2") or (codes and set(codes) == {"2"}):
        return True
    return bool(_SUCCESS.search(subject) or _SUCCESS.search(notice[:600])) and not codes


def _diagnostic(notice: str) -> str:
    """The remote server's words: SMTP replies quoted in the notice, with their
    indented continuation lines (MTAs wrap long replies: "550 5.1.1 <a@b>:" then
    "    Recipient address rejected: User unknown")."""
    lines = notice.split("\n")
    replies: list[str] = []
    n = 0
    while n < len(lines):
        match = _SMTP_REPLY.search(lines[n])
        n += 1
        if not match:
            continue
        reply = [match.group(0).strip()]
        while n < len(lines) and len(reply) < 5 and lines[n][:1] in (" ", "\t"):
            if not lines[n].strip() or _SMTP_REPLY.match(lines[n].strip()):
                break
            reply.append(lines[n].strip())
            n += 1
        text = " ".join(reply)
        if len(text) > 4:
            replies.append(text)
    return "\n".join(replies)


def _text_recipients(msg: Message, notice: str) -> list[str]:
    """Recipients a free-text bounce names, most trustworthy source first."""
    own = {
        a.lower()
        for h in ("From", "To", "Cc", "Reply-To", "Sender", "Return-Path")
        for a in _ADDRESS.findall(_header(msg, h))
    }
    found = [a.lower() for a in _ADDRESS.findall(_header(msg, "X-Failed-Recipients"))]
    found = found or _flufl(msg)
    if not found:
        found = [a for a in (_address(m) for m in _RCPT_TO.findall(notice)) if a]
    if not found:
        found = _addresses_in(notice)
    seen: dict[str, None] = {}
    for address in found:
        if address not in own and not _VERP.search(address):
            seen.setdefault(address, None)
    candidates = list(seen)
    if len(candidates) > 1:  # drop role addresses from boilerplate and id-like strings
        people = [a for a in candidates if not _NOT_A_READER.match(a)]
        candidates = people or candidates
    return candidates


def _header(msg: Message, name: str) -> str:
    return " ".join(str(v) for v in msg.get_all(name, []))


def _flufl(msg: Message) -> list[str]:
    """Mailman's detectors, shown the notice without the attached original.

    The originals are cut out of ``msg`` itself (the last use of it in
    :func:`analyse`): re-serialising a copy cost more than the rest of the parse.
    """
    from flufl.bounce import all_failures

    _drop_originals(msg)
    for key in {k for k, v in msg.items() if not isinstance(v, str)}:  # 8-bit headers
        value = str(msg.get(key, ""))
        del msg[key]
        msg[key] = value.encode("ascii", "replace").decode("ascii")
    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # a detector tripping on odd MIME: our own reading follows
        return []
    found = []
    for item in sorted(set(temporary) | set(permanent)):
        text = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
        address = _address(text)
        if address:
            found.append(address)
    return found


def _drop_originals(msg: Message) -> None:
    if not msg.is_multipart():
        return
    payload = msg.get_payload()
    assert isinstance(payload, list)
    kept: list[Message] = [
        p for p in payload if isinstance(p, Message) and p.get_content_type() not in _ORIGINAL_TYPES
    ]
    msg.set_payload(kept)  # type: ignore[arg-type]
    for part in kept:
        _drop_originals(part)


def _addresses_in(notice: str) -> list[str]:
    """Addresses the notice names, leaving out those on sender/Message-ID lines."""
    found = []
    for line in notice.split("\n"):
        if _SENDER_LINE.search(line) and not _RCPT_TO.search(line):
            continue
        for match in _ADDRESS.finditer(line):
            if "://" in line[max(0, match.start() - 40) : match.start()]:
                continue
            found.append(match.group(0).strip(".").lower())
    return found


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()[:1000]


def _first_line(text: str) -> str:
    for line in text.split("\n"):
        if line.strip():
            return _squash(line)[:300]
    return ""
