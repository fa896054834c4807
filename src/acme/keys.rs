//! Private keys: certificate keys by algorithm, and ACME account keys (P-256) with their JWK
//! thumbprint, which is all a replica needs to answer HTTP-01 challenges.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// The key of an issued certificate (`cert-manager.io/private-key-algorithm` and `-size`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KeySpec {
    #[default]
    EcdsaP256,
    EcdsaP384,
    Rsa(u32),
    Ed25519,
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EcdsaP256 => f.write_str("ECDSA P-256"),
            Self::EcdsaP384 => f.write_str("ECDSA P-384"),
            Self::Rsa(bits) => write!(f, "RSA {bits}"),
            Self::Ed25519 => f.write_str("Ed25519"),
        }
    }
}

impl KeySpec {
    /// From the annotations' algorithm (`ECDSA`, `RSA`, `Ed25519`; default ECDSA) and size.
    pub fn from_annotations(algorithm: Option<&str>, size: Option<&str>) -> Result<Self, String> {
        let size = match size {
            None => None,
            Some(s) => Some(
                s.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("private-key-size {s:?} is not a number"))?,
            ),
        };
        match (algorithm.map(str::trim), size) {
            (None | Some("ECDSA"), None | Some(256)) => Ok(Self::EcdsaP256),
            (None | Some("ECDSA"), Some(384)) => Ok(Self::EcdsaP384),
            (None | Some("ECDSA"), Some(n)) => Err(format!("ECDSA keys are 256 or 384 bits, not {n}")),
            (Some("RSA"), None) => Ok(Self::Rsa(2048)),
            (Some("RSA"), Some(n @ (2048 | 3072 | 4096))) => Ok(Self::Rsa(n)),
            (Some("RSA"), Some(n)) => Err(format!("RSA keys are 2048, 3072 or 4096 bits, not {n}")),
            (Some("Ed25519"), None) => Ok(Self::Ed25519),
            (Some("Ed25519"), Some(n)) => Err(format!("Ed25519 keys have no size ({n} given)")),
            (Some(other), _) => Err(format!(
                "private-key-algorithm {other:?} is not RSA, ECDSA or Ed25519"
            )),
        }
    }

    /// A new key, as PKCS#8 DER.
    pub fn generate(self) -> Result<Vec<u8>, String> {
        let rng = ring::rand::SystemRandom::new();
        let err = |e: ring::error::Unspecified| format!("key generation failed: {e}");
        match self {
            Self::EcdsaP256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map(|d| d.as_ref().to_vec())
                .map_err(err),
            Self::EcdsaP384 => {
                EcdsaKeyPair::generate_pkcs8(&ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
                    .map(|d| d.as_ref().to_vec())
                    .map_err(err)
            }
            Self::Ed25519 => ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
                .map(|d| d.as_ref().to_vec())
                .map_err(err),
            Self::Rsa(bits) => {
                use rsa::pkcs8::EncodePrivateKey;
                let key = rsa::PrivateKey::new(&mut getrandom::SysRng, bits as usize)
                    .map_err(|e| format!("RSA key generation failed: {e}"))?;
                key.to_pkcs8_der()
                    .map(|d| d.as_bytes().to_vec())
                    .map_err(|e| format!("RSA key encoding failed: {e}"))
            }
        }
    }

    /// The rcgen signature algorithm for a CSR or certificate signed with this key.
    pub fn algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Self::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Self::Rsa(_) => &rcgen::PKCS_RSA_SHA256,
            Self::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    /// An rcgen key pair from this key's PKCS#8 DER.
    pub fn key_pair(self, pkcs8: &[u8]) -> Result<rcgen::KeyPair, String> {
        let der = PrivatePkcs8KeyDer::from(pkcs8.to_vec());
        rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, self.algorithm()).map_err(|e| e.to_string())
    }
}

/// PEM of a PKCS#8 private key.
pub fn pkcs8_pem(der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

/// An ACME account key: P-256, PKCS#8.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountKey {
    pub pkcs8: Vec<u8>,
    /// RFC 7638 thumbprint of the public key, base64url.
    pub thumbprint: String,
}

impl AccountKey {
    /// Reads a PEM private key; `None` unless it is a P-256 key in PKCS#8 (the only kind the
    /// ACME client can use; cert-manager's account keys are RSA).
    pub fn from_pem(pem: &[u8]) -> Option<Self> {
        match PrivateKeyDer::from_pem_slice(pem).ok()? {
            PrivateKeyDer::Pkcs8(der) => Self::from_pkcs8(der.secret_pkcs8_der()),
            _ => None,
        }
    }

    pub fn from_pkcs8(der: &[u8]) -> Option<Self> {
        let rng = ring::rand::SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng).ok()?;
        Some(Self {
            pkcs8: der.to_vec(),
            thumbprint: thumbprint(pair.public_key().as_ref())?,
        })
    }

    pub fn generate() -> Result<Self, String> {
        let der = KeySpec::EcdsaP256.generate()?;
        Self::from_pkcs8(&der).ok_or_else(|| "generated key is unusable".into())
    }

    pub fn pem(&self) -> String {
        pkcs8_pem(&self.pkcs8)
    }
}

/// The JWK thumbprint (RFC 7638) of an uncompressed P-256 public key.
fn thumbprint(public: &[u8]) -> Option<String> {
    if public.len() != 65 || public[0] != 4 {
        return None;
    }
    let jwk = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(&public[1..33]),
        URL_SAFE_NO_PAD.encode(&public[33..65])
    );
    let digest = ring::digest::digest(&ring::digest::SHA256, jwk.as_bytes());
    Some(URL_SAFE_NO_PAD.encode(digest.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_specs_from_annotations() {
        assert_eq!(KeySpec::from_annotations(None, None), Ok(KeySpec::EcdsaP256));
        assert_eq!(
            KeySpec::from_annotations(Some("ECDSA"), Some("384")),
            Ok(KeySpec::EcdsaP384)
        );
        assert_eq!(
            KeySpec::from_annotations(Some("RSA"), None),
            Ok(KeySpec::Rsa(2048))
        );
        assert_eq!(
            KeySpec::from_annotations(Some("RSA"), Some("4096")),
            Ok(KeySpec::Rsa(4096))
        );
        assert_eq!(
            KeySpec::from_annotations(Some("Ed25519"), None),
            Ok(KeySpec::Ed25519)
        );
        assert!(KeySpec::from_annotations(Some("ECDSA"), Some("521")).is_err());
        assert!(KeySpec::from_annotations(Some("RSA"), Some("1024")).is_err());
        assert!(KeySpec::from_annotations(Some("DSA"), None).is_err());
        assert!(KeySpec::from_annotations(None, Some("big")).is_err());
    }

    #[test]
    fn generated_keys_sign_certificates() {
        for spec in [
            KeySpec::EcdsaP256,
            KeySpec::EcdsaP384,
            KeySpec::Ed25519,
            KeySpec::Rsa(2048),
        ] {
            let der = spec.generate().unwrap();
            let pair = spec.key_pair(&der).unwrap();
            let cert = rcgen::CertificateParams::new(vec!["a.test".to_string()])
                .unwrap()
                .self_signed(&pair)
                .unwrap();
            crate::tls::Certificate::from_pem(cert.pem().as_bytes(), pkcs8_pem(&der).as_bytes())
                .unwrap_or_else(|e| panic!("{spec}: {e}"));
        }
    }

    #[test]
    fn account_keys_and_thumbprints() {
        let key = AccountKey::generate().unwrap();
        assert_eq!(key.thumbprint.len(), 43);
        let again = AccountKey::from_pem(key.pem().as_bytes()).unwrap();
        assert_eq!(again, key);
        // An RSA key (what cert-manager keeps) is not usable as an account key.
        let rsa = KeySpec::Rsa(2048).generate().unwrap();
        assert_eq!(AccountKey::from_pem(pkcs8_pem(&rsa).as_bytes()), None);
    }

    /// RFC 7638's example is RSA; this checks the P-256 form against a fixed vector computed
    /// independently (RFC 7517 appendix A.1 key).
    #[test]
    fn thumbprint_of_a_known_key() {
        let x = URL_SAFE_NO_PAD
            .decode("MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4")
            .unwrap();
        let y = URL_SAFE_NO_PAD
            .decode("4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM")
            .unwrap();
        let mut public = vec![4];
        public.extend(x);
        public.extend(y);
        assert_eq!(
            thumbprint(&public).unwrap(),
            "cn-I_WNMClehiVp51i_0VpOENW1upEerA8sEam5hn-s"
        );
    }
}
