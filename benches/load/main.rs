//! The background load of benchmark S6: HTTP/1.1 over TLS at a fixed arrival rate on a few
//! keep-alive connections, like `h2load --h1 -c16 --rps`, with two differences that matter when
//! the proxy under test reloads:
//!
//! - a connection the server closes is opened again for the next request (h2load gives up on
//!   it, so after nginx's first reload it sent nothing more);
//! - a request that could not be sent when it was due, because the connection was still busy
//!   with a slow earlier response or being opened again, counts its latency from when it was
//!   due, so the wait shows.
//!
//! Arrivals are evenly spaced over the connections (connection `c` sends requests `c`, `c + C`,
//! `c + 2C`, …). One line per completed request goes to the log in h2load's format (start in
//! microseconds since the Unix epoch, status, microseconds taken), and a JSON summary to stdout.
//!
//! It is also S1b's load (keep-alive requests at a fixed rate): h2load's `--rps` sends every
//! connection's request in the same instant, and its latencies are then mostly the place of a
//! request in that burst. With `plain` it speaks HTTP without TLS, for the benchmark's
//! reference that loads the upstream directly.
//!
//! Usage: `bench-load <connect addr> <host> <rate/s> <connections> <seconds> <log file> [plain]`

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long one request (with a reconnect) may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Counts {
    errors: AtomicU64,
    connects: AtomicU64,
    /// Requests sent again on a new connection because the server closed a kept-alive one
    /// just as they were sent (what HTTP clients do for an idempotent request).
    retries: AtomicU64,
}

struct Target {
    addr: SocketAddr,
    host: String,
    /// None: plain HTTP.
    tls: Option<TlsConnector>,
    request: Vec<u8>,
}

/// A connection to the target, with or without TLS.
trait Connection: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Connection for T {}

type Stream = Box<dyn Connection>;

enum Outcome {
    /// The status, and whether the server will close the connection after it.
    Response(u16, bool),
    /// The connection was closed before any byte of a response arrived.
    Closed,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (plain, args) = match args.split_last() {
        Some((last, rest)) if last == "plain" => (true, rest),
        _ => (false, args.as_slice()),
    };
    let [_, addr, host, rate, connections, seconds, log] = args else {
        eprintln!(
            "usage: bench-load <connect addr> <host> <rate/s> <connections> <seconds> <log file> [plain]"
        );
        std::process::exit(2);
    };
    let (Ok(addr), Ok(rate), Ok(connections), Ok(seconds)) = (
        addr.parse::<SocketAddr>(),
        rate.parse::<f64>(),
        connections.parse::<u64>(),
        seconds.parse::<f64>(),
    ) else {
        eprintln!("bench-load: cannot read the arguments {args:?}");
        std::process::exit(2);
    };
    if rate <= 0.0 || connections == 0 || seconds <= 0.0 {
        eprintln!("bench-load: rate, connections and seconds must be positive");
        std::process::exit(2);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let (lines, counts) = runtime.block_on(run(addr, host, rate, connections, seconds, plain));
    let mut out = std::io::BufWriter::new(std::fs::File::create(log).expect("the log file"));
    for (start_us, status, took_us) in &lines {
        writeln!(out, "{start_us}\t{status}\t{took_us}").expect("writing the log");
    }
    out.flush().expect("writing the log");
    println!(
        "{{\"requests\": {}, \"errors\": {}, \"connects\": {}, \"retries\": {}}}",
        lines.len(),
        counts.errors.load(Ordering::Relaxed),
        counts.connects.load(Ordering::Relaxed),
        counts.retries.load(Ordering::Relaxed),
    );
}

type Line = (u128, u16, u128);

async fn run(
    addr: SocketAddr,
    host: &str,
    rate: f64,
    connections: u64,
    seconds: f64,
    plain: bool,
) -> (Vec<Line>, Arc<Counts>) {
    let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // As the proxies in the benchmark: no resumption, every new connection a full handshake.
    config.resumption = rustls::client::Resumption::disabled();
    let target = Arc::new(Target {
        addr,
        host: host.to_string(),
        tls: (!plain).then(|| TlsConnector::from(Arc::new(config))),
        request: format!("GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bench-load\r\n\r\n").into_bytes(),
    });
    let counts = Arc::new(Counts::default());
    let total = (rate * seconds) as u64;
    // The first request is due a little later, once the connections are open.
    let lead = Duration::from_millis(200);
    let start = Instant::now() + lead;
    let epoch_us = (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        + lead)
        .as_micros();
    let tasks: Vec<_> = (0..connections.min(total.max(1)))
        .map(|c| {
            let (target, counts) = (target.clone(), counts.clone());
            tokio::spawn(async move {
                let mut lines = Vec::new();
                // Opened before the first request is due, as h2load does.
                let mut stream = connect(&target, &counts).await.ok();
                let mut k = c;
                while k < total {
                    let due = start + Duration::from_secs_f64(k as f64 / rate);
                    // tokio's timers fire up to a millisecond late: a request the generator
                    // slept for counts from its wake-up, one that waited for the server
                    // (an earlier slow response, a reconnect) from when it was due.
                    let sent = if Instant::now() < due {
                        tokio::time::sleep_until(due.into()).await;
                        Instant::now()
                    } else {
                        due
                    };
                    match tokio::time::timeout(REQUEST_TIMEOUT, request(&target, &counts, &mut stream)).await
                    {
                        Ok(Ok(status)) => {
                            let offset = due - start;
                            lines.push((epoch_us + offset.as_micros(), status, sent.elapsed().as_micros()));
                        }
                        Ok(Err(_)) | Err(_) => {
                            counts.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    k += connections;
                }
                lines
            })
        })
        .collect();
    let mut lines = Vec::new();
    for task in tasks {
        lines.extend(task.await.expect("a connection task"));
    }
    lines.sort_unstable();
    (lines, counts)
}

/// One request on the kept connection, opening one first if there is none; a kept connection
/// closed under the request is replaced once.
async fn request(target: &Target, counts: &Counts, stream: &mut Option<Stream>) -> std::io::Result<u16> {
    loop {
        let (mut s, reused) = match stream.take() {
            Some(s) => (s, true),
            None => (connect(target, counts).await?, false),
        };
        match exchange(&mut s, &target.request).await {
            Ok(Outcome::Response(status, close)) => {
                if !close {
                    *stream = Some(s);
                }
                return Ok(status);
            }
            Ok(Outcome::Closed) | Err(_) if reused => {
                counts.retries.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Outcome::Closed) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Err(e) => return Err(e),
        }
    }
}

async fn connect(target: &Target, counts: &Counts) -> std::io::Result<Stream> {
    let tcp = TcpStream::connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    let stream: Stream = match &target.tls {
        Some(tls) => {
            let name = ServerName::try_from(target.host.clone()).map_err(std::io::Error::other)?;
            Box::new(tls.connect(name, tcp).await?)
        }
        None => Box::new(tcp),
    };
    counts.connects.fetch_add(1, Ordering::Relaxed);
    Ok(stream)
}

/// Sends the request and reads one response with a `Content-Length` body.
async fn exchange(s: &mut Stream, request: &[u8]) -> std::io::Result<Outcome> {
    s.write_all(request).await?;
    s.flush().await?;
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(Outcome::Closed)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(std::io::Error::other)?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {head:?}")))?;
    let (mut length, mut close) = (None, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let length = length.ok_or_else(|| std::io::Error::other("a response without Content-Length"))?;
    let mut have = buf.len() - head_end;
    while have < length {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        have += n;
    }
    Ok(Outcome::Response(status, close))
}

#[derive(Debug)]
struct AcceptAnything;

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
