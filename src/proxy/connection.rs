//! Client connections, before pingora's request handling: HTTP/2 goes to pingora once its
//! preface has arrived; HTTP/1.x keep-alive connections wait here between requests, and a
//! request head that arrives in pieces is read here within the header timeout.
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
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{ALPN, Stream};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;

use super::Proxy;
use super::replay::Replay;

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
    heads: HeadLimits,
}

/// How a request head must arrive.
#[derive(Clone, Debug)]
pub struct HeadLimits {
    /// From its first byte to its end (`proxy.client-header-timeout`).
    pub timeout: Duration,
    /// Its size in bytes, beyond which it is refused with 431 (`proxy.max-request-header-size`).
    pub max_bytes: usize,
    /// Counts the heads cut off by `timeout`.
    pub timeouts: prometheus::IntCounter,
}

impl ProxyApp {
    pub fn new(proxy: HttpProxy<Proxy>, keepalive: Duration, heads: HeadLimits) -> Self {
        Self {
            proxy: Arc::new(proxy),
            keepalive,
            heads,
        }
    }
}

impl ProxyApp {
    /// A request whose head arrived in pieces: the rest must come within the header timeout
    /// of its first byte.
    async fn slow_request(
        self: &Arc<Self>,
        mut stream: Stream,
        head: BytesMut,
        idle: Duration,
        settings: Option<HttpPersistentSettings>,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match rest_of_head(&mut stream, head, &self.heads).await? {
            Head::Complete(head) => {
                let session = new_session(stream, head, idle, settings, shutdown);
                self.proxy.process_new_http(session, shutdown).await
            }
            // pingora reads the rest of an oversized head and answers 431, and may keep the
            // connection: within the same deadline.
            Head::Oversized(head, deadline) => {
                let session = new_session(stream, head, idle, settings, shutdown);
                let process = self.proxy.process_new_http(session, shutdown);
                match tokio::time::timeout_at(deadline, process).await {
                    Ok(reused) => reused,
                    Err(_) => {
                        self.heads.timeouts.inc();
                        None
                    }
                }
            }
        }
    }
}

/// A pingora session for the request whose head (or its start) is `head`.
fn new_session(
    stream: Stream,
    head: BytesMut,
    idle: Duration,
    settings: Option<HttpPersistentSettings>,
    shutdown: &ShutdownWatch,
) -> ServerSession {
    let mut session = ServerSession::new_http1(stream);
    session.set_keepalive(Some(idle.as_secs()));
    if let Some(settings) = settings {
        settings.apply_to_session(&mut session);
    }
    if *shutdown.borrow() {
        session.set_keepalive(None);
    }
    // pylon leaves pingora's pipelining off, so the settings never carry a prefix.
    session.set_pipelined_prefix(head);
    session
}

#[async_trait]
impl ServerApp for ProxyApp {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            let stream = Box::pin(h2_preface(stream, &self.heads)).await?;
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
            let reused = if head_complete(&head, 0) {
                let session = new_session(stream, head, idle, settings.take(), shutdown);
                self.proxy.process_new_http(session, shutdown).await?
            } else {
                // A head in pieces. Boxed: its timer and buffers would otherwise enlarge every
                // idle connection's state.
                Box::pin(self.slow_request(stream, head, idle, settings.take(), shutdown)).await?
            };
            (stream, settings) = reused.consume();
            first = false;
        }
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(self.proxy.as_ref()).await;
    }
}

/// The fixed start of every HTTP/2 connection from a client (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads an HTTP/2 connection's preface within `limits.timeout` (pingora would wait for it for
/// ever), and returns the connection with the preface to be read again. `None`: the client
/// closed, sent something else, or ran out of time.
async fn h2_preface(mut stream: Stream, limits: &HeadLimits) -> Option<Stream> {
    let mut ahead = vec![0u8; H2_PREFACE.len()];
    let mut read = 0;
    let preface = async {
        while read < ahead.len() {
            match stream.read(&mut ahead[read..]).await {
                Ok(n) if n > 0 => read += n,
                _ => return false,
            }
        }
        true
    };
    match pingora::time::timeout(limits.timeout, preface).await {
        // pingora's HTTP/2 handshake refuses anything but the preface.
        Ok(true) => Some(Box::new(Replay::new(ahead, stream))),
        Ok(false) => None,
        Err(_) => {
            limits.timeouts.inc();
            tracing::debug!("HTTP/2 preface not received within the header timeout");
            None
        }
    }
}

/// A request head read here.
enum Head {
    /// The whole head (and whatever followed it).
    Complete(BytesMut),
    /// The head's first `max_bytes` and more, without its end; pingora reads the rest by
    /// this deadline.
    Oversized(BytesMut, tokio::time::Instant),
}

/// Whether `buf` holds a request head's end (an empty line, after CRLF or bare LF line ends
/// as pingora accepts them), looking from byte `from` on.
fn head_complete(buf: &[u8], from: usize) -> bool {
    let from = from.saturating_sub(2).min(buf.len());
    memchr::memchr_iter(b'\n', &buf[from..]).any(|i| {
        let rest = &buf[from + i + 1..];
        rest.starts_with(b"\n") || rest.starts_with(b"\r\n")
    })
}

/// Reads the rest of a request head that arrived in pieces, within `limits.timeout` of its
/// first byte (nginx's `client_header_timeout`): a client that sends its head a byte at a time
/// cannot hold a connection for ever. `None`: the client closed or ran out of time.
async fn rest_of_head(stream: &mut Stream, mut head: BytesMut, limits: &HeadLimits) -> Option<Head> {
    let deadline = tokio::time::Instant::now() + limits.timeout;
    let read = async {
        loop {
            if head.len() > limits.max_bytes {
                return Some(Head::Oversized(std::mem::take(&mut head), deadline));
            }
            let seen = head.len();
            head.reserve(HEAD_BUFFER);
            match stream.read_buf(&mut head).await {
                Ok(n) if n > 0 => {
                    if head_complete(&head, seen) {
                        return Some(Head::Complete(std::mem::take(&mut head)));
                    }
                }
                _ => return None,
            }
        }
    };
    match tokio::time::timeout_at(deadline, read).await {
        Ok(head) => head,
        Err(_) => {
            limits.timeouts.inc();
            tracing::debug!("request head not received within the header timeout");
            None
        }
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
    // pingora's coarse timer, as for the TLS handshake (see `super::listener`): a tokio timer
    // here would wake the runtime's I/O driver whenever it is the runtime's earliest.
    let read = tokio::select! {
        read = pingora::time::timeout(idle, stream.read(&mut first)) => read,
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

#[cfg(test)]
mod tests {
    use super::head_complete;

    #[test]
    fn a_head_ends_at_its_first_empty_line() {
        assert!(head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0));
        assert!(head_complete(b"GET / HTTP/1.0\n\n", 0));
        assert!(head_complete(b"GET / HTTP/1.1\nHost: a\n\r\nbody", 0));
        assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n", 0));
        assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r", 0));
        // Looking from where the last read started still finds an end split across reads.
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for seen in 0..head.len() {
            assert!(head_complete(head, seen), "{seen}");
        }
    }
}
