//! The rustls SNI resolver.

use std::sync::Arc;

use prometheus::IntCounter;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::Matched;
use crate::metrics::Metrics;
use crate::snapshot::Published;

/// Picks the certificate for each handshake from the current snapshot.
pub struct SniResolver {
    published: Published,
    hellos: [IntCounter; 3],
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SniResolver")
    }
}

impl SniResolver {
    pub fn new(published: Published, metrics: &Metrics) -> Self {
        let counter = |m: Matched| metrics.tls_client_hellos.with_label_values(&[m.label()]);
        Self {
            published,
            hellos: [
                counter(Matched::Exact),
                counter(Matched::Wildcard),
                counter(Matched::Default),
            ],
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let snapshot = self.published.load();
        let (matched, key) = snapshot.certs.find(hello.server_name())?;
        self.hellos[matched as usize].inc();
        Some(key.clone())
    }
}
