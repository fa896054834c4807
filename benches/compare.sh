#!/usr/bin/env bash
# Side-by-side load benchmark: pylon against nginx, HAProxy and Envoy on this machine.
#
#   benches/compare.sh [--smoke] [--scenario S1,S3] [--proxies pylon,nginx] [--rounds 3] ...
#   benches/compare.sh --help
#
# Installs the comparators and load generators (benches/compare/tools.sh, cached in
# target/bench-tools), builds pylon in release mode (--debug: the debug build, for smoke runs),
# then runs benches/compare/compare.py. Results: a markdown table on stdout, raw JSON and the
# table in target/bench/run-<time>/ and target/bench/latest.{json,md}. See docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
args=()
for a in "$@"; do
  case "$a" in
    --debug) profile=debug ;;
    *) args+=("$a") ;;
  esac
done

benches/compare/tools.sh
if [ "$profile" = release ]; then
  cargo build --release --locked --bin pylon --example pingora-floor --example bench-load
else
  cargo build --locked --bin pylon --example pingora-floor --example bench-load
fi
exec target/bench-tools/venv/bin/python benches/compare/compare.py --pylon "target/$profile/pylon" "${args[@]}"
