//! Certificates from issuers, in process: cert-manager `ClusterIssuer`/`Issuer` objects read
//! unchanged (ACME with HTTP-01, self-signed, CA), HTTP-01 answered statelessly by every replica,
//! orders placed by one process at a time, results stored as `kubernetes.io/tls` Secrets that the
//! source reads back — the only way a certificate reaches the TLS resolver.

pub mod challenge;
pub mod client;
pub mod issuer;
pub mod keys;
pub mod local;
pub mod lock;
pub mod manager;
pub mod order;
pub mod request;
pub mod schedule;
pub mod state;
pub mod store;
