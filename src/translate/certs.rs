//! TLS Secrets parsed into certificates, remembered between runs by the content of the Secret.

use foldhash::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;

use super::CertificateInUse;
use crate::problem::{Problem, Subject};
use crate::source::{ObjectKey, World};
use crate::tls::{self, Certificate};

/// What is known about one Secret's certificate.
#[derive(Clone, Debug)]
pub(super) struct CertMemo {
    /// Hash of `tls.crt` and `tls.key` as last parsed.
    fingerprint: u64,
    /// The outcome of parsing that content.
    parsed: Result<Arc<Certificate>, tls::Error>,
    /// The last certificate that parsed, kept in service while the Secret is broken.
    last_good: Option<Arc<Certificate>>,
}

pub(super) struct Certs<'a> {
    world: &'a World,
    previous: &'a HashMap<ObjectKey, CertMemo>,
    next: HashMap<ObjectKey, CertMemo>,
    in_use: Vec<CertificateInUse>,
}

impl<'a> Certs<'a> {
    pub(super) fn new(world: &'a World, previous: &'a HashMap<ObjectKey, CertMemo>) -> Self {
        Self {
            world,
            previous,
            next: HashMap::default(),
            in_use: Vec::new(),
        }
    }

    /// The certificate of `secret`, referenced by `ingress`'s TLS section. Problems with the
    /// Secret are reported once, on the Secret; a missing Secret is reported on the Ingress.
    /// A missing Secret is reported unless `report_missing` is false (pylon is about to issue it).
    pub(super) fn load(
        &mut self,
        secret: &ObjectKey,
        ingress: &ObjectKey,
        report_missing: bool,
        problems: &mut Vec<Problem>,
    ) -> Option<Arc<Certificate>> {
        if !self.world.secrets.contains_key(secret) {
            if !report_missing {
                return None;
            }
            problems.push(Problem::warning(
                Subject::object("Ingress", &ingress.namespace, &ingress.name),
                "tls_secret_missing",
                format!(
                    "TLS Secret {} not found; its hosts get the default certificate",
                    secret.name
                ),
            ));
            return None;
        }
        self.certificate(secret, problems)
    }

    /// The configured default certificate.
    pub(super) fn load_default(
        &mut self,
        secret: &ObjectKey,
        problems: &mut Vec<Problem>,
    ) -> Option<Arc<Certificate>> {
        if !self.world.secrets.contains_key(secret) {
            problems.push(Problem::error(
                Subject::object("Secret", &secret.namespace, &secret.name),
                "tls_secret_missing",
                "configured as the default certificate but not found; a self-signed certificate is served",
            ));
            return None;
        }
        self.certificate(secret, problems)
    }

    fn certificate(&mut self, key: &ObjectKey, problems: &mut Vec<Problem>) -> Option<Arc<Certificate>> {
        if !self.next.contains_key(key) {
            let memo = self.parse(key, problems);
            if let Some(cert) = memo.parsed.as_ref().ok().or(memo.last_good.as_ref()) {
                self.in_use.push(CertificateInUse {
                    secret: key.clone(),
                    not_after: cert.not_after,
                });
            }
            self.next.insert(key.clone(), memo);
        }
        let memo = &self.next[key];
        memo.parsed.as_ref().ok().or(memo.last_good.as_ref()).cloned()
    }

    fn parse(&self, key: &ObjectKey, problems: &mut Vec<Problem>) -> CertMemo {
        let secret = &self.world.secrets[key];
        let (crt, tls_key) = pem_pair(secret);
        let fingerprint = fingerprint(crt, tls_key);
        let previous = self.previous.get(key);
        let memo = match previous {
            Some(p) if p.fingerprint == fingerprint => p.clone(),
            _ => {
                let parsed = match (crt, tls_key) {
                    (Some(c), Some(k)) => Certificate::from_pem(c, k).map(Arc::new),
                    (None, _) => Err(tls::Error::NoCertificate),
                    (_, None) => Err(tls::Error::NoKey),
                };
                let last_good = match &parsed {
                    Ok(cert) => Some(cert.clone()),
                    Err(_) => previous.and_then(|p| p.last_good.clone()),
                };
                CertMemo {
                    fingerprint,
                    parsed,
                    last_good,
                }
            }
        };
        let subject = Subject::object("Secret", &key.namespace, &key.name);
        // A Secret pylon created before its first certificate holds only order state.
        let awaiting_issue = crt.is_none() && crate::acme::state::managed_by_pylon(secret);
        if let (Err(e), false) = (&memo.parsed, awaiting_issue) {
            let tail = if memo.last_good.is_some() {
                "; the previous certificate stays in service"
            } else {
                "; its hosts get the default certificate"
            };
            problems.push(Problem::error(subject, e.metric_label(), format!("{e}{tail}")));
        } else if let Ok(cert) = &memo.parsed {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            if cert.not_after < now {
                problems.push(Problem::warning(
                    subject,
                    "certificate_expired",
                    "the certificate has expired",
                ));
            }
        }
        memo
    }

    /// The certificate of a Secret pylon manages, if it holds a valid one.
    pub(super) fn managed(&mut self, key: &ObjectKey) -> Option<Arc<Certificate>> {
        let mut ignored = Vec::new();
        self.certificate(key, &mut ignored);
        self.next.get(key)?.parsed.as_ref().ok().cloned()
    }

    pub(super) fn finish(self) -> (HashMap<ObjectKey, CertMemo>, Vec<CertificateInUse>) {
        (self.next, self.in_use)
    }
}

fn pem_pair(secret: &Secret) -> (Option<&[u8]>, Option<&[u8]>) {
    let data = secret.data.as_ref();
    let field = |name: &str| {
        data.and_then(|d| d.get(name))
            .map(|b| b.0.as_slice())
            .filter(|b| !b.is_empty())
    };
    (field("tls.crt"), field("tls.key"))
}

fn fingerprint(crt: Option<&[u8]>, key: Option<&[u8]>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    crt.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}
