//! HTTPS: the certificate chosen by SNI (exact, wildcard, default), routing by Host rather than
//! SNI, and certificates replaced on disk while requests keep flowing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::client::TlsClient;
use crate::support::pylon::Pylon;
use crate::support::upstream::Upstream;
use crate::support::{CLASS, IngressYaml, TestCa, service, tls_secret};

const H2_H1: &[&[u8]] = &[b"h2", b"http/1.1"];

/// `secure.test` → `up`, with TLS from the Secret `secure` (written separately).
fn secure_app(up: &Upstream) -> String {
    format!(
        "{CLASS}{}{}",
        service("up", &[up.addr]),
        IngressYaml {
            tls: &[(&["secure.test"], "secure")],
            rules: &[("secure.test", "/", "Prefix", "up")],
            ..Default::default()
        }
        .render()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_per_sni_exact_wildcard_and_default() {
    let up = Upstream::start("up");
    let other = Upstream::start("other");
    let ca = TestCa::new();
    let exact = ca.issue(&["secure.test"]);
    let wild = ca.issue(&["*.wild.test"]);
    let mut yaml = format!(
        "{CLASS}{}{}{}{}",
        service("up", &[up.addr]),
        service("other", &[other.addr]),
        tls_secret("exact", &exact),
        tls_secret("wild", &wild)
    );
    yaml += &IngressYaml {
        tls: &[(&["secure.test"], "exact"), (&["*.wild.test"], "wild")],
        rules: &[
            ("secure.test", "/", "Prefix", "up"),
            ("*.wild.test", "/", "Prefix", "up"),
            ("other.test", "/", "Prefix", "other"),
        ],
        ..Default::default()
    }
    .render();
    let pylon = Pylon::start(&[("all.yaml", &yaml)]);
    let client = TlsClient::trusting(&ca.pem, H2_H1);

    let (resp, cert) = client
        .get(pylon.https, "secure.test", "/")
        .await
        .expect("verified handshake");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.version, http::Version::HTTP_2, "h2 by ALPN");
    assert_eq!(cert.serial, exact.serial);
    assert_eq!(resp.json()["headers"]["x-forwarded-proto"], "https");
    assert_eq!(resp.json()["version"], "HTTP/1.1", "HTTP/1.1 upstream");

    let (resp, cert) = client
        .get(pylon.https, "x.wild.test", "/")
        .await
        .expect("verified handshake");
    assert_eq!(resp.status, 200);
    assert_eq!(cert.serial, wild.serial);

    // Unknown names, names two labels below a wildcard, and no SNI at all get the default
    // certificate, which a client trusting only the test CA refuses.
    for sni in ["unknown.test", "a.b.wild.test"] {
        assert!(
            client.get(pylon.https, sni, "/").await.is_err(),
            "{sni} must not verify"
        );
    }
    let insecure = TlsClient::insecure(&[b"http/1.1"]);
    for sni in ["unknown.test", "127.0.0.1"] {
        let (_, cert) = insecure.connect(pylon.https, sni).await.expect("handshake");
        assert_eq!(cert.dns_names, ["pylon-default.invalid"], "{sni}");
    }

    // Routing follows Host (or :authority), not SNI: one connection, another host.
    let (resp, cert) = client
        .request(
            pylon.https,
            "secure.test",
            crate::support::client::get("other.test", "/"),
        )
        .await
        .unwrap();
    assert_eq!(cert.serial, exact.serial);
    assert_eq!(resp.json()["upstream"], "other");

    let metrics = pylon.metrics();
    assert!(
        metrics.contains("pylon_tls_client_hellos_total{certificate=\"wildcard\"}"),
        "{metrics}"
    );
    assert!(
        pylon.metric("pylon_tls_handshake_failures_total") >= 1.0,
        "refused handshakes are counted"
    );
    assert!(
        metrics.contains(
            "pylon_certificate_not_after_timestamp_seconds{namespace=\"default\",secret=\"exact\"}"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_certificate_is_served_without_a_failed_request() {
    let up = Upstream::start("up");
    let ca = TestCa::new();
    let first = ca.issue(&["secure.test"]);
    let second = ca.issue(&["secure.test"]);
    let base = secure_app(&up);
    let pylon = Pylon::start(&[
        ("app.yaml", &base),
        ("secret.yaml", &tls_secret("secure", &first)),
    ]);
    let client = TlsClient::trusting(&ca.pem, H2_H1);

    // A client makes requests back to back, each on a new connection (a new handshake).
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, mut serials) = tokio::sync::mpsc::unbounded_channel();
    let load = {
        let (client, failures, done, stop, addr) = (
            client.clone(),
            failures.clone(),
            done.clone(),
            stop.clone(),
            pylon.https,
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.get(addr, "secure.test", "/").await {
                    Ok((resp, cert)) if resp.status == 200 => {
                        let _ = tx.send((Instant::now(), cert.serial));
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let replaced_at = Instant::now();
    pylon.write_manifest("secret.yaml", &tls_secret("secure", &second));

    let mut new_seen_at = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), serials.recv()).await {
            Ok(Some((at, serial))) if serial == second.serial => {
                new_seen_at = Some(at);
                break;
            }
            Ok(Some((_, serial))) => assert_eq!(serial, first.serial),
            _ => {}
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();

    let seen = new_seen_at.expect("the new certificate was never served");
    let delay = seen.duration_since(replaced_at);
    assert!(
        delay < Duration::from_secs(2),
        "new certificate served after {delay:?}"
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "failed requests during the swap"
    );
    assert!(done.load(Ordering::Relaxed) > 10, "the client kept going");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_secret_leaves_the_previous_certificate_in_service() {
    let up = Upstream::start("up");
    let ca = TestCa::new();
    let good = ca.issue(&["secure.test"]);
    let other_key = ca.issue(&["secure.test"]);
    let app = secure_app(&up);
    let pylon = Pylon::start(&[("app.yaml", &app), ("secret.yaml", &tls_secret("secure", &good))]);
    let client = TlsClient::trusting(&ca.pem, H2_H1);

    // The new Secret's key belongs to another certificate.
    let mismatched = crate::support::Leaf {
        key: other_key.key.clone(),
        ..good.clone()
    };
    pylon.write_manifest("secret.yaml", &tls_secret("secure", &mismatched));
    pylon.eventually(Duration::from_secs(5), "key mismatch reported", || {
        pylon.stderr().contains("does not match the certificate")
    });
    let (resp, cert) = client.get(pylon.https, "secure.test", "/").await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(cert.serial, good.serial, "the previous certificate stays");
    assert!(pylon.metric("pylon_config_rejections_total{kind=\"Secret\",reason=\"key_mismatch\"}") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_default_certificate_replaces_the_self_signed_one() {
    let ca = TestCa::new();
    let fallback = ca.issue(&["fallback.test"]);
    let pylon = Pylon::start_with(
        &[("secret.yaml", &tls_secret("fallback", &fallback))],
        crate::support::pylon::Options {
            extra_config: "[ingress]\ndefault-certificate = \"default/fallback\"\n".into(),
            ..Default::default()
        },
    );
    let insecure = TlsClient::insecure(&[b"http/1.1"]);
    let (_, cert) = insecure.connect(pylon.https, "anything.test").await.unwrap();
    assert_eq!(cert.serial, fallback.serial);
    let resp = TlsClient::trusting(&ca.pem, H2_H1)
        .get(pylon.https, "fallback.test", "/")
        .await
        .expect("verified with the default certificate")
        .0;
    assert_eq!(resp.status, 404, "no route, but TLS works");
}

/// A client resumes its TLS session on a later connection even after hundreds of other
/// connections (pylon issues session tickets; rustls's default cache keeps only 256 sessions),
/// on TLS 1.3 and TLS 1.2, and the resumed connection serves requests. With
/// `tls.session-resumption = false` every connection makes a full handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_after_hundreds_of_other_connections() {
    use tokio_rustls::rustls::{HandshakeKind, version};

    /// One GET on a new connection (reading the TLS 1.3 tickets that follow the handshake);
    /// returns how the handshake went.
    async fn get_on_new_connection(client: &TlsClient, addr: std::net::SocketAddr) -> Option<HandshakeKind> {
        let (kind, resp) = client.get_on_new_connection(addr, "secure.test").await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-upstream"), Some("up"));
        kind
    }

    let up = Upstream::start("up");
    let ca = TestCa::new();
    let leaf = ca.issue(&["secure.test"]);
    let app = secure_app(&up);
    let manifests = [
        ("app.yaml", app.as_str()),
        ("secret.yaml", &tls_secret("secure", &leaf)),
    ];
    let versions = [("TLS 1.3", &[&version::TLS13]), ("TLS 1.2", &[&version::TLS12])];
    let pylon = Pylon::start(&manifests);

    for (name, versions) in versions {
        let client = TlsClient::trusting_versions(&ca.pem, H2_H1, versions).resuming();
        let first = get_on_new_connection(&client, pylon.https).await;
        assert_eq!(first, Some(HandshakeKind::Full), "{name}");

        // Other clients' full handshakes: 300 sessions (600 TLS 1.3 tickets) would push the
        // first client's session out of a 256-entry cache. pylon reads each client's Finished
        // (and makes its tickets) before it sees the connection close.
        let others = TlsClient::trusting_versions(&ca.pem, H2_H1, versions);
        for _ in 0..300 {
            let (tls, _) = others.connect(pylon.https, "secure.test").await.unwrap();
            assert_eq!(
                tls.get_ref().1.handshake_kind(),
                Some(HandshakeKind::Full),
                "{name}"
            );
        }

        let again = get_on_new_connection(&client, pylon.https).await;
        assert_eq!(
            again,
            Some(HandshakeKind::Resumed),
            "{name}: the first session resumes"
        );
    }
    assert_eq!(
        pylon.metric("pylon_tls_session_tickets_accepted_total"),
        2.0,
        "one resumed session per version"
    );
    drop(pylon);

    // tls.session-resumption = false: no tickets, no cache, every handshake is full.
    let pylon = Pylon::start_with(
        &manifests,
        crate::support::pylon::Options {
            extra_config: "[tls]\nsession-resumption = false\n".into(),
            ..Default::default()
        },
    );
    for (name, versions) in versions {
        let client = TlsClient::trusting_versions(&ca.pem, H2_H1, versions).resuming();
        for _ in 0..2 {
            let kind = get_on_new_connection(&client, pylon.https).await;
            assert_eq!(kind, Some(HandshakeKind::Full), "{name}");
        }
    }
    assert_eq!(pylon.metric("pylon_tls_session_tickets_accepted_total"), 0.0);
}

/// Certificates with RSA, ECDSA P-384 and Ed25519 keys are served as well as P-256 ones, on
/// TLS 1.3 and 1.2 (Ed25519 on 1.3 only), and the key exchange follows the client's order,
/// including the post-quantum hybrid X25519MLKEM768 that current browsers offer first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_type_and_the_post_quantum_key_exchange() {
    use pylon::acme::keys::KeySpec;
    use rustls::NamedGroup;
    use rustls::crypto::aws_lc_rs::kx_group;
    use tokio_rustls::rustls::version;

    let up = Upstream::start("up");
    let ca = TestCa::new();
    let keys = [
        ("rsa.test", KeySpec::Rsa(2048)),
        ("rsa4096.test", KeySpec::Rsa(4096)),
        ("p384.test", KeySpec::EcdsaP384),
        ("ed25519.test", KeySpec::Ed25519),
        ("p256.test", KeySpec::EcdsaP256),
    ];
    // One Secret per host, named after it.
    let secrets: Vec<([&str; 1], String)> = keys
        .iter()
        .map(|(host, _)| ([*host], host.replace('.', "-")))
        .collect();
    let mut yaml = format!("{CLASS}{}", service("up", &[up.addr]));
    let mut leaves = Vec::new();
    for ((host, spec), (_, secret)) in keys.into_iter().zip(&secrets) {
        let leaf = ca.issue_with(&[host], spec);
        yaml += &tls_secret(secret, &leaf);
        leaves.push((host, spec, leaf));
    }
    let tls: Vec<(&[&str], &str)> = secrets
        .iter()
        .map(|(hosts, secret)| (&hosts[..], secret.as_str()))
        .collect();
    let rules: Vec<(&str, &str, &str, &str)> = keys
        .iter()
        .map(|(host, _)| (*host, "/", "Prefix", "up"))
        .collect();
    yaml += &IngressYaml {
        tls: &tls,
        rules: &rules,
        ..Default::default()
    }
    .render();
    let pylon = Pylon::start(&[("all.yaml", &yaml)]);

    let tls13 = TlsClient::trusting_versions(&ca.pem, H2_H1, &[&version::TLS13]);
    let tls12 = TlsClient::trusting_versions(&ca.pem, H2_H1, &[&version::TLS12]);
    for (host, spec, leaf) in &leaves {
        let mut clients = vec![("TLS 1.3", &tls13)];
        if *spec != KeySpec::Ed25519 {
            clients.push(("TLS 1.2", &tls12));
        }
        for (version, client) in clients {
            let (resp, cert) = client
                .get(pylon.https, host, "/")
                .await
                .unwrap_or_else(|e| panic!("{spec} over {version}: {e}"));
            assert_eq!(resp.status, 200, "{spec} over {version}");
            assert_eq!(cert.serial, leaf.serial, "{spec} over {version}");
        }
    }

    // The server takes the first group in the client's list that it supports.
    for (groups, expected) in [
        (
            &[kx_group::X25519MLKEM768, kx_group::X25519][..],
            NamedGroup::X25519MLKEM768,
        ),
        (
            &[kx_group::X25519, kx_group::X25519MLKEM768][..],
            NamedGroup::X25519,
        ),
        (&[kx_group::SECP256R1][..], NamedGroup::secp256r1),
        (&[kx_group::SECP384R1][..], NamedGroup::secp384r1),
    ] {
        let client = TlsClient::trusting_kx_groups(&ca.pem, H2_H1, groups);
        let (tls, cert) = client.connect(pylon.https, "p256.test").await.unwrap();
        let group = tls.get_ref().1.negotiated_key_exchange_group().map(|g| g.name());
        let offered: Vec<NamedGroup> = groups.iter().map(|g| g.name()).collect();
        assert_eq!(group, Some(expected), "client offers {offered:?}");
        assert_eq!(cert.serial, leaves[4].2.serial);
        let resp = TlsClient::send(tls, "p256.test", crate::support::client::get("p256.test", "/"))
            .await
            .unwrap();
        assert_eq!(resp.status, 200, "{expected:?}");
    }
    // Every handshake above is counted by its group; the clients before this loop offer X25519.
    for (group, n) in [("X25519MLKEM768", 1.0), ("secp256r1", 1.0), ("secp384r1", 1.0)] {
        assert_eq!(
            pylon.metric(&format!("pylon_tls_key_exchanges_total{{group=\"{group}\"}}")),
            n,
            "{group}"
        );
    }
    assert!(pylon.metric("pylon_tls_key_exchanges_total{group=\"X25519\"}") >= 10.0);
}
