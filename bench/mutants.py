"""One-line mutations of the defences, each run against the tests that should catch it.

Why our own and not only mutmut: mutmut 3 mutates every string and number
(docstrings, log texts, error wording), runs for hours over ``delivery/`` on a
2-core machine, and reports most of its survivors in text nobody asserts on.
This script applies the changes an attacker would need (a check removed, a
bound moved by one, a header dropped), one at a time, to a scratch copy of
the project, runs the matching tests with ``-x``, and prints the kill rate.
The first eight are the survivors of issue 16's probe.

Left out as equivalent: giving the unsubscribe and confirm serializers one salt.
The two token formats differ (timed and untimed), so a token of one kind still
fails to load as the other; no test can tell the mutant apart.

    .venv/bin/python bench/mutants.py            # all, about 10 minutes
    .venv/bin/python bench/mutants.py 1 2 3      # only these numbers
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TRANSPORT = ["tests/delivery/test_transport.py", "tests/delivery/test_delivery_defences.py"]
DELIVERY = ["tests/delivery/test_delivery_defences.py", "tests/delivery"]
HEADERS = [
    "tests/mail/test_headers.py",
    "tests/mail/test_message.py",
    "tests/mail/test_header_refold.py",
]
TOKENS = ["tests/subscribers", "tests/web/test_web.py", "tests/web/test_web_hostile.py"]
GUARD = [
    "tests/web/test_guard_exact.py",
    "tests/web/test_web_limits.py",
    "tests/web/test_web_guard.py",
    "tests/web/test_web_hostile.py",
    "tests/web/test_web.py",
    "tests/web/test_web_unsubscribe.py",
]


@dataclass(frozen=True)
class Mutant:
    path: str
    before: str
    after: str
    tests: list[str]


T, E, L = "newsletter/delivery/transport.py", "newsletter/delivery/engine.py", "ledger.py"
MUTANTS = [
    # --- the eight survivors of the probe
    Mutant(
        T, 'if stage == "rcpt" and code in _MAILBOX_CODES:', "if code in _MAILBOX_CODES:", TRANSPORT
    ),
    Mutant(
        T, "if not encrypted and not t.loopback:", "if not encrypted and t.loopback:", TRANSPORT
    ),
    Mutant(T, "if code < 500:", "if code <= 500:", TRANSPORT),
    Mutant(
        f"newsletter/delivery/{L}",
        '"b_inc": 0 if o.outcome in (Outcome.POLICY, Outcome.QUOTA) else 1,',
        '"b_inc": 1,',
        DELIVERY,
    ),
    Mutant(
        f"newsletter/delivery/{L}",
        "status=DeliveryStatus.QUEUED.value, attempts=0, next_attempt_at=None",
        "status=DeliveryStatus.QUEUED.value, next_attempt_at=None",
        DELIVERY,
    ),
    Mutant(
        E,
        "self.failure_streak = self.consecutive_drops = self.throttles = 0",
        "self.consecutive_drops = self.throttles = 0",
        DELIVERY,
    ),
    Mutant(
        "newsletter/mail/headers.py",
        "display_name = without_specials(clean_header_text(display_name))",
        "display_name = clean_header_text(display_name)",
        HEADERS,
    ),
    Mutant(
        "newsletter/web/guard.py",
        '    headers["X-Frame-Options"] = g.get("frame_options", "DENY")\n',
        "",
        GUARD,
    ),
    # --- transport: classification and TLS
    Mutant(T, 'if subject in ("1", "2"):', 'if subject in ("1",):', TRANSPORT),
    Mutant(T, 'if subject == "7":', 'if subject == "6":', TRANSPORT),
    Mutant(T, "    if code in _AUTH_CODES:\n", "    if False:\n", TRANSPORT),
    Mutant(T, 'if stage in ("session", "mail"):', 'if stage in ("session",):', TRANSPORT),
    Mutant(
        T, 'if not t.implicit_tls and "starttls" in smtp.esmtp_features:', "if False:", TRANSPORT
    ),
    # --- engine and ledger
    Mutant(E, "if n < self.max_attempts:", "if n <= self.max_attempts:", DELIVERY),
    Mutant(
        E,
        "if self.failure_streak >= FAILURE_STREAK:",
        "if self.failure_streak > FAILURE_STREAK:",
        DELIVERY,
    ),
    Mutant(
        E, '            self.halts.halt("pause", outcome.text)\n', "            pass\n", DELIVERY
    ),
    Mutant(
        f"newsletter/delivery/{L}",
        "Outcome.POLICY: DeliveryStatus.QUEUED,",
        "Outcome.POLICY: DeliveryStatus.FAILED,",
        DELIVERY,
    ),
    Mutant(
        f"newsletter/delivery/{L}",
        '"b_mid": r.message_id if sent else None,',
        '"b_mid": None,',
        DELIVERY,
    ),
    Mutant(
        f"newsletter/delivery/{L}",
        "D.c.attempts >= give_up_after,",
        "D.c.attempts > give_up_after,",
        DELIVERY,
    ),
    # --- headers
    Mutant("newsletter/mail/headers.py", '    if "=?" in email:\n', "    if False:\n", HEADERS),
    Mutant(
        "newsletter/mail/headers.py",
        'return _SPACES.sub(" ", _UNSAFE.sub("", value)).strip()',
        "return value.strip()",
        HEADERS,
    ),
    Mutant(
        "newsletter/mail/headers.py",
        "if _plain_ascii(word) and len(word) <= MAX_WORD:",
        "if _plain_ascii(word):",
        HEADERS,
    ),
    Mutant(
        "newsletter/mail/headers.py",
        'return value.isascii() and value.isprintable() and "=?" not in value',
        "return value.isascii() and value.isprintable()",
        HEADERS,
    ),
    Mutant(
        "newsletter/mail/headers.py",
        '    if "=?" in value:\n        raise',
        "    if False:\n        raise",
        HEADERS,
    ),
    # --- tokens and epochs
    Mutant(
        "newsletter/subscribers/tokens.py",
        "and not isinstance(value, bool) and value > 0:",
        "and not isinstance(value, bool) and value >= 0:",
        TOKENS,
    ),
    Mutant(
        "newsletter/subscribers/tokens.py",
        "value = self._confirm.loads(token, max_age=int(max_age.total_seconds()))",
        "value = self._confirm.loads(token)",
        TOKENS,
    ),
    Mutant(
        "newsletter/subscribers/tokens.py",
        "return _as_id(value[0]), epoch",
        "return _as_id(value[0]), 0",
        TOKENS,
    ),
    Mutant(
        "newsletter/subscribers/store.py",
        "return epoch == (subscriber.epoch or 0)",
        "return True",
        TOKENS,
    ),
    # --- web guards
    Mutant(
        "newsletter/web/guard.py",
        "return hmac.compare_digest(expected.encode(), given.encode())",
        "return True",
        GUARD,
    ),
    Mutant(
        "newsletter/web/guard.py",
        "if len(window) >= self.limit:",
        "if len(window) > self.limit:",
        GUARD,
    ),
    Mutant(
        "newsletter/web/guard.py",
        'headers["Referrer-Policy"] = "no-referrer"',
        'headers["Referrer-Policy"] = "unsafe-url"',
        GUARD,
    ),
    Mutant(
        "newsletter/web/guard.py", '    headers["X-Content-Type-Options"] = "nosniff"\n', "", GUARD
    ),
    Mutant(
        "newsletter/web/guard.py",
        'return f"addr:{canonical_mailbox(email)}"',
        'return f"addr:{email}"',
        GUARD,
    ),
    Mutant(
        "newsletter/web/guard.py",
        'return f"ip:{ipaddress.IPv6Interface((ip, 64)).network}"',
        'return f"ip:{ip}"',
        GUARD,
    ),
    Mutant(
        "newsletter/web/guard.py",
        '        headers["Cache-Control"] = "no-store"\n    else:',
        "        pass\n    else:",
        GUARD,
    ),
]


def run(numbers: list[int]) -> int:
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "project"
        shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".venv", ".git", "mutants"))
        shared = ROOT.parent / "shared"
        if shared.exists():
            (Path(scratch) / "shared").symlink_to(shared)
        killed = survived = 0
        for number, mutant in enumerate(MUTANTS, 1):
            if numbers and number not in numbers:
                continue
            target = copy / mutant.path
            original = target.read_text()
            if original.count(mutant.before) != 1:
                print(f"#{number:2d} NOT APPLICABLE (text not found once): {mutant.path}")
                continue
            target.write_text(original.replace(mutant.before, mutant.after))
            started = time.monotonic()
            try:
                done = subprocess.run(
                    [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                     *mutant.tests],
                    cwd=copy,
                    env={**_env(), "PYTHONPATH": str(copy)},
                    capture_output=True,
                    text=True,
                    timeout=900,
                )  # fmt: skip
                dead = done.returncode != 0
            except subprocess.TimeoutExpired:
                dead = True
            finally:
                target.write_text(original)
            killed += dead
            survived += not dead
            verdict = "killed  " if dead else "SURVIVED"
            change = mutant.before.strip().splitlines()[0][:60]
            print(
                f"#{number:2d} {verdict} {time.monotonic() - started:5.0f}s {mutant.path}: {change}"
            )
        total = killed + survived
        if total:
            print(f"killed {killed}/{total} = {100 * killed / total:.0f}%")
        return 0 if survived == 0 else 1


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}


if __name__ == "__main__":
    sys.exit(run([int(a) for a in sys.argv[1:]]))
