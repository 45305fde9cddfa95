"""Transport and protocol construction shared by the test server and client."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen_py"))

from thrift.protocol import TBinaryProtocol, TCompactProtocol  # noqa: E402
from thrift.protocol.THeaderProtocol import THeaderProtocol, THeaderProtocolFactory  # noqa: E402
from thrift.transport import TTransport  # noqa: E402
from thrift.transport.THeaderTransport import THeaderClientType, THeaderSubprotocolID  # noqa: E402

TRANSPORTS = ("framed", "unframed", "header")
# Binary without THeader: a server reads strictly (refusing a message without the version
# word) with THRIFT_STRICT_READ=1, a client writes lax (without it) with THRIFT_LAX_WRITE=1.
STRICT_READ = os.environ.get("THRIFT_STRICT_READ") == "1"
LAX_WRITE = os.environ.get("THRIFT_LAX_WRITE") == "1"
PROTOCOLS = ("binary", "compact")


def check_args(transport, protocol):
    if transport not in TRANSPORTS or protocol not in PROTOCOLS:
        raise SystemExit("transport must be one of %s, protocol one of %s" % (TRANSPORTS, PROTOCOLS))


def server_factories(transport, protocol):
    """(transport factory, protocol factory) for a server that only accepts this format."""
    if transport == "header":
        client_type = THeaderClientType.HEADERS
        subprotocol = THeaderSubprotocolID.COMPACT if protocol == "compact" else THeaderSubprotocolID.BINARY
        return TTransport.TBufferedTransportFactory(), THeaderProtocolFactory((client_type,), subprotocol)
    trans = TTransport.TFramedTransportFactory() if transport == "framed" else TTransport.TBufferedTransportFactory()
    if protocol == "compact":
        return trans, TCompactProtocol.TCompactProtocolFactory()
    return trans, TBinaryProtocol.TBinaryProtocolFactory(strictRead=STRICT_READ)


def client_protocol(socket, transport, protocol):
    """(transport to open and close, protocol) for a client speaking this format."""
    if transport == "header":
        trans = TTransport.TBufferedTransport(socket)
        subprotocol = THeaderSubprotocolID.COMPACT if protocol == "compact" else THeaderSubprotocolID.BINARY
        return trans, THeaderProtocol(trans, (THeaderClientType.HEADERS,), subprotocol)
    trans = TTransport.TFramedTransport(socket) if transport == "framed" else TTransport.TBufferedTransport(socket)
    if protocol == "compact":
        return trans, TCompactProtocol.TCompactProtocol(trans)
    return trans, TBinaryProtocol.TBinaryProtocol(trans, strictWrite=not LAX_WRITE)
