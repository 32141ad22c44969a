#!/usr/bin/env bash
# Time from `bulkhead apply` to enforcement, for 1 and for 1,000 endpoints.
#
# For each size: a lab of that many real pods (network namespaces through
# ptp + bulkhead-cni), then RUNS applies that alternate between two
# versions of a policy selecting every pod (so each apply changes the
# kernel). `apply` returns after the agent has written the maps, so the
# wall-clock time of the command is apply-to-enforcement; the agent's own
# figure (request in, last map write) is reported beside it. After the
# last apply one endpoint's entries are read back from the kernel to check
# the new policy is what it holds. Prints medians; needs root.
#
#   bash scripts/bench-apply.sh [RUNS]        (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}"
[[ $EUID -eq 0 ]] || { echo "run as root" >&2; exit 1; }
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
. scripts/deps.sh
install_deps
cargo build --release --locked -q -p bulkhead
bin=$PWD/target/release/bulkhead
work=$(mktemp -d)
export BULKHEAD_SOCKET=/run/bulkhead/bench-apply.sock
lab=(--name benchapply)
trap '"$bin" lab "${lab[@]}" down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

cluster() { # N → a cluster of N pods in namespace bench
  local n=$1 i
  echo "apiVersion: v1"; echo "kind: List"; echo "items:"
  echo "- {apiVersion: v1, kind: Namespace, metadata: {name: bench}}"
  for ((i = 0; i < n; i++)); do
    echo "- {apiVersion: v1, kind: Pod, metadata: {name: p$i, namespace: bench, labels: {app: web, shard: s$((i % 10))}},"
    echo "   status: {podIPs: [{ip: 198.18.$((100 + i / 250)).$((i % 250 + 1))}]}}"
  done
}

policy() { # VERSION → a policy selecting every pod; the versions differ in ports
  local port=$((8000 + $1))
  cat <<EOF
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: bench}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: "$port", protocol: TCP}, {port: "443", protocol: TCP}]}]
EOF
}

median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

echo "machine: $(nproc) CPUs, $(uname -r), $(date -u +%FT%TZ)"
for n in 1 1000; do
  cluster "$n" >"$work/cluster.yaml"
  "$bin" lab "${lab[@]}" down >/dev/null 2>&1 || true
  echo "== lab of $n pod(s)"
  start=$(date +%s.%N)
  "$bin" lab "${lab[@]}" up "$work/cluster.yaml" >/dev/null 2>"$work/up.log" || { tail "$work/up.log"; exit 1; }
  echo "   up in $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
  : >"$work/wall"; : >"$work/agent"
  for ((r = 0; r <= runs; r++)); do
    policy $((r % 2)) >"$work/policy.yaml"
    t0=$(date +%s%N)
    out=$("$bin" apply -f "$work/policy.yaml" -o json)
    t1=$(date +%s%N)
    ((r == 0)) && continue # the first apply creates the policy; time the changes
    echo $(((t1 - t0) / 1000)) >>"$work/wall"
    python3 -c 'import json,sys; e=json.load(sys.stdin)["enforcement"]; assert not e["failed"], e["failed"]; print(e["elapsed_us"], e["endpoints_updated"])' <<<"$out" >>"$work/agent"
  done
  want=$((8000 + runs % 2))
  got=$("$bin" policy get bench/p0 -o json | python3 -c 'import json,sys; print(sorted(e["port"] for e in json.load(sys.stdin)["ingress"]["entries"] if e["protocol"] == "TCP"))')
  [[ $got == *"$want"* ]] || { echo "the kernel does not hold the new policy: $got (want port $want)"; exit 1; }
  printf '   apply → enforced, median of %d: %s ms (wall clock of `bulkhead apply`), %s ms (inside the agent); endpoints updated per apply: %s\n' \
    "$runs" "$(awk '{ print $1 / 1000 }' "$work/wall" | median)" "$(awk '{ print $1 / 1000 }' "$work/agent" | median)" "$(awk '{ print $2 }' "$work/agent" | sort -u | tr '\n' ' ')"
  echo "   runs (ms, wall): $(awk '{ printf "%.1f ", $1 / 1000 }' "$work/wall")"
done
