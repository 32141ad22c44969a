#!/usr/bin/env bash
# Assurance, measured (issue 13 point 5): the seed lab under traffic, a root
# user tampering with the running agent's datapath ROUNDS times per kind
# (crates/datapath/examples/tamper.rs: a pin removed, a link pin removed, the
# staging pod's address given the frontend's identity in the ipcache, the
# backend's endpoint entry deleted, a conntrack entry written that admits
# one staging connection into the backend), each timed from the change until the
# agent's repair is visible, and split by the agent's own report of it (its
# log: when it saw the drift, how long the repair took) into MTTD and MTTR; then
# QUIET_SECONDS without tampering, whose repairs are false positives.
# Throughout, staging/debug-tools tries TCP connections to the backend's
# 8080, which the policy denies: every one that gets through is a denied
# connection that passed during a drift window. Needs root.
#
#   bash scripts/bench-assure.sh [ROUNDS] [QUIET_SECONDS]    (defaults 20, 60)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-20}"
quiet="${2:-60}"
[[ $EUID -eq 0 ]] || { echo "run as root" >&2; exit 1; }
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
. scripts/deps.sh
install_deps python3
cargo build --release --locked -q -p bulkhead
cargo build --release --locked -q -p bulkhead-datapath --example tamper
bin=$PWD/target/release/bulkhead
tamper=$PWD/target/release/examples/tamper
name=assure
export BULKHEAD_SOCKET=/run/bulkhead/$name.sock
work=$(mktemp -d)
probers=()
cleanup() {
  touch "$work/stop" 2>/dev/null || true
  for p in "${probers[@]}"; do kill "$p" 2>/dev/null || true; done
  "$bin" lab --name $name down >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "machine: $(nproc) CPUs, $(uname -r), $(date -u +%FT%TZ); $rounds rounds per kind, $quiet s quiet"
"$bin" lab --name $name down >/dev/null 2>&1 || true
"$bin" lab --name $name up examples/seed/cluster.yaml >/dev/null
"$bin" apply -f examples/seed/policies -n production >/dev/null
"$bin" status -o json >"$work/status.json"
"$bin" endpoint list -o json >"$work/endpoints.json"
read -r pins staging_ns staging backend backend_if frontend_id < <(python3 - "$work" "$name" <<'PY'
import json, sys
work, name = sys.argv[1], sys.argv[2]
st = json.load(open(f"{work}/status.json"))
eps = json.load(open(f"{work}/endpoints.json"))
eps = eps if isinstance(eps, list) else eps["endpoints"]
ep = {e["pod"]: e for e in eps}
lab = json.load(open(f"/run/bulkhead/{name}/state.json"))
ns = {p["key"]: p["netns"] for p in lab["pods"]}
v4 = lambda e: next(ip for ip in e["ips"] if ":" not in ip)
print(st["pin_dir"], ns["staging/debug-tools"], v4(ep["staging/debug-tools"]), v4(ep["production/backend"]),
      ep["production/backend"]["host_ifindex"], ep["production/frontend"]["identity"])
PY
)
repaired() { "$bin" status -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["protection"]["repaired"])'; }

# Denied traffic throughout: four probers, each a TCP connect at a time
# (0.2 s each when dropped, paced to 20 a second when one gets through),
# counting attempts and writing down when a connection was made.
for i in 1 2 3 4; do
  ip netns exec "$staging_ns" bash -c "n=0; while [ ! -e $work/stop ]; do
      if timeout 0.2 bash -c '</dev/tcp/$backend/8080' 2>/dev/null; then date +%s%N >>$work/leaks; sleep 0.05; fi
      n=\$((n+1)); done; echo \$n >$work/prober$i" &
  probers+=($!)
done
sleep 1

before=$(repaired)
for r in $(seq 1 "$rounds"); do
  for kind in map-pin link-pin ipcache endpoint conntrack; do
    case $kind in
      map-pin) args=() ;;
      link-pin) args=("$backend_if") ;;
      ipcache) args=("$staging" "$frontend_id") ;;
      endpoint) args=("$backend_if") ;;
      conntrack) args=("$backend_if" "$staging" "$backend" 8080 $((40000 + r))) ;;
    esac
    printf '%s %s ' "$kind" "$(date +%s%N)" >>"$work/windows"
    "$tamper" "$pins" $kind "${args[@]}" | tee -a "$work/results" | python3 -c 'import json,sys; print(json.load(sys.stdin)["us"])' >>"$work/windows"
    sleep 0.2
  done
done
sleep 1.5
after_tamper=$(repaired)
echo "tampering done ($((after_tamper - before)) repairs counted by the agent); $quiet s quiet"
sleep "$quiet"
after_quiet=$(repaired)
touch "$work/stop"
wait "${probers[@]}" 2>/dev/null || true
probers=()
cat "$work"/prober* | awk '{ n += $1 } END { print n }' >"$work/probes"
touch "$work/leaks"

echo
python3 - "$work" "$rounds" "$((after_tamper - before))" "$((after_quiet - after_tamper))" "/run/bulkhead/$name/agent.log" <<'PY'
import datetime, json, re, sys
work, rounds, counted, quiet_repairs, agent_log = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rows = [json.loads(l) for l in open(f"{work}/results")]
pct = lambda v, p: v[min(len(v) - 1, int(len(v) * p))]
# The agent's report of each repair: logged as it is made, with the time the
# repair took from the drift being seen (repair_us). Seen = logged - repair_us.
reports = []
for line in open(agent_log, errors="replace"):
    if "the datapath was changed behind the agent" not in line:
        continue
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    stamp, kind, took = line.split()[0], re.search(r'kind="?([\w-]+)', line), re.search(r"repair_us=(\d+)", line)
    t = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    reports.append((int(t * 1e9), kind.group(1), int(took.group(1)) * 1000))
agent_kind = {"map-pin": "map-pin", "link-pin": "link-pin", "ipcache": "ipcache-changed",
              "endpoint": "endpoint-removed", "conntrack": "conntrack-unallowed"}
ms = lambda v: f"{pct(v,.5)/1e6:>7.1f} {pct(v,.99)/1e6:>7.1f}"
print(f"{'kind':10} {'detected+repaired':>18} {'p50':>9} {'p99':>9} {'max':>9}   MTTD p50/p99 ms   MTTR p50/p99 ms")
for kind in ["map-pin", "link-pin", "ipcache", "endpoint", "conntrack"]:
    r = [x for x in rows if x["kind"] == kind]
    ok = sorted(x["us"] for x in r if x["repaired"])
    # Each change's report: the first of its kind logged after the change.
    detect, repair = [], []
    for x in r:
        rep = next((p for p in reports if p[1] == agent_kind[kind] and p[0] >= x["changed_ns"]), None)
        if rep and x["repaired"]:
            detect.append(rep[0] - rep[2] - x["changed_ns"])
            repair.append(rep[2])
    detect.sort(); repair.sort()
    split = f"   {ms(detect)}   {ms(repair)}  ({len(detect)} reports)" if detect else "   (no reports)"
    if ok:
        print(f"{kind:10} {len(ok):>8} of {len(r):<7} {pct(ok,.5)/1e3:>7.1f}ms {pct(ok,.99)/1e3:>7.1f}ms {ok[-1]/1e3:>7.1f}ms{split}")
    else:
        print(f"{kind:10} {0:>8} of {len(r):<7}")
n = int(open(f"{work}/probes").read())
leaks = [int(l) for l in open(f"{work}/leaks") if l.strip()]
# Each injection's window: from the change until the repair was seen, and
# 0.2 s more (a connection attempt's own time).
windows = []
for l in open(f"{work}/windows"):
    kind, start, us = l.split()
    windows.append((kind, int(start), int(start) + int(us) * 1000 + 200_000_000))
by_kind = {}
outside = 0
for t in leaks:
    w = next((w for w in windows if w[1] <= t <= w[2]), None)
    if w is None:
        outside += 1
    else:
        by_kind.setdefault(w[0], set()).add(w[1])
        by_kind.setdefault(w[0] + "#", []).append(t)
print(f"repairs the agent counted while tampering: {counted} (injected: {len(rows)})")
print(f"false positives (repairs in the quiet period): {quiet_repairs}")
print(f"denied connections (staging -> backend:8080), {n} attempts: {len(leaks)} got through, {outside} outside any drift window")
for kind in ["map-pin", "link-pin", "ipcache", "endpoint", "conntrack"]:
    ws = len(by_kind.get(kind, ()))
    print(f"  during {kind:9} drift: {len(by_kind.get(kind + '#', [])):4} connections, in {ws} of {sum(1 for w in windows if w[0] == kind)} windows")
PY
