//! Size limits: request headers (431) and bodies (413), globally and per Ingress.

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
