//! Backends: a Service port resolved to its ready endpoints, with round-robin selection.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Which Service port an Ingress backend names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortRef {
    Number(u16),
    Name(Box<str>),
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Name(n) => f.write_str(n),
        }
    }
}

/// `namespace/service:port`: the identity of a backend, also its metric label.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId {
    pub namespace: Box<str>,
    pub service: Box<str>,
    pub port: PortRef,
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.service, self.port)
    }
}

/// Why a backend has no endpoint to offer; each one answers 503.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unavailable {
    ServiceMissing,
    PortMissing,
    NoReadyEndpoints,
    /// An ExternalName Service without a name.
    ExternalNameMissing,
    /// An ExternalName Service whose DNS name has not been looked up yet.
    NamePending,
    /// An ExternalName Service whose DNS name has never resolved.
    NameUnresolved,
}

impl Unavailable {
    /// The short body of the 503 answer.
    pub fn message(self) -> &'static str {
        match self {
            Self::ServiceMissing => "service not found",
            Self::PortMissing => "service port not found",
            Self::NoReadyEndpoints => "no ready endpoints",
            Self::ExternalNameMissing => "service has no external name",
            Self::NamePending => "service name not resolved yet",
            Self::NameUnresolved => "service name does not resolve",
        }
    }
}

#[derive(Debug)]
pub struct Backend {
    pub id: BackendId,
    endpoints: Box<[SocketAddr]>,
    unavailable: Option<Unavailable>,
    next: AtomicUsize,
}

impl Backend {
    /// A backend with ready endpoints (sorted, deduplicated by the caller or here).
    pub fn new(id: BackendId, mut endpoints: Vec<SocketAddr>) -> Self {
        endpoints.sort_unstable();
        endpoints.dedup();
        let unavailable = endpoints.is_empty().then_some(Unavailable::NoReadyEndpoints);
        Self {
            id,
            endpoints: endpoints.into_boxed_slice(),
            unavailable,
            next: AtomicUsize::new(0),
        }
    }

    pub fn unavailable(id: BackendId, why: Unavailable) -> Self {
        Self {
            id,
            endpoints: Box::default(),
            unavailable: Some(why),
            next: AtomicUsize::new(0),
        }
    }

    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    pub fn why_unavailable(&self) -> Option<Unavailable> {
        self.unavailable
    }

    /// The next endpoint in round-robin order that is not in `tried`.
    pub fn pick(&self, tried: &[SocketAddr]) -> Option<SocketAddr> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| self.endpoints[(start + i) % n])
            .find(|addr| !tried.contains(addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> BackendId {
        BackendId {
            namespace: "default".into(),
            service: "app".into(),
            port: PortRef::Number(80),
        }
    }

    #[test]
    fn round_robin_skips_tried_endpoints() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let backend = Backend::new(id(), vec![b, a, a]);
        assert_eq!(backend.endpoints(), [a, b]);
        let first = backend.pick(&[]).unwrap();
        let second = backend.pick(&[]).unwrap();
        assert_ne!(first, second);
        assert_eq!(backend.pick(&[a]), Some(b));
        assert_eq!(backend.pick(&[a, b]), None);
    }

    #[test]
    fn empty_backend_is_unavailable() {
        let backend = Backend::new(id(), vec![]);
        assert_eq!(backend.why_unavailable(), Some(Unavailable::NoReadyEndpoints));
        assert_eq!(backend.pick(&[]), None);
    }
}
