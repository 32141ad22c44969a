#!/usr/bin/env bash
# The DNS proxy against the direct path to the same resolver (the lab's
# dnsmasq), with the same query file, in the same run:
#   direct     dnsperf from a pod no DNS rule covers, straight to dnsmasq;
#   bulkhead   dnsperf from a pod whose DNS rule (matchPattern "*") covers
#              the resolver: the kernel hands each query to `bulkhead proxy`
#              (one worker thread), which decides it, forwards it as the
#              client, tells the agent the answer's addresses and holds the
#              answer until the agent says the kernel has them (or already
#              had them).
# Each of ROUNDS rounds (default 5) runs both rows interleaved: the most
# queries/s dnsperf gets (SECONDS each, default 10), then 10,000 queries/s
# with every answer's latency (p50, p99: the proxy's added p99 is the
# difference). Then resolve-then-connect: 10,000 fresh names (each its own
# new address behind a world host), each resolved through the proxy and
# connected to at once on 443 under a toFQDNs rule; a first connection that
# does not get through within 0.9 s counts as dropped; with the held-answer
# wait distribution from the agent's metrics. dnsmasq and dnsperf on CPU 0,
# the proxy and the agent on CPU 1. Needs root.
#
#   bash scripts/bench-dns.sh [ROUNDS] [SECONDS] [NAMES]    (defaults 5, 10, 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-5}"
secs="${2:-10}"
names="${3:-10000}"
[[ $EUID -eq 0 ]] || { echo "run as root" >&2; exit 1; }
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
. scripts/deps.sh
install_deps dnsperf python3
cargo build --release --locked -q -p bulkhead
bin=$PWD/target/release/bulkhead
name=benchdns
export BULKHEAD_SOCKET=/run/bulkhead/$name.sock
work=$(mktemp -d)
cleanup() {
  "$bin" lab --name $name down >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/cluster.yaml" <<'EOF'
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: bench}}
- {apiVersion: v1, kind: Pod, metadata: {name: client, namespace: bench, labels: {app: client}}, status: {podIPs: [{ip: 198.18.92.1}]}}
- {apiVersion: v1, kind: Pod, metadata: {name: direct, namespace: bench, labels: {app: direct}}, status: {podIPs: [{ip: 198.18.92.3}]}}
- apiVersion: v1
  kind: Pod
  metadata: {name: resolver, namespace: bench, labels: {app: resolver}}
  spec: {containers: [{name: dns, ports: [{name: dns, containerPort: 53, protocol: UDP}]}]}
  status: {podIPs: [{ip: 198.18.92.2}]}
- apiVersion: lab.bulkhead.io/v1alpha1
  kind: ExternalHost
  metadata: {name: world}
  spec:
    names: [start.bench.world]
    addresses: [198.18.128.1]
    ports: [{port: 443, protocol: TCP}]
EOF
cat >"$work/policy.yaml" <<'EOF'
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client, namespace: bench}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: resolver}}]
    toPorts: [{ports: [{port: "53", protocol: ANY}], rules: {dns: [{matchPattern: "*"}]}}]
  - toFQDNs: [{matchPattern: "*.bench.world"}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
EOF
# The query file: the names dnsmasq answers itself (no upstream).
for _ in $(seq 1 50); do printf 'client.bench A\nresolver.bench A\ndirect.bench A\nstart.bench.world A\n'; done >"$work/queries"

echo "machine: $(nproc) CPUs, $(uname -r), $(date -u +%FT%TZ); proxy and agent on CPU 1, dnsmasq and dnsperf on CPU 0; $secs s per run"
"$bin" lab --name $name down >/dev/null 2>&1 || true
"$bin" lab --name $name up "$work/cluster.yaml" >/dev/null
"$bin" apply -f "$work/policy.yaml" >/dev/null
cns=bh-$name-0
dns_ns=bh-$name-1
rns=bh-$name-2
wns=bh-$name-w0
resolver=198.18.92.2
proxy_pid=$(pgrep -f "proxy --node-netns /run/netns/bh-$name-node" | head -1)
kill "$proxy_pid"
while kill -0 "$proxy_pid" 2>/dev/null; do sleep 0.05; done
for p in $(pgrep -f "/run/bulkhead/$name/") $(ip netns pids $rns); do taskset -apc 0 "$p" >/dev/null; done
taskset -apc 1 "$(python3 -c 'import json; print(json.load(open("/run/bulkhead/'$name'/state.json"))["agent_pid"])')" >/dev/null
ip netns exec bh-$name-node taskset -c 1 "$bin" proxy --node-netns /run/netns/bh-$name-node \
  --control /run/bulkhead/$name/proxy.sock --threads 1 >/dev/null 2>"$work/proxy.log" &
sleep 2
for row in direct bulkhead; do # both paths answer before anything is measured
  ns=$([[ $row == direct ]] && echo $dns_ns || echo $cns)
  ip netns exec $ns dnsperf -s $resolver -d "$work/queries" -n 1 -q 1 | grep -E 'Queries (completed|lost)' | tr -s ' ' | sed "s/^/$row:/"
done

ns_of() { [[ $1 == direct ]] && echo $dns_ns || echo $cns; }
max() { # ROW ROUND
  local out qps avg
  out=$(ip netns exec "$(ns_of "$1")" taskset -c 0 dnsperf -s $resolver -d "$work/queries" -l "$secs" -c 8 -q 200 2>&1)
  qps=$(awk '/Queries per second:/ { print $4 }' <<<"$out")
  avg=$(awk '/Average Latency/ { print $4 * 1e6 }' <<<"$out")
  lost=$(awk '/Queries lost:/ { print $3 }' <<<"$out")
  printf '%-9s max  round %d: %10s queries/s  mean %6.0f us  lost %s\n' "$1" "$2" "$qps" "$avg" "$lost"
  echo "$1 max $2 $qps $avg" >>"$work/results"
}
fixed() { # ROW ROUND: 10,000 queries/s, every answer's latency
  local lat
  lat=$(ip netns exec "$(ns_of "$1")" taskset -c 0 dnsperf -s $resolver -d "$work/queries" -l "$secs" -c 8 -Q 10000 -v 2>&1 |
    awk '$1 == ">" { print $NF * 1e6 }' | sort -n)
  local n p50 p99
  n=$(wc -l <<<"$lat")
  p50=$(sed -n "$((n / 2 + 1))p" <<<"$lat")
  p99=$(sed -n "$((n * 99 / 100 + 1))p" <<<"$lat")
  printf '%-9s 10k/s round %d: %d answers  p50 %6.0f us  p99 %6.0f us\n' "$1" "$2" "$n" "$p50" "$p99"
  echo "$1 fixed $2 $n $p50 $p99" >>"$work/results"
}
for r in $(seq 1 "$rounds"); do
  for row in direct bulkhead; do max $row "$r"; done
  for row in bulkhead direct; do fixed $row "$r"; done
done
echo
echo "== medians over $rounds rounds"
python3 - "$work/results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    row, kind, _, a, b, *rest = line.split()
    rows.setdefault((row, kind), []).append((float(a), float(b), float(rest[0]) if rest else 0.0))
med = lambda v, i: statistics.median(x[i] for x in v)
d, b = rows[("direct", "max")], rows[("bulkhead", "max")]
print(f"max queries/s   direct {med(d,0):9.0f}  bulkhead {med(b,0):9.0f}  ratio {med(b,0)/med(d,0):.2f}")
print(f"mean latency us direct {med(d,1):9.0f}  bulkhead {med(b,1):9.0f}")
d, b = rows[("direct", "fixed")], rows[("bulkhead", "fixed")]
print(f"10k/s p50 us    direct {med(d,1):9.0f}  bulkhead {med(b,1):9.0f}  added {med(b,1)-med(d,1):.0f}")
print(f"10k/s p99 us    direct {med(d,2):9.0f}  bulkhead {med(b,2):9.0f}  added {med(b,2)-med(d,2):.0f}")
PY

echo
echo "== resolve-then-connect: $names fresh names, each a new address, connected to at once on 443"
ip netns exec $wns ip route add local 198.18.128.0/18 dev lo
ip netns exec bh-$name-node ip route replace 198.18.128.0/18 dev bhw0
python3 - "$names" >>"/run/bulkhead/$name/hosts" <<'PY'
import sys
for i in range(int(sys.argv[1])):
    k = i + 2
    print(f"198.18.{128 + k // 256}.{k % 256} f{i}.bench.world")
PY
kill -HUP "$(cat /run/bulkhead/$name/dnsmasq.pid)"
sleep 1
ip netns exec $cns taskset -c 0 python3 - "$names" $resolver <<'PY'
import socket, struct, sys, time
n, server = int(sys.argv[1]), sys.argv[2]
def query(name, qid):
    q = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack(">HH", 1, 1)
def first_a(msg):
    # Skip the header and the question; the first answer's RDATA.
    i = 12
    while msg[i]:
        i += msg[i] + 1
    i += 5
    an = struct.unpack(">H", msg[6:8])[0]
    for _ in range(an):
        i += 2 if msg[i] & 0xC0 == 0xC0 else len(msg)
        rtype, _, _, rdlen = struct.unpack(">HHIH", msg[i:i + 10])
        i += 10
        if rtype == 1:
            return socket.inet_ntoa(msg[i:i + 4])
        i += rdlen
    return None
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect((server, 53))
u.settimeout(3)
resolve, dropped, unresolved = [], 0, 0
for i in range(n):
    t0 = time.perf_counter()
    u.send(query(f"f{i}.bench.world", i & 0xFFFF))
    try:
        addr = first_a(u.recv(4096))
    except socket.timeout:
        addr = None
    resolve.append((time.perf_counter() - t0) * 1e6)
    if addr is None:
        unresolved += 1
        continue
    c = socket.socket()
    c.settimeout(0.9)
    try:
        c.connect((addr, 443))
    except OSError:
        dropped += 1
    c.close()
resolve.sort()
pct = lambda p: resolve[min(len(resolve) - 1, int(len(resolve) * p))]
print(f"{n} names: {unresolved} unresolved, {dropped} first connections dropped; "
      f"resolve through the proxy p50 {pct(0.5):.0f} us, p99 {pct(0.99):.0f} us, max {resolve[-1]:.0f} us")
PY
echo "the agent's held-answer wait (bulkhead_dns_held_answer_wait_seconds), by how each answer was released:"
web=$("$bin" status -o json | python3 -c 'import json, sys; print(json.load(sys.stdin)["flows"]["web"])')
curl -s "${web}metrics" | grep -E '^bulkhead_dns_held_answer_wait_seconds_(bucket|count|sum)' |
  grep -E 'le="(0.001|0.0025|0.005|0.01|0.025|0.1|\+Inf)"|_count|_sum'
