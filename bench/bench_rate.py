"""Rate-limit accuracy: ``python bench/bench_rate.py [--n 1000] [--rate 100]``.

A small asyncio SMTP sink (in this process, on 127.0.0.1) delays its replies by
10 ms; the engine sends N messages with ``NEWSLETTER_SEND_RATE`` set, in a child
process.  Prints the achieved rate two ways: messages the sink accepted per
second between the first and the last one, and the engine's own sent/elapsed.
Two set-ups: every reply delayed (so one connection manages at most ~20
messages/s; 8 connections are used to leave headroom over the limit) and only
the reply to the end of DATA delayed, with the default 4 connections.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_send import env_for, free_port, prepare, run_child  # noqa: E402


class DelaySink:
    """Minimal ESMTP sink: accepts everything, delays replies, timestamps each message."""

    def __init__(self, delay: float, every_reply: bool) -> None:
        self.delay = delay
        self.every_reply = every_reply
        self.accepted: list[float] = []
        self.loop = asyncio.new_event_loop()
        self.port = free_port()
        self.ready = threading.Event()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def reply(line: bytes, slow: bool) -> None:
            if slow:
                await asyncio.sleep(self.delay)
            writer.write(line)
            await writer.drain()

        every = self.every_reply
        await reply(b"220 sink ESMTP\r\n", every)
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                await reply(b"250-sink\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n", every)
            elif verb == b"DATA":
                await reply(b"354 go ahead\r\n", every)
                while await reader.readline() not in (b".\r\n", b""):
                    pass
                self.accepted.append(time.monotonic())
                await reply(b"250 2.0.0 queued\r\n", True)
            elif verb == b"QUIT":
                await reply(b"221 bye\r\n", False)
                break
            else:
                await reply(b"250 ok\r\n", every)
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
        self.ready.wait()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


def measure(n: int, rate: float, every_reply: bool, connections: int) -> None:
    sink = DelaySink(0.010, every_reply)
    sink.start()
    work = Path(tempfile.mkdtemp(prefix="bench-rate-"))
    env = env_for(work, sink.port, connections)
    env["NEWSLETTER_SEND_RATE"] = str(rate)
    try:
        issue_id, _ = prepare(work, n, env)
        result = run_child(env, "send", str(issue_id))
    finally:
        sink.stop()
        shutil.rmtree(work, ignore_errors=True)
    times = sink.accepted
    at_sink = (len(times) - 1) / (times[-1] - times[0])
    engine = result["sent"] / result["elapsed"]
    label = "every reply delayed 10 ms" if every_reply else "end-of-DATA reply delayed 10 ms"
    print(
        f"{label}, {connections} connections, limit {rate:g}/s, {len(times)} messages: "
        f"{at_sink:6.2f}/s at the sink ({(at_sink / rate - 1) * 100:+.1f}%), "
        f"{engine:6.2f}/s sent/elapsed ({(engine / rate - 1) * 100:+.1f}%)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0)
    args = parser.parse_args()
    os.environ.pop("NEWSLETTER_SEND_RATE", None)
    measure(args.n, args.rate, every_reply=True, connections=8)
    measure(args.n, args.rate, every_reply=False, connections=4)


if __name__ == "__main__":
    main()
