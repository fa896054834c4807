#!/usr/bin/env bash
# Runs pylon's whole test suite on a fresh machine: installs what the tests need, then checks
# formatting and lints and runs every test (unit, end-to-end). CI runs exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."

# --- what the build and the tests need -----------------------------------------------------
apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"
}
need=()
command -v cmake >/dev/null || need+=(cmake)   # pingora's zlib-ng build
command -v cc >/dev/null || need+=(build-essential)
command -v pebble >/dev/null || need+=(pebble)   # the ACME server of the certificate tests
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]}"
  apt_install "${need[@]}"
fi

# A real kube-apiserver, etcd and kubectl for the cluster-mode tests, built from the Go module
# proxy (about 10 minutes the first time; cached in target/kube-testenv afterwards).
command -v go >/dev/null || { echo "Go 1.26 or newer is needed to build the test API server" >&2; exit 1; }
echo "==> tests/kube-testenv/build.sh"
tests/kube-testenv/build.sh

# --- checks and tests (debug builds, one target directory) ---------------------------------
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "==> cargo test"
cargo test --locked --all-targets

# The side-by-side benchmark harness, each scenario for about a second against nginx, HAProxy
# and Envoy: proves that it works (its figures are not checked; see docs/benchmarks.md).
echo "==> benches/compare.sh --smoke --debug"
benches/compare.sh --smoke --debug
