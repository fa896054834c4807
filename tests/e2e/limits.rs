//! Size limits: request headers (431) and bodies (413), globally and per Ingress; and the time
//! a request head may take to arrive.

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
            extra_config: "[proxy]\nclient-header-timeout = \"1s\"\nmax-request-header-size = \"1k\"\n"
                .into(),
            ..Default::default()
        },
    );
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
