//! Host names: parsed once from Ingress rules, normalised cheaply from requests.

use std::fmt;

/// A lowercase DNS name without port or trailing dot, e.g. `app.example.com`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hostname(Box<str>);

/// The host part of an Ingress rule or TLS entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// `app.example.com`
    Exact(Hostname),
    /// `*.example.com`, holding `example.com`: matches exactly one more label.
    Wildcard(Hostname),
    /// A rule without a host: matches any request host.
    Any,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("host is empty")]
    Empty,
    #[error("host is longer than 253 characters")]
    TooLong,
    #[error("host must be a DNS name, not an IP address")]
    IpAddress,
    #[error("label {0:?} is not a lowercase RFC 1123 label")]
    BadLabel(String),
    #[error("a wildcard is only allowed as the whole first label (*.example.com)")]
    BadWildcard,
}

impl Hostname {
    /// Parses a host as Kubernetes validates `spec.rules[].host`: a lowercase RFC 1123 subdomain.
    pub fn parse(s: &str) -> Result<Self, HostError> {
        if s.is_empty() {
            return Err(HostError::Empty);
        }
        if s.len() > 253 {
            return Err(HostError::TooLong);
        }
        if s.parse::<std::net::IpAddr>().is_ok() {
            return Err(HostError::IpAddress);
        }
        for label in s.split('.') {
            if !is_dns_label(label) {
                return Err(HostError::BadLabel(label.to_owned()));
            }
        }
        Ok(Self(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name without its first label: `example.com` for `app.example.com`.
    pub fn parent(&self) -> Option<&str> {
        parent(&self.0)
    }

    /// The wildcard pattern a certificate for this name could come from: `*.example.com` for
    /// `app.example.com`.
    pub fn covering_wildcard(&self) -> Option<HostPattern> {
        self.parent().map(|p| HostPattern::Wildcard(Self(p.into())))
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl HostPattern {
    /// Parses an Ingress host field; `None` or empty means [`HostPattern::Any`].
    pub fn parse(host: Option<&str>) -> Result<Self, HostError> {
        match host {
            None | Some("") => Ok(Self::Any),
            Some(h) => match h.strip_prefix("*.") {
                Some(parent) => {
                    if parent.contains('*') {
                        return Err(HostError::BadWildcard);
                    }
                    Hostname::parse(parent).map(Self::Wildcard)
                }
                None if h.contains('*') => Err(HostError::BadWildcard),
                None => Hostname::parse(h).map(Self::Exact),
            },
        }
    }

    /// Whether a normalised request host matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => h.as_str() == host,
            Self::Wildcard(p) => parent(host) == Some(p.as_str()),
            Self::Any => true,
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(h) => write!(f, "{h}"),
            Self::Wildcard(p) => write!(f, "*.{p}"),
            Self::Any => f.write_str("*"),
        }
    }
}

/// Everything after the first label, if there is a second one.
pub fn parent(host: &str) -> Option<&str> {
    host.split_once('.')
        .map(|(_, rest)| rest)
        .filter(|r| !r.is_empty())
}

/// RFC 1123 label: lowercase alphanumerics and `-`, at most 63 characters.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Longest host the request path normalises; longer ones cannot match any rule.
pub const MAX_HOST_LEN: usize = 253;

/// Normalises a request's `Host` / `:authority` into `buf`: port and trailing dot removed,
/// ASCII lowercased. Returns `None` for values that cannot name a DNS host (IPv6 literals,
/// illegal bytes, too long); such requests match only host-less rules.
pub fn normalize_request_host<'b>(raw: &[u8], buf: &'b mut [u8; MAX_HOST_LEN]) -> Option<&'b str> {
    if raw.first() == Some(&b'[') {
        return None;
    }
    let host = match raw.iter().rposition(|&b| b == b':') {
        Some(i) if raw[i + 1..].iter().all(u8::is_ascii_digit) => &raw[..i],
        Some(_) => return None,
        None => raw,
    };
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return None;
    }
    for (dst, &b) in buf.iter_mut().zip(host) {
        if !(b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_') {
            return None;
        }
        *dst = b.to_ascii_lowercase();
    }
    std::str::from_utf8(&buf[..host.len()]).ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_rule_hosts_like_kubernetes() {
        assert_eq!(
            HostPattern::parse(Some("app.example.com")),
            Ok(HostPattern::Exact(Hostname("app.example.com".into())))
        );
        assert_eq!(
            HostPattern::parse(Some("*.example.com")),
            Ok(HostPattern::Wildcard(Hostname("example.com".into())))
        );
        assert_eq!(HostPattern::parse(None), Ok(HostPattern::Any));
        assert_eq!(HostPattern::parse(Some("")), Ok(HostPattern::Any));
        assert_eq!(
            HostPattern::parse(Some("App.example.com")),
            Err(HostError::BadLabel("App".into()))
        );
        assert_eq!(HostPattern::parse(Some("a.*.com")), Err(HostError::BadWildcard));
        assert_eq!(HostPattern::parse(Some("*")), Err(HostError::BadWildcard));
        assert_eq!(HostPattern::parse(Some("10.0.0.1")), Err(HostError::IpAddress));
        assert!(HostPattern::parse(Some("a..b")).is_err());
        assert!(HostPattern::parse(Some("-a.b")).is_err());
    }

    #[test]
    fn wildcard_matches_exactly_one_label() {
        let w = HostPattern::parse(Some("*.example.com")).unwrap();
        assert!(w.matches("a.example.com"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("a.b.example.com"));
        assert!(!w.matches("aexample.com"));
    }

    #[test]
    fn normalizes_request_hosts() {
        let mut buf = [0; MAX_HOST_LEN];
        assert_eq!(
            normalize_request_host(b"App.Example.COM:8443", &mut buf),
            Some("app.example.com")
        );
        let mut buf = [0; MAX_HOST_LEN];
        assert_eq!(
            normalize_request_host(b"example.com.", &mut buf),
            Some("example.com")
        );
        let mut buf = [0; MAX_HOST_LEN];
        assert_eq!(normalize_request_host(b"[::1]:80", &mut buf), None);
        let mut buf = [0; MAX_HOST_LEN];
        assert_eq!(normalize_request_host(b"a b", &mut buf), None);
        let mut buf = [0; MAX_HOST_LEN];
        assert_eq!(normalize_request_host(b"host:port", &mut buf), None);
        let mut buf = [0; MAX_HOST_LEN];
        assert_eq!(normalize_request_host(b"", &mut buf), None);
        let long = vec![b'a'; 300];
        let mut buf = [0; MAX_HOST_LEN];
        assert_eq!(normalize_request_host(&long, &mut buf), None);
    }

    proptest! {
        /// Whatever a client sends as its host: an answer, never a panic; a name that is
        /// lowercase, of the allowed bytes, and normalises to itself.
        #[test]
        fn any_request_host_is_answered(raw in prop::collection::vec(any::<u8>(), 0..300)) {
            let mut buf = [0; MAX_HOST_LEN];
            if let Some(host) = normalize_request_host(&raw, &mut buf) {
                let host = host.to_owned();
                prop_assert!(!host.is_empty() && host.len() <= MAX_HOST_LEN);
                prop_assert!(host.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit() || b"-._".contains(&b)));
                let mut again = [0; MAX_HOST_LEN];
                prop_assert_eq!(normalize_request_host(host.as_bytes(), &mut again), Some(host.as_str()));
            }
        }

        /// An Ingress host, written by a client in any case, with a port or a trailing dot,
        /// routes to that host.
        #[test]
        fn rule_hosts_are_found_however_clients_write_them(
            labels in prop::collection::vec("[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", 1..5),
            upper in prop::collection::vec(any::<bool>(), 60),
            port in prop::option::of(any::<u16>()),
            dot in any::<bool>(),
        ) {
            let name = labels.join(".");
            prop_assume!(Hostname::parse(&name).is_ok());
            let mut sent: String = name
                .chars()
                .zip(upper.iter().cycle())
                .map(|(c, &u)| if u { c.to_ascii_uppercase() } else { c })
                .collect();
            if dot {
                sent.push('.');
            }
            if let Some(port) = port {
                sent.push_str(&format!(":{port}"));
            }
            let mut buf = [0; MAX_HOST_LEN];
            prop_assert_eq!(normalize_request_host(sent.as_bytes(), &mut buf), Some(name.as_str()));
        }
    }
}
