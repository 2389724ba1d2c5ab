"""A TCP relay that holds back every MongoDB wire message: the database a network hop away.

``make bench BENCH_ARGS=--hop`` puts it between every server under test and
the embedded database. Each message (a MongoDB wire message starts with its
length) is read whole and written on after ``--delay-ms`` (1 ms by default),
in order, in both directions; messages in flight do not wait for each other,
as on a link with latency and plenty of bandwidth. A request and its reply
thus take two delays more than on the loopback.

    python -m scripts.bench_relay --port 27018 --upstream 127.0.0.1:27017 --delay-ms 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

import uvloop

HEADER_BYTES = 4  # int32 messageLength, little-endian, counting itself


async def forward(source: asyncio.StreamReader, target: asyncio.StreamWriter, delay: float) -> None:
    """Copy whole wire messages from ``source`` to ``target``, each ``delay`` seconds late."""
    loop = asyncio.get_running_loop()
    due: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

    async def write() -> None:
        while (item := await due.get()) is not None:
            moment, message = item
            if (wait := moment - loop.time()) > 0:
                await asyncio.sleep(wait)
            target.write(message)
            await target.drain()

    writer = asyncio.create_task(write())
    try:
        while True:
            header = await source.readexactly(HEADER_BYTES)
            length = int.from_bytes(header, "little")
            body = await source.readexactly(length - HEADER_BYTES)
            due.put_nowait((loop.time() + delay, header + body))
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the sender closed: deliver what was read, then close
    finally:
        due.put_nowait(None)
        with contextlib.suppress(ConnectionError):
            await writer
        target.close()


async def relay(
    upstream: tuple[str, int],
    delay: float,
    client: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
) -> None:
    try:
        server, server_writer = await asyncio.open_connection(*upstream)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(
        forward(client, server_writer, delay),
        forward(server, client_writer, delay),
        return_exceptions=True,
    )


async def serve(port: int, upstream: tuple[str, int], delay: float) -> None:
    connections: set[asyncio.Task[None]] = set()

    def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(relay(upstream, delay, reader, writer))
        connections.add(task)
        task.add_done_callback(connections.discard)

    server = await asyncio.start_server(connected, "127.0.0.1", port)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    print(
        f"relay on 127.0.0.1:{port} -> {upstream[0]}:{upstream[1]}, {delay * 1000:g} ms", flush=True
    )
    async with server:
        await stop.wait()
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="host:port of the database")
    parser.add_argument("--delay-ms", type=float, default=1.0)
    args = parser.parse_args()
    host, port = args.upstream.rsplit(":", 1)
    # uvloop's timers and sockets add less of their own delay than asyncio's.
    uvloop.run(serve(args.port, (host, int(port)), args.delay_ms / 1000))


if __name__ == "__main__":
    main()
