//! The PROXY protocol in front of both traffic listeners (`listen.proxy-protocol`): the client
//! address a load balancer sends is the one upstreams and the access log see, over plain HTTP
//! and before TLS; a connection without a valid header is closed and counted, and
//! every other connection keeps being served.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::client::{TlsClient, get};
use crate::support::pylon::{Options, Pylon};
use crate::support::upstream::Upstream;
use crate::support::{CLASS, IngressYaml, TestCa, service, tls_secret};

/// Sends `bytes` (a header and a request) on a new connection and reads until it closes.
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The JSON body of an HTTP/1.1 response read whole.
fn body(response: &str) -> serde_json::Value {
    let (_, body) = response.split_once("\r\n\r\n").unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|_| panic!("{response}"))
}

fn v2_header(source: std::net::SocketAddr, local: bool) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(if local { 0x20 } else { 0x21 });
    match source {
        std::net::SocketAddr::V6(v6) => {
            h.push(0x21);
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&v6.ip().octets());
            h.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        }
        std::net::SocketAddr::V4(v4) => {
            h.push(0x11);
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&v4.ip().octets());
            h.extend_from_slice(&[127, 0, 0, 1]);
        }
    }
    h.extend_from_slice(&source.port().to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_addresses_come_from_the_proxy_protocol_header() {
    let up = Upstream::start("up");
    let ca = TestCa::new();
    let leaf = ca.issue(&["secure.test"]);
    let manifests = format!(
        "{CLASS}{}{}{}",
        service("up", &[up.addr]),
        IngressYaml {
            tls: &[(&["secure.test"], "secure")],
            rules: &[
                ("plain.test", "/", "Prefix", "up"),
                ("secure.test", "/", "Prefix", "up")
            ],
            ..Default::default()
        }
        .render(),
        tls_secret("secure", &leaf)
    );
    let pylon = Pylon::start_with(
        &[("app.yaml", &manifests)],
        Options {
            extra_config: "[listen]\nproxy-protocol = true\n".into(),
            ..Default::default()
        },
    );
    let request = b"GET /echo HTTP/1.1\r\nHost: plain.test\r\nConnection: close\r\n\r\n";

    // Version 1, sent in the same packet as the request that follows it.
    let response = exchange(
        pylon.http,
        &[
            b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 80\r\n".as_slice(),
            request,
        ]
        .concat(),
    )
    .await;
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "{response}\n{}",
        pylon.stderr()
    );
    let h = &body(&response)["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.7");
    assert_eq!(h["x-real-ip"], "203.0.113.7");

    // Version 2 with an IPv6 client, then TLS on the same connection.
    let mut tcp = TcpStream::connect(pylon.https).await.unwrap();
    tcp.write_all(&v2_header("[2001:db8::7]:40000".parse().unwrap(), false))
        .await
        .unwrap();
    let client = TlsClient::trusting(&ca.pem, &[b"http/1.1"]);
    let (tls, cert) = client.connect_over(tcp, "secure.test").await.unwrap();
    assert_eq!(cert.dns_names, ["secure.test"]);
    let resp = TlsClient::send(tls, "secure.test", get("secure.test", "/echo"))
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["headers"]["x-forwarded-for"], "2001:db8::7");
    assert_eq!(resp.json()["headers"]["x-forwarded-proto"], "https");

    // A load balancer's own health check (LOCAL): the connection's own address.
    let response = exchange(
        pylon.http,
        &[
            v2_header("198.51.100.1:1".parse().unwrap(), true).as_slice(),
            request,
        ]
        .concat(),
    )
    .await;
    assert_eq!(body(&response)["headers"]["x-forwarded-for"], "127.0.0.1");

    // The access log has the client from the header.
    pylon.eventually(Duration::from_secs(5), "access log lines", || {
        pylon.access_log().len() >= 3
    });
    let clients: Vec<String> = pylon
        .access_log()
        .iter()
        .map(|l| l["client"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        clients.iter().any(|c| c.starts_with("203.0.113.7:")),
        "{clients:?}"
    );
    assert!(clients.iter().any(|c| c.contains("2001:db8::7")), "{clients:?}");

    // No header, a malformed one, a TLS ClientHello straight away: closed without an answer.
    for (bad, reason) in [
        (request.to_vec(), "missing"),
        (
            b"PROXY TCP4 203.0.113.7 127.0.0.1 99999 80\r\nGET / HTTP/1.1\r\n\r\n".to_vec(),
            "malformed",
        ),
    ] {
        assert_eq!(exchange(pylon.http, &bad).await, "", "{reason}");
    }
    let refused = TlsClient::trusting(&ca.pem, &[b"http/1.1"])
        .get(pylon.https, "secure.test", "/")
        .await;
    assert!(refused.is_err(), "TLS without a header");
    // A header cut short by the client closing.
    let mut tcp = TcpStream::connect(pylon.http).await.unwrap();
    tcp.write_all(b"PROXY TCP4 203.0").await.unwrap();
    drop(tcp);
    pylon.eventually(Duration::from_secs(5), "refusals counted", || {
        pylon.metric("pylon_proxy_protocol_refused_total{reason=\"missing\"}") == 2.0
            && pylon.metric("pylon_proxy_protocol_refused_total{reason=\"malformed\"}") == 1.0
            && pylon.metric("pylon_proxy_protocol_refused_total{reason=\"closed\"}") == 1.0
    });

    // Everything else is still served.
    let response = exchange(
        pylon.http,
        &[b"PROXY TCP6 2001:db8::9 ::1 1234 80\r\n".as_slice(), request].concat(),
    )
    .await;
    assert_eq!(body(&response)["headers"]["x-forwarded-for"], "2001:db8::9");
}
