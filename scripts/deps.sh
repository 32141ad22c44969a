# Sourced by scripts/test.sh and scripts/seed.sh: installs, with apt, what
# building and running bulkhead needs on a fresh Debian/Ubuntu machine
# (`install_deps`), what the tests need besides (`install_deps test`), and
# any further packages a script names (`install_deps jq bc`).
# Keep these lists and the README's in step.
BULKHEAD_APT_PACKAGES=(
  build-essential pkg-config   # the Rust build's C side
  clang llvm libbpf-dev        # bpf/*.c → eBPF objects (clang 14 on Debian 12)
  iproute2                     # ip netns / ip link for the lab and the privileged tests
  containernetworking-plugins  # ptp + host-local: the lab's main CNI plugin (/usr/lib/cni)
  dnsmasq-base                 # the lab's DNS (POD.NAMESPACE names)
  curl procps                  # HTTP into lab pods and pgrep, in the end-to-end tests
)
BULKHEAD_TEST_APT_PACKAGES=(
  prometheus                   # promtool: the metrics test checks the agent's exposition with it
  chromium                     # the service map test drives headless Chromium
  openssl                      # the webhook test makes its TLS certificate
)

install_deps() {
  local want=("${BULKHEAD_APT_PACKAGES[@]}") missing=()
  [ "${1:-}" = test ] && { want+=("${BULKHEAD_TEST_APT_PACKAGES[@]}"); shift; }
  want+=("$@")
  for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "== installing with apt: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}
