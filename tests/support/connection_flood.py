"""A slow-client attack on a REST port, run as its own process (so it does not share the
measuring client's event loop): ``python -m tests.support.connection_flood PORT SECONDS``.

Drippers send ``GET /x HTTP/1.1\\r\\nX: `` and then one byte every ``--drip-every``
seconds; idlers hold a connection that sends nothing (even ones) or nothing after one
request (odd ones); they start first, drippers a second later.  Each reconnects when
the server closes it: at once, or, with ``--reconnect-delay``, after that long.  Sources
cycle over ``--drip-sources`` and ``--idle-sources`` 127.x addresses.
Prints its counts as one JSON line, then exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
from dataclasses import asdict, dataclass

DRIP_HEAD = b"GET /x HTTP/1.1\r\nX: "
CHEAP_REQUEST = b"GET /nope HTTP/1.1\r\nHost: flood\r\n\r\n"  # a 404 from the shim itself


@dataclass
class Counts:
    connects: int = 0
    closed_by_server: int = 0
    connect_failures: int = 0
    open_now: int = 0
    open_max: int = 0


class Attack:
    def __init__(self, port: int, drip_every: float, reconnect_delay: float) -> None:
        self.port = port
        self.drip_every = drip_every
        self.reconnect_delay = reconnect_delay
        self.counts = Counts()

    async def connection(self, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while True:
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", self.port, local_addr=(source, 0)
                )
            except OSError:
                self.counts.connect_failures += 1
                await asyncio.sleep(0.1)
                continue
            self.counts.connects += 1
            self.counts.open_now += 1
            self.counts.open_max = max(self.counts.open_max, self.counts.open_now)
            return reader, writer

    def lost(self, writer: asyncio.StreamWriter) -> None:
        self.counts.closed_by_server += 1
        self.counts.open_now -= 1
        writer.close()

    async def closed_within(self, reader: asyncio.StreamReader, seconds: float) -> bool:
        """Wait ``seconds``; True as soon as the server closes (what it sends is read and dropped)."""
        try:
            async with asyncio.timeout(seconds):
                while await reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        return True

    async def drip(self, source: str, offset: float) -> None:
        await asyncio.sleep(offset)
        while True:
            reader, writer = await self.connection(source)
            try:
                writer.write(DRIP_HEAD)
                while not await self.closed_within(reader, self.drip_every):
                    writer.write(b"a")
            except ConnectionError:
                pass
            self.lost(writer)
            await asyncio.sleep(self.reconnect_delay)

    async def idle(self, source: str, offset: float, after_a_request: bool) -> None:
        await asyncio.sleep(offset)
        while True:
            reader, writer = await self.connection(source)
            try:
                if after_a_request:
                    writer.write(CHEAP_REQUEST)
                    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                while not await self.closed_within(reader, 5):
                    pass
            except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                pass
            self.lost(writer)
            await asyncio.sleep(self.reconnect_delay)


async def run(args: argparse.Namespace) -> None:
    attack = Attack(args.port, args.drip_every, args.reconnect_delay)
    drip_sources = [f"127.0.0.{i}" for i in range(2, 2 + args.drip_sources)]
    idle_sources = [f"127.0.0.{i}" for i in range(100, 100 + args.idle_sources)]
    # Idlers first, over half a second; drippers from the first second on, over two.
    tasks = [
        asyncio.create_task(
            attack.idle(idle_sources[i % len(idle_sources)], 0.5 * i / args.idlers, i % 2 == 1)
        )
        for i in range(args.idlers)
    ] + [
        asyncio.create_task(
            attack.drip(drip_sources[i % len(drip_sources)], 1 + 2.0 * i / args.drippers)
        )
        for i in range(args.drippers)
    ]
    await asyncio.sleep(args.seconds)
    counts = attack.counts
    print(json.dumps({"attackers": len(tasks), **asdict(counts)}), flush=True)
    # Exit at once: the kernel closes the attack's sockets faster than cancelling 2,200 tasks.
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("seconds", type=float)
    parser.add_argument("--drippers", type=int, default=2000)
    parser.add_argument("--idlers", type=int, default=200)
    parser.add_argument("--drip-sources", type=int, default=20)
    parser.add_argument("--idle-sources", type=int, default=1)
    parser.add_argument("--drip-every", type=float, default=2.0)
    parser.add_argument("--reconnect-delay", type=float, default=0.0)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = args.drippers + args.idlers + 500
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
