#!/usr/bin/env bash
# Flow pipeline benchmarks (BENCHMARKS.md, issue 4). Needs root.
#
# 1. Decode + filter: criterion (`crates/flow/benches/decode_filter.rs`,
#    flows read back from the signed log's binary segments, and from JSON
#    lines), then the same 200,000 flows through the CLI (`observe
#    --input-file`, log and JSON) beside jq on the JSON: RUNS runs each,
#    medians. Pinned to CPU 1.
# 2. Sustained events: a lab pod sends RATE new UDP flows per second for
#    SECONDS (each dropped by its default-deny egress, so each an event)
#    while the agent, pinned to CPU 1, turns them into flows, keeps them in
#    its 64 MiB ring and writes the signed log; the sender runs on CPU 0.
#    Per round: datagrams sent, kernel drops counted, flows the agent saw,
#    events lost (kernel ring, flow log), the agent's peak RSS and CPU.
#
#   bash scripts/bench-flows.sh [RUNS] [ROUNDS] [SECONDS] [RATE]   (default 5 3 60 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-5}" rounds="${2:-3}" seconds="${3:-60}" rate="${4:-100000}"
[[ $EUID -eq 0 ]] || { echo "run as root" >&2; exit 1; }
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
. scripts/deps.sh
install_deps jq bc
cargo build --release --locked -q -p bulkhead -p bulkhead-flow --example workload -p bulkhead-datapath --example udp_flood
bin=$PWD/target/release/bulkhead
work=$(mktemp -d)
export BULKHEAD_SOCKET=/run/bulkhead/bench-flows.sock
lab=(--name benchflows)
trap '"$bin" lab "${lab[@]}" down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }

echo "machine: $(nproc) CPUs, $(uname -r), $(date -u +%FT%TZ), $(jq --version)"
echo "== 1. decode + filter (criterion, taskset -c 1)"
taskset -c 1 cargo bench -q -p bulkhead-flow --bench decode_filter -- --warm-up-time 2 --measurement-time 10 2>&1 |
  grep -E "workload|^decode_filter|thrpt" || true

echo "== 1b. the CLI and jq on the same 200,000 flows (median of $runs, taskset -c 1)"
target/release/examples/workload "$work/wl" 200000 >/dev/null
filter=(--verdict DROPPED --to-pod production/)
jqf='select(.flow.verdict=="DROPPED" and .flow.destination.namespace=="production")'
n_log=$("$bin" observe --input-file "$work/wl/log" "${filter[@]}" -o json | wc -l)
n_json=$("$bin" observe --input-file "$work/wl/flows.jsonl" "${filter[@]}" -o json | wc -l)
n_jq=$(jq -c "$jqf" "$work/wl/flows.jsonl" | wc -l)
echo "matches: log $n_log, JSON $n_json, jq $n_jq"
[[ $n_log == "$n_jq" && $n_json == "$n_jq" ]] || { echo "the three disagree" >&2; exit 1; }
for what in log json jq; do
  for ((i = 0; i < runs; i++)); do
    case $what in
      log) secs taskset -c 1 "$bin" observe --input-file "$work/wl/log" "${filter[@]}" --last 1 -o json ;;
      json) secs taskset -c 1 "$bin" observe --input-file "$work/wl/flows.jsonl" "${filter[@]}" --last 1 -o json ;;
      jq) secs taskset -c 1 jq -c "$jqf" "$work/wl/flows.jsonl" ;;
    esac
  done | tee "$work/$what.times" | tr '\n' ' '
  m=$(median <"$work/$what.times")
  printf '→ %s: median %.3f s, %.0f flows/s\n' "$what" "$m" "$(echo "200000 / $m" | bc -l)"
done

echo "== 2. sustained $rate events/s for $seconds s ($rounds rounds)"
"$bin" lab "${lab[@]}" up examples/bench/flood.yaml >/dev/null
pid=$(jq .agent_pid "/run/bulkhead/${lab[1]}/state.json")
taskset -a -p -c 1 "$pid" >/dev/null
sink=$(jq -r '.pods[] | select(.key == "bench/sink") | .ips[0]' "/run/bulkhead/${lab[1]}/state.json")
web=$("$bin" status -o json | jq -r .flows.web)
metric() { curl -s "${web}metrics" | awk -v m="$1" 'index($0, m) == 1 { print $NF }'; }
for ((r = 1; r <= rounds; r++)); do
  s0=$("$bin" status -o json)
  d0=$(metric 'bulkhead_drop_total{reason="POLICY_DENIED",direction="EGRESS"}'); d0=${d0:-0}
  cpu0=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
  "$bin" lab "${lab[@]}" exec bench/flood -- taskset -c 0 "$PWD/target/release/examples/udp_flood" "$sink" "$rate" "$seconds" 4 >"$work/flood.json" &
  flood=$!
  peak=0
  while kill -0 "$flood" 2>/dev/null; do
    rss=$(awk '/VmRSS/ { print $2 }' "/proc/$pid/status")
    ((rss > peak)) && peak=$rss
    sleep 1
  done
  wait "$flood"
  sleep 2
  s1=$("$bin" status -o json)
  d1=$(metric 'bulkhead_drop_total{reason="POLICY_DENIED",direction="EGRESS"}')
  cpu1=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
  sent=$(jq .sent "$work/flood.json")
  seen=$(($(jq .flows.seen <<<"$s1") - $(jq .flows.seen <<<"$s0")))
  lost_k=$(($(jq .flows.lost.datapath_ring <<<"$s1") - $(jq .flows.lost.datapath_ring <<<"$s0")))
  lost_l=$(($(jq .flows.lost.flow_log <<<"$s1") - $(jq .flows.lost.flow_log <<<"$s0")))
  logged=$(($(jq .flows.log_written <<<"$s1") - $(jq .flows.log_written <<<"$s0")))
  cpu=$(echo "($cpu1 - $cpu0) / $(getconf CLK_TCK) / $seconds * 100" | bc -l)
  printf 'round %d: sent %d (%.0f/s), kernel drops %d, flows seen %d, logged %d, lost: kernel ring %d, flow log %d; agent peak RSS %d MiB, CPU %.0f%%\n' \
    "$r" "$sent" "$(echo "$sent / $seconds" | bc -l)" "$((d1 - d0))" "$seen" "$logged" "$lost_k" "$lost_l" "$((peak / 1024))" "$cpu"
done
echo "agent status after the rounds: $("$bin" status -o json | jq -c .flows)"
