#!/usr/bin/env bash
# Build the real kube-apiserver, kubectl and etcd from the Go module proxy (no Docker, no GitHub).
#
#   tests/kube-testenv/build.sh            # -> ${KUBE_TESTENV_BIN:-<repo>/target/kube-testenv/bin}/{kube-apiserver,kubectl,etcd}
#   KUBE_TESTENV_FORCE=1 tests/kube-testenv/build.sh   # rebuild even if up to date
#
# Idempotent: does nothing when all three binaries exist and are newer than go.mod, go.sum and
# this script. Uses the default GOMODCACHE/GOCACHE, so keep those between CI runs for a
# fast warm rebuild. Versions come from go.mod (regenerate it with gen.sh).
# Needs: Go >= the "go" line of go.mod, network access to the Go module proxy (first run).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BIN=${KUBE_TESTENV_BIN:-$REPO/target/kube-testenv/bin}
NICE=${KUBE_TESTENV_NICE:-10}

die() { echo "kube-testenv/build.sh: $*" >&2; exit 1; }
log() { echo "kube-testenv/build.sh: $*" >&2; }

command -v go >/dev/null 2>&1 || die "'go' not found in PATH (need Go >= $(sed -n 's/^go //p' "$HERE/go.mod"))"

cd "$HERE"
KVER=$(sed -n 's/^[[:space:]]*k8s\.io\/kubernetes \(v[0-9][^ ]*\).*/\1/p' go.mod | head -n1)
EVER=$(sed -n 's/^[[:space:]]*go\.etcd\.io\/etcd\/server\/v3 \(v[0-9][^ ]*\).*/\1/p' go.mod | head -n1)
[ -n "$KVER" ] || die "no 'k8s.io/kubernetes vX.Y.Z' requirement in $HERE/go.mod (run gen.sh)"

up_to_date() {
	for b in kube-apiserver kubectl etcd; do
		[ -x "$BIN/$b" ] || return 1
		for f in go.mod go.sum build.sh; do
			[ "$BIN/$b" -nt "$HERE/$f" ] || return 1
		done
	done
}
if [ -z "${KUBE_TESTENV_FORCE:-}" ] && up_to_date; then
	log "up to date: $BIN (kube-apiserver and kubectl $KVER, etcd $EVER)"
	exit 0
fi

# kube-apiserver and kubectl read their own version from these (without them /version and
# 'kubectl version' say v0.0.0-master+$Format:%H$, and the apiserver's compatibility-version
# logic uses it). etcd embeds its version as a constant, so it needs no -X.
MINOR=$(echo "$KVER" | cut -d. -f2)
LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	LDFLAGS="$LDFLAGS -X $pkg.gitVersion=$KVER -X $pkg.gitMajor=1 -X $pkg.gitMinor=$MINOR -X $pkg.gitTreeState=clean"
done

mkdir -p "$BIN"
OUT=$(mktemp -d "$BIN/.build.XXXXXX")
BUILDLOG="$OUT/build.log"
trap 'rm -rf "$OUT"' EXIT INT TERM

# Fetch every module first, so that a module the proxy does not serve is named plainly
# ("go: <module>@<version>: reading <url>: 403/404 ...") before a long compile starts.
if ! DL=$(nice -n "$NICE" go mod download 2>&1); then
	echo "$DL" >&2
	log "a Go module could not be obtained from GOPROXY=$(go env GOPROXY) (module, version and error above)."
	log "fallback: $HERE/gen.sh 1.36.3 && $0   (see docs/kube-testenv.md)"
	die "go mod download failed"
fi

log "building kube-apiserver and kubectl $KVER and etcd $EVER into $BIN (GOMODCACHE=$(go env GOMODCACHE), GOCACHE=$(go env GOCACHE)); a cold build takes ~8-9 min on 2 cores, ~2.3 GB RSS"
start=$(date +%s)
# One 'go build' for the three main packages: shared packages (client-go, apimachinery, ...) are compiled once.
# go.etcd.io/etcd/server/v3 is named after its last non-version element, so it lands as 'server'.
if ! CGO_ENABLED=0 nice -n "$NICE" go build -trimpath -ldflags "$LDFLAGS" -o "$OUT/" \
	k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl go.etcd.io/etcd/server/v3 >"$BUILDLOG" 2>&1; then
	cat "$BUILDLOG" >&2
	if grep -Eq 'reading .*(403|404|410)|not found|unknown revision|invalid version|missing go.sum entry|verifying .*: ' "$BUILDLOG"; then
		echo >&2
		log "a Go module could not be obtained (see the 'go:' lines above: module path, version, error)."
		log "GOPROXY=$(go env GOPROXY) GOSUMDB=$(go env GOSUMDB) GOFLAGS=$(go env GOFLAGS)"
		log "fallback: $HERE/gen.sh 1.36.3 && $0   (see docs/kube-testenv.md)"
	fi
	die "go build failed"
fi
cat "$BUILDLOG" >&2
for b in kube-apiserver kubectl; do [ -x "$OUT/$b" ] || die "go build produced no $b"; done
ETCD_OUT="$OUT/server"
[ -x "$ETCD_OUT" ] || ETCD_OUT="$OUT/v3"
[ -x "$ETCD_OUT" ] || die "go build produced no etcd binary (looked for server, v3 in $OUT)"
mv -f "$OUT/kube-apiserver" "$BIN/kube-apiserver"
mv -f "$OUT/kubectl" "$BIN/kubectl"
mv -f "$ETCD_OUT" "$BIN/etcd"
log "built in $(($(date +%s) - start)) s: $("$BIN/kube-apiserver" --version) / kubectl $("$BIN/kubectl" version --client | sed -n 's/^Client Version: //p') / etcd $("$BIN/etcd" --version | sed -n 's/^etcd Version: //p')"
