"""Benchmark: render a 10-story digest once, then the per-recipient cost of finished bytes.

Prints figures (it is not a pass/fail test):

* render once (Jinja2 + premailer) and the HTML size against Gmail's 102 KB clip;
* per recipient, unsigned: ``MessageFactory.build`` = unsubscribe token +
  fill-in + finished MIME bytes (budget: 100 µs); the token's share alone;
* per recipient, DKIM-signed (rsa-sha256, 2048-bit key, OpenSSL through cryptography),
  reported separately (``bench_dkim.py`` has the whole signed picture).

Run: ``python bench/bench_render.py [--recipients 20000] [--signed 200]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from _digest_support import fixture_digest, open_ctx, rsa_key  # noqa: E402

from newsletter.mail.message import MessageFactory  # noqa: E402
from newsletter.mail.render import GMAIL_CLIP_BYTES, render_issue  # noqa: E402
from newsletter.models import Issue  # noqa: E402

BUDGET_US = 100.0
NAMES = ["Ana María López", "", "Bob O'Neil", "山田太郎", "Zoë Ωmega-Smith"]


def per_recipient(factory: MessageFactory, count: int, rounds: int, start: int = 1) -> list[float]:
    """µs per message for each round of ``count`` builds."""
    results = []
    sid = start
    for _ in range(rounds):
        begin = time.perf_counter()
        for i in range(count):
            factory.build(sid, f"reader{sid}@example.org", NAMES[i % 5]).data  # noqa: B018
            sid += 1
        results.append((time.perf_counter() - begin) / count * 1e6)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=20000, help="builds per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--signed", type=int, default=200, help="DKIM-signed builds")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ctx = open_ctx(folder)
        begin = time.perf_counter()
        issue = fixture_digest(ctx, 10)  # import feeds + select + render + store
        build_s = time.perf_counter() - begin
        size = len(issue.html.encode("utf-8"))
        print(f"issue #{issue.issue_id}: {issue.subject!r}")
        print(f"import + build_issue (Jinja2 + premailer once): {build_s * 1000:.0f} ms")
        print(f"HTML size: {size / 1024:.1f} KB ({size} bytes); text: {len(issue.text)} chars")
        if size > GMAIL_CLIP_BYTES:
            print(f"WARNING: over Gmail's {GMAIL_CLIP_BYTES // 1024} KB clipping point")
        else:
            print(f"under Gmail's clip by {(GMAIL_CLIP_BYTES - size) / 1024:.1f} KB")

        with ctx.db.read() as session:
            stories = [link.story for link in session.get(Issue, issue.issue_id).stories]  # type: ignore[union-attr]
            begin = time.perf_counter()
            render_issue(ctx, stories, date.today())
            render_ms = (time.perf_counter() - begin) * 1e3
            print(f"render_issue alone (Jinja2 + premailer, templates cached): {render_ms:.0f} ms")
        begin = time.perf_counter()
        factory = MessageFactory(ctx, issue.issue_id, issue.subject, issue.html, issue.text)
        print(
            f"MessageFactory compile (once per issue): {(time.perf_counter() - begin) * 1e3:.2f} ms"
        )
        sample = factory.build(1, "reader@example.org", NAMES[0]).data
        print(f"message size: {len(sample) / 1024:.1f} KB")

        per_recipient(factory, 1000, 1)  # warm-up
        unsigned = per_recipient(factory, args.recipients, args.rounds, start=10)
        tokens = ctx.tokens
        begin = time.perf_counter()
        for sid in range(1, args.recipients + 1):
            tokens.unsubscribe(sid)
        token_us = (time.perf_counter() - begin) / args.recipients * 1e6
        best, median = min(unsigned), statistics.median(unsigned)
        verdict = "within" if median <= BUDGET_US else "OVER"
        print(
            f"per recipient, unsigned: {median:.1f} µs median, {best:.1f} µs best "
            f"of {args.rounds}x{args.recipients} ({verdict} the {BUDGET_US:.0f} µs budget)"
        )
        print(f"  of which the itsdangerous unsubscribe token: {token_us:.1f} µs")
        print(f"  throughput: {1e6 / median:,.0f} messages/s on one core")
        ctx.close()

        from newsletter import message

        message.SIGN_AHEAD = False  # sign right here, in this thread, to time it
        key_pem, _ = rsa_key(2048)
        key_file = folder / "dkim.pem"
        key_file.write_bytes(key_pem)
        signed_ctx = open_ctx(
            folder / "signed",
            NEWSLETTER_DKIM_KEY_FILE=str(key_file),
            NEWSLETTER_DKIM_SELECTOR="bench",
        )
        signed_factory = MessageFactory(
            signed_ctx, issue.issue_id, issue.subject, issue.html, issue.text
        )
        signed = per_recipient(signed_factory, args.signed, 1)[0]
        print(
            f"per recipient, DKIM-signed (rsa-sha256, 2048-bit, cryptography): "
            f"{signed / 1000:.3f} ms "
            f"({1e6 / signed:,.0f} messages/s on one core)"
        )
        signed_ctx.close()


if __name__ == "__main__":
    main()
