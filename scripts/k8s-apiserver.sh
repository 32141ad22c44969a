#!/usr/bin/env bash
# A real Kubernetes API server on 127.0.0.1, for cluster mode's tests and
# demo (issue 14). No package ships kube-apiserver for Debian 12 and the Go
# module proxy is not reachable from these machines, so it is built once
# from Debian's own source package `kubernetes` (1.20.2, dependencies
# vendored) with Debian's Go, and cached; etcd is Debian's etcd-server.
# Only the apiserver runs: no scheduler, controller-manager or kubelet
# (`bulkhead lab` plays the kubelet).
#
#   bash scripts/k8s-apiserver.sh build      build and cache the binary (about 4 min on
#                                            2 cores, 1.8 GB of scratch space, removed after)
#   bash scripts/k8s-apiserver.sh up DIR     start etcd and the apiserver, state in DIR;
#                                            prints DIR/kubeconfig's path once /readyz answers
#   bash scripts/k8s-apiserver.sh down DIR   stop both, remove DIR
#
# Ports: ETCD_PORT (12379; its peer and metrics ports are the next two) and
# APISERVER_PORT (16443), away from a system etcd or apiserver's defaults.
# The cache: BULKHEAD_K8S_CACHE (/var/cache/bulkhead/k8s).
# Needs root (apt-get). Everything listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${BULKHEAD_K8S_CACHE:-/var/cache/bulkhead/k8s}
source_version=1.20.5+really1.20.2-1.1+deb12u1
bin=$cache/kube-apiserver-1.20.2
etcd_port=${ETCD_PORT:-12379}
api_port=${APISERVER_PORT:-16443}

die() { echo "k8s-apiserver: $*" >&2; exit 1; }
[[ $EUID -eq 0 ]] || die "run as root (apt-get installs etcd, Go and the source package)"
. scripts/deps.sh

build() {
  if [[ -x $bin ]]; then
    echo "$bin (cached)"
    return
  fi
  # Debian's source packages: the same mirror and suites as the image's.
  local src=/etc/apt/sources.list.d/bulkhead-deb-src.sources
  if [[ ! -e $src ]]; then
    printf '%s\n' 'Types: deb-src' 'URIs: http://deb.debian.org/debian' 'Suites: bookworm bookworm-updates' \
      'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' >"$src"
    apt-get update -qq
  fi
  install_deps etcd-server golang-go golang-github-modern-go-reflect2-dev dpkg-dev bc make rsync
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  echo "== kubernetes $source_version: source package into $work"
  (cd "$work" && apt-get source -qq "kubernetes=$source_version" >/dev/null 2>&1) ||
    die "apt-get source kubernetes=$source_version failed (is deb.debian.org reachable?)"
  local tree
  tree=$(find "$work" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -1)
  [[ -n $tree ]] || die "no source tree in $work"
  # The vendored reflect2 1.0.1 predates Go 1.18's runtime; Debian's 1.0.2.
  rm -rf "$tree/vendor/github.com/modern-go/reflect2"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$tree/vendor/github.com/modern-go/reflect2"
  mkdir -p "$tree/.go/src/k8s.io"
  ln -sfn "$tree" "$tree/.go/src/k8s.io/kubernetes"
  echo "== building kube-apiserver (about 4 minutes)"
  (cd "$tree/.go/src/k8s.io/kubernetes" && GOPATH="$tree/.go" GO111MODULE=off GOFLAGS=-mod=vendor CGO_ENABLED=0 \
    make WHAT=cmd/kube-apiserver >"$work/build.log" 2>&1) || { tail -30 "$work/build.log" >&2; die "the build failed"; }
  mkdir -p "$cache"
  cp "$tree/_output/bin/kube-apiserver" "$bin.tmp"
  mv "$bin.tmp" "$bin"
  echo "$bin"
}

up() {
  local dir=$1
  [[ -x $bin ]] || die "no kube-apiserver yet: run \`bash scripts/k8s-apiserver.sh build\` first"
  install_deps etcd-server openssl curl
  [[ ! -e $dir/apiserver.pid ]] || die "$dir already holds a running apiserver (down it first)"
  mkdir -p "$dir"
  # A CA and a leaf serving certificate (rustls refuses a CA certificate
  # used as the server's own), and the service account key pair.
  openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj /CN=bulkhead-test-ca \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
    >"$dir/server.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -days 7 \
    -extfile "$dir/server.ext" -out "$dir/server.crt" 2>/dev/null
  openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
  openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
  local token
  token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
  echo "$token,admin,admin,\"system:masters\"" >"$dir/tokens.csv"
  chmod 600 "$dir"/*.key "$dir/tokens.csv"

  etcd --name default --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
    --initial-cluster "default=http://127.0.0.1:$((etcd_port + 1))" \
    --listen-metrics-urls "http://127.0.0.1:$((etcd_port + 2))" >"$dir/etcd.log" 2>&1 &
  echo $! >"$dir/etcd.pid"
  local issuer=https://kubernetes.default.svc.cluster.local
  "$bin" --etcd-servers="http://127.0.0.1:$etcd_port" --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
    --secure-port="$api_port" --insecure-port=0 \
    --tls-cert-file="$dir/server.crt" --tls-private-key-file="$dir/server.key" \
    --token-auth-file="$dir/tokens.csv" --authorization-mode=RBAC \
    --service-account-issuer="$issuer" --api-audiences="$issuer" \
    --service-account-key-file="$dir/sa.pub" --service-account-signing-key-file="$dir/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 --endpoint-reconciler-type=none \
    --disable-admission-plugins=ServiceAccount >"$dir/apiserver.log" 2>&1 &
  echo $! >"$dir/apiserver.pid"
  cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: bulkhead-test
  cluster: {server: "https://127.0.0.1:$api_port", certificate-authority: "$dir/ca.crt"}
users:
- name: admin
  user: {token: "$token"}
contexts:
- name: bulkhead-test
  context: {cluster: bulkhead-test, user: admin}
current-context: bulkhead-test
EOF
  chmod 600 "$dir/kubeconfig"
  local i
  for i in $(seq 1 120); do
    if curl -sf --cacert "$dir/ca.crt" -H "Authorization: Bearer $token" "https://127.0.0.1:$api_port/readyz" >/dev/null; then
      echo "$dir/kubeconfig"
      return
    fi
    kill -0 "$(cat "$dir/apiserver.pid")" 2>/dev/null || { tail -20 "$dir/apiserver.log" >&2; down "$dir"; die "the apiserver exited"; }
    sleep 0.25
  done
  tail -20 "$dir/apiserver.log" >&2
  down "$dir"
  die "the apiserver was not ready within 30 s"
}

down() {
  local dir=$1 p
  for p in apiserver etcd; do
    if [[ -e $dir/$p.pid ]]; then
      local pid
      pid=$(cat "$dir/$p.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$dir"
}

case "${1:-}" in
  build) build ;;
  up) [[ -n ${2:-} ]] || die "usage: up DIR"; up "$2" ;;
  down) [[ -n ${2:-} ]] || die "usage: down DIR"; down "$2" ;;
  *) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
