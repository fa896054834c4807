#!/usr/bin/env python3
"""Side-by-side load benchmark of pylon against nginx, HAProxy and Envoy on one machine.

Run through benches/compare.sh, which installs the tools and builds pylon first. Every proxy
is configured equivalently (same certificate files, TLS 1.3, ALPN h2 + http/1.1, keep-alive
upstream pool, no access log, the same forwarded headers), pinned to CPU 0, and driven by a
load generator pinned to CPU 1 together with the one shared upstream. Proxies run in
alternation (A B C D, A B C D, ...) and every figure is the median over the rounds.
The method is described in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import datetime
import hashlib
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "target" / "bench-tools"
NGINX = TOOLS / "root" / "usr" / "sbin" / "nginx"
HAPROXY = TOOLS / "root" / "usr" / "sbin" / "haproxy"
ENVOY = TOOLS / "venv" / "bin" / "envoy"
OUT = ROOT / "target" / "bench"
PROXY_CPU, LOAD_CPU = 0, 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
BODY_1M = 1 << 20
# S6: background requests starting this soon after a change count as "near" it. It covers a
# change that is applied within a fraction of it (pylon: about 30 ms); a proxy that takes
# seconds (nginx reloading) spreads its cost beyond it.
S6_NEAR_S = 0.25
# S6: new TLS connections a second in the steady state, 2 ms apart: about as long as the probing
# of one of pylon's changes (served after 25–40 ms).
S6_STEADY_PROBES = 13
# S6: the background load's keep-alive connections.
S6_CONNECTIONS = 16

COMPARATORS = ["pylon", "nginx", "haproxy", "envoy"]
# Not compared, shown for scale: nginx answering 200 itself, the smallest pingora proxy, and the
# load generator talking to the upstream directly.
REFERENCES = ["nginx-null", "pingora-floor", "direct"]


# --------------------------------------------------------------------------------------------
# Processes


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_running: list[subprocess.Popen] = []


def spawn(argv: list[str], cpu: int, log_file: Path, env: dict | None = None, cwd: Path | None = None):
    """Starts argv pinned to one CPU in its own process group; it is killed when the run ends."""
    out = open(log_file, "ab")
    proc = subprocess.Popen(
        ["taskset", "-c", str(cpu), *argv],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
        cwd=cwd,
    )
    out.close()
    _running.append(proc)
    return proc


def stop(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc in _running:
        _running.remove(proc)


def stop_all() -> None:
    for proc in list(_running):
        stop(proc, 2.0)


def tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """CPU seconds spent by pids so far: (in user space, in the kernel)."""
    user = kernel = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])  # utime
        kernel += int(fields[12])  # stime
    return user / CLK_TCK, kernel / CLK_TCK


def cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_split(pids))


def memory_kib(pids: list[int], key: str) -> int:
    """Sum of a /proc/<pid>/status field (VmRSS, VmHWM) over pids, in KiB."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def cpu_times() -> dict[int, tuple[int, int, int]]:
    """Per CPU: (busy, total, steal) jiffies from /proc/stat."""
    times = {}
    for line in Path("/proc/stat").read_text().splitlines():
        m = re.match(r"cpu(\d+) (.*)", line)
        if m:
            v = [int(x) for x in m.group(2).split()]
            idle = v[3] + v[4]
            total = sum(v[:8])
            times[int(m.group(1))] = (total - idle, total, v[7])
    return times


def busy_share(before, after) -> dict[str, float]:
    out = {}
    for cpu in (PROXY_CPU, LOAD_CPU):
        busy = after[cpu][0] - before[cpu][0]
        total = max(1, after[cpu][1] - before[cpu][1])
        out[f"cpu{cpu}_busy"] = round(busy / total, 3)
        out[f"cpu{cpu}_steal"] = round((after[cpu][2] - before[cpu][2]) / total, 3)
    return out


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


SPEED_PROBE_DATA = bytes(16 << 20)


def speed_probe(samples: int = 3) -> float:
    """Milliseconds to hash 16 MiB with SHA-256 on the proxy CPU (median of `samples`).

    A fixed amount of work, so its time says how fast this machine runs at the moment. A VM
    whose host is busy runs everything slower, often without showing steal time or load in
    the guest; runs whose probes differ are not comparable in time (their ratios mostly are,
    and instruction counts always are)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {PROXY_CPU})
    try:
        times = []
        for _ in range(samples):
            t0 = time.perf_counter()
            hashlib.sha256(SPEED_PROBE_DATA).digest()
            times.append(time.perf_counter() - t0)
    finally:
        os.sched_setaffinity(0, before)
    return round(statistics.median(times) * 1e3, 1)


# The measurement window of measure(): the proxy's processes, and the CPU counters read when the
# last load generator of the window exited. Reading them there, not after the results are
# parsed (h2load's log of 500 000 requests takes seconds), keeps the parsing out of the CPUs'
# busy shares.
_window: dict | None = None


def run_tool(argv: list[str], timeout: float) -> tuple[str, float]:
    """Runs a load generator pinned to the load CPU; returns its output and CPU seconds."""
    proc = subprocess.Popen(
        ["taskset", "-c", str(LOAD_CPU), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise RuntimeError(f"{argv[0]} did not finish in {timeout:.0f}s: {out[-2000:]}")
    if _window is not None:
        _window["end"] = (cpu_split(_window["pids"]), cpu_times())
    return out, 0.0


class ChildCpu:
    """CPU seconds used by finished children (load generators) between two points."""

    def __init__(self):
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.start = r.ru_utime + r.ru_stime

    def seconds(self) -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime - self.start


# --------------------------------------------------------------------------------------------
# HTTPS probes


def insecure_context(alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


PROBE_CTX = insecure_context(["http/1.1"])


def connect(port: int, timeout: float) -> socket.socket:
    """A TCP connection to a loopback port, with Nagle's algorithm off as browsers and load
    generators have it. With it on, a request written right after the TLS handshake waits for
    the server's acknowledgement of the client's Finished message, which a server that sends
    no session tickets (Envoy here) delays by 40 ms."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return raw


def https_get(port: int, host: str | None = None, path: str = "/", timeout: float = 2.0):
    """One request on a new TLS connection: (status, sha256 of the served certificate)."""
    with connect(port, timeout) as raw:
        with PROBE_CTX.wrap_socket(raw, server_hostname=host) as s:
            der = s.getpeercert(binary_form=True)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host or '127.0.0.1'}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, hashlib.sha256(der).hexdigest() if der else ""


def wait_serving(port: int, host: str | None, proc: subprocess.Popen, timeout: float, poll: float = 0.02):
    """Polls until host answers 200; returns the seconds waited."""
    start = time.monotonic()
    last = None
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before serving")
        try:
            status, _ = https_get(port, host, timeout=1.0)
            if status == 200:
                return time.monotonic() - start
            last = f"status {status}"
        except OSError as e:
            last = str(e)
        time.sleep(poll)
    raise RuntimeError(f"not serving {host or '127.0.0.1'} after {timeout:.0f}s: {last}")


def der_sha256_of_pem(pem: bytes) -> str:
    """sha256 of the DER of the first certificate in pem (what https_get reports)."""
    import base64

    first = pem.split(b"-----END CERTIFICATE-----")[0]
    body = b"".join(line for line in first.splitlines() if line and not line.startswith(b"-----"))
    return hashlib.sha256(base64.b64decode(body)).hexdigest()


# --------------------------------------------------------------------------------------------
# Certificates (the same files for every proxy)


def make_cert(names: list[str], kind: str, serial: int | None = None) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1()) if kind == "ecdsa" else rsa.generate_private_key(65537, 2048)
    now = datetime.datetime.now(datetime.timezone.utc)
    sans = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


@dataclass
class CertFiles:
    name: str
    crt: Path
    key: Path
    pem: Path  # certificate + key, for HAProxy

    @staticmethod
    def write(directory: Path, name: str, crt: bytes, key: bytes) -> "CertFiles":
        directory.mkdir(parents=True, exist_ok=True)
        files = CertFiles(name, directory / f"{name}.crt", directory / f"{name}.key", directory / f"{name}.pem")
        files.crt.write_bytes(crt)
        files.key.write_bytes(key)
        files.pem.write_bytes(crt + key)
        return files


def host_name(i: int) -> str:
    return f"h{i}.bench.test"


def host_certs(n: int) -> list[CertFiles]:
    """n hosts, each with its own ECDSA certificate; cached in target/bench/hosts-<n>."""
    directory = OUT / f"hosts-{n}"
    done = directory / "done"
    if not done.exists():
        log(f"generating {n} host certificates in {directory}")
        shutil.rmtree(directory, ignore_errors=True)
        for i in range(n):
            CertFiles.write(directory, f"h{i}", *make_cert([host_name(i)], "ecdsa"))
        done.write_text("ok\n")
    return [CertFiles(f"h{i}", directory / f"h{i}.crt", directory / f"h{i}.key", directory / f"h{i}.pem") for i in range(n)]


# --------------------------------------------------------------------------------------------
# The shared upstream: nginx on the load CPU, "ok\n" and a 1 MiB file, with a connection count.


class Upstream:
    def __init__(self, run_dir: Path):
        self.dir = run_dir / "upstream"
        self.dir.mkdir(parents=True)
        (self.dir / "www").mkdir()
        (self.dir / "www" / "1m.bin").write_bytes(os.urandom(BODY_1M))
        self.port = free_port()
        self.status_port = free_port()
        conf = f"""
worker_processes 1;
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
worker_rlimit_nofile 65000;
{user_directive()}
events {{ worker_connections 60000; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  sendfile on;
  tcp_nopush on;
  {temp_paths(self.dir)}
  server {{
    listen 127.0.0.1:{self.port} backlog=4096;
    location = / {{ default_type text/plain; return 200 "ok\\n"; }}
    location = /1m.bin {{ root {self.dir}/www; }}
    location / {{ default_type text/plain; return 200 "ok\\n"; }}
  }}
  server {{
    listen 127.0.0.1:{self.status_port};
    location / {{ stub_status; }}
  }}
}}
"""
        (self.dir / "nginx.conf").write_text(conf)
        self.proc = spawn(
            [str(NGINX), "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"), "-e", str(self.dir / "error.log")],
            LOAD_CPU,
            self.dir / "stdout.log",
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                self.accepted()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"upstream nginx did not start: {(self.dir / 'error.log').read_text()}")
                time.sleep(0.05)

    def accepted(self) -> int:
        """Connections the upstream has accepted so far (one is the status request itself)."""
        with socket.create_connection(("127.0.0.1", self.status_port), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        body = data.split(b"\r\n\r\n", 1)[1]  # "Active connections: 1\nserver accepts ...\n 5 5 9\n"
        return int(body.split(b"\n")[2].split()[0])

    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"


def haproxy_maxconn() -> int:
    # HAProxy refuses to start when maxconn needs more descriptors than the limit allows.
    return min(60000, resource.getrlimit(resource.RLIMIT_NOFILE)[1] // 2 - 500)


def user_directive() -> str:
    # nginx started as root would switch its workers to "nobody", who cannot read target/.
    return "user root root;" if os.geteuid() == 0 else ""


def temp_paths(d: Path) -> str:
    return " ".join(
        f"{k}_temp_path {d}/tmp-{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )


# --------------------------------------------------------------------------------------------
# The proxies under test


@dataclass
class Setup:
    """What a proxy serves in one run."""

    cert: str = "ecdsa"  # kind of the default certificate
    hosts: list[CertFiles] = field(default_factory=list)  # S5/S6: one Ingress and certificate each
    null: bool = False  # nginx answers 200 itself (the "no proxying" reference)


class Running:
    def __init__(self, name: str, proc: subprocess.Popen, port: int, directory: Path):
        self.name, self.proc, self.port, self.dir = name, proc, port, directory
        self.started = time.monotonic()
        self.pids: list[int] = []

    def refresh_pids(self) -> list[int]:
        self.pids = tree(self.proc.pid)
        return self.pids

    def url(self, path: str = "/") -> str:
        return f"https://127.0.0.1:{self.port}{path}"


class Proxy:
    name = ""
    supports_hosts = True
    # S6: how many changes at most (None: all), one every s6_interval seconds, each given up to
    # s6_timeout seconds to be served.
    s6_changes: int | None = None
    s6_interval = 1
    s6_timeout = 30

    def __init__(self, upstream: Upstream, certs: dict[str, CertFiles], run_dir: Path):
        self.upstream, self.certs, self.run_dir = upstream, certs, run_dir
        self.count = 0

    # A command the proxy runs under (IR: valgrind's callgrind), set per scenario.
    wrap: list[str] = []

    def spawn(self, argv: list[str], log_file: Path) -> subprocess.Popen:
        return spawn(self.wrap + argv, PROXY_CPU, log_file)

    def fresh_dir(self) -> Path:
        self.count += 1
        d = self.run_dir / f"{self.name}-{self.count}"
        d.mkdir(parents=True)
        return d

    def start(self, setup: Setup) -> Running:
        raise NotImplementedError

    # S6: apply one change; returns when the change has been handed to the proxy.
    def add_host(self, running: Running, setup: Setup, cert: CertFiles) -> None:
        raise NotImplementedError

    def remove_host(self, running: Running, setup: Setup, cert: CertFiles) -> None:
        raise NotImplementedError

    def rotate(self, running: Running, setup: Setup, index: int, cert: CertFiles) -> None:
        raise NotImplementedError


class Pylon(Proxy):
    name = "pylon"

    def __init__(self, *args, binary: Path, **kw):
        super().__init__(*args, **kw)
        self.binary = binary

    def start(self, setup: Setup) -> Running:
        d = self.fresh_dir()
        manifests = d / "manifests"
        (manifests / "hosts").mkdir(parents=True)
        default = self.certs[setup.cert]
        base = [
            "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: pylon}\n"
            "spec: {controller: pylon.dev/ingress-controller}\n",
            "apiVersion: v1\nkind: Service\nmetadata: {name: up}\nspec: {ports: [{name: http, port: 80}]}\n",
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
            "metadata: {name: up-1, labels: {kubernetes.io/service-name: up}}\naddressType: IPv4\n"
            f"ports: [{{name: http, port: {self.upstream.port}}}]\n"
            'endpoints: [{addresses: ["127.0.0.1"], conditions: {ready: true}}]\n',
            secret_yaml("bench-tls", default),
        ]
        if not setup.hosts:
            base.append(
                "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: all}\n"
                "spec:\n  ingressClassName: pylon\n  defaultBackend: {service: {name: up, port: {number: 80}}}\n"
            )
        (manifests / "base.yaml").write_text("---\n".join(base))
        for cert in setup.hosts:
            (manifests / "hosts" / f"{cert.name}.yaml").write_text(host_yaml(cert))
        port, http, admin = free_port(), free_port(), free_port()
        (d / "pylon.toml").write_text(
            f"""
[listen]
http = "127.0.0.1:{http}"
https = "127.0.0.1:{port}"
admin = "127.0.0.1:{admin}"
[manifests]
dirs = ["{manifests}"]
state-dir = "{d}/state"
[ingress]
default-certificate = "default/bench-tls"
https-redirect-port = {port}
[proxy]
threads = 1
client-keepalive-timeout = "300s"
[tls]
session-resumption = false
[shutdown]
delay = "0s"
drain-timeout = "1s"
[log]
level = "warn"
access-log = false
"""
        )
        proc = self.spawn([str(self.binary), "run", "--config", str(d / "pylon.toml")], d / "pylon.log")
        r = Running(self.name, proc, port, d)
        r.manifests = manifests
        return r

    def add_host(self, running, setup, cert):
        atomic_write(running.manifests / "hosts" / f"{cert.name}.yaml", host_yaml(cert))

    def remove_host(self, running, setup, cert):
        (running.manifests / "hosts" / f"{cert.name}.yaml").unlink()

    def rotate(self, running, setup, index, cert):
        atomic_write(running.manifests / "hosts" / f"{setup.hosts[index].name}.yaml", host_yaml(cert, setup.hosts[index].name))


def secret_yaml(name: str, cert: CertFiles) -> str:
    def block(data: bytes) -> str:
        return "".join(f"    {line}\n" for line in data.decode().strip().splitlines())

    return (
        f"apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: kubernetes.io/tls\nstringData:\n"
        f"  tls.crt: |\n{block(cert.crt.read_bytes())}  tls.key: |\n{block(cert.key.read_bytes())}"
    )


def host_yaml(cert: CertFiles, name: str | None = None) -> str:
    name = name or cert.name
    host = f"{name}.bench.test"
    return (
        secret_yaml(f"{name}-tls", cert)
        + "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\n"
        + f"metadata: {{name: {name}}}\nspec:\n  ingressClassName: pylon\n"
        + f"  tls: [{{hosts: [{host}], secretName: {name}-tls}}]\n"
        + f"  rules: [{{host: {host}, http: {{paths: [{{path: /, pathType: Prefix, "
        + "backend: {service: {name: up, port: {number: 80}}}}]}}]\n"
    )


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.rename(tmp, path)


class Nginx(Proxy):
    name = "nginx"
    # A reload with 10 000 certificates takes about 30 s on the busy proxy CPU.
    s6_changes = 3
    s6_interval = 45
    s6_timeout = 90

    def conf(self, d: Path, port: int, setup: Setup, hosts: list[tuple[str, CertFiles]]) -> str:
        default = self.certs[setup.cert]
        proxy = f"""
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Forwarded-Port $server_port;
      proxy_set_header X-Real-IP $remote_addr;
      proxy_set_header X-Request-ID $request_id;
      proxy_buffering on;
      proxy_max_temp_file_size 0;
      proxy_buffers 64 16k;
      proxy_busy_buffers_size 256k;"""
        if setup.null:
            location = 'default_type text/plain; return 200 "ok\\n";'
        elif hosts:
            location = "return 404;"
        else:
            location = proxy
        servers = [
            f"""
  server {{
    listen 127.0.0.1:{port} ssl http2 default_server backlog=4096;
    ssl_certificate {default.crt};
    ssl_certificate_key {default.key};
    location / {{ {location} }}
  }}"""
        ]
        for host, cert in hosts:
            servers.append(
                f"""
  server {{
    listen 127.0.0.1:{port} ssl http2;
    server_name {host};
    ssl_certificate {cert.crt};
    ssl_certificate_key {cert.key};
    location / {{ {proxy} }}
  }}"""
            )
        # Under valgrind (IR) the worker must be the process itself: vgdb cannot
        # reach a forked child.
        single = "master_process off;" if self.wrap else ""
        return f"""
worker_processes 1;
{single}
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 65000;
{user_directive()}
events {{ worker_connections 60000; }}
http {{
  access_log off;
  keepalive_timeout 300s;
  keepalive_requests 1000000;
  server_names_hash_max_size 65536;
  server_names_hash_bucket_size 128;
  ssl_protocols TLSv1.3;
  ssl_session_tickets off;
  ssl_session_cache off;
  {temp_paths(d)}
  upstream up {{
    server {self.upstream.addr()};
    keepalive 1024;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
  }}
{"".join(servers)}
}}
"""

    def start(self, setup: Setup) -> Running:
        d = self.fresh_dir()
        port = free_port()
        r = Running(self.name, None, port, d)  # type: ignore[arg-type]
        r.hosts = [(host_name(i), c) for i, c in enumerate(setup.hosts)]
        r.extra = {}
        (d / "nginx.conf").write_text(self.conf(d, port, setup, r.hosts))
        r.proc = self.spawn([str(NGINX), "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")], d / "stdout.log")
        r.setup = setup
        return r

    def _reload(self, running):
        hosts = running.hosts + sorted(running.extra.items())
        atomic_write(running.dir / "nginx.conf", self.conf(running.dir, running.port, running.setup, hosts))
        os.kill(running.proc.pid, signal.SIGHUP)

    def add_host(self, running, setup, cert):
        running.extra[f"{cert.name}.bench.test"] = cert
        self._reload(running)

    def remove_host(self, running, setup, cert):
        del running.extra[f"{cert.name}.bench.test"]
        self._reload(running)

    def rotate(self, running, setup, index, cert):
        running.hosts[index] = (running.hosts[index][0], cert)
        self._reload(running)


class NginxNull(Nginx):
    """The reference: nginx terminating TLS and answering 200 itself."""

    name = "nginx-null"

    def start(self, setup: Setup) -> Running:
        return super().start(Setup(cert=setup.cert, null=True))


class Haproxy(Proxy):
    name = "haproxy"

    def start(self, setup: Setup) -> Running:
        d = self.fresh_dir()
        port = free_port()
        default = self.certs[setup.cert]
        if setup.hosts:
            # A crt-list: the default certificate first, then one line per host (SNI filter).
            lines = [f"{default.pem}"] + [f"{c.pem} {host_name(i)}" for i, c in enumerate(setup.hosts)]
            (d / "crt-list.txt").write_text("\n".join(lines) + "\n")
            (d / "hosts.lst").write_text("\n".join(host_name(i) for i in range(len(setup.hosts))) + "\n")
            bind_certs = f"crt-list {d}/crt-list.txt"
            routing = f"  use_backend up if {{ req.hdr(host),field(1,:),lower -m str -f {d}/hosts.lst }}\n  default_backend notfound\n"
        else:
            bind_certs = f"crt {default.pem}"
            routing = "  default_backend up\n"
        (d / "haproxy.cfg").write_text(
            f"""
global
  nbthread 1
  maxconn {haproxy_maxconn()}
  tune.ssl.cachesize 0
  ssl-default-bind-options ssl-min-ver TLSv1.3 no-tls-tickets
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 60s
  timeout http-keep-alive 300s
  option http-keep-alive
  http-reuse always
frontend https
  maxconn {haproxy_maxconn()}
  bind 127.0.0.1:{port} ssl {bind_certs} alpn h2,http/1.1
  option forwardfor
  http-request set-header X-Forwarded-Proto https
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-header X-Forwarded-Port %[dst_port]
  http-request set-header X-Real-IP %[src]
  http-request set-header X-Request-ID %[uuid]
{routing}
backend up
  server up {self.upstream.addr()}
backend notfound
  http-request return status 404
"""
        )
        proc = self.spawn([str(HAPROXY), "-db", "-f", str(d / "haproxy.cfg")], d / "haproxy.log")
        return Running(self.name, proc, port, d)


class Envoy(Proxy):
    name = "envoy"

    def start(self, setup: Setup) -> Running:
        d = self.fresh_dir()
        port = free_port()

        def tls(cert: CertFiles) -> dict:
            return {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "disable_stateless_session_resumption": True,
                    "disable_stateful_session_resumption": True,
                    "common_tls_context": {
                        "alpn_protocols": ["h2", "http/1.1"],
                        "tls_params": {"tls_minimum_protocol_version": "TLSv1_3"},
                        "tls_certificates": [
                            {"certificate_chain": {"filename": str(cert.crt)}, "private_key": {"filename": str(cert.key)}}
                        ],
                    },
                },
            }

        def hcm(domains: list[str]) -> dict:
            route = {"match": {"prefix": "/"}, "route": {"cluster": "up"}}
            vhosts = [{"name": d, "domains": [d, f"{d}:*"], "routes": [route]} for d in domains]
            if not domains:
                vhosts = [{"name": "all", "domains": ["*"], "routes": [route]}]
            return {
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "https",
                    "codec_type": "AUTO",
                    "use_remote_address": True,
                    "common_http_protocol_options": {"idle_timeout": "300s"},
                    "route_config": {
                        "virtual_hosts": vhosts,
                        "request_headers_to_add": [
                            {"header": {"key": "x-forwarded-host", "value": "%REQ(:AUTHORITY)%"}},
                            {"header": {"key": "x-forwarded-port", "value": str(port)}},
                            {"header": {"key": "x-real-ip", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}},
                        ],
                    },
                    "http_filters": [
                        {
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                        }
                    ],
                },
            }

        chains = [{"filters": [hcm([host_name(i) for i in range(len(setup.hosts))])], "transport_socket": tls(self.certs[setup.cert])}]
        for i, cert in enumerate(setup.hosts):
            chains.append(
                {"filter_chain_match": {"server_names": [host_name(i)]}, "filters": [hcm([host_name(i)])], "transport_socket": tls(cert)}
            )
        bootstrap = {
            "static_resources": {
                "listeners": [
                    {
                        "name": "https",
                        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                        "filter_chains": chains,
                    }
                ],
                "clusters": [
                    {
                        "name": "up",
                        "type": "STATIC",
                        "connect_timeout": "5s",
                        "load_assignment": {
                            "cluster_name": "up",
                            "endpoints": [
                                {
                                    "lb_endpoints": [
                                        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.upstream.port}}}}
                                    ]
                                }
                            ],
                        },
                    }
                ],
            },
            "layered_runtime": {
                "layers": [{"name": "static", "static_layer": {"overload": {"global_downstream_max_connections": 60000}}}]
            },
        }
        (d / "envoy.json").write_text(json.dumps(bootstrap))
        proc = self.spawn(
            [str(ENVOY), "-c", str(d / "envoy.json"), "--concurrency", "1", "--disable-hot-restart", "-l", "warning"],
            d / "envoy.log",
        )
        return Running(self.name, proc, port, d)


class Floor(Proxy):
    """The reference: the smallest pingora + rustls proxy (benches/floor/main.rs)."""

    name = "pingora-floor"

    def __init__(self, *args, binary: Path, **kw):
        super().__init__(*args, **kw)
        self.binary = binary

    def start(self, setup: Setup) -> Running:
        d = self.fresh_dir()
        port = free_port()
        cert = self.certs[setup.cert]
        argv = [str(self.binary), f"127.0.0.1:{port}", self.upstream.addr(), str(cert.crt), str(cert.key)]
        return Running(self.name, self.spawn(argv, d / "floor.log"), port, d)


class Direct(Proxy):
    """The reference: the load generator talking to the upstream itself (plain HTTP)."""

    name = "direct"

    def start(self, setup: Setup) -> Running:
        r = Running(self.name, self.upstream.proc, self.upstream.port, self.run_dir)
        r.url = lambda path="/": f"http://127.0.0.1:{self.upstream.port}{path}"  # type: ignore[method-assign]
        return r


# --------------------------------------------------------------------------------------------
# Load generators


def parse_wrk(out: str) -> dict:
    m = re.search(r"^JSON (\{.*\})$", out, re.M)
    if not m:
        raise RuntimeError(f"wrk output not understood: {out[-2000:]}")
    j = json.loads(m.group(1))
    secs = j["duration_us"] / 1e6
    return {
        "requests": j["requests"],
        "errors": j["errors"],
        "rps": j["requests"] / secs,
        "mb_per_s": j["bytes"] / secs / 1e6,
        "p50_ms": j["p50"] / 1000,
        "p99_ms": j["p99"] / 1000,
        "p999_ms": j["p999"] / 1000,
        "duration_s": secs,
    }


WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('JSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors":%d,"p50":%d,"p99":%d,"p999":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"""


def wrk(url: str, connections: int, duration: float) -> dict:
    script = OUT / "wrk-report.lua"
    script.write_text(WRK_LUA)
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "-s", str(script)]
    out, _ = run_tool(argv + [url], duration + 60)
    return parse_wrk(out)


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50_ms": None, "p99_ms": None, "p999_ms": None}
    values = sorted(values)

    def pick(q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))]

    return {"p50_ms": pick(0.5), "p99_ms": pick(0.99), "p999_ms": pick(0.999)}


def parse_h2load(out: str, log_file: Path | None) -> dict:
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s, ([\d.]+)([KMG]?B)/s", out)
    r = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
    if not m or not r:
        raise RuntimeError(f"h2load output not understood: {out[-2000:]}")
    secs = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    unit = {"B": 1, "KB": 1024, "MB": 1 << 20, "GB": 1 << 30}[m.group(5)]
    result = {
        "requests": int(r.group(4)),
        "errors": int(r.group(5)),
        "rps": float(m.group(3)),
        "mb_per_s": float(m.group(4)) * unit / 1e6,
        "duration_s": secs,
    }
    connect = re.search(r"time for connect:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    if connect:
        result["connect_mean_ms"] = float(connect.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[connect.group(2)]
    if log_file is not None:
        times = []
        for line in log_file.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == 3 and parts[1].startswith("2"):
                times.append(int(parts[2]) / 1000)
        result.update(percentiles(times))
    return result


def arrivals(url: str, rate: int, duration: float) -> dict:
    """rate new HTTP/1.1 connections per second, one request each, for duration (h2load -r)."""
    n = max(1, int(rate * duration))
    per_tick = max(1, round(rate / 10))
    return h2load(url, ["--h1", f"-n{n}", f"-c{n}", f"-r{per_tick}", "--rate-period=100ms"], duration + 60)


def bench_load_argv(binary: Path, port: int, host: str, rate: float, connections: int, seconds: float, log_file: Path, plain: bool = False) -> list[str]:
    """benches/load: keep-alive HTTP/1.1 requests at a fixed rate, arrivals evenly spaced over the
    connections; over TLS, or without it (plain) for the reference that loads the upstream."""
    argv = [str(binary), f"127.0.0.1:{port}", host, str(rate), str(connections), str(seconds), str(log_file)]
    return argv + (["plain"] if plain else [])


def parse_bench_load(out: str, log_file: Path, seconds: float) -> dict:
    """bench-load's JSON summary (its last line) and its log, in h2load's format."""
    try:
        summary = json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"bench-load output not understood: {out[-2000:]}") from None
    times, failed = [], 0
    for line in log_file.read_text().splitlines():
        _, status, took_us = line.split("\t")
        if status.startswith("2"):
            times.append(int(took_us) / 1000)
        else:
            failed += 1
    return {
        "requests": len(times),
        "errors": summary["errors"] + failed,
        "rps": len(times) / seconds,
        "duration_s": seconds,
        "client_connects": summary["connects"],
        **percentiles(times),
    }


def h2load(url: str, args: list[str], timeout: float, log_file: Path | None = None) -> dict:
    argv = ["h2load", "-t1", *args]
    if log_file is not None:
        argv.append(f"--log-file={log_file}")
    out, _ = run_tool(argv + [url], timeout)
    return parse_h2load(out, log_file)


# --------------------------------------------------------------------------------------------
# asyncio clients: many hosts (S5), idle connections (S7)


async def one_request(port: int, host: str | None, ctx: ssl.SSLContext, keep: bool = False):
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=host)
    writer.write(f"GET / HTTP/1.1\r\nHost: {host or '127.0.0.1'}\r\n{'' if keep else 'Connection: close'}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    if length:
        await reader.readexactly(int(length.group(1)))
    elif re.search(rb"(?i)\r\ntransfer-encoding: *chunked", head):
        await reader.readuntil(b"0\r\n\r\n")
    if keep:
        return status, (reader, writer)
    writer.close()
    return status, None


async def fixed_rate_hosts(port: int, hosts: list[str], rate: float, duration: float) -> dict:
    """New TLS connection per request to a random host, at a fixed arrival rate (open loop)."""
    ctx = insecure_context(["http/1.1"])
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    total = int(rate * duration)

    async def one(at: float):
        nonlocal errors
        await asyncio.sleep(max(0, at - loop.time()))
        try:
            status, _ = await asyncio.wait_for(one_request(port, random.choice(hosts), ctx), 10)
            if status == 200:
                latencies.append((loop.time() - at) * 1000)  # from the intended start
            else:
                errors += 1
        except Exception:
            errors += 1

    await asyncio.gather(*(one(start + i / rate) for i in range(total)))
    return {"requests": len(latencies), "errors": errors, "rps": len(latencies) / duration, **percentiles(latencies)}


def hold_idle(port: int, count: int, settle: float, measure) -> dict:
    """Opens count TLS keep-alive connections one after the other, one request each, and
    measures while all of them are idle. Plain blocking sockets: an asyncio TLS transport
    costs the client about 300 KiB per connection."""
    held = []
    errors = 0
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    deadline = time.monotonic() + 60 + count / 50
    for _ in range(count):
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(held)} of {count} connections opened in time")
        try:
            raw = connect(port, 10)
            conn = PROBE_CTX.wrap_socket(raw)
            conn.sendall(request)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    raise OSError("closed")
                head += chunk
            if not head.startswith(b"HTTP/1.1 200"):
                raise OSError(head[:40])
            held.append(conn)  # the 3-byte body is in head or in flight; it is never read
        except OSError:
            errors += 1
    time.sleep(settle)
    result = measure(len(held))
    still_open = 0
    for conn in held:
        try:
            conn.setblocking(False)
            still_open += conn.recv(1) != b""
        except (ssl.SSLWantReadError, BlockingIOError):
            still_open += 1
        except OSError:
            pass
    for conn in held:
        conn.close()
    return {"held": len(held), "still_open": still_open, "errors": errors, **result}


# --------------------------------------------------------------------------------------------
# Scenarios


@dataclass
class Options:
    smoke: bool
    duration: float
    warmup: float
    rounds: int
    hosts: int
    changes: int
    idle: int
    proxies: list[str]


def measure(running: Running, upstream: Upstream, body) -> dict:
    """Runs body() (the load) and adds proxy CPU, memory, upstream connections and CPU shares."""
    pids = running.refresh_pids()
    accepted = upstream.accepted()
    global _window
    (user0, kernel0), times0, gen = cpu_split(pids), cpu_times(), ChildCpu()
    _window = {"pids": pids, "end": None}
    try:
        result = body()
        (user1, kernel1), times1 = _window["end"] or (cpu_split(pids), cpu_times())
    finally:
        _window = None
    cpu0, cpu1 = user0 + kernel0, user1 + kernel1
    result.update(busy_share(times0, times1))
    result["proxy_cpu_s"] = round(cpu1 - cpu0, 3)
    result["generator_cpu_s"] = round(gen.seconds(), 3)
    if result.get("requests"):
        result["cpu_us_per_req"] = (cpu1 - cpu0) * 1e6 / result["requests"]
        # The split, as the kernel accounts it (by ticks): what a proxy spends in the kernel
        # (sockets, TCP) bounds how far below another proxy's CPU per request it can go.
        result["user_us_per_req"] = (user1 - user0) * 1e6 / result["requests"]
        result["kernel_us_per_req"] = (kernel1 - kernel0) * 1e6 / result["requests"]
    if result.get("mb_per_s"):
        result["cpu_s_per_gb"] = (cpu1 - cpu0) / (result["mb_per_s"] * result["duration_s"] / 1000)
    result["upstream_conns"] = upstream.accepted() - accepted - 1
    result["rss_peak_mib"] = memory_kib(pids, "VmHWM") / 1024
    return result


class Bench:
    def __init__(self, opts: Options, pylon_binary: Path):
        self.opts = opts
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.run_dir = OUT / f"run-{stamp}"
        self.run_dir.mkdir(parents=True)
        cert_dir = self.run_dir / "certs"
        self.certs = {
            "ecdsa": CertFiles.write(cert_dir, "ecdsa", *make_cert(["bench.test", "*.bench.test"], "ecdsa")),
            "rsa": CertFiles.write(cert_dir, "rsa", *make_cert(["bench.test", "*.bench.test"], "rsa")),
        }
        self.upstream = Upstream(self.run_dir)
        args = (self.upstream, self.certs, self.run_dir)
        self.proxies: dict[str, Proxy] = {
            "pylon": Pylon(*args, binary=pylon_binary),
            "nginx": Nginx(*args),
            "haproxy": Haproxy(*args),
            "envoy": Envoy(*args),
            "nginx-null": NginxNull(*args),
            "pingora-floor": Floor(*args, binary=pylon_binary.parent / "examples" / "pingora-floor"),
            "direct": Direct(*args),
        }
        # S6's background load (benches/load): h2load does not reconnect after a reload.
        self.bench_load = pylon_binary.parent / "examples" / "bench-load"
        self.results: list[dict] = []

    # One measured run of one proxy.
    def run(self, scenario: str, proxy_name: str, round_no: int, setup: Setup, load, ready_host=None, ready_timeout=60.0):
        proxy = self.proxies[proxy_name]
        # Probed before the proxy starts: some proxies take seconds of CPU to load 10 000 hosts.
        probe = speed_probe()
        running = proxy.start(setup)
        record = {"scenario": scenario, "proxy": proxy_name, "round": round_no, "load_before": loadavg(),
                  "speed_probe_ms": probe}
        try:
            if proxy_name != "direct":
                wait_serving(running.port, ready_host, running.proc, ready_timeout)
            record.update(load(running, proxy))
        except Exception as e:  # reported, and the other runs go on
            record["failure"] = str(e)[:500]
            log(f"  {scenario} {proxy_name}: FAILED {e}")
        finally:
            if proxy_name != "direct":
                stop(running.proc)
        self.results.append(record)
        shown = {k: record[k] for k in ("rps", "cpu_us_per_req", "p99_ms", "rss_peak_mib", "errors") if k in record}
        log(f"  {scenario} {proxy_name} round {round_no}: " + ", ".join(f"{k}={fmt(v)}" for k, v in shown.items()))
        return record

    def alternate(self, scenario: str, names: list[str], setup: Setup, load, **kw):
        for round_no in range(1, self.opts.rounds + 1):
            for name in names:
                if name in self.opts.proxies or name in REFERENCES:
                    self.run(scenario, name, round_no, setup, load, **kw)

    def steady(self, gen):
        """A load: warm-up with gen(warmup), then gen(duration) measured."""
        o = self.opts

        def load(running, proxy):
            gen(running, o.warmup)
            return measure(running, self.upstream, lambda: gen(running, o.duration))

        return load

    # S1: keep-alive HTTP/1.1, small responses.
    def s1(self):
        o = self.opts
        names = COMPARATORS + REFERENCES
        log("S1a keep-alive HTTP/1.1, maximum rate (wrk -c64)")
        self.alternate("S1a", names, Setup(), self.steady(lambda r, d: wrk(r.url(), 64, d)))
        rate = 500 if o.smoke else 5000
        log(f"S1b keep-alive HTTP/1.1, fixed rate {rate}/s (bench-load, 64 connections, arrivals evenly spaced)")

        def fixed(r, d):
            # Not h2load --rps: it sends all 64 connections' requests in the same instant, and
            # the p99 it reports is then a request's place in that burst (the upstream alone,
            # with no proxy, read a higher p99 than nginx in front of it).
            seconds = max(1, round(d))
            log_file = self.run_dir / "bench-load.log"
            argv = bench_load_argv(self.bench_load, r.port, "bench.test", rate, 64, seconds, log_file, plain=r.name == "direct")
            out, _ = run_tool(argv, seconds + 60)
            return parse_bench_load(out, log_file, seconds)

        self.alternate("S1b", names, Setup(), self.steady(fixed))

    # S2: a new TLS connection per request, no resumption. h2load opens one connection per
    # request at a fixed arrival rate and never resumes a session (wrk would: it reuses sessions).
    def s2(self):
        o = self.opts
        names = COMPARATORS + ["nginx-null", "pingora-floor"]
        for kind, rate in (("ecdsa", 600), ("rsa", 300)):
            rate = rate // 10 if o.smoke else rate
            log(f"S2 new connection per request, {kind}: CPU per handshake at {rate}/s (h2load -r)")
            self.alternate(f"S2-{kind}-fixed", names, Setup(cert=kind), self.steady(lambda r, d, rate=rate: arrivals(r.url(), rate, d)))
            log(f"S2 new connection per request, {kind}: the knee (arrival rate raised by 25 % until it is not met)")
            self.alternate(f"S2-{kind}-knee", names, Setup(cert=kind), lambda r, p, rate=rate: self.knee(r, rate))

    def knee(self, running: Running, start: int) -> dict:
        """The highest arrival rate of new connections served in full (>= 97 % of the offered rate,
        no error), raising the rate by 25 % per step. When even the starting rate is not served
        (a slow machine, or a generator short of CPU), the rate is lowered by 20 % per step
        instead, down to an eighth of it, and the first rate served is the knee."""
        o = self.opts
        step_s = 0.5 if o.smoke else 2.0
        arrivals(running.url(), start, step_s)  # warm-up
        rate, best, steps, down = start, None, 0, False
        while steps < (2 if o.smoke else 30):
            steps += 1
            r = measure(running, self.upstream, lambda: arrivals(running.url(), rate, step_s))
            if not r["errors"] and r["rps"] >= 0.97 * rate:
                best = {**r, "knee_per_s": rate, "knee_below_start": down}
                if down:
                    break
                rate = int(rate * 1.25)
            elif best is not None or int(rate * 0.8) < start / 8:
                break
            else:
                down, rate = True, int(rate * 0.8)
        if best is None:
            raise RuntimeError(f"not even {rate} new connections/s were served")
        return best

    # S3: HTTP/2 multiplexed.
    def s3(self):
        log("S3 HTTP/2, 16 connections x 32 streams (h2load -c16 -m32)")

        def h2(r, d):
            return h2load(r.url(), ["-c16", "-m32", f"-D{max(1, round(d))}"], d + 60, self.run_dir / "h2load.log")

        self.alternate("S3", COMPARATORS + ["nginx-null", "pingora-floor"], Setup(), self.steady(h2))

    # S4: 1 MiB responses.
    def s4(self):
        log("S4 1 MiB responses: HTTP/1.1 (wrk -c16) and HTTP/2 (h2load -c4 -m8)")
        self.alternate("S4-h1", COMPARATORS + ["direct"], Setup(), self.steady(lambda r, d: wrk(r.url("/1m.bin"), 16, d)))

        def h2(r, d):
            return h2load(r.url("/1m.bin"), ["-c4", "-m8", f"-D{max(1, round(d))}"], d + 60)

        self.alternate("S4-h2", COMPARATORS, Setup(), self.steady(h2))

    # S5: many hosts, each with its own certificate.
    def s5(self):
        o = self.opts
        hosts = host_certs(o.hosts)
        names = [host_name(i) for i in range(len(hosts))]
        rate = 50 if o.smoke else 200
        log(f"S5 {len(hosts)} hosts with their own certificates: time to serve, memory, random-host handshakes at {rate}/s")

        def load(running, proxy):
            served_after = time.monotonic() - running.started
            asyncio.run(fixed_rate_hosts(running.port, names, rate, o.warmup))
            result = measure(running, self.upstream, lambda: asyncio.run(fixed_rate_hosts(running.port, names, rate, o.duration)))
            result["time_to_serve_s"] = served_after
            result["rss_mib"] = memory_kib(running.pids, "VmRSS") / 1024
            return result

        self.alternate("S5", COMPARATORS, Setup(hosts=hosts), load, ready_host=names[-1], ready_timeout=1800)

    # S6: configuration changes under load.
    def s6(self):
        o = self.opts
        hosts = host_certs(o.hosts)
        rate = 200 if o.smoke else 1000
        steady_s = 1 if o.smoke else 10
        log(f"S6 changes every second for {o.changes} s with {len(hosts)} hosts, background load {rate}/s")
        new_certs = [CertFiles.write(self.run_dir / "s6-certs", f"n{k}", *make_cert([f"n{k}.bench.test"], "ecdsa")) for k in range(o.changes // 3 + 1)]
        rotated = [CertFiles.write(self.run_dir / "s6-certs", f"r{k}", *make_cert([host_name(k + 1)], "ecdsa")) for k in range(o.changes // 3 + 1)]

        def load(running, proxy):
            # A reload that takes longer than a second (nginx parses all 10 000 certificates
            # again) cannot keep up with one change per second: such a proxy gets a few changes,
            # each given the time it needs, and the report says how many.
            changes = min(o.changes, proxy.s6_changes or o.changes)
            # (A smoke run has 200 hosts: every proxy reloads within the second.)
            interval, budget = (1, 30) if o.smoke else (proxy.s6_interval, proxy.s6_timeout)
            # Steady state is measured on both sides of the changes and pooled: the p99 of
            # 1 000 requests/s drifts by half over a minute on this machine, and one window
            # before the changes alone made that drift part of the ratio.
            total = steady_s + changes * interval + steady_s + 1
            log_file = running.dir / "background.log"
            # 16 keep-alive connections, arrivals evenly spaced, a closed connection opened
            # again for the next request; h2load's log format.
            argv = bench_load_argv(self.bench_load, running.port, host_name(0), rate, S6_CONNECTIONS, total, log_file)
            pids = running.refresh_pids()
            cpu0 = cpu_seconds(pids)
            bg = subprocess.Popen(["taskset", "-c", str(LOAD_CPU), *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            probe_errors = 0

            def probe_without_change(count: int) -> None:
                """count new TLS connections to a host no change touches, 2 ms apart."""
                nonlocal probe_errors
                for _ in range(count):
                    try:
                        https_get(running.port, host_name(1), timeout=2)
                    except OSError:
                        probe_errors += 1
                    time.sleep(0.002)

            def probing_only(seconds: float) -> None:
                # The steady state carries the same probing as the changes (S6_STEADY_PROBES new
                # TLS connections, 2 ms apart, once a second) without a change, so that the
                # ratio to it measures what the changes cost, not what measuring them costs.
                until = time.monotonic() + seconds
                while time.monotonic() < until:
                    tick = time.monotonic()
                    probe_without_change(S6_STEADY_PROBES)
                    time.sleep(max(0, min(tick + 1.0, until) - time.monotonic()))

            t_start = time.time()
            probing_only(steady_s)
            t_changes = time.time()
            latencies = {"add": [], "remove": [], "rotate": []}
            in_order: list[float] = []  # every change's latency, for the raw results
            change_times: list[float] = []  # wall clock, as h2load's log
            # The same probing without a change, half an interval after each change: how much
            # of the background's p99 near a change is the probing itself (new TLS connections).
            probe_times: list[float] = []
            for k in range(changes):
                tick = time.monotonic()
                kind = ("add", "remove", "rotate")[k % 3]
                cert = new_certs[k // 3]
                began = time.monotonic()
                change_times.append(time.time())
                if kind == "add":
                    host, want_status, want_cert = f"{cert.name}.bench.test", 200, der_sha256_of_pem(cert.crt.read_bytes())
                    proxy.add_host(running, Setup(hosts=hosts), cert)
                elif kind == "remove":
                    host, want_status, want_cert = f"{cert.name}.bench.test", 404, None
                    proxy.remove_host(running, Setup(hosts=hosts), cert)
                else:
                    rot = rotated[k // 3]
                    host, want_status, want_cert = host_name(k // 3 + 1), 200, der_sha256_of_pem(rot.crt.read_bytes())
                    proxy.rotate(running, Setup(hosts=hosts), k // 3 + 1, rot)
                probes = 0
                while True:
                    probes += 1
                    try:
                        status, got = https_get(running.port, host, timeout=2)
                        if status == want_status and (want_cert is None or got == want_cert):
                            break
                    except OSError:
                        probe_errors += 1
                    if time.monotonic() - began > budget:
                        raise RuntimeError(f"change {kind} {host} not served after {budget}s")
                    time.sleep(0.002)
                latencies[kind].append((time.monotonic() - began) * 1000)
                in_order.append(round(latencies[kind][-1], 1))
                time.sleep(max(0, interval / 2 - (time.monotonic() - tick)))
                probe_times.append(time.time())
                probe_without_change(probes)
                time.sleep(max(0, interval - (time.monotonic() - tick)))
            t_end = time.time()
            probing_only(steady_s)
            t_after = time.time()
            out, _ = bg.communicate(timeout=total + 60)
            cpu1 = cpu_seconds(pids)
            if bg.returncode != 0:
                raise RuntimeError(f"the background load failed: {out[-2000:]}")
            summary = json.loads(out.strip().splitlines()[-1])
            steady_lat, after_lat, change_lat, near_lat, probe_lat, between_lat = [], [], [], [], [], []

            def near(times: list[float], t: float) -> bool:
                last = bisect.bisect_right(times, t) - 1
                return last >= 0 and t - times[last] < S6_NEAR_S

            for line in log_file.read_text().splitlines():
                start_us, status, dur = line.split("\t")
                t = int(start_us) / 1e6
                if t < t_start + 0.5:
                    continue
                ms = int(dur) / 1000
                (steady_lat if t < t_changes else change_lat if t < t_end else after_lat if t < t_after else []).append(ms)
                if t_changes <= t < t_end:
                    # Interleaved in time, so slow drifts of the machine cancel out.
                    (near_lat if near(change_times, t) else probe_lat if near(probe_times, t) else between_lat).append(ms)
            all_changes = latencies["add"] + latencies["remove"] + latencies["rotate"]
            result = {
                "changes": changes,
                "change_p50_ms": percentiles(all_changes)["p50_ms"],
                "change_p99_ms": percentiles(all_changes)["p99_ms"],
                "change_max_ms": max(all_changes),
                # (The p99 of 60 changes is their maximum: the list shows which one it was.)
                "change_ms": in_order,
                **{f"{k}_p50_ms": percentiles(v)["p50_ms"] for k, v in latencies.items()},
                "errors": summary["errors"] + probe_errors,
                "background_requests": summary["requests"],
                # Connections the proxy closed under the background load (nginx's reloads do),
                # and requests sent again because their kept-alive connection had just closed.
                "background_reconnects": summary["connects"] - S6_CONNECTIONS,
                "background_retries": summary["retries"],
                "steady_before_p99_ms": percentiles(steady_lat)["p99_ms"],
                "steady_after_p99_ms": percentiles(after_lat)["p99_ms"],
                "steady_p99_ms": percentiles(steady_lat + after_lat)["p99_ms"],
                "changes_p99_ms": percentiles(change_lat)["p99_ms"],
                "proxy_cpu_s": round(cpu1 - cpu0, 3),
                "rss_peak_mib": memory_kib(tree(running.proc.pid), "VmHWM") / 1024,
            }
            if result["steady_p99_ms"]:
                result["p99_changes_over_steady"] = result["changes_p99_ms"] / result["steady_p99_ms"]
            if near_lat and probe_lat and between_lat:
                result["near_change_p99_ms"] = percentiles(near_lat)["p99_ms"]
                result["near_probe_p99_ms"] = percentiles(probe_lat)["p99_ms"]
                result["between_changes_p99_ms"] = percentiles(between_lat)["p99_ms"]
                if result["between_changes_p99_ms"]:
                    result["p99_near_over_between"] = result["near_change_p99_ms"] / result["between_changes_p99_ms"]
                if result["near_probe_p99_ms"]:
                    result["p99_near_over_probe"] = result["near_change_p99_ms"] / result["near_probe_p99_ms"]
            return result

        self.alternate("S6", ["pylon", "nginx"], Setup(hosts=hosts), load, ready_host=host_name(len(hosts) - 1), ready_timeout=1800)

    # S7: idle TLS keep-alive connections.
    def s7(self):
        o = self.opts
        log(f"S7 {o.idle} idle TLS keep-alive connections: memory per connection")

        def load(running, proxy):
            hold_idle(running.port, 16, 0.1, lambda held: {})
            pids = running.refresh_pids()
            before = memory_kib(pids, "VmRSS")

            def after(held: int):
                now = memory_kib(pids, "VmRSS")
                return {"rss_before_mib": before / 1024, "rss_idle_mib": now / 1024, "kib_per_conn": (now - before) / max(held, 1)}

            # HAProxy reserves two descriptors per connection: under a low hard limit on open
            # files it accepts fewer; the figure is per connection held.
            count = min(o.idle, haproxy_maxconn() - 100) if proxy.name == "haproxy" else o.idle
            return hold_idle(running.port, count, 2.0 if not o.smoke else 0.5, after)

        self.alternate("S7", COMPARATORS, Setup(), load)


    # IR: instructions per request, counted by valgrind's callgrind in a run of a fixed number of
    # requests. CPU time on a shared VM swings by ±20 % between runs; instruction counts repeat
    # within about 1 %, so they settle what the timed scenarios cannot, and they say which
    # functions the instructions are spent in. They leave out the kernel's work (system calls,
    # TCP) and what a cache miss costs. Envoy is left out: it starts too slowly under valgrind.
    def ir(self):
        o = self.opts
        requests, handshakes, large = (100, 10, 4) if o.smoke else (4000, 200, 40)
        log(f"IR instructions per request under callgrind: {requests} keep-alive HTTP/1.1 requests, "
            f"{handshakes} new TLS connections (ECDSA), {requests} HTTP/2 streams, {large} 1 MiB responses "
            "over HTTP/1.1 and over HTTP/2")
        workloads = [
            ("IR-h1", requests, lambda r, k: h2load(r.url(), ["--h1", "-c16", f"-n{k}"], 900)),
            ("IR-ecdsa", handshakes, lambda r, k: h2load(r.url(), ["--h1", f"-c{k}", f"-n{k}", "-r5", "--rate-period=100ms"], 900)),
            ("IR-h2", requests, lambda r, k: h2load(r.url(), ["-c4", "-m32", f"-n{k}"], 900)),
            ("IR-1m-h1", large, lambda r, k: h2load(r.url("/1m.bin"), ["--h1", "-c2", f"-n{k}"], 900)),
            ("IR-1m-h2", large, lambda r, k: h2load(r.url("/1m.bin"), ["-c1", "-m4", f"-n{k}"], 900)),
        ]
        for name in ["pylon", "nginx", "haproxy", "pingora-floor", "nginx-null"]:
            if name not in o.proxies and name not in REFERENCES:
                continue
            proxy = self.proxies[name]
            out = self.run_dir / "callgrind" / name
            out.mkdir(parents=True)
            proxy.wrap = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/callgrind.out.%p"]
            running = proxy.start(Setup())  # one start for all workloads: valgrind starts slowly
            proxy.wrap = []
            try:
                started = None
                try:
                    wait_serving(running.port, None, running.proc, 300)
                except Exception as e:
                    started = e
                for scenario, count, gen in workloads:
                    if name == "nginx-null" and "1m" in scenario:
                        continue  # it answers "ok" to every path
                    record = {"scenario": scenario, "proxy": name, "round": 1, "load_before": loadavg(),
                              "speed_probe_ms": speed_probe()}
                    try:
                        if started is not None:
                            raise started
                        record.update(counted(gen, count, out, scenario)(running, proxy))
                    except Exception as e:  # reported, and the other runs go on
                        record["failure"] = str(e)[:500]
                        log(f"  {scenario} {name}: FAILED {e}")
                    self.results.append(record)
                    if "ir_per_req" in record:
                        log(f"  {scenario} {name}: {fmt(record['ir_per_req'])} instructions per request")
            finally:
                stop(running.proc)


def callgrind_command(pids: list[int], command: str, port: int) -> None:
    """Sends a callgrind command ("zero", "dump") to each process through vgdb. Where ptrace is
    not allowed, vgdb cannot wake a process that waits in a system call: the command then runs
    when the process next runs, so an idle proxy is woken with a bare connection."""
    for pid in pids:
        proc = subprocess.Popen(["vgdb", f"--pid={pid}", command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                out, _ = proc.communicate(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    proc.kill()
                    raise RuntimeError(f"vgdb {command} {pid}: no answer")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                except OSError:
                    pass
        if proc.returncode != 0 or "error" in out.lower():
            raise RuntimeError(f"vgdb {command} {pid}: {out.strip()[:300]}")


def callgrind_self_costs(dump: Path) -> tuple[int, dict[str, int]]:
    """The total and each function's own instructions (not its callees') in a callgrind dump.
    (The format: "fn=(id) name" starts a function, cost lines are "position Ir", and the cost
    line after "calls=" is a callee's inclusive cost.)"""
    names: dict[str, str] = {}
    costs: dict[str, int] = {}
    total, fn, after_calls = 0, None, False

    def resolve(s: str) -> str:
        m = re.match(r"\((\d+)\)(?: (.*))?$", s.strip())
        if not m:
            return s.strip()
        if m.group(2) is not None:
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), s.strip())

    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith("fn="):
            fn = resolve(line[3:])
        elif line.startswith("cfn="):
            resolve(line[4:])
        elif line.startswith("calls="):
            after_calls = True
        elif line.startswith(("totals:", "summary:")):
            total = int(line.split()[1])
        elif line[:1].isdigit() or line[:1] in "+-*":
            if after_calls:
                after_calls = False
                continue
            parts = line.split()
            if len(parts) >= 2 and fn is not None:
                costs[fn] = costs.get(fn, 0) + int(parts[1])
    if not total:
        raise RuntimeError(f"no totals in {dump}")
    return total, costs


def counted(gen, count: int, out: Path, name: str):
    """A load for IR: after a warm-up, count and then 2 x count requests, each with the proxy's
    counters zeroed before and dumped after. The difference of the two is the cost of count
    requests without what a run costs once (the load generator's connections and their TLS
    handshakes, unless each request is a connection of its own)."""

    def one(running, pids: list[int], k: int) -> tuple[dict, int, dict[str, int]]:
        callgrind_command(pids, "zero", running.port)
        result = gen(running, k)
        before = set(out.iterdir())
        callgrind_command(pids, "dump", running.port)
        dumps = sorted(set(out.iterdir()) - before)
        if not dumps:
            raise RuntimeError(f"callgrind wrote no dump in {out}")
        total, costs = 0, {}
        for dump in dumps:
            t, c = callgrind_self_costs(dump)
            total += t
            for f, v in c.items():
                costs[f] = costs.get(f, 0) + v
        return result, total, costs

    def load(running, proxy):
        gen(running, max(min(32, count), count // 10))
        pids = running.refresh_pids()
        small, total_a, costs_a = one(running, pids, count)
        result, total_b, costs_b = one(running, pids, 2 * count)
        requests = result["requests"] - small["requests"]
        if requests <= 0:
            raise RuntimeError(f"{small['requests']} and {result['requests']} requests served")
        instructions = total_b - total_a
        costs = {f: v - costs_a.get(f, 0) for f, v in costs_b.items()}
        result["errors"] += small["errors"]
        result["requests"] = requests
        result["instructions"] = instructions
        result["ir_per_req"] = instructions / requests
        # Copies, apart: callgrind counts each byte of a long copy (`rep movsb`) as one
        # instruction, so a proxy that moves large structures (pingora moves a 14 KiB request
        # future onto the heap per request) or copies bodies looks costlier here than in CPU time.
        copies = sum(v for f, v in costs.items() if f.startswith(("__memcpy", "__memmove", "memcpy", "memmove")))
        result["copy_ir_per_req"] = copies / requests
        result["ir_less_copies_per_req"] = (instructions - copies) / requests
        # The functions that spent the most, for reading later; and pylon's own share (functions
        # of its own, not the engine's generic functions that it instantiates).
        top = sorted(costs.items(), key=lambda fv: -fv[1])[:80]
        (out / f"{name}-top.txt").write_text("".join(f"{v / requests:12.0f} {100 * v / instructions:6.2f}%  {f}\n" for f, v in top))
        crate = {"pylon": "pylon::", "pingora-floor": "pingora_floor::"}.get(proxy.name)
        if crate:
            result["own_share"] = sum(v for f, v in costs.items() if f.startswith((crate, "<" + crate))) / instructions
        return result

    return load


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


# --------------------------------------------------------------------------------------------
# Report

# (scenario, metric, better, target ratio pylon/nginx or None)
HEADLINES = [
    ("S1a", "rps", "higher", None),
    ("S1a", "cpu_us_per_req", "lower", None),
    ("S1b", "cpu_us_per_req", "lower", 0.8),
    ("S1b", "p99_ms", "lower", 1.0),
    ("S2-ecdsa-fixed", "cpu_us_per_req", "lower", 0.6),
    ("S2-ecdsa-knee", "knee_per_s", "higher", None),
    ("S2-rsa-fixed", "cpu_us_per_req", "lower", 0.6),
    ("S2-rsa-knee", "knee_per_s", "higher", None),
    ("S3", "rps", "higher", 1.2),
    ("S3", "cpu_us_per_req", "lower", None),
    ("S4-h1", "mb_per_s", "higher", 0.9),
    ("S4-h1", "rss_peak_mib", "lower", None),
    ("S4-h2", "mb_per_s", "higher", 0.9),
    ("S5", "rss_mib", "lower", 0.25),
    ("S5", "time_to_serve_s", "lower", 0.2),
    ("S5", "p99_ms", "lower", None),
    ("S6", "change_p99_ms", "lower", None),
    ("S6", "errors", "lower", None),
    ("S6", "p99_changes_over_steady", "lower", None),
    ("S6", "p99_near_over_between", "lower", None),
    ("S6", "p99_near_over_probe", "lower", None),
    ("S7", "kib_per_conn", "lower", 0.5),
    ("IR-h1", "ir_per_req", "lower", None),
    ("IR-h1", "ir_less_copies_per_req", "lower", None),
    ("IR-ecdsa", "ir_per_req", "lower", None),
    ("IR-ecdsa", "ir_less_copies_per_req", "lower", None),
    ("IR-h2", "ir_per_req", "lower", None),
    ("IR-h2", "ir_less_copies_per_req", "lower", None),
    ("IR-1m-h1", "ir_per_req", "lower", None),
    ("IR-1m-h1", "ir_less_copies_per_req", "lower", None),
    ("IR-1m-h2", "ir_per_req", "lower", None),
    ("IR-1m-h2", "ir_less_copies_per_req", "lower", None),
]


# Targets on pylon's own figures: (scenario, metric, better, target, what it is).
ABSOLUTE_TARGETS = [
    ("S6", "change_p99_ms", "lower", 100, "change-to-served p99 (ms)"),
    ("S6", "errors", "lower", 0, "failed requests during changes"),
    ("S6", "p99_changes_over_steady", "lower", 1.2, "background p99 during changes / steady p99"),
    ("S6", "p99_near_over_probe", "lower", 1.2, "background p99 after a change / after the same probing without a change"),
]


def medians(results: list[dict]) -> dict[tuple[str, str], dict[str, tuple[float, float, float]]]:
    """(scenario, proxy) -> metric -> (median, min, max) over the rounds that did not fail."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        if "failure" not in r:
            grouped.setdefault((r["scenario"], r["proxy"]), []).append(r)
    out = {}
    for key, runs in grouped.items():
        metrics = {}
        for m in runs[0]:
            values = [r[m] for r in runs if isinstance(r.get(m), (int, float)) and not isinstance(r.get(m), bool)]
            if values and m not in ("round",):
                metrics[m] = (statistics.median(values), min(values), max(values))
        out[key] = metrics
    return out


def report(results: list[dict], opts: Options, meta: dict) -> str:
    med = medians(results)
    scenarios = list(dict.fromkeys(r["scenario"] for r in results))
    timed = [s for s in scenarios if not s.startswith("IR")]
    shape = f"{opts.rounds} round(s) of {opts.duration:g} s" if timed else "one run per proxy"
    lines = [f"pylon benchmark, {meta['date']}, {meta['host']}, {shape}"
             + (" (SMOKE: figures meaningless)" if opts.smoke else ""), ""]
    probes = [r["speed_probe_ms"] for r in results if "speed_probe_ms" in r]
    if "speed_probe_ms" in meta:
        spread = f"; before each run {min(probes):g}–{max(probes):g} ms" if probes else ""
        lines += [f"Machine speed probe (SHA-256 of 16 MiB on CPU {PROXY_CPU}; lower is faster): "
                  f"{meta['speed_probe_ms']:g} ms at the start, {meta.get('speed_probe_end_ms', 0):g} ms at the end"
                  f"{spread}. Load average at the start: {meta['load_before']:g}.", ""]
    lines += ["## Ratios pylon / comparator (median of rounds)", ""]
    others = [p for p in COMPARATORS[1:] if p in opts.proxies]
    lines.append("| scenario | metric | better | " + " | ".join(f"pylon/{p}" for p in others) + " | target vs nginx |")
    lines.append("|---|---|---|" + "---|" * len(others) + "---|")
    for scenario, metric, better, target in HEADLINES:
        mine = med.get((scenario, "pylon"), {}).get(metric)
        if mine is None:
            continue
        cells = []
        for p in others:
            theirs = med.get((scenario, p), {}).get(metric)
            if theirs is None:
                cells.append("n/a")
            elif theirs[0] == 0:
                cells.append("= 0" if mine[0] == 0 else "inf")
            else:
                cells.append(f"{mine[0] / theirs[0]:.2f}")
        t = ""
        if target is not None and med.get((scenario, "nginx"), {}).get(metric):
            ratio = mine[0] / med[(scenario, "nginx")][metric][0]
            ok = ratio <= target if better == "lower" else ratio >= target
            t = f"{'≤' if better == 'lower' else '≥'} {target} {'met' if ok else 'MISSED'}"
        lines.append(f"| {scenario} | {metric} | {better} | " + " | ".join(cells) + f" | {t} |")
    absolute = []
    for scenario, metric, better, target, what in ABSOLUTE_TARGETS:
        mine = med.get((scenario, "pylon"), {}).get(metric)
        if mine is None:
            continue
        ok = mine[0] <= target if better == "lower" else mine[0] >= target
        absolute.append(f"| {scenario} | {what} | {fmt(mine[0])} | {'≤' if better == 'lower' else '≥'} {target} "
                        f"{'met' if ok else 'MISSED'} |")
    if absolute:
        lines += ["", "## Absolute targets (pylon alone)", "", "| scenario | metric | pylon | target |", "|---|---|---|---|"]
        lines += absolute
    lines += ["", "## Absolute figures (median, min–max over rounds)", ""]
    columns = ["rps", "cpu_us_per_req", "user_us_per_req", "kernel_us_per_req", "p50_ms", "p99_ms", "p999_ms", "mb_per_s", "rss_peak_mib", "errors", "upstream_conns",
               "cpu0_busy", "cpu1_busy"]
    fixed_handshakes = ["rps", "cpu_us_per_req", "user_us_per_req", "kernel_us_per_req", "connect_mean_ms", "rss_peak_mib", "errors", "cpu0_busy", "cpu1_busy"]
    extra = {
        "S1b": ["rps", "cpu_us_per_req", "user_us_per_req", "kernel_us_per_req", "p50_ms", "p99_ms", "p999_ms", "rss_peak_mib", "errors", "client_connects", "upstream_conns",
                "cpu0_busy", "cpu1_busy"],
        "S5": ["time_to_serve_s", "rss_mib", "p99_ms", "errors", "cpu_us_per_req"],
        "S6": ["changes", "change_p50_ms", "change_p99_ms", "change_max_ms", "add_p50_ms", "remove_p50_ms", "rotate_p50_ms", "errors",
               "steady_before_p99_ms", "steady_after_p99_ms", "steady_p99_ms", "changes_p99_ms", "near_change_p99_ms", "near_probe_p99_ms", "between_changes_p99_ms", "background_reconnects", "background_retries", "rss_peak_mib"],
        "S7": ["held", "still_open", "rss_before_mib", "rss_idle_mib", "kib_per_conn", "errors"],
        "S2-ecdsa-knee": ["knee_per_s", "cpu_us_per_req", "connect_mean_ms", "rss_peak_mib", "cpu0_busy", "cpu1_busy"],
        **{f"IR-{w}": ["requests", "errors", "instructions", "ir_per_req", "copy_ir_per_req", "ir_less_copies_per_req", "own_share"] for w in ("h1", "ecdsa", "h2", "1m-h1", "1m-h2")},
        "S2-rsa-knee": ["knee_per_s", "cpu_us_per_req", "connect_mean_ms", "rss_peak_mib", "cpu0_busy", "cpu1_busy"],
    }
    for scenario in scenarios:
        cols = extra.get(scenario, fixed_handshakes if scenario.endswith("-fixed") else columns)
        lines.append(f"### {scenario}")
        lines.append("| proxy | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        for proxy in dict.fromkeys(r["proxy"] for r in results if r["scenario"] == scenario):
            m = med.get((scenario, proxy))
            if m is None:
                failure = next(r["failure"] for r in results if r["scenario"] == scenario and r["proxy"] == proxy)
                lines.append(f"| {proxy} | failed: {failure[:80]} |")
                continue
            cells = []
            for c in cols:
                if c not in m:
                    cells.append("")
                else:
                    v, lo, hi = m[c]
                    cells.append(fmt(v) if lo == hi else f"{fmt(v)} ({fmt(lo)}–{fmt(hi)})")
            lines.append(f"| {proxy} | " + " | ".join(cells) + " |")
        lines.append("")
    below = sorted({f"{r['scenario']}/{r['proxy']}" for r in results if r.get("knee_below_start")})
    if below:
        lines += ["Knee below the starting rate (searched downwards; look at cpu1_busy: the generator "
                  "may be what ran short): " + ", ".join(below), ""]
    failures = [r for r in results if "failure" in r]
    if failures:
        lines.append(f"{len(failures)} run(s) failed: " + "; ".join(f"{r['scenario']}/{r['proxy']}: {r['failure'][:120]}" for r in failures))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="every scenario for about a second, small sizes: proves the harness works")
    ap.add_argument("--scenario", default="S1,S2,S3,S4,S5,S6,S7,IR", help="comma-separated subset of S1..S7 and IR (instructions per request under callgrind)")
    ap.add_argument("--proxies", default=",".join(COMPARATORS), help="comma-separated subset of pylon,nginx,haproxy,envoy")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per run (default 10)")
    ap.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds before each run (default 3)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of alternation (default 3)")
    ap.add_argument("--hosts", type=int, default=10000, help="hosts for S5 and S6 (default 10000)")
    ap.add_argument("--changes", type=int, default=60, help="S6 changes, one per second (default 60)")
    ap.add_argument("--idle", type=int, default=10000, help="S7 idle connections (default 10000)")
    ap.add_argument("--pylon", default=str(ROOT / "target" / "release" / "pylon"), help="the pylon binary")
    ap.add_argument("--report", metavar="RESULTS_JSON", help="only print the report of an earlier run's results.json")
    a = ap.parse_args()
    if a.report:
        saved = json.loads(Path(a.report).read_text())
        o = saved["meta"]["options"]
        opts = Options(o["smoke"], o["duration"], o["warmup"], o["rounds"], o["hosts"], o["changes"], o["idle"],
                       o["proxies"].split(","))
        print(report(saved["results"], opts, saved["meta"]))
        return 0
    if a.smoke:
        a.duration, a.warmup, a.rounds = 1.0, 0.3, 1
        a.hosts, a.changes, a.idle = min(a.hosts, 200), min(a.changes, 6), min(a.idle, 200)
    opts = Options(a.smoke, a.duration, a.warmup, a.rounds, a.hosts, a.changes, a.idle, a.proxies.split(","))
    if os.cpu_count() < 2:
        print("needs at least 2 CPUs (proxy on CPU 0, load on CPU 1)", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:  # root may raise the hard limit; S7 holds 10 000 connections through every proxy
        resource.setrlimit(resource.RLIMIT_NOFILE, (200_000, 200_000))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, {LOAD_CPU})
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": f"{platform.node()} {os.cpu_count()} CPUs, {platform.release()}",
        "load_before": loadavg(),
        "speed_probe_ms": speed_probe(5),
        "pylon": a.pylon,
        "options": vars(a),
    }
    bench = Bench(opts, Path(a.pylon))
    wanted = [s.strip().upper() for s in a.scenario.split(",")]
    try:
        for s in wanted:
            getattr(bench, s.lower())()
    except KeyboardInterrupt:
        log("interrupted; reporting what ran")
    finally:
        stop_all()
    meta["speed_probe_end_ms"] = speed_probe(5)
    text = report(bench.results, opts, meta)
    (bench.run_dir / "results.json").write_text(json.dumps({"meta": meta, "results": bench.results}, indent=1))
    (bench.run_dir / "results.md").write_text(text + "\n")
    shutil.copy(bench.run_dir / "results.json", OUT / "latest.json")
    shutil.copy(bench.run_dir / "results.md", OUT / "latest.md")
    print()
    print(text)
    print(f"\nraw results: {bench.run_dir / 'results.json'}")
    failed = [r for r in bench.results if "failure" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
