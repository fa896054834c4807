//! Health, metrics and the access log, and the SIGTERM sequence: readiness off, traffic still
//! served during the delay, then listeners closed and in-flight requests finished.

use std::time::{Duration, Instant};

use crate::support::client::{TlsClient, http_get};
use crate::support::pylon::{Options, Pylon};
use crate::support::single_route;
use crate::support::upstream::Upstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_access_log() {
    let up = Upstream::start("up");
    let pylon = Pylon::start(&[("app.yaml", &single_route(up.addr, "app.test", &[]))]);
    assert_eq!(pylon.admin_get("/healthz").unwrap(), (200, "ok\n".into()));
    assert_eq!(pylon.admin_get("/readyz").unwrap().0, 200);
    assert_eq!(pylon.admin_get("/nope").unwrap().0, 404);

    for _ in 0..3 {
        assert_eq!(
            http_get(pylon.http, "app.test", "/hello").await.unwrap().status,
            200
        );
    }
    assert_eq!(
        http_get(pylon.http, "nowhere.test", "/").await.unwrap().status,
        404
    );
    let (resp, _) = TlsClient::insecure(&[b"h2"])
        .get(pylon.https, "app.test", "/over-tls")
        .await
        .unwrap();
    assert_eq!(resp.status, 200);

    // Requests are counted after their response is sent: wait for the last one.
    pylon.eventually(Duration::from_secs(3), "all requests counted", || {
        pylon.metric("pylon_request_duration_seconds_count") >= 5.0
    });
    let metrics = pylon.metrics();
    for line in [
        r#"pylon_requests_total{ingress="app",method="GET",namespace="default",service="up",status="2xx"} 4"#,
        r#"pylon_requests_total{ingress="",method="GET",namespace="",service="",status="4xx"} 1"#,
        "pylon_routes 1",
        "pylon_backends 1",
        "pylon_endpoints 1",
        "pylon_build_info{version=",
        "pylon_request_duration_seconds_count 5",
        "pylon_upstream_response_duration_seconds_count 4",
        r#"pylon_tls_handshakes_total{version="TLSv1_3"} 1"#,
    ] {
        assert!(metrics.contains(line), "missing {line}\n{metrics}");
    }
    assert!(pylon.metric("pylon_open_connections") >= 0.0);
    assert!(!metrics.contains("/hello"), "no raw paths in labels");

    // The traffic listeners do not serve the admin endpoints.
    assert_eq!(
        http_get(pylon.http, "app.test", "/metrics").await.unwrap().json()["upstream"],
        "up"
    );

    pylon.eventually(Duration::from_secs(3), "access log written", || {
        pylon.access_log().len() >= 5
    });
    let log = pylon.access_log();
    let tls = log
        .iter()
        .find(|l| l["path"] == "/over-tls")
        .expect("the request over TLS logged");
    assert_eq!(tls["tls_version"], "TLSv1_3");
    assert_eq!(tls["alpn"], "h2");
    let line = log
        .iter()
        .find(|l| l["path"] == "/hello")
        .expect("a logged request");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["host"], "app.test");
    assert_eq!(line["status"], 200);
    assert_eq!(line["ingress"], "default/app");
    assert_eq!(line["service"], "default/up:http");
    assert_eq!(line["upstream_addr"], up.addr.to_string());
    assert_eq!(line["upstream_status"], 200);
    assert_eq!(line["request_id"].as_str().map(str::len), Some(32));
    assert!(line["duration_ms"].as_f64().is_some());
    assert!(line["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(
        line["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:"))
    );
    assert!(line["tls_version"].is_null(), "plain HTTP: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_readiness_then_drains_in_flight_requests() {
    let up = Upstream::start("up");
    let mut pylon = Pylon::start_with(
        &[("app.yaml", &single_route(up.addr, "app.test", &[]))],
        Options {
            extra_config: "[shutdown]\ndelay = \"1500ms\"\ndrain-timeout = \"10s\"\n".into(),
            ..Default::default()
        },
    );
    let (http, started) = (pylon.http, Instant::now());
    let slow = tokio::spawn(async move { http_get(http, "app.test", "/slow?ms=3000").await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    pylon.signal("TERM");
    pylon.eventually(Duration::from_secs(1), "readiness off", || {
        pylon.admin_get("/readyz").is_some_and(|(s, _)| s == 503)
    });
    // During the delay new requests are still served.
    let resp = http_get(pylon.http, "app.test", "/during-delay")
        .await
        .expect("served during the delay");
    assert_eq!(resp.status, 200);

    let status = pylon
        .wait(Duration::from_secs(15))
        .expect("pylon exits after the drain");
    assert!(status.success(), "exit status {status}");
    let resp = slow.await.unwrap().expect("the in-flight request completed");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["path"], "/slow");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(9),
        "exited when drained, not after the whole timeout: {took:?}"
    );
    assert!(http_get(http, "app.test", "/").await.is_err(), "listener closed");
}
