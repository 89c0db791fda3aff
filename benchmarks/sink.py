"""A Sentry ingestion endpoint that accepts every envelope and keeps nothing: the benchmark's DSN.

It runs in its own process and does as little as possible per request (read the body, answer 200),
so that the server under test, not the sink, pays for what the SDK sends. It prints how many
envelopes it took when it is stopped.
"""

from __future__ import annotations

import asyncio
import signal
import sys

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


async def serve(port: int) -> None:
    count = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                count += 1
                writer.write(RESPONSE)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    async with server:
        await stop.wait()
    print(f"envelopes {count}", flush=True)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
