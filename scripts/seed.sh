#!/usr/bin/env bash
# The main job: what the seed policies allow in the reference cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
. scripts/deps.sh
install_deps
cargo build --release --locked -q -p bulkhead
bin=target/release/bulkhead
echo "== validate the seed policies"
"$bin" policy validate -n production examples/seed/policies
echo
echo "== reachability in the seed cluster (examples/seed/cluster.yaml)"
"$bin" policy reach --cluster examples/seed/cluster.yaml --policies examples/seed/policies -n production
echo "== why: frontend → backend GET /api/v1/products"
"$bin" policy trace --cluster examples/seed/cluster.yaml --policies examples/seed/policies -n production \
  --from production/frontend --to production/backend --port 8080/TCP --http-method GET --http-path /api/v1/products
echo
echo "== why: staging/debug-tools → backend (lateral movement)"
"$bin" policy trace --cluster examples/seed/cluster.yaml --policies examples/seed/policies -n production \
  --from staging/debug-tools --to production/backend --port 8080/TCP
