#!/usr/bin/env bash
# The main job: the seed policies enforced in the kernel on a live lab.
#
# Brings up examples/seed/cluster.yaml as network-namespace pods with the
# agent enforcing, applies the seed policies, probes every pod pair on every
# port and prints what got through beside what the policies say and which
# policy the kernel reported, then takes the lab down (--keep leaves it up).
# Needs root (network namespaces, eBPF).
set -euo pipefail
cd "$(dirname "$0")/.."
keep=false
for a in "$@"; do
  case "$a" in
    --keep) keep=true ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "unknown argument: $a (try --keep)" >&2; exit 2 ;;
  esac
done
if [[ $EUID -ne 0 ]]; then
  echo "error: run as root: the lab creates network namespaces and loads eBPF programs" >&2
  exit 1
fi
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
. scripts/deps.sh
install_deps
echo "== building (release)"
cargo build --release --locked -q -p bulkhead
bin=target/release/bulkhead
lab=(--name seed)
export BULKHEAD_SOCKET=/run/bulkhead/seed.sock

echo "== validate the seed policies"
"$bin" policy validate -n production examples/seed/policies
echo
echo "== lab up: one network-namespace pod per Pod in examples/seed/cluster.yaml"
"$bin" lab "${lab[@]}" down >/dev/null 2>&1 || true
if ! $keep; then
  trap 'echo; echo "== lab down"; "$bin" lab "${lab[@]}" down' EXIT
fi
"$bin" lab "${lab[@]}" up examples/seed/cluster.yaml
echo
echo "== apply the seed policies"
"$bin" apply -f examples/seed/policies -n production
echo
echo "== lab probe: real packets between every pod pair, beside what the policies say"
"$bin" lab "${lab[@]}" probe
echo
echo "== flows: the last drops, each with the policy that decided it (or the closest rule and why it missed)"
"$bin" observe --verdict DROPPED --last 6 --color never
echo
echo "== the flow pipeline: counts, losses, the signed flow log, and where the service map and metrics are served"
"$bin" status | grep -E '^(flows|lost|flow log|web):'
echo
echo "== why is staging/debug-tools kept out of the backend? (offline trace, same engine)"
"$bin" policy trace --cluster examples/seed/cluster.yaml --policies examples/seed/policies -n production \
  --from staging/debug-tools --to production/backend --port 8080/TCP
if $keep; then
  echo
  echo "the lab is still up: export BULKHEAD_SOCKET=$BULKHEAD_SOCKET, then e.g."
  echo "  $bin lab ${lab[*]} exec kube-system/kube-dns -- curl -s http://frontend.production/"
  echo "  $bin endpoint list; $bin observe -f; $bin lab ${lab[*]} down"
  "$bin" status | grep -E '^web:' | sed 's/^web: */  the service map: /'
fi
