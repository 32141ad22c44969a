#!/usr/bin/env bash
# The main job: the seed policies enforced in the kernel on a live lab.
#
# Brings up examples/seed/cluster.yaml as network-namespace pods with the
# agent and the L7 proxy enforcing, applies the seed policies, probes every
# pod pair on every port and prints what got through beside what the
# policies say and which policy the kernel reported, sends the seed's HTTP
# rule allowed, denied and disguised requests and a RateLimit's 429s,
# shows the payment processor reaching only *.stripe.com by name (DNS
# through the proxy, toFQDNs), then takes the lab down (--keep leaves it up).
# Needs root (network namespaces, eBPF).
set -euo pipefail
cd "$(dirname "$0")/.."
keep=false
for a in "$@"; do
  case "$a" in
    --keep) keep=true ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
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
echo "== the L7 proxy decides each request from frontend to backend:8080 (only GET /api/v1/products.* and /api/v1/inventory.*)"
l7() { # METHOD PATH: what the frontend gets
  printf '  %-6s %-34s -> ' "$1" "$2"
  "$bin" lab "${lab[@]}" exec production/frontend -- \
    curl -s -m 3 --path-as-is -X "$1" -o /dev/null -w '%{http_code}\n' "http://backend.production:8080$2" || echo "no answer"
}
l7 GET /api/v1/products
l7 POST /api/v1/products
l7 GET /admin
echo "  normalized before matching: a bypass attempt is refused, a different spelling of an allowed path is not"
l7 GET /api/v1/products/../../admin
l7 GET /api//v1/%70roducts
l7 GET /api/v1%2F..%2Fadmin
echo
echo "== L7 flows: each request the proxy decided, with the rule that allowed it or came closest"
"$bin" observe --type l7 --last 6 --color never
echo
echo "== flows: the last drops, each with the policy that decided it (or the closest rule and why it missed)"
"$bin" observe --verdict DROPPED --last 6 --color never
echo
echo "== the flow pipeline: counts, losses, the signed flow log, and where the service map and metrics are served"
"$bin" status | grep -E '^(flows|lost|flow log|web):'
echo
echo "== rate controls (a bulkhead RateLimit; Cilium has none): the frontend may send the backend 5 requests at once, then 2/s"
"$bin" apply -f examples/ratelimit
printf '  8 quick GET /api/v1/products ->'
for _ in 1 2 3 4 5 6 7 8; do
  printf ' %s' "$("$bin" lab "${lab[@]}" exec production/frontend -- \
    curl -s -m 3 -o /dev/null -w '%{http_code}' http://backend.production:8080/api/v1/products || echo none)"
done
echo "   (429: Too Many Requests, with Retry-After)"
"$bin" observe --type l7 --http-status 429 --last 1 --color never
echo
echo "== DNS and toFQDNs: payment-processor resolves names only through kube-dns (its DNS rule allows any name),"
echo "   and reaches only *.stripe.com, on 443 (its toFQDNs rule), from the first connection after the lookup"
pay() { "$bin" lab "${lab[@]}" exec production/payment-processor -- "$@"; }
tcp() { # NAME-OR-ADDRESS PORT: whether a TCP connection gets through
  printf '  connect %-24s -> ' "$1:$2"
  if pay timeout 3 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; then echo connected; else echo "dropped"; fi
}
tcp 198.18.100.10 443
echo "    (api.stripe.com's address, before any lookup: world's, so nothing allows it)"
printf '  resolve %-24s -> %s\n' api.stripe.com "$(pay getent ahostsv4 api.stripe.com | awk 'NR==1 {print $1}')"
tcp api.stripe.com 443
tcp api.stripe.com 80
printf '  resolve %-24s -> %s\n' evil.example.com "$(pay getent ahostsv4 evil.example.com | awk 'NR==1 {print $1}')"
tcp evil.example.com 443
echo "    (to make evil.example.com's lookup itself REFUSED, narrow the DNS rule: matchPattern \"*.stripe.com\")"
echo
echo "== the names the node learnt from the answers the DNS proxy allowed"
"$bin" fqdn cache list
echo
echo "== DNS flows and the connection they allowed, each naming its rule"
"$bin" observe --type l7 --last 4 --color never
"$bin" observe --to-fqdn '*.stripe.com' --type policy-verdict --last 2 --color never
echo
echo "== why is staging/debug-tools kept out of the backend? (offline trace, same engine)"
"$bin" policy trace --cluster examples/seed/cluster.yaml --policies examples/seed/policies -n production \
  --from staging/debug-tools --to production/backend --port 8080/TCP
echo
echo "== what the seed policies leave open, and the example organisation guardrails (policy lint; exit 1: findings)"
"$bin" policy lint --cluster examples/seed/cluster.yaml --guardrails examples/guardrails/guardrails.yaml \
  -n production examples/seed/policies 2>/dev/null || [ $? -eq 1 ]
if $keep; then
  echo
  echo "the lab is still up: export BULKHEAD_SOCKET=$BULKHEAD_SOCKET, then e.g."
  echo "  $bin lab ${lab[*]} exec kube-system/kube-dns -- curl -s http://frontend.production/"
  echo "  $bin endpoint list; $bin observe -f; $bin lab ${lab[*]} down"
  "$bin" status | grep -E '^web:' | sed 's/^web: */  the service map: /'
fi
