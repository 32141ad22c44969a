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
echo "== the offline CLI (no default features): policy validate|trace|reach, no eBPF"
# What CI pipelines run to check policies: it must build where there is no
# clang, libbpf or aya. BPF_CLANG=false makes any eBPF compile fail, and a
# target dir of its own makes sure nothing is reused from the full build.
if cargo tree -p bulkhead --no-default-features -e normal --prefix none --locked |
    grep -E '^(aya|aya-obj|bulkhead-datapath|bulkhead-agent|bulkhead-lab|axum) '; then
  echo "error: the featureless CLI depends on the crates above" >&2
  exit 1
fi
BPF_CLANG=false CARGO_TARGET_DIR=target/offline cargo build -p bulkhead --no-default-features --locked
echo "== bulkhead-cni links neither the policy engine nor the web stack"
cargo build --bin bulkhead-cni --locked
if nm -C target/debug/bulkhead-cni | grep -E -m3 'bulkhead_policy::|bulkhead_datapath::|axum::'; then
  echo "error: bulkhead-cni links the code above" >&2
  exit 1
fi
if cargo tree -p bulkhead-cni -e normal --prefix none --locked | grep -E '^(bulkhead-policy|bulkhead-datapath|axum|aya) '; then
  echo "error: bulkhead-cni depends on the crates above" >&2
  exit 1
fi
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
