//! A real Kubernetes API server for tests: the upstream `etcd` and `kube-apiserver` built by
//! `tests/kube-testenv/build.sh`, started on 127.0.0.1 the way `tests/kube-testenv/smoke.sh`
//! does (envtest's flags, an admin bearer token in `system:masters`), plus the built `kubectl`.
//!
//! No controller-manager runs: no garbage collection, no EndpointSlice controller, deleted
//! namespaces stay `Terminating` (use [`KubeEnv::namespace`] for one namespace per test).
//!
//! Every server runs under a small `sh` wrapper whose stdin is a pipe held by this process.
//! When the test process ends (normally, by panic or by a signal) the pipe closes and the
//! wrapper stops its server and removes the temp dir, so nothing outlives the test binary,
//! also for [`KubeEnv::shared`], whose static is never dropped.
//!
//! Env: `KUBE_TESTENV_BIN` (binaries, default `<repo>/target/kube-testenv/bin`),
//! `KUBE_TESTENV_KEEP=1` (keep the temp dir: logs, certificates, kubeconfigs).

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::TestCa;

/// Minimal cert-manager `ClusterIssuer` and `Issuer` CRDs (spec and status kept as written).
pub const CERT_MANAGER_CRDS: &str = include_str!("../../kube-testenv/cert-manager-crds.yaml");

const READY_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `"$@"` in the background and stops it when this shell's stdin reaches EOF, i.e. when
/// the test process closes the pipe or exits: SIGTERM, and SIGKILL 5 s later (a kube-apiserver
/// whose etcd is already gone can hang in its graceful shutdown for minutes). Exits with the
/// server's status as soon as the server exits, so an early exit is visible. Ignores SIGINT
/// and SIGHUP itself (etcd and kube-apiserver handle them and exit), so that after a Ctrl-C it
/// still removes the dir. Args: pidfile, dir to remove afterwards (empty: none), the command.
const WRAPPER: &str = r#"trap '' INT HUP
p=$1 d=$2; shift 2
exec 3<&0
"$@" 3<&- & c=$!
echo "$c" >"$p"
(read -r _ <&3; kill "$c" 2>/dev/null; sleep 5; kill -KILL "$c" 2>/dev/null) & r=$!
exec 3<&-
wait "$c"; s=$?
kill "$r" 2>/dev/null
[ -z "$d" ] || rm -rf "$d"
exit "$s""#;

/// An etcd + kube-apiserver pair in one temp dir.
pub struct KubeEnv {
    /// `https://127.0.0.1:PORT`
    pub server: String,
    /// The CA of the API server's serving certificate, PEM.
    pub ca_pem: String,
    /// A bearer token in `system:masters`.
    pub admin_token: String,
    dir: PathBuf,
    bin: PathBuf,
    api_addr: SocketAddr,
    etcd_url: String,
    etcd: Option<Server>,
    apiserver: Option<Server>,
    tls: Arc<ClientConfig>,
    admin_kubeconfig: PathBuf,
}

/// One server process under the wrapper.
struct Server {
    name: &'static str,
    wrapper: Child,
    /// The wrapper's stdin: closing it stops the server.
    stdin: Option<ChildStdin>,
    pidfile: PathBuf,
}

static SHARED: OnceLock<Result<KubeEnv, String>> = OnceLock::new();
static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

fn bin_dir() -> PathBuf {
    std::env::var_os("KUBE_TESTENV_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/kube-testenv/bin"))
}

fn random_lowercase(n: usize) -> String {
    (0..n)
        .map(|_| fastrand::choice(b"abcdefghijklmnopqrstuvwxyz0123456789").map_or('x', |&c| c as char))
        .collect()
}

fn write_private(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl KubeEnv {
    /// One API server shared by all tests of this test binary, started on first use.
    pub fn shared() -> &'static KubeEnv {
        let env = SHARED.get_or_init(|| {
            std::panic::catch_unwind(KubeEnv::start).map_err(|e| {
                e.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".to_owned())
            })
        });
        match env {
            Ok(env) => env,
            Err(e) => panic!("the shared kube-testenv API server failed to start: {e}"),
        }
    }

    /// A private API server (for a test that stops and restarts it); killed on drop.
    pub fn start() -> KubeEnv {
        let bin = bin_dir();
        for b in ["etcd", "kube-apiserver", "kubectl"] {
            assert!(
                bin.join(b).is_file(),
                "{} missing: run tests/kube-testenv/build.sh first (builds kube-apiserver, kubectl and etcd \
                 into target/kube-testenv/bin; ~8-9 min cold) or set KUBE_TESTENV_BIN",
                bin.join(b).display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("kube-testenv.")
            .tempdir()
            .expect("temp dir")
            .keep();
        if std::env::var_os("KUBE_TESTENV_KEEP").is_some() {
            eprintln!("kube-testenv: keeping {}", dir.display());
        }

        // PKI: a throw-away CA for the serving certificate, an SA signing key, an admin token.
        let pki = dir.join("pki");
        std::fs::create_dir(&pki).expect("pki dir");
        let ca = TestCa::new();
        let serving = ca.issue(&["127.0.0.1", "localhost"]);
        write_private(&pki.join("ca.crt"), &ca.pem);
        write_private(&pki.join("apiserver.crt"), &serving.cert);
        write_private(&pki.join("apiserver.key"), &serving.key);
        let sa = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("SA key");
        write_private(&pki.join("sa.key"), &sa.serialize_pem());
        write_private(&pki.join("sa.pub"), &sa.public_key_pem());
        let admin_token = random_lowercase(48);
        write_private(
            &pki.join("tokens.csv"),
            &format!("{admin_token},admin,admin,system:masters\n"),
        );

        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA certificate");
        }
        let tls = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();

        let (etcd_addr, peer_addr, api_addr) = (free_addr(), free_addr(), free_addr());
        let mut env = KubeEnv {
            server: format!("https://{api_addr}"),
            ca_pem: ca.pem.clone(),
            admin_token,
            admin_kubeconfig: dir.join("kubeconfig"),
            dir,
            bin,
            api_addr,
            etcd_url: format!("http://{etcd_addr}"),
            etcd: None,
            apiserver: None,
            tls: Arc::new(tls),
        };
        let admin = env.admin_token.clone();
        env.write_kubeconfig(&env.admin_kubeconfig, &admin);

        let started = Instant::now();
        let keep = std::env::var_os("KUBE_TESTENV_KEEP").is_some();
        let peer_url = format!("http://{peer_addr}");
        env.etcd = Some(Server::spawn(
            "etcd",
            &env.bin.join("etcd"),
            &[
                "--name=kube-testenv".to_owned(),
                format!("--data-dir={}", env.dir.join("etcd").display()),
                format!("--listen-client-urls={}", env.etcd_url),
                format!("--advertise-client-urls={}", env.etcd_url),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=kube-testenv={peer_url}"),
                "--unsafe-no-fsync=true".to_owned(),
                "--log-level=warn".to_owned(),
            ],
            &env.dir,
            // The etcd wrapper removes the temp dir once etcd has stopped (the shared env's
            // static is never dropped).
            (!keep).then_some(env.dir.as_path()),
        ));
        env.start_apiserver();
        eprintln!(
            "kube-testenv: {} ready in {:.1} s (etcd {}, dir {})",
            env.server,
            started.elapsed().as_secs_f64(),
            env.etcd_url,
            env.dir.display()
        );
        env
    }

    /// Stops kube-apiserver only (etcd keeps the data); `start_apiserver` brings it back on the
    /// same port.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut s) = self.apiserver.take() {
            s.stop();
        }
    }

    /// Starts kube-apiserver (again) and waits for `/readyz`.
    pub fn start_apiserver(&mut self) {
        assert!(self.apiserver.is_none(), "kube-apiserver is already running");
        let pki = self.dir.join("pki");
        let pki_file = |f: &str| pki.join(f).display().to_string();
        let started = Instant::now();
        self.apiserver = Some(Server::spawn(
            "kube-apiserver",
            &self.bin.join("kube-apiserver"),
            &[
                format!("--etcd-servers={}", self.etcd_url),
                "--bind-address=127.0.0.1".to_owned(),
                "--advertise-address=127.0.0.1".to_owned(),
                format!("--secure-port={}", self.api_addr.port()),
                format!("--cert-dir={}", pki.display()),
                format!("--tls-cert-file={}", pki_file("apiserver.crt")),
                format!("--tls-private-key-file={}", pki_file("apiserver.key")),
                "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
                "--allow-privileged=true".to_owned(),
                "--authorization-mode=RBAC".to_owned(),
                "--disable-admission-plugins=ServiceAccount".to_owned(),
                format!("--service-account-issuer={}/", self.server),
                format!("--service-account-key-file={}", pki_file("sa.pub")),
                format!("--service-account-signing-key-file={}", pki_file("sa.key")),
                format!("--token-auth-file={}", pki_file("tokens.csv")),
                "--endpoint-reconciler-type=none".to_owned(),
            ],
            &self.dir,
            None,
        ));
        let deadline = started + READY_TIMEOUT;
        loop {
            let exited = [&mut self.etcd, &mut self.apiserver]
                .into_iter()
                .flatten()
                .find_map(|s| s.exited().map(|status| (s.name, status)));
            if let Some((name, status)) = exited {
                panic!("{name} exited early ({status}):\n{}", self.logs());
            }
            let last = match self.get("/readyz") {
                Ok((200, _)) => break,
                Ok((status, body)) => format!("HTTP {status}: {body}"),
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready after {READY_TIMEOUT:?} (last /readyz: {last}):\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "kube-testenv: kube-apiserver {} ready in {:.1} s",
            self.server,
            started.elapsed().as_secs_f64()
        );
    }

    /// Writes a kubeconfig for `token` (admin if None) and returns its path.
    pub fn kubeconfig(&self, token: Option<&str>) -> PathBuf {
        let Some(token) = token else {
            return self.admin_kubeconfig.clone();
        };
        let path = self
            .dir
            .join(format!("kubeconfig-{}", COUNTER.fetch_add(1, Ordering::Relaxed)));
        self.write_kubeconfig(&path, token);
        path
    }

    fn write_kubeconfig(&self, path: &Path, token: &str) {
        // JSON strings are YAML flow scalars: any token or path is quoted correctly.
        let q = |s: &str| serde_json::Value::from(s).to_string();
        let ca = self.dir.join("pki/ca.crt").display().to_string();
        write_private(
            path,
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: kube-testenv\n  cluster: {{server: {}, certificate-authority: {}}}\nusers:\n- name: user\n  user: {{token: {}}}\ncontexts:\n- name: kube-testenv\n  context: {{cluster: kube-testenv, user: user, namespace: default}}\ncurrent-context: kube-testenv\n",
                q(&self.server),
                q(&ca),
                q(token)
            ),
        );
    }

    /// Runs the built kubectl with the admin kubeconfig; returns (exit code, stdout, stderr).
    /// Every request has a 60 s timeout unless `args` has its own `--request-timeout`.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
        let mut child = Command::new(self.bin.join("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.join("kubectl-cache"))
            // No request hangs forever (an `args` value comes later and wins).
            .arg("--request-timeout=60s")
            .args(args)
            .env_remove("KUBECONFIG")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.bin.join("kubectl").display()));
        let writer = stdin.map(|input| {
            let mut pipe = child.stdin.take().expect("kubectl stdin");
            let input = input.to_owned();
            std::thread::spawn(move || {
                let _ = pipe.write_all(input.as_bytes());
            })
        });
        let out = child.wait_with_output().expect("wait for kubectl");
        if let Some(w) = writer {
            let _ = w.join();
        }
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `kubectl apply --server-side -f -` of the YAML, panicking with kubectl's output on
    /// failure.
    pub fn apply(&self, yaml: &str) {
        let (code, out, err) = self.kubectl(&["apply", "--server-side", "-f", "-"], Some(yaml));
        assert!(
            code == 0,
            "kubectl apply failed (exit {code}):\n{out}{err}\n--- manifest ---\n{yaml}"
        );
    }

    /// Creates a namespace with a unique name starting with `prefix` and returns the name.
    pub fn namespace(&self, prefix: &str) -> String {
        let name = format!("{prefix}-{}", random_lowercase(6));
        let (code, out, err) = self.kubectl(&["create", "namespace", &name], None);
        assert!(
            code == 0,
            "kubectl create namespace {name} failed (exit {code}):\n{out}{err}"
        );
        name
    }

    /// Applies [`CERT_MANAGER_CRDS`] (idempotent) and waits until both are `Established`.
    pub fn install_cert_manager_crds(&self) {
        self.apply(CERT_MANAGER_CRDS);
        let (code, out, err) = self.kubectl(
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/clusterissuers.cert-manager.io",
                "crd/issuers.cert-manager.io",
            ],
            None,
        );
        assert!(
            code == 0,
            "cert-manager CRDs not established (exit {code}):\n{out}{err}"
        );
    }

    /// The last lines of the etcd and kube-apiserver logs.
    pub fn logs(&self) -> String {
        ["etcd", "kube-apiserver"]
            .iter()
            .map(|n| {
                format!(
                    "--- {n}.log ---\n{}\n",
                    tail(&self.dir.join(format!("{n}.log")), 30)
                )
            })
            .collect()
    }

    /// A blocking GET on the API server as admin: (status, body).
    fn get(&self, path: &str) -> Result<(u16, String), String> {
        let tcp =
            TcpStream::connect_timeout(&self.api_addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let name = ServerName::from(self.api_addr.ip());
        let conn = ClientConnection::new(self.tls.clone(), name).map_err(|e| e.to_string())?;
        let mut tls = StreamOwned::new(conn, tcp);
        write!(
            tls,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            self.api_addr, self.admin_token
        )
        .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        if let Err(e) = tls.read_to_end(&mut raw) {
            // A peer that closes without close_notify still sent a complete response.
            if e.kind() != std::io::ErrorKind::UnexpectedEof || raw.is_empty() {
                return Err(e.to_string());
            }
        }
        let raw = String::from_utf8_lossy(&raw);
        let status = raw
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad response: {raw}"))?;
        let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        Ok((status, body.to_owned()))
    }
}

impl Drop for KubeEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- kube-testenv {} ---\n{}", self.server, self.logs());
        }
        self.stop_apiserver();
        // Stopping etcd also removes the temp dir (unless KUBE_TESTENV_KEEP).
        if let Some(mut s) = self.etcd.take() {
            s.stop();
        }
    }
}

impl Server {
    fn spawn(name: &'static str, bin: &Path, args: &[String], dir: &Path, remove: Option<&Path>) -> Server {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{name}.log")))
            .expect("log file");
        let pidfile = dir.join(format!("{name}.pid"));
        let wrapper = Command::new("sh")
            .arg("-c")
            .arg(WRAPPER)
            .arg("kube-testenv-wrapper")
            .arg(&pidfile)
            .arg(remove.map(Path::as_os_str).unwrap_or_default())
            .arg(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} under sh: {e}"));
        let mut s = Server {
            name,
            wrapper,
            stdin: None,
            pidfile,
        };
        s.stdin = s.wrapper.stdin.take();
        s
    }

    /// The wrapper's exit status once the server has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.wrapper.try_wait().ok().flatten()
    }

    /// Closes the wrapper's stdin (it sends SIGTERM to the server, SIGKILL after 5 s, and
    /// waits for it); if the wrapper is still there after STOP_TIMEOUT, SIGKILL by pid.
    fn stop(&mut self) {
        drop(self.stdin.take());
        let started = Instant::now();
        let deadline = started + STOP_TIMEOUT;
        while self.exited().is_none() {
            if Instant::now() > deadline {
                if let Ok(pid) = std::fs::read_to_string(&self.pidfile) {
                    let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
                }
                let _ = self.wrapper.kill();
                let _ = self.wrapper.wait();
                eprintln!(
                    "kube-testenv: {} did not stop in {STOP_TIMEOUT:?}, killed",
                    self.name
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "kube-testenv: {} stopped in {:.1} s",
            self.name,
            started.elapsed().as_secs_f64()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            self.stop();
        }
    }
}
