"""A Greeter client (Apache Thrift's Python library) for the proxy's end-to-end tests.

Usage: client.py PORT TRANSPORT PROTOCOL SCENARIO [ARG]
Prints one JSON object with the results. Scenarios:
  basic          sayHello("w1"), the declared exception, the TApplicationException, three
                 one-way pings and the server's ping count (polled until it reaches 3)
  hello NAME     sayHello(NAME), with THeader headers from env THRIFT_HEADERS ("k=v,k2=v2");
                 over THeader, also the headers of the reply
  echo KEY       echoHeader(KEY), with the same THeader headers
  unknown        a call to a method the proxy has no route for; reports the exception
  big N          sayHello of a name of N bytes, then sayHello("after") on the same connection;
                 reports the exception (or the length of the greeting) and the greeting
  bigping N      on a second connection sayHello("before"); then a one-way ping whose argument
                 struct carries a string of N bytes in a field ping_args does not declare (a
                 server skips it), a plain ping, the server's ping count (polled until it
                 reaches 1, then read again after a pause) and sayHello("after"); then
                 sayHello("other") on the second connection
  zlib [N]       (THeader) a call of sayHello("z"), or of a name of N random letters (which
                 zlib cannot shrink much), under the zlib transform, written by hand with
                 seqid 7 (the generated client always sends 0); then sayHello("plain") without
                 it on the same connection; reports the answer's name, type and seqid, its
                 greeting or exception, and the greeting
  zlibbomb N     as zlib, with a name of N letters "a" (which zlib shrinks a thousandfold)
  zlibping [N]   (THeader) a one-way ping under the zlib transform, written by hand with
                 seqid 5 (with N > 0, its argument struct carries a string of N random letters
                 in a field ping_args does not declare), then sayHello("plain") without it on
                 the same connection, and the server's ping count (polled until it reaches 1,
                 or 0 with N > 0, then read again after a pause); reports the greeting (or the
                 exception the call read) and the count
  zlibcorrupt    (THeader) a call under the zlib transform whose data is not zlib at all
                 (so its message type cannot be read), written by hand with seq 7; reports
                 what comes back: an answer's name, type and seqid, or "closed"
  transformping ID
                 (THeader) a one-way ping whose frame names transform ID (3, snappy, which
                 Apache Thrift's Python library cannot write, so written by hand with seq 5,
                 its message in the clear), then sayHello("plain") on the same connection;
                 reports the greeting, the exception the call read, or "closed"
  persistent KEY (THeader) sayHello("p"), then echoHeader(KEY), each written by hand (seqids 1
                 and 2) with a header block that Apache Thrift's library cannot write:
                 KEYVALUE {x-trace-id: t1}, PKEYVALUE {KEY: admin}, KEYVALUE {KEY: admin} (its
                 readers stop at the persistent group); reports the greeting and the echo
  trailing N     (framed or THeader) sayHello("t") written by hand with N zero bytes after its
                 argument struct in its frame, then sayHello("after") on the same connection;
                 reports the answer (the greeting or the exception) and the greeting
  bigheader N    (THeader) sayHello("w1") with a header `big` of N bytes, then sayHello("after")
                 without it on the same connection; reports the exception (or the greeting)
                 and the greeting
  concurrent N   N clients on N connections at once, each calling sayHello("c<i>") 5 times
                 (the Python client always sends seqid 0); reports how many replies were right
  load N STOP OUT
                 N connections, each calling sayHello in a loop as fast as it can, from when it
                 prints "running" until the file STOP exists; writes one line per call to OUT
                 ("<connection> <start> <end> <server>", times in ns since the epoch) and reports the
                 number of calls and the first errors (an error ends its connection's loop)
"""

import json
import os
import random
import string
import struct
import sys
import threading
import time

import common
from greeter import Greeter
from greeter.ttypes import GreetError
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.protocol.THeaderProtocol import THeaderProtocol
from thrift.Thrift import TApplicationException, TMessageType, TType
from thrift.transport import TSocket
from thrift.transport.TTransport import TMemoryBuffer, TTransportException
from thrift.transport.THeaderTransport import THeaderTransformID

TIMEOUT_MS = 10000


class Connection:
    def __init__(self, port, transport, protocol):
        socket = TSocket.TSocket("127.0.0.1", port)
        socket.setTimeout(TIMEOUT_MS)
        self.trans, self.proto = common.client_protocol(socket, transport, protocol)
        self.client = Greeter.Client(self.proto)
        self.trans.open()

    def set_headers(self):
        """THeader headers are written once per message: set them before every call."""
        if not isinstance(self.proto, THeaderProtocol):
            return
        spec = os.environ.get("THRIFT_HEADERS", "")
        for pair in filter(None, spec.split(",")):
            key, _, value = pair.partition("=")
            self.proto.set_header(key.encode(), value.encode())

    def close(self):
        self.trans.close()


def app_exception(e):
    return {"type": e.type, "message": e.message}


def basic(conn):
    out = {}
    conn.set_headers()
    out["hello"] = conn.client.sayHello("w1")
    try:
        conn.set_headers()
        conn.client.sayHello("error")
        out["error"] = None
    except GreetError as e:
        out["error"] = {"code": e.code, "message": e.message}
    try:
        conn.set_headers()
        conn.client.sayHello("crash")
        out["crash"] = None
    except TApplicationException as e:
        out["crash"] = app_exception(e)
    for _ in range(3):
        conn.set_headers()
        conn.client.ping()
    deadline = time.time() + 5
    while True:
        conn.set_headers()
        out["pings"] = conn.client.pingCount()
        if out["pings"] >= 3 or time.time() > deadline:
            break
        time.sleep(0.05)
    # The connection still works after all of that.
    conn.set_headers()
    out["hello_again"] = conn.client.sayHello("w2")
    return out


def read_answer(proto, result):
    """Reads one answer into `result`: its message header (name, type, seqid), and the result's
    success or the TApplicationException's type and message."""
    name, mtype, seqid = proto.readMessageBegin()
    if mtype == TMessageType.EXCEPTION:
        e = TApplicationException()
        e.read(proto)
        value = app_exception(e)
    else:
        result.read(proto)
        value = result.success
    proto.readMessageEnd()
    return {"name": name, "mtype": mtype, "seqid": seqid}, value


def unknown(conn):
    """Writes a call to `missingMethod` by hand and reads the answer."""
    proto = conn.proto
    conn.set_headers()
    proto.writeMessageBegin("missingMethod", TMessageType.CALL, 0)
    proto.writeStructBegin("missingMethod_args")
    proto.writeFieldStop()
    proto.writeStructEnd()
    proto.writeMessageEnd()
    proto.trans.flush()
    name, mtype, seqid = proto.readMessageBegin()
    out = {"name": name, "mtype": mtype, "seqid": seqid}
    if mtype == TMessageType.EXCEPTION:
        e = TApplicationException()
        e.read(proto)
        out["exception"] = app_exception(e)
    proto.readMessageEnd()
    return out


def big(conn, size):
    out = {}
    try:
        out["big"] = len(conn.client.sayHello("x" * size))
    except TApplicationException as e:
        out["big"] = app_exception(e)
    out["after"] = conn.client.sayHello("after")
    return out


def ping_count_after(conn, expected):
    """The server's ping count once it reaches `expected` (or after 5 s), read again after a
    pause: a ping that was forwarded late would show then."""
    deadline = time.time() + 5
    while conn.client.pingCount() < expected and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    return conn.client.pingCount()


def big_ping(conn, other, size):
    out = {"before": other.client.sayHello("before")}
    proto = conn.proto
    conn.set_headers()
    proto.writeMessageBegin("ping", TMessageType.ONEWAY, 0)
    proto.writeStructBegin("ping_args")
    proto.writeFieldBegin("padding", TType.STRING, 1)
    proto.writeString("x" * size)
    proto.writeFieldEnd()
    proto.writeFieldStop()
    proto.writeStructEnd()
    proto.writeMessageEnd()
    proto.trans.flush()
    conn.set_headers()
    conn.client.ping()
    out["pings"] = ping_count_after(conn, 1)
    out["after"] = conn.client.sayHello("after")
    out["other"] = other.client.sayHello("other")
    return out


def zlib(conn, size, bomb=False):
    out = {}
    letters = random.Random(7).choices(string.ascii_letters, k=size)
    name = "a" * size if bomb else "".join(letters) if size else "z"
    proto = conn.proto
    proto.trans.add_transform(THeaderTransformID.ZLIB)
    proto.writeMessageBegin("sayHello", TMessageType.CALL, 7)
    Greeter.sayHello_args(name=name).write(proto)
    proto.writeMessageEnd()
    proto.trans.flush()
    out["zlib_answer"], out["zlib"] = read_answer(proto, Greeter.sayHello_result())
    # The library has no call that drops a transform: its list of them, emptied.
    proto.trans._write_transforms.clear()
    out["hello"] = conn.client.sayHello("plain")
    return out


def zlib_ping(conn, size):
    out = {}
    proto = conn.proto
    proto.trans.add_transform(THeaderTransformID.ZLIB)
    proto.writeMessageBegin("ping", TMessageType.ONEWAY, 5)
    proto.writeStructBegin("ping_args")
    if size:
        proto.writeFieldBegin("padding", TType.STRING, 1)
        proto.writeString("".join(random.Random(5).choices(string.ascii_letters, k=size)))
        proto.writeFieldEnd()
    proto.writeFieldStop()
    proto.writeStructEnd()
    proto.writeMessageEnd()
    proto.trans.flush()
    proto.trans._write_transforms.clear()
    # An answer to the one-way call, had one come, is what this call reads.
    try:
        out["hello"] = conn.client.sayHello("plain")
    except TApplicationException as e:
        out["hello"] = app_exception(e)
    # A client that read another call's answer reads the rest out of step.
    try:
        out["pings"] = ping_count_after(conn, 0 if size else 1)
    except Exception as e:  # reported, not raised: the test prints every failure
        out["pings"] = "%s: %s" % (type(e).__name__, e)
    return out


def zlib_corrupt(conn, protocol):
    block = bytes([2 if protocol == "compact" else 0, 1, 1, 0])
    frame = b"\x0f\xff\x00\x00" + struct.pack(">IH", 7, len(block) // 4) + block + b"not zlib"
    conn.trans.write(struct.pack(">I", len(frame)) + frame)
    conn.trans.flush()
    try:
        name, mtype, seqid = conn.proto.readMessageBegin()
    except TTransportException:
        return {"answer": "closed"}
    return {"answer": {"name": name, "mtype": mtype, "seqid": seqid}}


def transform_ping(conn, protocol, transform):
    message = TMemoryBuffer()
    proto = (TCompactProtocol if protocol == "compact" else TBinaryProtocol)(message)
    proto.writeMessageBegin("ping", TMessageType.ONEWAY, 5)
    Greeter.ping_args().write(proto)
    proto.writeMessageEnd()
    block = bytes([2 if protocol == "compact" else 0, 1, transform, 0])
    frame = b"\x0f\xff\x00\x00" + struct.pack(">IH", 5, len(block) // 4) + block + message.getvalue()
    try:
        conn.trans.write(struct.pack(">I", len(frame)) + frame)
        conn.trans.flush()
        # An answer to the one-way call, had one come, is what this call reads.
        return {"hello": conn.client.sayHello("plain")}
    except TApplicationException as e:
        return {"hello": app_exception(e)}
    except TTransportException:
        return {"hello": "closed"}


def persistent(conn, protocol, key):
    def group(info_id, pairs):
        out = bytes([info_id, len(pairs)])
        for k, v in pairs:
            out += bytes([len(k)]) + k + bytes([len(v)]) + v
        return out

    block = bytes([2 if protocol == "compact" else 0, 0])
    block += group(1, [(b"x-trace-id", b"t1")])
    block += group(2, [(key.encode(), b"admin")]) + group(1, [(key.encode(), b"admin")])
    block += bytes(-len(block) % 4)
    calls = [
        ("sayHello", Greeter.sayHello_args(name="p"), Greeter.sayHello_result()),
        ("echoHeader", Greeter.echoHeader_args(key=key), Greeter.echoHeader_result()),
    ]
    out = {}
    for seqid, (method, args, result) in enumerate(calls, 1):
        message = TMemoryBuffer()
        proto = (TCompactProtocol if protocol == "compact" else TBinaryProtocol)(message)
        proto.writeMessageBegin(method, TMessageType.CALL, seqid)
        args.write(proto)
        proto.writeMessageEnd()
        frame = b"\x0f\xff\x00\x00" + struct.pack(">IH", seqid, len(block) // 4) + block + message.getvalue()
        conn.trans.write(struct.pack(">I", len(frame)) + frame)
        conn.trans.flush()
        _, out[method] = read_answer(conn.proto, result)
    return out


def trailing(conn, size):
    proto = conn.proto
    proto.writeMessageBegin("sayHello", TMessageType.CALL, 3)
    Greeter.sayHello_args(name="t").write(proto)
    proto.writeMessageEnd()
    # The frame's transport (framed, or THeader) frames what is written until the flush.
    proto.trans.write(bytes(size))
    proto.trans.flush()
    out = {}
    _, out["trailing"] = read_answer(proto, Greeter.sayHello_result())
    out["after"] = conn.client.sayHello("after")
    return out


def big_header(conn, size):
    out = {}
    conn.proto.set_header(b"big", b"v" * size)
    try:
        out["big"] = conn.client.sayHello("w1")
    except TApplicationException as e:
        out["big"] = app_exception(e)
    out["after"] = conn.client.sayHello("after")
    return out


def concurrent(port, transport, protocol, count):
    results = [None] * count
    start = threading.Barrier(count)

    def run(i):
        try:
            conn = Connection(port, transport, protocol)
            start.wait(timeout=TIMEOUT_MS / 1000)
            good = 0
            for _ in range(5):
                conn.set_headers()
                reply = conn.client.sayHello("c%d" % i)
                if reply.startswith("Hello, c%d from " % i):
                    good += 1
            conn.close()
            results[i] = good
        except Exception as e:  # reported, not raised: the test prints every failure
            results[i] = "%s: %s" % (type(e).__name__, e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [r for r in results if not isinstance(r, int)]
    return {"clients": count, "good": sum(r for r in results if isinstance(r, int)), "errors": errors[:5]}


def load(port, transport, protocol, count, stop_path, out_path):
    conns = [Connection(port, transport, protocol) for _ in range(count)]
    records = [[] for _ in range(count)]
    errors = []
    stop = threading.Event()

    def watch():
        while not os.path.exists(stop_path):
            time.sleep(0.01)
        stop.set()

    def run(i):
        conn, calls = conns[i], records[i]
        try:
            while not stop.is_set():
                start = time.time_ns()
                reply = conn.client.sayHello("l%d" % i)
                calls.append((start, time.time_ns(), reply.rsplit(" from ", 1)[-1]))
        except Exception as e:  # reported, not raised: the test prints every failure
            errors.append("%d: %s: %s" % (i, type(e).__name__, e))
        finally:
            conn.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    threading.Thread(target=watch, daemon=True).start()
    print("running", flush=True)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(out_path, "w") as out:
        for i, calls in enumerate(records):
            out.writelines("%d %d %d %s\n" % (i, start, end, server) for start, end, server in calls)
    return {"calls": sum(len(c) for c in records), "errors": errors[:5]}


def main():
    if len(sys.argv) < 5:
        raise SystemExit(__doc__)
    port, transport, protocol, scenario = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    arg = sys.argv[5] if len(sys.argv) > 5 else None
    common.check_args(transport, protocol)
    if scenario == "load":
        count, stop_path, out_path = int(arg), sys.argv[6], sys.argv[7]
        print(json.dumps(load(port, transport, protocol, count, stop_path, out_path), sort_keys=True))
        return
    if scenario == "concurrent":
        print(json.dumps(concurrent(port, transport, protocol, int(arg or 50)), sort_keys=True))
        return
    conn = Connection(port, transport, protocol)
    try:
        if scenario == "basic":
            out = basic(conn)
        elif scenario == "hello":
            conn.set_headers()
            out = {"hello": conn.client.sayHello(arg)}
            if isinstance(conn.proto, THeaderProtocol):
                received = conn.proto.get_headers()
                out["response_headers"] = {k.decode(): v.decode() for k, v in received.items()}
        elif scenario == "echo":
            conn.set_headers()
            out = {"echo": conn.client.echoHeader(arg)}
        elif scenario == "unknown":
            out = unknown(conn)
        elif scenario == "big":
            out = big(conn, int(arg))
        elif scenario == "bigping":
            other = Connection(port, transport, protocol)
            try:
                out = big_ping(conn, other, int(arg))
            finally:
                other.close()
        elif scenario == "persistent":
            out = persistent(conn, protocol, arg)
        elif scenario == "trailing":
            out = trailing(conn, int(arg))
        elif scenario == "bigheader":
            out = big_header(conn, int(arg))
        elif scenario == "zlib":
            out = zlib(conn, int(arg or 0))
        elif scenario == "zlibbomb":
            out = zlib(conn, int(arg), bomb=True)
        elif scenario == "zlibping":
            out = zlib_ping(conn, int(arg or 0))
        elif scenario == "zlibcorrupt":
            out = zlib_corrupt(conn, protocol)
        elif scenario == "transformping":
            out = transform_ping(conn, protocol, int(arg))
        else:
            raise SystemExit("unknown scenario " + scenario)
    finally:
        conn.close()
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
