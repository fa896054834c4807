//! Translate, fed in-memory objects written as YAML.

use std::sync::Arc;

use super::*;
use crate::config::{FileConfig, Overrides};
use crate::source::manifest::{self, Document};

fn world(yaml: &str) -> World {
    let mut w = World::default();
    for doc in manifest::parse(yaml).expect("valid YAML") {
        let Document::Object { id, object, .. } = doc else {
            panic!("test manifest is invalid: {doc:?}")
        };
        w.insert(id.key, (*object).into());
    }
    w
}

fn settings(toml: &str) -> Settings {
    let config = Config::build(FileConfig::parse(toml).unwrap(), &Overrides::default()).unwrap();
    Settings::new(
        &config.ingress,
        &config.acme,
        crate::tls::self_signed("default.invalid").unwrap(),
    )
}

use crate::config::Config;

/// A translation from scratch.
fn fresh(w: World, s: &Settings) -> Translation {
    translate(&Arc::new(w), s, &Snapshot::default(), &mut Memo::default())
}

/// The next translation after `previous`, as the control loop makes it (`memo` came with
/// `previous`).
fn next(w: World, s: &Settings, previous: &Translation, memo: &mut Memo) -> Translation {
    translate(&Arc::new(w), s, &previous.snapshot, memo)
}

/// The first translation of a sequence.
fn first(w: World, s: &Settings, memo: &mut Memo) -> Translation {
    translate(&Arc::new(w), s, &Snapshot::default(), memo)
}

const CLASS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: pylon}
spec: {controller: pylon.dev/ingress-controller}
"#;

/// A Service `name` with port 80 → 8080 and one ready endpoint per address.
fn service(name: &str, addresses: &[&str]) -> String {
    format!(
        r#"
---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec: {{ports: [{{name: http, port: 80, targetPort: 8080}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-abc
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints: [{}]
"#,
        addresses
            .iter()
            .map(|a| format!("{{addresses: [{a}]}}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn ingress(name: &str, created: &str, class: Option<&str>, body: &str) -> String {
    let class = class
        .map(|c| format!("  ingressClassName: {c}\n"))
        .unwrap_or_default();
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, creationTimestamp: \"{created}\"}}\nspec:\n{class}{body}\n"
    )
}

fn rule(host: &str, path: &str, kind: &str, svc: &str) -> String {
    format!(
        "  - host: \"{host}\"\n    http: {{paths: [{{path: \"{path}\", pathType: {kind}, backend: {{service: {{name: {svc}, port: {{number: 80}}}}}}}}]}}\n"
    )
}

/// Which service a request reaches, or "-" for 404.
fn route(t: &Translation, host: Option<&str>, path: &str) -> String {
    t.snapshot
        .routes
        .find(host, path)
        .map_or("-".into(), |r| r.backend.id.service.to_string())
}

fn reasons(t: &Translation) -> Vec<&'static str> {
    t.problems.iter().map(|p| p.reason).collect()
}

#[test]
fn hosts_paths_and_default_backend() {
    let mut yaml = String::from(CLASS);
    for s in ["a", "b", "c", "d", "e", "def"] {
        yaml += &service(s, &["10.0.0.1"]);
    }
    yaml += &ingress(
        "one",
        "2024-01-01T00:00:00Z",
        Some("pylon"),
        &format!(
            "  defaultBackend: {{service: {{name: def, port: {{number: 80}}}}}}\n  rules:\n{}{}{}{}{}",
            rule("app.example.com", "/", "Prefix", "a"),
            rule("app.example.com", "/api", "Prefix", "b"),
            rule("app.example.com", "/api", "Exact", "c"),
            rule("*.example.com", "/", "ImplementationSpecific", "d"),
            rule("", "/any", "Prefix", "e"),
        ),
    );
    let t = fresh(world(&yaml), &settings(""));
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let cases = [
        (Some("app.example.com"), "/", "a"),
        (Some("app.example.com"), "/apix", "a"),
        (Some("app.example.com"), "/api", "c"),
        (Some("app.example.com"), "/api/", "b"),
        (Some("app.example.com"), "/api/v1", "b"),
        (Some("other.example.com"), "/x", "d"),
        (Some("x.y.example.com"), "/any/thing", "e"),
        (Some("example.com"), "/nothing", "def"),
        (None, "/any", "e"),
        (Some("unknown.org"), "/", "def"),
    ];
    for (host, path, want) in cases {
        assert_eq!(route(&t, host, path), want, "{host:?} {path}");
    }
}

#[test]
fn unknown_host_without_default_backend_is_not_found() {
    let yaml = format!(
        "{CLASS}{}{}",
        service("a", &["10.0.0.1"]),
        ingress(
            "one",
            "2024-01-01T00:00:00Z",
            Some("pylon"),
            &format!("  rules:\n{}", rule("a.example.com", "/", "Prefix", "a"))
        )
    );
    let t = fresh(world(&yaml), &settings(""));
    assert_eq!(route(&t, Some("b.example.com"), "/"), "-");
    assert_eq!(route(&t, Some("a.example.com"), "/x"), "a");
}

#[test]
fn classes_decide_which_ingresses_are_served() {
    let body = |host: &str| format!("  rules:\n{}", rule(host, "/", "Prefix", "a"));
    let mut yaml = String::from(CLASS);
    yaml += &service("a", &["10.0.0.1"]);
    yaml += "---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: other}\nspec: {controller: example.com/other}\n";
    yaml += &ingress("ours", "2024-01-01T00:00:00Z", Some("pylon"), &body("ours.test"));
    yaml += &ingress(
        "theirs",
        "2024-01-01T00:00:00Z",
        Some("other"),
        &body("theirs.test"),
    );
    yaml += &ingress(
        "nginx",
        "2024-01-01T00:00:00Z",
        Some("nginx"),
        &body("nginx.test"),
    );
    yaml += &ingress("none", "2024-01-01T00:00:00Z", None, &body("none.test"));
    yaml += "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: legacy\n  annotations: {kubernetes.io/ingress.class: pylon}\nspec:\n  rules:\n";
    yaml += &rule("legacy.test", "/", "Prefix", "a");
    let w = world(&yaml);
    let served = |t: &Translation| {
        ["ours", "theirs", "nginx", "none", "legacy"]
            .into_iter()
            .filter(|h| route(t, Some(&format!("{h}.test")), "/") == "a")
            .collect::<Vec<_>>()
    };

    let t = fresh(w.clone(), &settings(""));
    assert_eq!(served(&t), ["ours", "legacy"]);
    let t = fresh(w.clone(), &settings("[ingress]\nclasses = [\"nginx\"]"));
    assert_eq!(served(&t), ["ours", "nginx", "legacy"]);
    let t = fresh(w.clone(), &settings("[ingress]\nserve-without-class = true"));
    assert_eq!(served(&t), ["ours", "none", "legacy"]);

    // A default IngressClass of ours also takes Ingresses without a class.
    let default_class = yaml.replacen(
        "metadata: {name: pylon}",
        "metadata: {name: pylon, annotations: {ingressclass.kubernetes.io/is-default-class: \"true\"}}",
        1,
    );
    let t = fresh(world(&default_class), &settings(""));
    assert_eq!(served(&t), ["ours", "none", "legacy"]);
    let t = fresh(w, &settings("[ingress]\ncontroller = \"example.com/other\""));
    assert_eq!(served(&t), ["theirs"]);
}

#[test]
fn oldest_ingress_wins_a_conflict_and_the_loser_is_reported() {
    let mut yaml = String::from(CLASS);
    yaml += &service("old", &["10.0.0.1"]);
    yaml += &service("new", &["10.0.0.2"]);
    // Listed first but younger.
    yaml += &ingress(
        "aaa-young",
        "2025-01-01T00:00:00Z",
        Some("pylon"),
        &format!(
            "  rules:\n{}{}",
            rule("h.test", "/p/", "Prefix", "new"),
            rule("h.test", "/q", "Prefix", "new")
        ),
    );
    yaml += &ingress(
        "zzz-old",
        "2024-01-01T00:00:00Z",
        Some("pylon"),
        &format!("  rules:\n{}", rule("h.test", "/p", "Prefix", "old")),
    );
    let t = fresh(world(&yaml), &settings(""));
    assert_eq!(route(&t, Some("h.test"), "/p/x"), "old");
    assert_eq!(
        route(&t, Some("h.test"), "/q"),
        "new",
        "paths of both Ingresses merge"
    );
    assert_eq!(reasons(&t), ["path_conflict"]);
    assert_eq!(t.problems[0].subject.name, "aaa-young");
    assert!(
        t.problems[0].message.contains("default/zzz-old"),
        "{}",
        t.problems[0].message
    );
}

#[test]
fn backends_resolve_through_endpoint_slices() {
    let mut yaml = String::from(CLASS);
    yaml += &service("up", &["10.0.0.1", "10.0.0.2"]);
    // A not-ready endpoint, a slice for another port, and a slice of another service.
    yaml += r#"
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: up-def, labels: {kubernetes.io/service-name: up}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: metrics, port: 9090}]
endpoints:
- {addresses: [10.0.0.3], conditions: {ready: false}}
- {addresses: [10.0.0.4], conditions: {ready: true}}
"#;
    yaml += &service("down", &[]);
    yaml += r#"
---
apiVersion: v1
kind: Service
metadata: {name: named}
spec: {ports: [{name: web, port: 8000}]}
"#;
    yaml += &ingress(
        "one",
        "2024-01-01T00:00:00Z",
        Some("pylon"),
        &format!(
            "  rules:\n{}{}{}{}  - host: named.test\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: named, port: {{name: nope}}}}}}}}]}}\n",
            rule("up.test", "/", "Prefix", "up"),
            rule("down.test", "/", "Prefix", "down"),
            rule("missing.test", "/", "Prefix", "missing"),
            rule("badport.test", "/", "Prefix", "named").replace("number: 80", "number: 81"),
        ),
    );
    let t = fresh(world(&yaml), &settings(""));
    let backend = |host: &str| t.snapshot.routes.find(Some(host), "/").unwrap().backend.clone();
    let up: Vec<String> = backend("up.test")
        .endpoints()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(up, ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.4:8080"]);
    use crate::routing::Unavailable::*;
    assert_eq!(backend("down.test").why_unavailable(), Some(NoReadyEndpoints));
    assert_eq!(backend("missing.test").why_unavailable(), Some(ServiceMissing));
    assert_eq!(backend("badport.test").why_unavailable(), Some(PortMissing));
    assert_eq!(backend("named.test").why_unavailable(), Some(PortMissing));
    let mut r = reasons(&t);
    r.sort();
    assert_eq!(
        r,
        [
            "no_ready_endpoints",
            "service_missing",
            "service_port_missing",
            "service_port_missing"
        ]
    );
    // Routes to the same Service port share one backend (one round-robin).
    let yaml2 = format!(
        "{CLASS}{}{}",
        service("up", &["10.0.0.1"]),
        ingress(
            "x",
            "2024-01-01T00:00:00Z",
            Some("pylon"),
            &format!(
                "  rules:\n{}{}",
                rule("a.test", "/", "Prefix", "up"),
                rule("b.test", "/", "Prefix", "up")
            )
        )
    );
    let t = fresh(world(&yaml2), &settings(""));
    let a = t.snapshot.routes.find(Some("a.test"), "/").unwrap();
    let b = t.snapshot.routes.find(Some("b.test"), "/").unwrap();
    assert!(Arc::ptr_eq(&a.backend, &b.backend));
}

#[test]
fn external_name_services_use_their_resolved_addresses() {
    use crate::routing::Unavailable::*;
    use crate::source::names::Resolution;
    let yaml = format!(
        "{CLASS}{}{}",
        r#"
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {type: ExternalName, externalName: db.example.com, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: ip}
spec: {type: ExternalName, externalName: 10.1.2.3}
"#,
        ingress(
            "x",
            "2024-01-01T00:00:00Z",
            Some("pylon"),
            &format!(
                "  rules:\n{}{}",
                rule("ext.test", "/", "Prefix", "ext"),
                rule("ip.test", "/", "Prefix", "ip")
            )
        )
    );
    let s = settings("");
    let mut memo = Memo::default();
    let base = world(&yaml);
    let endpoints = |t: &Translation, host: &str| -> (Vec<String>, Option<crate::routing::Unavailable>) {
        let b = t.snapshot.routes.find(Some(host), "/").unwrap().backend.clone();
        (
            b.endpoints().iter().map(ToString::to_string).collect(),
            b.why_unavailable(),
        )
    };

    // Not looked up yet: 503 for the moment, and no problem reported.
    let t1 = first(base.clone(), &s, &mut memo);
    assert_eq!(endpoints(&t1, "ext.test"), (vec![], Some(NamePending)));
    assert_eq!(endpoints(&t1, "ip.test"), (vec!["10.1.2.3:80".into()], None));
    assert!(reasons(&t1).is_empty(), "{:?}", t1.problems);

    // Resolved: its addresses on the target port, built again by the incremental path.
    let mut w = base.clone();
    let addrs = |ips: &[&str]| {
        Arc::new(Resolution::Addresses(
            ips.iter().map(|i| i.parse().unwrap()).collect(),
        ))
    };
    w.names
        .insert("db.example.com".into(), addrs(&["10.9.0.1", "10.9.0.2"]));
    let t2 = next(w.clone(), &s, &t1, &mut memo);
    assert_eq!(
        endpoints(&t2, "ext.test"),
        (vec!["10.9.0.1:8080".into(), "10.9.0.2:8080".into()], None)
    );
    assert_eq!(
        endpoints(&fresh(w.clone(), &s), "ext.test"),
        endpoints(&t2, "ext.test")
    );

    // The addresses change.
    w.names.insert("db.example.com".into(), addrs(&["10.9.0.3"]));
    let t3 = next(w.clone(), &s, &t2, &mut memo);
    assert_eq!(endpoints(&t3, "ext.test"), (vec!["10.9.0.3:8080".into()], None));

    // A name that never resolved is reported on the Ingress.
    let mut w = base;
    w.names.insert(
        "db.example.com".into(),
        Arc::new(Resolution::Failed("no such host".into())),
    );
    let t4 = next(w, &s, &t3, &mut memo);
    assert_eq!(endpoints(&t4, "ext.test"), (vec![], Some(NameUnresolved)));
    assert_eq!(reasons(&t4), ["external_name_unresolved"]);
}

fn tls_secret(name: &str, hosts: &[&str]) -> String {
    tls_secret_from(name, hosts, |_| {})
}

/// A TLS Secret whose certificate expired in 2020.
fn expired_tls_secret(name: &str, hosts: &[&str]) -> String {
    tls_secret_from(name, hosts, |params| {
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    })
}

fn tls_secret_from(name: &str, hosts: &[&str], adjust: impl FnOnce(&mut rcgen::CertificateParams)) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params =
        rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>()).unwrap();
    adjust(&mut params);
    let cert = params.self_signed(&key).unwrap();
    let indent = |s: String| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(cert.pem()),
        indent(key.serialize_pem())
    )
}

#[test]
fn tls_hosts_get_certificates_and_redirects() {
    let mut yaml = String::from(CLASS);
    yaml += &service("a", &["10.0.0.1"]);
    yaml += &tls_secret("exact", &["secure.test"]);
    yaml += &tls_secret("wild", &["*.wild.test"]);
    let rules = [
        rule("secure.test", "/", "Prefix", "a"),
        rule("x.wild.test", "/", "Prefix", "a"),
        rule("plain.test", "/", "Prefix", "a"),
        rule("opt-out.test", "/", "Prefix", "a"),
        rule("forced.test", "/", "Prefix", "a"),
    ];
    yaml += &ingress(
        "tls",
        "2024-01-01T00:00:00Z",
        Some("pylon"),
        &format!(
            "  tls:\n  - {{hosts: [secure.test], secretName: exact}}\n  - {{hosts: [\"*.wild.test\"], secretName: wild}}\n  rules:\n{}{}{}",
            rules[0], rules[1], rules[2]
        ),
    );
    yaml += "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: optout\n  annotations: {nginx.ingress.kubernetes.io/ssl-redirect: \"false\"}\nspec:\n  ingressClassName: pylon\n  tls: [{hosts: [opt-out.test], secretName: exact}]\n  rules:\n";
    yaml += &rules[3];
    yaml += "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: forced\n  annotations: {nginx.ingress.kubernetes.io/force-ssl-redirect: \"true\"}\nspec:\n  ingressClassName: pylon\n  rules:\n";
    yaml += &rules[4];
    let t = fresh(world(&yaml), &settings(""));
    let redirect = |h: &str| {
        t.snapshot
            .routes
            .find(Some(h), "/")
            .unwrap()
            .policy
            .redirect_https
    };
    assert!(redirect("secure.test"));
    assert!(redirect("x.wild.test"));
    assert!(!redirect("plain.test"));
    assert!(!redirect("opt-out.test"));
    assert!(redirect("forced.test"));

    use crate::tls::Matched;
    let certs = &t.snapshot.certs;
    assert_eq!(certs.find(Some("secure.test")).unwrap().0, Matched::Exact);
    assert_eq!(certs.find(Some("y.wild.test")).unwrap().0, Matched::Wildcard);
    assert_eq!(certs.find(Some("a.b.wild.test")).unwrap().0, Matched::Default);
    assert_eq!(certs.find(None).unwrap().0, Matched::Default);
    assert_eq!(t.certificate_updates.len(), 2);
    // opt-out.test uses a certificate for secure.test: served, but reported.
    assert_eq!(reasons(&t), ["certificate_name_mismatch"]);
}

#[test]
fn a_broken_secret_keeps_the_previous_certificate() {
    let good = format!(
        "{CLASS}{}{}{}",
        service("a", &["10.0.0.1"]),
        tls_secret("s", &["secure.test"]),
        ingress(
            "tls",
            "2024-01-01T00:00:00Z",
            Some("pylon"),
            &format!(
                "  tls: [{{hosts: [secure.test], secretName: s}}]\n  rules:\n{}",
                rule("secure.test", "/", "Prefix", "a")
            )
        )
    );
    let s = settings("");
    let mut memo = Memo::default();
    let first = first(world(&good), &s, &mut memo);
    let first_key = first.snapshot.certs.find(Some("secure.test")).unwrap().1.clone();

    let broken = good
        .replace("BEGIN PRIVATE KEY", "BEGIN NONSENSE")
        .replace("END PRIVATE KEY", "END NONSENSE");
    let second = next(world(&broken), &s, &first, &mut memo);
    let (matched, key) = second.snapshot.certs.find(Some("secure.test")).unwrap();
    assert_eq!(matched, crate::tls::Matched::Exact);
    assert!(Arc::ptr_eq(key, &first_key), "previous certificate stays");
    assert_eq!(reasons(&second), ["bad_key"]);
    assert!(
        second.problems[0]
            .message
            .contains("previous certificate stays in service")
    );

    // The good content again (in new objects) is not parsed again: same certificate object.
    let third = next(world(&good), &s, &second, &mut memo);
    assert!(Arc::ptr_eq(
        third.snapshot.certs.find(Some("secure.test")).unwrap().1,
        &first_key
    ));
}

#[test]
fn an_invalid_ingress_is_rejected_and_its_last_good_version_serves() {
    let base = format!("{CLASS}{}", service("a", &["10.0.0.1"]));
    let good = base.clone()
        + &ingress(
            "app",
            "2024-01-01T00:00:00Z",
            Some("pylon"),
            &format!("  rules:\n{}", rule("app.test", "/", "Prefix", "a")),
        );
    let bad = base
        + &ingress(
            "app",
            "2024-01-01T00:00:00Z",
            Some("pylon"),
            &format!(
                "  rules:\n{}{}",
                rule("app.test", "/", "Prefix", "a"),
                rule("Bad_Host", "nope", "Prefix", "a")
            ),
        );
    let s = settings("");

    let fresh = fresh(world(&bad), &s);
    assert_eq!(
        route(&fresh, Some("app.test"), "/"),
        "-",
        "never valid: not served"
    );
    assert_eq!(reasons(&fresh), ["invalid_ingress"]);
    assert!(
        fresh.problems[0].message.contains("spec.rules[1].host"),
        "{}",
        fresh.problems[0].message
    );

    let mut memo = Memo::default();
    let first = first(world(&good), &s, &mut memo);
    let second = next(world(&bad), &s, &first, &mut memo);
    assert_eq!(
        route(&second, Some("app.test"), "/"),
        "a",
        "last good version serves"
    );
    assert!(second.problems[0].message.contains("last good version"));

    let bad_annotation = good.replace(
        "name: app,",
        "name: app, annotations: {nginx.ingress.kubernetes.io/proxy-body-size: huge},",
    );
    let third = next(world(&bad_annotation), &s, &second, &mut memo);
    assert_eq!(reasons(&third), ["invalid_ingress"]);
    assert!(third.problems[0].message.contains("proxy-body-size"));
    assert_eq!(route(&third, Some("app.test"), "/"), "a");
}

#[test]
fn counters_survive_a_new_snapshot() {
    let yaml = format!(
        "{CLASS}{}{}",
        service("a", &["10.0.0.1"]),
        ingress(
            "app",
            "2024-01-01T00:00:00Z",
            Some("pylon"),
            &format!("  rules:\n{}", rule("app.test", "/", "Prefix", "a"))
        )
    );
    let s = settings("");
    let mut memo = Memo::default();
    let first = first(world(&yaml), &s, &mut memo);
    let second = next(world(&yaml), &s, &first, &mut memo);
    let c1 = &first
        .snapshot
        .routes
        .find(Some("app.test"), "/")
        .unwrap()
        .counters;
    let c2 = &second
        .snapshot
        .routes
        .find(Some("app.test"), "/")
        .unwrap()
        .counters;
    assert!(Arc::ptr_eq(c1, c2));
    assert_eq!(second.snapshot.generation, 2);
}

#[test]
fn missing_tls_secret_and_unsupported_annotations_are_warnings() {
    let yaml = format!(
        "{CLASS}{}---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: app\n  annotations: {{nginx.ingress.kubernetes.io/rewrite-target: /}}\nspec:\n  ingressClassName: pylon\n  tls: [{{hosts: [app.test], secretName: nope}}]\n  rules:\n{}",
        service("a", &["10.0.0.1"]),
        rule("app.test", "/", "Prefix", "a")
    );
    let t = fresh(world(&yaml), &settings(""));
    let mut r = reasons(&t);
    r.sort();
    assert_eq!(r, ["ignored_setting", "tls_secret_missing"]);
    assert!(
        t.problems
            .iter()
            .all(|p| p.severity == crate::problem::Severity::Warning)
    );
    // TLS is configured, so plain HTTP is still redirected; the default certificate serves.
    assert!(
        t.snapshot
            .routes
            .find(Some("app.test"), "/")
            .unwrap()
            .policy
            .redirect_https
    );
    assert_eq!(
        t.snapshot.certs.find(Some("app.test")).unwrap().0,
        crate::tls::Matched::Default
    );
}

mod no_panics {
    use k8s_openapi::jiff::{SignedDuration, Timestamp};
    use proptest::prelude::*;

    use super::*;

    /// Every object kind pylon reads, with annotations, TLS and a default backend.
    fn seed() -> String {
        let mut y = String::from(CLASS);
        y += &service("a", &["10.0.0.1", "10.0.0.2"]);
        y += &tls_secret("s", &["a.test", "*.w.test"]);
        y += "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: app\n  annotations: {nginx.ingress.kubernetes.io/proxy-body-size: 8m, nginx.ingress.kubernetes.io/ssl-redirect: \"false\"}\nspec:\n  ingressClassName: pylon\n  defaultBackend: {service: {name: a, port: {name: http}}}\n  tls: [{hosts: [a.test, \"*.w.test\"], secretName: s}]\n  rules:\n";
        y += &rule("a.test", "/api", "Prefix", "a");
        y += &rule("*.w.test", "/", "Exact", "a");
        y
    }

    /// Reads whatever parses, as the files source would, and translates it twice (the second
    /// time against the first snapshot, as a reload does).
    fn run(text: &str) {
        let Ok(docs) = manifest::parse(text) else { return };
        let mut w = World::default();
        for doc in docs {
            if let Document::Object { id, object, .. } = doc {
                w.insert(id.key, (*object).into());
            }
        }
        let s = settings("[ingress]\nserve-without-class = true");
        let mut memo = Memo::default();
        let first = first(w.clone(), &s, &mut memo);
        let _ = next(w, &s, &first, &mut memo);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn mutated_manifests_never_panic(
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..12)
        ) {
            let mut bytes = seed().into_bytes();
            for (at, byte, op) in edits {
                if bytes.is_empty() { break; }
                let i = at.index(bytes.len());
                match op {
                    0 => bytes[i] = byte,
                    1 => bytes.truncate(i),
                    _ => bytes.insert(i, byte),
                }
            }
            run(&String::from_utf8_lossy(&bytes));
        }

        /// Any values in the cert-manager annotations and the issuers' specs: translate asks
        /// for certificates without a panic, and each one a selfSigned issuer would make is
        /// made or refused with an error.
        #[test]
        fn arbitrary_certificate_settings_never_panic(
            duration in prop_oneof![2 => Just(String::new()), 6 => "[1-9][0-9]{0,5}h", 2 => "[0-9]{1,22}(h|m|s)", 1 => "\\PC{0,12}"],
            renew_before in prop_oneof![4 => Just(String::new()), 4 => "[1-9][0-9]{0,5}(h|m)", 1 => "[0-9]{1,22}(h|m|s)", 1 => "\\PC{0,12}"],
            algorithm in prop::sample::select(vec!["", "", "ECDSA", "RSA", "Ed25519", "DSA"]),
            size in prop_oneof![6 => Just(String::new()), 1 => "[0-9]{1,12}", 1 => "\\PC{0,6}"],
            common_name in prop_oneof![3 => Just(String::new()), 1 => "\\PC{0,80}"],
            alt_names in prop_oneof![3 => Just(String::new()), 1 => "[a-z0-9.,* -]{0,60}"],
            issuer in prop_oneof![
                Just("{selfSigned: {}}".to_owned()),
                "\\PC{0,30}".prop_map(|s| format!("{{ca: {{secretName: {}}}}}", serde_json::to_string(&s).unwrap())),
                ("\\PC{0,40}", "\\PC{0,20}").prop_map(|(server, email)| format!(
                    "{{acme: {{server: {}, email: {}, privateKeySecretRef: {{name: acct}}, solvers: [{{http01: {{}}, selector: {{dnsNames: [{}]}}}}]}}}}",
                    serde_json::to_string(&server).unwrap(),
                    serde_json::to_string(&email).unwrap(),
                    serde_json::to_string(&email).unwrap(),
                )),
            ],
        ) {
            let quoted = |v: &str| serde_json::to_string(v).unwrap();
            let yaml = format!(
                "{CLASS}{}---\napiVersion: cert-manager.io/v1\nkind: ClusterIssuer\nmetadata: {{name: local}}\nspec: {issuer}\n---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: x\n  annotations:\n    cert-manager.io/cluster-issuer: local\n    cert-manager.io/duration: {}\n    cert-manager.io/renew-before: {}\n    cert-manager.io/private-key-algorithm: {}\n    cert-manager.io/private-key-size: {}\n    cert-manager.io/common-name: {}\n    cert-manager.io/alt-names: {}\nspec:\n  ingressClassName: pylon\n  tls: [{{hosts: [a.test], secretName: a-tls}}]\n  rules:\n{}",
                service("a", &["10.0.0.1"]),
                quoted(&duration),
                quoted(&renew_before),
                quoted(algorithm),
                quoted(&size),
                quoted(&common_name),
                quoted(&alt_names),
                rule("a.test", "/", "Prefix", "a"),
            );
            let t = fresh(world(&yaml), &settings(""));
            for req in t.requests.iter() {
                if matches!(req.issuer.method, crate::acme::issuer::Method::SelfSigned) {
                    // The key's kind does not matter here, and RSA keys are slow to make.
                    let duration = req.duration.unwrap_or(crate::acme::local::DEFAULT_DURATION);
                    let _ = crate::acme::local::self_signed(
                        &req.hosts,
                        req.common_name.as_deref(),
                        crate::acme::keys::KeySpec::EcdsaP256,
                        duration,
                    );
                    let _ = crate::acme::schedule::renew_at(
                        Timestamp::now(),
                        Timestamp::now() + SignedDuration::from_hours(24),
                        req.renew_before,
                    );
                }
            }
        }

        #[test]
        fn arbitrary_field_values_never_panic(
            host in "\\PC{0,40}",
            path in "\\PC{0,40}",
            kind in prop::sample::select(vec!["Exact", "Prefix", "ImplementationSpecific", "", "Other"]),
            annotation in "\\PC{0,20}",
            port in any::<i64>(),
        ) {
            let yaml = format!(
                "{CLASS}---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: x\n  annotations: {{nginx.ingress.kubernetes.io/proxy-read-timeout: {a}, nginx.ingress.kubernetes.io/proxy-body-size: {a}}}\nspec:\n  ingressClassName: pylon\n  tls: [{{hosts: [{h}], secretName: {h}}}]\n  rules: [{{host: {h}, http: {{paths: [{{path: {p}, pathType: \"{kind}\", backend: {{service: {{name: {h}, port: {{number: {port}}}}}}}}}]}}}}]\n",
                a = serde_json::to_string(&annotation).unwrap(),
                h = serde_json::to_string(&host).unwrap(),
                p = serde_json::to_string(&path).unwrap(),
            );
            run(&yaml);
        }
    }
}

mod certificates {
    use super::*;
    use crate::acme::issuer::Method;

    fn issuer_yaml(name: &str, account: &str) -> String {
        format!(
            "---\napiVersion: cert-manager.io/v1\nkind: ClusterIssuer\nmetadata: {{name: {name}}}\nspec:\n  acme:\n    server: https://acme.test/dir\n    privateKeySecretRef: {{name: {account}}}\n    solvers: [{{http01: {{ingress: {{class: nginx}}}}}}]\n"
        )
    }

    fn annotated(name: &str, issuer: &str, tls: &str, host: &str) -> String {
        format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  annotations: {{cert-manager.io/cluster-issuer: {issuer}}}\nspec:\n  ingressClassName: pylon\n  tls: [{tls}]\n  rules:\n{}",
            rule(host, "/", "Prefix", "a")
        )
    }

    fn secret(ns: &str, name: &str, key_pem: &str, labels: &str) -> String {
        let indent: String = key_pem.lines().map(|l| format!("    {l}\n")).collect();
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}{labels}}}\nstringData:\n  tls.key: |\n{indent}"
        )
    }

    #[test]
    fn requests_follow_annotations_and_tls_entries() {
        let mut yaml = format!(
            "{CLASS}{}{}",
            service("a", &["10.0.0.1"]),
            issuer_yaml("le", "le-account")
        );
        yaml += &annotated(
            "app",
            "le",
            "{hosts: [app.test, www.app.test], secretName: app-tls}",
            "app.test",
        );
        yaml += &annotated(
            "wild",
            "le",
            "{hosts: [\"*.w.test\"], secretName: w-tls}",
            "x.w.test",
        );
        yaml += &annotated("ghost", "nope", "{hosts: [g.test], secretName: g-tls}", "g.test");
        yaml += &annotated(
            "theirs",
            "le",
            "{hosts: [t.test], secretName: theirs-tls}",
            "t.test",
        );
        yaml += &tls_secret("theirs-tls", &["t.test"]);
        let t = fresh(world(&yaml), &settings(""));
        let secrets: Vec<String> = t.requests.iter().map(|r| r.secret.to_string()).collect();
        assert_eq!(secrets, ["default/app-tls"]);
        let req = &t.requests[0];
        assert_eq!(req.hosts, ["app.test", "www.app.test"]);
        assert_eq!(req.issuer_id(), "ClusterIssuer le");
        let mut r = reasons(&t);
        r.sort();
        assert_eq!(r, ["issuer_not_found", "needs_dns01", "secret_not_managed"]);
        // No account key yet: no challenge is answered until pylon has registered one.
        assert!(t.snapshot.challenges.is_empty());
        assert!(matches!(req.issuer.method, Method::Acme(_)));
    }

    #[test]
    fn an_unusable_account_key_is_left_alone_and_a_sibling_is_used() {
        let rsa = crate::acme::keys::pkcs8_pem(&crate::acme::keys::KeySpec::Rsa(2048).generate().unwrap());
        let ours = crate::acme::keys::AccountKey::generate().unwrap();
        let mut yaml = format!(
            "{CLASS}{}{}",
            service("a", &["10.0.0.1"]),
            issuer_yaml("le", "le-account")
        );
        yaml += &annotated(
            "app",
            "le",
            "{hosts: [app.test], secretName: app-tls}",
            "app.test",
        );
        // cert-manager's RSA account key, and pylon's own key beside it.
        yaml += &secret("pylon", "le-account", &rsa, "");
        let s = settings("");
        let t = fresh(world(&yaml), &s);
        let material = &t.requests[0].material;
        assert_eq!(
            material.account_secret,
            Some(ObjectKey::new("pylon", "le-account-pylon"))
        );
        assert!(material.account_secret_writable);
        assert!(material.account_key.is_none());
        assert_eq!(reasons(&t), ["account_key_unusable"]);

        yaml += &secret(
            "pylon",
            "le-account-pylon",
            &ours.pem(),
            ", labels: {app.kubernetes.io/managed-by: pylon}",
        );
        let t = fresh(world(&yaml), &s);
        assert_eq!(t.requests[0].material.account_key.as_ref(), Some(&ours));
        let token = "0123456789abcdefghijKLMNOP";
        assert_eq!(
            t.snapshot.challenges.answer(Some("app.test"), token),
            crate::acme::challenge::Answer::Respond(format!("{token}.{}", ours.thumbprint))
        );
    }

    #[test]
    fn the_default_issuer_applies_to_tls_without_annotations() {
        let yaml = format!(
            "{CLASS}{}---\napiVersion: cert-manager.io/v1\nkind: ClusterIssuer\nmetadata: {{name: local}}\nspec: {{selfSigned: {{}}}}\n{}",
            service("a", &["10.0.0.1"]),
            ingress(
                "app",
                "2024-01-01T00:00:00Z",
                Some("pylon"),
                &format!(
                    "  tls: [{{hosts: [app.test], secretName: app-tls}}]\n  rules:\n{}",
                    rule("app.test", "/", "Prefix", "a")
                )
            )
        );
        let t = fresh(world(&yaml), &settings(""));
        assert!(
            t.requests.is_empty(),
            "no annotation, no default: nothing to issue"
        );
        assert_eq!(reasons(&t), ["tls_secret_missing"]);
        let t = fresh(
            world(&yaml),
            &settings("[acme]\ndefault-issuer = \"ClusterIssuer/local\""),
        );
        assert_eq!(t.requests.len(), 1);
        assert!(t.problems.is_empty(), "{:?}", t.problems);
    }
}

/// A translation made from the last one, after any sequence of changes, equals a translation
/// of the same objects from scratch.
mod incremental {
    use std::collections::BTreeMap;
    use std::sync::OnceLock;

    use proptest::prelude::*;

    use super::*;

    const HOSTS: [&str; 7] = [
        "h0.test", "h1.test", "h2.test", "h3.test", "*.w.test", "a.w.test", "",
    ];
    const CERT_HOSTS: [&[&str]; 4] = [&["h0.test"], &["h1.test", "h2.test"], &["*.w.test"], &["h3.test"]];

    /// Six TLS Secrets' YAML bodies, generated once: one for each of `CERT_HOSTS`, an
    /// expired one and one that does not parse.
    fn cert_yaml(i: usize) -> &'static str {
        static CERTS: OnceLock<Vec<String>> = OnceLock::new();
        &CERTS.get_or_init(|| {
            let mut certs: Vec<String> = CERT_HOSTS.iter().map(|hosts| tls_secret("NAME", hosts)).collect();
            certs.push(expired_tls_secret("NAME", &["h1.test"]));
            certs.push(
                "---\napiVersion: v1\nkind: Secret\nmetadata: {name: NAME}\ntype: kubernetes.io/tls\nstringData: {tls.crt: not a certificate, tls.key: not a key}\n"
                    .to_owned(),
            );
            certs
        })[i]
    }

    /// A small deterministic generator for an object's details.
    struct Bits(u64);

    impl Bits {
        fn take(&mut self, n: u64) -> usize {
            let v = self.0 % n;
            self.0 = (self.0 / n) ^ (self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40);
            v as usize
        }
    }

    /// The YAML of object `index` of `kind`, shaped by `seed`.
    fn object(kind: u8, index: u8, seed: u64) -> String {
        let mut b = Bits(seed);
        match kind {
            0 => {
                let alt = if b.take(2) == 1 { ", {name: alt, port: 81, targetPort: 9090}" } else { "" };
                format!(
                    "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{index}}}\nspec: {{ports: [{{name: http, port: 80, targetPort: 8080}}{alt}]}}\n"
                )
            }
            1 => {
                let endpoints: Vec<String> = (0..b.take(3))
                    .map(|k| {
                        let ready = if b.take(4) == 0 { "false" } else { "true" };
                        format!("{{addresses: [10.0.{index}.{k}], conditions: {{ready: {ready}}}}}")
                    })
                    .collect();
                format!(
                    "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s{index}-abc\n  labels: {{kubernetes.io/service-name: s{index}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}, {{name: alt, port: 9090}}]\nendpoints: [{}]\n",
                    endpoints.join(", ")
                )
            }
            2 => match b.take(6) {
                // Always broken under its name: a Secret that breaks keeps its last good
                // certificate in service, which a translation from scratch cannot know.
                5 => cert_yaml(5).replace("NAME", "t4"),
                i => cert_yaml(i).replace("NAME", &format!("t{index}")),
            },
            3 => {
                let class = ["pylon", "pylon", "pylon", "other"][b.take(4)];
                let created = ["2024-01-01", "2024-01-02", "2024-01-03"][b.take(3)];
                let mut annotations = Vec::new();
                if b.take(3) == 0 {
                    annotations.push("cert-manager.io/cluster-issuer: self");
                }
                if b.take(3) == 0 {
                    annotations.push("nginx.ingress.kubernetes.io/ssl-redirect: \"false\"");
                }
                // Always invalid under its name, like the broken Secret above.
                let name = if b.take(4) == 0 {
                    annotations.push("nginx.ingress.kubernetes.io/proxy-body-size: lots");
                    format!("bad{index}")
                } else {
                    format!("i{index}")
                };
                let mut body = format!("  ingressClassName: {class}\n");
                if b.take(3) == 0 {
                    body += &format!(
                        "  defaultBackend: {{service: {{name: s{}, port: {{number: 80}}}}}}\n",
                        b.take(4)
                    );
                }
                let entries: Vec<String> = (0..b.take(3))
                    .map(|_| {
                        let hosts: Vec<String> = (0..b.take(3))
                            .map(|_| format!("\"{}\"", HOSTS[b.take(6)]))
                            .collect();
                        format!("{{hosts: [{}], secretName: t{}}}", hosts.join(", "), b.take(5))
                    })
                    .collect();
                if !entries.is_empty() {
                    body += &format!("  tls: [{}]\n", entries.join(", "));
                }
                body += "  rules:\n";
                for _ in 0..1 + b.take(3) {
                    let port = ["{number: 80}", "{name: http}", "{name: alt}"][b.take(3)];
                    let host = match HOSTS[b.take(7)] {
                        "" => String::new(),
                        h => format!("host: \"{h}\"\n    "),
                    };
                    body += &format!(
                        "  - {host}http: {{paths: [{{path: {}, pathType: {}, backend: {{service: {{name: s{}, port: {port}}}}}}}]}}\n",
                        ["/", "/api", "/x"][b.take(3)],
                        ["Prefix", "Exact"][b.take(2)],
                        b.take(5),
                    );
                }
                format!(
                    "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, creationTimestamp: \"{created}T00:00:00Z\", annotations: {{{}}}}}\nspec:\n{body}",
                    annotations.join(", ")
                )
            }
            4 => {
                let default = if b.take(2) == 0 { "true" } else { "false" };
                format!(
                    "---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {{name: pylon, annotations: {{ingressclass.kubernetes.io/is-default-class: \"{default}\"}}}}\nspec: {{controller: pylon.dev/ingress-controller}}\n"
                )
            }
            _ => "---\napiVersion: cert-manager.io/v1\nkind: ClusterIssuer\nmetadata: {name: self}\nspec: {selfSigned: {}}\n".to_owned(),
        }
    }

    /// Puts (or, with `delete`, removes) one object, leaving every other object as it was.
    fn change(w: &mut World, kind: u8, index: u8, seed: u64, delete: bool) {
        let one = world(&object(kind, index, seed));
        macro_rules! apply {
            ($($kind:ident),*) => {$(
                for (k, v) in one.$kind {
                    if delete {
                        w.$kind.remove(&k);
                    } else {
                        w.$kind.insert(k, v);
                    }
                }
            )*};
        }
        apply!(
            ingresses,
            services,
            endpoint_slices,
            secrets,
            ingress_classes,
            cluster_issuers
        );
    }

    /// Everything a translation decides, in comparable form.
    fn outcome(t: &Translation, memo: &Memo) -> Vec<String> {
        let mut out: Vec<String> = t
            .snapshot
            .routes
            .entries()
            .iter()
            .map(|e| {
                format!(
                    "route {} {:?} {} -> {} {} {:?} {:?}",
                    e.host,
                    e.kind,
                    e.path,
                    e.route.ingress,
                    e.route.backend.id,
                    e.route.backend.endpoints(),
                    e.route.policy
                )
            })
            .collect();
        if let Some(r) = t.snapshot.routes.default_route() {
            out.push(format!("default -> {} {}", r.ingress, r.backend.id));
        }
        for host in HOSTS.iter().chain(&["b.w.test", "other.test"]) {
            let found = t.snapshot.certs.find(Some(host)).map(|(m, k)| {
                use std::hash::BuildHasher;
                (
                    m,
                    foldhash::quality::FixedState::default().hash_one(k.cert[0].as_ref()),
                )
            });
            out.push(format!("cert {host} {found:?}"));
        }
        out.push(format!("certs {}", t.snapshot.certs.len()));
        out.extend(t.problems.iter().map(|p| format!("problem {p:?}")));
        out.extend(
            t.requests
                .iter()
                .map(|r| format!("request {} {:?} {}", r.secret, r.hosts, r.ingress)),
        );
        out.push(format!("challenges {}", t.snapshot.challenges.len()));
        out.push(format!("served {:?}", t.served));
        out.push(format!("ignored {:?}", t.ignored));
        out.push(format!("backends {} endpoints {}", t.backends, t.endpoints));
        let mut in_use: Vec<_> = memo.in_use.iter().collect();
        in_use.sort();
        out.push(format!("in use {in_use:?}"));
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn every_change_gives_what_a_translation_from_scratch_gives(
            changes in prop::collection::vec((0..6u8, 0..4u8, any::<u64>(), prop::bool::weighted(0.2)), 1..24),
        ) {
            let s = settings("");
            let mut w = world(CLASS);
            let mut memo = Memo::default();
            let mut last = first(w.clone(), &s, &mut memo);
            let mut in_use: BTreeMap<ObjectKey, i64> = BTreeMap::new();
            for (step, (kind, index, seed, delete)) in changes.into_iter().enumerate() {
                change(&mut w, kind, index, seed, delete);
                let t = next(w.clone(), &s, &last, &mut memo);
                let mut scratch_memo = Memo::default();
                let scratch = first(w.clone(), &s, &mut scratch_memo);
                prop_assert_eq!(outcome(&t, &memo), outcome(&scratch, &scratch_memo), "step {}", step);
                // Problems are collected from indexes of what has them: both must be complete.
                prop_assert!(memo.troubles_indexed(), "step {}", step);
                prop_assert!(scratch_memo.troubles_indexed(), "step {}", step);
                // The updates reported along the way add up to what is in service.
                for (secret, not_after) in &t.certificate_updates {
                    match not_after {
                        Some(n) => in_use.insert(secret.clone(), *n),
                        None => in_use.remove(secret),
                    };
                }
                let expected: BTreeMap<ObjectKey, i64> =
                    scratch_memo.in_use.iter().map(|(k, v)| (k.clone(), *v)).collect();
                prop_assert_eq!(&in_use, &expected);
                last = t;
            }
        }
    }
}
