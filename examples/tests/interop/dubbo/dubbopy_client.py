"""A Dubbo2 consumer: dubbo-py's DubboClient (PyPI), connected directly to one
address (no zookeeper).

    python dubbopy_client.py --addr 127.0.0.1:20880 [--count N] [--name w1]
        [--attach k=v ...] [--timeout-ms 3000] [--oneway] [--heartbeat]

Prints one JSON line per call, {"client":"dubbopy","call":0,"ok":true,"reply":...}
or {"ok":false,"status":60,"message":...} (status null when no reply came);
--oneway sends one-way requests (no reply expected; {"ok":true,"oneway":true});
--heartbeat first sends DubboClient.send_heartbeat_request (a one-way event,
flag 0xa2) and waits for the reply: {"client":"dubbopy","heartbeat":true,"ok":...}.
Ends with {"client":"dubbopy","done":true,"failures":N,"stray":M}, where stray
counts replies that matched no call (e.g. a reply to a one-way request).
"""

import queue
import sys
import time

import dubbo.client
from dubbo.codec.hessian2 import DubboHeartBeatResponse

from common import client_parser, dubbo_version_kwargs, emit, run_calls, split_addr, start_watchdog

HEARTBEAT_ID = 1000001

_heartbeat_replies = queue.Queue()


class _HeartbeatAwareDecoder(dubbo.client.Decoder):
    """DubboClient's receive loop drops heartbeat replies; keep them."""

    def decode(self):
        msg = super().decode()
        if isinstance(msg, DubboHeartBeatResponse):
            _heartbeat_replies.put(msg)
        return msg


class _RememberingIds:
    """DubboClient hides the id of the request it sends; remember the last one
    so a reply can be matched to its call (the library takes the next queued
    reply, whichever request it answers)."""

    def __init__(self, ids):
        self._ids = ids
        self.last = None

    def __iter__(self):
        return self

    def __next__(self):
        self.last = next(self._ids)
        return self.last


dubbo.client.Decoder = _HeartbeatAwareDecoder


def main():
    parser = client_parser(__doc__)
    parser.add_argument("--oneway", action="store_true")
    parser.add_argument("--heartbeat", action="store_true")
    args = parser.parse_args()
    timeout = args.timeout_ms / 1000
    start_watchdog((args.count + 1) * timeout + 10, "dubbopy")

    host, port = split_addr(args.addr)
    try:
        client = dubbo.client.DubboClient(host, port, **dubbo_version_kwargs(args))
    except OSError as err:
        emit({"client": "dubbopy", "done": False, "error": f"connect: {err}"})
        return 2
    client._timeout = timeout
    ids = _RememberingIds(client._request_id)
    client._request_id = ids
    stray = 0
    failures = 0

    if args.heartbeat:
        start = time.monotonic()
        client.send_heartbeat_request(HEARTBEAT_ID)
        try:
            reply = _heartbeat_replies.get(True, timeout)
            line = {"ok": reply.id == HEARTBEAT_ID, "id": reply.id}
        except queue.Empty:
            line = {"ok": False, "status": None, "message": "no heartbeat reply"}
        failures += 0 if line["ok"] else 1
        emit({"client": "dubbopy", "heartbeat": True, **line, "ms": int((time.monotonic() - start) * 1000)})

    request = dict(
        service_name=args.interface,
        method_name=args.method,
        service_version=args.version,
        args=[args.name],
        # The keys a Dubbo consumer sends (as in the golden captures), then the caller's.
        attachment={"path": args.interface, "interface": args.interface, "version": args.version, **dict(args.attach)},
    )

    def call_once(_call):
        nonlocal stray
        if args.oneway:
            client.send_request_without_response(**request)
            return {"ok": True, "oneway": True}
        deadline = time.monotonic() + timeout
        client._timeout = timeout
        try:
            response = client.send_request_and_return_response(**request)
            while response.id != ids.last:
                stray += 1
                client._timeout = max(deadline - time.monotonic(), 0.001)
                response = client._msg_queue.get(True, client._timeout)
        except queue.Empty:
            return {"ok": False, "status": None, "message": f"no reply in {args.timeout_ms}ms"}
        except OSError as err:
            return {"ok": False, "status": None, "message": f"connection: {err}"}
        if response.ok:
            return {"ok": True, "reply": response.data}
        return {"ok": False, "status": response.status, "message": str(response.error)}

    failures += run_calls("dubbopy", args, call_once)
    if args.oneway:
        # Give a stray reply to the one-way requests time to arrive and be counted.
        time.sleep(min(timeout, 0.5))
        while not client._msg_queue.empty():
            client._msg_queue.get_nowait()
            stray += 1
    emit({"client": "dubbopy", "done": True, "failures": failures, "stray": stray})
    return 0


if __name__ == "__main__":
    sys.exit(main())
