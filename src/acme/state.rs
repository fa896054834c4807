//! What pylon records on the certificate Secrets it manages: labels and annotations in
//! cert-manager's layout (so a user can switch back), plus pylon's own progress: the order in
//! flight, failures and when to retry, when to renew. Every replica and every restart reads it
//! back from the Secret, so decisions survive crashes and leader changes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;

/// `app.kubernetes.io/managed-by: pylon` marks the Secrets pylon created and may rewrite.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const PYLON: &str = "pylon";

const PREFIX: &str = "acme.pylon.dev/";
const REVISION: &str = "acme.pylon.dev/revision";
const ISSUER: &str = "acme.pylon.dev/issuer";
const HOSTS: &str = "acme.pylon.dev/hosts";
const ORDER_URL: &str = "acme.pylon.dev/order-url";
const FAILURES: &str = "acme.pylon.dev/failures";
const RETRY_AFTER: &str = "acme.pylon.dev/retry-after";
const LAST_ERROR: &str = "acme.pylon.dev/last-error";
const NOT_AFTER: &str = "acme.pylon.dev/not-after";
const RENEW_AT: &str = "acme.pylon.dev/renew-at";
const ARI_CHECKED: &str = "acme.pylon.dev/ari-checked-at";
/// Account Secrets: the account URL and the directory it belongs to.
pub const ACCOUNT_URL: &str = "acme.pylon.dev/account-url";
pub const ACCOUNT_DIRECTORY: &str = "acme.pylon.dev/directory";

/// The data key of a private key generated for an order in flight, kept so that an order
/// finalised before a crash can still be completed.
pub const PENDING_KEY: &str = "pending-tls.key";

/// Whether pylon created this Secret.
pub fn managed_by_pylon(secret: &Secret) -> bool {
    secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY))
        .is_some_and(|v| v == PYLON)
}

/// pylon's progress on one certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrderState {
    /// Increases with every write, so a newer local copy can be told from a stale read.
    pub revision: u64,
    /// `ClusterIssuer name` / `Issuer ns/name` the certificate was (or is being) issued by.
    pub issuer: String,
    /// The names requested, sorted.
    pub hosts: Vec<String>,
    pub order_url: Option<String>,
    pub failures: u32,
    pub retry_after: Option<Timestamp>,
    pub last_error: Option<String>,
    pub not_after: Option<Timestamp>,
    pub renew_at: Option<Timestamp>,
    pub ari_checked_at: Option<Timestamp>,
}

impl OrderState {
    pub fn from_annotations(annotations: Option<&BTreeMap<String, String>>) -> Self {
        let Some(a) = annotations else {
            return Self::default();
        };
        let time = |k: &str| a.get(k).and_then(|v| v.parse::<Timestamp>().ok());
        Self {
            revision: a.get(REVISION).and_then(|v| v.parse().ok()).unwrap_or(0),
            issuer: a.get(ISSUER).cloned().unwrap_or_default(),
            hosts: a
                .get(HOSTS)
                .map(|h| {
                    h.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            order_url: a.get(ORDER_URL).cloned().filter(|u| !u.is_empty()),
            failures: a.get(FAILURES).and_then(|v| v.parse().ok()).unwrap_or(0),
            retry_after: time(RETRY_AFTER),
            last_error: a.get(LAST_ERROR).cloned().filter(|e| !e.is_empty()),
            not_after: time(NOT_AFTER),
            renew_at: time(RENEW_AT),
            ari_checked_at: time(ARI_CHECKED),
        }
    }

    /// pylon's annotations for this state (the cert-manager ones are added by the writer).
    pub fn annotations(&self) -> BTreeMap<String, String> {
        let mut a = BTreeMap::new();
        a.insert(REVISION.into(), self.revision.to_string());
        a.insert(ISSUER.into(), self.issuer.clone());
        a.insert(HOSTS.into(), self.hosts.join(","));
        a.insert(FAILURES.into(), self.failures.to_string());
        let mut opt = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                a.insert(k.into(), v);
            }
        };
        opt(ORDER_URL, self.order_url.clone());
        opt(RETRY_AFTER, self.retry_after.map(|t| t.to_string()));
        opt(LAST_ERROR, self.last_error.clone());
        opt(NOT_AFTER, self.not_after.map(|t| t.to_string()));
        opt(RENEW_AT, self.renew_at.map(|t| t.to_string()));
        opt(ARI_CHECKED, self.ari_checked_at.map(|t| t.to_string()));
        a
    }

    /// Whether any pylon annotation is present (the Secret has been worked on).
    pub fn present(annotations: Option<&BTreeMap<String, String>>) -> bool {
        annotations.is_some_and(|a| a.keys().any(|k| k.starts_with(PREFIX)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_annotations() {
        let state = OrderState {
            revision: 7,
            issuer: "ClusterIssuer le".into(),
            hosts: vec!["a.test".into(), "b.test".into()],
            order_url: Some("https://acme.test/order/1".into()),
            failures: 2,
            retry_after: Some("2026-11-28T12:00:00Z".parse().unwrap()),
            last_error: Some("rate limited".into()),
            not_after: Some("2027-02-26T12:00:00Z".parse().unwrap()),
            renew_at: Some("2027-01-27T12:00:00Z".parse().unwrap()),
            ari_checked_at: None,
        };
        let a = state.annotations();
        assert_eq!(OrderState::from_annotations(Some(&a)), state);
        assert!(OrderState::present(Some(&a)));
        assert_eq!(OrderState::from_annotations(None), OrderState::default());
    }
}
