//! Translate time: 10 000 Ingresses (each with its Service and EndpointSlice; one in ten with a
//! TLS Secret), from scratch ("cold": every certificate parsed), and the next translation after
//! one change, as the control loop makes it: an Ingress edited ("ingress_changed"), an
//! EndpointSlice's endpoints changed ("endpoints_changed").
//!
//! Run: `cargo bench --bench translate`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend,
    IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pylon::config::{Config, FileConfig, Overrides};
use pylon::snapshot::Snapshot;
use pylon::source::{ObjectKey, World};
use pylon::translate::{Memo, Settings, translate};

// The allocator pylon runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const INGRESSES: usize = 10_000;

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some("default".to_owned()),
        ..ObjectMeta::default()
    }
}

fn world() -> World {
    let mut w = World::default();
    let key = |n: &str| ObjectKey::new("default", n);
    let tls_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    for i in 0..INGRESSES {
        let svc = format!("svc-{i}");
        let host = format!("app-{i}.example.com");
        w.services.insert(
            key(&svc),
            Arc::new(Service {
                metadata: meta(&svc),
                spec: Some(ServiceSpec {
                    ports: Some(vec![ServicePort {
                        name: Some("http".into()),
                        port: 80,
                        ..ServicePort::default()
                    }]),
                    ..ServiceSpec::default()
                }),
                ..Service::default()
            }),
        );
        let mut slice_meta = meta(&format!("{svc}-abcde"));
        slice_meta.labels = Some(BTreeMap::from([(
            "kubernetes.io/service-name".to_owned(),
            svc.clone(),
        )]));
        w.endpoint_slices.insert(
            key(&format!("{svc}-abcde")),
            Arc::new(EndpointSlice {
                metadata: slice_meta,
                address_type: "IPv4".into(),
                ports: Some(vec![EndpointPort {
                    name: Some("http".into()),
                    port: Some(8080),
                    ..EndpointPort::default()
                }]),
                endpoints: (0..3)
                    .map(|e| Endpoint {
                        addresses: vec![format!("10.{}.{}.{e}", i / 250, i % 250)],
                        ..Endpoint::default()
                    })
                    .collect(),
            }),
        );
        let backend = IngressBackend {
            service: Some(IngressServiceBackend {
                name: svc.clone(),
                port: Some(ServiceBackendPort {
                    number: Some(80),
                    name: None,
                }),
            }),
            resource: None,
        };
        let path = |p: &str, t: &str| HTTPIngressPath {
            path: Some(p.into()),
            path_type: t.into(),
            backend: backend.clone(),
        };
        let tls = (i % 10 == 0).then(|| {
            let secret = format!("tls-{i}");
            let cert = rcgen::CertificateParams::new(vec![host.clone()])
                .expect("params")
                .self_signed(&tls_key)
                .expect("cert");
            w.secrets.insert(
                key(&secret),
                Arc::new(Secret {
                    metadata: meta(&secret),
                    type_: Some("kubernetes.io/tls".into()),
                    data: Some(BTreeMap::from([
                        ("tls.crt".to_owned(), ByteString(cert.pem().into_bytes())),
                        (
                            "tls.key".to_owned(),
                            ByteString(tls_key.serialize_pem().into_bytes()),
                        ),
                    ])),
                    ..Secret::default()
                }),
            );
            vec![IngressTLS {
                hosts: Some(vec![host.clone()]),
                secret_name: Some(secret),
            }]
        });
        w.ingresses.insert(
            key(&format!("ing-{i}")),
            Arc::new(Ingress {
                metadata: meta(&format!("ing-{i}")),
                spec: Some(IngressSpec {
                    ingress_class_name: Some("pylon".into()),
                    rules: Some(vec![IngressRule {
                        host: Some(host),
                        http: Some(HTTPIngressRuleValue {
                            paths: vec![
                                path("/", "Prefix"),
                                path("/api", "Prefix"),
                                path("/healthz", "Exact"),
                            ],
                        }),
                    }]),
                    tls,
                    ..IngressSpec::default()
                }),
                ..Ingress::default()
            }),
        );
    }
    w
}

fn bench(c: &mut Criterion) {
    let config = Config::build(
        FileConfig::parse("[ingress]\nclasses = [\"pylon\"]").expect("toml"),
        &Overrides::default(),
    )
    .expect("config");
    let settings = Settings::new(
        &config.ingress,
        &config.acme,
        pylon::tls::self_signed("bench.invalid").expect("cert"),
    );
    let world = Arc::new(world());
    let first = translate(&world, &settings, &Snapshot::default(), &mut Memo::default());
    assert_eq!(first.snapshot.routes.len(), INGRESSES * 3);
    assert!(first.problems.is_empty(), "{:?}", &first.problems[..1]);

    // Two versions of one object; each iteration swaps to the other, so every translation
    // sees exactly one change.
    let edited = |w: &World, n: usize| {
        let mut w = w.clone();
        let key = ObjectKey::new("default", "ing-5");
        let mut ing = (*w.ingresses[&key]).clone();
        ing.metadata.labels = Some(BTreeMap::from([("n".to_owned(), n.to_string())]));
        w.ingresses.insert(key, Arc::new(ing));
        Arc::new(w)
    };
    let scaled = |w: &World, n: usize| {
        let mut w = w.clone();
        let key = ObjectKey::new("default", "svc-5-abcde");
        let mut slice = (*w.endpoint_slices[&key]).clone();
        slice.endpoints.truncate(1 + n % 3);
        w.endpoint_slices.insert(key, Arc::new(slice));
        Arc::new(w)
    };

    let mut group = c.benchmark_group("translate_10000_ingresses");
    group.sample_size(10);
    group.bench_function("cold", |b| {
        b.iter(|| {
            black_box(translate(
                &world,
                &settings,
                &Snapshot::default(),
                &mut Memo::default(),
            ))
        })
    });
    for (name, change) in [
        ("ingress_changed", &edited as &dyn Fn(&World, usize) -> Arc<World>),
        ("endpoints_changed", &scaled),
    ] {
        let worlds = [change(&world, 0), change(&world, 1)];
        let mut memo = Memo::default();
        let mut last = translate(&worlds[1], &settings, &Snapshot::default(), &mut memo).snapshot;
        let mut n = 0;
        group.bench_function(name, |b| {
            // The old snapshot is freed off the configuration thread in pylon too: here it is
            // dropped outside the measurement.
            b.iter_with_large_drop(|| {
                n += 1;
                let next = translate(&worlds[n % 2], &settings, &last, &mut memo);
                black_box(&next.problems);
                std::mem::replace(&mut last, next.snapshot)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
