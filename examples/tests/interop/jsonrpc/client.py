"""A JSON-RPC 2.0 client built on jsonrpcclient (PyPI), line-delimited over TCP, for
examples/tests/jsonrpc_e2e.rs.

    .venv/bin/python client.py --addr 127.0.0.1:4000 --calls '[["add", [1, 2]], ["whoami", []]]'
        [--notify TEXT] [--raw LINE]

Sends every call at once on one connection (ids alternate between strings and numbers), then
reads the answers, which may come in any order, and prints one JSON line per call, in call
order: {"call": i, "ok": true, "result": ...} or {"call": i, "ok": false, "code": ..,
"message": ..}, with "id_ok" saying whether the answer carried the call's own id. --notify sends
a notification first; --raw sends a line as is and prints its answer as {"raw": "<line>"}. Ends with
{"done": true}.
"""

import argparse
import json
import socket

from jsonrpcclient import Error, Ok, notification_json, parse_json, request_json


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    parser.add_argument("--calls", default="[]")
    parser.add_argument("--notify")
    parser.add_argument("--raw")
    parser.add_argument("--timeout-s", type=float, default=10)
    args = parser.parse_args()
    host, port = args.addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=args.timeout_s)
    stream = sock.makefile("rwb")
    if args.notify:
        stream.write(notification_json("note", params=[args.notify]).encode() + b"\n")
    if args.raw:
        stream.write(args.raw.encode() + b"\n")
        stream.flush()
        print(json.dumps({"raw": stream.readline().decode().strip()}), flush=True)
    calls = json.loads(args.calls)
    ids = [f"call-{i}" if i % 2 == 0 else 1000 + i for i in range(len(calls))]
    for (name, params), call_id in zip(calls, ids):
        stream.write(request_json(name, params=params, id=call_id).encode() + b"\n")
    stream.flush()
    answers = {}
    for _ in calls:
        parsed = parse_json(stream.readline().decode())
        answers[json.dumps(parsed.id)] = parsed
    for i, call_id in enumerate(ids):
        parsed = answers.get(json.dumps(call_id))
        if isinstance(parsed, Ok):
            line = {"call": i, "ok": True, "result": parsed.result, "id_ok": True}
        elif isinstance(parsed, Error):
            line = {"call": i, "ok": False, "code": parsed.code, "message": parsed.message, "id_ok": True}
        else:
            line = {"call": i, "ok": False, "id_ok": False, "seen": " ".join(sorted(answers))}
        print(json.dumps(line), flush=True)
    print(json.dumps({"done": True}), flush=True)


if __name__ == "__main__":
    main()
