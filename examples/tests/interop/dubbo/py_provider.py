"""A Dubbo2 provider built on dubbo-py's DubboService (PyPI), serving
DemoService:1.0.0 sayHello(String) on 127.0.0.1 without zookeeper.

    python py_provider.py --port 20882 --name v2 [--record calls.log]

Prints `ready <port>` once listening, and exits when its stdin closes. Names with a meaning:
    crash       -> the handler raises: dubbo-py answers status 90 with "boom"
    sleep-<ms>  -> the reply is delayed by <ms> milliseconds
Every call that arrives is appended to --record as one tab-separated line:
    <provider> <twoway|oneway> <name> <k=v,k=v attachments>
"""

import argparse
import signal
import sys
import threading
import time

import dubbo.server
from dubbo.codec.hessian2 import DubboRequest

from common import DEMO_INTERFACE, attachment_pairs, provider_reply

# dubbo-py calls handlers with the arguments only; remember the request each
# connection thread decoded last so the handler can see its attachments.
_current = threading.local()


class _RecordingDecoder(dubbo.server.Decoder):
    def decode(self):
        msg = super().decode()
        if isinstance(msg, DubboRequest):
            _current.request = msg
        return msg


class _LoopbackServer(dubbo.server._DubboServer):
    """dubbo-py binds 0.0.0.0; tests talk to 127.0.0.1 only."""

    def __init__(self, server_address, request_handler):
        super().__init__(("127.0.0.1", server_address[1]), request_handler)


dubbo.server.Decoder = _RecordingDecoder
dubbo.server._DubboServer = _LoopbackServer
# The advertised address only matters for zookeeper registration, which is not
# used; dubbo-py would look it up by routing towards a public address.
dubbo.server.get_pub_ip = lambda: "127.0.0.1"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="py")
    parser.add_argument("--record")
    args = parser.parse_args()
    record_lock = threading.Lock()

    def say_hello(name):
        request = _current.request
        attachments = {str(k): v for k, v in (request.attachment or {}).items()}
        if args.record:
            kind = "twoway" if request.twoway else "oneway"
            with record_lock, open(args.record, "a", encoding="utf-8") as out:
                out.write(f"{args.name}\t{kind}\t{name}\t{attachment_pairs(attachments)}\n")
        if name == "crash":
            raise RuntimeError("boom")
        if name.startswith("sleep-"):
            time.sleep(int(name[len("sleep-"):]) / 1000)
        return provider_reply(name, args.name, attachments)

    service = dubbo.server.DubboService(args.port, args.name, dubbo_version="2.0.2")
    service.add_method(DEMO_INTERFACE, "sayHello", say_hello)
    service.start()
    print(f"ready {args.port}", flush=True)

    stop = threading.Event()

    def stop_when_stdin_closes():
        # The test holds stdin open; when it goes, so does the provider.
        sys.stdin.read()
        stop.set()

    threading.Thread(target=stop_when_stdin_closes, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    sys.exit(0)


if __name__ == "__main__":
    main()
