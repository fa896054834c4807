//! Ingress annotations, parsed into typed values. No annotation value is ever copied into a
//! configuration language; a value that does not parse rejects the Ingress with the reason.

use std::collections::BTreeMap;
use std::time::Duration;

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
        } else if key.starts_with(CERT_MANAGER) {
            out.notes.push(format!(
                "annotation {key} is not acted on yet: pylon does not order certificates in this version"
            ));
        }
    }
    out
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
}
