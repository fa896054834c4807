//! The rustls SNI resolver and the handshake callback that records per-connection facts.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
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

/// Facts about a TLS connection, attached to it after the handshake.
#[derive(Debug)]
pub struct ConnectionInfo {
    pub server_name: Option<Box<str>>,
    pub version: &'static str,
}

/// pingora's TLS accept callbacks: count handshakes and attach [`ConnectionInfo`].
pub struct HandshakeCallbacks {
    metrics: Arc<Metrics>,
}

impl HandshakeCallbacks {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

#[async_trait]
impl TlsAccept for HandshakeCallbacks {
    async fn handshake_complete_callback(&self, tls: &TlsRef) -> Option<Arc<dyn Any + Send + Sync>> {
        let version = tls.version().unwrap_or("unknown");
        self.metrics.tls_handshakes.with_label_values(&[version]).inc();
        Some(Arc::new(ConnectionInfo {
            server_name: tls.server_name().map(Into::into),
            version,
        }))
    }
}
