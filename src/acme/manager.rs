//! The ACME manager: runs in the process that holds the ordering lock, looks at every
//! certificate translate asks for, and issues, renews or waits. Its results are Secrets written
//! through the [`Store`]; they reach the TLS resolver the way every Secret does (source →
//! translate → snapshot).
//!
//! Everything it decides on is read back from the Secrets (order in flight, failures, next
//! attempt), so a restart or a new leader carries on where the last one stopped, and a crash loop
//! cannot burn the CA's rate limits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use foldhash::{HashMap, HashSet};
use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, ChallengeType, Identifier, NewOrder, OrderStatus,
    RetryPolicy,
};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use rustls::pki_types::pem::PemObject;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::challenge::Answer;
use super::issuer::{AcmeIssuer, Method};
use super::keys::pkcs8_pem;
use super::local::{self, DEFAULT_DURATION, Issued};
use super::lock::Leadership;
use super::order::{self, Failure, timed};
use super::request::CertificateRequest;
use super::schedule;
use super::state::{self, OrderState};
use super::store::{SecretWrite, Store};
use crate::metrics::Metrics;
use crate::snapshot::Published;
use crate::source::ObjectKey;
use crate::tls::Certificate;

/// The certificates to look after, from the last published translation.
#[derive(Debug, Default)]
pub struct Work {
    pub generation: u64,
    pub requests: Vec<CertificateRequest>,
}

/// How long a renewal check or retry may be put off at most.
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// How often the CA's renewal information is fetched again.
const ARI_INTERVAL: SignedDuration = SignedDuration::from_hours(12);
/// How long to wait for a new account key to reach the challenge responders.
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of the manager.
#[derive(Clone, Debug)]
pub struct Options {
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
}

pub struct Manager {
    store: Arc<dyn Store>,
    leadership: Arc<dyn Leadership>,
    published: Published,
    metrics: Arc<Metrics>,
    options: Options,
    /// Open accounts by issuer, with the thumbprint of the key they were opened with.
    accounts: HashMap<String, (String, Account)>,
    /// Directories known to lack ACME Renewal Information.
    no_ari: HashSet<String>,
    /// Issuers whose recorded account URL the server no longer knows.
    stale_accounts: HashSet<String>,
    /// What pylon last wrote to each Secret, until the source reads it back.
    written: HashMap<ObjectKey, SecretWrite>,
}

/// The target Secret as the manager sees it: its last write, or what the source read.
struct View {
    data: BTreeMap<String, Vec<u8>>,
    state: OrderState,
    certificate: Option<Arc<Certificate>>,
    pending_key: Option<Vec<u8>>,
}

#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// Valid; look again at this time.
    Keep(Timestamp),
    /// Failed before; try again at this time.
    Wait(Timestamp),
    /// Issue now, for this reason.
    Issue(&'static str),
}

impl Manager {
    pub fn new(
        store: Arc<dyn Store>,
        leadership: Arc<dyn Leadership>,
        published: Published,
        metrics: Arc<Metrics>,
        options: Options,
    ) -> Self {
        Self {
            store,
            leadership,
            published,
            metrics,
            options,
            accounts: HashMap::default(),
            no_ari: HashSet::default(),
            stale_accounts: HashSet::default(),
            written: HashMap::default(),
        }
    }

    /// Waits for leadership, then looks after the certificates until shutdown.
    pub async fn run(mut self, mut work: watch::Receiver<Arc<Work>>, mut shutdown: watch::Receiver<bool>) {
        tokio::select! {
            _ = self.leadership.acquire() => {}
            _ = shutdown.changed() => return,
        }
        self.metrics.acme_leader.set(1);
        info!("this process orders certificates");
        loop {
            let current = work.borrow_and_update().clone();
            let next = self.pass(&current).await;
            let wait = next
                .duration_since(Timestamp::now())
                .try_into()
                .unwrap_or(Duration::ZERO)
                .clamp(Duration::from_millis(200), MAX_SLEEP);
            tokio::select! {
                changed = work.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Looks at every certificate once; returns when to look again.
    async fn pass(&mut self, work: &Work) -> Timestamp {
        let mut next = Timestamp::now() + SignedDuration::try_from(MAX_SLEEP).unwrap_or_default();
        let live: HashSet<&ObjectKey> = work.requests.iter().map(|r| &r.secret).collect();
        self.written.retain(|k, _| live.contains(k));
        for req in &work.requests {
            if !self.leadership.is_leader() {
                warn!("no longer the process that orders certificates");
                self.metrics.acme_leader.set(0);
                break;
            }
            let view = self.view(req);
            let now = Timestamp::now();
            let at = match decide(req, &view, now) {
                Decision::Keep(at) => {
                    let at = self.check_renewal_info(req, &view, at).await;
                    debug!(secret = %req.secret, renew_at = %at, "certificate is valid");
                    at
                }
                Decision::Wait(at) => {
                    debug!(secret = %req.secret, retry_at = %at, "waiting before the next attempt");
                    at
                }
                Decision::Issue(why) => {
                    self.issue(req, view, why).await;
                    // Look again soon: the result decides the next time.
                    now + SignedDuration::from_millis(500)
                }
            };
            self.metrics
                .certificate_renewal
                .with_label_values(&[&req.secret.namespace, &req.secret.name])
                .set(at.as_second() as f64);
            next = next.min(at);
        }
        next
    }

    /// The newest known content of the target Secret.
    fn view(&self, req: &CertificateRequest) -> View {
        if let Some(w) = self.written.get(&req.secret) {
            let state = OrderState::from_annotations(Some(&w.annotations));
            if state.revision > req.current.state.revision || !req.current.exists {
                let certificate = match (w.data.get("tls.crt"), w.data.get("tls.key")) {
                    (Some(c), Some(k)) => Certificate::from_pem(c, k).ok().map(Arc::new),
                    _ => None,
                };
                let pending_key = w.data.get(state::PENDING_KEY).and_then(|pem| pkcs8_from_pem(pem));
                return View {
                    data: w.data.clone(),
                    state,
                    certificate,
                    pending_key,
                };
            }
        }
        let data = req
            .current
            .secret
            .as_ref()
            .and_then(|s| s.data.as_ref())
            .map(|d| d.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
            .unwrap_or_default();
        View {
            data,
            state: req.current.state.clone(),
            certificate: req.current.certificate.clone(),
            pending_key: req.current.pending_key.clone(),
        }
    }

    async fn issue(&mut self, req: &CertificateRequest, view: View, why: &'static str) {
        let issuer = req.issuer_id();
        info!(secret = %req.secret, hosts = %req.hosts.join(","), issuer = %issuer, why, "issuing a certificate");
        let started = std::time::Instant::now();
        let duration = req.duration.unwrap_or(DEFAULT_DURATION);
        let result = match &req.issuer.method {
            Method::SelfSigned => {
                local::self_signed(&req.hosts, req.common_name.as_deref(), req.key, duration)
                    .map_err(|e| Failure::new("client_error", e))
            }
            Method::Ca { .. } => match &req.material.ca {
                Some((cert, key)) => local::from_ca(
                    &req.hosts,
                    req.common_name.as_deref(),
                    req.key,
                    duration,
                    cert,
                    key,
                )
                .map_err(|e| Failure::new("ca_error", e)),
                None => Err(Failure::new("ca_error", "the CA Secret is missing")),
            },
            Method::Acme(acme) => self.acme(req, acme, &view, why == "renewal").await,
        };
        // The attempt may have recorded progress: build on the newest content.
        let view = self.view(req);
        match result {
            Ok(issued) => {
                self.store_certificate(req, &view, issued, started.elapsed())
                    .await
            }
            Err(failure) => self.store_failure(req, &view, failure).await,
        }
    }

    async fn store_certificate(
        &mut self,
        req: &CertificateRequest,
        view: &View,
        issued: Issued,
        took: Duration,
    ) {
        let issuer = req.issuer_id();
        let key_pem = pkcs8_pem(&issued.key_pkcs8);
        let cert = match Certificate::from_pem(issued.chain_pem.as_bytes(), key_pem.as_bytes()) {
            Ok(c) => c,
            Err(e) => {
                let f = Failure::new(
                    "bad_certificate",
                    format!("the issued certificate is unusable: {e}"),
                );
                return self.store_failure(req, view, f).await;
            }
        };
        let mut data = BTreeMap::new();
        data.insert("tls.crt".to_owned(), issued.chain_pem.into_bytes());
        data.insert("tls.key".to_owned(), key_pem.into_bytes());
        if let Some(ca) = issued.ca_pem {
            data.insert("ca.crt".to_owned(), ca.into_bytes());
        }
        let state = OrderState {
            revision: view.state.revision + 1,
            issuer: issuer.clone(),
            hosts: req.hosts.clone(),
            not_after: Timestamp::from_second(cert.not_after).ok(),
            ..OrderState::default()
        };
        let renew_at = Timestamp::from_second(cert.not_before)
            .ok()
            .zip(state.not_after)
            .map(|(nb, na)| schedule::renew_at(nb, na, req.renew_before));
        let write = certificate_secret(req, state, data);
        match self.store.write(&write).await {
            Ok(()) => {
                self.metrics
                    .acme_orders
                    .with_label_values(&[&issuer, "issued"])
                    .inc();
                info!(
                    secret = %req.secret,
                    hosts = %req.hosts.join(","),
                    issuer = %issuer,
                    serial = %cert.serial,
                    not_after = %state_time(cert.not_after),
                    renew_at = %renew_at.map(|t| t.to_string()).unwrap_or_default(),
                    took_ms = took.as_millis() as u64,
                    "certificate issued and stored"
                );
                self.written.insert(req.secret.clone(), write);
            }
            Err(e) => warn!(error = %e, "cannot store the issued certificate"),
        }
    }

    async fn store_failure(&mut self, req: &CertificateRequest, view: &View, failure: Failure) {
        let issuer = req.issuer_id();
        let failures = view.state.failures + 1;
        let now = Timestamp::now();
        let backoff = schedule::backoff(
            failures,
            self.options.retry_backoff,
            self.options.retry_backoff_max,
        );
        let retry_at = failure
            .not_before
            .filter(|t| *t > now)
            .unwrap_or_else(|| now + SignedDuration::try_from(backoff).unwrap_or_default());
        let mut state = view.state.clone();
        state.revision += 1;
        state.failures = failures;
        state.retry_after = Some(retry_at);
        state.last_error = Some(truncate(&failure.message, 512));
        if state.issuer.is_empty() {
            state.issuer = issuer.clone();
        }
        if state.hosts.is_empty() {
            state.hosts = req.hosts.clone();
        }
        let result = if failure.reason == "rate_limited" {
            "rate_limited"
        } else {
            "failed"
        };
        self.metrics
            .acme_orders
            .with_label_values(&[&issuer, result])
            .inc();
        self.metrics
            .acme_failures
            .with_label_values(&[&issuer, failure.reason])
            .inc();
        warn!(
            secret = %req.secret,
            hosts = %req.hosts.join(","),
            issuer = %issuer,
            reason = failure.reason,
            failures,
            retry_at = %retry_at,
            "certificate not issued: {}",
            failure.message
        );
        if failure.account_gone {
            self.accounts.remove(&issuer);
            self.stale_accounts.insert(issuer.clone());
        }
        let write = certificate_secret(req, state, view.data.clone());
        match self.store.write(&write).await {
            Ok(()) => {
                self.written.insert(req.secret.clone(), write);
            }
            Err(e) => warn!(error = %e, "cannot record the failed attempt"),
        }
    }

    /// Writes order progress without changing the certificate.
    async fn record_progress(
        &mut self,
        req: &CertificateRequest,
        view: &View,
        change: impl FnOnce(&mut OrderState, &mut BTreeMap<String, Vec<u8>>),
    ) -> Result<(), Failure> {
        let current = self.view(req);
        let mut state = current.state.clone();
        let mut data = if current.data.is_empty() {
            view.data.clone()
        } else {
            current.data
        };
        state.revision += 1;
        if state.issuer.is_empty() {
            state.issuer = req.issuer_id();
        }
        if state.hosts.is_empty() {
            state.hosts = req.hosts.clone();
        }
        change(&mut state, &mut data);
        let write = certificate_secret(req, state, data);
        self.store
            .write(&write)
            .await
            .map_err(|e| Failure::new("store_error", e.to_string()))?;
        self.written.insert(req.secret.clone(), write);
        Ok(())
    }

    /// One ACME order, resumed or new, through to the certificate.
    async fn acme(
        &mut self,
        req: &CertificateRequest,
        acme: &AcmeIssuer,
        view: &View,
        renewing: bool,
    ) -> Result<Issued, Failure> {
        let account = self.account(req, acme).await?;
        let resumed = match &view.state.order_url {
            Some(url) => self.resume(&account, url, view).await,
            None => None,
        };
        let mut order = match resumed {
            Some(Resumed::Certificate(issued)) => return Ok(issued),
            Some(Resumed::Order(order)) => *order,
            None => {
                let identifiers: Vec<Identifier> =
                    req.hosts.iter().map(|h| Identifier::Dns(h.clone())).collect();
                let mut new = NewOrder::new(&identifiers);
                if let Some(profile) = &acme.profile {
                    check_profile(&account, profile)?;
                    new = new.profile(profile);
                }
                let replaces = renewing
                    .then(|| view.certificate.as_ref().and_then(|c| identifier(c)))
                    .flatten()
                    .filter(|_| !self.no_ari.contains(&acme.directory));
                if let Some(id) = &replaces {
                    new = new.replaces(id.clone());
                }
                let order = timed(30, "new order", account.new_order(&new)).await?;
                info!(secret = %req.secret, order = %order.url(), "order placed");
                let url = order.url().to_owned();
                self.record_progress(req, view, |s, _| s.order_url = Some(url))
                    .await?;
                order
            }
        };

        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(Failure::from)?;
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(Failure::new(
                        "validation_failed",
                        format!("authorization for {} is {other:?}", authz.identifier()),
                    ));
                }
            }
            let host = authz.identifier().to_string();
            let mut challenge = authz.challenge(ChallengeType::Http01).ok_or_else(|| {
                Failure::new("server_error", format!("no http-01 challenge offered for {host}"))
            })?;
            let expected = challenge.key_authorization().as_str().to_owned();
            let token = challenge.token.clone();
            self.wait_until_answered(&host, &token, &expected).await?;
            debug!(%host, "challenge ready");
            timed(30, "challenge", challenge.set_ready()).await?;
        }
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(Duration::from_secs(90));
        let status = timed(120, "validation", order.poll_ready(&retry)).await?;
        if status != OrderStatus::Ready {
            return Err(Failure::new(
                "validation_failed",
                format!("order is {status:?} after validation"),
            ));
        }
        let key = match &view.pending_key {
            Some(k) => k.clone(),
            None => {
                let k = req.key.generate().map_err(|e| Failure::new("client_error", e))?;
                let pem = pkcs8_pem(&k).into_bytes();
                self.record_progress(req, view, |_, data| {
                    data.insert(state::PENDING_KEY.to_owned(), pem);
                })
                .await?;
                k
            }
        };
        let csr = order::csr(&req.hosts, req.common_name.as_deref(), req.key, &key)?;
        timed(30, "finalize", order.finalize_csr(&csr)).await?;
        let chain = timed(120, "certificate download", order.poll_certificate(&retry)).await?;
        Ok(Issued {
            chain_pem: chain,
            key_pkcs8: key,
            ca_pem: None,
        })
    }

    /// Picks up an order recorded on the Secret: continue it, download its certificate, or
    /// abandon it.
    async fn resume(&mut self, account: &Account, url: &str, view: &View) -> Option<Resumed> {
        let mut order = match timed(30, "order", account.order(url.to_owned())).await {
            Ok(o) => o,
            Err(f) => {
                info!(order = url, reason = %f.message, "abandoning the recorded order");
                return None;
            }
        };
        let status = order.state().status;
        match (status, &view.pending_key) {
            (OrderStatus::Pending | OrderStatus::Ready, _) => {
                info!(order = url, ?status, "resuming the recorded order");
                Some(Resumed::Order(Box::new(order)))
            }
            (OrderStatus::Processing | OrderStatus::Valid, Some(key)) => {
                let retry = RetryPolicy::new().timeout(Duration::from_secs(60));
                match timed(90, "certificate download", order.poll_certificate(&retry)).await {
                    Ok(chain) => {
                        info!(order = url, "completing the recorded order");
                        Some(Resumed::Certificate(Issued {
                            chain_pem: chain,
                            key_pkcs8: key.clone(),
                            ca_pem: None,
                        }))
                    }
                    Err(_) => None,
                }
            }
            _ => {
                info!(order = url, ?status, "abandoning the recorded order");
                None
            }
        }
    }

    /// The issuer's account, opened once and kept; a new account key is stored in its Secret
    /// and given time to reach every challenge responder.
    async fn account(&mut self, req: &CertificateRequest, acme: &AcmeIssuer) -> Result<Account, Failure> {
        let issuer = req.issuer_id();
        let known_thumbprint = req.material.account_key.as_ref().map(|k| k.thumbprint.clone());
        if let Some((thumbprint, account)) = self.accounts.get(&issuer)
            && known_thumbprint.as_ref().is_none_or(|t| t == thumbprint)
        {
            return Ok(account.clone());
        }
        let stale = self.stale_accounts.contains(&issuer);
        let opened = order::open_account(acme, &req.material, stale).await?;
        self.stale_accounts.remove(&issuer);
        if opened.store && req.material.account_secret_writable {
            let Some(secret) = &req.material.account_secret else {
                return Err(Failure::new("client_error", "no account Secret"));
            };
            let write = SecretWrite {
                key: secret.clone(),
                type_: "Opaque".into(),
                labels: BTreeMap::from([(state::MANAGED_BY.to_owned(), state::PYLON.to_owned())]),
                annotations: BTreeMap::from([
                    (state::ACCOUNT_URL.to_owned(), opened.account.id().to_owned()),
                    (state::ACCOUNT_DIRECTORY.to_owned(), acme.directory.clone()),
                ]),
                data: BTreeMap::from([(acme_key_name(acme, secret), opened.key.pem().into_bytes())]),
            };
            self.store
                .write(&write)
                .await
                .map_err(|e| Failure::new("store_error", e.to_string()))?;
            info!(issuer = %issuer, secret = %secret, account = opened.account.id(), "ACME account stored");
        }
        self.accounts
            .insert(issuer, (opened.key.thumbprint.clone(), opened.account.clone()));
        Ok(opened.account)
    }

    /// Waits until this replica answers the challenge as the CA expects (a new account key
    /// reaches the responders through the same Secret every replica reads).
    async fn wait_until_answered(&self, host: &str, token: &str, expected: &str) -> Result<(), Failure> {
        let deadline = tokio::time::Instant::now() + PROPAGATION_TIMEOUT;
        let mut waited = false;
        loop {
            let answer = self.published.load().challenges.answer(Some(host), token);
            if answer == Answer::Respond(expected.to_owned()) {
                if waited {
                    // Give the other replicas the same chance to read the key.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Failure::new(
                    "challenge_not_served",
                    format!(
                        "the challenge for {host} is not answered with the account's key after {PROPAGATION_TIMEOUT:?}"
                    ),
                ));
            }
            waited = true;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// With ACME Renewal Information, the CA says when to renew; checked twice a day.
    async fn check_renewal_info(
        &mut self,
        req: &CertificateRequest,
        view: &View,
        fallback: Timestamp,
    ) -> Timestamp {
        let Method::Acme(acme) = &req.issuer.method else {
            return fallback;
        };
        let now = Timestamp::now();
        if self.no_ari.contains(&acme.directory)
            || view.state.ari_checked_at.is_some_and(|t| t + ARI_INTERVAL > now)
        {
            return fallback;
        }
        let Some(id) = view.certificate.as_ref().and_then(|c| identifier(c)) else {
            return fallback;
        };
        let Ok(account) = self.account(req, acme).await else {
            return fallback;
        };
        match tokio::time::timeout(Duration::from_secs(30), account.renewal_info(&id)).await {
            Ok(Ok((info, _retry_after))) => {
                let window = &info.suggested_window;
                let (Ok(start), Ok(end)) = (
                    Timestamp::from_second(window.start.unix_timestamp()),
                    Timestamp::from_second(window.end.unix_timestamp()),
                ) else {
                    return fallback;
                };
                let at = schedule::within_window(start, end, now, fastrand::f64());
                info!(secret = %req.secret, renew_at = %at, "renewal time from the CA's renewal information");
                let recorded = self
                    .record_progress(req, view, |s, _| {
                        s.renew_at = Some(at);
                        s.ari_checked_at = Some(now);
                    })
                    .await;
                if let Err(f) = recorded {
                    warn!(reason = %f.message, "cannot record the renewal time");
                }
                at
            }
            Ok(Err(instant_acme::Error::Unsupported(_))) => {
                self.no_ari.insert(acme.directory.clone());
                fallback
            }
            Ok(Err(e)) => {
                debug!(error = %e, "renewal information unavailable");
                fallback
            }
            Err(_) => fallback,
        }
    }
}

enum Resumed {
    Order(Box<instant_acme::Order>),
    Certificate(Issued),
}

/// What to do about one certificate now.
fn decide(req: &CertificateRequest, view: &View, now: Timestamp) -> Decision {
    let issuer = req.issuer_id();
    let valid = view.certificate.as_ref().filter(|c| {
        let mut names = c.dns_names.clone();
        names.sort();
        names.dedup();
        names == req.hosts
            && (view.state.issuer.is_empty() || view.state.issuer == issuer)
            && Timestamp::from_second(c.not_after).is_ok_and(|na| na > now)
    });
    if let Some(cert) = valid {
        let (Ok(nb), Ok(na)) = (
            Timestamp::from_second(cert.not_before),
            Timestamp::from_second(cert.not_after),
        ) else {
            return Decision::Issue("unreadable validity");
        };
        let renew_at = match (view.state.ari_checked_at, view.state.renew_at) {
            (Some(_), Some(at)) => at,
            _ => schedule::renew_at(nb, na, req.renew_before),
        };
        if now < renew_at {
            return Decision::Keep(renew_at);
        }
    }
    if let Some(at) = view.state.retry_after.filter(|t| *t > now) {
        return Decision::Wait(at);
    }
    match (valid, &view.certificate) {
        (Some(_), _) => Decision::Issue("renewal"),
        (None, Some(_)) => Decision::Issue("names, issuer or validity changed"),
        (None, None) => Decision::Issue("no certificate yet"),
    }
}

fn check_profile(account: &Account, wanted: &str) -> Result<(), Failure> {
    let offered: Vec<String> = account.profiles().map(|p| p.name.to_owned()).collect();
    if offered.iter().any(|p| p == wanted) {
        Ok(())
    } else {
        Err(Failure::new(
            "profile_not_offered",
            format!(
                "the ACME server does not offer profile {wanted:?} (offered: {})",
                if offered.is_empty() {
                    "none".to_owned()
                } else {
                    offered.join(", ")
                }
            ),
        ))
    }
}

/// The ARI identifier of a certificate's leaf.
fn identifier(cert: &Certificate) -> Option<CertificateIdentifier<'static>> {
    let leaf = cert.key.end_entity_cert().ok()?;
    CertificateIdentifier::try_from(leaf)
        .ok()
        .map(CertificateIdentifier::into_owned)
}

/// The certificate Secret in cert-manager's layout, plus pylon's state.
fn certificate_secret(
    req: &CertificateRequest,
    state: OrderState,
    data: BTreeMap<String, Vec<u8>>,
) -> SecretWrite {
    let (kind, name) = (
        req.issuer.reference.kind.name(),
        req.issuer.reference.name.clone(),
    );
    let mut annotations = state.annotations();
    annotations.insert("cert-manager.io/alt-names".into(), req.hosts.join(","));
    annotations.insert(
        "cert-manager.io/common-name".into(),
        req.common_name
            .clone()
            .or_else(|| req.hosts.first().cloned())
            .unwrap_or_default(),
    );
    annotations.insert("cert-manager.io/ip-sans".into(), String::new());
    annotations.insert("cert-manager.io/uri-sans".into(), String::new());
    annotations.insert("cert-manager.io/issuer-name".into(), name);
    annotations.insert("cert-manager.io/issuer-kind".into(), kind.into());
    annotations.insert("cert-manager.io/issuer-group".into(), "cert-manager.io".into());
    annotations.insert("cert-manager.io/certificate-name".into(), req.secret.name.clone());
    let mut data = data;
    if !data.contains_key("tls.crt") {
        // The Secret type requires both keys; empty until the first certificate.
        data.insert("tls.crt".into(), Vec::new());
        data.insert("tls.key".into(), Vec::new());
    }
    SecretWrite {
        key: req.secret.clone(),
        type_: "kubernetes.io/tls".into(),
        labels: BTreeMap::from([
            (state::MANAGED_BY.to_owned(), state::PYLON.to_owned()),
            ("controller.cert-manager.io/fao".to_owned(), "true".to_owned()),
        ]),
        annotations,
        data,
    }
}

fn acme_key_name(acme: &AcmeIssuer, secret: &ObjectKey) -> String {
    // A sibling Secret (pylon's own account beside the user's) always uses tls.key.
    if *secret == acme.account_secret {
        acme.account_secret_key.clone()
    } else {
        "tls.key".to_owned()
    }
}

fn pkcs8_from_pem(pem: &[u8]) -> Option<Vec<u8>> {
    match rustls::pki_types::PrivateKeyDer::from_pem_slice(pem).ok()? {
        rustls::pki_types::PrivateKeyDer::Pkcs8(der) => Some(der.secret_pkcs8_der().to_vec()),
        _ => None,
    }
}

fn state_time(unix: i64) -> String {
    Timestamp::from_second(unix)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
