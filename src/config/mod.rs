//! pylon's configuration: a TOML file plus command-line overrides, validated into [`Config`].
//!
//! [`file::FileConfig`] mirrors the TOML layout (every field optional, unknown fields rejected);
//! [`Config::build`] applies overrides and defaults and returns *every* error at once, each with
//! its field path, so `pylon check` can print them all.

pub mod file;
mod size;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use file::FileConfig;
pub use size::ByteSize;

/// The controller name pylon's IngressClasses carry in `spec.controller` unless configured.
pub const DEFAULT_CONTROLLER: &str = "pylon.dev/ingress-controller";

/// A validated configuration. Every field has a value; nothing here can fail later.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub listen: Listen,
    pub manifests: Manifests,
    pub ingress: IngressConfig,
    pub proxy: ProxyConfig,
    pub tls: TlsConfig,
    pub shutdown: Shutdown,
    pub log: LogConfig,
    pub acme: AcmeConfig,
    pub kubernetes: KubernetesConfig,
}

/// Cluster mode: objects from the API server instead of manifest directories.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KubernetesConfig {
    pub enabled: bool,
    /// A kubeconfig file; `None`: in-cluster service account, else `$KUBECONFIG` or
    /// `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// Namespaces watched; empty: all.
    pub watch_namespaces: Vec<String>,
    /// `namespace/name` of the Service whose load-balancer addresses go to Ingress status.
    pub publish_service: Option<(String, String)>,
    /// Fixed addresses for Ingress status (when no Service is published).
    pub publish_status_addresses: Vec<String>,
    pub lease_name: String,
    pub lease_duration: Duration,
    /// The Secret (in the pod's namespace) through which replicas share their session-ticket
    /// keys; `None`: each replica keeps its own.
    pub session_ticket_secret: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AcmeConfig {
    /// The issuer for Ingresses with `spec.tls` but no cert-manager annotation.
    pub default_issuer: Option<(crate::acme::issuer::IssuerKind, String)>,
    /// Where the Secrets of ClusterIssuers live (account keys, CA keys, EAB keys).
    pub cluster_resource_namespace: String,
    /// Delay before retrying a failed order; ten times longer per further failure, at most a day.
    pub retry_backoff: Duration,
    /// The longest delay between retries.
    pub retry_backoff_max: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Listen {
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    /// Every connection to the traffic listeners starts with a PROXY protocol header (version
    /// 1 or 2) from a load balancer, whose client address pylon then uses.
    pub proxy_protocol: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Manifests {
    /// Directories read recursively for `*.yaml` / `*.yml`.
    pub dirs: Vec<PathBuf>,
    /// Where pylon writes what it creates (certificates, later); read like a manifest directory.
    pub state_dir: PathBuf,
    /// Quiet time after a file change before the manifests are read again.
    pub debounce: Duration,
    /// Every file is checked once per interval (a tenth at a time), a safety net for missed
    /// file-system events.
    pub rescan_interval: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct IngressConfig {
    /// `spec.controller` value of the IngressClasses pylon serves.
    pub controller: String,
    /// Extra class names served regardless of IngressClass objects (migration from another
    /// controller, e.g. `nginx`).
    pub classes: Vec<String>,
    /// Serve Ingresses that name no class even without a default IngressClass.
    pub serve_without_class: bool,
    /// The port put in `Location` when redirecting plain HTTP to HTTPS.
    pub https_redirect_port: u16,
    /// `namespace/name` of the Secret used when no other certificate matches; `None` means a
    /// self-signed certificate generated at start.
    pub default_certificate: Option<(String, String)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ProxyConfig {
    /// Worker threads of the proxy runtime.
    pub threads: usize,
    /// Proxies in front of pylon whose `X-Forwarded-*` headers are believed; empty: none.
    pub trusted_proxies: Vec<crate::routing::Cidr>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// How long an idle upstream keep-alive connection is kept in the pool.
    pub upstream_idle_timeout: Duration,
    /// How long an idle client keep-alive connection is kept open.
    pub client_keepalive_timeout: Duration,
    /// How long an HTTP/1 request head may take from its first byte to its end, and an HTTP/2
    /// connection's preface from the end of the TLS handshake.
    pub client_header_timeout: Duration,
    /// How long a write of the response to the client may make no progress (a client that
    /// stops reading) before the connection is closed.
    pub client_send_timeout: Duration,
    pub upstream_keepalive_pool_size: usize,
    /// Other endpoints tried after a connection failure.
    pub connect_retries: usize,
    /// Request line plus headers; larger requests get 431.
    pub max_request_header_bytes: usize,
    /// Request body; larger requests get 413. Zero means no limit.
    pub max_request_body_bytes: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TlsConfig {
    /// Let clients resume TLS sessions: stateless tickets (TLS 1.3 and 1.2) and a session cache
    /// (TLS 1.2 session IDs). Off: every connection makes a full handshake.
    pub session_resumption: bool,
    /// How often the session-ticket key is replaced; a ticket lives twice as long.
    pub session_ticket_rotation: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Shutdown {
    /// After SIGTERM, how long pylon keeps accepting traffic while `/readyz` fails, so that load
    /// balancers stop sending new connections first.
    pub delay: Duration,
    /// After the listeners close, how long in-flight requests get to finish.
    pub drain_timeout: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LogConfig {
    /// A `tracing` filter directive such as `info` or `pylon=debug,info`.
    pub level: String,
    pub format: LogFormat,
    pub access_log: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Values from the command line; each one replaces the config file's.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub manifests: Vec<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub http_listen: Option<String>,
    pub https_listen: Option<String>,
    pub admin_listen: Option<String>,
    pub kubernetes: bool,
    pub kubeconfig: Option<PathBuf>,
    pub watch_namespaces: Vec<String>,
    pub publish_service: Option<String>,
    pub publish_status_addresses: Vec<String>,
}

/// One configuration error: where it is and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration:\n{}", list(.0))]
    Invalid(Vec<FieldError>),
}

fn list(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("  - {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Reads `path` (if given), applies `overrides` and validates.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, Error> {
        let file = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
                    path: path.to_owned(),
                    source,
                })?;
                FileConfig::parse(&text).map_err(|message| Error::Parse {
                    path: path.to_owned(),
                    message,
                })?
            }
            None => FileConfig::default(),
        };
        Self::build(file, overrides).map_err(Error::Invalid)
    }

    /// Applies overrides and defaults, returning every error found.
    pub fn build(file: FileConfig, overrides: &Overrides) -> Result<Self, Vec<FieldError>> {
        file::build(file, overrides)
    }
}
