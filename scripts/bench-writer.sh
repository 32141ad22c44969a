#!/usr/bin/env bash
# One writer (BENCHMARKS.md, issue 10 §2): while a lab pod makes RATE new
# flows a second (each dropped by its default-deny egress, so each an event
# the agent must turn into a flow), two clients loop against the agent:
# `status -o json` back to back, and `apply -f` of a 10 MiB policy set that
# alternates between two versions (so every apply changes the engine and
# rewrites the sink's kernel policy). Per round: events lost (the kernel
# ring buffer's own counter, and the flow log's queue), applies and status
# calls done and their median and worst times.
#
# The peer is the previous design, one Mutex<Agent> around everything
# (git revision PEER, default 46bc7b5: the isolation fixes, before the
# reconciler), with this issue's apply speed-ups applied to it
# (scripts/bench-writer-peer.patch: the regex cache and the batched
# resolve), so that the two differ only in the agent's design. It is built
# from the same tree's history into target/peer and measured in the same
# run, rounds interleaved. The agent is pinned to CPU 1, the flood and the
# clients to CPU 0.
#
#   bash scripts/bench-writer.sh [ROUNDS] [SECONDS] [RATE] [PEER]   (default 3 60 100000 46bc7b5)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}" seconds="${2:-60}" rate="${3:-100000}" peer="${4:-46bc7b5}"
[[ $EUID -eq 0 ]] || { echo "run as root" >&2; exit 1; }
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
. scripts/deps.sh
install_deps jq bc
work=$(mktemp -d)
labname=benchwriter
export BULKHEAD_SOCKET=/run/bulkhead/bench-writer.sock
cleanup() {
  for b in "$PWD/target/release/bulkhead" "$PWD/target/peer/release/bulkhead"; do
    [[ -x $b ]] && "$b" lab --name "$labname" down >/dev/null 2>&1 || true
  done
  git worktree remove --force "$work/peer" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== building this tree and the peer ($peer) in release"
cargo build --release --locked -q -p bulkhead
cargo build --release --locked -q -p bulkhead-datapath --example udp_flood
git worktree add -q --detach "$work/peer" "$peer"
git -C "$work/peer" apply "$PWD/scripts/bench-writer-peer.patch"
(cd "$work/peer" && CARGO_TARGET_DIR="$OLDPWD/target/peer" cargo build --release --locked -q -p bulkhead)
flood=$PWD/target/release/examples/udp_flood

# Two versions of a ~10 MiB policy set: 4,400 policies in 100 namespaces
# without local pods (what a node receives of a large cluster's policies),
# plus 50 for the lab's sink, 40 ports each, on other ports in version B.
gen() {
  awk -v shift="$1" 'BEGIN {
    for (i = 0; i < 4400; i++) {
      printf "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p%d\n  namespace: ns-%d\n  labels: {team: t%d, generated: bench}\nspec:\n  endpointSelector:\n    matchLabels: {app: svc-%d, tier: backend}\n  ingress:\n", i, i % 100, i % 7, i
      for (r = 0; r < 6; r++) {
        printf "  - fromEndpoints:\n    - matchLabels: {app: client-%d-%d, tier: frontend}\n      matchExpressions:\n      - {key: env, operator: In, values: [prod, staging]}\n    toPorts:\n    - ports:\n      - {port: \"%d\", protocol: TCP}\n      - {port: \"%d\", protocol: TCP}\n      rules:\n        http:\n        - {method: GET, path: \"/api/v%d/items/[0-9]+\"}\n", i, r, 8000 + r + shift, 9000 + r + shift, r
      }
      printf "  egress:\n  - toEndpoints:\n    - matchLabels: {app: db-%d}\n    toPorts:\n    - ports: [{port: \"5432\", protocol: TCP}]\n---\n", i
    }
    for (i = 0; i < 50; i++) {
      printf "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: sink-%d, namespace: bench}\nspec:\n  endpointSelector: {matchLabels: {app: sink}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: flood}}]\n    toPorts:\n    - ports:\n", i
      for (p = 0; p < 40; p++) printf "      - {port: \"%d\", protocol: TCP}\n", 20000 + shift * 7 + i * 40 + p
      printf "---\n"
    }
  }'
}
gen 0 >"$work/a.yaml"
gen 1 >"$work/b.yaml"
echo "policy sets: $(du -h "$work/a.yaml" | cut -f1) and $(du -h "$work/b.yaml" | cut -f1), $(grep -c '^kind: CiliumNetworkPolicy' "$work/a.yaml") policies each"

median() { sort -n | awk '{ a[NR] = $1 } END { if (NR == 0) print 0; else print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
worst() { sort -n | tail -1; }
now() { date +%s.%N; }

# One round with `bin`: prints "lost_kernel lost_log seen sent applies apply_med apply_max status_n status_med status_max".
round() {
  local bin=$1 d=$work/round
  rm -rf "$d" && mkdir -p "$d"
  "$bin" lab --name "$labname" up examples/bench/flood.yaml >/dev/null
  local pid sink web s0 s1
  pid=$(jq .agent_pid "/run/bulkhead/$labname/state.json")
  taskset -a -p -c 1 "$pid" >/dev/null
  sink=$(jq -r '.pods[] | select(.key == "bench/sink") | .ips[0]' "/run/bulkhead/$labname/state.json")
  # A first apply of version A outside the measurement: every round starts
  # with the engine and the store holding the big set.
  taskset -c 0 "$bin" apply -f "$work/a.yaml" >/dev/null
  s0=$("$bin" status -o json)
  "$bin" lab --name "$labname" exec bench/flood -- taskset -c 0 "$flood" "$sink" "$rate" "$seconds" 4 >"$d/flood.json" &
  local flooding=$!
  (
    v=b
    while kill -0 "$flooding" 2>/dev/null; do
      t0=$(now)
      taskset -c 0 "$bin" apply -f "$work/$v.yaml" >/dev/null 2>>"$d/apply.err" || echo "apply failed" >>"$d/apply.err"
      echo "$(now) - $t0" | bc -l >>"$d/apply.times"
      [[ $v == b ]] && v=a || v=b
    done
  ) &
  local applier=$!
  (
    while kill -0 "$flooding" 2>/dev/null; do
      t0=$(now)
      taskset -c 0 "$bin" status -o json >/dev/null 2>>"$d/status.err" || echo "status failed" >>"$d/status.err"
      echo "$(now) - $t0" | bc -l >>"$d/status.times"
    done
  ) &
  local statuser=$!
  wait "$flooding"
  wait "$applier" "$statuser"
  sleep 3
  s1=$("$bin" status -o json)
  local lost_k lost_l seen sent
  lost_k=$(($(jq .flows.lost.datapath_ring <<<"$s1") - $(jq .flows.lost.datapath_ring <<<"$s0")))
  lost_l=$(($(jq .flows.lost.flow_log <<<"$s1") - $(jq .flows.lost.flow_log <<<"$s0")))
  seen=$(($(jq .flows.seen <<<"$s1") - $(jq .flows.seen <<<"$s0")))
  sent=$(jq .sent "$d/flood.json")
  "$bin" lab --name "$labname" down >/dev/null
  [[ -s $d/apply.err || -s $d/status.err ]] && { echo "client errors:" >&2; cat "$d"/*.err >&2; }
  echo "$lost_k $lost_l $seen $sent $(wc -l <"$d/apply.times") $(median <"$d/apply.times") $(worst <"$d/apply.times") $(wc -l <"$d/status.times") $(median <"$d/status.times") $(worst <"$d/status.times")"
}

echo "machine: $(nproc) CPUs, $(uname -r), $(date -u +%FT%TZ); $rate events/s for $seconds s, $rounds rounds each, interleaved"
for ((r = 1; r <= rounds; r++)); do
  for which in reconciler mutex; do
    if [[ $which == reconciler ]]; then bin=$PWD/target/release/bulkhead; else bin=$PWD/target/peer/release/bulkhead; fi
    read -r lk ll seen sent na am ax ns sm sx < <(round "$bin")
    printf '%-10s round %d: events lost: kernel ring %d, flow log %d (flows seen %d of %d sent); %d applies, median %.2f s, worst %.2f s; %d status calls, median %.3f s, worst %.2f s\n' \
      "$which" "$r" "$lk" "$ll" "$seen" "$sent" "$na" "$am" "$ax" "$ns" "$sm" "$sx"
  done
done
