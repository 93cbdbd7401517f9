"""Delivery throughput, memory and enqueue: ``python bench/bench_send.py [--n 100000]``.

Prints (does not assert) the figures issue 4 asks for:

* enqueue time for N deliveries (one INSERT ... SELECT);
* ``newsletter`` engine rate sending N messages through Postfix's ``smtp-sink`` on
  127.0.0.1, versus a bare smtplib loop pushing pre-built messages of the same size
  over the same number of connections to the same sink, in the same run; the ratio;
* peak RSS (ru_maxrss) of the sending process at N and at N/10, each measured in a
  fresh subprocess.

Pass ``--no-pipelining`` to start the sink with ``-p`` (no PIPELINING advertised),
which makes the engine use one round trip per command like smtplib does.
Needs ``/usr/sbin/smtp-sink`` (Debian's postfix package).  Takes 2-4 minutes at
100,000 on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SINK = "/usr/sbin/smtp-sink"
EXAMPLE_FEED = ROOT / "newsletter" / "examples" / "stories.xml"
FEEDS = ROOT.parent / "shared" / "fixtures" / "feeds"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_for(folder: Path, port: int, connections: int) -> dict[str, str]:
    return {
        "NEWSLETTER_DATABASE_URL": f"sqlite:///{folder / 'subscribers.db'}",
        "NEWSLETTER_OUTBOX": str(folder / "outbox"),
        "NEWSLETTER_FROM": "The Daily Digest <news@example.com>",
        "NEWSLETTER_BASE_URL": "https://news.example.com",
        "NEWSLETTER_SECRET_KEY": "bench-secret-key-0123456789",
        "NEWSLETTER_POSTAL_ADDRESS": "1 Fleet Street, London EC4Y 1AA",
        "NEWSLETTER_SMTP_URL": f"smtp://127.0.0.1:{port}",
        "NEWSLETTER_SMTP_CONNECTIONS": str(connections),
        "NEWSLETTER_MAX_STORIES": "10",
    }


def prepare(folder: Path, n: int, env: dict[str, str]) -> tuple[int, float]:
    """A database with N active readers and a frozen 10-story digest; returns (issue, enqueue s)."""
    from sqlalchemy import insert

    from newsletter.config import load_settings
    from newsletter.context import Context
    from newsletter.delivery import ledger
    from newsletter.mail.digest import build_issue
    from newsletter.models import Subscriber, utcnow
    from newsletter.stories.store import import_sources

    ctx = Context.open(load_settings(env, dotenv_path=None))
    sources = [str(p) for p in sorted(FEEDS.glob("bbc.xml"))] or [str(EXAMPLE_FEED)]
    now = utcnow()
    with ctx.db.write() as session:
        import_sources(session, sources, feature=True)
        for start in range(0, n, 20_000):
            session.execute(
                insert(Subscriber.__table__),
                [
                    {
                        "email": f"reader{i:07d}@example.org",
                        "name": f"Reader {i}",
                        "status": "active",
                        "created_at": now,
                        "bounce_count": 0,
                        "source": "import",
                    }
                    for i in range(start, min(n, start + 20_000))
                ],
            )
    with ctx.db.write() as session:
        issue = build_issue(session, ctx)
        assert issue is not None
        issue_id = issue.id
    started = time.perf_counter()
    with ctx.db.write() as session:
        count = ledger.enqueue(session, issue_id)
    enqueue_s = time.perf_counter() - started
    assert count == n
    ctx.close()
    return issue_id, enqueue_s


def child_send(issue_id: int) -> None:
    """Runs in a fresh process: send the issue, print rate and peak RSS as JSON."""
    from newsletter.config import load_settings
    from newsletter.context import Context
    from newsletter.delivery import send as delivery

    ctx = Context.open(load_settings(dotenv_path=None))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Reset the kernel's high-water mark (Linux) so the send's own peak is visible
    # even when start-up (imports, migrations check) peaked higher.
    Path("/proc/self/clear_refs").write_text("5")
    summary = delivery.send_issue(ctx, issue_id)
    status = Path("/proc/self/status").read_text()
    hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    out = {
        "maxrss_before_kb": before,
        "send_hwm_kb": hwm,
        "sent": summary.run.sent,
        "elapsed": summary.run.elapsed,
        "rate": summary.rate,
        "status": summary.status.value,
        "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    print(json.dumps(out))


def child_bare(n: int, port: int, connections: int) -> None:
    """Runs in a fresh process: a plain smtplib loop over pre-built bytes of the same size."""
    from newsletter.config import load_settings
    from newsletter.context import Context
    from newsletter.mail.message import MessageFactory
    from newsletter.models import Issue

    ctx = Context.open(load_settings(dotenv_path=None))
    with ctx.db.read() as session:
        issue = session.get(Issue, 1)
        assert issue is not None
        factory = MessageFactory(ctx, issue.id, issue.subject, issue.html, issue.text)
    data = factory.build(1, "reader0000001@example.org", "Reader 1").data
    per = n // connections

    def loop(k: int) -> None:
        smtp = smtplib.SMTP("127.0.0.1", port, local_hostname="bench")
        for i in range(per):
            smtp.sendmail("news@example.com", [f"reader{k * per + i:07d}@example.org"], data)
        smtp.quit()

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(connections)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    print(json.dumps({"sent": per * connections, "elapsed": elapsed, "size": len(data)}))


def run_child(env: dict[str, str], *args: str) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{proc.stdout}\n{proc.stderr}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def start_sink(port: int, pipelining: bool) -> subprocess.Popen[bytes]:
    args = [SINK, *([] if pipelining else ["-p"])]
    if os.geteuid() == 0:
        args += ["-u", "root"]
    proc = subprocess.Popen([*args, f"127.0.0.1:{port}", "1000"])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit("smtp-sink did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--no-pipelining", action="store_true")
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "send":
            child_send(int(rest[0]))
        else:
            child_bare(int(rest[0]), int(rest[1]), int(rest[2]))
        return
    if not Path(SINK).exists():
        raise SystemExit(f"{SINK} not found (apt-get install postfix)")
    n, conns = args.n, args.connections
    port = free_port()
    sink = start_sink(port, pipelining=not args.no_pipelining)
    work = Path(tempfile.mkdtemp(prefix="bench-send-"))
    try:
        big, small = work / "big", work / "small"
        big.mkdir()
        small.mkdir()
        env_big, env_small = env_for(big, port, conns), env_for(small, port, conns)
        issue_big, enqueue_big = prepare(big, n, env_big)
        issue_small, _ = prepare(small, n // 10, env_small)
        print(f"enqueue of {n:,} deliveries: {enqueue_big:.2f} s (one INSERT ... SELECT)")

        bare = run_child(env_big, "bare", str(n), str(port), str(conns))
        engine = run_child(env_big, "send", str(issue_big))
        bare_rate = bare["sent"] / bare["elapsed"]
        assert engine["sent"] == n and engine["status"] == "sent", engine
        print(
            f"message size: {bare['size']:,.0f} bytes; {conns} connections; sink "
            f"{'with' if not args.no_pipelining else 'without'} PIPELINING"
        )
        print(
            f"bare smtplib loop:  {bare_rate:8,.0f} msg/s "
            f"({bare['sent']:,.0f} in {bare['elapsed']:.1f} s)"
        )
        print(
            f"newsletter engine:  {engine['rate']:8,.0f} msg/s "
            f"({engine['sent']:,.0f} in {engine['elapsed']:.1f} s, ledger included)"
        )
        print(f"ratio engine / bare: {engine['rate'] / bare_rate:.2f}  (target >= 0.8)")

        small_run = run_child(env_small, "send", str(issue_small))
        rss_big, rss_small = engine["maxrss_kb"] / 1024, small_run["maxrss_kb"] / 1024
        print(
            f"peak RSS (ru_maxrss): {rss_small:.1f} MiB at {n // 10:,}, {rss_big:.1f} MiB at "
            f"{n:,}: ratio {rss_big / rss_small:.2f}  (target <= 1.2)"
        )
        hwm_big, hwm_small = engine["send_hwm_kb"] / 1024, small_run["send_hwm_kb"] / 1024
        print(
            f"peak RSS during the send alone (VmHWM reset after start-up): {hwm_small:.1f} MiB "
            f"at {n // 10:,}, {hwm_big:.1f} MiB at {n:,}: ratio {hwm_big / hwm_small:.2f}"
        )
    finally:
        sink.terminate()
        sink.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
