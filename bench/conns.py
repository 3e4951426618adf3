"""Opens N HTTP/1.1 keep-alive connections to HOST:PORT, sends one
`GET PATH` on each, and holds them all open until killed (at most 10 minutes).

    python3 bench/conns.py 127.0.0.1 3000 10000 /ok answered
    python3 bench/conns.py 127.0.0.1 3000 10000 /hang sent

MODE `answered`: sends the requests BATCH at a time (default 500), waiting
for each batch's responses (read whole, by Content-Length) before the next,
then prints `HOLDING N <status>=<count> ...`: N idle keep-alive connections,
each after one request.
MODE `sent`: sends every request, waits WAIT seconds (default 3) for what is
answered at once, then prints `HOLDING N <status>=<count> ... pending=<count>`:
the unanswered requests are still in flight (a hung upstream).
"""

import asyncio
import collections
import os
import resource
import sys


async def one(host, port, path, mode, statuses, opened):
    reader, writer = await asyncio.open_connection(host, port)
    opened.append(writer)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b" ", 2)[1].decode()
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    statuses[status] += 1


async def main():
    host, port, n, path, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    wait = float(os.environ.get("WAIT", "3"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 100)), hard))
    statuses = collections.Counter()
    opened = []
    tasks = []
    size = int(os.environ.get("BATCH", "500"))
    # In batches, so the listener's accept queue is not overrun.
    for i in range(0, n, size):
        batch = [asyncio.create_task(one(host, port, path, mode, statuses, opened)) for _ in range(min(size, n - i))]
        tasks += batch
        if mode == "answered":
            await asyncio.gather(*batch)
        while len(opened) < i + len(batch):
            await asyncio.sleep(0.01)
    if mode != "answered":
        await asyncio.sleep(wait)
    answered = sum(statuses.values())
    counts = " ".join(f"{k}={v}" for k, v in sorted(statuses.items()))
    print(f"HOLDING {len(opened)} {counts} pending={n - answered}", flush=True)
    await asyncio.sleep(600)


asyncio.run(main())
