//! Starts the real `pylon` binary on free loopback ports with a temporary manifest directory.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// A running pylon; killed by pid when dropped.
pub struct Pylon {
    child: Option<Child>,
    /// Manifests, state, configuration and logs; shared by pylons started beside this one.
    dir: Arc<TempDir>,
    /// Distinguishes the files of pylons sharing a directory.
    id: usize,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub admin: SocketAddr,
}

/// Extra TOML appended to the generated configuration.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub extra_config: String,
    /// Environment variables for the process (e.g. `POD_NAME`).
    pub env: Vec<(String, String)>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Pylon {
    /// Starts pylon with `manifests` (file name → YAML) and waits for `/readyz`.
    pub fn start(manifests: &[(&str, &str)]) -> Self {
        Self::start_with(manifests, Options::default())
    }

    pub fn start_with(manifests: &[(&str, &str)], options: Options) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let manifest_dir = dir.path().join("manifests");
        std::fs::create_dir(&manifest_dir).expect("manifest dir");
        for (name, yaml) in manifests {
            std::fs::write(manifest_dir.join(name), yaml).expect("write manifest");
        }
        Self::start_in(dir, &options)
    }

    /// Another pylon reading the same manifests and state directory (as replicas do).
    pub fn start_beside(&self, options: Options) -> Self {
        Self::start_in(self.dir.clone(), &options)
    }

    fn start_in(dir: Arc<TempDir>, options: &Options) -> Self {
        // Ports are chosen by the OS, released, then handed to pylon; if another process takes
        // one in between, start again with new ports.
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::try_start(dir.clone(), options, None) {
                Ok(p) => return p,
                Err(e) => last_error = e,
            }
        }
        panic!("pylon did not start: {last_error}");
    }

    /// Kills this pylon (as a crash would) and starts a new one on the same ports and
    /// directories.
    pub fn restart(&mut self, options: Options) {
        self.kill();
        let ports = (self.http, self.https, self.admin);
        let mut last_error = String::new();
        for _ in 0..20 {
            match Self::try_start(self.dir.clone(), &options, Some(ports)) {
                Ok(p) => {
                    *self = p;
                    return;
                }
                Err(e) => last_error = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("pylon did not restart: {last_error}");
    }

    fn try_start(
        dir: Arc<TempDir>,
        options: &Options,
        ports: Option<(SocketAddr, SocketAddr, SocketAddr)>,
    ) -> Result<Self, String> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let manifest_dir = dir.path().join("manifests");
        let (http, https, admin) = ports.unwrap_or_else(|| {
            let local = |p| SocketAddr::from(([127, 0, 0, 1], p));
            (local(free_port()), local(free_port()), local(free_port()))
        });
        let config = format!(
            r#"
[listen]
http = "{http}"
https = "{https}"
admin = "{admin}"
[manifests]
dirs = ["{manifests}"]
state-dir = "{state}"
debounce = "100ms"
rescan-interval = "2s"
[ingress]
https-redirect-port = {https_port}
[proxy]
threads = 1
[shutdown]
delay = "0s"
drain-timeout = "10s"
[log]
level = "info,pylon=debug"
"#,
            manifests = manifest_dir.display(),
            state = dir.path().join("state").display(),
            https_port = https.port(),
        );
        let config = merge_toml(&config, &options.extra_config);
        let config_path = dir.path().join(format!("pylon.{id}.toml"));
        std::fs::write(&config_path, config).expect("write config");
        let child = Command::new(env!("CARGO_BIN_EXE_pylon"))
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .stdout(std::fs::File::create(dir.path().join(format!("stdout.{id}.log"))).expect("log file"))
            .stderr(std::fs::File::create(dir.path().join(format!("stderr.{id}.log"))).expect("log file"))
            .stdin(Stdio::null())
            .envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .spawn()
            .expect("spawn pylon");
        let mut pylon = Self {
            child: Some(child),
            dir,
            id,
            http,
            https,
            admin,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = pylon.try_wait() {
                return Err(format!("exited with {status}: {}", pylon.stderr()));
            }
            if pylon
                .admin_get("/readyz")
                .is_some_and(|(status, _)| status == 200)
            {
                return Ok(pylon);
            }
            if Instant::now() > deadline {
                return Err(format!("not ready after 30 s: {}", pylon.stderr()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn manifest_dir(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    /// Writes a manifest file atomically (write, then rename), as tools that update files do.
    pub fn write_manifest(&self, name: &str, yaml: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml).expect("write manifest");
        std::fs::rename(&tmp, self.manifest_dir().join(name)).expect("rename manifest");
    }

    pub fn remove_manifest(&self, name: &str) {
        std::fs::remove_file(self.manifest_dir().join(name)).expect("remove manifest");
    }

    pub fn stderr(&self) -> String {
        read(&self.dir.path().join(format!("stderr.{}.log", self.id)))
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A Secret pylon wrote to its state directory, as YAML.
    pub fn stored_secret(&self, namespace: &str, name: &str) -> Option<serde_yaml_ng::Value> {
        let text = std::fs::read_to_string(
            self.state_dir()
                .join("secrets")
                .join(namespace)
                .join(format!("{name}.yaml")),
        )
        .ok()?;
        serde_yaml_ng::from_str(&text).ok()
    }

    /// Stops pylon at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The access log (one JSON object per line).
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        read(&self.dir.path().join(format!("stdout.{}.log", self.id)))
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// GET on the admin listener: status and body.
    pub fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        super::client::blocking_get(self.admin, path)
    }

    pub fn metrics(&self) -> String {
        self.admin_get("/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// The value of the metric line starting with `prefix` (name plus labels), or 0.
    pub fn metric(&self, prefix: &str) -> f64 {
        self.metrics()
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Waits until `condition` holds, polling; panics with pylon's log after `timeout`.
    pub fn eventually(&self, timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if condition() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{what}: not true after {timeout:?}\n--- pylon stderr ---\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Pylon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- pylon stderr ---\n{}", self.stderr());
        }
    }
}

/// `base` with the tables and keys of `extra` laid over it.
fn merge_toml(base: &str, extra: &str) -> String {
    fn merge(into: &mut toml::Table, from: toml::Table) {
        for (k, v) in from {
            match (into.get_mut(&k), v) {
                (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
                (_, v) => {
                    into.insert(k, v);
                }
            }
        }
    }
    let mut table: toml::Table = base.parse().expect("base config");
    merge(&mut table, extra.parse().expect("extra config"));
    toml::to_string(&table).expect("config")
}

fn read(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}
