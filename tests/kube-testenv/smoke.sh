#!/usr/bin/env bash
# Smoke test: start the real etcd + kube-apiserver (built by build.sh) on 127.0.0.1 with
# controller-runtime envtest's flags, wait for /readyz, create a Namespace, a Service and an
# Ingress (networking.k8s.io/v1) with curl, list them back, report timings and idle RSS,
# and stop both processes (by pid) on exit.
#
#   tests/kube-testenv/build.sh && tests/kube-testenv/smoke.sh
#
# Env: KUBE_TESTENV_BIN (binaries dir, default <repo>/target/kube-testenv/bin)
#      KUBE_TESTENV_KEEP=1  keep the temp dir (logs, certs, kubeconfig) after exit
#      KUBE_TESTENV_HOLD=1  after the checks, keep both servers running until Ctrl-C
#                           (prints a KUBECONFIG to point pylon or kubectl at)
#      KUBE_TESTENV_READY_TIMEOUT (s, default 120)  KUBE_TESTENV_IDLE_SECS (s, default 10)
# Needs: bash, curl, openssl. Everything listens on loopback and lives in one mktemp dir.
set -Eeuo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BIN=${KUBE_TESTENV_BIN:-$REPO/target/kube-testenv/bin}
READY_TIMEOUT=${KUBE_TESTENV_READY_TIMEOUT:-120}
IDLE_SECS=${KUBE_TESTENV_IDLE_SECS:-10}

log() { echo "kube-testenv/smoke: $*" >&2; }
die() { log "FAIL: $*"; exit 1; }

for b in etcd kube-apiserver; do
	[ -x "$BIN/$b" ] || die "$BIN/$b missing: run tests/kube-testenv/build.sh first"
done
for t in curl openssl; do command -v "$t" >/dev/null || die "'$t' not found"; done

DIR=$(mktemp -d "${TMPDIR:-/tmp}/kube-testenv.XXXXXX")
ETCD_PID="" APISERVER_PID="" PASSED=""

stop() { # stop one pid: TERM, up to 10 s grace, then KILL
	local pid=$1
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
	wait "$pid" 2>/dev/null || true
}
cleanup() {
	local rc=$?
	[ -n "$PASSED" ] && rc=0 # Ctrl-C during KUBE_TESTENV_HOLD is a normal end
	trap - EXIT INT TERM
	stop "$APISERVER_PID"
	stop "$ETCD_PID"
	if [ $rc -ne 0 ]; then
		for f in etcd kube-apiserver; do
			[ -s "$DIR/$f.log" ] && { log "last lines of $f.log:"; tail -n 25 "$DIR/$f.log" >&2; }
		done
	fi
	if [ -n "${KUBE_TESTENV_KEEP:-}" ]; then log "kept $DIR"; else rm -rf "$DIR"; fi
	exit $rc
}
trap cleanup EXIT
trap 'log "FAIL: line $LINENO: $BASH_COMMAND"' ERR
trap 'exit 130' INT TERM

free_port() { # ask the kernel for a free loopback port
	if command -v python3 >/dev/null; then
		python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
	else # fallback: random high port that refuses connections
		local p
		while :; do
			p=$((20000 + RANDOM % 30000))
			(exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
		done
	fi
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }
rss_mb() { awk '/^VmRSS:/{printf "%.0f", $2/1024}' "/proc/$1/status" 2>/dev/null || echo "?"; }

ETCD_PORT=$(free_port)
PEER_PORT=$(free_port)
API_PORT=$(free_port)
while [ "$PEER_PORT" = "$ETCD_PORT" ]; do PEER_PORT=$(free_port); done
while [ "$API_PORT" = "$ETCD_PORT" ] || [ "$API_PORT" = "$PEER_PORT" ]; do API_PORT=$(free_port); done
SERVER="https://127.0.0.1:$API_PORT"

# --- PKI (envtest: a throw-away CA for the serving cert, a separate SA signing key) ---------
PKI="$DIR/pki"
mkdir -m 700 "$PKI"
{
	openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/ca.key"
	openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=kube-testenv-ca" -days 2 -out "$PKI/ca.crt" \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
	openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/apiserver.key"
	openssl req -new -key "$PKI/apiserver.key" -subj "/CN=kube-apiserver" -out "$PKI/apiserver.csr"
	printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "extendedKeyUsage=serverAuth" \
		"keyUsage=critical,digitalSignature,keyEncipherment" "basicConstraints=CA:FALSE" >"$PKI/apiserver.ext"
	openssl x509 -req -in "$PKI/apiserver.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
		-days 2 -extfile "$PKI/apiserver.ext" -out "$PKI/apiserver.crt"
	openssl genrsa -out "$PKI/sa.key" 2048 # private key: valid for both --service-account-*-file flags
} >"$DIR/openssl.log" 2>&1 || { cat "$DIR/openssl.log" >&2; die "openssl failed"; }

# Admin: static bearer token in system:masters (envtest uses a client cert in the same group).
TOKEN=$(openssl rand -hex 24)
echo "$TOKEN,admin,admin,system:masters" >"$PKI/tokens.csv"
chmod 600 "$PKI"/*

cat >"$DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kube-testenv
  cluster: {server: "$SERVER", certificate-authority: "$PKI/ca.crt"}
users:
- name: admin
  user: {token: "$TOKEN"}
contexts:
- name: kube-testenv
  context: {cluster: kube-testenv, user: admin, namespace: default}
current-context: kube-testenv
EOF
chmod 600 "$DIR/kubeconfig"

# --- etcd ----------------------------------------------------------------------------------
T0=$(now)
"$BIN/etcd" \
	--name=kube-testenv --data-dir="$DIR/etcd" \
	--listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
	--listen-peer-urls="http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$PEER_PORT" \
	--initial-cluster="kube-testenv=http://127.0.0.1:$PEER_PORT" \
	--unsafe-no-fsync=true --log-level=warn \
	>"$DIR/etcd.log" 2>&1 &
ETCD_PID=$!

# --- kube-apiserver (controller-runtime envtest defaultArgs + token auth + loopback) --------
T1=$(now)
"$BIN/kube-apiserver" \
	--etcd-servers="http://127.0.0.1:$ETCD_PORT" \
	--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" \
	--cert-dir="$PKI" --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
	--service-cluster-ip-range=10.0.0.0/24 \
	--allow-privileged=true \
	--authorization-mode=RBAC \
	--disable-admission-plugins=ServiceAccount \
	--service-account-issuer="$SERVER/" \
	--service-account-key-file="$PKI/sa.key" \
	--service-account-signing-key-file="$PKI/sa.key" \
	--token-auth-file="$PKI/tokens.csv" \
	--endpoint-reconciler-type=none \
	>"$DIR/kube-apiserver.log" 2>&1 &
APISERVER_PID=$!
log "etcd pid $ETCD_PID on 127.0.0.1:$ETCD_PORT, kube-apiserver pid $APISERVER_PID on $SERVER, dir $DIR"

# A non-curl User-Agent: the apiserver pretty-prints JSON for curl/*, this script greps compact JSON.
CURL=(curl -sS --max-time 10 -A kube-testenv-smoke --cacert "$PKI/ca.crt" -H "Authorization: Bearer $TOKEN")

# --- wait for /readyz == 200 -----------------------------------------------------------------
code=000
deadline=$(($(date +%s) + READY_TIMEOUT))
while :; do
	kill -0 "$ETCD_PID" 2>/dev/null || die "etcd exited early"
	kill -0 "$APISERVER_PID" 2>/dev/null || die "kube-apiserver exited early"
	code=$("${CURL[@]}" -o "$DIR/readyz.out" -w '%{http_code}' "$SERVER/readyz" 2>/dev/null || true)
	[ "$code" = 200 ] && break
	[ "$(date +%s)" -lt "$deadline" ] || { cat "$DIR/readyz.out" >&2 2>/dev/null || true; die "/readyz not 200 after ${READY_TIMEOUT}s (last: $code)"; }
	sleep 0.2
done
READY_ALL=$(since "$T0")
READY_API=$(since "$T1")
log "/readyz = 200 after ${READY_ALL}s from etcd start (${READY_API}s from kube-apiserver start)"
log "version: $("${CURL[@]}" "$SERVER/version" | tr -d ' \n' | sed 's/.*"gitVersion":"\([^"]*\)".*/\1/')"

# --- create and list back ------------------------------------------------------------------
post() { # post PATH JSON -> prints response, fails unless 201
	local path=$1 body=$2 out="$DIR/resp.json" c
	c=$("${CURL[@]}" -o "$out" -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
		--data "$body" "$SERVER$path") || die "POST $path: curl failed"
	[ "$c" = 201 ] || { cat "$out" >&2; echo >&2; die "POST $path: HTTP $c"; }
	cat "$out"
}
get() { # get PATH -> prints response, fails unless 200
	local path=$1 out="$DIR/resp.json" c
	c=$("${CURL[@]}" -o "$out" -w '%{http_code}' "$SERVER$path") || die "GET $path: curl failed"
	[ "$c" = 200 ] || { cat "$out" >&2; echo >&2; die "GET $path: HTTP $c"; }
	cat "$out"
}
names() { grep -o '"metadata":{"name":"[^"]*"' | sed 's/.*"name":"//; s/"$//' | tr '\n' ' '; }

NS=pylon-smoke
post /api/v1/namespaces "{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"$NS\"}}" >/dev/null
log "created Namespace $NS"

SVC=$(post "/api/v1/namespaces/$NS/services" '{"apiVersion":"v1","kind":"Service",
  "metadata":{"name":"web","labels":{"app":"web"}},
  "spec":{"selector":{"app":"web"},"ports":[{"name":"http","port":80,"targetPort":8080,"protocol":"TCP"}]}}')
CLUSTER_IP=$(echo "$SVC" | grep -o '"clusterIP":"[^"]*"' | head -n1 | cut -d'"' -f4 || true)
case $CLUSTER_IP in 10.0.0.*) ;; *) die "Service got clusterIP '$CLUSTER_IP', expected one from 10.0.0.0/24" ;; esac
log "created Service $NS/web (clusterIP $CLUSTER_IP allocated by the apiserver)"

post "/apis/networking.k8s.io/v1/namespaces/$NS/ingresses" '{"apiVersion":"networking.k8s.io/v1","kind":"Ingress",
  "metadata":{"name":"web"},
  "spec":{"ingressClassName":"pylon","rules":[{"host":"web.example.test","http":{"paths":[
    {"path":"/","pathType":"Prefix","backend":{"service":{"name":"web","port":{"number":80}}}}]}}]}}' >/dev/null
log "created Ingress $NS/web"

# Validation is real: an Ingress with an invalid pathType must be rejected with 422.
bad=$("${CURL[@]}" -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
	--data '{"apiVersion":"networking.k8s.io/v1","kind":"Ingress","metadata":{"name":"bad"},"spec":{"rules":[{"http":{"paths":[{"path":"/","pathType":"Bogus","backend":{"service":{"name":"web","port":{"number":80}}}}]}}]}}' \
	"$SERVER/apis/networking.k8s.io/v1/namespaces/$NS/ingresses")
[ "$bad" = 422 ] || die "invalid Ingress: expected HTTP 422, got $bad"
log "invalid Ingress rejected with 422 (server-side validation)"

got_ns=$(get "/api/v1/namespaces?fieldSelector=metadata.name%3D$NS" | names)
got_svc=$(get "/api/v1/namespaces/$NS/services" | names)
got_ing=$(get "/apis/networking.k8s.io/v1/namespaces/$NS/ingresses" | names)
log "listed: namespaces=[${got_ns% }] services=[${got_svc% }] ingresses=[${got_ing% }]"
[ "${got_ns% }" = "$NS" ] || die "namespace list mismatch"
[ "${got_svc% }" = web ] || die "service list mismatch"
[ "${got_ing% }" = web ] || die "ingress list mismatch"

# --- idle RSS -------------------------------------------------------------------------------
sleep "$IDLE_SECS"
log "idle RSS after ${IDLE_SECS}s: kube-apiserver $(rss_mb "$APISERVER_PID") MiB, etcd $(rss_mb "$ETCD_PID") MiB"
echo "kube-testenv smoke: OK (ready in ${READY_ALL}s)"
PASSED=1

if [ -n "${KUBE_TESTENV_HOLD:-}" ]; then
	log "holding; in another shell: export KUBECONFIG=$DIR/kubeconfig   (Ctrl-C stops both servers)"
	wait "$APISERVER_PID"
fi
