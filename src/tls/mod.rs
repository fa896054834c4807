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
///
/// ECDSA keys go straight to the ECDSA loader. The general loader tries RSA first, and
/// aws-lc parses and checks the whole key on each try (a P-256 multiplication for an ECDSA
/// key).
pub(crate) fn load_private_key(
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
    static KEYS: std::sync::LazyLock<&'static dyn rustls::crypto::KeyProvider> =
        std::sync::LazyLock::new(|| provider().key_provider);
    if is_ecdsa(&key)
        && let Ok(key) = rustls::crypto::aws_lc_rs::sign::any_ecdsa_type(&key)
    {
        return Ok(key);
    }
    KEYS.load_private_key(key)
}

/// Whether `key` is an elliptic-curve key: SEC1, or PKCS#8 with the algorithm
/// id-ecPublicKey, whose identifier comes within the first bytes, after the version.
fn is_ecdsa(key: &rustls::pki_types::PrivateKeyDer<'_>) -> bool {
    /// The DER of the object identifier 1.2.840.10045.2.1.
    const ID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    match key {
        rustls::pki_types::PrivateKeyDer::Sec1(_) => true,
        rustls::pki_types::PrivateKeyDer::Pkcs8(der) => {
            der.secret_pkcs8_der().get(..24).is_some_and(|head| {
                head.windows(ID_EC_PUBLIC_KEY.len())
                    .any(|w| w == ID_EC_PUBLIC_KEY)
            })
        }
        _ => false,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::keys::KeySpec;
    use rustls::SignatureAlgorithm;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer};

    #[test]
    fn each_kind_of_key_loads_with_its_algorithm() {
        for (spec, ecdsa, algorithm) in [
            (KeySpec::EcdsaP256, true, SignatureAlgorithm::ECDSA),
            (KeySpec::EcdsaP384, true, SignatureAlgorithm::ECDSA),
            (KeySpec::Ed25519, false, SignatureAlgorithm::ED25519),
            (KeySpec::Rsa(2048), false, SignatureAlgorithm::RSA),
        ] {
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(spec.generate().unwrap()));
            assert_eq!(is_ecdsa(&key), ecdsa, "{spec}");
            assert_eq!(load_private_key(key).unwrap().algorithm(), algorithm, "{spec}");
        }

        use rsa::pkcs1::EncodeRsaPrivateKey;
        let rsa = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).unwrap();
        let key = PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(
            rsa.to_pkcs1_der().unwrap().as_bytes().to_vec(),
        ));
        assert!(!is_ecdsa(&key));
        assert_eq!(
            load_private_key(key).unwrap().algorithm(),
            SignatureAlgorithm::RSA
        );

        let garbage = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]));
        assert!(load_private_key(garbage).is_err());
    }
}
