"""Shared by the Python interop scripts: the command line, the demo service's
names, the reply format the providers use and the JSON lines the clients print.
examples/tests/dubbo_interop.rs reads these formats (and common.js has the
Node twin); keep them in step."""

import argparse
import json
import os
import sys
import threading
import time

DEMO_INTERFACE = "org.apache.dubbo.samples.basic.api.DemoService"
DEMO_VERSION = "1.0.0"
DUBBO_VERSION = "2.0.2"


def _attachment(text):
    key, sep, value = text.partition("=")
    if not key or not sep:
        raise argparse.ArgumentTypeError(f"--attach wants k=v, got {text}")
    return key, value


def client_parser(description):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--addr", required=True, help="host:port")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--name", default="w1")
    parser.add_argument("--attach", type=_attachment, action="append", default=[])
    parser.add_argument("--timeout-ms", type=int, default=3000)
    parser.add_argument("--interface", default=DEMO_INTERFACE)
    parser.add_argument("--version", default=DEMO_VERSION)
    parser.add_argument("--method", default="sayHello")
    parser.add_argument(
        "--dubbo-version",
        default=DUBBO_VERSION,
        help="the Dubbo protocol version the client sends; 'library' keeps the library's default",
    )
    return parser


def dubbo_version_kwargs(args):
    """The `dubbo_version` keyword for a client library, or none to keep its default."""
    return {} if args.dubbo_version == "library" else {"dubbo_version": args.dubbo_version}


def split_addr(addr):
    host, _, port = addr.rpartition(":")
    return host, int(port)


def attachment_pairs(attachments):
    """Sorted `k=v` joined by commas: the same text common.js writes."""
    return ",".join(f"{k}={attachments[k]}" for k in sorted(attachments))


def provider_reply(name, provider, attachments):
    return f"Hello, {name} from {provider} attachments={attachment_pairs(attachments)}"


_emit_lock = threading.Lock()


def emit(obj):
    with _emit_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def start_watchdog(seconds, client):
    """A hard stop so a client never hangs, whatever its library does."""

    def expire():
        time.sleep(seconds)
        emit({"client": client, "done": False, "error": f"watchdog: no completion in {seconds}s"})
        os._exit(3)

    threading.Thread(target=expire, daemon=True).start()


def run_calls(client, args, call_once):
    """Runs call_once(index) args.count times, printing one JSON line each."""
    failures = 0
    for call in range(args.count):
        start = time.monotonic()
        result = call_once(call)
        if not result.get("ok"):
            failures += 1
        line = {"client": client, "call": call}
        line.update(result)
        line["ms"] = int((time.monotonic() - start) * 1000)
        emit(line)
    return failures
