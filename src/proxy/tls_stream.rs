//! A client's TLS connection, as pingora's proxy reads and writes it.
//!
//! pingora's own TLS stream type keeps room for a whole client and a whole server handshake
//! beside the connection (`Option`s of tokio-rustls's handshake futures, each holding a
//! connection inline), and a copy of the connection's facts: 4 800 bytes per connection. This
//! one is tokio-rustls's server stream and a pointer (1 600 bytes), and the handshake runs
//! before it exists.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, TimingDigest,
    UniqueID, UniqueIDType,
};
use rustls::CipherSuite;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream as RustlsStream;
use tracing::debug;

use super::coalesce::Coalesced;

/// A client connection after its TLS handshake.
#[derive(Debug)]
pub(super) struct TlsStream {
    inner: RustlsStream<Coalesced>,
    /// The connection's protocol version and cipher, for pingora's request digest (shared by
    /// every connection with the same ones).
    digest: Arc<SslDigest>,
}

impl TlsStream {
    /// Runs the server side of the handshake on `socket`.
    pub(super) async fn accept(acceptor: &TlsAcceptor, socket: Coalesced) -> io::Result<Self> {
        let inner = acceptor.accept(socket).await?;
        let digest = digest_of(inner.get_ref().1.negotiated_cipher_suite());
        Ok(Self { inner, digest })
    }

    /// The negotiated protocol version, as rustls names it ("TLSv1_3").
    pub(super) fn version(&self) -> &str {
        &self.digest.version
    }

    fn socket(&self) -> &Coalesced {
        self.inner.get_ref().0
    }
}

/// The digests of the listeners' cipher suites, built once. A suite's digest names its suite and
/// protocol version; pylon asks for no client certificates, so there is nothing else to tell.
fn digest_of(suite: Option<rustls::SupportedCipherSuite>) -> Arc<SslDigest> {
    static DIGESTS: LazyLock<Vec<(CipherSuite, Arc<SslDigest>)>> = LazyLock::new(|| {
        crate::tls::provider()
            .cipher_suites
            .iter()
            .map(|s| (s.suite(), Arc::new(new_digest(Some(*s)))))
            .collect()
    });
    static UNKNOWN: LazyLock<Arc<SslDigest>> = LazyLock::new(|| Arc::new(new_digest(None)));
    suite
        .and_then(|s| DIGESTS.iter().find(|(id, _)| *id == s.suite()))
        .map_or_else(|| UNKNOWN.clone(), |(_, digest)| digest.clone())
}

fn new_digest(suite: Option<rustls::SupportedCipherSuite>) -> SslDigest {
    let cipher = suite.and_then(|s| s.suite().as_str()).unwrap_or_default();
    let version = suite
        .and_then(|s| s.version().version.as_str())
        .unwrap_or_default();
    SslDigest::new(cipher, version, None, None, Vec::new())
}

impl AsyncRead for TlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for TlsStream {
    /// Sends close_notify and closes the socket for writing.
    async fn shutdown(&mut self) {
        if let Err(e) = AsyncWriteExt::shutdown(self).await {
            debug!(error = %e, "TLS shutdown failed");
        }
    }
}

impl Ssl for TlsStream {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        Some(self.digest.clone())
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        match self.inner.get_ref().1.alpn_protocol()? {
            b"h2" => Some(ALPN::H2),
            b"http/1.1" => Some(ALPN::H1),
            _ => None,
        }
    }
}

/// pylon never peeks at a TLS connection (h2c detection is off).
#[async_trait]
impl Peek for TlsStream {}

impl UniqueID for TlsStream {
    fn id(&self) -> UniqueIDType {
        self.socket().id()
    }
}

impl GetTimingDigest for TlsStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.socket().get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.socket().get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.socket().get_write_pending_time()
    }
}

impl GetProxyDigest for TlsStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.socket().get_proxy_digest()
    }
}

impl GetSocketDigest for TlsStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.socket().get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.get_mut().0.set_socket_digest(digest);
    }
}
