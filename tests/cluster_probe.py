"""Run as a subprocess (pinned with taskset): connects N times to a cluster and prints the slot
of the worker that served each connection, as JSON."""

import asyncio
import json
import sys

from tests.cluster_util import whoami
from tests.wsutil import open_ready


async def main(url: str, n: int) -> None:
    slots = []
    for _ in range(n):
        ws, _ = await open_ready(url)
        slots.append(await whoami(ws))
        await ws.close()
    print(json.dumps(slots))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
