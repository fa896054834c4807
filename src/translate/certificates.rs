//! The certificates pylon should obtain: one per `spec.tls` entry of an Ingress that names an
//! issuer (cert-manager's ingress-shim annotations, or the configured default), checked against
//! the issuers and Secrets in the world.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use foldhash::HashMap;
use k8s_openapi::api::core::v1::Secret;

use super::Settings;
use super::annotations::IssuerChoice;
use super::certs::Certs;
use super::ingress::ParsedIngress;
use crate::acme::challenge::ChallengeIndex;
use crate::acme::issuer::{self, IssuerConfig, IssuerKind, IssuerRef, Method};
use crate::acme::keys::AccountKey;
use crate::acme::request::{CertificateRequest, Current, IssuerMaterial};
use crate::acme::state::{self, OrderState};
use crate::problem::{Problem, Subject};
use crate::source::cert_manager::IssuerObject;
use crate::source::{ObjectKey, World};

pub(super) struct Wanted {
    pub requests: Vec<CertificateRequest>,
    pub challenges: ChallengeIndex,
}

type Usable = Result<(Arc<IssuerConfig>, Arc<IssuerMaterial>), String>;

/// `issuing`: the served Ingresses that name an issuer or fall to the default one, oldest first.
pub(super) fn certificates(
    issuing: &[&ParsedIngress],
    world: &World,
    settings: &Settings,
    certs: &mut Certs,
    problems: &mut Vec<Problem>,
) -> Wanted {
    let mut issuers: HashMap<IssuerRef, Usable> = HashMap::default();
    // Every issuer is checked, used or not, so that `pylon check` and the log show its problems.
    for (name, obj) in &world.cluster_issuers {
        let r = IssuerRef::cluster(name);
        let usable = check_issuer(&r, obj, &settings.cluster_resource_namespace, world, problems);
        issuers.insert(r, usable);
    }
    for (key, obj) in &world.issuers {
        let r = IssuerRef::namespaced(&key.namespace, &key.name);
        let usable = check_issuer(&r, obj, &key.namespace, world, problems);
        issuers.insert(r, usable);
    }

    let mut wanted = Wanted {
        requests: Vec::new(),
        challenges: ChallengeIndex::default(),
    };
    let mut taken: BTreeMap<ObjectKey, ObjectKey> = BTreeMap::new();
    for ing in issuing {
        let subject = Subject::object("Ingress", &ing.key.namespace, &ing.key.name);
        let cert = &ing.annotations.certificate;
        let choice = match &cert.issuer {
            Some(IssuerChoice::Default) | None if ing.tls.is_empty() => continue,
            Some(IssuerChoice::Default) | None => match &settings.default_issuer {
                Some((kind, name)) => Some((*kind, name.clone())),
                None if cert.issuer == Some(IssuerChoice::Default) => {
                    problems.push(Problem::warning(
                        subject.clone(),
                        "no_default_issuer",
                        "kubernetes.io/tls-acme is set but no default issuer is configured (acme.default-issuer)",
                    ));
                    None
                }
                None => None,
            },
            Some(IssuerChoice::Cluster(name)) => Some((IssuerKind::ClusterIssuer, name.clone())),
            Some(IssuerChoice::Namespaced(name)) => Some((IssuerKind::Issuer, name.clone())),
        };
        let Some((kind, name)) = choice else { continue };
        let reference = match kind {
            IssuerKind::ClusterIssuer => IssuerRef::cluster(&name),
            IssuerKind::Issuer => IssuerRef::namespaced(&ing.key.namespace, &name),
        };
        let (config, material) = match issuers.get(&reference) {
            Some(Ok(usable)) => usable.clone(),
            Some(Err(reason)) => {
                problems.push(Problem::error(
                    subject.clone(),
                    "issuer_unusable",
                    format!("{reference} cannot issue certificates ({reason}); none is ordered"),
                ));
                continue;
            }
            None => {
                problems.push(Problem::error(
                    subject.clone(),
                    "issuer_not_found",
                    format!("{reference} not found; no certificate is ordered"),
                ));
                continue;
            }
        };

        for (i, entry) in ing.tls.iter().enumerate() {
            let Some(secret_name) = &entry.secret else {
                continue;
            };
            let secret = ObjectKey::new(ing.key.namespace.clone(), secret_name.clone());
            let mut hosts: Vec<String> = entry.hosts.iter().map(ToString::to_string).collect();
            hosts.extend(cert.alt_names.iter().cloned());
            hosts.sort();
            hosts.dedup();
            if hosts.is_empty() {
                continue;
            }
            if let Method::Acme(acme) = &config.method {
                let unsolvable: Vec<&String> = hosts
                    .iter()
                    .filter(|h| h.starts_with("*.") || !acme.solves_with_http01(h))
                    .collect();
                if !unsolvable.is_empty() {
                    problems.push(Problem::error(
                        subject.clone(),
                        "needs_dns01",
                        format!(
                            "spec.tls[{i}]: {} need DNS-01 (wildcards, or hosts {reference} solves with DNS-01), which pylon does not support; no certificate is ordered for Secret {secret_name}",
                            unsolvable.iter().map(|h| h.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    ));
                    continue;
                }
            }
            let existing = world.secrets.get(&secret);
            if existing.is_some_and(|s| !state::managed_by_pylon(s)) {
                problems.push(Problem::warning(
                    subject.clone(),
                    "secret_not_managed",
                    format!(
                        "Secret {secret_name} exists and was not created by pylon: it is served as it is, and pylon will not renew or replace it (delete it to let pylon issue one)"
                    ),
                ));
                continue;
            }
            if let Some(first) = taken.get(&secret) {
                problems.push(Problem::warning(
                    subject.clone(),
                    "certificate_conflict",
                    format!("Secret {secret_name} is already requested by Ingress {first} (older); this request is ignored"),
                ));
                continue;
            }
            taken.insert(secret.clone(), ing.key.clone());

            let current = match existing {
                Some(s) => Current {
                    exists: true,
                    certificate: certs.managed(world, &secret),
                    state: OrderState::from_annotations(s.metadata.annotations.as_ref()),
                    pending_key: pending_key(s),
                    secret: Some(s.clone()),
                },
                None => Current::default(),
            };
            if let (Method::Acme(_), Some(key)) = (&config.method, &material.account_key) {
                let thumbprint: Arc<str> = key.thumbprint.as_str().into();
                for host in &hosts {
                    wanted.challenges.insert(host, thumbprint.clone());
                }
            }
            wanted.requests.push(CertificateRequest {
                secret,
                ingress: ing.key.clone(),
                ingress_ref: world.reference("Ingress", &ing.key.namespace, &ing.key.name),
                hosts,
                common_name: cert.common_name.clone(),
                key: cert.key,
                duration: cert.duration,
                renew_before: cert.renew_before,
                issuer: config.clone(),
                material: material.clone(),
                current,
            });
        }
    }
    wanted.requests.sort_by(|a, b| a.secret.cmp(&b.secret));
    wanted
}

fn issuer_subject(r: &IssuerRef) -> Subject {
    Subject::object(r.kind.name(), &r.namespace, &r.name)
}

/// Checks an issuer and reads the Secrets it needs; reports its problems on the issuer.
fn check_issuer(
    reference: &IssuerRef,
    obj: &IssuerObject,
    resource_namespace: &str,
    world: &World,
    problems: &mut Vec<Problem>,
) -> Usable {
    let subject = issuer_subject(reference);
    let parsed = issuer::parse(reference.clone(), &obj.spec, resource_namespace);
    for note in parsed.notes {
        problems.push(Problem::warning(subject.clone(), "issuer_setting_ignored", note));
    }
    let config = match parsed.config {
        Ok(c) => c,
        Err(errors) => {
            let reason = errors.join("; ");
            problems.push(Problem::error(subject, "invalid_issuer", reason.clone()));
            return Err(reason);
        }
    };
    let mut material = IssuerMaterial::default();
    let fail = |problems: &mut Vec<Problem>, reason: String| -> Usable {
        problems.push(Problem::error(subject.clone(), "issuer_secret", reason.clone()));
        Err(reason)
    };
    match &config.method {
        Method::Acme(acme) => {
            let named = world.secrets.get(&acme.account_secret);
            let named_key = named
                .and_then(|s| data(s, &acme.account_secret_key))
                .and_then(AccountKey::from_pem);
            let (secret, key, holder) = match (named, named_key) {
                (_, Some(key)) => (acme.account_secret.clone(), Some(key), named),
                (None, None) => (acme.account_secret.clone(), None, None),
                (Some(_), None) => {
                    let sibling = ObjectKey::new(
                        acme.account_secret.namespace.clone(),
                        format!("{}-pylon", acme.account_secret.name),
                    );
                    let holder = world.secrets.get(&sibling);
                    let key = holder
                        .and_then(|s| data(s, "tls.key"))
                        .and_then(AccountKey::from_pem);
                    problems.push(Problem::warning(
                        subject.clone(),
                        "account_key_unusable",
                        format!(
                            "Secret {} holds no P-256 account key (cert-manager keeps RSA keys); pylon leaves it untouched and keeps its own account in Secret {}",
                            acme.account_secret, sibling
                        ),
                    ));
                    (sibling, key, holder)
                }
            };
            if key.is_none() && acme.disable_account_key_generation {
                return fail(
                    problems,
                    format!(
                        "no usable account key in Secret {secret} and disableAccountKeyGeneration is set"
                    ),
                );
            }
            material.account_url = holder.and_then(|s| {
                let a = s.metadata.annotations.as_ref()?;
                (a.get(state::ACCOUNT_DIRECTORY) == Some(&acme.directory))
                    .then(|| a.get(state::ACCOUNT_URL).cloned())
                    .flatten()
            });
            material.account_secret_writable = world
                .secrets
                .get(&secret)
                .is_none_or(|s| state::managed_by_pylon(s));
            material.account_secret = Some(secret);
            material.account_key = key;
            if let Some(eab) = &acme.external_account {
                let Some(raw) = world
                    .secrets
                    .get(&eab.secret)
                    .and_then(|s| data(s, &eab.secret_key))
                else {
                    return fail(
                        problems,
                        format!(
                            "external account binding Secret {} (key {}) not found",
                            eab.secret, eab.secret_key
                        ),
                    );
                };
                let text = String::from_utf8_lossy(raw);
                let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(text.trim().trim_end_matches('='))
                    .or_else(|_| base64::engine::general_purpose::STANDARD.decode(text.trim()));
                match decoded {
                    Ok(key) if !key.is_empty() => material.eab_key = Some(key),
                    _ => {
                        return fail(
                            problems,
                            format!(
                                "external account binding Secret {} key {} is not base64url",
                                eab.secret, eab.secret_key
                            ),
                        );
                    }
                }
            }
        }
        Method::Ca { secret } => {
            let pair = world
                .secrets
                .get(secret)
                .and_then(|s| Some((data(s, "tls.crt")?.to_vec(), data(s, "tls.key")?.to_vec())));
            match pair {
                Some(pair) => material.ca = Some(pair),
                None => {
                    return fail(
                        problems,
                        format!("CA Secret {secret} not found or without tls.crt and tls.key"),
                    );
                }
            }
        }
        Method::SelfSigned => {}
    }
    Ok((Arc::new(config), Arc::new(material)))
}

fn data<'s>(secret: &'s Secret, key: &str) -> Option<&'s [u8]> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|b| b.0.as_slice())
        .filter(|b| !b.is_empty())
}

fn pending_key(secret: &Secret) -> Option<Vec<u8>> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let pem = data(secret, state::PENDING_KEY)?;
    match PrivateKeyDer::from_pem_slice(pem).ok()? {
        PrivateKeyDer::Pkcs8(der) => Some(der.secret_pkcs8_der().to_vec()),
        _ => None,
    }
}
