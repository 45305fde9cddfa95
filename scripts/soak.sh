#!/usr/bin/env bash
# A soak run of metaprotocol-proxy (not part of CI): mixed Dubbo, Thrift and bRPC load for a while
# (default 10 minutes), while upstream servers are killed and restarted, clusters and route
# configs are replaced through the admin API, and malformed and slow clients come and go.
# Afterwards it checks that no call went unanswered, that nothing is left in flight, and prints
# the proxy's RSS over time (flat after warm-up is what a leak-free proxy shows).
#
#   scripts/soak.sh [MINUTES]          # default 10
#
# Everything listens on 127.0.0.1 (ports 28300-28319); every process started here is stopped on
# exit. Results go to target/soak/.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes="${1:-10}"
seconds=$((minutes * 60))
out="target/soak"
rm -rf "$out"
mkdir -p "$out"

cargo build --release --locked -p metaprotocol-examples --bin metaprotocol-proxy \
  -p metaprotocol-benches --bin loadgen --bin echo
bin="target/release"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

protocols=(dubbo thrift brpc)
declare -A listen=([dubbo]=28301 [thrift]=28302 [brpc]=28303)
declare -A echo_a=([dubbo]=28311 [thrift]=28312 [brpc]=28313)
declare -A echo_b=([dubbo]=28314 [thrift]=28315 [brpc]=28316)
admin=28309

# Upstream echo servers: two per protocol, so that one can die while the other serves.
declare -A echo_pid
start_echo() { # protocol port
  "$bin/echo" --protocol "$1" --listen "127.0.0.1:$2" --duration "$((seconds + 120))s" \
    >>"$out/echo-$1-$2.log" 2>&1 &
  echo_pid["$1-$2"]=$!
  pids+=($!)
}
for p in "${protocols[@]}"; do
  start_echo "$p" "${echo_a[$p]}"
  start_echo "$p" "${echo_b[$p]}"
done

cluster_yaml() { # protocol [weight of b]
  local p="$1" wb="${2:-1}"
  printf '{ "name": "%s-echo", "protocol": "%s", "endpoints": [ { "address": "127.0.0.1:%s" }, { "address": "127.0.0.1:%s", "weight": %s } ] }' \
    "$p" "$p" "${echo_a[$p]}" "${echo_b[$p]}" "$wb"
}

{
  echo "admin: { address: 127.0.0.1:$admin }"
  echo "drain_time: 2s"
  echo "listeners:"
  for p in "${protocols[@]}"; do
    echo "  - { name: $p-in, address: 127.0.0.1:${listen[$p]}, protocol: $p, route_config: $p-routes, frame_timeout: 5s, idle_timeout: 30s }"
  done
  echo "route_configs:"
  for p in "${protocols[@]}"; do
    echo "  - { name: $p-routes, routes: [ { name: all, route: { cluster: $p-echo }, timeout: 2s, retry_policy: { num_retries: 1, retry_on: [connect_failure, reset] } } ] }"
  done
  echo "clusters:"
  for p in "${protocols[@]}"; do echo "  - $(cluster_yaml "$p")"; done
} >"$out/proxy.yaml"

"$bin/metaprotocol-proxy" run --config "$out/proxy.yaml" --log-level warn >"$out/proxy.log" 2>&1 &
proxy=$!
pids+=($proxy)
sleep 2

rss_kib() { awk '/VmRSS/ { print $2 }' "/proc/$proxy/status"; }
metric() { curl -s "http://127.0.0.1:$admin/metrics" | awk -v s="$1" '$1 == s { print $2 }'; }

# Load: each protocol in open-loop segments of 30 s, reports appended as JSON lines.
deadline=$((SECONDS + seconds))
for p in "${protocols[@]}"; do
  (
    while ((SECONDS < deadline)); do
      "$bin/loadgen" --protocol "$p" --target "127.0.0.1:${listen[$p]}" --connections 4 \
        --outstanding 32 --rate 3000 --warmup 0s --duration 30s --patience 5s \
        >>"$out/load-$p.jsonl" 2>>"$out/load-$p.err" || true
    done
  ) &
  pids+=($!)
done

# Chaos: kill and restart upstreams, replace clusters and route configs, bad and slow clients.
(
  round=0
  while ((SECONDS < deadline - 15)); do
    round=$((round + 1))
    p="${protocols[$((round % 3))]}"
    port="${echo_b[$p]}"
    kill "${echo_pid[$p-$port]}" 2>/dev/null || true
    sleep 5
    start_echo "$p" "$port"
    curl -s -X PUT --data-binary "$(cluster_yaml "$p" $((round % 3 + 1)))" \
      "http://127.0.0.1:$admin/clusters/$p-echo" >>"$out/admin.log"
    curl -s -X PUT --data-binary "{ \"name\": \"$p-routes\", \"routes\": [ { \"name\": \"all\", \"route\": { \"cluster\": \"$p-echo\" }, \"timeout\": \"$((round % 2 + 2))s\", \"retry_policy\": { \"num_retries\": 1, \"retry_on\": [\"connect_failure\", \"reset\"] } } ] }" \
      "http://127.0.0.1:$admin/route_configs/$p-routes" >>"$out/admin.log"
    python3 - "${listen[$p]}" <<'PY' >>"$out/bad-clients.log" 2>&1 || true
import os, socket, sys, time
port = int(sys.argv[1])
for garbage in (os.urandom(64), b"\xda\xbb" + os.urandom(30), b"PRPC" + os.urandom(20)):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        s.sendall(garbage)
        s.settimeout(2)
        try:
            s.recv(1024)
        except OSError:
            pass
        s.close()
    except OSError as err:
        print("bad client:", err)
slow = socket.create_connection(("127.0.0.1", port), timeout=2)
try:
    for byte in b"\xda\xbb\xc2\x00":
        slow.sendall(bytes([byte]))
        time.sleep(1)
except OSError:
    pass
slow.close()
PY
    sleep 3
  done
) &
pids+=($!)

# RSS every 30 s.
echo "seconds rss_kib" >"$out/rss.txt"
start=$SECONDS
while ((SECONDS < deadline)); do
  echo "$((SECONDS - start)) $(rss_kib)" >>"$out/rss.txt"
  sleep 30
done
sleep 40 # the last load segments end

echo "== soak: $minutes minutes"
status=0
python3 - "$out" <<'PY' || status=$?
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
total = {"calls": 0, "unanswered": 0, "refused": 0, "other": 0}
for report in sorted(out.glob("load-*.jsonl")):
    for line in report.read_text().splitlines():
        if not line.strip().startswith("{"):
            continue
        r = json.loads(line)
        kinds = r.get("error_kinds", {})
        total["calls"] += r.get("calls", 0)
        total["unanswered"] += kinds.get("unanswered", 0)
        total["refused"] += kinds.get("refused", 0)
        total["other"] += sum(v for k, v in kinds.items() if k not in ("unanswered", "refused"))
print(f"calls {total['calls']}, unanswered {total['unanswered']}, "
      f"answered with an error {total['refused']}, other errors {total['other']}")
rss = [line.split() for line in (out / "rss.txt").read_text().splitlines()[1:]]
print("RSS (KiB) over time:", ", ".join(f"{s}s={k}" for s, k in rss))
sys.exit(1 if total["unanswered"] else 0)
PY
echo "requests in flight at the end: $(metric metaprotocol_requests_in_flight)"
echo "buffered bytes at the end: $(metric metaprotocol_buffered_bytes)"
exit $status
