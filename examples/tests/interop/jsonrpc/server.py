"""A JSON-RPC 2.0 server built on jsonrpcserver (PyPI), speaking one JSON object per line over
TCP on 127.0.0.1, for examples/tests/jsonrpc_e2e.rs.

    .venv/bin/python server.py --port 4000 --name s1 --record notes.log

Prints `ready <port>` once listening and exits when its stdin closes. Each line is dispatched
as its own task, so answers may leave in another order than the calls came (as a multiplexing
server's do). Methods: add(a, b), whoami() -> its name, nothing() -> null, fail() -> error 7,
sleep(ms), repeat(text, times) -> text repeated, note(text) (a notification: appended to
--record).
"""

import argparse
import asyncio
import sys

from jsonrpcserver import Error, Success, async_dispatch, method

ARGS = None


@method
async def add(a, b):
    return Success(a + b)


@method
async def whoami():
    return Success(ARGS.name)


@method
async def nothing():
    return Success(None)


@method
async def fail():
    return Error(7, "failed on purpose")


@method
async def sleep(ms):
    await asyncio.sleep(ms / 1000)
    return Success(ms)


@method
async def repeat(text, times):
    return Success(text * times)


@method
async def note(text):
    with open(ARGS.record, "a", encoding="utf-8") as record:
        record.write(f"{ARGS.name}\t{text}\n")
    return Success(None)


async def answer(line, writer):
    response = await async_dispatch(line.decode("utf-8"))
    if response:  # notifications get none
        writer.write(response.encode("utf-8") + b"\n")
        await writer.drain()


async def serve(reader, writer):
    tasks = set()
    while line := await reader.readline():
        task = asyncio.create_task(answer(line, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks, return_exceptions=True)
    writer.close()


async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", ARGS.port)
    print(f"ready {ARGS.port}", flush=True)
    loop = asyncio.get_running_loop()
    # Exit with the test that started us: when our stdin closes.
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--record", required=True)
    ARGS = parser.parse_args()
    asyncio.run(main())
