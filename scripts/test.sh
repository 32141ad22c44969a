#!/usr/bin/env bash
# Runs every test of bulkhead on a fresh Debian/Ubuntu machine (as root).
# Installs what the build needs, then: format check, clippy, all tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
export CARGO_TERM_COLOR=never

# The eBPF programs build with clang against libbpf's headers; the privileged
# tests wire pods with iproute2 and the reference CNI plugins.
. scripts/deps.sh
install_deps test
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found: install Rust 1.95 (rustup) first, see README.md" >&2
  exit 1
fi
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The datapath tests need root (network namespaces, eBPF); in CI they fail
# rather than skip when they cannot run.
cargo test --workspace --locked 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one per test binary, the
# last of which is a doc-test run that may hold no tests).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
