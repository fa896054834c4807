//! Talking to an ACME server: accounts, failures classified, CSRs.

use instant_acme::{Account, ExternalAccountKey, Key, NewAccount};
use k8s_openapi::jiff::Timestamp;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::client;
use super::issuer::AcmeIssuer;
use super::keys::{AccountKey, KeySpec};
use super::request::IssuerMaterial;
use super::schedule;

/// Why an attempt failed, and what that means for the next one.
#[derive(Debug, Clone)]
pub struct Failure {
    /// A bounded metric label: `unreachable`, `rate_limited`, `validation_failed`, …
    pub reason: &'static str,
    pub message: String,
    /// Not before this time (a rate limit's end).
    pub not_before: Option<Timestamp>,
    /// The account is unknown to the server: register again.
    pub account_gone: bool,
}

impl Failure {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            not_before: None,
            account_gone: false,
        }
    }
}

impl From<instant_acme::Error> for Failure {
    fn from(e: instant_acme::Error) -> Self {
        use instant_acme::Error as E;
        match &e {
            E::Api(problem) => {
                let kind = problem
                    .r#type
                    .as_deref()
                    .and_then(|t| t.rsplit(':').next())
                    .unwrap_or_default();
                let detail = problem.detail.clone().unwrap_or_default();
                let mut f = Self::new(
                    match kind {
                        "rateLimited" => "rate_limited",
                        "unauthorized" | "incorrectResponse" | "connection" | "dns" => "validation_failed",
                        "accountDoesNotExist" => "account_unknown",
                        "externalAccountRequired" => "external_account_required",
                        "badNonce" => "bad_nonce",
                        "rejectedIdentifier" | "unsupportedIdentifier" | "caa" => "identifier_rejected",
                        _ => "server_error",
                    },
                    e.to_string(),
                );
                if kind == "rateLimited" {
                    f.not_before = schedule::retry_after_from_detail(&detail);
                }
                f.account_gone = kind == "accountDoesNotExist";
                f
            }
            E::Timeout(_) => Self::new("timeout", "the ACME server did not finish in time"),
            E::Hyper(_) | E::Http(_) | E::Other(_) => Self::new("unreachable", e.to_string()),
            _ => Self::new("client_error", e.to_string()),
        }
    }
}

/// Runs an ACME call with a deadline (the client has none of its own).
pub async fn timed<T>(
    seconds: u64,
    what: &str,
    call: impl Future<Output = Result<T, instant_acme::Error>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(std::time::Duration::from_secs(seconds), call).await {
        Ok(r) => r.map_err(Failure::from),
        Err(_) => Err(Failure::new(
            "timeout",
            format!("{what}: no answer from the ACME server within {seconds} s"),
        )),
    }
}

/// An account, and what must be stored about it if pylon created or looked it up.
pub struct Opened {
    pub account: Account,
    pub key: AccountKey,
    /// Set when the key or account URL must be written to the account Secret.
    pub store: bool,
}

/// Opens the issuer's account: from the stored key and URL, by looking the key up, or by
/// registering a new account (with the external account binding, if configured).
pub async fn open_account(
    issuer: &AcmeIssuer,
    material: &IssuerMaterial,
    forget_url: bool,
) -> Result<Opened, Failure> {
    let builder = || {
        client::http_client(issuer)
            .map(Account::builder_with_http)
            .map_err(|e| Failure::new("client_error", e))
    };
    let directory = issuer.directory.clone();
    if let Some(key) = &material.account_key {
        if let (Some(url), false) = (&material.account_url, forget_url) {
            let der = PrivatePkcs8KeyDer::from(key.pkcs8.clone());
            let account = timed(
                30,
                "directory",
                builder()?.from_parts(url.clone(), der, directory),
            )
            .await?;
            return Ok(Opened {
                account,
                key: key.clone(),
                store: false,
            });
        }
        let pair = || -> Result<(Key, PrivateKeyDer<'static>), Failure> {
            let der = PrivatePkcs8KeyDer::from(key.pkcs8.clone());
            let k = Key::from_pkcs8_der(der.clone_key()).map_err(Failure::from)?;
            Ok((k, PrivateKeyDer::Pkcs8(der)))
        };
        // The key is known but not its account: look it up, or register it.
        let account = match timed(
            30,
            "account lookup",
            builder()?.from_key(pair()?, directory.clone()),
        )
        .await
        {
            Ok((account, _)) => account,
            Err(f) if material.eab_key.is_none() => {
                tracing::info!(reason = %f.message, "no account for the stored key; registering it");
                timed(
                    30,
                    "account registration",
                    builder()?.create_from_key(pair()?, directory),
                )
                .await?
                .0
            }
            Err(f) => return Err(f),
        };
        return Ok(Opened {
            account,
            key: key.clone(),
            store: true,
        });
    }
    let contact = issuer.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let eab = match (&issuer.external_account, &material.eab_key) {
        (Some(e), Some(k)) => Some(ExternalAccountKey::new(e.key_id.clone(), k)),
        _ => None,
    };
    let new = NewAccount {
        contact: &contacts,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (account, credentials) = timed(
        30,
        "account registration",
        builder()?.create(&new, directory, eab.as_ref()),
    )
    .await?;
    let key = AccountKey::from_pkcs8(credentials.private_key().secret_pkcs8_der())
        .ok_or_else(|| Failure::new("client_error", "the new account key is not P-256"))?;
    Ok(Opened {
        account,
        key,
        store: true,
    })
}

/// A certificate signing request for `hosts`, signed with `key`.
pub fn csr(
    hosts: &[String],
    common_name: Option<&str>,
    spec: KeySpec,
    key_pkcs8: &[u8],
) -> Result<Vec<u8>, Failure> {
    let pair = spec
        .key_pair(key_pkcs8)
        .map_err(|e| Failure::new("client_error", e))?;
    let mut params = rcgen::CertificateParams::new(hosts.to_vec())
        .map_err(|e| Failure::new("client_error", e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(cn) = common_name {
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    }
    let csr = params
        .serialize_request(&pair)
        .map_err(|e| Failure::new("client_error", e.to_string()))?;
    Ok(csr.der().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_problems() {
        let problem = |t: &str, detail: &str| {
            instant_acme::Error::Api(
                serde_json::from_value(serde_json::json!({"type": t, "detail": detail, "status": 429}))
                    .unwrap(),
            )
        };
        let f = Failure::from(problem(
            "urn:ietf:params:acme:error:rateLimited",
            "too many certificates, retry after 2026-11-29 08:00:00 UTC: see docs",
        ));
        assert_eq!(f.reason, "rate_limited");
        assert_eq!(f.not_before, Some("2026-11-29T08:00:00Z".parse().unwrap()));
        let f = Failure::from(problem(
            "urn:ietf:params:acme:error:accountDoesNotExist",
            "no account",
        ));
        assert!(f.account_gone);
        let f = Failure::from(problem("urn:ietf:params:acme:error:unauthorized", "404"));
        assert_eq!(f.reason, "validation_failed");
    }

    #[test]
    fn csrs_carry_the_hosts() {
        let spec = KeySpec::EcdsaP256;
        let key = spec.generate().unwrap();
        let der = csr(&["a.test".into(), "b.test".into()], None, spec, &key).unwrap();
        let text = format!("{der:?}");
        assert!(!text.is_empty());
        use x509_parser::prelude::FromDer;
        let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
        let names: Vec<String> = req
            .requested_extensions()
            .into_iter()
            .flatten()
            .filter_map(|e| match e {
                x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) => Some(
                    san.general_names
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(names, ["DNSName(a.test)", "DNSName(b.test)"]);
    }
}
