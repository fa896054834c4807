//! The request path's lookups: route table (host → path → route) and SNI certificate index, with
//! 10, 1 000 and 10 000 hosts. The cost should stay flat as the number of hosts grows.
//!
//! Run: `cargo bench --bench lookup`

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use pylon::routing::{
    Backend, BackendId, HostPattern, IngressRef, PathKind, PathMatch, Policy, PortRef, Route, RouteTable,
    RouteTableBuilder,
};
use pylon::tls::{CertIndex, CertIndexBuilder};

const SIZES: [usize; 3] = [10, 1_000, 10_000];

fn host(i: usize) -> String {
    format!("app-{i}.team-{}.example.com", i % 97)
}

fn table(hosts: usize) -> RouteTable {
    let mut builder = RouteTableBuilder::default();
    let addr: SocketAddr = ([10, 0, 0, 1], 8080).into();
    for i in 0..hosts {
        let backend = Arc::new(Backend::new(
            BackendId {
                namespace: "default".into(),
                service: format!("svc-{i}").into(),
                port: PortRef::Number(80),
            },
            vec![addr],
        ));
        let ingress = Arc::new(IngressRef {
            namespace: "default".into(),
            name: format!("ing-{i}").into(),
        });
        let h = HostPattern::parse(Some(&host(i))).expect("valid host");
        for (kind, path) in [
            (PathKind::Prefix, "/"),
            (PathKind::Prefix, "/api"),
            (PathKind::Exact, "/healthz"),
            (PathKind::Prefix, "/static/assets"),
        ] {
            let route = Arc::new(Route {
                ingress: ingress.clone(),
                backend: backend.clone(),
                policy: Policy::default(),
                counters: Arc::default(),
            });
            builder
                .add(
                    &h,
                    &PathMatch::parse(kind, Some(path)).expect("valid path"),
                    route,
                )
                .expect("no conflict");
        }
    }
    builder.build()
}

fn certs(hosts: usize) -> CertIndex {
    let cert = pylon::tls::self_signed("bench.invalid").expect("certificate");
    let mut builder = CertIndexBuilder::default();
    for i in 0..hosts {
        let name = if i % 10 == 0 {
            format!("*.wild-{i}.example.com")
        } else {
            host(i)
        };
        let _ = builder.add(&HostPattern::parse(Some(&name)).expect("valid"), cert.key.clone());
    }
    builder.set_default(cert.key);
    builder.build()
}

fn route_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    for n in SIZES {
        let table = table(n);
        let requests: Vec<(String, &str)> = (0..256)
            .map(|i| {
                let h = host((i * 7919) % n);
                let path = [
                    "/",
                    "/api/v1/users/42",
                    "/healthz",
                    "/static/assets/app.js",
                    "/other",
                ][i % 5];
                (h, path)
            })
            .collect();
        group.bench_with_input(BenchmarkId::from_parameter(n), &requests, |b, requests| {
            let mut i = 0;
            b.iter(|| {
                let (h, p) = &requests[i % requests.len()];
                i += 1;
                black_box(table.find(Some(h), p))
            });
        });
    }
    group.finish();
}

fn sni_resolution(c: &mut Criterion) {
    let mut group = c.benchmark_group("sni_resolution");
    for n in SIZES {
        let index = certs(n);
        let names: Vec<String> = (0..256)
            .map(|i| {
                let k = (i * 7919) % n;
                match i % 4 {
                    0 => format!("x.wild-{}.example.com", k - k % 10),
                    1 => "unknown.example.org".to_owned(),
                    _ => host(k),
                }
            })
            .collect();
        group.bench_with_input(BenchmarkId::from_parameter(n), &names, |b, names| {
            let mut i = 0;
            b.iter(|| {
                let name = &names[i % names.len()];
                i += 1;
                black_box(index.find(Some(name)))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, route_lookup, sni_resolution);
criterion_main!(benches);
