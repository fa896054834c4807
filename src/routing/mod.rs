//! Routing: pylon's own types for hosts, paths and backends, and the immutable route table.
//!
//! Nothing here knows Kubernetes or serde types; `translate` builds these values once per change.

mod backend;
pub mod cidr;
pub mod host;
pub mod path;
mod shared;
mod table;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use backend::{Backend, BackendId, PortRef, Unavailable};
pub use cidr::Cidr;
pub use host::{HostError, HostPattern, Hostname};
pub use path::{PathError, PathKind, PathMatch};
pub use shared::SharedMap;
pub use table::{Entry, HostRoutes, RouteTable, RouteTableBuilder};

use crate::metrics::RequestCounters;

/// `namespace/name` of the Ingress a route comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IngressRef {
    pub namespace: Box<str>,
    pub name: Box<str>,
}

impl fmt::Display for IngressRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What applies to requests of a route, from its Ingress's annotations and TLS section.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Plain-HTTP requests get a 308 to HTTPS.
    pub redirect_https: bool,
    /// Request body limit; `None` means the configured default, `Some(0)` no limit.
    pub max_request_body: Option<u64>,
    /// Upstream timeouts; `None` means the configured default.
    pub connect_timeout: Option<Duration>,
    pub read_timeout: Option<Duration>,
    pub write_timeout: Option<Duration>,
}

/// What a matched request needs: where to send it and the policy that applies.
#[derive(Debug)]
pub struct Route {
    pub ingress: Arc<IngressRef>,
    pub backend: Arc<Backend>,
    pub policy: Policy,
    /// Request counters of this (ingress, backend) pair, kept across snapshots.
    pub counters: Arc<RequestCounters>,
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use proptest::prelude::*;

    use super::*;

    fn route(tag: usize) -> Arc<Route> {
        let id = BackendId {
            namespace: "ns".into(),
            service: format!("svc{tag}").into(),
            port: PortRef::Number(80),
        };
        let addr: SocketAddr = ([10, 0, 0, 1], 80).into();
        Arc::new(Route {
            ingress: Arc::new(IngressRef {
                namespace: "ns".into(),
                name: format!("ing{tag}").into(),
            }),
            backend: Arc::new(Backend::new(id, vec![addr])),
            policy: Policy::default(),
            counters: Arc::default(),
        })
    }

    fn tag(route: Option<&Arc<Route>>) -> Option<String> {
        route.map(|r| r.ingress.name.to_string())
    }

    /// The obvious, slow reading of Ingress semantics, to check the table against.
    fn naive(
        rules: &[(HostPattern, PathMatch, usize)],
        default: Option<usize>,
        host: Option<&str>,
        path: &str,
    ) -> Option<String> {
        let host_rules: Vec<_> = {
            let exact: Vec<_> = rules
                .iter()
                .filter(|(h, ..)| matches!(h, HostPattern::Exact(_)) && host.is_some_and(|x| h.matches(x)))
                .collect();
            let wildcard: Vec<_> = rules
                .iter()
                .filter(|(h, ..)| matches!(h, HostPattern::Wildcard(_)) && host.is_some_and(|x| h.matches(x)))
                .collect();
            let any: Vec<_> = rules.iter().filter(|(h, ..)| *h == HostPattern::Any).collect();
            if !exact.is_empty() {
                exact
            } else if !wildcard.is_empty() {
                wildcard
            } else {
                any
            }
        };
        let best = host_rules
            .iter()
            .filter(|(_, p, _)| p.matches(path))
            .max_by_key(|(_, p, _)| (p.kind() == PathKind::Exact, p.key().len()));
        best.map(|(_, _, t)| format!("ing{t}"))
            .or(default.map(|t| format!("ing{t}")))
    }

    fn host_strategy() -> impl Strategy<Value = HostPattern> {
        prop_oneof![
            Just(HostPattern::Any),
            prop::sample::select(vec![
                "a.example.com",
                "b.example.com",
                "example.com",
                "x.a.example.com"
            ])
            .prop_map(|h| HostPattern::parse(Some(h)).unwrap()),
            prop::sample::select(vec!["*.example.com", "*.a.example.com"])
                .prop_map(|h| HostPattern::parse(Some(h)).unwrap()),
        ]
    }

    fn segment() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", "ab", "api", "v1"])
    }

    fn path_strategy() -> impl Strategy<Value = PathMatch> {
        (
            prop::bool::ANY,
            prop::collection::vec(segment(), 0..4),
            prop::bool::ANY,
        )
            .prop_map(|(exact, segs, slash)| {
                let mut p = format!("/{}", segs.join("/"));
                if slash && !segs.is_empty() {
                    p.push('/');
                }
                let kind = if exact { PathKind::Exact } else { PathKind::Prefix };
                PathMatch::parse(kind, Some(&p)).unwrap()
            })
    }

    fn request_strategy() -> impl Strategy<Value = (Option<&'static str>, String)> {
        let host = prop::option::weighted(
            0.9,
            prop::sample::select(vec![
                "a.example.com",
                "b.example.com",
                "c.example.com",
                "example.com",
                "x.a.example.com",
                "y.x.a.example.com",
                "other.org",
            ]),
        );
        let path = (prop::collection::vec(segment(), 0..5), prop::bool::ANY).prop_map(|(segs, slash)| {
            let mut p = format!("/{}", segs.join("/"));
            if slash && !segs.is_empty() {
                p.push('/');
            }
            p
        });
        (host, path)
    }

    proptest! {
        #[test]
        fn table_agrees_with_naive_matcher(
            rules in prop::collection::vec((host_strategy(), path_strategy()), 0..24),
            has_default in prop::bool::ANY,
            requests in prop::collection::vec(request_strategy(), 1..32),
        ) {
            let mut builder = RouteTableBuilder::default();
            let mut accepted = Vec::new();
            for (i, (host, path)) in rules.into_iter().enumerate() {
                if builder.add(&host, &path, route(i)).is_ok() {
                    accepted.push((host, path, i));
                }
            }
            let default = has_default.then_some(999);
            if let Some(d) = default {
                builder.set_default(route(d)).unwrap();
            }
            let table = builder.build();
            for (host, path) in requests {
                prop_assert_eq!(
                    tag(table.find(host, &path)),
                    naive(&accepted, default, host, &path),
                    "host {:?} path {:?}", host, path
                );
            }
        }
    }

    #[test]
    fn first_route_for_a_host_and_path_wins() {
        let mut builder = RouteTableBuilder::default();
        let host = HostPattern::parse(Some("a.example.com")).unwrap();
        let path = PathMatch::parse(PathKind::Prefix, Some("/api/")).unwrap();
        builder.add(&host, &path, route(1)).unwrap();
        let same = PathMatch::parse(PathKind::Prefix, Some("/api")).unwrap();
        let loser = builder.add(&host, &same, route(2)).unwrap_err();
        assert_eq!(&*loser.ingress.name, "ing1");
        let exact = PathMatch::parse(PathKind::Exact, Some("/api")).unwrap();
        builder.add(&host, &exact, route(3)).unwrap();
        let table = builder.build();
        assert_eq!(
            tag(table.find(Some("a.example.com"), "/api")).as_deref(),
            Some("ing3")
        );
        assert_eq!(
            tag(table.find(Some("a.example.com"), "/api/x")).as_deref(),
            Some("ing1")
        );
        assert_eq!(tag(table.find(Some("a.example.com"), "/apix")), None);
        assert_eq!(table.len(), 2);
    }
}
