//! pylon's listeners: they accept client connections, run the TLS handshake and hand each
//! connection to [`ProxyApp`].
//!
//! pingora's own listening service runs each connection in a task whose future holds the TLS
//! handshake inline, so the handshake's state (8.6 KiB) stays allocated for as long as the
//! connection lives. Here the handshake runs in a box of its own that is freed when it ends: an
//! idle connection's task holds a few pointers. A TLS connection is pylon's own stream type
//! ([`TlsStream`]), which holds no buffers while the connection is idle. The sockets are bound
//! before the server starts, so a port that is taken stops pylon with a clear error, and
//! `/readyz` knows when the accept loops run. The accept loop is also where the PROXY protocol
//! and per-client limits belong.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream};
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::Service;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, error, warn};

use super::ProxyApp;
use super::coalesce::Coalesced;
use super::proxy_protocol;
use super::tls_stream::TlsStream;
use crate::admin::Health;
use crate::metrics::Metrics;

/// How long a client may take to complete its TLS handshake (nginx and pingora allow 60 s).
///
/// This, the PROXY header's limit and the waits for a connection's next request (see
/// [`super::connection`]) are pingora's coarse timers (10 ms ticks from a thread of their own),
/// not tokio's: a new tokio timer due before every other one in the runtime wakes the runtime's
/// I/O driver through its eventfd, one `write` and one more `epoll_wait` per connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a connection may take to send its PROXY protocol header. Load balancers send it
/// with the connection's first packet.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Pending connections the kernel queues per listener; Linux caps it at `net.core.somaxconn`.
const BACKLOG: i32 = 65535;

/// How long the accept loop pauses when the process is out of file descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A bound listening socket, plain HTTP or TLS.
pub struct Listener {
    name: &'static str,
    socket: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    proxy_protocol: bool,
}

impl Listener {
    /// Binds `addr` (with `SO_REUSEADDR`, as servers do) and starts listening; connections
    /// wait in the kernel's queue until the proxy service accepts them.
    pub fn bind(name: &'static str, addr: SocketAddr) -> std::io::Result<Self> {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            name,
            socket: socket.into(),
            tls: None,
            proxy_protocol: false,
        })
    }

    /// Expects a PROXY protocol header at the start of every connection, before any TLS, and
    /// takes the client's address from it. A connection without a valid header within
    /// `PROXY_HEADER_TIMEOUT` (10 s) is closed.
    pub fn proxy_protocol(mut self, on: bool) -> Self {
        self.proxy_protocol = on;
        self
    }

    /// Makes this a TLS listener with `config` ([`crate::tls::server_config`]).
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }
}

/// The pingora service that runs the listeners' accept loops on the proxy's runtime.
pub struct ProxyService {
    app: Option<ProxyApp>,
    listeners: Vec<Listener>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl ProxyService {
    pub fn new(app: ProxyApp, listeners: Vec<Listener>, metrics: Arc<Metrics>, health: Arc<Health>) -> Self {
        Self {
            app: Some(app),
            listeners,
            metrics,
            health,
        }
    }
}

#[async_trait]
impl Service for ProxyService {
    async fn start_service(&mut self, _fds: Option<ListenFds>, shutdown: ShutdownWatch, _per_fd: usize) {
        let Some(app) = self.app.take() else {
            return;
        };
        let app = Arc::new(app);
        let mut loops = Vec::new();
        let mut all_open = true;
        for listener in std::mem::take(&mut self.listeners) {
            let socket = match TcpListener::from_std(listener.socket) {
                Ok(socket) => socket,
                Err(e) => {
                    error!(listener = listener.name, error = %e, "cannot register the listener; it accepts nothing and /readyz stays false");
                    all_open = false;
                    continue;
                }
            };
            let accept = AcceptLoop {
                name: listener.name,
                connection: Connection {
                    tls: listener.tls,
                    proxy_protocol: listener.proxy_protocol,
                    app: app.clone(),
                    metrics: self.metrics.clone(),
                    shutdown: shutdown.clone(),
                },
            };
            loops.push(tokio::spawn(accept.run(socket)));
        }
        if all_open {
            self.health.mark_listening();
        }
        for accept in loops {
            let _ = accept.await;
        }
        // The listeners are closed: wake requests that wait inside pingora.
        app.cleanup().await;
    }

    fn name(&self) -> &str {
        "pylon proxy"
    }
}

/// One listener's accept loop, until shutdown.
struct AcceptLoop {
    name: &'static str,
    /// What each accepted connection's task is given (a copy).
    connection: Connection,
}

impl AcceptLoop {
    async fn run(self, socket: TcpListener) {
        let mut shutdown = self.connection.shutdown.clone();
        loop {
            let accepted = tokio::select! {
                accepted = socket.accept() => accepted,
                changed = shutdown.changed() => match changed {
                    Ok(()) if !*shutdown.borrow() => continue,
                    _ => break,
                },
            };
            match accepted {
                Ok((tcp, peer)) => {
                    tokio::spawn(self.connection.clone().serve(tcp, peer));
                }
                Err(e) if is_resource_exhaustion(&e) => {
                    warn!(listener = self.name, error = %e, "cannot accept connections; pausing");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                // A connection reset before it was accepted, and the like: nothing to do.
                Err(e) => debug!(listener = self.name, error = %e, "accept failed"),
            }
        }
        debug!(listener = self.name, "listener closed");
    }
}

/// `accept` errors that repeat until something is freed (busy-looping on them would not help).
fn is_resource_exhaustion(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        Errno::from_io_error(e),
        Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)
    )
}

/// What a connection's task needs. The task's future holds this and a pointer to whichever
/// boxed future runs: the set-up (PROXY header, TLS handshake), then [`ProxyApp`]'s.
#[derive(Clone)]
struct Connection {
    tls: Option<Arc<rustls::ServerConfig>>,
    proxy_protocol: bool,
    app: Arc<ProxyApp>,
    metrics: Arc<Metrics>,
    shutdown: ShutdownWatch,
}

impl Connection {
    async fn serve(self, tcp: TcpStream, peer: SocketAddr) {
        let _open = OpenConnectionGuard::new(&self.metrics.open_connections);
        // Boxed, and freed once the connection is set up: the socket type and the TLS handshake
        // are large, and would otherwise stay in this task's future for the connection's life.
        let Some(stream) = Box::pin(self.start(tcp, peer)).await else {
            return;
        };
        let mut next = Some(stream);
        while let Some(stream) = next {
            next = ServerApp::process_new(&self.app, stream, &self.shutdown).await;
        }
    }

    /// Sets the connection up: its PROXY protocol header if expected, then its TLS handshake
    /// on a TLS listener. `None`: refused, counted and closed.
    async fn start(&self, tcp: TcpStream, peer: SocketAddr) -> Option<Stream> {
        // Responses are written whole; waiting for more to send only adds latency.
        let _ = tcp.set_nodelay(true);
        let (mut l4, peer) = if self.proxy_protocol {
            self.read_proxy_header(L4Stream::from(tcp), peer).await?
        } else {
            (L4Stream::from(tcp), peer)
        };
        let digest = SocketDigest::from_raw_fd(l4.as_raw_fd());
        let _ = digest.peer_addr.set(Some(peer.into()));
        l4.set_socket_digest(digest);
        let Some(config) = &self.tls else {
            return Some(Box::new(Coalesced::new(l4)));
        };
        match pingora::time::timeout(HANDSHAKE_TIMEOUT, TlsStream::accept(config.clone(), l4)).await {
            Ok(Ok(tls)) => {
                self.metrics
                    .tls_handshakes
                    .with_label_values(&[tls.version()])
                    .inc();
                Some(Box::new(tls))
            }
            Ok(Err(e)) => {
                self.metrics.tls_handshake_failures.inc();
                debug!(%peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                self.metrics.tls_handshake_failures.inc();
                debug!(%peer, "TLS handshake timed out");
                None
            }
        }
    }
}

impl Connection {
    /// Reads the connection's PROXY protocol header. Returns the stream, with what followed the
    /// header to be read again, and the client's address from the header (the connection's own
    /// for a health check). `None`: refused and counted.
    async fn read_proxy_header(&self, mut l4: L4Stream, peer: SocketAddr) -> Option<(L4Stream, SocketAddr)> {
        let refused = |reason: &str| {
            self.metrics
                .proxy_protocol_refused
                .with_label_values(&[reason])
                .inc();
        };
        match pingora::time::timeout(PROXY_HEADER_TIMEOUT, proxy_protocol::read_header(&mut l4)).await {
            Ok(Ok((header, rest))) => {
                l4.rewind(&rest);
                Some((l4, header.source.unwrap_or(peer)))
            }
            Ok(Err(e)) => {
                refused(e.reason());
                debug!(%peer, error = %e, "PROXY protocol header refused");
                None
            }
            Err(_) => {
                refused("timeout");
                debug!(%peer, "no PROXY protocol header in time");
                None
            }
        }
    }
}

/// Increments the open-connections gauge while alive.
#[derive(Debug)]
struct OpenConnectionGuard(prometheus::IntGauge);

impl OpenConnectionGuard {
    fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for OpenConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
