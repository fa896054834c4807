//! Client connections, before pingora's request handling: HTTP/2 goes to pingora as it is;
//! HTTP/1.x keep-alive connections wait here between requests.
//!
//! pingora waits for the next request on a keep-alive connection inside its request future,
//! which is sized for a whole proxied request (about 14 KiB, plus two more boxed futures and a
//! 4 KiB header buffer: 48 KiB per idle connection in all). pylon waits for the next request's
//! first byte in this small loop instead, then hands that byte to a fresh pingora session as
//! the start of its request. An idle connection then holds the connection task (see
//! [`super::listener`]), the TLS state and this loop's own state (under 1 KiB).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use futures_util::FutureExt;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{ALPN, Stream};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;

use super::Proxy;

/// The first read of a request: pingora's own starting size for request heads.
const HEAD_BUFFER: usize = 4096;

/// How long the first request of a connection may take to start, as pingora allows.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// pylon's `ServerApp`: what pylon's listeners hand each accepted (and TLS-terminated)
/// connection to.
pub struct ProxyApp {
    proxy: Arc<HttpProxy<Proxy>>,
    /// How long a connection may sit idle between requests.
    keepalive: Duration,
}

impl ProxyApp {
    pub fn new(proxy: HttpProxy<Proxy>, keepalive: Duration) -> Self {
        Self {
            proxy: Arc::new(proxy),
            keepalive,
        }
    }
}

#[async_trait]
impl ServerApp for ProxyApp {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return ServerApp::process_new(&self.proxy, stream, shutdown).await;
        }
        let mut stream = stream;
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut first = true;
        loop {
            let idle = if first {
                FIRST_REQUEST_TIMEOUT
            } else {
                self.keepalive
            };
            let head = next_request(&mut stream, idle, shutdown).await?;
            let mut session = ServerSession::new_http1(stream);
            session.set_keepalive(Some(idle.as_secs()));
            if let Some(settings) = settings.take() {
                settings.apply_to_session(&mut session);
            }
            if *shutdown.borrow() {
                session.set_keepalive(None);
            }
            // pylon leaves pingora's pipelining off, so the settings never carry a prefix.
            session.set_pipelined_prefix(head);
            let reused = self.proxy.process_new_http(session, shutdown).await?;
            (stream, settings) = reused.consume();
            first = false;
        }
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(self.proxy.as_ref()).await;
    }
}

/// Waits until the client sends the next request, and returns what has arrived of it (at
/// least one byte). `None`: the client closed the connection, sent nothing for `idle`, or pylon
/// is shutting down.
async fn next_request(stream: &mut Stream, idle: Duration, shutdown: &ShutdownWatch) -> Option<BytesMut> {
    let mut closing = shutdown.clone();
    if *closing.borrow() {
        return None;
    }
    let mut first = [0u8; 1];
    let read = tokio::select! {
        read = tokio::time::timeout(idle, stream.read(&mut first)) => read,
        _ = closing.changed() => return None,
    };
    if !matches!(read, Ok(Ok(1))) {
        return None;
    }
    let mut head = BytesMut::with_capacity(HEAD_BUFFER);
    head.put_u8(first[0]);
    // The rest of what has already arrived, without waiting: usually the whole request head,
    // so that pingora parses it once. What is not there yet, pingora reads itself.
    let _ = stream.read_buf(&mut head).now_or_never();
    Some(head)
}
