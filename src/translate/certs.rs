//! TLS Secrets parsed into certificates, remembered between runs by the content of the Secret.

use foldhash::HashMap;
use std::collections::BTreeSet;
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

    /// When the Secret's problems must be looked at: `None` never (a valid certificate, or
    /// one not issued yet), `Some(i64::MIN)` always (it does not parse), else from the
    /// certificate's expiry on.
    fn troubled_from(&self) -> Option<i64> {
        match &self.parsed {
            Err(_) if self.awaiting_issue => None,
            Err(_) => Some(i64::MIN),
            // (`problems` reports a certificate from the second after its expiry.)
            Ok(cert) => Some(cert.not_after.saturating_add(1)),
        }
    }
}

/// The certificates of the Secrets in use, parsed once per content.
#[derive(Debug, Default)]
pub(super) struct Certs {
    by_secret: HashMap<ObjectKey, CertMemo>,
    /// Each Secret above by the time from which it has a problem (see
    /// [`CertMemo::troubled_from`]): collecting the problems visits only the Secrets due.
    troubled: BTreeSet<(i64, ObjectKey)>,
}

impl Certs {
    /// What `key` holds now, parsed again only if the Secret changed; `None` if it does not
    /// exist.
    pub(super) fn get(&mut self, world: &World, key: &ObjectKey) -> Option<&CertMemo> {
        let Some(secret) = world.secrets.get(key) else {
            self.put(key, None);
            return None;
        };
        let fresh = self
            .by_secret
            .get(key)
            .is_some_and(|m| Arc::ptr_eq(&m.source, secret));
        if !fresh {
            let memo = parse(secret, self.by_secret.get(key));
            self.put(key, Some(memo));
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
        self.put(key, None);
    }

    /// Replaces (or removes) what is known about `key`, keeping `troubled` in step.
    fn put(&mut self, key: &ObjectKey, memo: Option<CertMemo>) {
        if let Some(from) = self
            .by_secret
            .remove(key)
            .as_ref()
            .and_then(CertMemo::troubled_from)
        {
            self.troubled.remove(&(from, key.clone()));
        }
        if let Some(memo) = memo {
            if let Some(from) = memo.troubled_from() {
                self.troubled.insert((from, key.clone()));
            }
            self.by_secret.insert(key.clone(), memo);
        }
    }

    /// The problems of every Secret in use (at Unix time `now`).
    pub(super) fn problems(&self, now: i64, out: &mut Vec<Problem>) {
        for (_, key) in self
            .troubled
            .range(..(now.saturating_add(1), ObjectKey::new("", "")))
        {
            if let Some(memo) = self.by_secret.get(key) {
                memo.problems(key, now, out);
            }
        }
    }
}

#[cfg(test)]
impl Certs {
    /// Whether `troubled` holds exactly one entry for each Secret that may have a problem.
    pub(super) fn troubles_indexed(&self) -> bool {
        let expected: BTreeSet<(i64, ObjectKey)> = self
            .by_secret
            .iter()
            .filter_map(|(key, memo)| Some((memo.troubled_from()?, key.clone())))
            .collect();
        expected == self.troubled
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
