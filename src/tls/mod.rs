//! TLS: PEM parsing and validation, the certificate index and the rustls SNI resolver.
//!
//! Certificates are parsed and key-checked by [`Certificate::from_pem`] before they reach an
//! index; the resolver only looks names up in the published snapshot (no I/O, no locks).

mod certificate;
mod index;
mod resolver;

pub use certificate::{Certificate, Error, self_signed};
pub use index::{CertIndex, CertIndexBuilder, Matched};
pub use resolver::{ConnectionInfo, HandshakeCallbacks, SniResolver};
