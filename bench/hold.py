"""Opens N TCP connections to HOST:PORT, sends nothing, and holds them until
killed (or for at most 10 minutes). Prints `HOLDING N` once all are open.

    python3 bench/hold.py 127.0.0.1 3000 5000
"""

import asyncio
import resource
import sys


async def main():
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 100)), hard))
    writers = []
    for _ in range(n):
        _, writer = await asyncio.open_connection(host, port)
        writers.append(writer)
    print(f"HOLDING {len(writers)}", flush=True)
    await asyncio.sleep(600)


asyncio.run(main())
