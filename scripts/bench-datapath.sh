#!/usr/bin/env bash
# Datapath cost: TCP throughput (iperf3) and UDP round-trip rate (sockperf
# ping-pong) between two lab pods, with
#   none        no enforcement (bulkhead's programs detached),
#   iptables    1,000 / 10,000 linear rules in the node's FORWARD chain
#               (iptables-legacy; every packet walks to its rule, the last),
#   iptables-ct 10,000 linear rules behind an ESTABLISHED,RELATED accept,
#   nftables    a set of 10,000 (address . protocol . port) keys in a
#               verdict map, both directions looked up per packet,
#   bulkhead    no policy, and 10 / 1,000 / 10,000 policy entries over
#               1,000 identities (the lab has 1,000 pods' identities),
# all rows measured in each of ROUNDS rounds (default 3), interleaved, with
# the client pinned to CPU 0 and the server to CPU 1. For the bulkhead rows
# a separate 3 s ping-pong run with kernel.bpf_stats_enabled=1 gives the
# programs' own time per packet (not taken during the measured runs: the
# statistics cost two clock reads per run). Prints every run and the
# medians, with each row's ratio to `none`. Needs root.
#
#   bash scripts/bench-datapath.sh [ROUNDS] [SECONDS]    (defaults 3, 5)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
secs="${2:-5}"
[[ $EUID -eq 0 ]] || { echo "run as root" >&2; exit 1; }
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
. scripts/deps.sh
install_deps iperf3 sockperf nftables iptables
cargo build --release --locked -q -p bulkhead
bin=$PWD/target/release/bulkhead
name=benchdp
export BULKHEAD_SOCKET=/run/bulkhead/$name.sock
node=bh-$name-node
work=$(mktemp -d)
agent_pid=
cleanup() {
  [[ -n $agent_pid ]] && kill "$agent_pid" 2>/dev/null || true
  ip netns pids "bh-$name-1" 2>/dev/null | xargs -r kill 2>/dev/null || true
  "$bin" lab --name $name down >/dev/null 2>&1 || true
  sysctl -qw kernel.bpf_stats_enabled=0 || true
  rm -rf "$work"
}
trap cleanup EXIT

# ---- the lab: client and server pods, plus 999 peers (1,000 identities that can be allowed) ----
cat >"$work/cluster.yaml" <<'EOF'
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: bench}}
- {apiVersion: v1, kind: Pod, metadata: {name: client, namespace: bench, labels: {app: client}}, status: {podIPs: [{ip: 198.18.90.1}]}}
- {apiVersion: v1, kind: Pod, metadata: {name: server, namespace: bench, labels: {app: server}}, status: {podIPs: [{ip: 198.18.90.2}]}}
EOF
peer_ip() { echo "198.19.$(($1 / 250)).$(($1 % 250 + 1))"; }
{
  echo "apiVersion: v1"; echo "kind: List"; echo "items:"
  for ((i = 0; i < 999; i++)); do
    echo "- {apiVersion: v1, kind: Pod, metadata: {name: peer-$i, namespace: bench, labels: {app: peer-$i}}, status: {podIPs: [{ip: $(peer_ip $i)}]}}"
  done
} >"$work/peers.yaml"
client=198.18.90.1
server=198.18.90.2
# Spaced apart, so that no two merge into one port prefix: N rules are N kernel entries.
ports=(5201/TCP 11111/UDP 6010/TCP 6020/TCP 6030/TCP 6040/TCP 6050/TCP 6060/TCP 6070/TCP 6080/TCP)

# entries(N): the (peer, proto, port) list of N entries, the client's last.
entries() {
  local n=$1 per ids i j
  per=$((n >= 10000 ? 10 : 2)); ids=$((n / per))
  for ((i = 0; i < ids - 1; i++)); do
    for ((j = 0; j < per; j++)); do echo "peer-$i $(peer_ip $i) ${ports[j]}"; done
  done
  for ((j = 0; j < per; j++)); do echo "client $client ${ports[j]}"; done
}
policy() { # N → a CNP on the server with N ingress entries
  echo "apiVersion: cilium.io/v2"; echo "kind: CiliumNetworkPolicy"
  echo "metadata: {name: server, namespace: bench}"
  echo "spec:"; echo "  endpointSelector: {matchLabels: {app: server}}"; echo "  ingress:"
  entries "$1" | awk '{ split($3, pp, "/"); p[$1] = p[$1] sprintf("{port: \"%s\", protocol: %s}, ", pp[1], pp[2]); if (!($1 in seen)) { seen[$1] = 1; order[++n] = $1 } }
    END { for (i = 1; i <= n; i++) { k = order[i]; s = p[k]; sub(/, $/, "", s); printf "  - fromEndpoints: [{matchLabels: {app: %s}}]\n    toPorts: [{ports: [%s]}]\n", k, s } }'
}
iptables_rules() { # N CT → iptables-restore input
  echo "*filter"; echo ":FORWARD DROP [0:0]"
  [[ $2 == ct ]] && echo "-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
  entries "$1" | awk -v s=$server '{ split($3, pp, "/"); printf "-A FORWARD -s %s/32 -d %s/32 -p %s --dport %s -j ACCEPT\n", $2, s, tolower(pp[2]), pp[1] }'
  [[ $2 == ct ]] || echo "-A FORWARD -s $server/32 -d $client/32 -j ACCEPT"
  echo "COMMIT"
}
nft_rules() { # N → nft -f input
  echo "table ip bh {"
  echo "  map to_server { type ipv4_addr . inet_proto . inet_service : verdict; elements = {"
  entries "$1" | awk '{ split($3, pp, "/"); printf "    %s . %s . %s : accept,\n", $2, tolower(pp[2]), pp[1] }'
  echo "  } }"
  echo "  map from_server { type ipv4_addr . inet_proto . inet_service : verdict; elements = {"
  echo "    $client . tcp . 5201 : accept, $client . udp . 11111 : accept } }"
  echo "  chain forward_filter { type filter hook forward priority 0; policy drop;"
  echo "    ip daddr $server ip saddr . meta l4proto . th dport vmap @to_server"
  echo "    ip saddr $server ip daddr . meta l4proto . th sport vmap @from_server"
  echo "  }"
  echo "}"
}
clear_filters() {
  ip netns exec $node iptables-legacy -P FORWARD ACCEPT
  ip netns exec $node iptables-legacy -F FORWARD
  ip netns exec $node nft delete table ip bh 2>/dev/null || true
}

echo "machine: $(nproc) CPUs, $(uname -r), $(date -u +%FT%TZ); client on CPU 0, server on CPU 1; $secs s per run"
"$bin" lab --name $name down >/dev/null 2>&1 || true
"$bin" lab --name $name up "$work/cluster.yaml" >/dev/null
"$bin" apply -f "$work/peers.yaml" -n bench >/dev/null
cns=bh-$name-0
sns=bh-$name-1
ip netns exec $sns taskset -c 1 iperf3 -s -D >/dev/null
ip netns exec $sns taskset -c 1 sockperf sr -i $server -p 11111 >/dev/null 2>&1 &
sleep 0.5
agent_args=(agent --state-dir /run/bulkhead/$name/agent --socket "$BULKHEAD_SOCKET" --pin-root /sys/fs/bpf/bulkhead/$name --node-netns /run/netns/$node)
lab_agent=$(python3 -c 'import json; print(json.load(open("/run/bulkhead/'$name'/state.json"))["agent_pid"])')

measure() { # ROW ROUND → appends "row round gbps rtt_per_s" to results
  local row=$1 r=$2 gbps rate
  gbps=$(ip netns exec $cns taskset -c 0 iperf3 -c $server -t "$secs" -J |
    python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))')
  rate=$(ip netns exec $cns taskset -c 0 sockperf pp -i $server -p 11111 -t "$secs" 2>&1 |
    sed -n 's/.*\[Valid Duration\] RunTime=\([0-9.]*\) sec; SentMessages=[0-9]*; ReceivedMessages=\([0-9]*\).*/\2 \1/p' | awk '{ printf "%.0f", $1 / $2 }')
  printf '%-16s round %d: %6s Gbit/s  %7s round trips/s\n' "$row" "$r" "$gbps" "$rate"
  echo "$row $r $gbps $rate" >>"$work/results"
}

cost() { # ROW ROUND → appends "row round ns_per_packet" to costs
  local row=$1 r=$2 before after
  stats() { "$bin" status -o json | python3 -c 'import json,sys; p=json.load(sys.stdin)["programs"]; print(sum(x["run_time_ns"] for x in p), sum(x["run_count"] for x in p))'; }
  sysctl -qw kernel.bpf_stats_enabled=1
  before=$(stats)
  ip netns exec $cns taskset -c 0 sockperf pp -i $server -p 11111 -t 3 >/dev/null 2>&1
  after=$(stats)
  sysctl -qw kernel.bpf_stats_enabled=0
  read -r t0 c0 <<<"$before"; read -r t1 c1 <<<"$after"
  printf '%-16s round %d: %6.0f ns per packet in the programs (%d runs)\n' "$row" "$r" "$(((t1 - t0) / (c1 - c0)))" "$((c1 - c0))"
  echo "$row $r $(((t1 - t0) / (c1 - c0)))" >>"$work/costs"
}

for ((r = 1; r <= rounds; r++)); do
  # Without bulkhead: stop the agent and remove the pinned links (programs detach).
  if [[ -n $agent_pid ]]; then kill "$agent_pid"; wait "$agent_pid" 2>/dev/null || true; agent_pid=; fi
  kill "$lab_agent" 2>/dev/null || true
  while "$bin" status >/dev/null 2>&1; do sleep 0.1; done
  rm -f /sys/fs/bpf/bulkhead/$name/v*/links/*
  clear_filters
  measure none "$r"
  for n in 1000 10000; do
    iptables_rules $n lin | ip netns exec $node iptables-legacy-restore
    measure "iptables-$n" "$r"
  done
  iptables_rules 10000 ct | ip netns exec $node iptables-legacy-restore
  measure "iptables-ct-10000" "$r"
  clear_filters
  nft_rules 10000 | ip netns exec $node nft -f -
  measure "nftables-10000" "$r"
  clear_filters
  # With bulkhead: a new agent re-attaches its programs to every endpoint.
  "$bin" "${agent_args[@]}" >>"$work/agent.log" 2>&1 &
  agent_pid=$!
  until "$bin" status >/dev/null 2>&1; do sleep 0.1; done
  "$bin" delete -f <(policy 10) -n bench >/dev/null 2>&1 || true
  measure bulkhead-none "$r"
  cost bulkhead-none "$r"
  for n in 10 1000 10000; do
    policy $n >"$work/policy.yaml"
    "$bin" apply -f "$work/policy.yaml" >/dev/null
    held=$("$bin" policy get bench/server -o json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["ingress"]["entries"]))')
    measure "bulkhead-$n" "$r"
    cost "bulkhead-$n" "$r"
    echo "                  (the kernel holds $held ingress entries for the server)"
  done
done

echo
echo "medians of $rounds rounds:"
python3 - "$work/results" "$work/costs" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    row, _, gbps, rate = line.split()
    rows.setdefault(row, ([], []))
    rows[row][0].append(float(gbps)); rows[row][1].append(float(rate))
base_t = statistics.median(rows["none"][0]); base_r = statistics.median(rows["none"][1])
costs = {}
for line in open(sys.argv[2]):
    row, _, ns = line.split()
    costs.setdefault(row, []).append(float(ns))
print("| setup | TCP throughput (Gbit/s) | ratio to none | UDP round trips/s | ratio to none | program time per packet |")
print("|---|---|---|---|---|---|")
for row, (t, r) in rows.items():
    mt, mr = statistics.median(t), statistics.median(r)
    c = f"{statistics.median(costs[row]):.0f} ns" if row in costs else ""
    print(f"| {row} | {mt:.2f} | {mt / base_t:.3f} | {mr:.0f} | {mr / base_r:.3f} | {c} |")
EOF
