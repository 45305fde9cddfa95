#!/usr/bin/env bash
# How much memory clients that never read their answers can make metaprotocol-proxy hold (not
# part of CI): a release proxy in front of a Thrift echo server, and CLIENTS clients (default 4)
# that write calls with 64 KiB payloads as fast as the proxy takes them and never read a byte of
# the 64 KiB answers, reconnecting when the proxy cuts them off. Prints the proxy's RSS before,
# at its peak and after the clients leave, with the buffered-bytes gauge and the overflow count.
#
#   scripts/never-reading-clients.sh [SECONDS] [CLIENTS]     # default 20 s, 4 clients
#
# Everything listens on 127.0.0.1 (ports 28320-28322); every process started here is stopped on
# exit.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-20}"
clients="${2:-4}"
listen=28320
echo_port=28321
admin=28322
out="target/never-reading"
mkdir -p "$out"

cargo build --release --locked -p metaprotocol-examples --bin metaprotocol-proxy \
  -p metaprotocol-benches --bin echo
bin="target/release"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

"$bin/echo" --protocol thrift --listen "127.0.0.1:$echo_port" --duration "$((seconds + 60))s" \
  >"$out/echo.log" 2>&1 &
pids+=($!)
cat >"$out/proxy.yaml" <<EOF
admin: { address: 127.0.0.1:$admin }
listeners:
  - { name: in, address: 127.0.0.1:$listen, protocol: thrift, route_config: r }
route_configs: [ { name: r, routes: [ { route: { cluster: echo } } ] } ]
clusters: [ { name: echo, protocol: thrift, endpoints: [ { address: 127.0.0.1:$echo_port } ] } ]
EOF
"$bin/metaprotocol-proxy" run --config "$out/proxy.yaml" >"$out/proxy.log" 2>&1 &
proxy=$!
pids+=("$proxy")
for _ in $(seq 50); do
  curl -sf "http://127.0.0.1:$admin/ready" >/dev/null && break
  sleep 0.1
done

rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$proxy/status"; }
# The sum of a metric's series (with or without labels).
metric() {
  curl -s "http://127.0.0.1:$admin/metrics" |
    awk -v m="$1" '$1 == m || index($1, m "{") == 1 { sum += $2 } END { printf "%d\n", sum }'
}
before=$(rss_kib)

# The clients: framed strict-binary calls of EchoService:echo with a 64 KiB string, written
# without ever reading.
python3 - "$listen" "$seconds" "$clients" <<'PY' &
import socket, struct, sys, threading, time
port, seconds, clients = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
name = b"EchoService:echo"
payload = b"x" * 65536
def call(seqid):
    body = (struct.pack(">I", 0x80010001) + struct.pack(">I", len(name)) + name
            + struct.pack(">I", seqid) + b"\x0b" + struct.pack(">H", 1)
            + struct.pack(">I", len(payload)) + payload + b"\x00")
    return struct.pack(">I", len(body)) + body
frames = [call(i) for i in range(64)]
end = time.monotonic() + seconds
def greedy():
    seqid = 0
    while time.monotonic() < end:
        try:
            s = socket.create_connection(("127.0.0.1", port))
            s.settimeout(1)
            while time.monotonic() < end:
                s.sendall(frames[seqid % 64])
                seqid += 1
        except OSError:
            time.sleep(0.05)
threads = [threading.Thread(target=greedy) for _ in range(clients)]
for t in threads: t.start()
for t in threads: t.join()
PY
load=$!
pids+=("$load")

peak=0
peak_buffered=0
while kill -0 "$load" 2>/dev/null; do
  rss=$(rss_kib)
  buffered=$(metric metaprotocol_buffered_bytes)
  (( rss > peak )) && peak=$rss
  (( ${buffered:-0} > peak_buffered )) && peak_buffered=${buffered:-0}
  sleep 0.5
done
sleep 3
after=$(rss_kib)

echo "== $clients clients that never read, ${seconds}s, 64 KiB answers"
echo "RSS before: $((before / 1024)) MiB, peak: $((peak / 1024)) MiB, after they left: $((after / 1024)) MiB"
echo "buffered answers at peak: $((peak_buffered / 1024 / 1024)) MiB (16 MiB per client allowed, 256 MiB proxy-wide)"
echo "clients cut off for unread answers: $(metric metaprotocol_downstream_cx_overflow_total)"
echo "buffered at the end: $(metric metaprotocol_buffered_bytes), requests in flight: $(metric metaprotocol_requests_in_flight)"
