//! TLS Secrets parsed into certificates, remembered between runs by the content of the Secret.

use foldhash::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;

use super::CertificateInUse;
use crate::problem::{Problem, Subject};
use crate::source::{ObjectKey, World};
use crate::tls::{self, Certificate};

/// What is known about one Secret's certificate.
#[derive(Clone, Debug)]
pub(super) struct CertMemo {
    /// The Secret as last parsed: a source hands over an unchanged Secret as the same `Arc`.
    source: Arc<Secret>,
    /// Hash of `tls.crt` and `tls.key` as last parsed (a resync may hand over equal content in
    /// a new object).
    fingerprint: u64,
    /// The outcome of parsing that content.
    parsed: Result<Arc<Certificate>, tls::Error>,
    /// The last certificate that parsed, kept in service while the Secret is broken.
    last_good: Option<Arc<Certificate>>,
}

impl CertMemo {
    /// The certificate to serve: the parsed one, else the last good one.
    fn current(&self) -> Option<&Arc<Certificate>> {
        self.parsed.as_ref().ok().or(self.last_good.as_ref())
    }
}

pub(super) struct Certs<'a> {
    world: &'a World,
    previous: &'a HashMap<ObjectKey, Arc<CertMemo>>,
    next: HashMap<ObjectKey, Arc<CertMemo>>,
    in_use: Vec<CertificateInUse>,
    /// Unix time of this translation, for expiry checks.
    now: i64,
}

impl<'a> Certs<'a> {
    pub(super) fn new(world: &'a World, previous: &'a HashMap<ObjectKey, Arc<CertMemo>>) -> Self {
        Self {
            world,
            previous,
            next: HashMap::default(),
            in_use: Vec::new(),
            now: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
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
        let Some(object) = self.world.secrets.get(secret) else {
            if report_missing {
                problems.push(Problem::warning(
                    Subject::object("Ingress", &ingress.namespace, &ingress.name),
                    "tls_secret_missing",
                    format!(
                        "TLS Secret {} not found; its hosts get the default certificate",
                        secret.name
                    ),
                ));
            }
            return None;
        };
        self.certificate(secret, object, problems)
    }

    /// The configured default certificate.
    pub(super) fn load_default(
        &mut self,
        secret: &ObjectKey,
        problems: &mut Vec<Problem>,
    ) -> Option<Arc<Certificate>> {
        let Some(object) = self.world.secrets.get(secret) else {
            problems.push(Problem::error(
                Subject::object("Secret", &secret.namespace, &secret.name),
                "tls_secret_missing",
                "configured as the default certificate but not found; a self-signed certificate is served",
            ));
            return None;
        };
        self.certificate(secret, object, problems)
    }

    fn certificate(
        &mut self,
        key: &ObjectKey,
        secret: &Arc<Secret>,
        problems: &mut Vec<Problem>,
    ) -> Option<Arc<Certificate>> {
        if let Some(memo) = self.next.get(key) {
            return memo.current().cloned();
        }
        let memo = self.parse(key, secret, problems);
        let current = memo.current().cloned();
        if let Some(cert) = &current {
            self.in_use.push(CertificateInUse {
                secret: key.clone(),
                not_after: cert.not_after,
            });
        }
        self.next.insert(key.clone(), memo);
        current
    }

    fn parse(&self, key: &ObjectKey, secret: &Arc<Secret>, problems: &mut Vec<Problem>) -> Arc<CertMemo> {
        let (crt, tls_key) = pem_pair(secret);
        let previous = self.previous.get(key);
        let memo = match previous {
            Some(p) if Arc::ptr_eq(&p.source, secret) => p.clone(),
            Some(p) if p.fingerprint == fingerprint(crt, tls_key) => Arc::new(CertMemo {
                source: secret.clone(),
                ..CertMemo::clone(p)
            }),
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
                Arc::new(CertMemo {
                    source: secret.clone(),
                    fingerprint: fingerprint(crt, tls_key),
                    parsed,
                    last_good,
                })
            }
        };
        let subject = || Subject::object("Secret", &key.namespace, &key.name);
        // A Secret pylon created before its first certificate holds only order state.
        let awaiting_issue = crt.is_none() && crate::acme::state::managed_by_pylon(secret);
        if let (Err(e), false) = (&memo.parsed, awaiting_issue) {
            let tail = if memo.last_good.is_some() {
                "; the previous certificate stays in service"
            } else {
                "; its hosts get the default certificate"
            };
            problems.push(Problem::error(subject(), e.metric_label(), format!("{e}{tail}")));
        } else if let Ok(cert) = &memo.parsed
            && cert.not_after < self.now
        {
            problems.push(Problem::warning(
                subject(),
                "certificate_expired",
                "the certificate has expired",
            ));
        }
        memo
    }

    /// The certificate of a Secret pylon manages, if it holds a valid one.
    pub(super) fn managed(&mut self, key: &ObjectKey) -> Option<Arc<Certificate>> {
        let mut ignored = Vec::new();
        let secret = self.world.secrets.get(key)?;
        self.certificate(key, secret, &mut ignored);
        self.next.get(key)?.parsed.as_ref().ok().cloned()
    }

    pub(super) fn finish(self) -> (HashMap<ObjectKey, Arc<CertMemo>>, Vec<CertificateInUse>) {
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
    let mut h = foldhash::quality::FixedState::default().build_hasher();
    crt.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}
