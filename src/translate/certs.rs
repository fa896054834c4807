//! TLS Secrets parsed into certificates, remembered between runs by the content of the Secret.

use foldhash::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;

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
    /// The last certificate that parsed, kept in service while the Secret is broken, with the
    /// fingerprint of its content.
    last_good: Option<(u64, Arc<Certificate>)>,
    /// A Secret pylon created before its first certificate holds only order state.
    awaiting_issue: bool,
}

impl CertMemo {
    /// The certificate to serve: the parsed one, else the last good one.
    pub(super) fn current(&self) -> Option<&Arc<Certificate>> {
        self.parsed
            .as_ref()
            .ok()
            .or(self.last_good.as_ref().map(|(_, c)| c))
    }

    /// What is wrong with the Secret (at Unix time `now`).
    fn problems(&self, key: &ObjectKey, now: i64, out: &mut Vec<Problem>) {
        let subject = || Subject::object("Secret", &key.namespace, &key.name);
        match &self.parsed {
            Err(_) if self.awaiting_issue => {}
            Err(e) => {
                let tail = if self.last_good.is_some() {
                    "; the previous certificate stays in service"
                } else {
                    "; its hosts get the default certificate"
                };
                out.push(Problem::error(subject(), e.metric_label(), format!("{e}{tail}")));
            }
            Ok(cert) if cert.not_after < now => out.push(Problem::warning(
                subject(),
                "certificate_expired",
                "the certificate has expired",
            )),
            Ok(_) => {}
        }
    }
}

/// The certificates of the Secrets in use, parsed once per content.
#[derive(Debug, Default)]
pub(super) struct Certs {
    by_secret: HashMap<ObjectKey, CertMemo>,
}

impl Certs {
    /// What `key` holds now, parsed again only if the Secret changed; `None` if it does not
    /// exist.
    pub(super) fn get(&mut self, world: &World, key: &ObjectKey) -> Option<&CertMemo> {
        let Some(secret) = world.secrets.get(key) else {
            self.by_secret.remove(key);
            return None;
        };
        let fresh = self
            .by_secret
            .get(key)
            .is_some_and(|m| Arc::ptr_eq(&m.source, secret));
        if !fresh {
            let memo = parse(secret, self.by_secret.get(key));
            self.by_secret.insert(key.clone(), memo);
        }
        self.by_secret.get(key)
    }

    /// The certificate to serve from `key`, if any.
    pub(super) fn current(&mut self, world: &World, key: &ObjectKey) -> Option<Arc<Certificate>> {
        self.get(world, key)?.current().cloned()
    }

    /// The certificate of a Secret pylon manages, if it holds a valid one.
    pub(super) fn managed(&mut self, world: &World, key: &ObjectKey) -> Option<Arc<Certificate>> {
        self.get(world, key)?.parsed.as_ref().ok().cloned()
    }

    /// The expiry of the certificate served from `key`, as last loaded.
    pub(super) fn not_after(&self, key: &ObjectKey) -> Option<i64> {
        self.by_secret.get(key)?.current().map(|c| c.not_after)
    }

    /// Drops a Secret no longer in use.
    pub(super) fn forget(&mut self, key: &ObjectKey) {
        self.by_secret.remove(key);
    }

    /// The problems of every Secret in use.
    pub(super) fn problems(&self, now: i64, out: &mut Vec<Problem>) {
        for (key, memo) in &self.by_secret {
            memo.problems(key, now, out);
        }
    }
}

fn parse(secret: &Arc<Secret>, previous: Option<&CertMemo>) -> CertMemo {
    let (crt, tls_key) = pem_pair(secret);
    let fingerprint = fingerprint(crt, tls_key);
    let awaiting_issue = crt.is_none() && crate::acme::state::managed_by_pylon(secret);
    if let Some(p) = previous
        && p.fingerprint == fingerprint
    {
        return CertMemo {
            source: secret.clone(),
            awaiting_issue,
            ..p.clone()
        };
    }
    let last_good = previous.and_then(|p| p.last_good.clone());
    let parsed = match (crt, tls_key, &last_good) {
        // The last good content back (a broken edit undone): the same certificate object.
        (_, _, Some((f, cert))) if *f == fingerprint => Ok(cert.clone()),
        (Some(c), Some(k), _) => Certificate::from_pem(c, k).map(Arc::new),
        (None, _, _) => Err(tls::Error::NoCertificate),
        (_, None, _) => Err(tls::Error::NoKey),
    };
    let last_good = match &parsed {
        Ok(cert) => Some((fingerprint, cert.clone())),
        Err(_) => last_good,
    };
    CertMemo {
        source: secret.clone(),
        fingerprint,
        parsed,
        last_good,
        awaiting_issue,
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
