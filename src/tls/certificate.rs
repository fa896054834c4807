//! A certificate chain and its private key, parsed and checked once.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("tls.crt holds no PEM certificate")]
    NoCertificate,
    #[error("tls.crt is not valid PEM: {0}")]
    CertificatePem(String),
    #[error("tls.crt is not a valid X.509 certificate: {0}")]
    CertificateDer(String),
    #[error("tls.key holds no PEM private key")]
    NoKey,
    #[error("tls.key is not a usable private key: {0}")]
    Key(String),
    #[error("tls.key does not match the certificate in tls.crt")]
    KeyMismatch,
}

impl Error {
    /// A short, bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::NoCertificate | Self::CertificatePem(_) | Self::CertificateDer(_) => "bad_certificate",
            Self::NoKey | Self::Key(_) => "bad_key",
            Self::KeyMismatch => "key_mismatch",
        }
    }
}

/// A validated certificate, ready for the resolver.
#[derive(Clone, Debug)]
pub struct Certificate {
    pub key: Arc<CertifiedKey>,
    /// Start of validity of the leaf, Unix seconds.
    pub not_before: i64,
    /// Expiry of the leaf, Unix seconds.
    pub not_after: i64,
    /// DNS names of the leaf's subjectAltName extension.
    pub dns_names: Vec<String>,
    /// Serial number of the leaf, hexadecimal.
    pub serial: String,
}

impl Certificate {
    /// Parses `tls.crt` (leaf first, then intermediates) and `tls.key` (PKCS#8, PKCS#1 or SEC1),
    /// and checks that the key belongs to the leaf.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, Error> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::CertificatePem(e.to_string()))?;
        let leaf = chain.first().ok_or(Error::NoCertificate)?;
        let (_, x509) = X509Certificate::from_der(leaf).map_err(|e| Error::CertificateDer(e.to_string()))?;
        let not_before = x509.validity().not_before.timestamp();
        let not_after = x509.validity().not_after.timestamp();
        let serial = x509.raw_serial_as_string().replace(':', "");
        let dns_names = match x509.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };

        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => Error::NoKey,
            other => Error::Key(other.to_string()),
        })?;
        let signing_key = super::load_private_key(key).map_err(|e| Error::Key(e.to_string()))?;
        let certified = CertifiedKey::new(chain, signing_key);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(_)) => return Err(Error::KeyMismatch),
            Err(e) => return Err(Error::Key(e.to_string())),
        }
        Ok(Self {
            key: Arc::new(certified),
            not_before,
            not_after,
            dns_names,
            serial,
        })
    }

    /// Whether the leaf's subjectAltName covers `host` (exactly or by a `*.` wildcard).
    pub fn covers(&self, host: &str) -> bool {
        self.dns_names.iter().any(|name| match name.strip_prefix("*.") {
            Some(parent) => crate::routing::host::parent(host) == Some(parent),
            None => name == host,
        })
    }
}

/// A self-signed ECDSA P-256 certificate for `name`, valid for ten years; pylon's default
/// certificate when no Secret is configured.
pub fn self_signed(name: &str) -> Result<Certificate, Error> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Error::Key(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])
        .map_err(|e| Error::CertificateDer(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pylon default certificate");
    let now = time_now();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    let cert = params
        .self_signed(&key)
        .map_err(|e| Error::CertificateDer(e.to_string()))?;
    Certificate::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn pair(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn parses_a_matching_pair() {
        let (cert, key) = pair(&["a.example.com", "*.b.example.com"]);
        let c = Certificate::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
        assert_eq!(c.dns_names, ["a.example.com", "*.b.example.com"]);
        assert!(c.covers("a.example.com"));
        assert!(c.covers("x.b.example.com"));
        assert!(!c.covers("b.example.com"));
        assert!(c.not_after > 0);
        assert!(!c.serial.is_empty());
    }

    #[test]
    fn reports_each_kind_of_bad_input() {
        let (cert, key) = pair(&["a.example.com"]);
        let (_, other_key) = pair(&["a.example.com"]);
        let err = |c: &str, k: &str| Certificate::from_pem(c.as_bytes(), k.as_bytes()).unwrap_err();
        assert_eq!(err(&cert, &other_key), Error::KeyMismatch);
        assert_eq!(err("", &key), Error::NoCertificate);
        assert_eq!(err(&cert, ""), Error::NoKey);
        assert!(matches!(
            err(
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
                &key
            ),
            Error::CertificatePem(_)
        ));
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(err(garbage, &key), Error::CertificateDer(_)));
    }

    /// DER bytes as PEM of the given label.
    fn pem(label: &str, der: &[u8]) -> String {
        use base64::Engine as _;
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// A Secret whose certificate or key bytes are damaged: an error, never a panic; and
        /// a pair that still loads has a key that matches its certificate.
        #[test]
        fn damaged_pairs_are_refused_or_consistent(
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), any::<bool>()), 1..6),
            in_key in any::<bool>(),
        ) {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let cert = rcgen::CertificateParams::new(vec!["a.example.com".to_owned()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let (mut cert_der, mut key_der) = (cert.der().to_vec(), key.serialize_der());
            let target = if in_key { &mut key_der } else { &mut cert_der };
            for (at, byte, truncate) in edits {
                if target.is_empty() {
                    break;
                }
                let i = at.index(target.len());
                if truncate { target.truncate(i) } else { target[i] = byte }
            }
            let loaded = Certificate::from_pem(
                pem("CERTIFICATE", &cert_der).as_bytes(),
                pem("PRIVATE KEY", &key_der).as_bytes(),
            );
            if let Ok(c) = loaded {
                prop_assert!(c.key.keys_match().is_ok());
            }
        }
    }

    #[test]
    fn generates_a_default_certificate() {
        let c = self_signed("pylon.invalid").unwrap();
        assert_eq!(c.dns_names, ["pylon.invalid"]);
    }
}
