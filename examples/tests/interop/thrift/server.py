"""A Greeter server (Apache Thrift's Python library) for the proxy's end-to-end tests.

Usage: server.py PORT TRANSPORT PROTOCOL NAME
Accepts only TRANSPORT (framed|unframed|header) x PROTOCOL (binary|compact). With
THRIFT_WRITE_ZLIB=1 (THeader), every answer is written under the zlib transform. Prints "listening"
once bound and "connection" for every accepted connection (the tests count upstream
connections). Replies name the server, so tests can tell where a call was routed.
"""

import os
import sys
import threading

import common  # noqa: F401  (puts the generated code on the path)
from greeter import Greeter
from greeter.ttypes import GreetError
from thrift.protocol.THeaderProtocol import THeaderProtocol
from thrift.server import TServer
from thrift.transport import TSocket
from thrift.transport.THeaderTransport import THeaderTransformID

_current = threading.local()
WRITE_ZLIB = os.environ.get("THRIFT_WRITE_ZLIB") == "1"


class Handler:
    def __init__(self, name):
        self.name = name
        self.pings = 0
        self.lock = threading.Lock()

    def sayHello(self, name):
        if name == "error":
            raise GreetError(code=42, message="bad name")
        if name == "crash":
            raise RuntimeError("crash requested")
        return "Hello, %s from %s" % (name, self.name)

    def ping(self):
        with self.lock:
            self.pings += 1

    def pingCount(self):
        with self.lock:
            return self.pings

    def echoHeader(self, key):
        iprot = getattr(_current, "iprot", None)
        if not isinstance(iprot, THeaderProtocol):
            return ""
        value = iprot.get_headers().get(key.encode())
        return value.decode() if value is not None else ""


class HeaderAwareProcessor:
    """Lets the handler see the THeader headers of the call it is serving."""

    def __init__(self, inner):
        self.inner = inner

    def process(self, iprot, oprot):
        _current.iprot = iprot
        if WRITE_ZLIB and THeaderTransformID.ZLIB not in oprot.trans._write_transforms:
            oprot.trans.add_transform(THeaderTransformID.ZLIB)
        return self.inner.process(iprot, oprot)


class CountingServerSocket(TSocket.TServerSocket):
    def accept(self):
        client = super().accept()
        if client is not None:
            print("connection", flush=True)
        return client


def main():
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    port, transport, protocol, name = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    common.check_args(transport, protocol)
    trans_factory, proto_factory = common.server_factories(transport, protocol)
    processor = HeaderAwareProcessor(Greeter.Processor(Handler(name)))
    socket = CountingServerSocket(host="127.0.0.1", port=port)
    server = TServer.TThreadedServer(processor, socket, trans_factory, proto_factory, daemon=True)
    socket.listen()
    print("listening", flush=True)
    server.serve()


if __name__ == "__main__":
    main()
