//! Manifest changes applied without a restart: Ingresses added and removed, endpoints moved,
//! and broken files or objects that leave everything else serving.

use std::time::Duration;

use crate::support::client::http_get;
use crate::support::pylon::Pylon;
use crate::support::upstream::Upstream;
use crate::support::{CLASS, IngressYaml, endpoint_slice, service};

async fn upstream_of(pylon: &Pylon, host: &str, path: &str) -> String {
    match http_get(pylon.http, host, path).await {
        Ok(r) if r.status == 200 => r.json()["upstream"].as_str().unwrap_or("?").to_owned(),
        Ok(r) => r.status.to_string(),
        Err(e) => format!("error: {e}"),
    }
}

/// Polls until `host` `path` is answered by `want` (an upstream name or a status code).
async fn wait_for(pylon: &Pylon, host: &str, path: &str, want: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = upstream_of(pylon, host, path).await;
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{host}{path}: still {got}, expected {want}\n{}",
            pylon.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_and_removing_an_ingress_file_changes_routing() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let base = format!("{CLASS}{}{}", service("a", &[a.addr]), service("b", &[b.addr]));
    let first = IngressYaml {
        name: "first",
        rules: &[("one.test", "/", "Prefix", "a")],
        ..Default::default()
    }
    .render();
    let pylon = Pylon::start(&[("base.yaml", &base), ("first.yaml", &first)]);
    assert_eq!(upstream_of(&pylon, "one.test", "/").await, "a");
    assert_eq!(upstream_of(&pylon, "two.test", "/").await, "404");

    let second = IngressYaml {
        name: "second",
        rules: &[("two.test", "/", "Prefix", "b")],
        ..Default::default()
    }
    .render();
    pylon.write_manifest("second.yaml", &second);
    wait_for(&pylon, "two.test", "/", "b").await;
    assert_eq!(upstream_of(&pylon, "one.test", "/").await, "a");

    pylon.remove_manifest("first.yaml");
    wait_for(&pylon, "one.test", "/", "404").await;
    assert_eq!(upstream_of(&pylon, "two.test", "/").await, "b");
    assert!(pylon.metric("pylon_config_reloads_total") >= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_an_endpoint_slice_moves_traffic() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let ingress = IngressYaml {
        rules: &[("app.test", "/", "Prefix", "svc")],
        ..Default::default()
    }
    .render();
    let pylon = Pylon::start(&[
        ("app.yaml", &format!("{CLASS}{ingress}{}", service("svc", &[]))),
        ("slice.yaml", &endpoint_slice("svc-1", "svc", a.addr, true)),
    ]);
    assert_eq!(upstream_of(&pylon, "app.test", "/").await, "a");
    pylon.write_manifest("slice.yaml", &endpoint_slice("svc-1", "svc", b.addr, true));
    wait_for(&pylon, "app.test", "/", "b").await;
    pylon.write_manifest("slice.yaml", &endpoint_slice("svc-1", "svc", b.addr, false));
    wait_for(&pylon, "app.test", "/", "503").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_manifests_leave_other_routes_serving() {
    let a = Upstream::start("a");
    let base = format!("{CLASS}{}", service("a", &[a.addr]));
    let good = |name: &str, host: &str| {
        IngressYaml {
            name,
            rules: &[(host, "/", "Prefix", "a")],
            ..Default::default()
        }
        .render()
    };
    let pylon = Pylon::start(&[
        ("base.yaml", &base),
        ("one.yaml", &good("one", "one.test")),
        ("two.yaml", &good("two", "two.test")),
    ]);
    assert_eq!(upstream_of(&pylon, "two.test", "/").await, "a");

    // A file that is not YAML at all: its last good version keeps serving.
    pylon.write_manifest("two.yaml", "apiVersion: [this is not\n  valid: yaml");
    pylon.eventually(Duration::from_secs(5), "invalid YAML reported", || {
        pylon.stderr().contains("not valid YAML")
    });
    assert_eq!(upstream_of(&pylon, "two.test", "/").await, "a");
    assert_eq!(upstream_of(&pylon, "one.test", "/").await, "a");

    // A new, invalid Ingress is rejected with its name and reason; the others keep serving.
    let bad = good("three", "three.test").replace("path: \"/\"", "path: \"no-slash\"");
    pylon.write_manifest("three.yaml", &bad);
    pylon.eventually(Duration::from_secs(5), "invalid Ingress reported", || {
        pylon.stderr().contains("must start with '/'")
    });
    assert_eq!(upstream_of(&pylon, "three.test", "/").await, "404");
    assert_eq!(upstream_of(&pylon, "one.test", "/").await, "a");
    assert!(
        pylon.metric("pylon_config_rejections_total{kind=\"Ingress\",reason=\"invalid_ingress\"}") >= 1.0
    );
    assert!(pylon.metric("pylon_config_rejections_total{kind=\"File\",reason=\"invalid_yaml\"}") >= 1.0);

    // An edit that breaks a serving Ingress keeps its last good version.
    pylon.write_manifest(
        "one.yaml",
        &good("one", "one.test").replace("pathType: Prefix", "pathType: Sometimes"),
    );
    pylon.eventually(Duration::from_secs(5), "bad pathType reported", || {
        pylon.stderr().contains("Sometimes")
    });
    assert_eq!(upstream_of(&pylon, "one.test", "/").await, "a");

    // Fixing the file brings the route back to the current version.
    pylon.write_manifest("two.yaml", &good("two", "two-fixed.test"));
    wait_for(&pylon, "two-fixed.test", "/", "a").await;
    wait_for(&pylon, "two.test", "/", "404").await;
    assert_eq!(pylon.admin_get("/readyz").unwrap().0, 200, "still ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_open_websockets_and_in_flight_requests() {
    use futures_util::{SinkExt, StreamExt};

    let up = Upstream::start("up");
    let ws = crate::support::upstream::WsUpstream::start("echo");
    let app = format!(
        "{CLASS}{}{}{}",
        service("up", &[up.addr]),
        service("ws", &[ws.addr]),
        IngressYaml {
            rules: &[
                ("app.test", "/", "Prefix", "up"),
                ("app.test", "/ws", "Prefix", "ws")
            ],
            ..Default::default()
        }
        .render()
    );
    let pylon = Pylon::start(&[("app.yaml", &app)]);

    let tcp = tokio::net::TcpStream::connect(pylon.http).await.unwrap();
    let (mut socket, _) = tokio_tungstenite::client_async("ws://app.test/ws", tcp)
        .await
        .unwrap();
    socket.send("before".into()).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap().to_text().unwrap(),
        "echo: before"
    );
    let http = pylon.http;
    let slow = tokio::spawn(async move { http_get(http, "app.test", "/slow?ms=1500").await });
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Two changes while both are open: a new Ingress, then the old one's file rewritten.
    pylon.write_manifest(
        "more.yaml",
        &IngressYaml {
            name: "more",
            rules: &[("more.test", "/", "Prefix", "up")],
            ..Default::default()
        }
        .render(),
    );
    wait_for(&pylon, "more.test", "/", "up").await;
    pylon.write_manifest("app.yaml", &format!("{app}\n# edited\n"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(pylon.metric("pylon_config_reloads_total") >= 3.0);

    socket.send("after".into()).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap().to_text().unwrap(),
        "echo: after"
    );
    let resp = slow.await.unwrap().expect("in-flight request completed");
    assert_eq!(resp.status, 200);
}
