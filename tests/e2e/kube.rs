//! Cluster mode against a real kube-apiserver and etcd: routing from API objects, Ingress status,
//! certificates stored as Secrets, one orderer per cluster via a Lease, API server outages,
//! least-privilege RBAC from deploy/, Events for bad objects, and session-ticket keys shared by
//! the replicas through a Secret.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::client::{TlsClient, http_get};
use crate::support::kube_env::KubeEnv;
use crate::support::pebble::{Pebble, PebbleOptions};
use crate::support::pylon::{Options, Pylon};
use crate::support::upstream::Upstream;
use crate::support::{CLASS, IngressYaml, TestCa, endpoint_slice, external_service, service, tls_secret};

/// pylon in cluster mode, watching `namespace` (also where its Lease and ClusterIssuers'
/// Secrets live).
fn options(env: &KubeEnv, namespace: &str, token: Option<&str>, extra: &str) -> Options {
    Options {
        extra_config: format!(
            "[kubernetes]\nenabled = true\nkubeconfig = \"{}\"\nwatch-namespaces = [\"{namespace}\"]\nlease-duration = \"4s\"\npublish-status-addresses = [\"127.0.0.1\"]\n[ingress]\nclasses = [\"nginx\"]\n[acme]\ncluster-resource-namespace = \"{namespace}\"\nretry-backoff = \"1s\"\nretry-backoff-max = \"2s\"\n{extra}",
            env.kubeconfig(token).display()
        ),
        env: vec![("POD_NAMESPACE".into(), namespace.into())],
    }
}

/// Puts manifests (with no namespace of their own) into `namespace`.
fn apply_in(env: &KubeEnv, namespace: &str, yaml: &str) {
    let (code, out, err) = env.kubectl(
        &["apply", "--server-side", "-n", namespace, "-f", "-"],
        Some(yaml),
    );
    assert_eq!(code, 0, "{out}{err}\n{yaml}");
}

fn kubectl_json(env: &KubeEnv, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let (code, out, err) = env.kubectl(&all, None);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap_or(serde_json::Value::Null)
}

async fn upstream_of(pylon: &Pylon, host: &str) -> String {
    match http_get(pylon.http, host, "/").await {
        Ok(r) if r.status == 200 => r.json()["upstream"].as_str().unwrap_or("?").to_owned(),
        Ok(r) => r.status.to_string(),
        Err(e) => format!("error: {e}"),
    }
}

async fn wait_for(pylon: &Pylon, host: &str, want: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let got = upstream_of(pylon, host).await;
        if got == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "{host}: {got}, expected {want}\n{}",
            pylon.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn app_ingress(name: &str, host: &str, service: &str) -> String {
    IngressYaml {
        name,
        rules: &[(host, "/", "Prefix", service)],
        ..Default::default()
    }
    .render()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_follow_the_api_server_and_status_is_written() {
    let env = KubeEnv::shared();
    let ns = env.namespace("routes");
    let a = Upstream::start("a");
    env.apply(CLASS);
    apply_in(env, &ns, &external_service("app", a.addr));
    apply_in(env, &ns, &app_ingress("first", "first.test", "app"));
    let pylon = Pylon::start_with(
        &[],
        options(
            env,
            &ns,
            None,
            "[proxy]\nconnect-timeout = \"300ms\"\nconnect-retries = 0\n",
        ),
    );
    wait_for(&pylon, "first.test", "a", Duration::from_secs(5)).await;

    apply_in(env, &ns, &app_ingress("second", "second.test", "app"));
    let took = wait_for(&pylon, "second.test", "a", Duration::from_secs(3)).await;
    eprintln!("a new Ingress was routed {took:?} after kubectl apply returned");

    // EndpointSlices: the API server refuses loopback addresses, so these endpoints cannot
    // answer; where pylon sends the request shows in the access log.
    let (one, two): (std::net::SocketAddr, std::net::SocketAddr) = (
        "192.0.2.10:8080".parse().unwrap(),
        "192.0.2.20:8080".parse().unwrap(),
    );
    apply_in(
        env,
        &ns,
        &format!(
            "{}{}",
            service("svc", &[]),
            endpoint_slice("svc-1", "svc", one, true)
        ),
    );
    apply_in(env, &ns, &app_ingress("sliced", "sliced.test", "svc"));
    let upstream_addr = |pylon: &Pylon| {
        pylon
            .access_log()
            .iter()
            .rev()
            .find(|l| l["host"] == "sliced.test")
            .and_then(|l| l["upstream_addr"].as_str().map(str::to_owned))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream_addr(&pylon).as_deref() != Some("192.0.2.10:8080") {
        let _ = http_get(pylon.http, "sliced.test", "/").await;
        assert!(
            Instant::now() < deadline,
            "not sent to the slice's endpoint\n{}",
            pylon.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    apply_in(env, &ns, &endpoint_slice("svc-1", "svc", two, true));
    let started = Instant::now();
    while upstream_addr(&pylon).as_deref() != Some("192.0.2.20:8080") {
        let resp = http_get(pylon.http, "sliced.test", "/").await.unwrap();
        assert!(matches!(resp.status, 502 | 504), "{}", resp.status);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "traffic did not move\n{}",
            pylon.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "an EndpointSlice change moved traffic after {:?}",
        started.elapsed()
    );
    apply_in(env, &ns, &endpoint_slice("svc-1", "svc", two, false));
    wait_for(&pylon, "sliced.test", "503", Duration::from_secs(3)).await;

    // Status: the published address, on served Ingresses.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ing = kubectl_json(env, &["get", "ingress", "first", "-n", &ns]);
        if ing["status"]["loadBalancer"]["ingress"][0]["ip"] == "127.0.0.1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no status written: {ing}\n{}",
            pylon.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (code, _, err) = env.kubectl(&["delete", "ingress", "second", "-n", &ns], None);
    assert_eq!(code, 0, "{err}");
    wait_for(&pylon, "second.test", "404", Duration::from_secs(3)).await;
    assert_eq!(upstream_of(&pylon, "first.test").await, "a");
    assert_eq!(pylon.metric("pylon_acme_leader"), 1.0);

    // Handed to another controller: no longer served, and pylon's status is taken back.
    let (code, _, err) = env.kubectl(
        &[
            "patch",
            "ingress",
            "first",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"ingressClassName":"other"}}"#,
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    wait_for(&pylon, "first.test", "404", Duration::from_secs(3)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ing = kubectl_json(env, &["get", "ingress", "first", "-n", &ns]);
        if ing["status"]["loadBalancer"]["ingress"]
            .as_array()
            .is_none_or(Vec::is_empty)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status not cleared: {ing}\n{}",
            pylon.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// ClusterIssuer for Pebble with a name unique to the test (ClusterIssuers are cluster-wide).
fn issuer(pebble: &Pebble, name: &str) -> String {
    pebble.cluster_issuer(name, &format!("{name}-account"), "")
}

fn annotated(name: &str, host: &str, secret: &str, issuer: &str) -> String {
    IngressYaml {
        name,
        class: Some("nginx"),
        annotations: &[("cert-manager.io/cluster-issuer", issuer)],
        tls: &[(&[host], secret)],
        rules: &[(host, "/", "Prefix", "app")],
        ..Default::default()
    }
    .render()
}

async fn served_by_root(pylon: &Pylon, host: &str, root: &str, timeout: Duration) -> String {
    let client = TlsClient::trusting(root, &[b"http/1.1"]);
    let deadline = Instant::now() + timeout;
    loop {
        match client.get(pylon.https, host, "/").await {
            Ok((_, cert)) => return cert.serial,
            Err(e) => assert!(
                Instant::now() < deadline,
                "{host}: no certificate from Pebble: {e}\n{}",
                pylon.stderr()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cert_manager_users_story_in_a_cluster() {
    let env = KubeEnv::shared();
    env.install_cert_manager_crds();
    let ns = env.namespace("story");
    let up = Upstream::start("app");
    apply_in(env, &ns, &external_service("app", up.addr));
    let name = format!("le-{ns}");
    apply_in(env, &ns, &annotated("app", "app.example.com", "app-tls", &name));
    let pylon = Pylon::start_with(&[], options(env, &ns, None, ""));
    let pebble = Pebble::start(PebbleOptions {
        http_port: pylon.http.port(),
        ..Default::default()
    });
    env.apply(&issuer(&pebble, &name));
    let root = pebble.root().await;
    served_by_root(&pylon, "app.example.com", &root, Duration::from_secs(40)).await;

    let secret = kubectl_json(
        env,
        &["get", "secret", "app-tls", "-n", &ns, "--show-managed-fields"],
    );
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "pylon"
    );
    assert_eq!(
        secret["metadata"]["annotations"]["cert-manager.io/issuer-name"],
        name
    );
    assert_eq!(
        secret["metadata"]["annotations"]["cert-manager.io/issuer-kind"],
        "ClusterIssuer"
    );
    assert!(secret["data"]["tls.crt"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(secret["data"]["tls.key"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(
        secret["data"].get("pending-tls.key").is_none(),
        "order state cleaned up"
    );
    let managers: Vec<String> = secret["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["manager"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(managers, ["pylon"], "written by server-side apply as pylon");
    let account = kubectl_json(env, &["get", "secret", &format!("{name}-account"), "-n", &ns]);
    assert!(
        account["metadata"]["annotations"]["acme.pylon.dev/account-url"]
            .as_str()
            .is_some()
    );

    // Events: where `kubectl describe ingress` shows them.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = kubectl_json(env, &["get", "events.events.k8s.io", "-n", &ns]);
        let reasons: Vec<&str> = events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["regarding"]["name"] == "app" && e["regarding"]["kind"] == "Ingress")
            .filter_map(|e| e["reason"].as_str())
            .collect();
        if reasons.contains(&"CertificateIssued") && reasons.contains(&"CertificateOrdered") {
            break;
        }
        assert!(Instant::now() < deadline, "events: {reasons:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// cert-manager's CRDs installed while pylon runs: its ClusterIssuers are read from then on,
/// without a restart. (An API server of its own: the shared one has the CRDs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_manager_crds_installed_later_are_found_without_a_restart() {
    let env = KubeEnv::start();
    let ns = env.namespace("late-crds");
    let up = Upstream::start("app");
    apply_in(&env, &ns, &external_service("app", up.addr));
    let name = format!("le-{ns}");
    apply_in(&env, &ns, &annotated("app", "late.example.com", "app-tls", &name));
    let pylon = Pylon::start_with(&[], options(&env, &ns, None, ""));
    let deadline = Instant::now() + Duration::from_secs(20);
    while pylon.admin_get("/readyz").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "not ready\n{}", pylon.stderr());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        pylon.stderr().contains("CRDs are not installed"),
        "{}",
        pylon.stderr()
    );

    env.install_cert_manager_crds();
    let pebble = Pebble::start(PebbleOptions {
        http_port: pylon.http.port(),
        ..Default::default()
    });
    env.apply(&issuer(&pebble, &name));
    let root = pebble.root().await;
    served_by_root(&pylon, "late.example.com", &root, Duration::from_secs(60)).await;
    assert!(
        pylon.stderr().contains("CRDs are installed now"),
        "{}",
        pylon.stderr()
    );
    let secret = kubectl_json(&env, &["get", "secret", "app-tls", "-n", &ns]);
    assert_eq!(
        secret["metadata"]["annotations"]["cert-manager.io/issuer-name"],
        name
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_orderer_per_cluster_and_a_new_leader_finishes_the_order() {
    let env = KubeEnv::shared();
    env.install_cert_manager_crds();
    let ns = env.namespace("lease");
    let up = Upstream::start("app");
    apply_in(env, &ns, &external_service("app", up.addr));
    let mut replicas: Vec<Pylon> = (0..3)
        .map(|i| {
            let mut o = options(env, &ns, None, "");
            o.env.push(("POD_NAME".into(), format!("pylon-{i}")));
            Pylon::start_with(&[], o)
        })
        .collect();
    // Exactly one holds the lease.
    let deadline = Instant::now() + Duration::from_secs(15);
    let leader = loop {
        let leaders: Vec<usize> = (0..3)
            .filter(|i| replicas[*i].metric("pylon_acme_leader") == 1.0)
            .collect();
        if leaders.len() == 1 {
            break leaders[0];
        }
        assert!(Instant::now() < deadline, "leaders: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let witness = (leader + 1) % 3;
    // Pebble validates against a replica that is not the leader.
    let pebble = Pebble::start(PebbleOptions {
        http_port: replicas[witness].http.port(),
        ..Default::default()
    });
    let name = format!("le-{ns}");
    env.apply(&issuer(&pebble, &name));
    apply_in(env, &ns, &annotated("app", "app.example.com", "app-tls", &name));

    // The leader places the order; it is killed at once.
    replicas[leader].eventually(Duration::from_secs(20), "order placed", || {
        replicas[leader].stderr().contains("order placed")
    });
    replicas[leader].kill();
    let root = pebble.root().await;
    let serial = served_by_root(
        &replicas[witness],
        "app.example.com",
        &root,
        Duration::from_secs(60),
    )
    .await;
    let third = 3 - leader - witness;
    assert_eq!(
        served_by_root(
            &replicas[third],
            "app.example.com",
            &root,
            Duration::from_secs(10)
        )
        .await,
        serial
    );

    let logs: Vec<String> = replicas.iter().map(Pylon::stderr).collect();
    let placed = logs
        .iter()
        .map(|l| l.matches("order placed").count())
        .sum::<usize>();
    assert_eq!(
        placed,
        1,
        "one order for the certificate, resumed by the new leader:\n{}",
        logs.join("\n")
    );
    assert!(logs.iter().any(|l| l.contains("resuming the recorded order") || l.contains("completing the recorded order")));
    // Every replica answers challenges with the same account key.
    let token = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA";
    let path = format!("/.well-known/acme-challenge/{token}");
    let answers: Vec<String> = {
        let mut v = Vec::new();
        for i in [witness, third] {
            v.push(
                http_get(replicas[i].http, "app.example.com", &path)
                    .await
                    .unwrap()
                    .text(),
            );
        }
        v
    };
    assert!(answers[0].starts_with(&format!("{token}.")));
    assert_eq!(answers[0], answers[1]);
    replicas.clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_outage_drops_no_request() {
    let mut env = KubeEnv::start();
    let ns = env.namespace("outage");
    let up = Upstream::start("a");
    env.apply(CLASS);
    apply_in(&env, &ns, &external_service("svc", up.addr));
    apply_in(&env, &ns, &app_ingress("app", "app.test", "svc"));
    let pylon = Pylon::start_with(&[], options(&env, &ns, None, ""));
    wait_for(&pylon, "app.test", "a", Duration::from_secs(5)).await;

    let (stop, failures, requests) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let load = {
        let (stop, failures, requests, addr) = (stop.clone(), failures.clone(), requests.clone(), pylon.http);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match http_get(addr, "app.test", "/").await {
                    Ok(r) if r.status == 200 => {}
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                requests.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    env.stop_apiserver();
    tokio::time::sleep(Duration::from_secs(10)).await;
    env.start_apiserver();
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "failed requests while the API server was away"
    );
    assert!(requests.load(Ordering::Relaxed) > 100);
    assert_eq!(pylon.admin_get("/readyz").unwrap().0, 200, "still ready");

    // Changes made after it returns are picked up.
    apply_in(&env, &ns, &app_ingress("later", "later.test", "svc"));
    wait_for(&pylon, "later.test", "a", Duration::from_secs(30)).await;
    assert!(pylon.metric("pylon_kubernetes_watch_errors_total") >= 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deploy_manifests_are_valid_and_their_rbac_is_enough() {
    let env = KubeEnv::shared();
    env.install_cert_manager_crds();
    let deploy = format!("{}/deploy", env!("CARGO_MANIFEST_DIR"));
    // The namespace first: a server-side dry run creates nothing for the objects after it.
    env.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: pylon}\n");
    let (code, out, err) = env.kubectl(&["apply", "--dry-run=server", "-k", &deploy], None);
    assert_eq!(code, 0, "kubectl apply --dry-run=server -k deploy/:\n{out}{err}");
    assert!(
        out.contains("daemonset.apps/pylon") && out.contains("(server dry run)"),
        "{out}"
    );
    let (code, out, err) = env.kubectl(&["apply", "--server-side", "-k", &deploy], None);
    assert_eq!(code, 0, "{out}{err}");

    // pylon with the service account's token: only deploy/'s permissions.
    let (code, token, err) = env.kubectl(
        &["create", "token", "pylon", "-n", "pylon", "--duration=1h"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let ns = env.namespace("rbac");
    let up = Upstream::start("app");
    apply_in(env, &ns, &external_service("app", up.addr));
    let name = format!("self-{ns}");
    env.apply(&format!(
        "apiVersion: cert-manager.io/v1\nkind: ClusterIssuer\nmetadata: {{name: {name}}}\nspec: {{selfSigned: {{}}}}\n"
    ));
    apply_in(env, &ns, &annotated("app", "app.example.com", "app-tls", &name));
    apply_in(
        env,
        &ns,
        &app_ingress("plain", "plain.test", "app")
            .replace("ingressClassName: pylon", "ingressClassName: nginx"),
    );
    let mut o = options(env, &ns, Some(token.trim()), "");
    // Where deploy/ lets pylon keep its Lease and read ClusterIssuers' Secrets.
    o.extra_config = o.extra_config.replace(
        &format!("cluster-resource-namespace = \"{ns}\""),
        "cluster-resource-namespace = \"pylon\"",
    );
    o.env = vec![
        ("POD_NAMESPACE".into(), "pylon".into()),
        ("POD_NAME".into(), "rbac-test".into()),
    ];
    let pylon = Pylon::start_with(&[], o);

    wait_for(&pylon, "plain.test", "app", Duration::from_secs(10)).await;
    let insecure = TlsClient::insecure(&[b"http/1.1"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((_, cert)) = insecure.get(pylon.https, "app.example.com", "/").await
            && cert.dns_names == ["app.example.com"]
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no certificate issued\n{}",
            pylon.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ing = kubectl_json(env, &["get", "ingress", "plain", "-n", &ns]);
        let events = kubectl_json(env, &["get", "events.events.k8s.io", "-n", &ns]);
        let issued = events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["reason"] == "CertificateIssued");
        if ing["status"]["loadBalancer"]["ingress"][0]["ip"] == "127.0.0.1" && issued {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status or events missing\n{}",
            pylon.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lease = kubectl_json(env, &["get", "lease", "pylon-acme", "-n", "pylon"]);
    assert_eq!(lease["spec"]["holderIdentity"], "rbac-test");
    // The session-ticket Secret is created in pylon's namespace and read back.
    pylon.eventually(Duration::from_secs(15), "shared ticket keys", || {
        pylon.metric("pylon_tls_session_ticket_shared_keys") == 1.0
    });
    let log = pylon.stderr();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "a verb deploy/ does not grant:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_objects_become_events_and_the_rest_serves() {
    let env = KubeEnv::shared();
    let ns = env.namespace("bad");
    let up = Upstream::start("app");
    env.apply(CLASS);
    apply_in(env, &ns, &external_service("app", up.addr));
    apply_in(env, &ns, &app_ingress("good", "good.test", "app"));
    apply_in(env, &ns, &app_ingress("missing", "missing.test", "nowhere"));
    apply_in(
        env,
        &ns,
        &IngressYaml {
            name: "regex",
            annotations: &[
                ("nginx.ingress.kubernetes.io/use-regex", "true"),
                ("nginx.ingress.kubernetes.io/proxy-body-size", "lots"),
            ],
            rules: &[("regex.test", "/api/(v1|v2)", "ImplementationSpecific", "app")],
            ..Default::default()
        }
        .render(),
    );
    apply_in(
        env,
        &ns,
        &format!(
            "{}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: broken-tls}}\ntype: kubernetes.io/tls\nstringData: {{tls.crt: not a certificate, tls.key: not a key}}\n",
            IngressYaml {
                name: "tls",
                tls: &[(&["tls.test"], "broken-tls")],
                rules: &[("tls.test", "/", "Prefix", "app")],
                ..Default::default()
            }
            .render()
        ),
    );
    let pylon = Pylon::start_with(&[], options(env, &ns, None, ""));
    wait_for(&pylon, "good.test", "app", Duration::from_secs(10)).await;
    assert_eq!(upstream_of(&pylon, "missing.test").await, "503");
    assert_eq!(
        upstream_of(&pylon, "regex.test").await,
        "404",
        "a rejected Ingress is not served"
    );

    let want = [
        ("Ingress", "missing", "ServiceMissing"),
        ("Ingress", "regex", "InvalidIngress"),
        ("Ingress", "regex", "IgnoredSetting"),
        ("Secret", "broken-tls", "BadCertificate"),
    ];
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let events = kubectl_json(env, &["get", "events.events.k8s.io", "-n", &ns]);
        let seen: Vec<(String, String, String)> = events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
                (
                    s(&e["regarding"]["kind"]),
                    s(&e["regarding"]["name"]),
                    s(&e["reason"]),
                )
            })
            .collect();
        let missing: Vec<_> = want
            .iter()
            .filter(|(k, n, r)| !seen.iter().any(|(sk, sn, sr)| sk == k && sn == n && sr == r))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "events missing: {missing:?}; seen {seen:?}\n{}",
            pylon.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(upstream_of(&pylon, "good.test").await, "app");
}

/// One GET on a new TLS connection to `addr` with `client` (reading the TLS 1.3 tickets that
/// follow the handshake); returns how the handshake went.
async fn resumed_on(client: &TlsClient, addr: std::net::SocketAddr) -> Option<rustls::HandshakeKind> {
    let (kind, resp) = client.get_on_new_connection(addr, "secure.test").await.unwrap();
    assert_eq!(resp.status, 200);
    kind
}

/// Waits until `secure.test` is served over HTTPS with a certificate from `ca`.
async fn wait_for_https(pylon: &Pylon, ca: &TestCa) {
    let client = TlsClient::trusting(&ca.pem, &[b"http/1.1"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.get(pylon.https, "secure.test", "/").await {
            Ok((r, _)) if r.status == 200 => return,
            other => assert!(
                Instant::now() < deadline,
                "secure.test: {:?}\n{}",
                other.map(|(r, _)| r.status),
                pylon.stderr()
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The session-ticket Secret's key entries, oldest first.
fn ticket_keys(env: &KubeEnv, ns: &str) -> Vec<String> {
    let (code, out, _) = env.kubectl(
        &["get", "secret", "pylon-session-tickets", "-n", ns, "-o", "json"],
        None,
    );
    if code != 0 {
        return Vec::new();
    }
    let secret: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let mut keys: Vec<String> = secret["data"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, _)| k.clone())
        .collect();
    keys.sort();
    keys
}

/// Replicas share their session-ticket keys through a Secret that the lease holder creates and
/// rotates: a client resumes its TLS session on another replica, before and after rotations,
/// and keys whose tickets have expired are removed. A Secret of that name that pylon did not
/// create is reported and left untouched, and each replica keeps its own keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sessions_resume_on_any_replica() {
    use tokio_rustls::rustls::HandshakeKind::{Full, Resumed};

    let env = KubeEnv::shared();
    let up = Upstream::start("app");
    let ca = TestCa::new();
    let leaf = ca.issue(&["secure.test"]);
    env.apply(CLASS);
    let app = format!(
        "{}{}{}",
        external_service("app", up.addr),
        IngressYaml {
            tls: &[(&["secure.test"], "secure")],
            rules: &[("secure.test", "/", "Prefix", "app")],
            ..Default::default()
        }
        .render(),
        tls_secret("secure", &leaf)
    );
    let ns = env.namespace("tickets");
    apply_in(env, &ns, &app);
    // Keys are replaced every 2 s: a key encrypts after 0.5 s and is kept for 7 s.
    let replicas: Vec<Pylon> = (0..2)
        .map(|i| {
            let mut o = options(env, &ns, None, "[tls]\nsession-ticket-rotation = \"2s\"\n");
            o.env.push(("POD_NAME".into(), format!("pylon-{i}")));
            Pylon::start_with(&[], o)
        })
        .collect();
    for pylon in &replicas {
        pylon.eventually(Duration::from_secs(15), "shared keys loaded", || {
            pylon.metric("pylon_tls_session_ticket_shared_keys") >= 1.0
        });
        wait_for_https(pylon, &ca).await;
    }
    let (a, b) = (replicas[0].https, replicas[1].https);
    let first = ticket_keys(env, &ns);
    assert!(!first.is_empty());

    // A session made on one replica resumes on the other, both ways, while keys rotate.
    let mut rotations_seen = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while ticket_keys(env, &ns).contains(&first[0]) {
        for (from, to) in [(a, b), (b, a)] {
            let client = TlsClient::trusting(&ca.pem, &[b"http/1.1"]).resuming();
            assert_eq!(resumed_on(&client, from).await, Some(Full));
            assert_eq!(
                resumed_on(&client, to).await,
                Some(Resumed),
                "a session from {from} resumes on {to}; keys {:?}",
                ticket_keys(env, &ns)
            );
        }
        rotations_seen = rotations_seen.max(ticket_keys(env, &ns).len());
        assert!(
            Instant::now() < deadline,
            "the first key is never removed: {:?}",
            ticket_keys(env, &ns)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        rotations_seen >= 3,
        "keys rotated: at most {rotations_seen} at once"
    );
    assert!(ticket_keys(env, &ns).len() <= 6, "{:?}", ticket_keys(env, &ns));
    let secret = kubectl_json(env, &["get", "secret", "pylon-session-tickets", "-n", &ns]);
    assert_eq!(secret["type"], "pylon.dev/session-ticket-keys");
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "pylon"
    );
    let accepted: f64 = replicas
        .iter()
        .map(|p| p.metric("pylon_tls_session_tickets_accepted_total"))
        .sum();
    assert!(accepted >= 4.0, "{accepted}");
    drop(replicas);

    // Another owner's Secret of that name: reported, untouched; the replica's own keys serve.
    let ns = env.namespace("tickets-foreign");
    apply_in(env, &ns, &app);
    apply_in(
        env,
        &ns,
        "apiVersion: v1\nkind: Secret\nmetadata: {name: pylon-session-tickets}\nstringData: {owner: someone else}\n",
    );
    let before = kubectl_json(env, &["get", "secret", "pylon-session-tickets", "-n", &ns]);
    let pylon = Pylon::start_with(
        &[],
        options(env, &ns, None, "[tls]\nsession-ticket-rotation = \"2s\"\n"),
    );
    wait_for_https(&pylon, &ca).await;
    pylon.eventually(Duration::from_secs(15), "the foreign Secret reported", || {
        pylon.metric("pylon_config_rejections_total{kind=\"Secret\",reason=\"BadSessionTicketKeys\"}") == 1.0
    });
    assert!(
        pylon.stderr().contains("not created by pylon"),
        "{}",
        pylon.stderr()
    );
    let client = TlsClient::trusting(&ca.pem, &[b"http/1.1"]).resuming();
    assert_eq!(resumed_on(&client, pylon.https).await, Some(Full));
    assert_eq!(resumed_on(&client, pylon.https).await, Some(Resumed));
    assert_eq!(pylon.metric("pylon_tls_session_ticket_shared_keys"), 0.0);
    // Several rotation periods later, and with the lease held, it is still untouched.
    pylon.eventually(Duration::from_secs(15), "the lease held", || {
        pylon.metric("pylon_acme_leader") == 1.0
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = kubectl_json(env, &["get", "secret", "pylon-session-tickets", "-n", &ns]);
    assert_eq!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
    assert_eq!(after["data"], before["data"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let events = kubectl_json(env, &["get", "events.events.k8s.io", "-n", &ns]);
        let reported = events["items"].as_array().into_iter().flatten().any(|e| {
            e["regarding"]["name"] == "pylon-session-tickets" && e["reason"] == "BadSessionTicketKeys"
        });
        if reported {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no Event on the Secret\n{}",
            pylon.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
