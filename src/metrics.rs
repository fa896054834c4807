//! Every metric pylon exports: names, help texts and label sets live here and nowhere else.
//!
//! Labels stay bounded: namespaces, Ingress and Service names, methods (a fixed list) and status
//! classes — never raw paths, hosts from requests or client addresses. Per-route request counters
//! are plain atomics owned by the published snapshot and turned into metric families only at
//! scrape time, so the request path never touches a lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::snapshot::Published;

const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Request counters of one (Ingress, backend) pair, or of requests that matched no route.
#[derive(Debug, Default)]
pub struct RequestCounters {
    requests: [[AtomicU64; STATUS_CLASSES.len()]; METHODS.len()],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl RequestCounters {
    /// Counts one finished request. A status of 0 (no response was sent because the client went
    /// away) is counted as 499, as nginx does.
    pub fn record(&self, method: &http::Method, status: u16, bytes_in: u64, bytes_out: u64) {
        let m = method_index(method);
        let status = if status == 0 { 499 } else { status };
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[m][class].fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
    }

    fn each_nonzero(&self, mut f: impl FnMut(&'static str, &'static str, u64)) {
        for (m, row) in self.requests.iter().enumerate() {
            for (c, count) in row.iter().enumerate() {
                let n = count.load(Ordering::Relaxed);
                if n > 0 {
                    f(METHODS[m], STATUS_CLASSES[c], n);
                }
            }
        }
    }
}

fn method_index(method: &http::Method) -> usize {
    use http::Method as M;
    match *method {
        M::GET => 0,
        M::HEAD => 1,
        M::POST => 2,
        M::PUT => 3,
        M::DELETE => 4,
        M::PATCH => 5,
        M::OPTIONS => 6,
        M::CONNECT => 7,
        M::TRACE => 8,
        _ => 9,
    }
}

/// Label values identifying a [`RequestCounters`]: namespace, Ingress, backend Service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey {
    pub namespace: Arc<str>,
    pub ingress: Arc<str>,
    pub service: Arc<str>,
}

/// All of pylon's metrics, registered in one registry owned by this struct.
pub struct Metrics {
    registry: Registry,
    /// Requests that matched no route (404) or were answered before routing.
    pub unrouted: Arc<RequestCounters>,
    pub request_duration: Histogram,
    pub upstream_duration: Histogram,
    pub upstream_connect_failures: IntCounter,
    pub open_connections: IntGauge,
    pub tls_client_hellos: IntCounterVec,
    pub tls_handshakes: IntCounterVec,
    pub tls_handshake_failures: IntCounter,
    pub tls_session_tickets_accepted: IntCounter,
    pub tls_session_ticket_shared_keys: IntGauge,
    pub proxy_protocol_refused: IntCounterVec,
    pub client_header_timeouts: IntCounter,
    pub client_send_timeouts: IntCounter,
    pub certificate_not_after: GaugeVec,
    pub config_reloads: IntCounter,
    pub config_last_reload: prometheus::Gauge,
    pub config_apply_duration: Histogram,
    pub rejections: IntCounterVec,
    pub problems: IntGaugeVec,
    pub routes: IntGauge,
    pub backends: IntGauge,
    pub endpoints: IntGauge,
    pub certificates: IntGauge,
    pub access_log_dropped: IntCounter,
    pub acme_challenges: IntCounterVec,
    pub acme_orders: IntCounterVec,
    pub acme_failures: IntCounterVec,
    pub certificate_renewal: GaugeVec,
    pub acme_leader: IntGauge,
    pub kubernetes_watch_errors: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Latency buckets from 1 ms to 60 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

impl Metrics {
    /// Creates and registers every metric. `published` feeds the per-route counters.
    pub fn new(published: Published) -> Arc<Self> {
        let registry = Registry::new();
        let reg = |c: Box<dyn Collector>| {
            // Names are unique constants; a clash is a programming error caught by every test run.
            registry.register(c).expect("metric names are unique");
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            reg(Box::new(c.clone()));
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            reg(Box::new(g.clone()));
            g
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            reg(Box::new(c.clone()));
            c
        };
        let histogram = |name: &str, help: &str| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))
                .expect("valid metric");
            reg(Box::new(h.clone()));
            h
        };

        let build_info = IntGaugeVec::new(
            Opts::new("pylon_build_info", "pylon's version; always 1"),
            &["version"],
        )
        .expect("valid metric");
        build_info.with_label_values(&[crate::VERSION]).set(1);
        reg(Box::new(build_info));

        let certificate_not_after = GaugeVec::new(
            Opts::new(
                "pylon_certificate_not_after_timestamp_seconds",
                "Expiry (Unix time) of each certificate in service, by Secret",
            ),
            &["namespace", "secret"],
        )
        .expect("valid metric");
        reg(Box::new(certificate_not_after.clone()));
        let problems = IntGaugeVec::new(
            Opts::new(
                "pylon_config_problems",
                "Problems in the current configuration, by object kind and severity",
            ),
            &["kind", "severity"],
        )
        .expect("valid metric");
        reg(Box::new(problems.clone()));
        let config_last_reload = prometheus::Gauge::new(
            "pylon_config_last_reload_timestamp_seconds",
            "When the last configuration snapshot was published (Unix time)",
        )
        .expect("valid metric");
        reg(Box::new(config_last_reload.clone()));

        let metrics = Self {
            unrouted: Arc::default(),
            request_duration: histogram(
                "pylon_request_duration_seconds",
                "Time from reading the request header to the end of the response",
            ),
            upstream_duration: histogram(
                "pylon_upstream_response_duration_seconds",
                "Time from choosing an upstream to receiving its response header",
            ),
            upstream_connect_failures: counter(
                "pylon_upstream_connect_failures_total",
                "Connections to upstream endpoints that failed",
            ),
            open_connections: gauge(
                "pylon_open_connections",
                "Client connections currently open, from accept to close (TLS handshakes included)",
            ),
            tls_client_hellos: counter_vec(
                "pylon_tls_client_hellos_total",
                "TLS ClientHellos, by which certificate was chosen",
                &["certificate"],
            ),
            tls_handshakes: counter_vec(
                "pylon_tls_handshakes_total",
                "Completed TLS handshakes, by protocol version",
                &["version"],
            ),
            tls_handshake_failures: counter(
                "pylon_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out",
            ),
            tls_session_tickets_accepted: counter(
                "pylon_tls_session_tickets_accepted_total",
                "Session tickets presented by clients that decrypted under a current key (resumed sessions)",
            ),
            client_header_timeouts: counter(
                "pylon_client_header_timeouts_total",
                "Connections closed because an HTTP/1 request head or an HTTP/2 preface did not arrive whole within proxy.client-header-timeout",
            ),
            client_send_timeouts: counter(
                "pylon_client_send_timeouts_total",
                "Responses cut off because the client read nothing of them for proxy.client-send-timeout",
            ),
            proxy_protocol_refused: counter_vec(
                "pylon_proxy_protocol_refused_total",
                "Connections closed because their PROXY protocol header was missing, malformed, too long or late, by reason",
                &["reason"],
            ),
            tls_session_ticket_shared_keys: gauge(
                "pylon_tls_session_ticket_shared_keys",
                "Session-ticket keys read from the Secret shared by the replicas (0: this replica's own keys only)",
            ),
            certificate_not_after,
            config_reloads: counter("pylon_config_reloads_total", "Configuration snapshots published"),
            config_last_reload,
            config_apply_duration: histogram(
                "pylon_config_apply_duration_seconds",
                "Time to translate a changed configuration and publish its snapshot",
            ),
            rejections: counter_vec(
                "pylon_config_rejections_total",
                "Objects, files or annotations rejected or reported, by kind and reason",
                &["kind", "reason"],
            ),
            problems,
            routes: gauge("pylon_routes", "Routes (host and path) in service"),
            backends: gauge(
                "pylon_backends",
                "Distinct backends (Service ports) referenced by routes",
            ),
            endpoints: gauge("pylon_endpoints", "Ready endpoints across all backends"),
            certificates: gauge("pylon_certificates", "Certificates in the SNI index"),
            access_log_dropped: counter(
                "pylon_access_log_dropped_total",
                "Access log lines dropped because the writer could not keep up",
            ),
            acme_challenges: counter_vec(
                "pylon_acme_challenges_total",
                "ACME HTTP-01 challenge requests for hosts pylon manages, by result (answered, bad_token)",
                &["result"],
            ),
            acme_orders: counter_vec(
                "pylon_acme_orders_total",
                "Certificate orders, by issuer and result (issued, failed, rate_limited)",
                &["issuer", "result"],
            ),
            acme_failures: counter_vec(
                "pylon_acme_failures_total",
                "Failed certificate orders, by issuer and reason",
                &["issuer", "reason"],
            ),
            certificate_renewal: {
                let g = GaugeVec::new(
                    Opts::new(
                        "pylon_certificate_renewal_timestamp_seconds",
                        "When pylon will next renew (or retry) each certificate it manages (Unix time)",
                    ),
                    &["namespace", "secret"],
                )
                .expect("valid metric");
                reg(Box::new(g.clone()));
                g
            },
            acme_leader: gauge(
                "pylon_acme_leader",
                "1 while this process is the one that orders certificates",
            ),
            kubernetes_watch_errors: counter_vec(
                "pylon_kubernetes_watch_errors_total",
                "Failed watch requests to the API server, by kind (retried with backoff)",
                &["kind"],
            ),
            registry,
        };
        let routes = RouteCounters {
            published,
            unrouted: metrics.unrouted.clone(),
            descs: RouteCounters::descs(),
        };
        metrics
            .registry
            .register(Box::new(routes))
            .expect("metric names are unique");
        metrics
            .registry
            .register(Box::new(KeyExchanges::new()))
            .expect("metric names are unique");
        Arc::new(metrics)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// The listeners' key exchanges by group ([`crate::tls::kx`]), read at scrape time.
struct KeyExchanges {
    desc: Desc,
}

const KEY_EXCHANGES: &str = "pylon_tls_key_exchanges_total";
const KEY_EXCHANGES_HELP: &str =
    "Key exchanges of TLS handshakes, by group (X25519MLKEM768 is the post-quantum hybrid)";

impl KeyExchanges {
    fn new() -> Self {
        let desc = Desc::new(
            KEY_EXCHANGES.into(),
            KEY_EXCHANGES_HELP.into(),
            vec!["group".into()],
            Default::default(),
        )
        .expect("valid metric");
        Self { desc }
    }
}

impl Collector for KeyExchanges {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let counter = IntCounterVec::new(Opts::new(KEY_EXCHANGES, KEY_EXCHANGES_HELP), &["group"])
            .expect("valid metric");
        for (group, n) in crate::tls::kx::counts() {
            counter.with_label_values(&[group.as_str()]).inc_by(n);
        }
        counter.collect()
    }
}

/// Turns the per-route atomics of the current snapshot into metric families at scrape time.
struct RouteCounters {
    published: Published,
    unrouted: Arc<RequestCounters>,
    descs: Vec<Desc>,
}

const REQUESTS: &str = "pylon_requests_total";
const REQUEST_BYTES: &str = "pylon_request_bytes_total";
const RESPONSE_BYTES: &str = "pylon_response_bytes_total";
const ROUTE_LABELS: [&str; 3] = ["namespace", "ingress", "service"];

impl RouteCounters {
    fn descs() -> Vec<Desc> {
        let desc = |name: &str, help: &str, extra: &[&str]| {
            let labels = ROUTE_LABELS.iter().chain(extra).map(|s| s.to_string()).collect();
            Desc::new(name.into(), help.into(), labels, Default::default()).expect("valid metric")
        };
        vec![
            desc(
                REQUESTS,
                "Requests by route, method and status class",
                &["method", "status"],
            ),
            desc(REQUEST_BYTES, "Request body bytes received, by route", &[]),
            desc(RESPONSE_BYTES, "Response body bytes sent, by route", &[]),
        ]
    }
}

impl Collector for RouteCounters {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut labels = ROUTE_LABELS.to_vec();
        labels.extend(["method", "status"]);
        let requests =
            IntCounterVec::new(Opts::new(REQUESTS, &self.descs[0].help), &labels).expect("valid metric");
        let bytes_in = IntCounterVec::new(Opts::new(REQUEST_BYTES, &self.descs[1].help), &ROUTE_LABELS)
            .expect("valid metric");
        let bytes_out = IntCounterVec::new(Opts::new(RESPONSE_BYTES, &self.descs[2].help), &ROUTE_LABELS)
            .expect("valid metric");
        let snapshot = self.published.load();
        // Routes of one Ingress and Service share their counters: each is rendered once.
        let mut seen = std::collections::HashSet::new();
        let rows = snapshot
            .routes
            .routes()
            .filter(|r| seen.insert(Arc::as_ptr(&r.counters)))
            .map(|r| {
                let labels = [&*r.ingress.namespace, &*r.ingress.name, &*r.backend.id.service];
                (labels, &*r.counters)
            })
            .chain(std::iter::once((["", "", ""], &*self.unrouted)));
        for (route, counters) in rows {
            counters.each_nonzero(|method, class, n| {
                requests
                    .with_label_values(&[route[0], route[1], route[2], method, class])
                    .inc_by(n);
            });
            let (i, o) = (
                counters.bytes_in.load(Ordering::Relaxed),
                counters.bytes_out.load(Ordering::Relaxed),
            );
            if i > 0 {
                bytes_in.with_label_values(&route).inc_by(i);
            }
            if o > 0 {
                bytes_out.with_label_values(&route).inc_by(o);
            }
        }
        let mut families = requests.collect();
        families.extend(bytes_in.collect());
        families.extend(bytes_out.collect());
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_with_bounded_labels() {
        let published = Published::default();
        let metrics = Metrics::new(published);
        metrics.unrouted.record(&http::Method::GET, 404, 0, 9);
        metrics
            .unrouted
            .record(&http::Method::from_bytes(b"BREW").unwrap(), 0, 3, 0);
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(
            text.contains(
                r#"pylon_requests_total{ingress="",method="GET",namespace="",service="",status="4xx"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"method="OTHER""#), "{text}");
        assert!(text.contains(r#"pylon_response_bytes_total{ingress="",namespace="",service=""} 9"#));
        assert!(text.contains("pylon_build_info"));
    }
}
