//! Issuers that need no ACME server: `selfSigned` and `ca`.

use std::time::Duration;

use super::keys::KeySpec;

/// cert-manager's default certificate duration.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(90 * 24 * 3600);

/// A certificate chain with its key, ready to store.
#[derive(Debug)]
pub struct Issued {
    /// Leaf first, then intermediates.
    pub chain_pem: String,
    pub key_pkcs8: Vec<u8>,
    /// The issuing CA, for `ca.crt` (CA issuers only).
    pub ca_pem: Option<String>,
}

fn params(
    hosts: &[String],
    common_name: Option<&str>,
    duration: Duration,
) -> Result<rcgen::CertificateParams, String> {
    let mut params = rcgen::CertificateParams::new(hosts.to_vec()).map_err(|e| e.to_string())?;
    let cn = common_name
        .or(hosts.first().map(String::as_str))
        .unwrap_or("pylon");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = i64::try_from(duration.as_secs())
        .ok()
        .and_then(|seconds| now.checked_add(time::Duration::seconds(seconds)))
        .filter(|end| end.year() <= 9999)
        .ok_or_else(|| {
            format!(
                "the certificate duration ({}h) is too long",
                duration.as_secs() / 3600
            )
        })?;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&random_serial()));
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    Ok(params)
}

fn random_serial() -> [u8; 16] {
    let mut s = [0u8; 16];
    let _ = getrandom::fill(&mut s);
    s[0] = (s[0] & 0x7f) | 0x01;
    s
}

/// A certificate signed by its own key.
pub fn self_signed(
    hosts: &[String],
    common_name: Option<&str>,
    key: KeySpec,
    duration: Duration,
) -> Result<Issued, String> {
    let der = key.generate()?;
    let pair = key.key_pair(&der)?;
    let mut params = params(hosts, common_name, duration)?;
    params.use_authority_key_identifier_extension = false;
    let cert = params.self_signed(&pair).map_err(|e| e.to_string())?;
    Ok(Issued {
        chain_pem: cert.pem(),
        key_pkcs8: der,
        ca_pem: None,
    })
}

/// A certificate signed by the CA in `ca_cert_pem` / `ca_key_pem`.
pub fn from_ca(
    hosts: &[String],
    common_name: Option<&str>,
    key: KeySpec,
    duration: Duration,
    ca_cert_pem: &[u8],
    ca_key_pem: &[u8],
) -> Result<Issued, String> {
    let ca_cert =
        std::str::from_utf8(ca_cert_pem).map_err(|_| "CA certificate is not PEM text".to_string())?;
    let ca_key = std::str::from_utf8(ca_key_pem).map_err(|_| "CA key is not PEM text".to_string())?;
    let ca_pair = rcgen::KeyPair::from_pem(ca_key).map_err(|e| format!("CA key: {e}"))?;
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(ca_cert, ca_pair).map_err(|e| format!("CA certificate: {e}"))?;
    let der = key.generate()?;
    let pair = key.key_pair(&der)?;
    let cert = params(hosts, common_name, duration)?
        .signed_by(&pair, &issuer)
        .map_err(|e| e.to_string())?;
    let first_ca = ca_cert
        .find("-----END CERTIFICATE-----")
        .map(|end| &ca_cert[..end + "-----END CERTIFICATE-----".len()])
        .unwrap_or(ca_cert);
    Ok(Issued {
        chain_pem: format!("{}{}\n", cert.pem(), first_ca.trim()),
        key_pkcs8: der,
        ca_pem: Some(format!("{}\n", first_ca.trim())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::keys::pkcs8_pem;
    use crate::tls::Certificate;

    #[test]
    fn self_signed_certificates_cover_their_hosts() {
        let hosts = vec!["a.test".to_string(), "*.b.test".to_string()];
        let issued = self_signed(&hosts, None, KeySpec::EcdsaP256, Duration::from_secs(3600)).unwrap();
        let cert = Certificate::from_pem(
            issued.chain_pem.as_bytes(),
            pkcs8_pem(&issued.key_pkcs8).as_bytes(),
        )
        .unwrap();
        assert!(cert.covers("a.test") && cert.covers("x.b.test"));
        assert!((3500..=3900).contains(&(cert.not_after - cert.not_before)));
    }

    #[test]
    fn durations_past_the_year_9999_are_refused() {
        let hosts = vec!["a.test".to_string()];
        let long = Duration::from_secs(1_000_000_000 * 3600);
        let err = self_signed(&hosts, None, KeySpec::EcdsaP256, long).unwrap_err();
        assert!(err.contains("too long"), "{err}");
        let err = self_signed(&hosts, None, KeySpec::EcdsaP256, Duration::MAX).unwrap_err();
        assert!(err.contains("too long"), "{err}");
    }

    #[test]
    fn ca_issued_certificates_chain_to_the_ca() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issued = from_ca(
            &["app.test".to_string()],
            Some("app"),
            KeySpec::EcdsaP384,
            DEFAULT_DURATION,
            ca.pem().as_bytes(),
            ca_key.serialize_pem().as_bytes(),
        )
        .unwrap();
        assert_eq!(issued.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);
        assert_eq!(issued.ca_pem.as_deref().map(str::trim), Some(ca.pem().trim()));
        let cert = Certificate::from_pem(
            issued.chain_pem.as_bytes(),
            pkcs8_pem(&issued.key_pkcs8).as_bytes(),
        )
        .unwrap();
        assert_eq!(cert.dns_names, ["app.test"]);
    }
}
