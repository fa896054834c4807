//! pylon: an ingress reverse proxy for Kubernetes.
//!
//! pylon reads Ingress, IngressClass, Service, EndpointSlice and TLS Secret objects — from a
//! directory of YAML manifests or from the API server — and proxies HTTP/1.1 and HTTP/2
//! to the pods behind them, terminating TLS with rustls.
//!
//! # Code map
//!
//! Data flows in one direction:
//!
//! ```text
//!  source (files | kubernetes) ──World──▶ translate (pure) ──Snapshot──▶ ArcSwap ──▶ proxy, tls resolver
//!        ▲                                     ├──▶ problems (logged, counted)
//!        └── Secrets ◀── acme manager ◀────────┘ certificates wanted
//! ```
//!
//! - [`config`]: the TOML file and command-line flags, validated into a [`config::Config`].
//! - [`source`]: turns the outside world into a [`source::World`] of k8s-openapi objects.
//!   [`source::files`] reads manifests from directories and watches them;
//!   [`source::kubernetes`] runs one reflector per kind against the API server;
//!   [`source::names`] looks up the DNS names of ExternalName Services off the request path.
//! - [`translate`]: the pure function from `World` (and a memo of the last run) to
//!   [`snapshot::Snapshot`]. It knows Ingress v1 semantics and parses annotations into typed
//!   values; bad objects become [`problem::Problem`]s.
//! - [`routing`]: the route table (host → path → backend) and pylon's own name types.
//! - [`tls`]: PEM parsing, the certificate index, the rustls SNI resolver and the keys of
//!   session tickets.
//! - [`acme`]: certificates from cert-manager issuers (ACME HTTP-01, self-signed, CA): issuer
//!   checks, stateless challenge answers, and the manager that orders, renews and stores
//!   certificates as Secrets, which reach the resolver through the source like any Secret.
//! - [`snapshot`]: everything the request path reads, published with a single store.
//! - [`control`]: the loop that translates each new `World` (with the names resolved beside
//!   it) and publishes the result.
//! - [`recover`]: a panic in one translation or one certificate's work is caught, logged and
//!   counted; the loop that ran it goes on.
//! - [`cluster`]: writes to the API server: Secrets (server-side apply), the Lease that elects
//!   the certificate orderer, Ingress status, Events, and the Secret through which replicas
//!   share their session-ticket keys.
//! - [`proxy`]: the pingora `ProxyHttp` implementation, and pylon's own listeners (accept,
//!   PROXY protocol header, TLS handshake, keep-alive loop) in front of it.
//! - [`admin`]: `/metrics`, `/healthz`, `/readyz` on their own listener.
//! - [`metrics`]: every metric name and label set.
//! - [`access_log`]: one JSON line per request, written off the request path.
//! - [`server`]: wiring of the pingora server, listeners, signals and drain.
//!
//! # Architecture invariants
//!
//! 1. The request path never awaits the control plane and takes no lock for routing or
//!    certificates: it loads the current [`snapshot::Snapshot`] from an `ArcSwap` and does hash
//!    lookups.
//! 2. One logical change is one swap: routes, the backends they reference and the certificates
//!    are in one snapshot, published with one `store`.
//! 3. Translate is pure: the same world, config, previous snapshot and memo give the same result,
//!    and translating change by change gives what translating from scratch gives (a property
//!    test checks it); a change costs work in proportion to the hosts it touches. A bad object is
//!    rejected, logged and counted, never fatal; the last good version of an object keeps serving.
//!    Should some input still reach a panic, [`recover`] confines it to that translation or that
//!    certificate: the snapshot in service stays and the loops go on.
//! 4. `/readyz` turns true only after the first snapshot is published and the traffic ports
//!    accept connections, and false first on shutdown.
//! 5. The certificate resolver does no I/O: certificates are parsed and key-checked before they are
//!    published; a bad certificate leaves the previous one in place.
//! 6. Only `config`, `source`, `translate` and `acme` know serde and Kubernetes types; `routing`,
//!    `tls` and `proxy` see pylon's own types.
//! 7. pylon never overwrites or deletes a Secret it did not create (its own carry the label
//!    `app.kubernetes.io/managed-by: pylon`).
//! 8. Orders are idempotent across restarts and leader changes: the state of every certificate
//!    (order in flight, failures, next attempt) is read back from its Secret before acting.

pub mod access_log;
pub mod acme;
pub mod admin;
pub mod check;
pub mod cluster;
pub mod config;
pub mod control;
pub mod logging;
pub mod metrics;
pub mod problem;
pub mod proxy;
pub mod recover;
pub mod routing;
pub mod server;
pub mod snapshot;
pub mod source;
pub mod tls;
pub mod translate;

/// The version printed by `pylon version` and exported as a metric label.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
