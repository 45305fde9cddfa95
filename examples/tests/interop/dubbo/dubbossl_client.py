"""A Dubbo2 consumer: dubbo-ssl-python's DubboClient (PyPI), connected directly
to one address (its `host=` mode, no zookeeper), plain TCP.

    python dubbossl_client.py --addr 127.0.0.1:20880 [--count N] [--name w1]
        [--attach k=v ...] [--timeout-ms 3000] [--heartbeat-idle-secs S]

Prints one JSON line per call, {"client":"dubbossl","call":0,"ok":true,"reply":...}
or {"ok":false,"status":60,"message":...} (status null when no reply came).
--heartbeat-idle-secs S shortens the library's idle time before it sends its
Java-style two-way heartbeat (flag 0xe2, 60 s by default); after the calls the
client stays idle and reports the heartbeat reply:
{"client":"dubbossl","heartbeat":true,"ok":...,"id":N,"status":20}.
Ends with {"client":"dubbossl","done":true,"failures":N}.
"""

import queue
import sys
import threading
import time
from struct import unpack

from dubbo_ssl.client import DubboClient
from dubbo_ssl.common.exceptions import DubboRequestTimeoutException
from dubbo_ssl.connection import connections

from common import client_parser, dubbo_version_kwargs, emit, run_calls, start_watchdog

FLAG_REQUEST = 0x80
FLAG_EVENT = 0x20

# Status of each reply by invoke id: dubbo-ssl-python keeps only the body text.
_statuses = {}
_heartbeat_replies = queue.Queue()
_status_lock = threading.Lock()

_parse_head = connections.BaseConnectionPool._parse_head
_new_connection = connections.SelectConnectionPool._new_connection


def _parse_head_keeping_status(self, data, conn):
    flag, status = data[2], data[3]
    invoke_id = unpack("!q", bytes(data[4:12]))[0]
    if flag & FLAG_EVENT and not flag & FLAG_REQUEST:
        _heartbeat_replies.put((invoke_id, status))
    else:
        with _status_lock:
            _statuses[invoke_id] = status
    return _parse_head(self, data, conn)


def _new_connection_with_heartbeat_count(self, host, verify):
    # The library's bug: the idle-heartbeat check reads client_heartbeats[host],
    # which nothing ever sets, so its first heartbeat dies on a KeyError.
    _new_connection(self, host, verify)
    self.client_heartbeats.setdefault(host, 0)


class _RememberedRequest(connections.Request):
    """Remembers the invoke id of the request this thread sent last."""

    last = threading.local()

    def __init__(self, request):
        super().__init__(request)
        _RememberedRequest.last.invoke_id = self.invoke_id


connections.BaseConnectionPool._parse_head = _parse_head_keeping_status
connections.Request = _RememberedRequest
connections.SelectConnectionPool._new_connection = _new_connection_with_heartbeat_count


def main():
    parser = client_parser(__doc__)
    parser.add_argument("--heartbeat-idle-secs", type=float)
    args = parser.parse_args()
    timeout = args.timeout_ms / 1000
    idle = args.heartbeat_idle_secs
    start_watchdog(args.count * timeout + (idle or 0) + timeout + 10, "dubbossl")
    if idle is not None:
        connections.TIMEOUT_IDLE = idle

    client = DubboClient(args.interface, group="", version=args.version, host=args.addr, **dubbo_version_kwargs(args))

    def call_once(_call):
        _RememberedRequest.last.invoke_id = None
        try:
            reply = client.call(args.method, [args.name], context=dict(args.attach), timeout=timeout)
            return {"ok": True, "reply": reply}
        except DubboRequestTimeoutException as err:
            return {"ok": False, "status": None, "message": str(err)}
        except Exception as err:  # the library raises bare exceptions for error replies
            with _status_lock:
                status = _statuses.get(getattr(_RememberedRequest.last, "invoke_id", None))
            return {"ok": False, "status": status, "message": str(err).strip()}

    failures = run_calls("dubbossl", args, call_once)
    if idle is not None:
        start = time.monotonic()
        try:
            heartbeat_id, status = _heartbeat_replies.get(True, idle + timeout + 1)
            line = {"ok": status == 20, "id": heartbeat_id, "status": status}
        except queue.Empty:
            line = {"ok": False, "status": None, "message": "no heartbeat reply"}
        failures += 0 if line["ok"] else 1
        emit({"client": "dubbossl", "heartbeat": True, **line, "ms": int((time.monotonic() - start) * 1000)})
    emit({"client": "dubbossl", "done": True, "failures": failures})
    return 0


if __name__ == "__main__":
    sys.exit(main())
