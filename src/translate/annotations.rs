//! Ingress annotations, parsed into typed values. No annotation value is ever copied into a
//! configuration language; a value that does not parse rejects the Ingress with the reason.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::acme::keys::KeySpec;
use crate::config::ByteSize;

pub const NGINX: &str = "nginx.ingress.kubernetes.io/";
pub const CERT_MANAGER: &str = "cert-manager.io/";

/// What pylon understands of an Ingress's annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Annotations {
    /// `ssl-redirect` (default true): redirect plain HTTP to HTTPS when the host has TLS.
    pub ssl_redirect: bool,
    /// `force-ssl-redirect` (default false): redirect even without TLS for the host.
    pub force_ssl_redirect: bool,
    /// `proxy-body-size`: `Some(0)` means no limit; `None` means the configured default.
    pub max_body: Option<u64>,
    /// `proxy-connect-timeout`, `proxy-read-timeout`, `proxy-send-timeout`.
    pub connect_timeout: Option<Duration>,
    pub read_timeout: Option<Duration>,
    pub write_timeout: Option<Duration>,
    /// cert-manager's ingress-shim annotations.
    pub certificate: CertAnnotations,
}

/// Which issuer an Ingress asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IssuerChoice {
    /// `cert-manager.io/cluster-issuer`
    Cluster(String),
    /// `cert-manager.io/issuer`, in the Ingress's namespace
    Namespaced(String),
    /// `kubernetes.io/tls-acme: "true"`: the configured default issuer
    Default,
}

/// What cert-manager's annotations say about the certificates of an Ingress's TLS entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertAnnotations {
    pub issuer: Option<IssuerChoice>,
    pub common_name: Option<String>,
    /// Added to each TLS entry's hosts.
    pub alt_names: Vec<String>,
    pub duration: Option<Duration>,
    pub renew_before: Option<Duration>,
    pub key: KeySpec,
}

impl Default for Annotations {
    fn default() -> Self {
        Self {
            ssl_redirect: true,
            force_ssl_redirect: false,
            max_body: None,
            connect_timeout: None,
            read_timeout: None,
            write_timeout: None,
            certificate: CertAnnotations::default(),
        }
    }
}

/// The outcome of reading annotations: errors reject the Ingress; notes are warnings.
#[derive(Debug, Default)]
pub struct Parsed {
    pub annotations: Annotations,
    pub errors: Vec<String>,
    pub notes: Vec<String>,
}

/// ingress-nginx annotations that pylon does not implement yet. Each is reported, so a user
/// migrating sees what would behave differently, instead of silently losing it.
const NOT_YET: &[&str] = &[
    "rewrite-target",
    "use-regex",
    "backend-protocol",
    "whitelist-source-range",
    "allowlist-source-range",
    "denylist-source-range",
    "auth-url",
    "auth-signin",
    "auth-response-headers",
    "auth-type",
    "auth-secret",
    "auth-secret-type",
    "auth-realm",
    "enable-cors",
    "cors-allow-origin",
    "cors-allow-methods",
    "cors-allow-headers",
    "cors-allow-credentials",
    "cors-max-age",
    "cors-expose-headers",
    "affinity",
    "affinity-mode",
    "session-cookie-name",
    "session-cookie-max-age",
    "session-cookie-expires",
    "session-cookie-path",
    "session-cookie-samesite",
    "session-cookie-secure",
    "canary",
    "canary-weight",
    "canary-by-header",
    "canary-by-header-value",
    "canary-by-header-pattern",
    "canary-by-cookie",
    "permanent-redirect",
    "permanent-redirect-code",
    "temporal-redirect",
    "temporal-redirect-code",
    "app-root",
    "from-to-www-redirect",
    "limit-rps",
    "limit-rpm",
    "limit-connections",
    "limit-burst-multiplier",
    "limit-whitelist",
    "upstream-vhost",
    "ssl-passthrough",
    "x-forwarded-prefix",
    "proxy-buffering",
    "proxy-buffer-size",
    "custom-http-errors",
    "default-backend",
    "service-upstream",
    "enable-access-log",
];

/// Annotations that inject raw nginx configuration. pylon never interprets configuration text.
const SNIPPETS: &[&str] = &[
    "configuration-snippet",
    "server-snippet",
    "stream-snippet",
    "auth-snippet",
    "modsecurity-snippet",
];

pub fn parse(annotations: Option<&BTreeMap<String, String>>) -> Parsed {
    let mut out = Parsed::default();
    let Some(annotations) = annotations else {
        return out;
    };
    for (key, value) in annotations {
        if let Some(name) = key.strip_prefix(NGINX) {
            nginx(name, key, value, &mut out);
        }
    }
    cert_manager(annotations, &mut out);
    out
}

/// cert-manager annotations pylon reads; the solver overrides are no-ops for an in-process solver.
const CERT_MANAGER_KNOWN: &[&str] = &[
    "cluster-issuer",
    "issuer",
    "issuer-kind",
    "issuer-group",
    "common-name",
    "alt-names",
    "duration",
    "renew-before",
    "private-key-algorithm",
    "private-key-size",
    "issue-temporary-certificate",
];
const TLS_ACME: &str = "kubernetes.io/tls-acme";

fn cert_manager(annotations: &BTreeMap<String, String>, out: &mut Parsed) {
    let get = |name: &str| {
        annotations
            .get(&format!("{CERT_MANAGER}{name}"))
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };
    let mut errors = Vec::new();
    let mut fail =
        |name: &str, reason: String| errors.push(format!("annotation {CERT_MANAGER}{name}: {reason}"));
    let c = &mut out.annotations.certificate;
    c.issuer = match (get("cluster-issuer"), get("issuer")) {
        (Some(_), Some(_)) => {
            fail("issuer", "set cluster-issuer or issuer, not both".into());
            None
        }
        (Some(name), None) => Some(IssuerChoice::Cluster(name.to_owned())),
        (None, Some(name)) => match get("issuer-kind") {
            Some("ClusterIssuer") => Some(IssuerChoice::Cluster(name.to_owned())),
            None | Some("Issuer") => Some(IssuerChoice::Namespaced(name.to_owned())),
            Some(kind) => {
                fail(
                    "issuer-kind",
                    format!("{kind:?}: external issuers are not supported"),
                );
                None
            }
        },
        (None, None) => match annotations.get(TLS_ACME).map(String::as_str) {
            Some("true") => Some(IssuerChoice::Default),
            _ => None,
        },
    };
    if let Some(group) = get("issuer-group").filter(|g| *g != "cert-manager.io") {
        fail(
            "issuer-group",
            format!("{group:?}: external issuers are not supported"),
        );
    }
    c.common_name = get("common-name").map(str::to_owned);
    c.alt_names = get("alt-names")
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    c.duration = get("duration").and_then(|v| match parse_go_duration(v) {
        Ok(d) if d > MAX_CERTIFICATE_DURATION => {
            fail("duration", format!("{v:?} is longer than 100 years (876000h)"));
            None
        }
        Ok(d) if d >= Duration::from_secs(3600) => Some(d),
        Ok(_) => {
            fail("duration", format!("{v:?} is shorter than 1h"));
            None
        }
        Err(e) => {
            fail("duration", e);
            None
        }
    });
    c.renew_before = get("renew-before").and_then(|v| match parse_go_duration(v) {
        Ok(d) if d > MAX_CERTIFICATE_DURATION => {
            fail(
                "renew-before",
                format!("{v:?} is longer than 100 years (876000h)"),
            );
            None
        }
        Ok(d) if d >= Duration::from_secs(300) => Some(d),
        Ok(_) => {
            fail("renew-before", format!("{v:?} is shorter than 5m"));
            None
        }
        Err(e) => {
            fail("renew-before", e);
            None
        }
    });
    if let (Some(d), Some(rb)) = (c.duration, c.renew_before)
        && rb >= d
    {
        fail("renew-before", "must be shorter than the duration".into());
    }
    match KeySpec::from_annotations(get("private-key-algorithm"), get("private-key-size")) {
        Ok(k) => c.key = k,
        Err(e) => fail("private-key-algorithm", e),
    }
    out.errors.extend(errors);
    for key in annotations.keys() {
        if let Some(name) = key.strip_prefix(CERT_MANAGER)
            && !CERT_MANAGER_KNOWN.contains(&name)
        {
            out.notes
                .push(format!("annotation {key} is not supported; it is ignored"));
        }
    }
}

/// The longest certificate lifetime (and renewal lead) taken: certificates end before the year
/// 9999, the last one X.509 can write.
const MAX_CERTIFICATE_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A Go duration as cert-manager takes it: `2160h`, `1h30m`, `45m0s`.
fn parse_go_duration(v: &str) -> Result<Duration, String> {
    humantime::parse_duration(v).map_err(|_| format!("{v:?} is not a duration like 2160h or 720h30m"))
}

fn nginx(name: &str, key: &str, value: &str, out: &mut Parsed) {
    let a = &mut out.annotations;
    let result = match name {
        "ssl-redirect" => parse_bool(value).map(|v| a.ssl_redirect = v),
        "force-ssl-redirect" => parse_bool(value).map(|v| a.force_ssl_redirect = v),
        "proxy-body-size" => value
            .parse::<ByteSize>()
            .map(|s| a.max_body = Some(s.bytes()))
            .map_err(|e| e.to_string()),
        "proxy-connect-timeout" => parse_timeout(value).map(|d| a.connect_timeout = Some(d)),
        "proxy-read-timeout" => parse_timeout(value).map(|d| a.read_timeout = Some(d)),
        "proxy-send-timeout" => parse_timeout(value).map(|d| a.write_timeout = Some(d)),
        n if SNIPPETS.contains(&n) => {
            out.notes.push(format!(
                "annotation {key} holds raw nginx configuration; pylon never interprets configuration text, it is ignored"
            ));
            Ok(())
        }
        n if NOT_YET.contains(&n) => {
            out.notes
                .push(format!("annotation {key} is not supported yet; it is ignored"));
            Ok(())
        }
        _ => {
            out.notes
                .push(format!("annotation {key} is unknown; it is ignored"));
            Ok(())
        }
    };
    if let Err(reason) = result {
        out.errors.push(format!("annotation {key}: {value:?} {reason}"));
    }
}

/// The values Go's `strconv.ParseBool` accepts, as ingress-nginx reads booleans.
fn parse_bool(value: &str) -> Result<bool, String> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err("is not a boolean (true or false)".into()),
    }
}

/// Whole seconds as ingress-nginx takes them (`60`), or a duration with a unit (`90s`, `2m`).
fn parse_timeout(value: &str) -> Result<Duration, String> {
    let v = value.trim();
    let d = if v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty() {
        v.parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|e| e.to_string())?
    } else {
        humantime::parse_duration(v)
            .map_err(|_| "is not a number of seconds or a duration like 90s".to_string())?
    };
    if d.is_zero() || d > Duration::from_secs(24 * 3600) {
        return Err("must be between 1 second and 24 hours".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_map(pairs: &[(&str, &str)]) -> Parsed {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(Some(&map))
    }

    #[test]
    fn reads_supported_annotations() {
        let p = parse_map(&[
            ("nginx.ingress.kubernetes.io/ssl-redirect", "false"),
            ("nginx.ingress.kubernetes.io/force-ssl-redirect", "True"),
            ("nginx.ingress.kubernetes.io/proxy-body-size", "8m"),
            ("nginx.ingress.kubernetes.io/proxy-read-timeout", "3600"),
            ("nginx.ingress.kubernetes.io/proxy-connect-timeout", "2s"),
            ("kubernetes.io/ingress.class", "nginx"),
        ]);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert!(p.notes.is_empty(), "{:?}", p.notes);
        assert_eq!(
            p.annotations,
            Annotations {
                ssl_redirect: false,
                force_ssl_redirect: true,
                max_body: Some(8 << 20),
                connect_timeout: Some(Duration::from_secs(2)),
                read_timeout: Some(Duration::from_secs(3600)),
                write_timeout: None,
                certificate: CertAnnotations::default(),
            }
        );
    }

    #[test]
    fn bad_values_are_errors_with_the_key() {
        let p = parse_map(&[
            ("nginx.ingress.kubernetes.io/ssl-redirect", "yes please"),
            ("nginx.ingress.kubernetes.io/proxy-body-size", "lots"),
            ("nginx.ingress.kubernetes.io/proxy-read-timeout", "0"),
        ]);
        assert_eq!(p.errors.len(), 3, "{:?}", p.errors);
        assert!(
            p.errors
                .iter()
                .all(|e| e.starts_with("annotation nginx.ingress.kubernetes.io/"))
        );
    }

    #[test]
    fn unsupported_and_unknown_annotations_are_noted() {
        let p = parse_map(&[
            ("nginx.ingress.kubernetes.io/rewrite-target", "/$2"),
            (
                "nginx.ingress.kubernetes.io/configuration-snippet",
                "more_set_headers \"X: y\";",
            ),
            ("nginx.ingress.kubernetes.io/made-up", "1"),
        ]);
        assert!(p.errors.is_empty());
        assert_eq!(p.notes.len(), 3);
        assert_eq!(p.annotations, Annotations::default());
    }

    #[test]
    fn reads_cert_manager_annotations() {
        let p = parse_map(&[
            ("cert-manager.io/cluster-issuer", "letsencrypt"),
            ("cert-manager.io/common-name", "app.example.com"),
            ("cert-manager.io/alt-names", "www.example.com, api.example.com"),
            ("cert-manager.io/duration", "2160h"),
            ("cert-manager.io/renew-before", "360h"),
            ("cert-manager.io/private-key-algorithm", "RSA"),
            ("cert-manager.io/private-key-size", "4096"),
            ("acme.cert-manager.io/http01-edit-in-place", "true"),
        ]);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert!(p.notes.is_empty(), "{:?}", p.notes);
        let c = &p.annotations.certificate;
        assert_eq!(c.issuer, Some(IssuerChoice::Cluster("letsencrypt".into())));
        assert_eq!(c.alt_names, ["www.example.com", "api.example.com"]);
        assert_eq!(c.duration, Some(Duration::from_secs(2160 * 3600)));
        assert_eq!(c.renew_before, Some(Duration::from_secs(360 * 3600)));
        assert_eq!(c.key, KeySpec::Rsa(4096));

        let p = parse_map(&[("kubernetes.io/tls-acme", "true")]);
        assert_eq!(p.annotations.certificate.issuer, Some(IssuerChoice::Default));
        let p = parse_map(&[("cert-manager.io/issuer", "local")]);
        assert_eq!(
            p.annotations.certificate.issuer,
            Some(IssuerChoice::Namespaced("local".into()))
        );
    }

    #[test]
    fn bad_cert_manager_annotations_are_errors() {
        let p = parse_map(&[
            ("cert-manager.io/cluster-issuer", "a"),
            ("cert-manager.io/issuer", "b"),
            ("cert-manager.io/duration", "10m"),
            ("cert-manager.io/private-key-size", "521"),
            ("cert-manager.io/issuer-group", "awspca.cert-manager.io"),
            ("cert-manager.io/subject-organizations", "ACME"),
        ]);
        assert_eq!(p.errors.len(), 4, "{:?}", p.errors);
        assert_eq!(p.notes.len(), 1, "{:?}", p.notes);

        // Lifetimes X.509 cannot write are refused here, before any certificate is made.
        for (key, value) in [
            ("cert-manager.io/duration", "1000000000h"),
            ("cert-manager.io/renew-before", "10000000000000000000s"),
        ] {
            let p = parse_map(&[(key, value)]);
            assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
            assert!(p.errors[0].contains("longer than 100 years"), "{:?}", p.errors);
        }
        let p = parse_map(&[("cert-manager.io/duration", "876000h")]);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
    }
}
