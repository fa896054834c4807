//! The TOML layout of `pylon.toml` and its validation into [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::routing::host::is_dns_label;

use super::{
    AcmeConfig, ByteSize, Config, DEFAULT_CONTROLLER, FieldError, IngressConfig, KubernetesConfig, Listen,
    LogConfig, LogFormat, Manifests, Overrides, ProxyConfig, Shutdown, TlsConfig,
};

pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:80";
pub const DEFAULT_HTTPS_LISTEN: &str = "0.0.0.0:443";
pub const DEFAULT_ADMIN_LISTEN: &str = "0.0.0.0:10254";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/pylon";
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(20);
pub const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_CLIENT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
pub const DEFAULT_UPSTREAM_POOL_SIZE: usize = 1024;
pub const DEFAULT_CONNECT_RETRIES: usize = 2;
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 32 * 1024;
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
pub const DEFAULT_SHUTDOWN_DELAY: Duration = Duration::from_secs(5);
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
pub const DEFAULT_CLUSTER_RESOURCE_NAMESPACE: &str = "pylon";
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(60);
pub const DEFAULT_RETRY_BACKOFF_MAX: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
pub const DEFAULT_CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_CLIENT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_SESSION_TICKET_ROTATION: Duration = Duration::from_secs(6 * 3600);
pub const DEFAULT_SESSION_TICKET_SECRET: &str = "pylon-session-tickets";

/// `pylon.toml` as written. Every field is optional; unknown fields are an error.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    #[serde(default)]
    pub listen: ListenFile,
    #[serde(default)]
    pub manifests: ManifestsFile,
    #[serde(default)]
    pub ingress: IngressFile,
    #[serde(default)]
    pub proxy: ProxyFile,
    #[serde(default)]
    pub tls: TlsFile,
    #[serde(default)]
    pub shutdown: ShutdownFile,
    #[serde(default)]
    pub log: LogFile,
    #[serde(default)]
    pub acme: AcmeFile,
    #[serde(default)]
    pub kubernetes: KubernetesFile,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KubernetesFile {
    pub enabled: Option<bool>,
    pub kubeconfig: Option<PathBuf>,
    pub watch_namespaces: Option<Vec<String>>,
    pub publish_service: Option<String>,
    pub publish_status_addresses: Option<Vec<String>>,
    pub lease_name: Option<String>,
    pub lease_duration: Option<String>,
    pub session_ticket_secret: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AcmeFile {
    pub default_issuer: Option<String>,
    pub cluster_resource_namespace: Option<String>,
    pub retry_backoff: Option<String>,
    pub retry_backoff_max: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ListenFile {
    pub http: Option<String>,
    pub https: Option<String>,
    pub admin: Option<String>,
    pub proxy_protocol: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ManifestsFile {
    pub dirs: Option<Vec<PathBuf>>,
    pub state_dir: Option<PathBuf>,
    pub debounce: Option<String>,
    pub rescan_interval: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct IngressFile {
    pub controller: Option<String>,
    pub classes: Option<Vec<String>>,
    pub serve_without_class: Option<bool>,
    pub https_redirect_port: Option<i64>,
    pub default_certificate: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProxyFile {
    pub threads: Option<i64>,
    pub connect_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub write_timeout: Option<String>,
    pub upstream_idle_timeout: Option<String>,
    pub client_keepalive_timeout: Option<String>,
    pub client_header_timeout: Option<String>,
    pub client_send_timeout: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub upstream_keepalive_pool_size: Option<i64>,
    pub connect_retries: Option<i64>,
    pub max_request_header_size: Option<ByteSize>,
    pub max_request_body_size: Option<ByteSize>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TlsFile {
    pub session_resumption: Option<bool>,
    pub session_ticket_rotation: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ShutdownFile {
    pub delay: Option<String>,
    pub drain_timeout: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LogFile {
    pub level: Option<String>,
    pub format: Option<String>,
    pub access_log: Option<bool>,
}

impl FileConfig {
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

/// Collects errors while reading fields, so that all of them are reported together.
struct Check {
    errors: Vec<FieldError>,
}

/// The longest duration a setting takes: no setting needs more than a year, and a longer one
/// could overflow the time arithmetic it goes into.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

impl Check {
    fn fail(&mut self, field: &str, reason: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.to_owned(),
            reason: reason.into(),
        });
    }

    fn addr(&mut self, field: &str, value: Option<&str>, default: &str) -> SocketAddr {
        let raw = value.unwrap_or(default);
        raw.parse().unwrap_or_else(|_| {
            self.fail(
                field,
                format!("{raw:?} is not an address like 127.0.0.1:8080 or [::]:443"),
            );
            default.parse().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
        })
    }

    fn duration(&mut self, field: &str, value: Option<&str>, default: Duration) -> Duration {
        let Some(raw) = value else { return default };
        match humantime::parse_duration(raw) {
            Ok(d) if d > MAX_DURATION => {
                self.fail(field, format!("{raw:?} is longer than a year"));
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.fail(field, format!("{raw:?} is not a duration like 5s or 200ms: {e}"));
                default
            }
        }
    }

    fn positive_duration(&mut self, field: &str, value: Option<&str>, default: Duration) -> Duration {
        let d = self.duration(field, value, default);
        if d.is_zero() {
            self.fail(field, "must be greater than zero");
            return default;
        }
        d
    }

    fn count(&mut self, field: &str, value: Option<i64>, default: usize, range: (usize, usize)) -> usize {
        let Some(v) = value else { return default };
        match usize::try_from(v) {
            Ok(v) if v >= range.0 && v <= range.1 => v,
            _ => {
                self.fail(field, format!("{v} is outside {}..={}", range.0, range.1));
                default
            }
        }
    }
}

pub(super) fn build(file: FileConfig, overrides: &Overrides) -> Result<Config, Vec<FieldError>> {
    let mut c = Check { errors: Vec::new() };

    let listen = Listen {
        http: c.addr(
            "listen.http",
            overrides.http_listen.as_deref().or(file.listen.http.as_deref()),
            DEFAULT_HTTP_LISTEN,
        ),
        https: c.addr(
            "listen.https",
            overrides.https_listen.as_deref().or(file.listen.https.as_deref()),
            DEFAULT_HTTPS_LISTEN,
        ),
        admin: c.addr(
            "listen.admin",
            overrides.admin_listen.as_deref().or(file.listen.admin.as_deref()),
            DEFAULT_ADMIN_LISTEN,
        ),
        proxy_protocol: file.listen.proxy_protocol.unwrap_or(false),
    };
    if listen.admin == listen.http || listen.admin == listen.https {
        c.fail("listen.admin", "must differ from the traffic listeners");
    }
    if listen.http == listen.https {
        c.fail("listen.https", "must differ from listen.http");
    }

    let dirs = if overrides.manifests.is_empty() {
        file.manifests.dirs.unwrap_or_default()
    } else {
        overrides.manifests.clone()
    };
    let manifests = Manifests {
        dirs,
        state_dir: overrides
            .state_dir
            .clone()
            .or(file.manifests.state_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
        debounce: c.duration(
            "manifests.debounce",
            file.manifests.debounce.as_deref(),
            DEFAULT_DEBOUNCE,
        ),
        rescan_interval: c.positive_duration(
            "manifests.rescan-interval",
            file.manifests.rescan_interval.as_deref(),
            DEFAULT_RESCAN_INTERVAL,
        ),
    };

    let ingress = build_ingress(&mut c, file.ingress);
    let proxy = build_proxy(&mut c, file.proxy);
    let session_ticket_rotation = c.positive_duration(
        "tls.session-ticket-rotation",
        file.tls.session_ticket_rotation.as_deref(),
        DEFAULT_SESSION_TICKET_ROTATION,
    );
    if session_ticket_rotation < Duration::from_secs(1) {
        c.fail("tls.session-ticket-rotation", "must be at least 1s");
    }
    let tls = TlsConfig {
        session_resumption: file.tls.session_resumption.unwrap_or(true),
        session_ticket_rotation,
    };

    let shutdown = Shutdown {
        delay: c.duration(
            "shutdown.delay",
            file.shutdown.delay.as_deref(),
            DEFAULT_SHUTDOWN_DELAY,
        ),
        drain_timeout: c.duration(
            "shutdown.drain-timeout",
            file.shutdown.drain_timeout.as_deref(),
            DEFAULT_DRAIN_TIMEOUT,
        ),
    };

    let format = match file.log.format.as_deref() {
        None | Some("json") => LogFormat::Json,
        Some("text") => LogFormat::Text,
        Some(other) => {
            c.fail("log.format", format!("{other:?} is not \"json\" or \"text\""));
            LogFormat::Json
        }
    };
    let level = file.log.level.unwrap_or_else(|| "info".to_owned());
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&level) {
        c.fail("log.level", format!("{level:?} is not a log filter: {e}"));
    }
    let log = LogConfig {
        level,
        format,
        access_log: file.log.access_log.unwrap_or(true),
    };

    let acme = build_acme(&mut c, file.acme);
    let kubernetes = build_kubernetes(&mut c, file.kubernetes, overrides);

    if c.errors.is_empty() {
        Ok(Config {
            listen,
            manifests,
            ingress,
            proxy,
            tls,
            shutdown,
            log,
            acme,
            kubernetes,
        })
    } else {
        Err(c.errors)
    }
}

fn build_ingress(c: &mut Check, file: IngressFile) -> IngressConfig {
    let controller = file.controller.unwrap_or_else(|| DEFAULT_CONTROLLER.to_owned());
    if !is_controller_name(&controller) {
        c.fail(
            "ingress.controller",
            format!("{controller:?} is not a controller name like example.com/ingress-controller"),
        );
    }
    let classes = file.classes.unwrap_or_default();
    for (i, class) in classes.iter().enumerate() {
        if !is_dns_subdomain(class) {
            c.fail(
                &format!("ingress.classes[{i}]"),
                format!("{class:?} is not a valid class name (lowercase DNS name)"),
            );
        }
    }
    let https_redirect_port = match file.https_redirect_port {
        None => 443,
        Some(p) => u16::try_from(p).ok().filter(|p| *p != 0).unwrap_or_else(|| {
            c.fail("ingress.https-redirect-port", format!("{p} is not a port number"));
            443
        }),
    };
    let default_certificate = match file.default_certificate.as_deref() {
        None | Some("") => None,
        Some(raw) => match raw.split_once('/') {
            Some((ns, name)) if is_dns_label(ns) && is_dns_subdomain(name) => {
                Some((ns.to_owned(), name.to_owned()))
            }
            _ => {
                c.fail(
                    "ingress.default-certificate",
                    format!("{raw:?} is not namespace/name of a Secret"),
                );
                None
            }
        },
    };
    IngressConfig {
        controller,
        classes,
        serve_without_class: file.serve_without_class.unwrap_or(false),
        https_redirect_port,
        default_certificate,
    }
}

fn build_kubernetes(c: &mut Check, file: KubernetesFile, o: &Overrides) -> KubernetesConfig {
    let watch_namespaces = if o.watch_namespaces.is_empty() {
        file.watch_namespaces.unwrap_or_default()
    } else {
        o.watch_namespaces.clone()
    };
    for (i, ns) in watch_namespaces.iter().enumerate() {
        if !is_dns_label(ns) {
            c.fail(
                &format!("kubernetes.watch-namespaces[{i}]"),
                format!("{ns:?} is not a namespace name"),
            );
        }
    }
    let publish_service = match o.publish_service.clone().or(file.publish_service).as_deref() {
        None | Some("") => None,
        Some(raw) => match raw.split_once('/') {
            Some((ns, name)) if is_dns_label(ns) && is_dns_subdomain(name) => {
                Some((ns.to_owned(), name.to_owned()))
            }
            _ => {
                c.fail(
                    "kubernetes.publish-service",
                    format!("{raw:?} is not namespace/name of a Service"),
                );
                None
            }
        },
    };
    let publish_status_addresses = if o.publish_status_addresses.is_empty() {
        file.publish_status_addresses.unwrap_or_default()
    } else {
        o.publish_status_addresses.clone()
    };
    for (i, a) in publish_status_addresses.iter().enumerate() {
        if a.parse::<std::net::IpAddr>().is_err() && !is_dns_subdomain(a) {
            c.fail(
                &format!("kubernetes.publish-status-addresses[{i}]"),
                format!("{a:?} is not an IP address or a host name"),
            );
        }
    }
    let lease_name = file.lease_name.unwrap_or_else(|| "pylon-acme".to_owned());
    if !is_dns_subdomain(&lease_name) {
        c.fail(
            "kubernetes.lease-name",
            format!("{lease_name:?} is not an object name"),
        );
    }
    let lease_duration = c.positive_duration(
        "kubernetes.lease-duration",
        file.lease_duration.as_deref(),
        DEFAULT_LEASE_DURATION,
    );
    if lease_duration < Duration::from_secs(3) {
        c.fail("kubernetes.lease-duration", "must be at least 3s");
    }
    let session_ticket_secret = match file.session_ticket_secret {
        None => Some(DEFAULT_SESSION_TICKET_SECRET.to_owned()),
        Some(name) if name.is_empty() => None,
        Some(name) if is_dns_subdomain(&name) => Some(name),
        Some(name) => {
            c.fail(
                "kubernetes.session-ticket-secret",
                format!("{name:?} is not an object name"),
            );
            None
        }
    };
    KubernetesConfig {
        enabled: o.kubernetes || file.enabled.unwrap_or(false),
        kubeconfig: o
            .kubeconfig
            .clone()
            .or(file.kubeconfig)
            .filter(|p| !p.as_os_str().is_empty()),
        watch_namespaces,
        publish_service,
        publish_status_addresses,
        lease_name,
        lease_duration,
        session_ticket_secret,
    }
}

fn build_acme(c: &mut Check, file: AcmeFile) -> AcmeConfig {
    let default_issuer = match file.default_issuer.as_deref() {
        None | Some("") => None,
        Some(raw) => match crate::acme::issuer::IssuerRef::parse_config(raw) {
            Some(choice) => Some(choice),
            None => {
                c.fail(
                    "acme.default-issuer",
                    format!("{raw:?} is not ClusterIssuer/<name> or Issuer/<name>"),
                );
                None
            }
        },
    };
    let namespace = file
        .cluster_resource_namespace
        .unwrap_or_else(|| DEFAULT_CLUSTER_RESOURCE_NAMESPACE.to_owned());
    if !is_dns_label(&namespace) {
        c.fail(
            "acme.cluster-resource-namespace",
            format!("{namespace:?} is not a namespace name"),
        );
    }
    AcmeConfig {
        default_issuer,
        cluster_resource_namespace: namespace,
        retry_backoff: c.positive_duration(
            "acme.retry-backoff",
            file.retry_backoff.as_deref(),
            DEFAULT_RETRY_BACKOFF,
        ),
        retry_backoff_max: c.positive_duration(
            "acme.retry-backoff-max",
            file.retry_backoff_max.as_deref(),
            DEFAULT_RETRY_BACKOFF_MAX,
        ),
    }
}

fn build_proxy(c: &mut Check, file: ProxyFile) -> ProxyConfig {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = match c.count("proxy.threads", file.threads, 0, (0, 1024)) {
        0 => cpus,
        n => n,
    };
    let mut trusted_proxies = Vec::new();
    for (i, prefix) in file.trusted_proxies.iter().flatten().enumerate() {
        match prefix.parse::<crate::routing::Cidr>() {
            Ok(prefix) => trusted_proxies.push(prefix),
            Err(reason) => c.fail(&format!("proxy.trusted-proxies[{i}]"), reason),
        }
    }
    let max_header = file
        .max_request_header_size
        .map_or(DEFAULT_MAX_HEADER_BYTES, |s| s.bytes());
    // pingora reads at most 1 MiB of request head; a larger limit could never be reached.
    let max_request_header_bytes = if !(1024..=1024 * 1024).contains(&max_header) {
        c.fail(
            "proxy.max-request-header-size",
            format!("{max_header} bytes is outside 1k..=1m"),
        );
        DEFAULT_MAX_HEADER_BYTES as usize
    } else {
        max_header as usize
    };
    ProxyConfig {
        threads,
        trusted_proxies,
        connect_timeout: c.positive_duration(
            "proxy.connect-timeout",
            file.connect_timeout.as_deref(),
            DEFAULT_CONNECT_TIMEOUT,
        ),
        read_timeout: c.positive_duration(
            "proxy.read-timeout",
            file.read_timeout.as_deref(),
            DEFAULT_READ_TIMEOUT,
        ),
        write_timeout: c.positive_duration(
            "proxy.write-timeout",
            file.write_timeout.as_deref(),
            DEFAULT_WRITE_TIMEOUT,
        ),
        upstream_idle_timeout: c.positive_duration(
            "proxy.upstream-idle-timeout",
            file.upstream_idle_timeout.as_deref(),
            DEFAULT_UPSTREAM_IDLE_TIMEOUT,
        ),
        client_keepalive_timeout: c.positive_duration(
            "proxy.client-keepalive-timeout",
            file.client_keepalive_timeout.as_deref(),
            DEFAULT_CLIENT_KEEPALIVE_TIMEOUT,
        ),
        client_header_timeout: c.positive_duration(
            "proxy.client-header-timeout",
            file.client_header_timeout.as_deref(),
            DEFAULT_CLIENT_HEADER_TIMEOUT,
        ),
        client_send_timeout: c.positive_duration(
            "proxy.client-send-timeout",
            file.client_send_timeout.as_deref(),
            DEFAULT_CLIENT_SEND_TIMEOUT,
        ),
        upstream_keepalive_pool_size: c.count(
            "proxy.upstream-keepalive-pool-size",
            file.upstream_keepalive_pool_size,
            DEFAULT_UPSTREAM_POOL_SIZE,
            (0, 1 << 20),
        ),
        connect_retries: c.count(
            "proxy.connect-retries",
            file.connect_retries,
            DEFAULT_CONNECT_RETRIES,
            (0, 16),
        ),
        max_request_header_bytes,
        max_request_body_bytes: file
            .max_request_body_size
            .map_or(DEFAULT_MAX_BODY_BYTES, |s| s.bytes()),
    }
}

/// `domain/path`, as Kubernetes validates `IngressClass.spec.controller`.
fn is_controller_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((domain, path)) => {
            is_dns_subdomain(domain)
                && !path.is_empty()
                && path
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._/".contains(&b))
        }
        None => false,
    }
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build_str(text: &str) -> Result<Config, Vec<FieldError>> {
        build(FileConfig::parse(text).expect("toml"), &Overrides::default())
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = build_str("").expect("valid");
        assert_eq!(c.listen.http, "0.0.0.0:80".parse().unwrap());
        assert_eq!(c.listen.admin, "0.0.0.0:10254".parse().unwrap());
        assert_eq!(c.ingress.controller, DEFAULT_CONTROLLER);
        assert_eq!(c.ingress.https_redirect_port, 443);
        assert_eq!(c.proxy.max_request_body_bytes, 1024 * 1024);
        assert_eq!(c.shutdown.drain_timeout, Duration::from_secs(20));
        assert!(c.proxy.threads >= 1);
        assert!(c.tls.session_resumption);
        assert!(!c.listen.proxy_protocol);
        assert_eq!(c.proxy.client_header_timeout, Duration::from_secs(60));
        assert_eq!(c.proxy.client_send_timeout, Duration::from_secs(60));
        assert_eq!(c.tls.session_ticket_rotation, Duration::from_secs(6 * 3600));
        assert_eq!(
            c.kubernetes.session_ticket_secret.as_deref(),
            Some("pylon-session-tickets")
        );
    }

    #[test]
    fn trusted_proxies_are_prefixes() {
        let c = build_str("[proxy]\ntrusted-proxies = [\"10.0.0.0/8\", \"2001:db8::1\"]\n").expect("valid");
        assert_eq!(c.proxy.trusted_proxies.len(), 2);
        assert!(
            build_str("").unwrap().proxy.trusted_proxies.is_empty(),
            "nobody by default"
        );
        let errors =
            build_str("[proxy]\ntrusted-proxies = [\"10.0.0.0/8\", \"10.0.0.0/40\"]\n").expect_err("bad");
        assert!(
            errors
                .iter()
                .any(|e| e.to_string().contains("proxy.trusted-proxies[1]")),
            "{errors:?}"
        );
    }

    #[test]
    fn session_ticket_settings_are_checked() {
        let c = build_str(
            "[tls]\nsession-ticket-rotation = \"90m\"\n[kubernetes]\nsession-ticket-secret = \"\"\n",
        )
        .expect("valid");
        assert_eq!(c.tls.session_ticket_rotation, Duration::from_secs(90 * 60));
        assert_eq!(
            c.kubernetes.session_ticket_secret, None,
            "\"\": each replica its own keys"
        );
        for (text, key) in [
            (
                "[tls]\nsession-ticket-rotation = \"500ms\"\n",
                "tls.session-ticket-rotation",
            ),
            (
                "[tls]\nsession-ticket-rotation = \"soon\"\n",
                "tls.session-ticket-rotation",
            ),
            (
                "[kubernetes]\nsession-ticket-secret = \"Tickets!\"\n",
                "kubernetes.session-ticket-secret",
            ),
        ] {
            let errors = build_str(text).expect_err(text);
            assert!(
                errors.iter().any(|e| e.to_string().contains(key)),
                "{text}: {errors:?}"
            );
        }
    }

    #[test]
    fn durations_are_at_most_a_year() {
        assert_eq!(
            build_str("[proxy]\nread-timeout = \"365d\"\n")
                .expect("valid")
                .proxy
                .read_timeout,
            Duration::from_secs(365 * 24 * 3600)
        );
        for text in [
            "[proxy]\nread-timeout = \"366d\"\n",
            "[acme]\nretry-backoff-max = \"500000000000years\"\n",
            "[shutdown]\ndelay = \"18446744073709551615s\"\n",
        ] {
            let errors = build_str(text).expect_err(text);
            assert!(
                errors
                    .iter()
                    .any(|e| e.to_string().contains("longer than a year")),
                "{text}: {errors:?}"
            );
        }
    }

    #[test]
    fn session_resumption_is_a_boolean() {
        assert!(
            !build_str("[tls]\nsession-resumption = false\n")
                .expect("valid")
                .tls
                .session_resumption
        );
        let err = FileConfig::parse("[tls]\nsession-resumption = \"off\"\n").expect_err("not a boolean");
        assert!(err.contains("session-resumption"), "{err}");
    }

    #[test]
    fn every_error_is_reported_with_its_field() {
        let errors = build_str(
            r#"
            [listen]
            http = "nonsense"
            [proxy]
            connect-timeout = "soon"
            threads = -1
            [ingress]
            classes = ["Nginx"]
            default-certificate = "no-slash"
            "#,
        )
        .expect_err("invalid");
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "listen.http",
                "ingress.classes[0]",
                "ingress.default-certificate",
                "proxy.threads",
                "proxy.connect-timeout"
            ]
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = FileConfig::parse("[proxy]\nconect-timeout = \"1s\"\n").expect_err("unknown");
        assert!(err.contains("conect-timeout"), "{err}");
    }

    #[test]
    fn flags_override_the_file() {
        let file =
            FileConfig::parse("[listen]\nhttp = \"127.0.0.1:1\"\n[manifests]\ndirs = [\"a\"]").expect("toml");
        let overrides = Overrides {
            manifests: vec!["b".into(), "c".into()],
            http_listen: Some("127.0.0.1:2".into()),
            ..Overrides::default()
        };
        let c = build(file, &overrides).expect("valid");
        assert_eq!(c.listen.http.port(), 2);
        assert_eq!(c.manifests.dirs, [PathBuf::from("b"), PathBuf::from("c")]);
    }

    /// config/pylon.toml documents every key with its default: it must say exactly what an
    /// empty file means.
    #[test]
    fn the_documented_configuration_is_the_default() {
        let documented = build_str(include_str!("../../config/pylon.toml")).expect("valid");
        assert_eq!(documented, build_str("").expect("valid"));
    }

    #[test]
    fn admin_must_not_share_a_traffic_port() {
        let errors =
            build_str("[listen]\nhttp = \"127.0.0.1:80\"\nadmin = \"127.0.0.1:80\"").expect_err("clash");
        assert_eq!(errors[0].field, "listen.admin");
    }
}
