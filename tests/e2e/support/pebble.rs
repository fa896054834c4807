//! A real ACME server for tests: Debian's `pebble`, with `pebble-challtestsrv` as its DNS server
//! answering 127.0.0.1 for every name. Fresh ports and configuration per test; both processes
//! are killed by pid when dropped.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use tempfile::TempDir;

use super::TestCa;
use super::client::TlsClient;

/// A base64url MAC key for external account binding tests.
pub const EAB_KID: &str = "kid-1";
pub const EAB_KEY: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";

#[derive(Clone, Debug, Default)]
pub struct PebbleOptions {
    /// The port Pebble validates HTTP-01 on: pylon's HTTP listener.
    pub http_port: u16,
    /// Lifetime of issued certificates, seconds (Pebble's default is five years).
    pub validity_secs: Option<u64>,
    pub require_eab: bool,
}

pub struct Pebble {
    dir: TempDir,
    pebble: Option<Child>,
    dns: Option<Child>,
    config: PathBuf,
    dns_addr: SocketAddr,
    pub acme: SocketAddr,
    pub management: SocketAddr,
    /// The CA of Pebble's own HTTPS listeners, PEM (what an issuer's `caBundle` holds).
    pub listener_ca: String,
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// Waits up to 20 s until `addr` accepts a connection.
fn wait_for(addr: SocketAddr, what: &str, logs: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what}: {}", logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Pebble {
    pub fn start(options: PebbleOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = TestCa::new();
        let leaf = ca.issue(&["localhost", "127.0.0.1"]);
        std::fs::write(dir.path().join("cert.pem"), &leaf.cert).expect("write cert");
        std::fs::write(dir.path().join("key.pem"), &leaf.key).expect("write key");
        let (acme, management, dns_addr, tls_port) = (free_addr(), free_addr(), free_addr(), free_addr());
        let mut pebble = serde_json::json!({
            "listenAddress": acme.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            "httpPort": options.http_port,
            "tlsPort": tls_port.port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": options.require_eab,
            "externalAccountMACKeys": { EAB_KID: EAB_KEY },
        });
        if let Some(secs) = options.validity_secs {
            pebble["certificateValidityPeriod"] = secs.into();
        }
        let config = dir.path().join("pebble-config.json");
        std::fs::write(&config, serde_json::json!({ "pebble": pebble }).to_string()).expect("write config");
        let mut p = Self {
            dir,
            pebble: None,
            dns: None,
            config,
            dns_addr,
            acme,
            management,
            listener_ca: ca.pem,
        };
        let dns_management = free_addr();
        p.dns = Some(
            Command::new("pebble-challtestsrv")
                .args([
                    "-management",
                    &dns_management.to_string(),
                    "-dns01",
                    &dns_addr.to_string(),
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                    "-defaultIPv6",
                    "",
                    "-defaultIPv4",
                    "127.0.0.1",
                ])
                .stdout(p.log("challtestsrv.log"))
                .stderr(p.log("challtestsrv.err"))
                .spawn()
                .expect("start pebble-challtestsrv (apt-get install pebble)"),
        );
        // Its management listener accepting is the sign that it has started (its DNS server
        // starts alongside).
        wait_for(dns_management, "pebble-challtestsrv did not start", || p.logs());
        p.start_pebble(true);
        p
    }

    fn log(&self, name: &str) -> Stdio {
        std::fs::File::create(self.dir.path().join(name))
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null())
    }

    /// Starts Pebble. Its ports were free when picked but another test may have taken one
    /// since; then, if it `may_move` (on first start, before anyone knows its address), it is
    /// started again on new ports.
    fn start_pebble(&mut self, may_move: bool) {
        for _ in 0..3 {
            self.spawn_pebble();
            let started = [self.acme, self.management].into_iter().all(|addr| {
                let deadline = Instant::now() + Duration::from_secs(20);
                while std::net::TcpStream::connect(addr).is_err() {
                    if Instant::now() > deadline || self.logs().contains("address already in use") {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                true
            });
            if started || !may_move || !self.logs().contains("address already in use") {
                break;
            }
            self.stop();
            (self.acme, self.management) = (free_addr(), free_addr());
            let mut config: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&self.config).expect("read config"))
                    .expect("config");
            config["pebble"]["listenAddress"] = self.acme.to_string().into();
            config["pebble"]["managementListenAddress"] = self.management.to_string().into();
            std::fs::write(&self.config, config.to_string()).expect("write config");
        }
        // Pebble opens its ACME and management listeners independently: wait for both.
        for addr in [self.acme, self.management] {
            wait_for(addr, "pebble did not start", || self.logs());
        }
    }

    fn spawn_pebble(&mut self) {
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&self.config)
            .arg("-dnsserver")
            .arg(self.dns_addr.to_string())
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(self.log("pebble.log"))
            .stderr(self.log("pebble.err"))
            .spawn()
            .expect("start pebble (apt-get install pebble)");
        self.pebble = Some(child);
    }

    /// Stops Pebble (its DNS server keeps running).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.pebble.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts Pebble again with the same configuration. Like any Pebble start, it has a new
    /// root and knows no accounts.
    pub fn restart(&mut self) {
        self.stop();
        self.start_pebble(false);
    }

    pub fn directory(&self) -> String {
        format!("https://{}/dir", self.acme)
    }

    /// `caBundle` for an issuer: the listener CA, base64.
    pub fn ca_bundle(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.listener_ca)
    }

    /// The root that signs issued certificates (new with every Pebble start).
    pub async fn root(&self) -> String {
        let client = TlsClient::trusting(&self.listener_ca, &[b"http/1.1"]);
        let (resp, _) = client
            .get(self.management, "localhost", "/roots/0")
            .await
            .expect("pebble management API");
        assert_eq!(resp.status, 200);
        resp.text()
    }

    pub fn logs(&self) -> String {
        ["pebble.log", "pebble.err"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A ClusterIssuer for this Pebble, trusting its listener through `caBundle`.
    pub fn cluster_issuer(&self, name: &str, account_secret: &str, extra: &str) -> String {
        format!(
            "---\napiVersion: cert-manager.io/v1\nkind: ClusterIssuer\nmetadata: {{name: {name}}}\nspec:\n  acme:\n    server: {}\n    email: ops@example.test\n    caBundle: {}\n    privateKeySecretRef: {{name: {account_secret}}}\n    solvers:\n    - http01:\n        ingress:\n          ingressClassName: nginx\n{extra}",
            self.directory(),
            self.ca_bundle()
        )
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        if let Some(mut c) = self.dns.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- pebble ---\n{}", self.logs());
        }
    }
}
