//! A plain-HTTP client socket that gathers a response's small writes into one system call, and
//! holds no buffer between responses. (TLS connections gather their records the same way in
//! [`super::tls_stream`].)
//!
//! pingora writes a response's head and body separately. pingora's own socket type gathers them
//! in a write buffer of one segment (1 460 bytes), allocated for the connection's whole life.
//! This wrapper gathers the same writes but allocates the buffer only when a write arrives and
//! frees it at the flush that ends the response: an idle keep-alive connection holds none.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use async_trait::async_trait;
use futures_util::FutureExt;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{Peek, Shutdown, Ssl};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes up to this size wait for the flush; larger ones go out at once (after what waits).
/// One TCP segment, as pingora's default write buffer.
pub(super) const GATHER_LIMIT: usize = 1460;

/// A client TCP connection (below TLS, or plain HTTP) with write gathering.
#[derive(Debug)]
pub(super) struct Coalesced {
    inner: L4Stream,
    pending: Vec<u8>,
}

impl Coalesced {
    pub(super) fn new(inner: L4Stream) -> Self {
        Self {
            inner,
            pending: Vec::new(),
        }
    }

    /// Writes out what waits.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let written = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..written);
        }
        Poll::Ready(Ok(()))
    }

    fn gather(&mut self, bufs: &[io::IoSlice<'_>], total: usize) -> usize {
        if self.pending.capacity() == 0 {
            self.pending.reserve_exact(GATHER_LIMIT);
        }
        for buf in bufs {
            self.pending.extend_from_slice(buf);
        }
        total
    }

    fn poll_write_slices(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        if self.pending.len() + total <= GATHER_LIMIT {
            return Poll::Ready(Ok(self.gather(bufs, total)));
        }
        ready!(self.poll_drain(cx))?;
        if total <= GATHER_LIMIT {
            return Poll::Ready(Ok(self.gather(bufs, total)));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

impl Drop for Coalesced {
    fn drop(&mut self) {
        // As pingora's socket does with its buffer: send what waits if the socket takes it now.
        if !self.pending.is_empty() {
            let _ = std::future::poll_fn(|cx| self.poll_drain(cx)).now_or_never();
        }
    }
}

impl AsyncRead for Coalesced {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Coalesced {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_slices(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_slices(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        // The response is out: an idle connection holds no buffer.
        this.pending = Vec::new();
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Coalesced {
    async fn shutdown(&mut self) {
        let _ = std::future::poll_fn(|cx| self.poll_drain(cx)).await;
        Shutdown::shutdown(&mut self.inner).await;
    }
}

impl Ssl for Coalesced {}

#[async_trait]
impl Peek for Coalesced {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

delegate_digests!(Coalesced, inner);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (Coalesced, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Coalesced::new(L4Stream::from(server)), client)
    }

    /// Reads what has arrived within 100 ms.
    async fn arrived(client: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(Ok(n)) =
            tokio::time::timeout(std::time::Duration::from_millis(100), client.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    #[tokio::test]
    async fn small_writes_wait_for_the_flush_and_the_buffer_is_freed() {
        let (mut socket, mut client) = pair().await;
        socket.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        socket.write_all(b"body").await.unwrap();
        assert!(
            arrived(&mut client).await.is_empty(),
            "nothing is sent before the flush"
        );
        assert!(socket.pending.capacity() >= GATHER_LIMIT);
        socket.flush().await.unwrap();
        assert_eq!(arrived(&mut client).await, b"HTTP/1.1 200 OK\r\n\r\nbody");
        assert_eq!(socket.pending.capacity(), 0, "an idle connection holds no buffer");
    }

    #[tokio::test]
    async fn a_large_write_goes_out_after_what_waits() {
        let (mut socket, mut client) = pair().await;
        let large: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        socket.write_all(b"head").await.unwrap();
        socket.write_all(&large).await.unwrap();
        socket.write_all(b"tail").await.unwrap();
        socket.flush().await.unwrap();
        let mut expected = b"head".to_vec();
        expected.extend_from_slice(&large);
        expected.extend_from_slice(b"tail");
        let mut got = vec![0u8; expected.len()];
        client.read_exact(&mut got).await.unwrap();
        assert!(got == expected, "bytes arrive whole and in order");
    }

    #[tokio::test]
    async fn dropping_the_socket_sends_what_waits() {
        let (mut socket, mut client) = pair().await;
        socket.write_all(b"last words").await.unwrap();
        drop(socket);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
    }
}
