//! A client's TLS connection, as pingora's proxy reads and writes it, that holds no buffers while
//! the connection is idle.
//!
//! pingora's own TLS stream type keeps room for a whole client and a whole server handshake
//! beside the connection, and a copy of the connection's facts: 4 800 bytes per connection.
//! Under it, rustls's buffered connection keeps a 4 KiB receive buffer for the connection's
//! life. This stream drives rustls's unbuffered connection instead and owns the buffers:
//! - records are read from the socket into per-thread space, and only what is not processed at
//!   once (the start of a record whose rest has not arrived) waits in `incoming`;
//! - decrypted data goes straight into the reader's buffer; what does not fit waits in `plain`;
//! - small writes are gathered as plaintext (up to one TCP segment, as much as pingora's socket
//!   and nginx's `postpone_output` hold back) and encrypted together at the flush that ends a
//!   response, or before the next large write: a response's head and body make one record and
//!   leave in one system call;
//! - records are encrypted in per-thread space and go to the socket at once; only what it does
//!   not take waits in `outgoing`.
//!
//! Each buffer is freed when it is empty and the connection waits. An idle keep-alive
//! connection is rustls's state (keys and record layer), the socket and a pointer to a digest
//! shared by all connections. The price: rustls's unbuffered encryption copies each record once
//! more than its buffered one (about 1 million instructions per MiB sent).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, ready};

use async_trait::async_trait;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{ALPN, Peek, Shutdown, Ssl};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus, WriteTraffic};
use rustls::{CipherSuite, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;

use super::coalesce::GATHER_LIMIT;

/// How much is read from the socket at a time: a whole record of the largest size.
const READ_SIZE: usize = 5 + 16 * 1024 + 256;
/// A write waits (returns `Pending`) while this much encrypted data has not been sent.
const SEND_LIMIT: usize = 64 * 1024;
/// Plaintext encrypted per record (TLS's maximum fragment).
const RECORD_PLAINTEXT: usize = 16 * 1024;
/// What a record adds to its plaintext at most: header, explicit nonce (TLS 1.2), content type
/// (TLS 1.3) and tag.
const RECORD_OVERHEAD: usize = 5 + 8 + 1 + 16 + 16;
/// A close_notify alert's record, with room to spare.
const CLOSE_NOTIFY_SIZE: usize = 64;

/// Copies whose destination lies a few bytes past their source, counted modulo 4 KiB, run up
/// to 25 times slower on the CPUs measured (4K aliasing: each load waits for the store just
/// before it). rustls copies a record's plaintext to the start of a record-sized allocation,
/// 5 bytes in (after the record header); such allocations start on a page. A plaintext that
/// starts on a page, as pingora's HTTP/1.1 body buffer does, is copied 5 bytes ahead of itself:
/// 4.7 µs per 16 KiB record where 0.2 µs is usual (perf of 1 MiB responses over HTTP/1.1:
/// rustls's copy was 31 % of pylon's CPU, AES-GCM 10 %).
const PAGE: usize = 4096;
/// Where rustls puts a record's plaintext, from a page's start.
const RUSTLS_PLAINTEXT_AT: usize = 5;
/// Destinations less than this far ahead of their source (modulo [`PAGE`]) copy slowly.
const ALIASING_DISTANCE: usize = 32;
/// Where plaintext that would alias is moved to before it is encrypted, and where records are
/// encrypted to in `WRITE_SPACE`, from a page's start: far enough from rustls's buffers.
const UNALIASED_AT: usize = 64;

/// Whether rustls's copy of a record's plaintext from `source` would alias.
fn aliases(source: *const u8) -> bool {
    let distance = RUSTLS_PLAINTEXT_AT.wrapping_sub(source as usize) % PAGE;
    (1..ALIASING_DISTANCE).contains(&distance)
}

/// The index in `space` that lies [`UNALIASED_AT`] bytes past a page's start, with `len`
/// bytes after it.
fn unaliased_start(space: &mut Vec<u8>, len: usize) -> usize {
    if space.len() < PAGE + UNALIASED_AT + len {
        space.resize(PAGE + UNALIASED_AT + len, 0);
    }
    space.as_ptr().align_offset(PAGE) + UNALIASED_AT
}

/// A client connection over TLS.
pub(super) struct TlsStream {
    conn: UnbufferedServerConnection,
    socket: L4Stream,
    /// Records received and not processed yet (a record's start, until the rest arrives).
    incoming: Vec<u8>,
    /// Plaintext of small writes, not encrypted yet (at most [`GATHER_LIMIT`] bytes between
    /// writes).
    gathered: Vec<u8>,
    /// Records to send: `outgoing[sent..]` has not been written to the socket yet.
    outgoing: Vec<u8>,
    sent: usize,
    /// Decrypted bytes that did not fit the reader's buffer: `plain[taken..]`.
    plain: Vec<u8>,
    taken: usize,
    /// The socket read its end.
    socket_eof: bool,
    /// The client sent close_notify: reads return the end of the stream.
    peer_closed: bool,
    /// pylon's close_notify is queued.
    closing: bool,
    /// The connection's protocol version and cipher, for pingora's request digest (shared by
    /// every connection with the same ones).
    digest: Arc<SslDigest>,
}

thread_local! {
    /// Where each proxy thread reads records from a socket: the bytes read are copied into the
    /// connection's `incoming` (a request is a few hundred), so that no buffer is initialised
    /// per read.
    static READ_SPACE: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_SIZE].into_boxed_slice());
    /// Where each proxy thread encrypts records: they go to the socket from here, and only what
    /// the socket does not take is copied into the connection's `outgoing`.
    static WRITE_SPACE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Where plaintext that would alias in rustls's copy is moved first (see [`PAGE`]).
    static MOVE_SPACE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("socket", &self.socket)
            .field("version", &self.digest.version)
            .finish_non_exhaustive()
    }
}

type Traffic<'c> = WriteTraffic<'c, rustls::server::ServerConnectionData>;
/// Writes in the connection's write state; may append to `outgoing` (the second argument).
type WriteFn<'f> = &'f mut dyn FnMut(&mut Traffic<'_>, &mut Vec<u8>) -> io::Result<()>;

/// A TLS error as an I/O error (the client sent something rustls refuses).
fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// What processing the received records came to.
enum Processed {
    /// Application data was decrypted.
    Data,
    /// Nothing more can be done without more records from the client.
    NeedMore,
    /// The client closed the connection cleanly.
    Closed,
    /// The write given to [`TlsStream::process`] ran.
    Wrote,
}

impl TlsStream {
    /// Runs the server side of the handshake on `socket`.
    pub(super) async fn accept(config: Arc<ServerConfig>, socket: L4Stream) -> io::Result<Self> {
        let conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
        let mut stream = Self {
            conn,
            socket,
            incoming: Vec::new(),
            gathered: Vec::new(),
            outgoing: Vec::new(),
            sent: 0,
            plain: Vec::new(),
            taken: 0,
            socket_eof: false,
            peer_closed: false,
            closing: false,
            digest: digest_of(None),
        };
        match std::future::poll_fn(|cx| stream.poll_handshake(cx)).await {
            Ok(()) => {
                stream.digest = digest_of(stream.conn.negotiated_cipher_suite());
                stream.release_idle_buffers();
                Ok(stream)
            }
            Err(e) => {
                // Tell the client why (the alert rustls queued), if the socket takes it now.
                let _ = stream.process(None, None);
                let _ = std::future::poll_fn(|cx| Poll::Ready(stream.poll_send(cx))).await;
                Err(e)
            }
        }
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let processed = self.process(None, None)?;
            ready!(self.poll_send(cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            match processed {
                Processed::Closed => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                Processed::NeedMore => {
                    ready!(self.poll_receive(cx))?;
                    if self.socket_eof {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                }
                Processed::Data | Processed::Wrote => {}
            }
        }
    }

    /// The negotiated protocol version, as rustls names it ("TLSv1_3").
    pub(super) fn version(&self) -> &str {
        &self.digest.version
    }

    /// Processes the received records: decrypts application data into `read` as far as it
    /// has room and into `plain` beyond that, and encodes what the handshake (or a key update,
    /// or an alert) sends into `outgoing`. With `write`: once the connection may send
    /// application data, runs it and returns [`Processed::Wrote`]. Every state rustls reports
    /// is dealt with here, so that what it hands out (a message to send, the records to
    /// discard) is never lost.
    fn process(
        &mut self,
        mut read: Option<&mut ReadBuf<'_>>,
        mut write: Option<WriteFn<'_>>,
    ) -> io::Result<Processed> {
        let Self {
            conn,
            incoming,
            outgoing,
            plain,
            peer_closed,
            ..
        } = self;
        let mut data = false;
        loop {
            let UnbufferedStatus { discard, state } = conn.process_tls_records(incoming);
            let step = match state {
                Ok(ConnectionState::ReadTraffic(mut records)) => {
                    data = true;
                    let mut result = Ok(None);
                    while let Some(record) = records.next_record() {
                        match record {
                            Ok(record) => {
                                let mut payload = record.payload;
                                if let Some(read) = read.as_deref_mut()
                                    && plain.is_empty()
                                {
                                    let n = payload.len().min(read.remaining());
                                    read.put_slice(&payload[..n]);
                                    payload = &payload[n..];
                                }
                                plain.extend_from_slice(payload);
                            }
                            Err(e) => {
                                result = Err(tls_error(e));
                                break;
                            }
                        }
                    }
                    result
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    let start = outgoing.len();
                    loop {
                        match encode.encode(&mut outgoing[start..]) {
                            Ok(n) => {
                                outgoing.truncate(start + n);
                                break Ok(None);
                            }
                            Err(EncodeError::InsufficientSize(e)) => {
                                outgoing.resize(start + e.required_size, 0)
                            }
                            Err(EncodeError::AlreadyEncoded) => break Ok(None),
                        }
                    }
                }
                // What was encoded is sent by `poll_send`, before the next read waits.
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    Ok(None)
                }
                Ok(ConnectionState::WriteTraffic(mut traffic)) => match write.take() {
                    Some(write) => write(&mut traffic, outgoing).map(|()| Some(Processed::Wrote)),
                    None => Ok(Some(if data {
                        Processed::Data
                    } else {
                        Processed::NeedMore
                    })),
                },
                Ok(ConnectionState::BlockedHandshake) => Ok(Some(if data {
                    Processed::Data
                } else {
                    Processed::NeedMore
                })),
                // Edge-triggered: the next call reports the write state (nothing more can be read).
                Ok(ConnectionState::PeerClosed) => {
                    *peer_closed = true;
                    if write.is_some() {
                        Ok(None)
                    } else {
                        Ok(Some(Processed::Closed))
                    }
                }
                Ok(ConnectionState::Closed) => {
                    *peer_closed = true;
                    Ok(Some(Processed::Closed))
                }
                // Early data is off (`max_early_data_size` is 0); anything newer is unknown.
                Ok(state) => Err(io::Error::other(format!("unexpected TLS state {state:?}"))),
                Err(e) => Err(tls_error(e)),
            };
            incoming.drain(..discard);
            match step {
                Ok(Some(Processed::Closed)) if data => return Ok(Processed::Data),
                Ok(Some(processed)) => return Ok(processed),
                Ok(None) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads what the socket has into `incoming`. Ready with `socket_eof` set at its end.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        READ_SPACE.with_borrow_mut(|space| {
            let mut buf = ReadBuf::new(space);
            match Pin::new(&mut self.socket).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {
                    self.socket_eof = buf.filled().is_empty();
                    self.incoming.extend_from_slice(buf.filled());
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.release_idle_buffers();
                    Poll::Pending
                }
            }
        })
    }

    /// Writes `records` to the socket after what waits in `outgoing` (in the same system calls),
    /// as far as the socket takes them; the rest waits in `outgoing`.
    fn poll_send_more(&mut self, cx: &mut Context<'_>, records: &[u8]) -> io::Result<()> {
        let mut done = 0;
        while done < records.len() {
            let waiting = &self.outgoing[self.sent..];
            let pieces = [io::IoSlice::new(waiting), io::IoSlice::new(&records[done..])];
            let n = match Pin::new(&mut self.socket).poll_write_vectored(cx, &pieces)? {
                Poll::Ready(0) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(n) => n,
                Poll::Pending => break,
            };
            let from_waiting = n.min(waiting.len());
            self.sent += from_waiting;
            done += n - from_waiting;
        }
        if self.sent == self.outgoing.len() {
            self.sent = 0;
            self.outgoing.clear();
        }
        self.outgoing.extend_from_slice(&records[done..]);
        Ok(())
    }

    /// Writes `outgoing` to the socket; Ready when all of it is written.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.socket).poll_write(cx, &self.outgoing[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.sent = 0;
        self.outgoing.clear();
        Poll::Ready(Ok(()))
    }

    /// Encrypts `data` into `space` from byte `at` on; returns the length of the records. Data
    /// that rustls would copy slowly is moved first (see [`PAGE`]).
    fn seal(&mut self, data: &[u8], space: &mut Vec<u8>, at: usize) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        if !aliases(data.as_ptr()) {
            return self.encrypt(data, space, at);
        }
        MOVE_SPACE.with_borrow_mut(|moved| {
            let start = unaliased_start(moved, data.len());
            moved[start..start + data.len()].copy_from_slice(data);
            self.encrypt(&moved[start..start + data.len()], space, at)
        })
    }

    /// Encrypts `data` into `space` from byte `at` on; returns the length of the records.
    fn encrypt(&mut self, data: &[u8], space: &mut Vec<u8>, at: usize) -> io::Result<usize> {
        let bound = at + data.len() + data.len().div_ceil(RECORD_PLAINTEXT) * RECORD_OVERHEAD;
        if space.len() < bound {
            space.resize(bound, 0);
        }
        let mut written = 0;
        self.write_with(&mut |traffic, _| loop {
            match traffic.encrypt(data, &mut space[at..]) {
                Ok(n) => {
                    written = n;
                    return Ok(());
                }
                Err(EncryptError::InsufficientSize(e)) => space.resize(at + e.required_size, 0),
                Err(e) => return Err(io::Error::other(e)),
            }
        })?;
        Ok(written)
    }

    /// Encrypts what was gathered (as one record) and then `data`, and writes the records to the
    /// socket together (see [`Self::poll_send_more`]). The h2 crate writes each 16 KiB DATA
    /// frame in two pieces, its head with the payload's first 1 015 bytes, then the rest: both
    /// leave in one system call.
    fn send_with_gathered(&mut self, cx: &mut Context<'_>, data: &[u8]) -> io::Result<()> {
        let plaintext = self.gathered.len() + data.len();
        if plaintext == 0 {
            return Ok(());
        }
        WRITE_SPACE.with_borrow_mut(|space| {
            // rustls copies each record into `space` from a buffer that starts on a page.
            let at = unaliased_start(
                space,
                plaintext + (plaintext / RECORD_PLAINTEXT + 2) * RECORD_OVERHEAD,
            );
            let mut gathered = std::mem::take(&mut self.gathered);
            let sealed = self.seal(&gathered, space, at);
            gathered.clear();
            self.gathered = gathered;
            let mut len = sealed?;
            len += self.seal(data, space, at + len)?;
            self.poll_send_more(cx, &space[at..at + len])
        })
    }

    /// Runs `write` once the connection may send application data. What the client sent in the
    /// meantime is kept for the reader.
    fn write_with(&mut self, write: WriteFn<'_>) -> io::Result<()> {
        match self.process(None, Some(write))? {
            Processed::Wrote => Ok(()),
            Processed::Closed => Err(io::ErrorKind::BrokenPipe.into()),
            Processed::Data | Processed::NeedMore => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// Frees the buffers that hold nothing.
    fn release_idle_buffers(&mut self) {
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
        if self.gathered.is_empty() {
            self.gathered = Vec::new();
        }
        if self.outgoing.is_empty() {
            self.outgoing = Vec::new();
        }
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
        let this = &mut *self;
        loop {
            if this.taken < this.plain.len() {
                let n = buf.remaining().min(this.plain.len() - this.taken);
                buf.put_slice(&this.plain[this.taken..this.taken + n]);
                this.taken += n;
                if this.taken == this.plain.len() {
                    this.plain = Vec::new();
                    this.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            let processed = this.process(Some(buf), None)?;
            // A key update's answer, or tickets: sent now if the socket takes them, else with
            // the next write.
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
            match processed {
                // Only `plain` got it, or the records were empty.
                Processed::Data => continue,
                Processed::Closed => return Poll::Ready(Ok(())),
                Processed::NeedMore | Processed::Wrote => {}
            }
            if this.socket_eof {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify",
                )));
            }
            ready!(this.poll_receive(cx))?;
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.outgoing.len() - this.sent >= SEND_LIMIT {
            ready!(this.poll_send(cx))?;
        }
        let data = &buf[..buf.len().min(SEND_LIMIT)];
        if this.gathered.len() + data.len() <= GATHER_LIMIT {
            if this.gathered.capacity() == 0 {
                this.gathered.reserve_exact(GATHER_LIMIT);
            }
            this.gathered.extend_from_slice(data);
        } else {
            this.send_with_gathered(cx, data)?;
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.send_with_gathered(cx, &[])?;
        ready!(this.poll_send(cx))?;
        this.release_idle_buffers();
        Pin::new(&mut this.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.closing && !this.conn.is_handshaking() {
            this.send_with_gathered(cx, &[])?;
            this.closing = true;
            let closed = this.write_with(&mut |traffic, outgoing| {
                let start = outgoing.len();
                outgoing.resize(start + CLOSE_NOTIFY_SIZE, 0);
                let n = traffic
                    .queue_close_notify(&mut outgoing[start..])
                    .map_err(io::Error::other)?;
                outgoing.truncate(start + n);
                Ok(())
            });
            if let Err(e) = closed {
                debug!(error = %e, "TLS close_notify not sent");
            }
        }
        ready!(this.poll_send(cx))?;
        this.release_idle_buffers();
        Pin::new(&mut this.socket).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for TlsStream {
    /// Sends close_notify and closes the socket for writing.
    async fn shutdown(&mut self) {
        if let Err(e) = tokio::io::AsyncWriteExt::shutdown(self).await {
            debug!(error = %e, "TLS shutdown failed");
        }
    }
}

impl Ssl for TlsStream {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        Some(self.digest.clone())
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        match self.conn.alpn_protocol()? {
            b"h2" => Some(ALPN::H2),
            b"http/1.1" => Some(ALPN::H1),
            _ => None,
        }
    }
}

/// pylon never peeks at a TLS connection (h2c detection is off).
#[async_trait]
impl Peek for TlsStream {}

delegate_digests!(TlsStream, socket);

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::client::TlsStream as ClientStream;

    /// A server config for "tls.test", and a client config that trusts it and offers `versions`
    /// and `alpn`.
    fn configs(
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["tls.test".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let mut server = ServerConfig::builder_with_provider(Arc::new(crate::tls::provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(ca.der().to_vec())).unwrap();
        let mut client =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        (Arc::new(server), Arc::new(client))
    }

    /// A connected server stream and client stream over loopback.
    async fn pair() -> (TlsStream, ClientStream<TcpStream>) {
        pair_with(rustls::DEFAULT_VERSIONS, &[]).await.unwrap()
    }

    async fn pair_with(
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> Result<(TlsStream, ClientStream<TcpStream>), (io::Error, io::Error)> {
        let (server, client_config) = configs(versions, alpn);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            TlsStream::accept(server, L4Stream::from(tcp)).await
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(client_config);
        let client = connector
            .connect(ServerName::try_from("tls.test").unwrap(), tcp)
            .await;
        match (accept.await.unwrap(), client) {
            (Ok(server), Ok(client)) => Ok((server, client)),
            (server, client) => Err((
                server.err().unwrap_or_else(|| io::Error::other("server ok")),
                client.err().unwrap_or_else(|| io::Error::other("client ok")),
            )),
        }
    }

    /// No buffer is held: what an idle connection costs is rustls's state and the socket.
    fn assert_no_buffers(server: &TlsStream) {
        assert_eq!(
            (
                server.incoming.capacity(),
                server.gathered.capacity(),
                server.outgoing.capacity(),
                server.plain.capacity()
            ),
            (0, 0, 0, 0)
        );
    }

    /// Polls one read, which must wait for the client.
    fn read_waits(server: &mut TlsStream) {
        let mut buf = [0; 16];
        let mut buf = ReadBuf::new(&mut buf);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(server).poll_read(&mut cx, &mut buf).is_pending());
    }

    /// Reads `len` bytes as a slow reader: a few KiB at a time, yielding after each read for
    /// the first MiB, so that the writer finds the socket full.
    async fn read_slowly(client: &mut ClientStream<TcpStream>, len: usize, chunk: usize) -> Vec<u8> {
        let mut received = Vec::with_capacity(len);
        let mut buf = vec![0; chunk];
        while received.len() < len {
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0);
            received.extend_from_slice(&buf[..n]);
            if received.len() < 1 << 20 {
                tokio::task::yield_now().await;
            }
        }
        received
    }

    #[tokio::test]
    async fn reads_records_larger_than_the_readers_buffer_and_frees_its_buffers_when_idle() {
        let (mut server, mut client) = pair().await;
        assert_eq!(server.version(), "TLSv1_3");
        assert_eq!(server.selected_alpn_proto(), None, "the client offered no ALPN");
        let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&sent).await.unwrap();
        client.flush().await.unwrap();
        let mut received = Vec::new();
        let mut buf = [0; 100];
        while received.len() < sent.len() {
            let n = server.read(&mut buf).await.unwrap();
            assert!(n > 0);
            received.extend_from_slice(&buf[..n]);
        }
        assert_eq!(received, sent);
        read_waits(&mut server);
        assert_no_buffers(&server);

        // And again on the same connection, both ways.
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        client.flush().await.unwrap();
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n\r\n");
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        server.flush().await.unwrap();
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"HTTP/1.1 200 OK\r\n\r\n");
        read_waits(&mut server);
        assert_no_buffers(&server);
    }

    #[tokio::test]
    async fn small_writes_wait_for_the_flush_large_ones_go_at_once() {
        let (mut server, mut client) = pair().await;
        server.write_all(b"head").await.unwrap();
        server.write_all(b"body").await.unwrap();
        assert_eq!(server.gathered, b"headbody");
        assert!(server.outgoing.is_empty(), "not encrypted yet");
        let mut buf = [0; 64];
        let early = tokio::time::timeout(std::time::Duration::from_millis(100), client.read(&mut buf)).await;
        assert!(early.is_err(), "nothing sent before the flush");
        server.flush().await.unwrap();
        assert_no_buffers(&server);
        let mut got = Vec::new();
        while got.len() < 8 {
            let n = client.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"headbody");

        // 4 MiB against a slow reader: the writer waits, and everything arrives in order.
        let body: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 241) as u8).collect();
        let expected = body.clone();
        let writer = tokio::spawn(async move {
            server.write_all(&body).await.unwrap();
            server.flush().await.unwrap();
            assert_no_buffers(&server);
            server
        });
        let received = read_slowly(&mut client, expected.len(), 7000).await;
        assert!(received == expected, "the 4 MiB arrived unchanged");
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn small_and_large_pieces_in_turn_arrive_in_order() {
        // As the h2 crate writes DATA frames: 1 024 bytes, then 15 369, without a flush between.
        // The small piece waits, and its record goes out with the large one's; against a slow
        // reader the socket takes part of the two or none, and the rest waits.
        let (mut server, mut client) = pair().await;
        let body: Vec<u8> = (0..256 * 16_393).map(|i: u32| (i % 251) as u8).collect();
        let expected = body.clone();
        let writer = tokio::spawn(async move {
            for frame in body.chunks(16_393) {
                let (head, rest) = frame.split_at(1_024);
                server.write_all(head).await.unwrap();
                server.write_all(rest).await.unwrap();
            }
            server.flush().await.unwrap();
            assert_no_buffers(&server);
        });
        let received = read_slowly(&mut client, expected.len(), 5000).await;
        assert!(received == expected, "every piece arrived, in order");
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_trickle_of_small_writes_waits_one_segment_at_most() {
        // A body with a known length that arrives from the upstream a little at a time: pingora
        // writes each piece and flushes only at the end. What waits stays below one segment.
        let (mut server, mut client) = pair().await;
        for _ in 0..200 {
            server.write_all(&[7; 100]).await.unwrap();
        }
        assert!(server.gathered.len() <= GATHER_LIMIT);
        let mut got = Vec::new();
        let mut buf = [0; 4096];
        while got.len() < 20_000 - GATHER_LIMIT {
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), client.read(&mut buf))
                .await
                .expect("the pieces beyond one segment are sent without a flush")
                .unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        server.flush().await.unwrap();
        while got.len() < 20_000 {
            let n = client.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, [7; 20_000]);
    }

    /// The client's connection as raw records: after the client has read what the server sent
    /// so far (the tickets after the handshake and one byte), so that the next record starts on
    /// the socket.
    async fn raw_records(
        server: &mut TlsStream,
        mut client: ClientStream<TcpStream>,
    ) -> (TcpStream, rustls::ClientConnection) {
        server.write_all(b"x").await.unwrap();
        server.flush().await.unwrap();
        let mut one = [0; 1];
        client.read_exact(&mut one).await.unwrap();
        client.into_inner()
    }

    /// Reads records until `len` bytes of plaintext have arrived: the plaintext, and each
    /// record's length.
    async fn read_records(
        tcp: &mut TcpStream,
        conn: &mut rustls::ClientConnection,
        len: usize,
    ) -> (Vec<u8>, Vec<usize>) {
        let (mut raw, mut parsed, mut sizes, mut plain) = (Vec::new(), 0, Vec::new(), Vec::new());
        let mut buf = vec![0; 64 * 1024];
        while plain.len() < len {
            let n = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{} of {len} bytes arrived, in records {sizes:?}", plain.len()))
                .unwrap();
            assert!(n > 0);
            raw.extend_from_slice(&buf[..n]);
            while raw.len() - parsed >= 5 {
                let size = u16::from_be_bytes([raw[parsed + 3], raw[parsed + 4]]) as usize;
                if raw.len() - parsed < 5 + size {
                    break;
                }
                sizes.push(size);
                parsed += 5 + size;
            }
            let mut fresh = &buf[..n];
            while !fresh.is_empty() {
                conn.read_tls(&mut fresh).unwrap();
                conn.process_new_packets().unwrap();
                // Ends with WouldBlock: what is decrypted so far.
                let _ = io::Read::read_to_end(&mut conn.reader(), &mut plain);
            }
        }
        (plain, sizes)
    }

    #[test]
    fn plaintext_from_a_pages_start_is_moved_before_rustls_copies_it() {
        let mut space = Vec::new();
        let start = unaliased_start(&mut space, 100);
        let page = space.as_ptr() as usize + start - UNALIASED_AT;
        assert_eq!(page % PAGE, 0);
        assert!(space.len() >= start + 100);
        // rustls copies to 5 bytes past a page's start: from 0..5 past one (or up to 26 before
        // the next) it would copy slowly; from where pylon moves such plaintext, it does not.
        for offset in [0, 1, 4, PAGE - 26, PAGE - 1] {
            assert!(aliases((page + offset) as *const u8), "{offset}");
        }
        for offset in [5, 6, 64, 1_015, PAGE - 27] {
            assert!(!aliases((page + offset) as *const u8), "{offset}");
        }
        assert!(!aliases(space[start..].as_ptr()));
    }

    #[tokio::test]
    async fn a_responses_head_and_body_make_one_record() {
        let (mut server, client) = pair().await;
        let (mut tcp, mut conn) = raw_records(&mut server, client).await;
        server
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n")
            .await
            .unwrap();
        server.write_all(b"ok\n").await.unwrap();
        server.flush().await.unwrap();
        let head_and_body = 38 + 3;
        let (plain, sizes) = read_records(&mut tcp, &mut conn, head_and_body).await;
        assert_eq!(plain, b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n");
        // TLS 1.3 adds the content type and a 16-byte tag.
        assert_eq!(sizes, [head_and_body + 17]);

        // Pieces in turn small and large (as the h2 crate writes DATA frames), from buffers
        // that start on a page (as pingora's HTTP/1.1 body buffer does): whatever rustls's copy
        // costs, every byte arrives, in order, in records of the largest size after the first.
        let mut body = vec![0u8; 4 * PAGE + 4 * 16_384];
        let page = body.as_ptr().align_offset(PAGE);
        for (i, b) in body.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let large = &body[page..page + 3 * 16_384];
        server.write_all(&large[..1_000]).await.unwrap();
        server.write_all(large).await.unwrap();
        server.flush().await.unwrap();
        let mut expected = large[..1_000].to_vec();
        expected.extend_from_slice(large);
        let (plain, sizes) = read_records(&mut tcp, &mut conn, expected.len()).await;
        assert!(plain == expected, "every piece arrived, in order");
        assert_eq!(sizes, [1_000 + 17, 16_384 + 17, 16_384 + 17, 16_384 + 17]);
    }

    #[tokio::test]
    async fn close_notify_ends_the_stream_and_a_bare_close_is_an_error() {
        let (mut server, mut client) = pair().await;
        client.write_all(b"last").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last");
        // The client may still read: the server's reply and its close_notify.
        server.write_all(b"bye").await.unwrap();
        AsyncWriteExt::shutdown(&mut server).await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"bye");

        // The client ends its side of the TCP connection without a close_notify.
        let (mut server, client) = pair().await;
        let (mut tcp, _) = client.into_inner();
        tcp.shutdown().await.unwrap();
        let mut buf = [0; 8];
        let e = server.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn a_key_update_from_the_client_is_answered() {
        let (mut server, mut client) = pair().await;
        let mut buf = [0; 64];
        for round in 0..3u8 {
            client.get_mut().1.refresh_traffic_keys().unwrap();
            client.write_all(&[round; 10]).await.unwrap();
            client.flush().await.unwrap();
            let mut got = Vec::new();
            while got.len() < 10 {
                let n = server.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, [round; 10]);
            server.write_all(&[round + 100; 5]).await.unwrap();
            server.flush().await.unwrap();
            let mut got = Vec::new();
            while got.len() < 5 {
                let n = client.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, [round + 100; 5]);
        }
    }

    #[tokio::test]
    async fn alpn_and_tls_1_2() {
        let (server, _client) = pair_with(rustls::DEFAULT_VERSIONS, &[b"h2"]).await.unwrap();
        assert_eq!(server.selected_alpn_proto(), Some(ALPN::H2));

        let (mut server, mut client) = pair_with(&[&rustls::version::TLS12], &[b"http/1.1"])
            .await
            .unwrap();
        assert_eq!(server.selected_alpn_proto(), Some(ALPN::H1));
        assert_eq!(server.version(), "TLSv1_2");
        client.write_all(b"ping").await.unwrap();
        client.flush().await.unwrap();
        let mut buf = [0; 8];
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"ping");
    }

    #[tokio::test]
    async fn a_refused_handshake_is_told_to_the_client() {
        let (server, client) = pair_with(rustls::DEFAULT_VERSIONS, &[b"spdy/3"])
            .await
            .expect_err("no protocol in common");
        assert_eq!(server.kind(), io::ErrorKind::InvalidData, "{server}");
        assert!(
            client.to_string().contains("NoApplicationProtocol"),
            "the client got the alert: {client}"
        );
    }
}
