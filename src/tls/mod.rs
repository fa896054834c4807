//! TLS: PEM parsing and validation, the certificate index and the rustls SNI resolver.
//!
//! Certificates are parsed and key-checked by [`Certificate::from_pem`] before they reach an
//! index; the resolver only looks names up in the published snapshot (no I/O, no locks).

mod certificate;
mod index;
pub mod kx;
mod resolver;
pub mod tickets;

pub use certificate::{Certificate, Error, self_signed};
pub use index::{CertIndex, CertIndexBuilder, Matched};
pub use resolver::SniResolver;
pub use tickets::SessionTickets;

use std::sync::Arc;

/// The crypto provider of pylon's TLS listeners and of the certificates' private keys:
/// aws-lc-rs.
///
/// On CPUs with AVX-512 IFMA its RSA signatures take less than half the time of ring's (an
/// RSA-2048 handshake is mostly that signature); ECDSA and the ciphers are on a par or faster.
/// It also offers the post-quantum hybrid key exchange X25519MLKEM768 (after X25519, P-256 and
/// P-384 in pylon's preference; rustls follows the client's order, and current browsers put it
/// first). Each group counts its key exchanges ([`kx::counts`]). pylon's clients (ACME,
/// Kubernetes API) keep ring.
pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::CryptoProvider {
        kx_groups: kx::groups(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    }
}

/// Loads a certificate's private key with [`provider`]'s key loader, which is built once rather
/// than a whole provider per certificate (10 000 hosts mean 10 000 keys).
pub(crate) fn load_private_key(
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
    static KEYS: std::sync::LazyLock<&'static dyn rustls::crypto::KeyProvider> =
        std::sync::LazyLock::new(|| provider().key_provider);
    KEYS.load_private_key(key)
}

/// The rustls configuration of pylon's TLS listeners: TLS 1.2 and 1.3 with [`provider`],
/// certificates chosen by `resolver`, ALPN `h2` then `http/1.1`, and session resumption as
/// below (`tls.session-resumption`).
///
/// `tickets` `Some`: stateless session tickets under `tickets`' keys, so any client can resume,
/// on any replica when the keys are shared. (rustls's default keeps sessions in a 256-entry
/// cache and hands out two tickets per connection, so on a busy listener a client's session is
/// gone after about 128 other connections.) TLS 1.3 resumption still runs an (EC)DHE exchange,
/// no 0-RTT data is accepted, and rustls resumes a session only for the server name it was made
/// for. TLS 1.2 clients without ticket support keep rustls's session cache.
///
/// `None`: no tickets and no cache; every connection makes a full handshake.
pub fn server_config(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    tickets: Option<Arc<SessionTickets>>,
) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    match tickets {
        Some(tickets) => config.ticketer = tickets,
        None => {
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
    }
    Arc::new(config)
}
