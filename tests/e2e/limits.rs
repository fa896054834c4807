//! Size limits: request headers (431) and bodies (413), globally and per Ingress; the time a
//! request head may take to arrive; and request framing that could smuggle a second request.

use bytes::Bytes;
use http_body_util::Full;

use crate::support::client::http;
use crate::support::pylon::{Options, Pylon};
use crate::support::upstream::Upstream;
use crate::support::{CLASS, IngressYaml, service};

fn request(host: &str, header_bytes: usize, body: Vec<u8>, chunked: bool) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::post("/upload").header("host", host);
    if header_bytes > 0 {
        b = b.header("x-big", "a".repeat(header_bytes));
    }
    if chunked {
        b = b.header("transfer-encoding", "chunked");
    }
    b.body(Full::new(Bytes::from(body))).unwrap()
}

/// pylon serving `app.test` from one upstream, with `extra_config` added to its configuration.
fn app_test(extra_config: &str) -> (Upstream, Pylon) {
    let up = Upstream::start("up");
    let yaml = format!(
        "{CLASS}{}{}",
        service("up", &[up.addr]),
        IngressYaml {
            rules: &[("app.test", "/", "Prefix", "up")],
            ..Default::default()
        }
        .render()
    );
    let pylon = Pylon::start_with(
        &[("all.yaml", &yaml)],
        Options {
            extra_config: extra_config.into(),
            ..Default::default()
        },
    );
    (up, pylon)
}

/// An HTTP/2 connection to pylon's HTTPS port (for `app.test`), ready for requests.
async fn h2_connection<B>(pylon: &Pylon) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let client = crate::support::client::TlsClient::insecure(&[b"h2"]);
    let (tls, _) = client.connect(pylon.https, "app.test").await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let io = hyper_util::rt::TokioIo::new(tls);
    let (send, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_and_bodies_are_refused() {
    let up = Upstream::start("up");
    let mut yaml = format!("{CLASS}{}", service("up", &[up.addr]));
    yaml += &IngressYaml {
        rules: &[("app.test", "/", "Prefix", "up")],
        ..Default::default()
    }
    .render();
    yaml += &IngressYaml {
        name: "uploads",
        annotations: &[("nginx.ingress.kubernetes.io/proxy-body-size", "64k")],
        rules: &[("uploads.test", "/", "Prefix", "up")],
        ..Default::default()
    }
    .render();
    yaml += &IngressYaml {
        name: "unlimited",
        annotations: &[("nginx.ingress.kubernetes.io/proxy-body-size", "0")],
        rules: &[("unlimited.test", "/", "Prefix", "up")],
        ..Default::default()
    }
    .render();
    let pylon = Pylon::start_with(
        &[("all.yaml", &yaml)],
        Options {
            extra_config: "[proxy]\nmax-request-header-size = \"8k\"\nmax-request-body-size = \"16k\"\n"
                .into(),
            ..Default::default()
        },
    );

    let resp = http(pylon.http, request("app.test", 6 * 1024, vec![], false))
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "under the header limit");
    let resp = http(pylon.http, request("app.test", 9 * 1024, vec![], false))
        .await
        .unwrap();
    assert_eq!(resp.status, 431);

    let resp = http(pylon.http, request("app.test", 0, vec![b'x'; 10_000], false))
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["body_len"], 10_000);
    let resp = http(pylon.http, request("app.test", 0, vec![b'x'; 20_000], false))
        .await
        .unwrap();
    assert_eq!(resp.status, 413, "declared length over the limit");
    let hits = up.hits();
    let resp = http(pylon.http, request("app.test", 0, vec![b'x'; 20_000], true))
        .await
        .unwrap();
    assert_eq!(resp.status, 413, "chunked body over the limit");

    let resp = http(pylon.http, request("uploads.test", 0, vec![b'x'; 40_000], false))
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "the annotation raises the limit");
    let resp = http(pylon.http, request("uploads.test", 0, vec![b'x'; 70_000], false))
        .await
        .unwrap();
    assert_eq!(resp.status, 413);
    let resp = http(
        pylon.http,
        request("unlimited.test", 0, vec![b'x'; 300_000], false),
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 200, "0 means no limit");
    assert_eq!(resp.json()["body_len"], 300_000);
    assert!(up.hits() >= hits + 2);
}

/// Sends `parts` on one connection, `gap` apart, and returns what came back and whether the
/// connection was closed by pylon before the last part could be sent.
async fn trickle(addr: std::net::SocketAddr, parts: &[&[u8]], gap: std::time::Duration) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut cut_off = false;
    for part in parts {
        if tcp.write_all(part).await.is_err() {
            cut_off = true;
            break;
        }
        tokio::time::sleep(gap).await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read_to_end(&mut out)).await;
    (String::from_utf8_lossy(&out).into_owned(), cut_off)
}

/// A request head sent slower than `proxy.client-header-timeout` allows is cut off, however
/// steadily its bytes come; one sent in pieces within it is served, and so is every other
/// connection meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_cut_off() {
    let (_up, pylon) =
        app_test("[proxy]\nclient-header-timeout = \"1s\"\nmax-request-header-size = \"1k\"\n");
    let gap = std::time::Duration::from_millis(200);

    // In three pieces within the timeout: served.
    let (response, _) = trickle(
        pylon.http,
        &[
            b"GET / HTTP/1.1\r\nHo",
            b"st: app.test\r\nConnection: close\r",
            b"\n\r\n",
        ],
        gap,
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    // A header line every 200 ms for 4 s: cut off after about 1 s, without an answer.
    let slow = async {
        let mut parts: Vec<&[u8]> = vec![b"GET / HTTP/1.1\r\nHost: app.test\r\n"];
        parts.extend(std::iter::repeat_n(&b"X-Slow: 1\r\n"[..], 20));
        trickle(pylon.http, &parts, gap).await
    };
    // Meanwhile other requests are served.
    let others = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        crate::support::client::http_get(pylon.http, "app.test", "/")
            .await
            .map(|r| r.status)
    };
    let ((response, cut_off), other) = tokio::join!(slow, others);
    assert_eq!(response, "");
    assert!(cut_off, "pylon kept reading a head for 4 s");
    assert_eq!(other.unwrap(), 200);

    // Past the size limit and then slow: still cut off by the deadline, not kept waiting.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: {}\r\n",
        "a".repeat(2000)
    );
    let mut parts: Vec<&[u8]> = vec![big.as_bytes()];
    parts.extend(std::iter::repeat_n(&b"X-Slow: 1\r\n"[..], 20));
    let (response, cut_off) = trickle(pylon.http, &parts, gap).await;
    assert!(
        cut_off,
        "pylon kept reading an oversized head for 4 s: {response}"
    );
    // Sent whole, an oversized head still gets its 431.
    let whole = format!("{big}Connection: close\r\n\r\n");
    let (response, _) = trickle(pylon.http, &[whole.as_bytes()], gap).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    assert_eq!(pylon.metric("pylon_client_header_timeouts_total"), 2.0);
}

/// Sends `raw` on a new connection and reads until pylon closes it (or 3 s pass). Returns what
/// came back and whether the connection was closed.
async fn exchange(addr: std::net::SocketAddr, raw: &[u8]) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(3), stream.read_to_end(&mut out)).await;
    (String::from_utf8_lossy(&out).into_owned(), read.is_ok())
}

/// Requests whose framing is ambiguous (both a length and chunked, two lengths, disguised or
/// unknown transfer codings, bad chunks, folded or broken header lines) are refused, or served
/// alone with the connection closed after them: the request hidden in each one never reaches
/// the pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_never_smuggles_a_request() {
    let (up, pylon) = app_test("");
    let hidden = "GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n";
    let post = "POST /form HTTP/1.1\r\nHost: app.test\r\n";
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "a length and chunked: chunked wins, and the connection closes",
            format!("{post}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}"),
            200,
        ),
        (
            "chunked and a length",
            format!("{post}Transfer-Encoding: chunked\r\nContent-Length: 50\r\n\r\n0\r\n\r\n{hidden}"),
            200,
        ),
        (
            "two lengths",
            format!("{post}Content-Length: 0\r\nContent-Length: 44\r\n\r\n{hidden}"),
            400,
        ),
        (
            "a list of lengths",
            format!("{post}Content-Length: 0, 44\r\n\r\n{hidden}"),
            400,
        ),
        (
            "a signed length",
            format!("{post}Content-Length: +44\r\n\r\n{hidden}"),
            400,
        ),
        (
            "a disguised coding",
            format!("{post}Transfer-Encoding: xchunked\r\nContent-Length: 4\r\n\r\nabcd{hidden}"),
            400,
        ),
        (
            "a space before the colon",
            format!("{post}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n{hidden}"),
            400,
        ),
        (
            "a coding other than chunked",
            format!("{post}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{hidden}"),
            501,
        ),
        (
            "chunked, then another coding",
            format!("{post}Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n{hidden}"),
            400,
        ),
        (
            "two codings on two lines",
            format!(
                "{post}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{hidden}"
            ),
            400,
        ),
        (
            "chunked in HTTP/1.0",
            format!(
                "POST /form HTTP/1.0\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}"
            ),
            400,
        ),
        (
            "a chunk size that is not hexadecimal",
            format!("{post}Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\nzz\r\n\r\n{hidden}"),
            400,
        ),
        (
            "a chunk size past 64 bits",
            format!("{post}Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc\r\n{hidden}"),
            400,
        ),
        (
            "a folded header line",
            format!("{post}X-A: a\r\n b\r\nContent-Length: 0\r\n\r\n{hidden}"),
            400,
        ),
        (
            "a bare CR in a value",
            format!("{post}X-A: a\rContent-Length: 0\r\n\r\n{hidden}"),
            400,
        ),
    ];
    for (what, raw, status) in &cases {
        let (response, closed) = exchange(pylon.http, raw.as_bytes()).await;
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status} ")),
            "{what}: {response}"
        );
        assert_eq!(response.matches("HTTP/1.1 ").count(), 1, "{what}: {response}");
        assert!(closed, "{what}: the connection stayed open");
    }
    // The server is still well, and nothing hidden got through.
    let (response, _) = exchange(
        pylon.http,
        b"GET /after HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    let paths = up.paths();
    assert!(!paths.iter().any(|p| p.contains("smuggled")), "{paths:?}");
    assert_eq!(paths.last().map(String::as_str), Some("/after"), "{paths:?}");
}

/// A client that stops reading its response is disconnected after `proxy.client-send-timeout`
/// without progress, instead of holding its connection (and the upstream's) for ever; clients
/// that read, however large the response, are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_are_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_up, pylon) = app_test("[proxy]\nclient-send-timeout = \"1s\"\n");
    const SIZE: usize = 64 << 20;
    let request = format!("GET /big?bytes={SIZE} HTTP/1.1\r\nHost: app.test\r\n\r\n");

    // Reads the head, stops reading for 4 s, then reads what is left until the end.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(pylon.http).await.unwrap();
    stalled.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let first = stalled.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..first]).starts_with("HTTP/1.1 200"));
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let mut received = first;
    let rest = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            match stalled.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n,
            }
        }
    })
    .await;
    assert!(rest.is_ok(), "the connection stayed open");
    assert!(received < SIZE, "the whole response arrived: {received} bytes");
    pylon.eventually(std::time::Duration::from_secs(5), "the cut-off counted", || {
        pylon.metric("pylon_client_send_timeouts_total") == 1.0
    });

    // A client that reads gets all of it, however long that takes beyond the timeout.
    let mut reader = tokio::net::TcpStream::connect(pylon.http).await.unwrap();
    reader.write_all(request.as_bytes()).await.unwrap();
    let mut total = 0;
    let started = std::time::Instant::now();
    while total < SIZE {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n;
                // Slowly enough that the whole takes longer than the timeout.
                if started.elapsed() < std::time::Duration::from_millis(1500) {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
        }
    }
    assert!(
        total > SIZE,
        "a reading client got {total} bytes of {SIZE} and the head"
    );
    assert!(started.elapsed() > std::time::Duration::from_secs(1));

    // HTTP/2: a client that reads nothing of the body opens no flow-control window; the stream
    // is cut off alike.
    let mut send = h2_connection(&pylon).await;
    let req = http::Request::get(format!("https://app.test/big?bytes={SIZE}"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    pylon.eventually(std::time::Duration::from_secs(10), "the stream cut off", || {
        pylon.metric("pylon_client_send_timeouts_total") == 2.0
    });
    use http_body_util::BodyExt;
    let mut body = resp.into_body();
    let mut total = 0;
    let ended = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => total += f.data_ref().map_or(0, |d| d.len()),
                Err(_) => break,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream stayed open");
    assert!(total < SIZE, "the whole body arrived over HTTP/2");
}

/// A request body that stops arriving does not hold the connection and the upstream's for
/// ever: over HTTP/1.1 and HTTP/2 alike, the pod waiting for the rest of the body does not
/// answer within `proxy.read-timeout`, and the client gets 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_bodies_end_after_the_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_up, pylon) = app_test("[proxy]\nread-timeout = \"2s\"\n");
    let bound = std::time::Duration::from_secs(10);

    // HTTP/1.1: 3 bytes of 100, then nothing.
    let started = std::time::Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(pylon.http).await.unwrap();
    tcp.write_all(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(bound, tcp.read_to_end(&mut out))
        .await
        .expect("the connection stayed open")
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 504 "), "{out}");
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));

    // HTTP/2: the same on one stream.
    let mut send = h2_connection(&pylon).await;
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>(1);
    tx.send(Ok(hyper::body::Frame::data(Bytes::from_static(b"abc"))))
        .await
        .unwrap();
    let body = http_body_util::StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let req = http::Request::post("https://app.test/upload")
        .header("content-length", "100")
        .body(body)
        .unwrap();
    let resp = tokio::time::timeout(bound, send.send_request(req))
        .await
        .expect("no answer")
        .unwrap();
    assert_eq!(resp.status(), 504);
    drop(tx);
}
