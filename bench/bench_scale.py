"""Many senders on one issue: ``python bench/bench_scale.py [--pg-url URL] [--n 800]``.

Prints (does not assert) the figures issue 13 asks for:

* msg/s with 1, 2, 3 and 4 ``newsletter worker --until-idle`` processes sharing one
  issue on PostgreSQL, through a relay that waits 100 ms before answering DATA (a
  relay across a network); duplicates and missing recipients for each (0 and 0);
* the same with 3 workers, one of them ``kill -9``-ed mid-send: missing (0) and
  duplicates, against that worker's in-flight bound (window + one flush);
* single-sender throughput on Postfix's ``smtp-sink`` with SQLite and with
  PostgreSQL, side by side in one run (alternating, best of two each).

Without ``--pg-url`` a throwaway PostgreSQL cluster is started (initdb in a temp
folder as the ``postgres`` user, default durability settings) and removed after.
About 2–3 minutes on two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_send import SINK, env_for, free_port, prepare, run_child, start_sink  # noqa: E402

CONNECTIONS = 4  # per sender process
BATCH = 25  # NEWSLETTER_BATCH_SIZE: small, so that a short list spreads over the senders


class SlowRelay:
    """An ESMTP sink that waits ``delay`` before its reply to DATA; counts recipients."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.received: Counter[str] = Counter()
        self.arrivals: list[float] = []
        self.loop = asyncio.new_event_loop()
        self.port = free_port()
        self.ready = threading.Event()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._converse(reader, writer)
        except ConnectionError:  # a sender killed with -9 mid-conversation
            writer.close()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 relay ESMTP\r\n")
        rcpt: list[str] = []
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(b"250-relay\r\n250-8BITMIME\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n")
            elif verb == b"RCPT":
                rcpt.append(line.split(b"<", 1)[1].split(b">", 1)[0].decode())
                writer.write(b"250 ok\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                while await reader.readline() not in (b".\r\n", b""):
                    pass
                await asyncio.sleep(self.delay)
                self.received.update(rcpt)
                self.arrivals.append(time.monotonic())
                rcpt = []
                writer.write(b"250 2.0.0 queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            elif verb == b"RSET":
                rcpt = []
                writer.write(b"250 ok\r\n")
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()

    def start(self) -> None:
        def run() -> None:
            asyncio.set_event_loop(self.loop)
            server = self.loop.run_until_complete(
                asyncio.start_server(self._session, "127.0.0.1", self.port)
            )
            self.ready.set()
            self.loop.run_forever()
            server.close()

        threading.Thread(target=run, daemon=True).start()
        self.ready.wait(10)

    def reset(self) -> None:
        self.received.clear()
        self.arrivals.clear()


@contextmanager
def postgres(url: str | None) -> Iterator[str]:
    """The server to use: ``url``, or a throwaway cluster for the length of the run."""
    if url:
        yield url
        return
    bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
    folder = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    port = free_port()

    def as_postgres(*args: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *args], check=True, stdout=subprocess.DEVNULL)

    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    data = str(folder / "data")
    as_postgres(str(bindir / "initdb"), "-D", data, "-U", "postgres", "-A", "trust")
    options = f"-h 127.0.0.1 -p {port} -k {folder} -c max_connections=100"
    log = str(folder / "log")
    as_postgres(str(bindir / "pg_ctl"), "-D", data, "-l", log, "-w", "-o", options, "start")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        as_postgres(str(bindir / "pg_ctl"), "-D", data, "-m", "fast", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def fresh_database(server: str, name: str) -> str:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(server).set(database=name).render_as_string(hide_password=False)


def workers(env: dict[str, str], k: int, folder: Path) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [sys.executable, "-m", "newsletter", "worker", "--until-idle"],
            env={**os.environ, **env},
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(k)
    ]


def latency_run(
    server: str, relay: SlowRelay, n: int, k: int, folder: Path, kill: bool = False
) -> dict[str, float]:
    """``k`` workers on one fresh issue of ``n``; optionally kill -9 one a third of the way."""
    env = env_for(folder, relay.port, CONNECTIONS)
    env.update(
        NEWSLETTER_DATABASE_URL=fresh_database(server, f"bench_scale_{k}_{int(kill)}"),
        NEWSLETTER_BATCH_SIZE=str(BATCH),
        NEWSLETTER_LEASE_SECONDS="5",
    )
    prepare(folder, n, env)
    relay.reset()
    procs = workers(env, k, folder)
    if kill:
        while sum(relay.received.values()) < n // 3:
            time.sleep(0.01)
        procs[0].send_signal(signal.SIGKILL)
    for p in procs:
        p.wait()
    got = relay.received
    times = relay.arrivals
    # Steady state: the middle 80 % of the arrivals (start-up of the processes and the
    # last batches' tail left out), and the whole run for reference.
    lo, hi = len(times) // 10, len(times) * 9 // 10
    everyone = {f"reader{i:07d}@example.org" for i in range(n)}
    return {
        "rate": (hi - lo) / (times[hi] - times[lo]),
        "whole": (len(times) - 1) / (times[-1] - times[0]),
        "missing": len(everyone - set(got)),
        "duplicates": sum(got.values()) - len(set(got)),
    }


def sink_run(env: dict[str, str], folder: Path, n: int) -> float:
    """One sender, ``n`` messages through smtp-sink; the engine's msg/s."""
    issue_id, _ = prepare(folder, n, env)
    result = run_child(env, "send", str(issue_id))
    assert result["sent"] == n, result
    return float(result["rate"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pg-url", help="a PostgreSQL server (default: a throwaway cluster)")
    parser.add_argument("--n", type=int, default=1200, help="readers per latency-bound run")
    parser.add_argument("--part", choices=["all", "scale", "sink"], default="all")
    parser.add_argument("--sink-n", type=int, default=20_000, help="readers per smtp-sink run")
    args = parser.parse_args()
    if not Path(SINK).exists():
        raise SystemExit(f"{SINK} not found (apt-get install postfix)")
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    relay = SlowRelay(0.1)
    relay.start()
    try:
        with postgres(args.pg_url) as server:
            if args.part in ("all", "scale"):
                scale(server, relay, args.n, work)
            if args.part in ("all", "sink"):
                sink_compare(server, args.sink_n, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def scale(server: str, relay: SlowRelay, n: int, work: Path) -> None:
    """1–4 workers on the latency-bound relay, then 3 with one kill -9'd."""
    from newsletter.delivery.engine import FLUSH_EVERY

    print(f"relay waits 100 ms before its reply to DATA; {CONNECTIONS} connections per")
    print(f"sender, NEWSLETTER_BATCH_SIZE={BATCH}, {n} readers per run, PostgreSQL")
    base = 0.0
    for k in (1, 2, 3, 4):
        folder = work / f"lat{k}"
        folder.mkdir()
        r = latency_run(server, relay, n, k, folder)
        base = base or r["rate"]
        print(
            f"  {k} sender(s): {r['rate']:6.1f} msg/s  ({r['rate'] / base:.2f}x one; "
            f"whole run {r['whole']:.1f} msg/s)  duplicates {r['duplicates']:.0f}, "
            f"missing {r['missing']:.0f}"
        )
    folder = work / "kill"
    folder.mkdir()
    r = latency_run(server, relay, n, 3, folder, kill=True)
    bound = max(16, 8 * CONNECTIONS) + FLUSH_EVERY
    print(
        f"  3 senders, one kill -9'd at a third: missing {r['missing']:.0f}, "
        f"duplicates {r['duplicates']:.0f} (that worker's in-flight bound: {bound})"
    )


def sink_compare(server: str, sink_n: int, work: Path) -> None:
    """One sender through smtp-sink: SQLite and PostgreSQL, alternating, best of two."""
    sink_port = free_port()
    sink = start_sink(sink_port, pipelining=True)
    rates: dict[str, list[float]] = {"SQLite": [], "PostgreSQL": []}
    try:
        for attempt in range(2):
            for backend in ("SQLite", "PostgreSQL"):
                folder = work / f"sink-{backend}-{attempt}"
                folder.mkdir()
                env = env_for(folder, sink_port, CONNECTIONS)
                if backend == "PostgreSQL":
                    env["NEWSLETTER_DATABASE_URL"] = fresh_database(server, f"bench_sink_{attempt}")
                rates[backend].append(sink_run(env, folder, sink_n))
    finally:
        sink.terminate()
        sink.wait()
    lite, pg = max(rates["SQLite"]), max(rates["PostgreSQL"])
    print(f"single sender on smtp-sink, {sink_n:,} messages, {CONNECTIONS} connections, best of 2:")
    for name, best in (("SQLite", lite), ("PostgreSQL", pg)):
        runs = ", ".join(f"{x:,.0f}" for x in rates[name])
        print(f"  {name:<10} {best:7,.0f} msg/s  (runs: {runs})")
    print(f"  PostgreSQL / SQLite: {pg / lite:.2f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
