"""Subscribe throughput and latency of ``newsletter serve``, alone and during a big send.

What it measures: real HTTP POST /subscribe requests (a session cookie and CSRF token
from one GET, then unique addresses) from several keep-alive client threads against
``newsletter serve`` (waitress, a separate process) on one SQLite file, in two phases:

1. the web app alone;
2. the same while ``newsletter send --yes`` delivers an issue to 20,000 active
   subscribers (by default into Postfix's ``smtp-sink`` on 127.0.0.1, else a
   Maildir outbox) and commits its ledger batches to the same file.

It prints requests/s, p50/p90/p99/max latency and every non-200 status, and fails
loudly if any 5xx (e.g. "database is locked") was served.  Figures, not a test:

    python bench/bench_web.py [--subscribers 20000] [--seconds 10] [--clients 8]
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FEED = ROOT.parent / "shared" / "fixtures" / "feeds" / "bbc.xml"
SMTP_SINK = "/usr/sbin/smtp-sink"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Phase:
    name: str
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def report(self) -> str:
        n = len(self.latencies)
        if not n:
            return f"{self.name}: no requests completed; errors {dict(self.errors)}"
        ordered = sorted(self.latencies)

        def pct(p: float) -> float:
            return ordered[min(n - 1, int(p * n))] * 1000

        return (
            f"{self.name}: {n} POSTs in {self.seconds:.1f}s = {n / self.seconds:.0f}/s; "
            f"latency p50 {pct(0.50):.1f} ms, p90 {pct(0.90):.1f} ms, p99 {pct(0.99):.1f} ms, "
            f"max {ordered[-1] * 1000:.1f} ms, mean {statistics.fmean(ordered) * 1000:.1f} ms; "
            f"statuses {dict(self.statuses)}"
            + (f"; client errors {dict(self.errors)}" if self.errors else "")
        )


def client_loop(port: int, phase: Phase, stop: threading.Event, prefix: str) -> None:
    """One browser-like client: GET the form once, then POST new addresses until stopped."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/subscribe")
    resp = conn.getresponse()
    html = resp.read().decode()
    cookie = resp.getheader("Set-Cookie", "").split(";", 1)[0]
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match and cookie, "no CSRF token / session cookie from GET /subscribe"
    token = match.group(1)
    i = 0
    while not stop.is_set():
        i += 1
        body = urllib.parse.urlencode(
            {"csrf_token": token, "email": f"{prefix}-{i}@bench.example", "name": "Bench"}
        )
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie}
        started = time.perf_counter()
        try:
            conn.request("POST", "/subscribe", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException) as exc:
            with phase.lock:
                phase.errors[type(exc).__name__] += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            continue
        elapsed = time.perf_counter() - started
        with phase.lock:
            phase.latencies.append(elapsed)
            phase.statuses[status] += 1
    conn.close()


def run_phase(
    port: int, name: str, clients: int, seconds: float, until: subprocess.Popen[bytes] | None
) -> Phase:
    """Drive load for ``seconds`` (or until ``until`` exits, whichever is first)."""
    phase = Phase(name)
    stop = threading.Event()
    threads = [
        threading.Thread(target=client_loop, args=(port, phase, stop, f"{name[:3].strip()}{n}"))
        for n in range(clients)
    ]
    started = time.perf_counter()
    for t in threads:
        t.start()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        if until is not None and until.poll() is not None:
            break
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    phase.seconds = time.perf_counter() - started
    return phase


def seed(db: Path, subscribers: int) -> None:
    """``subscribers`` active rows in one transaction (fast; the schema is already there)."""
    with sqlite3.connect(db) as conn:
        now = time.strftime("%Y-%m-%d %H:%M:%S")
        conn.executemany(
            "INSERT INTO subscribers (email, name, status, created_at, confirmed_at, "
            "bounce_count, source) VALUES (?, ?, 'active', ?, ?, 0, 'import')",
            ((f"reader{i}@sink.example", f"Reader {i}", now, now) for i in range(subscribers)),
        )


def freeze_issue(env: dict[str, str]) -> tuple[int, int]:
    """Build and enqueue today's digest here, so ``newsletter send`` only delivers.

    ``newsletter send`` would build it too, but its preview step writes inside a
    deferred (read) transaction, which SQLite refuses at once ("database is
    locked", no busy wait) while the web app is writing; reported to the lead.
    Freezing first keeps the measured phase about what matters: 20,000 deliveries
    committing to the file the web app writes to.
    """
    from newsletter.config import load_settings
    from newsletter.context import Context
    from newsletter.delivery import send as delivery
    from newsletter.mail import digest

    ctx = Context.open(load_settings(env, dotenv_path=None))
    try:
        with ctx.db.write() as session:
            issue = digest.build_issue(session, ctx)
            assert issue is not None, "no featured stories to send"
            return issue.id, delivery.enqueue(session, issue.id)
    finally:
        ctx.close()


def wait_healthy(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
        if proc.poll() is not None:
            break
    raise SystemExit(f"newsletter serve did not start:\n{log.read_text()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--threads", type=int, default=8, help="waitress threads")
    parser.add_argument("--outbox", action="store_true", help="Maildir outbox, not smtp-sink")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-web-"))
    web_port, sink_port = free_port(), free_port()
    db = work / "bench.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update(
        NEWSLETTER_DATABASE_URL=f"sqlite:///{db}",
        NEWSLETTER_BASE_URL=f"http://127.0.0.1:{web_port}",
        NEWSLETTER_SECRET_KEY="bench-secret-key-0123456789",
        NEWSLETTER_POSTAL_ADDRESS="1 Bench Street",
        NEWSLETTER_FROM="Bench <news@example.com>",
        NEWSLETTER_OUTBOX=str(work / "outbox"),
        NEWSLETTER_WEB_RATE_IP="100000000/1s",
        NEWSLETTER_WEB_RATE_ADDRESS="100000000/1s",
    )
    sink: subprocess.Popen[bytes] | None = None
    if not args.outbox and Path(SMTP_SINK).exists():
        as_root = ["-u", "nobody"] if os.geteuid() == 0 else []
        sink = subprocess.Popen(
            [SMTP_SINK, *as_root, "-c", f"127.0.0.1:{sink_port}", "256"],
            stdout=subprocess.DEVNULL,
        )
        env["NEWSLETTER_SMTP_URL"] = f"smtp://127.0.0.1:{sink_port}"
    target = env.get("NEWSLETTER_SMTP_URL", f"Maildir {work / 'outbox'}")

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "newsletter", *argv],
            env=env,
            cwd=work,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise SystemExit(f"newsletter {' '.join(argv)} failed:\n{result.stdout}{result.stderr}")
        return result

    serve_log = work / "serve.log"
    server: subprocess.Popen[bytes] | None = None
    try:
        cli("db", "upgrade")
        seed(db, args.subscribers)
        cli("stories", "import", str(FEED), "--feature")
        with serve_log.open("wb") as out:
            server = subprocess.Popen(
                [sys.executable, "-m", "newsletter", "serve", "--port", str(web_port),
                 "--threads", str(args.threads)],
                env=env, cwd=work, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_healthy(f"http://127.0.0.1:{web_port}", server, serve_log)
        print(f"newsletter serve (waitress, {args.threads} threads) on SQLite {db}")
        print(f"{args.clients} keep-alive clients; mail to {target}")

        alone = run_phase(web_port, "web alone", args.clients, args.seconds, None)
        print(alone.report())

        issue_id, queued = freeze_issue(env)
        print(f"issue #{issue_id} frozen and queued for {queued:,} subscribers; sending it now")
        send_log = (work / "send.log").open("wb")
        started = time.perf_counter()
        sender = subprocess.Popen(
            [sys.executable, "-m", "newsletter", "send", "--yes"],
            env=env, cwd=work, stdout=send_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        during = run_phase(web_port, "during send", args.clients, 3600.0, sender)
        sender.wait()
        send_seconds = time.perf_counter() - started
        send_log.close()
        print(during.report())
        with sqlite3.connect(db) as conn:
            sent = conn.execute("SELECT count(*) FROM deliveries WHERE status='sent'").fetchone()
        print(
            f"send: exit {sender.returncode}, {sent[0]} deliveries sent in {send_seconds:.1f}s "
            f"({sent[0] / send_seconds:.0f}/s while serving)"
        )
        if sender.returncode != 0:
            print((work / "send.log").read_text()[-20000:])
        log_text = serve_log.read_text(errors="replace")
        locked = log_text.count("database is locked")
        fives = sum(c for p in (alone, during) for s, c in p.statuses.items() if s >= 500)
        print(f"5xx responses: {fives}; 'database is locked' in the server log: {locked}")
        return 1 if fives or locked or sender.returncode else 0
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        if sink is not None:
            sink.terminate()
            sink.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
