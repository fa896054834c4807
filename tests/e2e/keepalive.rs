//! HTTP/1.1 keep-alive connections, byte by byte: requests that arrive in pieces, the idle time
//! between requests, and what ends an idle connection (its timeout, the client, a shutdown);
//! and the same timeouts on HTTP/2 connections.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::support::client::TlsClient;
use crate::support::pylon::{Options, Pylon};
use crate::support::upstream::Upstream;
use crate::support::{CLASS, IngressYaml, TestCa, service, single_route, tls_secret};

/// Reads one HTTP/1.x response: (status, body). The body may be sized by Content-Length,
/// chunked, or end when the server closes the connection.
async fn read_response(io: &mut (impl AsyncRead + Unpin)) -> (u16, String) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let mut closed = false;
    let mut more = async |data: &mut Vec<u8>, closed: &mut bool| {
        let n = tokio::time::timeout(Duration::from_secs(5), io.read(&mut buf))
            .await
            .expect("data within 5 s")
            .expect("read");
        *closed = n == 0;
        data.extend_from_slice(&buf[..n]);
    };
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        more(&mut data, &mut closed).await;
        assert!(
            !closed,
            "connection closed before a response: {}",
            String::from_utf8_lossy(&data)
        );
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 "), "pylon answers in HTTP/1.1: {head}");
    let status = head[9..12].parse().expect("status code");
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
    };
    let body = if let Some(length) = header("content-length:") {
        let length: usize = length.parse().expect("a number");
        while data.len() < head_end + length {
            more(&mut data, &mut closed).await;
            assert!(!closed, "connection closed inside the body");
        }
        assert_eq!(data.len(), head_end + length, "nothing after the body");
        data[head_end..].to_vec()
    } else if header("transfer-encoding:").as_deref() == Some("chunked") {
        while !data[head_end..].ends_with(b"0\r\n\r\n") {
            more(&mut data, &mut closed).await;
            assert!(!closed, "connection closed inside the chunked body");
        }
        let mut rest = &data[head_end..];
        let mut body = Vec::new();
        loop {
            let line_end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("chunk size line");
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16)
                .expect("hex chunk size");
            if size == 0 {
                break;
            }
            body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
            rest = &rest[line_end + 2 + size + 2..];
        }
        body
    } else {
        while !closed {
            more(&mut data, &mut closed).await;
        }
        data[head_end..].to_vec()
    };
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Waits until the server closes the connection; panics if it sends anything or stays open
/// past `within`. Returns how long that took.
async fn closed_within(io: &mut (impl AsyncRead + Unpin), within: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(within, io.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => start.elapsed(),
        Ok(Ok(n)) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(_) => panic!("still open after {within:?}"),
    }
}

/// Reads a response and checks that the echo upstream answered it for `path`.
async fn expect_echo(io: &mut (impl AsyncRead + Unpin), what: &str, path: &str) {
    let (status, body) = read_response(io).await;
    assert_eq!(status, 200, "{what}: {body}");
    assert!(body.contains(&format!("\"{path}\"")), "{what}: {body}");
}

/// The same conversation over plain HTTP and over TLS: whole requests, a request whose first
/// byte arrives alone, a body that follows its head later, then silence until pylon closes.
async fn converse(io: &mut (impl AsyncRead + AsyncWrite + Unpin), what: &str) {
    io.write_all(b"GET /one HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    expect_echo(io, what, "/one").await;

    // Idle for a moment, then a request whose first byte comes alone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    io.write_all(b"G").await.unwrap();
    io.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    io.write_all(b"ET /two HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    expect_echo(io, what, "/two").await;

    // A head in two pieces, then its body.
    io.write_all(b"POST /three HTTP/1.1\r\nHo").await.unwrap();
    io.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    io.write_all(b"st: app.test\r\nContent-Length: 5\r\n\r\n")
        .await
        .unwrap();
    io.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    io.write_all(b"hello").await.unwrap();
    let (status, body) = read_response(io).await;
    assert_eq!(status, 200, "{what}: {body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["path"], "/three", "{what}");
    assert_eq!(json["method"], "POST", "{what}");
    assert_eq!(json["body_len"], 5, "{what}");

    // Silence: the keep-alive timeout (1 s here) closes the connection.
    let took = closed_within(io, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(900),
        "{what}: closed after {took:?}, before the timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_requests_in_pieces_and_idle_timeout() {
    let up = Upstream::start("up");
    let ca = TestCa::new();
    let leaf = ca.issue(&["app.test"]);
    let mut yaml = format!("{CLASS}{}{}", service("up", &[up.addr]), tls_secret("app", &leaf));
    yaml += &IngressYaml {
        tls: &[(&["app.test"], "app")],
        annotations: &[("nginx.ingress.kubernetes.io/ssl-redirect", "false")],
        rules: &[("app.test", "/", "Prefix", "up")],
        ..Default::default()
    }
    .render();
    let pylon = Pylon::start_with(
        &[("all.yaml", &yaml)],
        Options {
            extra_config: "[proxy]\nclient-keepalive-timeout = \"1s\"\n".into(),
            ..Default::default()
        },
    );
    let open_before = pylon.metric("pylon_open_connections");

    let mut plain = tokio::net::TcpStream::connect(pylon.http).await.unwrap();
    plain.set_nodelay(true).unwrap();
    let client = TlsClient::trusting(&ca.pem, &[b"http/1.1"]);
    let (mut tls, _) = client.connect(pylon.https, "app.test").await.unwrap();
    // Both connections count as open while they wait, before and between requests.
    pylon.eventually(Duration::from_secs(2), "two open connections", || {
        pylon.metric("pylon_open_connections") == open_before + 2.0
    });

    tokio::join!(converse(&mut plain, "plain HTTP"), converse(&mut tls, "TLS"));
    pylon.eventually(Duration::from_secs(2), "connections no longer counted", || {
        pylon.metric("pylon_open_connections") == open_before
    });

    // A connection that sends something other than HTTP gets at most a 400 and is closed.
    let mut bad = tokio::net::TcpStream::connect(pylon.http).await.unwrap();
    bad.write_all(b"\x16\x03\x01 not http\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), bad.read_to_end(&mut answer))
        .await
        .expect("closed within 5 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    assert_eq!(up.hits(), 6, "every good request reached the upstream once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_keep_alive_connections() {
    let up = Upstream::start("up");
    let mut pylon = Pylon::start(&[("app.yaml", &single_route(up.addr, "app.test", &[]))]);
    let mut idle = tokio::net::TcpStream::connect(pylon.http).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut idle).await.0, 200);
    let mut fresh = tokio::net::TcpStream::connect(pylon.http).await.unwrap();

    let started = Instant::now();
    pylon.signal("TERM");
    // The drain timeout is 10 s: idle connections must not hold pylon that long.
    closed_within(&mut idle, Duration::from_secs(5)).await;
    closed_within(&mut fresh, Duration::from_secs(5)).await;
    let status = pylon.wait(Duration::from_secs(8)).expect("pylon exits");
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "exited after {:?}",
        started.elapsed()
    );
}

/// An HTTP/1.0 upstream on a thread of its own: one response per connection, `/sized` with a
/// Content-Length, anything else ended by closing the connection. Stops when dropped.
struct Http10Upstream {
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Http10Upstream {
    fn start() -> Self {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                let answer: &[u8] = if head.starts_with(b"GET /sized ") {
                    b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nsized"
                } else {
                    b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the upstream closes"
                };
                let _ = conn.write_all(answer);
            }
        });
        Self { addr, stop }
    }
}

impl Drop for Http10Upstream {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_upstream_is_answered_in_http11() {
    let up = Http10Upstream::start();
    let pylon = Pylon::start(&[("old.yaml", &single_route(up.addr, "old.test", &[]))]);
    let mut conn = tokio::net::TcpStream::connect(pylon.http).await.unwrap();
    // read_response checks the status line is HTTP/1.1.
    for _ in 0..2 {
        conn.write_all(b"GET /sized HTTP/1.1\r\nHost: old.test\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut conn).await, (200, "sized".to_owned()));
    }
    conn.write_all(b"GET /stream HTTP/1.1\r\nHost: old.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_response(&mut conn).await,
        (200, "until the upstream closes".to_owned())
    );
}

/// An HTTP/2 connection without open streams is closed after the keep-alive timeout, and one
/// that never sends its preface after the TLS handshake is closed after the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_silent_http2_connections_are_closed() {
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let up = Upstream::start("up");
    let ca = TestCa::new();
    let leaf = ca.issue(&["app.test"]);
    let mut yaml = format!("{CLASS}{}{}", service("up", &[up.addr]), tls_secret("app", &leaf));
    yaml += &IngressYaml {
        tls: &[(&["app.test"], "app")],
        rules: &[("app.test", "/", "Prefix", "up")],
        ..Default::default()
    }
    .render();
    let pylon = Pylon::start_with(
        &[("all.yaml", &yaml)],
        Options {
            extra_config: "[proxy]\nclient-keepalive-timeout = \"1s\"\nclient-header-timeout = \"1s\"\n"
                .into(),
            ..Default::default()
        },
    );
    let client = TlsClient::trusting(&ca.pem, &[b"h2"]);

    // Two requests on one connection, then nothing: closed after about a second.
    let (tls, _) = client.connect(pylon.https, "app.test").await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    for _ in 0..2 {
        let req = http::Request::get("https://app.test/")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let idle = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection stays open");
    assert!(
        idle.elapsed() >= Duration::from_millis(400),
        "closed after {:?}",
        idle.elapsed()
    );

    // TLS with h2, then silence: closed without waiting for the preface for ever.
    let (mut tls, _) = client.connect(pylon.https, "app.test").await.unwrap();
    let took = closed_within(&mut tls, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    // Half a preface, then silence: the same.
    let (mut tls, _) = client.connect(pylon.https, "app.test").await.unwrap();
    tls.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    tls.flush().await.unwrap();
    closed_within(&mut tls, Duration::from_secs(5)).await;
    assert_eq!(pylon.metric("pylon_client_header_timeouts_total"), 2.0);

    // HTTP/2 still serves.
    let (resp, _) = client.get(pylon.https, "app.test", "/").await.unwrap();
    assert_eq!(resp.status, 200);
}
