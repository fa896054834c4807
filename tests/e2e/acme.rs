//! Certificates from a real ACME server (Pebble): the cert-manager user's story, several
//! certificates, renewal, several pylon processes, outages and bad input.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::client::{PeerCert, TlsClient, http_get};
use crate::support::pebble::{EAB_KEY, EAB_KID, Pebble, PebbleOptions};
use crate::support::pylon::{Options, Pylon};
use crate::support::upstream::Upstream;
use crate::support::{IngressYaml, service};

const H1: &[&[u8]] = &[b"http/1.1"];

fn options() -> Options {
    Options {
        extra_config:
            "[ingress]\nclasses = [\"nginx\"]\n[acme]\nretry-backoff = \"1s\"\nretry-backoff-max = \"2s\"\n"
                .into(),
        ..Default::default()
    }
}

/// The user's Ingress from ingress-nginx days: class nginx, annotated for a ClusterIssuer.
fn ingress(name: &str, host: &str, secret: &str, issuer: &str) -> String {
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

/// Waits until `host` is served with a certificate that chains to `root`.
async fn certificate(pylon: &Pylon, host: &str, root: &str, timeout: Duration) -> PeerCert {
    let client = TlsClient::trusting(root, H1);
    let deadline = Instant::now() + timeout;
    loop {
        match client.get(pylon.https, host, "/").await {
            Ok((resp, cert)) => {
                assert_eq!(resp.status, 200, "{}", resp.text());
                return cert;
            }
            Err(e) if Instant::now() > deadline => {
                panic!(
                    "{host} has no certificate from the ACME server after {timeout:?}: {e}\n{}",
                    pylon.stderr()
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn annotation(secret: &serde_yaml_ng::Value, key: &str) -> String {
    secret["metadata"]["annotations"][key]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cert_manager_users_story() {
    let up = Upstream::start("app");
    let pylon = Pylon::start_with(
        &[(
            "app.yaml",
            &format!(
                "{}{}",
                service("app", &[up.addr]),
                ingress("app", "app.example.com", "app-tls", "letsencrypt")
            ),
        )],
        options(),
    );
    let pebble = Pebble::start(PebbleOptions {
        http_port: pylon.http.port(),
        ..Default::default()
    });
    let started = Instant::now();
    pylon.write_manifest(
        "issuer.yaml",
        &pebble.cluster_issuer("letsencrypt", "letsencrypt-account", ""),
    );
    let root = pebble.root().await;
    let cert = certificate(&pylon, "app.example.com", &root, Duration::from_secs(30)).await;
    eprintln!(
        "issued and served {:?} after the issuer appeared",
        started.elapsed()
    );
    assert_eq!(cert.dns_names, ["app.example.com"]);

    // Stored like cert-manager stores it, so a user can switch back.
    let secret = pylon
        .stored_secret("default", "app-tls")
        .expect("Secret app-tls written");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "pylon"
    );
    assert_eq!(annotation(&secret, "cert-manager.io/issuer-name"), "letsencrypt");
    assert_eq!(
        annotation(&secret, "cert-manager.io/issuer-kind"),
        "ClusterIssuer"
    );
    assert_eq!(
        annotation(&secret, "cert-manager.io/alt-names"),
        "app.example.com"
    );
    assert!(!annotation(&secret, "acme.pylon.dev/not-after").is_empty());
    use base64::Engine;
    let decode = |k: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(secret["data"][k].as_str().unwrap_or_default())
            .unwrap()
    };
    let chain = String::from_utf8(decode("tls.crt")).unwrap();
    assert_eq!(
        chain.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf and intermediate"
    );
    assert!(
        String::from_utf8(decode("tls.key"))
            .unwrap()
            .contains("PRIVATE KEY")
    );
    // The account lives in the Secret named by privateKeySecretRef, in pylon's namespace.
    let account = pylon
        .stored_secret("pylon", "letsencrypt-account")
        .expect("account Secret");
    assert!(annotation(&account, "acme.pylon.dev/account-url").starts_with("https://"));

    assert_eq!(
        pylon.metric(r#"pylon_acme_orders_total{issuer="ClusterIssuer letsencrypt",result="issued"}"#),
        1.0
    );
    assert!(
        pylon.metric(r#"pylon_acme_challenges_total{result="answered"}"#) >= 3.0,
        "Pebble validates three times"
    );
    let log = pylon.stderr();
    let took = log
        .lines()
        .find(|l| l.contains("certificate issued and stored"))
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v["took_ms"].as_u64());
    eprintln!("issuance took {took:?} ms (account registration, order, validation, finalize)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_certificate_per_tls_entry_and_none_without_tls() {
    let up = Upstream::start("app");
    let mut yaml = service("app", &[up.addr]);
    yaml += &ingress("one", "one.example.com", "one-tls", "le");
    yaml += &ingress("two", "two.example.com", "two-tls", "le");
    yaml += &IngressYaml {
        name: "plain",
        class: Some("nginx"),
        annotations: &[("cert-manager.io/cluster-issuer", "le")],
        rules: &[("plain.example.com", "/", "Prefix", "app")],
        ..Default::default()
    }
    .render();
    let pylon = Pylon::start_with(&[("app.yaml", &yaml)], options());
    let pebble = Pebble::start(PebbleOptions {
        http_port: pylon.http.port(),
        ..Default::default()
    });
    pylon.write_manifest("issuer.yaml", &pebble.cluster_issuer("le", "le-account", ""));
    let root = pebble.root().await;
    let one = certificate(&pylon, "one.example.com", &root, Duration::from_secs(30)).await;
    let two = certificate(&pylon, "two.example.com", &root, Duration::from_secs(30)).await;
    assert_eq!(one.dns_names, ["one.example.com"]);
    assert_eq!(two.dns_names, ["two.example.com"]);
    assert_ne!(one.serial, two.serial);
    let mut stored: Vec<String> = std::fs::read_dir(pylon.state_dir().join("secrets/default"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    stored.sort();
    assert_eq!(
        stored,
        ["one-tls.yaml", "two-tls.yaml"],
        "nothing for the Ingress without TLS"
    );
    // The host without TLS is served over plain HTTP, and pylon answers no challenge for it.
    let resp = http_get(
        pylon.http,
        "plain.example.com",
        "/.well-known/acme-challenge/abcdefghijklmnopqrstuvwxyz",
    )
    .await
    .unwrap();
    assert_eq!(resp.json()["upstream"], "app", "routed, not answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificates_are_renewed_without_a_failed_request() {
    let up = Upstream::start("app");
    let pylon = Pylon::start_with(
        &[(
            "app.yaml",
            &format!(
                "{}{}",
                service("app", &[up.addr]),
                ingress("app", "app.example.com", "app-tls", "le")
            ),
        )],
        options(),
    );
    // 40 s certificates: renewed when half the lifetime is left.
    let pebble = Pebble::start(PebbleOptions {
        http_port: pylon.http.port(),
        validity_secs: Some(40),
        ..Default::default()
    });
    pylon.write_manifest("issuer.yaml", &pebble.cluster_issuer("le", "le-account", ""));
    let root = pebble.root().await;
    let first = certificate(&pylon, "app.example.com", &root, Duration::from_secs(30)).await;

    let client = TlsClient::trusting(&root, H1);
    let (failures, requests, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let (tx, mut serials) = tokio::sync::mpsc::unbounded_channel();
    let load = {
        let (client, failures, requests, stop, addr) = (
            client.clone(),
            failures.clone(),
            requests.clone(),
            stop.clone(),
            pylon.https,
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.get(addr, "app.example.com", "/").await {
                    Ok((resp, cert)) if resp.status == 200 => {
                        let _ = tx.send(cert.serial);
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                requests.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut renewed = None;
    while renewed.is_none() && Instant::now() < deadline {
        if let Ok(Some(serial)) = tokio::time::timeout(Duration::from_secs(1), serials.recv()).await
            && serial != first.serial
        {
            renewed = Some(serial);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(renewed.is_some(), "no renewal seen\n{}", pylon.stderr());
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "failed requests across the renewal"
    );
    assert!(requests.load(Ordering::Relaxed) > 20);
    assert!(pylon.metric(r#"pylon_acme_orders_total{issuer="ClusterIssuer le",result="issued"}"#) >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_orders_and_every_process_answers_challenges() {
    let up = Upstream::start("app");
    let orderer = Pylon::start_with(
        &[(
            "app.yaml",
            &format!(
                "{}{}",
                service("app", &[up.addr]),
                ingress("app", "app.example.com", "app-tls", "le")
            ),
        )],
        options(),
    );
    orderer.eventually(Duration::from_secs(5), "the first process takes the lock", || {
        orderer.stderr().contains("this process orders certificates")
    });
    let other = orderer.start_beside(options());
    // Pebble validates against the second process only: the certificate can only be issued if
    // a process that did not place the order answers the challenges.
    let pebble = Pebble::start(PebbleOptions {
        http_port: other.http.port(),
        ..Default::default()
    });
    orderer.write_manifest("issuer.yaml", &pebble.cluster_issuer("le", "le-account", ""));
    let root = pebble.root().await;
    let via_orderer = certificate(&orderer, "app.example.com", &root, Duration::from_secs(30)).await;
    let via_other = certificate(&other, "app.example.com", &root, Duration::from_secs(10)).await;
    assert_eq!(
        via_orderer.serial, via_other.serial,
        "both serve the one certificate"
    );
    assert!(
        !other.stderr().contains("this process orders certificates"),
        "the second process waits"
    );
    assert!(!other.stderr().contains("issuing a certificate"));
    assert!(other.metric(r#"pylon_acme_challenges_total{result="answered"}"#) >= 3.0);
    assert_eq!(
        orderer.metric(r#"pylon_acme_challenges_total{result="answered"}"#),
        0.0
    );
    assert_eq!(orderer.metric("pylon_acme_leader"), 1.0);
    assert_eq!(other.metric("pylon_acme_leader"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acme_outage_is_retried_and_a_restart_orders_nothing_twice() {
    let up = Upstream::start("app");
    let mut pylon = Pylon::start_with(
        &[(
            "one.yaml",
            &format!(
                "{}{}",
                service("app", &[up.addr]),
                ingress("one", "one.example.com", "one-tls", "le")
            ),
        )],
        options(),
    );
    let mut pebble = Pebble::start(PebbleOptions {
        http_port: pylon.http.port(),
        ..Default::default()
    });
    pylon.write_manifest("issuer.yaml", &pebble.cluster_issuer("le", "le-account", ""));
    let first_root = pebble.root().await;
    let one = certificate(&pylon, "one.example.com", &first_root, Duration::from_secs(30)).await;

    // The CA goes away; a new certificate is wanted meanwhile.
    pebble.stop();
    pylon.write_manifest("two.yaml", &ingress("two", "two.example.com", "two-tls", "le"));
    pylon.eventually(Duration::from_secs(10), "failures recorded on the Secret", || {
        pylon.stored_secret("default", "two-tls").is_some_and(|s| {
            annotation(&s, "acme.pylon.dev/failures")
                .parse::<u32>()
                .unwrap_or(0)
                >= 2
        })
    });
    let two = pylon.stored_secret("default", "two-tls").unwrap();
    assert!(!annotation(&two, "acme.pylon.dev/retry-after").is_empty());
    assert!(!annotation(&two, "acme.pylon.dev/last-error").is_empty());
    // Existing certificates keep serving.
    assert_eq!(
        certificate(&pylon, "one.example.com", &first_root, Duration::from_secs(2))
            .await
            .serial,
        one.serial
    );

    // A crash and a restart: nothing valid is ordered again.
    pylon.restart(options());
    let restarted = pylon;
    assert_eq!(
        certificate(&restarted, "one.example.com", &first_root, Duration::from_secs(5))
            .await
            .serial,
        one.serial
    );

    // The CA comes back (new root, no accounts): pylon registers again and issues.
    pebble.restart();
    let second_root = pebble.root().await;
    let two = certificate(
        &restarted,
        "two.example.com",
        &second_root,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(two.dns_names, ["two.example.com"]);
    let log = restarted.stderr();
    assert!(
        !log.lines()
            .any(|l| l.contains("issuing a certificate") && l.contains("default/one-tls")),
        "one-tls ordered again:\n{log}"
    );
    assert_eq!(
        certificate(&restarted, "one.example.com", &first_root, Duration::from_secs(2))
            .await
            .serial,
        one.serial
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_issuers_and_tokens_are_reported_and_everything_else_serves() {
    let up = Upstream::start("app");
    let mut yaml = service("app", &[up.addr]);
    yaml += &IngressYaml {
        name: "plain",
        class: Some("nginx"),
        rules: &[("plain.example.com", "/", "Prefix", "app")],
        ..Default::default()
    }
    .render();
    for (name, issuer) in [
        ("unreachable", "unreachable"),
        ("no-key", "no-key"),
        ("unknown", "does-not-exist"),
        ("dns", "dns-only"),
        ("good", "le"),
    ] {
        yaml += &ingress(
            name,
            &format!("{name}.example.com"),
            &format!("{name}-tls"),
            issuer,
        );
    }
    let pylon = Pylon::start_with(&[("app.yaml", &yaml)], options());
    let pebble = Pebble::start(PebbleOptions {
        http_port: pylon.http.port(),
        ..Default::default()
    });
    let issuers = format!(
        "{}{}---\napiVersion: cert-manager.io/v1\nkind: ClusterIssuer\nmetadata: {{name: no-key}}\nspec:\n  acme:\n    server: {}\n    solvers: [{{http01: {{}}}}]\n---\napiVersion: cert-manager.io/v1\nkind: ClusterIssuer\nmetadata: {{name: dns-only}}\nspec:\n  acme:\n    server: {}\n    privateKeySecretRef: {{name: dns-account}}\n    solvers: [{{dns01: {{cloudflare: {{}}}}}}]\n",
        pebble.cluster_issuer("le", "le-account", ""),
        pebble
            .cluster_issuer("unreachable", "unreachable-account", "")
            .replace(&pebble.directory(), "https://127.0.0.1:1/dir"),
        pebble.directory(),
        pebble.directory(),
    );
    pylon.write_manifest("issuers.yaml", &issuers);
    let root = pebble.root().await;
    certificate(&pylon, "good.example.com", &root, Duration::from_secs(30)).await;

    pylon.eventually(Duration::from_secs(15), "every problem reported", || {
        let log = pylon.stderr();
        log.contains("privateKeySecretRef.name is required")
            && log.contains("ClusterIssuer does-not-exist not found")
            && log.contains("no http01 solver")
            && log.contains("\"reason\":\"unreachable\"")
    });
    assert!(
        pylon.metric(r#"pylon_acme_failures_total{issuer="ClusterIssuer unreachable",reason="unreachable"}"#)
            >= 1.0
    );
    assert!(pylon.stored_secret("default", "no-key-tls").is_none());
    assert!(pylon.stored_secret("default", "dns-tls").is_none());

    // Challenge requests: valid tokens for managed hosts are answered, anything else is not.
    let token = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA";
    let resp = http_get(
        pylon.http,
        "good.example.com:5002",
        &format!("/.well-known/acme-challenge/{token}"),
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.text().starts_with(&format!("{token}.")), "{}", resp.text());
    assert_eq!(
        resp.text().len(),
        token.len() + 1 + 43,
        "token.thumbprint, no trailing newline"
    );
    let resp = http_get(
        pylon.http,
        "good.example.com",
        "/.well-known/acme-challenge/not!a+token",
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 404);

    // Everything else keeps serving.
    let resp = http_get(pylon.http, "plain.example.com", "/").await.unwrap();
    assert_eq!(resp.json()["upstream"], "app");
    assert_eq!(pylon.admin_get("/readyz").unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_register_with_external_account_binding() {
    let up = Upstream::start("app");
    let pylon = Pylon::start_with(
        &[(
            "app.yaml",
            &format!(
                "{}{}",
                service("app", &[up.addr]),
                ingress("app", "app.example.com", "app-tls", "eab")
            ),
        )],
        options(),
    );
    let pebble = Pebble::start(PebbleOptions {
        http_port: pylon.http.port(),
        require_eab: true,
        ..Default::default()
    });
    // cert-manager's format: the Secret holds the base64url MAC key.
    let secret = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: eab-key, namespace: pylon}}\nstringData: {{secret: {EAB_KEY}}}\n"
    );
    let binding = format!(
        "    externalAccountBinding:\n      keyID: {EAB_KID}\n      keySecretRef: {{name: eab-key, key: secret}}\n"
    );
    // Without the binding the server refuses the account.
    pylon.write_manifest("issuer.yaml", &pebble.cluster_issuer("eab", "eab-account", ""));
    pylon.eventually(Duration::from_secs(15), "the server requires a binding", || {
        pylon.stderr().contains("external_account_required")
    });
    pylon.write_manifest(
        "issuer.yaml",
        &format!(
            "{secret}{}",
            pebble
                .cluster_issuer("eab", "eab-account", "")
                .replace("    solvers:", &format!("{binding}    solvers:"))
        ),
    );
    let root = pebble.root().await;
    let cert = certificate(&pylon, "app.example.com", &root, Duration::from_secs(30)).await;
    assert_eq!(cert.dns_names, ["app.example.com"]);
}

/// A certificate lifetime X.509 cannot write (`cert-manager.io/duration` past the year 9999) is
/// reported on its Ingress; the other certificates are issued, and later changes still apply.
/// (It used to end the task that applies changes and orders certificates.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impossible_certificate_lifetime_is_refused_and_the_rest_goes_on() {
    let up = Upstream::start("app");
    let issuer = "---\napiVersion: cert-manager.io/v1\nkind: ClusterIssuer\nmetadata: {name: local}\nspec: {selfSigned: {}}\n";
    let annotated = |name: &'static str, duration: &'static str| {
        let host = format!("{name}.example.com");
        IngressYaml {
            name,
            class: Some("nginx"),
            annotations: &[
                ("cert-manager.io/cluster-issuer", "local"),
                ("cert-manager.io/duration", duration),
            ],
            tls: &[(&[host.as_str()], &format!("{name}-tls"))],
            rules: &[(host.as_str(), "/", "Prefix", "app")],
            ..Default::default()
        }
        .render()
    };
    let yaml = service("app", &[up.addr])
        + issuer
        + &annotated("forever", "1000000000h")
        + &annotated("fine", "2160h");
    let pylon = Pylon::start_with(&[("app.yaml", &yaml)], options());
    let client = TlsClient::insecure(H1);
    let issued = |host: &'static str| {
        let client = &client;
        let pylon = &pylon;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match client.get(pylon.https, host, "/").await {
                    Ok((resp, cert)) if cert.dns_names == [host] => {
                        assert_eq!(resp.status, 200, "{}", resp.text());
                        return;
                    }
                    _ if Instant::now() > deadline => {
                        panic!("no certificate for {host}:\n{}", pylon.stderr())
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
    };
    issued("fine.example.com").await;
    pylon.eventually(Duration::from_secs(10), "the lifetime reported", || {
        pylon
            .stderr()
            .contains(r#"cert-manager.io/duration: \"1000000000h\" is longer than 100 years"#)
    });

    // Both loops are still running: a new Ingress is served and gets its certificate.
    pylon.write_manifest("later.yaml", &annotated("later", "720h"));
    issued("later.example.com").await;
    assert!(!pylon.stderr().contains("panicked"), "{}", pylon.stderr());
}
