//! The certificate index: exact names, wildcards by parent domain, and a default.

use std::sync::Arc;

use rustls::sign::CertifiedKey;

use crate::routing::host::parent;
use crate::routing::{HostPattern, SharedMap};

type Map = SharedMap<Arc<CertifiedKey>>;

/// How a server name was matched; also the label of the ClientHello counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Matched {
    Exact,
    Wildcard,
    Default,
}

impl Matched {
    pub fn label(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Wildcard => "wildcard",
            Self::Default => "default",
        }
    }
}

/// Like the route table, shared names make the next index a cheap clone of the last one.
#[derive(Clone, Debug, Default)]
pub struct CertIndex {
    exact: Map,
    wildcard: Map,
    default: Option<Arc<CertifiedKey>>,
}

impl CertIndex {
    /// Exact name, then `*.parent`, then the default certificate.
    pub fn find(&self, server_name: Option<&str>) -> Option<(Matched, &Arc<CertifiedKey>)> {
        if let Some(name) = server_name {
            let name = name.strip_suffix('.').unwrap_or(name);
            if let Some(key) = self.exact.get(name) {
                return Some((Matched::Exact, key));
            }
            if let Some(key) = parent(name).and_then(|p| self.wildcard.get(p)) {
                return Some((Matched::Wildcard, key));
            }
        }
        self.default.as_ref().map(|key| (Matched::Default, key))
    }

    /// Names with their own certificate (wildcards as `*.parent`), not counting the default.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces the certificate of `name` (none: the name has no certificate of its own).
    /// Host-less patterns are ignored.
    pub fn set(&mut self, name: &HostPattern, key: Option<Arc<CertifiedKey>>) {
        let (map, name) = match name {
            HostPattern::Exact(h) => (&mut self.exact, h.as_str()),
            HostPattern::Wildcard(p) => (&mut self.wildcard, p.as_str()),
            HostPattern::Any => return,
        };
        map.set(name, key);
    }

    pub fn set_default(&mut self, key: Arc<CertifiedKey>) {
        self.default = Some(key);
    }

    /// Whether a request host has a certificate of its own (exact or wildcard).
    pub fn covers(&self, host: &str) -> bool {
        self.exact.contains_key(host) || parent(host).is_some_and(|p| self.wildcard.contains_key(p))
    }
}

/// Builds a [`CertIndex`]; the first certificate added for a name wins.
#[derive(Debug, Default)]
pub struct CertIndexBuilder {
    index: CertIndex,
}

impl CertIndexBuilder {
    /// Adds `key` for `name`; returns the key already there, if any. Host-less patterns are
    /// ignored: a certificate needs a name.
    pub fn add(&mut self, name: &HostPattern, key: Arc<CertifiedKey>) -> Result<(), Arc<CertifiedKey>> {
        let (map, name) = match name {
            HostPattern::Exact(h) => (&mut self.index.exact, h.as_str()),
            HostPattern::Wildcard(p) => (&mut self.index.wildcard, p.as_str()),
            HostPattern::Any => return Ok(()),
        };
        if let Some(existing) = map.get(name) {
            if Arc::ptr_eq(existing, &key) {
                return Ok(());
            }
            return Err(existing.clone());
        }
        map.set(name, Some(key));
        Ok(())
    }

    pub fn set_default(&mut self, key: Arc<CertifiedKey>) {
        self.index.default = Some(key);
    }

    pub fn build(self) -> CertIndex {
        self.index
    }
}
