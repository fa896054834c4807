//! Ingress semantics through the real proxy: hosts, paths, classes, default backend, headers,
//! 404 / 503 / 308, round-robin and retries.

use crate::support::client::{http, http_get};
use crate::support::pylon::{Options, Pylon};
use crate::support::upstream::Upstream;
use crate::support::{CLASS, IngressYaml, service, single_route};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_path_class_and_default_backend() {
    let names = [
        "root",
        "api",
        "api-exact",
        "wild",
        "hostless",
        "fallback",
        "nginx",
        "other",
    ];
    let ups: Vec<Upstream> = names.iter().map(|n| Upstream::start(n)).collect();
    let mut yaml = String::from(CLASS);
    for u in &ups {
        yaml += &service(&u.name, &[u.addr]);
    }
    yaml += "---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: someone-else}\nspec: {controller: example.com/other}\n";
    yaml += &IngressYaml {
        name: "main",
        rules: &[
            ("app.test", "/", "Prefix", "root"),
            ("app.test", "/api", "Prefix", "api"),
            ("app.test", "/api", "Exact", "api-exact"),
            ("*.wild.test", "/", "ImplementationSpecific", "wild"),
            ("", "/hostless", "Prefix", "hostless"),
        ],
        ..Default::default()
    }
    .render();
    yaml += &IngressYaml {
        name: "fallback",
        default_backend: Some("fallback"),
        ..Default::default()
    }
    .render();
    yaml += &IngressYaml {
        name: "migrated",
        class: Some("nginx"),
        rules: &[("nginx.test", "/", "Prefix", "nginx")],
        ..Default::default()
    }
    .render();
    yaml += &IngressYaml {
        name: "not-ours",
        class: Some("someone-else"),
        rules: &[("other.test", "/", "Prefix", "other")],
        ..Default::default()
    }
    .render();
    yaml += &IngressYaml {
        name: "no-class",
        class: None,
        rules: &[("noclass.test", "/", "Prefix", "other")],
        ..Default::default()
    }
    .render();
    let pylon = Pylon::start_with(
        &[("all.yaml", &yaml)],
        Options {
            extra_config: "[ingress]\nclasses = [\"nginx\"]\n".into(),
            ..Default::default()
        },
    );

    let cases = [
        ("app.test", "/", "root"),
        ("app.test", "/other/page", "root"),
        ("app.test", "/api", "api-exact"),
        ("app.test", "/api/", "api"),
        ("app.test", "/api/v1/users", "api"),
        ("app.test", "/apix", "root"),
        ("APP.test:1234", "/api/x", "api"),
        ("a.wild.test", "/anything", "wild"),
        ("a.b.wild.test", "/hostless/x", "hostless"),
        ("wild.test", "/hostless", "hostless"),
        ("unknown.test", "/", "fallback"),
        ("nginx.test", "/", "nginx"),
        ("other.test", "/", "fallback"),
        ("noclass.test", "/", "fallback"),
    ];
    for (host, path, want) in cases {
        let resp = http_get(pylon.http, host, path).await.expect("request");
        assert_eq!(resp.status, 200, "{host}{path}: {}", resp.text());
        assert_eq!(resp.json()["upstream"], want, "{host}{path}");
        assert_eq!(resp.json()["path"], path, "path passed unchanged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_is_404_and_unavailable_backends_are_503() {
    let up = Upstream::start("up");
    let mut yaml = String::from(CLASS);
    yaml += &service("up", &[up.addr]);
    yaml += &service("empty", &[]);
    yaml += &IngressYaml {
        rules: &[
            ("app.test", "/", "Prefix", "up"),
            ("app.test", "/empty", "Prefix", "empty"),
            ("app.test", "/missing", "Prefix", "missing"),
        ],
        ..Default::default()
    }
    .render();
    let pylon = Pylon::start(&[("all.yaml", &yaml)]);

    let resp = http_get(pylon.http, "nowhere.test", "/").await.unwrap();
    assert_eq!(resp.status, 404);
    assert!(resp.text().contains("no route"), "{}", resp.text());
    let resp = http_get(pylon.http, "app.test", "/empty").await.unwrap();
    assert_eq!(resp.status, 503);
    assert!(resp.text().contains("no ready endpoints"), "{}", resp.text());
    let resp = http_get(pylon.http, "app.test", "/missing/x").await.unwrap();
    assert_eq!(resp.status, 503);
    assert!(resp.text().contains("service not found"), "{}", resp.text());
    assert_eq!(up.hits(), 0);
    let resp = http_get(pylon.http, "app.test", "/").await.unwrap();
    assert_eq!(resp.status, 200);
}

/// ExternalName Services pointing at a DNS name: the name is looked up off the request path
/// (here `localhost`, from the hosts file) and its addresses serve; a name that cannot be looked
/// up answers 503 and is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_name_services_with_dns_names_are_resolved() {
    let up = Upstream::start("ext");
    let mut yaml = String::from(CLASS);
    yaml += &format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: ext}}\nspec: {{type: ExternalName, externalName: localhost, ports: [{{name: http, port: 80, targetPort: {}}}]}}\n",
        up.addr.port()
    );
    yaml += "---\napiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {type: ExternalName, externalName: \"not a name!\"}\n";
    yaml += &IngressYaml {
        rules: &[
            ("ext.test", "/", "Prefix", "ext"),
            ("bad.test", "/", "Prefix", "bad"),
        ],
        ..Default::default()
    }
    .render();
    let pylon = Pylon::start(&[("all.yaml", &yaml)]);

    // `localhost` may also be ::1, where nothing listens: that connection fails and is retried
    // on 127.0.0.1, so every request reaches the upstream.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let resp = http_get(pylon.http, "ext.test", "/").await.unwrap();
        if resp.status == 200 {
            break;
        }
        assert_eq!(resp.status, 503, "{}", resp.text());
        assert!(resp.text().contains("not resolved yet"), "{}", resp.text());
        assert!(
            std::time::Instant::now() < deadline,
            "never resolved\n{}",
            pylon.stderr()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for _ in 0..6 {
        let resp = http_get(pylon.http, "ext.test", "/").await.unwrap();
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.json()["upstream"], "ext");
    }
    assert!(up.hits() >= 7);

    let resp = http_get(pylon.http, "bad.test", "/").await.unwrap();
    assert_eq!(resp.status, 503);
    assert!(resp.text().contains("does not resolve"), "{}", resp.text());
    let log = pylon.stderr();
    assert!(log.contains("ExternalName does not resolve"), "{log}");
    assert!(log.contains("external_name_unresolved"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_client_facts_and_strips_hop_by_hop_headers() {
    let up = Upstream::start("up");
    let yaml = single_route(up.addr, "app.test", &[]);
    let pylon = Pylon::start(&[("all.yaml", &yaml)]);
    let req = http::Request::get("/echo?q=1")
        .header("host", "app.test")
        .header("x-forwarded-for", "6.6.6.6")
        .header("connection", "x-private")
        .header("x-private", "secret")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = http(pylon.http, req).await.unwrap();
    assert_eq!(resp.status, 200);
    let h = &resp.json()["headers"];
    assert_eq!(h["host"], "app.test", "Host is passed unchanged");
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "a client-supplied X-Forwarded-For is not trusted"
    );
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "app.test");
    assert_eq!(h["x-forwarded-port"], pylon.http.port().to_string());
    assert_eq!(h["x-request-id"].as_str().map(str::len), Some(32));
    assert!(
        h.get("x-private").is_none(),
        "Connection-nominated header removed: {h}"
    );
    assert!(h.get("te").is_none(), "TE removed: {h}");
    assert_eq!(resp.json()["query"], "q=1");
    assert_eq!(resp.header("x-upstream"), Some("up"));
    assert!(
        resp.header("keep-alive").is_none(),
        "hop-by-hop response header removed"
    );

    // An incoming request ID is kept.
    let req = http::Request::get("/")
        .header("host", "app.test")
        .header("x-request-id", "abc-123")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = http(pylon.http, req).await.unwrap();
    assert_eq!(resp.json()["headers"]["x-request-id"], "abc-123");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_and_retry_on_connect_failure() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    // An endpoint where nothing listens: connections are refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let yaml = format!(
        "{CLASS}{}{}",
        service("pool", &[a.addr, dead, b.addr]),
        IngressYaml {
            rules: &[("app.test", "/", "Prefix", "pool")],
            ..Default::default()
        }
        .render()
    );
    let pylon = Pylon::start(&[("all.yaml", &yaml)]);
    for i in 0..30 {
        let resp = http_get(pylon.http, "app.test", "/").await.unwrap();
        assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
    }
    assert_eq!(a.hits() + b.hits(), 30);
    assert!(
        a.hits() >= 5 && b.hits() >= 5,
        "spread: a={} b={}",
        a.hits(),
        b.hits()
    );
    assert!(pylon.metric("pylon_upstream_connect_failures_total") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_a_tls_host_is_redirected_except_acme_challenges() {
    let up = Upstream::start("up");
    let ca = crate::support::TestCa::new();
    let leaf = ca.issue(&["secure.test"]);
    let mut yaml = format!(
        "{CLASS}{}{}",
        service("up", &[up.addr]),
        crate::support::tls_secret("secure", &leaf)
    );
    yaml += &IngressYaml {
        tls: &[(&["secure.test"], "secure")],
        rules: &[
            ("secure.test", "/", "Prefix", "up"),
            ("plain.test", "/", "Prefix", "up"),
        ],
        ..Default::default()
    }
    .render();
    yaml += &IngressYaml {
        name: "forced",
        annotations: &[("nginx.ingress.kubernetes.io/force-ssl-redirect", "true")],
        rules: &[("forced.test", "/", "Prefix", "up")],
        ..Default::default()
    }
    .render();
    let pylon = Pylon::start(&[("all.yaml", &yaml)]);

    let resp = http_get(pylon.http, "secure.test", "/a/b?c=d").await.unwrap();
    assert_eq!(resp.status, 308);
    assert_eq!(
        resp.header("location").unwrap(),
        format!("https://secure.test:{}/a/b?c=d", pylon.https.port())
    );
    let resp = http_get(pylon.http, "forced.test", "/").await.unwrap();
    assert_eq!(resp.status, 308);
    let resp = http_get(pylon.http, "plain.test", "/").await.unwrap();
    assert_eq!(resp.status, 200);
    let resp = http_get(pylon.http, "secure.test", "/.well-known/acme-challenge/token")
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "challenge paths are not redirected");
    assert_eq!(resp.json()["upstream"], "up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstreams_time_out_with_504() {
    let up = Upstream::start("up");
    let yaml = single_route(
        up.addr,
        "app.test",
        &[("nginx.ingress.kubernetes.io/proxy-read-timeout", "1")],
    );
    let pylon = Pylon::start(&[("all.yaml", &yaml)]);
    let resp = http_get(pylon.http, "app.test", "/slow?ms=300").await.unwrap();
    assert_eq!(resp.status, 200, "within the timeout");
    let started = std::time::Instant::now();
    let resp = http_get(pylon.http, "app.test", "/slow?ms=5000").await.unwrap();
    assert_eq!(resp.status, 504, "{}", resp.text());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "the annotation's 1 s applies"
    );
}

/// Behind a trusted proxy (`proxy.trusted-proxies`), the client is the last untrusted address
/// of `X-Forwarded-For`, the proxy's other forwarded headers are kept, and the proxy is
/// appended to the list; a client cannot choose its address by sending its own list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_of_trusted_proxies_are_believed() {
    let up = Upstream::start("up");
    let yaml = single_route(up.addr, "app.test", &[]);
    let pylon = Pylon::start_with(
        &[("all.yaml", &yaml)],
        Options {
            // The test client connects from 127.0.0.1: it plays the CDN in front.
            extra_config: "[proxy]\ntrusted-proxies = [\"127.0.0.0/8\", \"2001:db8::/32\"]\n".into(),
            ..Default::default()
        },
    );
    let req = http::Request::get("/echo")
        .header("host", "app.test")
        .header("x-forwarded-for", "6.6.6.6, 203.0.113.7")
        .header("x-forwarded-for", "2001:db8::5")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "www.example.com")
        .header("x-forwarded-port", "443")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = http(pylon.http, req).await.unwrap();
    let h = &resp.json()["headers"];
    assert_eq!(
        h["x-forwarded-for"],
        "6.6.6.6, 203.0.113.7, 2001:db8::5, 127.0.0.1"
    );
    assert_eq!(h["x-real-ip"], "203.0.113.7", "the last address not trusted");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-host"], "www.example.com");
    assert_eq!(h["x-forwarded-port"], "443");
    assert_eq!(h["host"], "app.test");

    // Without forwarded headers: the proxy's own facts.
    let resp = http_get(pylon.http, "app.test", "/echo").await.unwrap();
    let h = &resp.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "app.test");

    pylon.eventually(std::time::Duration::from_secs(5), "access log lines", || {
        pylon.access_log().len() >= 2
    });
    let clients: Vec<String> = pylon
        .access_log()
        .iter()
        .map(|l| l["client"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(clients[0], "203.0.113.7", "{clients:?}");
    assert!(clients[1].starts_with("127.0.0.1:"), "{clients:?}");
}
