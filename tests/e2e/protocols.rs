//! Protocols through the proxy: HTTP/2 downstream, WebSocket upgrades, large streamed bodies.

use futures_util::{SinkExt, StreamExt};

use crate::support::client::{TlsClient, http_get};
use crate::support::pylon::Pylon;
use crate::support::upstream::{Upstream, WsUpstream};
use crate::support::{CLASS, IngressYaml, TestCa, service, tls_secret};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_websocket_and_large_bodies() {
    let up = Upstream::start("up");
    let ws = WsUpstream::start("echo");
    let ca = TestCa::new();
    let leaf = ca.issue(&["app.test"]);
    let mut yaml = format!(
        "{CLASS}{}{}{}",
        service("up", &[up.addr]),
        service("ws", &[ws.addr]),
        tls_secret("app", &leaf)
    );
    yaml += &IngressYaml {
        tls: &[(&["app.test"], "app")],
        annotations: &[("nginx.ingress.kubernetes.io/ssl-redirect", "false")],
        rules: &[
            ("app.test", "/", "Prefix", "up"),
            ("app.test", "/ws", "Prefix", "ws"),
        ],
        ..Default::default()
    }
    .render();
    let pylon = Pylon::start(&[("all.yaml", &yaml)]);

    // HTTP/2 over TLS, several streams on one connection.
    let client = TlsClient::trusting(&ca.pem, &[b"h2"]);
    let (tls, _) = client.connect(pylon.https, "app.test").await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut streams = Vec::new();
    for i in 0..8 {
        let mut send = send.clone();
        streams.push(tokio::spawn(async move {
            let req = http::Request::get(format!("https://app.test/stream/{i}"))
                .version(http::Version::HTTP_2)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.version(), http::Version::HTTP_2);
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()
        }));
    }
    for (i, s) in streams.into_iter().enumerate() {
        let json = s.await.unwrap();
        assert_eq!(json["path"], format!("/stream/{i}"));
        assert_eq!(
            json["headers"]["host"], "app.test",
            ":authority becomes Host upstream"
        );
    }

    // WebSocket over TLS (HTTP/1.1 upgrade), messages both ways.
    let h1 = TlsClient::trusting(&ca.pem, &[b"http/1.1"]);
    let (tls, _) = h1.connect(pylon.https, "app.test").await.unwrap();
    let (mut socket, resp) = tokio_tungstenite::client_async("wss://app.test/ws/chat", tls)
        .await
        .expect("websocket handshake through pylon");
    assert_eq!(resp.status(), 101);
    for msg in ["hello", "again"] {
        socket.send(msg.into()).await.unwrap();
        let reply = socket.next().await.unwrap().unwrap();
        assert_eq!(reply.to_text().unwrap(), format!("echo: {msg}"));
    }
    socket.close(None).await.unwrap();

    // WebSocket over plain HTTP too.
    let tcp = tokio::net::TcpStream::connect(pylon.http).await.unwrap();
    let (mut socket, _) = tokio_tungstenite::client_async("ws://app.test/ws", tcp)
        .await
        .unwrap();
    socket.send("plain".into()).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap().to_text().unwrap(),
        "echo: plain"
    );

    // A 4 MiB response streams through unchanged.
    let resp = http_get(pylon.http, "app.test", "/big?bytes=4194304")
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), 4 << 20);
    assert!(resp.body.iter().all(|b| *b == b'x'));
}
