"""What a failure says: ``hard``, ``soft`` or ``policy``, from status code and text.

Status codes alone are not enough.  Many real servers answer ``5.0.0`` (or a bare
``550``) and say what happened only in words; others put a recipient problem under
``5.7.1``; and ``5.1.7``/``5.1.8``/``5.7.x`` are about the *sender*, not the reader.
So the diagnostic text is read first, with rules written from the phrases MTAs and
providers use in general (Postfix, Sendmail, Exim, qmail, Exchange/Office 365,
Gmail, Yahoo, ...), and the status code decides only when the words say nothing.

The costly mistake is a false ``hard``: it suppresses a reader who is fine.  Hence
the order (the sender's problems and full mailboxes before "no such user"), and
the rule that an undetermined permanent failure is ``soft``: soft bounces only
suppress someone after several issues in a row fail.
"""

from __future__ import annotations

import re

__all__ = ["HARD", "POLICY", "SOFT", "classify", "find_status", "rule_class"]

HARD = "hard"
SOFT = "soft"
POLICY = "policy"


def _rx(*alternatives: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{a})" for a in alternatives), re.IGNORECASE)


# The receiver refused *us*: reputation, content, authentication, relaying.
_SENDER = _rx(
    r"\b(sender|mail from|envelope from|from address|return[- ]path)\b.{0,60}\b(rejected|denied|"
    r"refused|blocked|not (allowed|permitted|verified)|verif\w+ fail\w*|unknown|invalid|"
    r"(does not|doesn't|not) exist|not found|unroutable)",
    r"\b(unroutable|invalid|unknown|bogus|empty|null|unverified) (sender|mail from|envelope)",
    r"\b(rejected|refused|blocked|denied)\b.{0,20}\bsender\b",
    r"\bsender (address|domain) (rejected|denied|verification)",
    r"\bfrom address\b.{0,30}\b(rejected|invalid|refused)",
    r"\b5\.1\.[78]\b",
)
_POLICY = _rx(
    r"\bspam\w*\b",
    r"\bjunk ?mail\b",
    r"\bunsolicited\b",
    r"\bbulk (e-?)?mail\b",
    r"\b(black|block|deny|ban)[ -]?list(ed)?\b",
    r"\bblocked\b",
    r"\b(rbl|dnsbl|spamhaus|spamcop|sorbs|uceprotect|barracudacentral|cloudmark)\b",
    r"\breputation\b",
    r"\blisted (at|in|on|by) (the )?\S*(bl|black|block|spam|abuse)",
    r"\b(dmarc|dkim|spf)\b",
    r"\bunauthenticated\b",
    r"\bauthentication (is )?(required|failed|failure)",
    r"\bnot authori[sz]ed\b",
    r"\breverse (dns|lookup)|\bptr record|\brdns\b",
    r"\brelay(ing)?\b.{0,30}\b(denied|not (allowed|permitted)|prohibited|refused)",
    r"\b(not permitted to|not allowed to|unable to|we do not|cannot|can't) relay\b",
    r"\brelay through this server\b",
    r"\b(virus|malware|phishing|infected|suspicious)\b",
    r"\bcontent (filter|rejected|policy|restrictions?)|\bmessage content\b|\bcontent was rejected",
    r"\bpolicy (violation|reasons?|rejection)|\b(rejected|refused|denied) (by|due to|for) "
    r"(local |our |security )?polic",
    r"\b(due to|for) (local |security )?polic(y|ies)\b",
    r"\bsecurity (polic\w+|reasons?)\b",
    r"\bbanned\b|\bprohibited\b",
    r"\bhas been (rejected|refused|denied) by\b",
    r"\baccess denied\b",
    r"\bnot accepted due to\b",
    r"\bsuspected\b",
    r"\bdynamic (ip|dns|address|pool)|\bfrom (your|this|dynamic) (ip|server|host|network)\b",
    r"\b(illegal|forbidden|prohibited|dangerous|executable) (\w+ )?(attachments?|files?)|"
    r"\bmail with attachments|\battachments? (are|is) not|\bmass mailer|\blow priority|"
    r"\bheaders? (error|are not)|\bheaders?\b.{0,30}\b(size|exceeds|invalid|duplicate|improper)|"
    r"\bduplicate header|\bmime (complexity|headers?)|\bbase64 encoding|\bbinary content|"
    r"\bprotocol violation|\borgani[sz]ation(al)? (policy|settings)",
    r"\bmailing list\b|\bmembers[- ]only|\bnot subscribed to (this|the) (group|list)|\bnon-?member",
    r"\bauthenticat(e|es|ed|ion)\b(?!-results)|\btls (is )?required|\brequires? (starttls|tls)|"
    r"\binsecure\b|\bverification fail|\brcpthosts?\b",
    r"\bintrusion\b",
)
# The reader's mailbox exists but cannot take mail now (or the network failed).
_SOFT = _rx(
    r"\bmailbox (is |was )?(full|over|exceed\w*)",
    r"\b(over|exceed\w*) (the |its |his |her |their )?(quota|storage|allocat\w+)",
    r"\bexceed\w*\b.{0,30}\b(storage|quota|disk|space)\b",
    r"\bquota\b",
    r"\b(mail ?box|mail ?folder|in-?box|mail ?drop)\b.{0,15}\bfull\b",
    r"\b(disk|storage) (space|full|allocation|limit)",
    r"\bnot enough (disk|storage|space)",
    r"\binsufficient (system )?(storage|space|disk)",
    r"\bmailbox size\b|\bmailbox.{0,20}\b(too (large|big)|limit)",
    r"\b(message|mail) (is |was )?too (large|big)|\bsize (limit|exceeded)|\bexceeds.{0,30}size",
    r"\btoo many (connections|messages|recipients|sessions|concurrent)",
    r"\brate[ -]?limit|\bthrottl\w+|\bslow down\b",
    r"\btry (again )?later\b|\btemporar\w*|\bdeferr\w+|\bgreylist",
    r"\btimed? ?out\b|\btime ?out\b|\bexpired\b|\bcannot send message for\b|"
    r"\bcould not be delivered for \d",
    r"\bretry (time|timeout|period)",
    r"\bhop count|\bmail loop|\bloop(s)? (back|detected)|\btoo many hops",
    r"\bconnection (refused|reset|lost|closed|failure)",
    r"\b(network|resources?) (error|unavailable|problem)|\blocal error\b|"
    r"\bsystem (error|failure|full)",
    r"\b(account|mailbox|user|address)\b.{0,30}\b(disabled|suspended|inactive|deactivated|"
    r"locked|frozen|on hold|blocked for)",
    r"\b(disabled|suspended|inactive|deactivated)\b.{0,20}\b(account|mailbox|user)",
    r"\bupstream error\b",
    # the network or the receiving system failed, not the address
    r"not found, try again|\bno route to host|\bhost (is )?unreachable|\bunable to resolve|"
    r"\bunrouteable mail domain|\bname server (reply|timeout|failure|error)|\bmalformed\b|"
    r"\bdns records\b.{0,40}\bcould not be found|"
    r"\bcould not connect|\bserver did not respond|\bgiving up on\b|\bqueue too long|"
    r"\bnot been collected|\bqueue period|\bnot reachable\b|\bcould not find a gateway|"
    r"\bloop(ing|s|ed)?\b",
    r"\b(configuration|config|internal|system|queue file|write|local) error\b|\bmisconfigured|"
    r"\bservice (is )?(currently )?unavailable|\binterrupted system call|\bcould not load\b|"
    r"\bcan'?t create\b|\btransaction failed\b|\bno mdb\b|\bencountered an error|"
    r"\btimeout waiting|\bnumerous attempts|\bconnection limit|\bper (hour|day|minute)\b|"
    r"\bsessions? for this host|\bmaximum connection|\btemporary local problem",
)
# The address is gone: no such user, mailbox or domain.
_HARD_FIRST = _rx(  # about the recipient even though "access denied" sounds like policy
    # Postfix's recipient-access REJECT, Microsoft's directory-based edge blocking
    r"\brecipient address rejected: access denied",
)
_HARD = _rx(
    r"\b(user|recipient|mailbox|address|account|addressee)(s|es)? (is |are |was |were )?unknown\b",
    r"\bunknown (\w+ )?(user|recipient|mailbox|address|account|local[- ]part|alias)",
    r"\b(address|mailbox|user|recipient)s? (is )?not present\b|\bnot (present|listed) in (the )?"
    r"\w* ?(directory|address book)",
    r"\b(address|mailbox|user|recipient|account)\b.{0,20}\b(could not|couldn't|can ?not) be found",
    r"\b(user|address|mailbox|account|recipient) (is )?not (an? )?active\b|"
    r"\bnot an? active (address|user|mailbox|account)",
    r"\b(user|recipient|mailbox|address|account|e-?mail) (is )?invalid\b",
    r"\bno mail ?box (available|here|by that name|found)",
    r"\b(account|user|recipient|mailbox) (is )?(unavailable|not available)\b",
    r"\bnot a local (address|user|recipient)",
    r"\bbad ?rcpt ?to\b|\bvalid ?rcpt ?to\b|\bbad ?recipient ?to\b",
    r"\bno (one|such person) at this address|\bno longer accepts? (e-?)?mail",
    r"\bdomain must exist|\bname or service not known|\b(account|domain|address|user) "
    r"(or \w+ )?may not exist",
    r"\brejected (the )?recipients?\b|\brecipients? (were|was) unknown",
    r"\bno such (user|recipient|mailbox|address|account|person|local user|domain|host)",
    r"\b(user|recipient|mailbox|address|account)s?\b.{0,25}"
    r"\b(does ?n[o']t|doesn't|no longer|did not) exist",
    r"\b(does ?n[o']t|doesn't) exist\b",
    r"\b(user|recipient|mailbox|address|account)s? (was |is )?not (found|exist\w*|known)",
    r"\b(wasn't|was not|were not|weren't|couldn't be|could not be|not) found at\b",
    r"\bnot (a )?(valid|known|existing) (user|recipient|mailbox|address|account|e-?mail)",
    r"\binvalid (user|recipient|mailbox|address|account|e-?mail|destination)",
    r"\bno (mailbox|account|user) (here|by that name|found)",
    r"\bno valid recipients?\b",
    r"\bbad destination mailbox|\bmailbox (is )?(unavailable|not available)\b",
    r"\brecipientnotfound\b|\bresolver\.adr\b",
    r"\b(doesn't|does not) have an? .{0,40}\baccount\b",
    r"\b(host|domain) (name )?(not found|unknown|does not exist|lookup failed)",
    r"\bunknown (host|domain)\b|\bunroutable\b|\bunrouteable\b",
    r"\bno (mx|mail exchanger|valid (mx|hosts?)|route to)\b|\bname service error\b",
    r"\bnull mx\b|\bdoes not accept (e-?)?mail\b|\bnot accept(ing)? (any )?(e-?)?mail\b",
    r"\b(has|have) moved\b|\bno longer (valid|available|in use|with)\b|"
    r"\baddress (has )?changed\b",
    r"\bhas been replaced by\b|\bnot our customer\b|"
    r"\bnot listed in\b.{0,20}\b(directory|address book)",
    r"\b(user|recipient|address) (rejected|invalid)\b",
)
# In the rest of a notice, words that make an "unknown user" diagnostic doubtful.
_VETO = re.compile(
    "|".join(
        (
            _SENDER.pattern,
            _POLICY.pattern,
            r"\bmailbox (is |was )?(full|over)|\bquota\b|\b(disk|storage) (space|full)|"
            r"\bnot enough (disk|storage|space)|\binsufficient (system )?(storage|space|disk)",
        )
    ),
    re.IGNORECASE,
)
# Status detail codes (RFC 3463) whose meaning does not depend on the text.
_STATUS_HARD = re.compile(r"5\.1\.(1|2|3|6|10)|5\.4\.4")
_STATUS_POLICY = re.compile(r"5\.7\.\d+|5\.1\.[78]|5\.3\.0\b")
_STATUS_SOFT = re.compile(r"[45]\.2\.\d+|[45]\.3\.[1-5]|[45]\.4\.[0-35-9]\d*|4\.\d+\.\d+")
_STATUS_IN_TEXT = re.compile(r"(?<![\d.])#?([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")


def find_status(text: str) -> str | None:
    """The first RFC 3463 status code written in ``text`` (``#5.1.0`` too), if any."""
    match = _STATUS_IN_TEXT.search(text)
    return ".".join(match.groups()) if match else None


def rule_class(text: str) -> str | None:
    """The class the words alone give: sender's problem, full mailbox, gone, or None."""
    if not text:
        return None
    if _HARD_FIRST.search(text):
        return HARD
    if _SENDER.search(text) or _POLICY.search(text):
        return POLICY
    if _SOFT.search(text):
        return SOFT
    if _HARD.search(text):
        return HARD
    return None


def _status_class(status: str) -> str | None:
    if _STATUS_HARD.fullmatch(status):
        return HARD
    if _STATUS_POLICY.fullmatch(status):
        return POLICY
    if _STATUS_SOFT.fullmatch(status) or status.startswith("4."):
        return SOFT
    return None


def best_status(status: str | None, diagnostic: str) -> str | None:
    """The reported status, or a more specific one from the diagnostic text.

    ``Status: 5.0.0`` with ``550 #5.1.0 Address rejected`` in the text means 5.1.0.
    """
    written = find_status(diagnostic)
    if status is None or not re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", status):
        return written or status
    if status.endswith(".0.0") and written and written[0] == status[0]:
        return written
    return status


def classify(status: str | None, diagnostic: str, context: str = "") -> str:
    """``hard``/``soft``/``policy`` for a failed delivery.

    ``diagnostic`` is what the remote server said (Diagnostic-Code, or the SMTP
    reply quoted in a text bounce); ``context`` is the rest of the human-readable
    notice, consulted when the diagnostic says nothing, and as a veto: when the
    notice speaks of a full mailbox or of the sender while the diagnostic says
    "unknown user", the message contradicts itself and is not trusted as hard.
    Undetermined failures are ``soft``: counted, and suppressing only on repeats.
    """
    kind = rule_class(diagnostic)
    code = status or find_status(diagnostic)
    if kind is None and code is not None:
        kind = _status_class(code)
    if kind is None:
        kind = rule_class(context)
    if kind == HARD and (_contradicts(context, diagnostic) or _temporary(code, diagnostic)):
        return SOFT  # contradicted by the notice, or the server itself said "try later"
    return kind or SOFT


def _contradicts(context: str, diagnostic: str) -> bool:
    """The notice speaks of a full mailbox or the sender in words the diagnostic lacks.

    (Notices usually repeat the diagnostic: its own words do not count against it.)
    """
    said = " ".join(diagnostic.lower().split())
    return any(m.group(0).lower() not in said for m in _VETO.finditer(" ".join(context.split())))


def _temporary(code: str | None, diagnostic: str) -> bool:
    """A 4.x.x status or a 4xx reply: whatever the words, the server meant "not now"."""
    if code is not None and code.startswith("4"):
        return True
    return bool(re.match(r"\s*4\d\d\b", diagnostic))
