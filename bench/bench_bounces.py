"""Benchmark: bounce classification on the shared sample, and scan speed.

Prints the four figures the issue sets targets for, on the 80 real messages in
``../shared/fixtures/bounces`` (recipient accuracy, hard→hard, soft/policy→hard,
non-bounce→bounce), then scans a Maildir of N bounces (default 10,000) made from
those messages and the project's own fixtures, each with a unique Message-ID, into
a fresh SQLite file with subscribers for the recipients: messages per second for
the parser alone and for the whole ``bounces scan`` (parse, match, record, apply,
move to cur/), plus a re-scan of the same messages (all already recorded).
Run: ``python bench/bench_bounces.py [N]``.  Everything else lives in a temp dir.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from newsletter import subscribers as subs
from newsletter.bounces.parse import analyse
from newsletter.bounces.sample import measure
from newsletter.bounces.scan import scan
from newsletter.config import load_settings
from newsletter.context import Context

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "fixtures" / "bounces"
OURS = ROOT / "tests" / "fixtures" / "bounces"


def figures() -> None:
    f = measure(SHARED)
    print(f"shared sample: {SHARED}")
    rows = [
        ("right recipient", f.recipients_right, f.recipients_total, f.recipient_rate, ">= 95%"),
        ("hard classed hard", f.hard_as_hard, f.hard_total, f.hard_rate, ">= 90%"),
        (
            "soft/policy as hard",
            f.softpolicy_as_hard,
            f.softpolicy_total,
            f.false_hard_rate,
            "<= 3%",
        ),
    ]
    for label, got, total, rate, target in rows:
        print(f"  {label:<20} {got}/{total} = {rate:.1%}  (target {target})")
    print(f"  non-bounce as bounce {f.nonbounce_as_bounce}/{f.nonbounce_total}  (target 0)")
    for miss in f.misses:
        print(f"    miss: {miss}")


def _samples() -> list[bytes]:
    files = sorted(SHARED.glob("*.eml")) if SHARED.is_dir() else []
    files += sorted(OURS.glob("*.eml"))
    return [p.read_bytes() for p in files]


def _unique(raw: bytes, n: int) -> bytes:
    """The message with its own Message-ID (so each is recorded, not deduplicated)."""
    lines = [ln for ln in raw.split(b"\n") if not ln.lower().startswith(b"message-id:")]
    at = 1 if lines and lines[0].startswith(b"From ") else 0  # after an mbox From_ line
    lines.insert(at, f"Message-ID: <bench{n}@bench.example>\r".encode())
    return b"\n".join(lines)


def speed(n: int) -> None:
    samples = _samples()
    tmp = Path(tempfile.mkdtemp(prefix="bench-bounces-"))
    try:
        box = tmp / "Maildir"
        for sub in ("tmp", "new", "cur"):
            (box / sub).mkdir(parents=True)
        messages = [_unique(samples[i % len(samples)], i) for i in range(n)]
        for i, data in enumerate(messages):
            (box / "new" / f"{1764486131 + i}.M{i}P1.bench").write_bytes(data)
        start = time.perf_counter()
        found = sum(len(analyse(m)) for m in messages)
        parse_s = time.perf_counter() - start
        rate = n / parse_s
        print(f"parse only: {n} messages, {found} findings in {parse_s:.1f}s = {rate:,.0f} msg/s")

        env = {
            "NEWSLETTER_DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}",
            "NEWSLETTER_SECRET_KEY": "bench-secret-key-0123456789",
        }
        ctx = Context.open(load_settings(env, dotenv_path=None))
        recipients = {f.recipient for m in samples for f in analyse(m) if f.recipient}
        with ctx.db.write() as session:
            for address in sorted(recipients):
                try:
                    subs.add_subscriber(session, address, confirmed=True)
                except (subs.InvalidEmail, subs.Suppressed):
                    continue
        start, cpu = time.perf_counter(), time.process_time()
        summary = scan(ctx, [str(box)])
        wall, used = time.perf_counter() - start, time.process_time() - cpu
        print(
            f"bounces scan (Maildir -> SQLite): {summary.messages} messages in {wall:.1f}s wall"
            f" ({used:.1f}s CPU) = {summary.messages / wall:,.0f} msg/s"
        )
        for path in (box / "cur").iterdir():  # put them back: the re-scan path
            os.replace(path, box / "new" / path.name.split(":2,")[0])
        start = time.perf_counter()
        again = scan(ctx, [str(box)])
        wall = time.perf_counter() - start
        print(
            f"re-scan, all recorded already: {again.messages} messages, {again.duplicates} seen "
            f"before, in {wall:.1f}s = {again.messages / wall:,.0f} msg/s"
        )
        ctx.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if SHARED.is_dir():
        figures()
    else:
        print(f"shared sample missing ({SHARED}): classification figures skipped")
    speed(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
