"""How :func:`analyse` reads a labelled sample: the figures the issue sets targets for.

The sample's labels are a reference analyser's (sisimai) reasons, mapped to our
classes as its README says.  Used by ``bench/bench_bounces.py`` (prints them) and
by the tests (assert the targets).  Reasons outside the mapping (``filtered``,
``onhold``...) are left to our own judgement and count only for the recipient.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .parse import Finding, analyse

HARD = {"userunknown", "hostunknown", "hasmoved", "notaccept"}
SOFT = {
    "mailboxfull",
    "expired",
    "networkerror",
    "systemerror",
    "toomanyconn",
    "systemfull",
    "exceedlimit",
    "suspend",
}
POLICY = {
    "blocked",
    "spamdetected",
    "policyviolation",
    "securityerror",
    "rejected",
    "norelaying",
    "contenterror",
    "virusdetected",
}


@dataclass
class Figures:
    """Counts behind the four targets; ``misses`` says which message missed what."""

    recipients_total: int = 0
    recipients_right: int = 0
    hard_total: int = 0
    hard_as_hard: int = 0
    softpolicy_total: int = 0
    softpolicy_as_hard: int = 0
    nonbounce_total: int = 0
    nonbounce_as_bounce: int = 0
    misses: list[str] = field(default_factory=list)

    @property
    def recipient_rate(self) -> float:
        return self.recipients_right / max(1, self.recipients_total)

    @property
    def hard_rate(self) -> float:
        return self.hard_as_hard / max(1, self.hard_total)

    @property
    def false_hard_rate(self) -> float:
        return self.softpolicy_as_hard / max(1, self.softpolicy_total)


def measure(folder: Path) -> Figures:
    """Run every message of ``folder`` (with its ``expected.jsonl``) through the parser."""
    expected: dict[str, list[dict[str, object]]] = {}
    for line in (folder / "expected.jsonl").read_text().splitlines():
        row = json.loads(line)
        expected.setdefault(str(row["file"]), []).append(row)
    out = Figures()
    for name, rows in sorted(expected.items()):
        findings = analyse((folder / name).read_bytes())
        by_rcpt: dict[str | None, Finding] = {f.recipient: f for f in findings}
        if rows[0].get("n") == 0 or rows[0].get("reason") == "vacation":
            out.nonbounce_total += 1
            if any(f.type in ("hard", "soft") for f in findings):
                out.nonbounce_as_bounce += 1
                out.misses.append(f"{name}: non-bounce read as {findings}")
            continue
        for row in {str(r["rcpt"]): r for r in rows}.values():
            rcpt = str(row["rcpt"]).lower()
            reason = str(row["reason"])
            out.recipients_total += 1
            got = by_rcpt.get(rcpt)
            if got is not None:
                out.recipients_right += 1
            else:
                out.misses.append(f"{name}: recipient {rcpt} not among {list(by_rcpt)}")
            kind = got.type if got else (findings[0].type if len(findings) == 1 else "none")
            if reason in HARD:
                out.hard_total += 1
                out.hard_as_hard += kind == "hard"
                if kind != "hard":
                    out.misses.append(f"{name}: hard ({reason}) read as {kind}")
            elif reason in SOFT | POLICY:
                out.softpolicy_total += 1
                out.softpolicy_as_hard += kind == "hard"
                if kind == "hard":
                    out.misses.append(f"{name}: {reason} read as hard")
    return out
