"""Signed sending: ``python bench/bench_dkim.py [--n 20000] [--big 50000] [--repeat 1]``.

Prints (does not assert) the figures issue 12 asks for:

* whether ``cryptography``'s sign releases the GIL (two threads vs one);
* per-recipient CPU for template fill-in + signing, RSA-2048, Ed25519 and both,
  beside the old path (fill-in + dkimpy's pure-Python RSA), one thread, in-process;
* signed ``send`` msg/s (RSA-2048; RSA-2048 + Ed25519) beside a bare smtplib loop
  pushing pre-built unsigned bytes of the same size over the same number of
  connections to the same Postfix ``smtp-sink``, in the same run, each with the CPU
  time per message of the sending process (all threads) and of the sink, which on a
  shared machine says more than msg/s;
* peak RSS of a signed send at N/2 and at ``--big`` readers, each in a fresh process.

Needs ``/usr/sbin/smtp-sink`` (Debian's postfix) and dkimpy (the test extra).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_send  # noqa: E402  (the smtp-sink and bare-loop helpers)


def write_keys(folder: Path) -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    pkcs8, none = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    (folder / "rsa.pem").write_bytes(rsa_key.private_bytes(serialization.Encoding.PEM, pkcs8, none))
    (folder / "rsa1.pem").write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, none
        )
    )
    (folder / "ed.pem").write_bytes(ed_key.private_bytes(serialization.Encoding.PEM, pkcs8, none))
    return {
        "NEWSLETTER_DKIM_KEY_FILE": str(folder / "rsa.pem"),
        "NEWSLETTER_DKIM_SELECTOR": "rsa1",
        "NEWSLETTER_DKIM_ED25519_KEY_FILE": str(folder / "ed.pem"),
        "NEWSLETTER_DKIM_ED25519_SELECTOR": "ed1",
    }


def _speedup(work: Callable[[int], None], n: int) -> float:
    """Two threads doing ``n`` each vs one thread doing ``n``, twice over: best of three."""
    best = 0.0
    for _ in range(3):  # other processes on a shared machine add noise
        started = time.perf_counter()
        work(n)
        one = time.perf_counter() - started
        threads = [threading.Thread(target=work, args=(n,)) for _ in range(2)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        best = max(best, 2 * one / (time.perf_counter() - started))
    return best


def gil_check() -> None:
    """RSA-2048 and Ed25519 signing in two threads, beside hashlib (known to release it)."""
    import hashlib

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed = ed25519.Ed25519PrivateKey.generate()
    data, big = b"x" * 800, b"x" * (1 << 20)

    def rsa_work(n: int) -> None:
        for _ in range(n):
            key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    def ed_work(n: int) -> None:
        for _ in range(n):
            ed.sign(data)

    def sha_work(n: int) -> None:
        for _ in range(n):
            hashlib.sha256(big).digest()

    control = _speedup(sha_work, 200)
    for label, work, n in (("RSA-2048", rsa_work, 1000), ("Ed25519", ed_work, 10000)):
        speedup = _speedup(work, n)
        verdict = "releases" if speedup >= 0.75 * control else "holds"
        print(
            f"GIL: {label} sign in 2 threads: speed-up {speedup:.2f} (hashlib control "
            f"{control:.2f}) on {os.cpu_count()} cores: {verdict} the GIL"
        )


def cpu_per_recipient(folder: Path, env: dict[str, str], n: int) -> None:
    """In-process, one thread: CPU time per fill-in + signature."""
    import dkim

    from newsletter.config import load_settings
    from newsletter.context import Context
    from newsletter.mail import dkim as dkimsign
    from newsletter.mail.message import MessageFactory
    from newsletter.models import Issue

    variants = {
        "unsigned": {},
        "RSA-2048": {k: v for k, v in env.items() if "ED25519" not in k},
        "Ed25519": {k: v for k, v in env.items() if "ED25519" in k},
        "both": env,
    }
    base = bench_send.env_for(folder, 25, 1)
    base.pop("NEWSLETTER_SMTP_URL")
    results: dict[str, float] = {}
    for label, extra in variants.items():
        ctx = Context.open(load_settings({**base, **extra}, dotenv_path=None))
        with ctx.db.read() as session:
            issue = session.get(Issue, 1)
            assert issue is not None
            factory = MessageFactory(ctx, issue.id, issue.subject, issue.html, issue.text)
        started = time.process_time()
        for i in range(n):
            factory.build(i + 1, f"reader{i:07d}@example.org", f"Reader {i}").data  # noqa: B018
        results[label] = (time.process_time() - started) / n * 1000
        ctx.close()
    # the old path: the same fill-in, then dkimpy over the finished bytes
    ctx = Context.open(load_settings(base, dotenv_path=None))
    with ctx.db.read() as session:
        issue = session.get(Issue, 1)
        assert issue is not None
        factory = MessageFactory(ctx, issue.id, issue.subject, issue.html, issue.text)
    pem = Path(env["NEWSLETTER_DKIM_KEY_FILE"]).with_name("rsa1.pem").read_bytes()
    names = [name for name in dkimsign.SIGNED_HEADERS for _ in range(2)]
    old_n = max(50, n // 20)
    started = time.process_time()
    for i in range(old_n):
        data = factory.build(i + 1, f"reader{i:07d}@example.org", f"Reader {i}").data
        dkim.sign(
            data,
            b"rsa1",
            b"example.com",
            pem,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=names,
            linesep=b"\r\n",
        )
    results["dkimpy RSA-2048 (before)"] = (time.process_time() - started) / old_n * 1000
    ctx.close()
    size = len(factory.build(1, "reader0000001@example.org", "Reader 1").data)
    print(f"per-recipient CPU, fill-in + signing, one thread ({size:,} byte message):")
    for label, ms in results.items():
        print(f"  {label:26s} {ms:7.3f} ms   ({1000 / ms:8,.0f} msg/s per core)")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _sink_cpu(pid: int) -> float:
    """CPU seconds smtp-sink has used so far (utime + stime from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_send(issue_id: int) -> None:
    from newsletter import delivery
    from newsletter.config import load_settings
    from newsletter.context import Context
    from newsletter.mail import message

    message.SIGN_AHEAD = os.environ.get("BENCH_AHEAD", "1") == "1"
    ctx = Context.open(load_settings(dotenv_path=None))
    Path("/proc/self/clear_refs").write_text("5")
    cpu = _cpu()
    summary = delivery.send_issue(ctx, issue_id)
    cpu = _cpu() - cpu
    status = Path("/proc/self/status").read_text()
    hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    print(
        json.dumps(
            {
                "sent": summary.run.sent,
                "elapsed": summary.run.elapsed,
                "rate": summary.rate,
                "status": summary.status.value,
                "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "send_hwm_kb": hwm,
                "cpu": cpu,
            }
        )
    )


def child_bare(n: int, port: int, connections: int) -> None:
    """bench_send's bare loop, with the CPU it used."""
    import contextlib
    import io

    out = io.StringIO()
    cpu = _cpu()
    with contextlib.redirect_stdout(out):
        bench_send.child_bare(n, port, connections)
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    result["cpu"] = _cpu() - cpu
    result["rate"] = result["sent"] / result["elapsed"]
    print(json.dumps(result))


def show(label: str, result: dict[str, float], ratio: str, sink_before: float, pid: int) -> None:
    sink_ms = (_sink_cpu(pid) - sink_before) / result["sent"] * 1000
    print(
        f"  {label:34s} {result['rate']:7,.0f} msg/s  {ratio:11s} CPU/msg "
        f"{result['cpu'] / result['sent'] * 1000:.3f} + {sink_ms:.3f} ms"
    )


def run_child(env: dict[str, str], *args: str) -> dict[str, float]:
    import subprocess

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


def reset(env: dict[str, str], issue_id: int) -> None:
    """Queue the issue again for everyone (a second send of the same list)."""
    from sqlalchemy import update

    from newsletter.config import load_settings
    from newsletter.context import Context
    from newsletter.models import Delivery, DeliveryStatus, Issue, IssueStatus

    ctx = Context.open(load_settings(env, dotenv_path=None))
    with ctx.db.write() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.issue_id == issue_id)
            .values(status=DeliveryStatus.QUEUED, attempts=0, sent_at=None, message_id=None)
        )
        session.execute(
            update(Issue)
            .where(Issue.id == issue_id)
            .values(status=IssueStatus.SENDING, finished_at=None, status_reason=None)
        )
    ctx.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--big", type=int, default=50_000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1, help="rounds of bare + signed runs")
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "send":
            child_send(int(rest[0]))
        else:
            child_bare(int(rest[0]), int(rest[1]), int(rest[2]))
        return
    if not Path(bench_send.SINK).exists():
        raise SystemExit(f"{bench_send.SINK} not found (apt-get install postfix)")
    n, conns = args.n, args.connections
    gil_check()
    work = Path(tempfile.mkdtemp(prefix="bench-dkim-"))
    port = bench_send.free_port()
    sink = bench_send.start_sink(port, pipelining=True)
    try:
        keys = write_keys(work)
        one, small, big = work / "one", work / "small", work / "big"
        for folder in (one, small, big):
            folder.mkdir()
        env = {**bench_send.env_for(one, port, conns), **keys}
        issue, _ = bench_send.prepare(one, n, bench_send.env_for(one, port, conns))
        cpu_per_recipient(one, keys, 2000)

        rsa_only = {k: v for k, v in env.items() if "ED25519" not in k}
        unsigned_env = {k: v for k, v in env.items() if "DKIM" not in k}
        print(f"\nsend to smtp-sink, {n:,} readers, {conns} connections, {os.cpu_count()} cores")
        print("  (CPU per message: the sending process, all threads, + smtp-sink)")
        variants = (
            ("signed send, RSA-2048", rsa_only),
            ("signed send, both", env),
            ("signed send, both, in workers", {**env, "BENCH_AHEAD": "0"}),
            ("unsigned send", unsigned_env),
        )
        ratios: dict[str, list[float]] = {label: [] for label, _ in variants}
        for round_ in range(args.repeat):
            if args.repeat > 1:
                print(f" round {round_ + 1} of {args.repeat}:")
            sink_before = _sink_cpu(sink.pid)
            bare = run_child(env, "bare", str(n), str(port), str(conns))
            show("bare smtplib loop, unsigned bytes", bare, "", sink_before, sink.pid)
            for label, variant in variants:
                sink_before = _sink_cpu(sink.pid)
                result = run_child(variant, "send", str(issue))
                assert result["sent"] == n and result["status"] == "sent", result
                ratios[label].append(result["rate"] / bare["rate"])
                show(label, result, f"ratio {ratios[label][-1]:.2f}", sink_before, sink.pid)
                reset(env, issue)
        if args.repeat > 1:
            print(" median ratio to the bare loop of the same round:")
            for label, values in ratios.items():
                print(f"  {label:34s} {statistics.median(values):.2f}  (target >= 0.8)")

        rss = {}
        for folder, count in ((small, n // 2), (big, args.big)):
            plain = bench_send.env_for(folder, port, conns)
            issue_id, _ = bench_send.prepare(folder, count, plain)
            rss[count] = run_child({**plain, **keys}, "send", str(issue_id))
        (a, ra), (b, rb) = sorted(rss.items())
        ratio = rb["maxrss_kb"] / ra["maxrss_kb"]
        print(
            f"\npeak RSS of a signed send: {ra['maxrss_kb'] / 1024:.1f} MiB at {a:,}, "
            f"{rb['maxrss_kb'] / 1024:.1f} MiB at {b:,}: ratio {ratio:.2f}"
            f"; during the send alone (VmHWM reset): {ra['send_hwm_kb'] / 1024:.1f} / "
            f"{rb['send_hwm_kb'] / 1024:.1f} MiB"
        )
    finally:
        sink.terminate()
        sink.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
