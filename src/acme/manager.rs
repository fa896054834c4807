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
use tracing::{debug, error, info, warn};

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
use crate::cluster::events::{EventRequest, Events};
use crate::metrics::Metrics;
use crate::snapshot::Published;
use crate::source::ObjectKey;
use crate::tls::Certificate;

/// What the leader looks after, from the last published translation.
#[derive(Debug, Default)]
pub struct Work {
    pub generation: u64,
    pub requests: Arc<Vec<CertificateRequest>>,
    /// The Ingresses pylon serves.
    pub served: imbl::OrdSet<ObjectKey>,
    /// The objects the translation was made from.
    pub world: Arc<crate::source::World>,
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
    /// Events on the Ingresses certificates are for (cluster mode).
    events: Events,
    /// Secrets pylon could not write (no permission, another owner): attempts and the time
    /// of the next one. Kept in memory, since the failure itself cannot be recorded.
    unwritable: HashMap<ObjectKey, (u32, Timestamp)>,
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
            events: Events::none(),
            unwritable: HashMap::default(),
        }
    }

    pub fn with_events(mut self, events: Events) -> Self {
        self.events = events;
        self
    }

    /// An Event on the Ingress a certificate is for.
    fn event(&self, req: &CertificateRequest, warning: bool, reason: &str, note: String) {
        if let Some(regarding) = req.ingress_ref.clone() {
            self.events.send(EventRequest {
                regarding,
                warning,
                reason: reason.to_owned(),
                note,
                action: "Issue",
            });
        }
    }

    /// Waits for leadership, then looks after the certificates while it lasts, until shutdown.
    pub async fn run(mut self, mut work: watch::Receiver<Arc<Work>>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = self.leadership.acquire() => {}
                _ = shutdown.changed() => return,
            }
            // Another process may have written meanwhile: trust only what the source reads.
            self.written.clear();
            self.accounts.clear();
            self.metrics.acme_leader.set(1);
            info!("this process orders certificates");
            while self.leadership.is_leader() {
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
            self.metrics.acme_leader.set(0);
            warn!("this process no longer orders certificates");
        }
    }

    /// Looks at every certificate once; returns when to look again.
    async fn pass(&mut self, work: &Work) -> Timestamp {
        let mut next = Timestamp::now() + SignedDuration::try_from(MAX_SLEEP).unwrap_or_default();
        let live: HashSet<&ObjectKey> = work.requests.iter().map(|r| &r.secret).collect();
        self.written.retain(|k, _| live.contains(k));
        for req in work.requests.iter() {
            if !self.leadership.is_leader() {
                break;
            }
            let view = self.view(req);
            let now = Timestamp::now();
            let blocked = self
                .unwritable
                .get(&req.secret)
                .map(|(_, at)| *at)
                .filter(|at| *at > now);
            let decision = match blocked {
                Some(at) => Decision::Wait(at),
                None => decide(req, &view, now),
            };
            let at = match decision {
                Decision::Keep(at) => {
                    let at = match crate::recover::catch_async(self.check_renewal_info(req, &view, at)).await
                    {
                        Ok(at) => at,
                        Err(message) => {
                            error!(secret = %req.secret, %message, "checking renewal information failed unexpectedly");
                            at
                        }
                    };
                    debug!(secret = %req.secret, renew_at = %at, "certificate is valid");
                    at
                }
                Decision::Wait(at) => {
                    debug!(secret = %req.secret, retry_at = %at, "waiting before the next attempt");
                    at
                }
                Decision::Issue(why) => {
                    if let Err(message) = crate::recover::catch_async(self.issue(req, view, why)).await {
                        // A bug reached by this certificate: the others go on; this one waits.
                        error!(secret = %req.secret, %message, "issuing the certificate failed unexpectedly");
                        self.metrics
                            .acme_failures
                            .with_label_values(&[&req.issuer_id(), "internal_error"])
                            .inc();
                        self.back_off(&req.secret);
                    }
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
        let not_after = Timestamp::from_second(cert.not_after).ok();
        let renew_at = Timestamp::from_second(cert.not_before)
            .ok()
            .zip(not_after)
            .map(|(nb, na)| schedule::renew_at(nb, na, req.renew_before));
        let state = OrderState {
            revision: view.state.revision + 1,
            issuer: issuer.clone(),
            hosts: req.hosts.clone(),
            not_after,
            renew_at,
            ..OrderState::default()
        };
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
                self.unwritable.remove(&req.secret);
                self.event(
                    req,
                    false,
                    "CertificateIssued",
                    format!(
                        "certificate for {} issued by {}, valid until {}, stored in Secret {}",
                        req.hosts.join(", "),
                        issuer,
                        state_time(cert.not_after),
                        req.secret.name
                    ),
                );
            }
            Err(e) => {
                warn!(error = %e, "cannot store the issued certificate");
                self.event(req, true, "CertificateNotStored", e.to_string());
                self.back_off(&req.secret);
            }
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
        let (reason, note) = if result == "rate_limited" {
            (
                "RateLimited",
                format!(
                    "{} rate-limits this certificate until {retry_at}: {}",
                    issuer, failure.message
                ),
            )
        } else {
            (
                if view.certificate.is_some() {
                    "RenewalFailed"
                } else {
                    "CertificateFailed"
                },
                format!(
                    "{} ({}): {}; attempt {failures}, next at {retry_at}",
                    issuer, failure.reason, failure.message
                ),
            )
        };
        self.event(req, true, reason, note);
        let write = certificate_secret(req, state, view.data.clone());
        match self.store.write(&write).await {
            Ok(()) => {
                self.written.insert(req.secret.clone(), write);
                self.unwritable.remove(&req.secret);
            }
            Err(e) => {
                warn!(error = %e, "cannot record the failed attempt");
                self.back_off(&req.secret);
            }
        }
    }

    /// Backs off a Secret in memory: one that cannot be written, or whose work failed
    /// unexpectedly.
    fn back_off(&mut self, secret: &ObjectKey) {
        let failures = self.unwritable.get(secret).map_or(0, |(n, _)| *n) + 1;
        let delay = schedule::backoff(
            failures,
            self.options.retry_backoff,
            self.options.retry_backoff_max,
        );
        let at = Timestamp::now() + SignedDuration::try_from(delay).unwrap_or_default();
        self.unwritable.insert(secret.clone(), (failures, at));
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
                // Recorded before anything else, so that a successor resumes this order. (A
                // crash right here leaves a pending order at the CA that is never finalised:
                // no certificate is issued twice.)
                let url = order.url().to_owned();
                self.record_progress(req, view, |s, _| s.order_url = Some(url))
                    .await?;
                info!(secret = %req.secret, order = %order.url(), "order placed");
                self.event(
                    req,
                    false,
                    "CertificateOrdered",
                    format!(
                        "ordered a certificate for {} from {} for Secret {}",
                        req.hosts.join(", "),
                        req.issuer_id(),
                        req.secret.name
                    ),
                );
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

#[cfg(test)]
mod tests {
    //! Paths Pebble 2.4 cannot exercise (it has neither ACME Renewal Information nor profiles),
    //! against a minimal mock directory.

    use std::convert::Infallible;
    use std::net::SocketAddr;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    use super::*;
    use crate::acme::issuer::{IssuerConfig, IssuerRef, SolverChoice};
    use crate::acme::keys::{AccountKey, KeySpec};
    use crate::acme::lock::FileLock;
    use crate::acme::request::{Current, IssuerMaterial};
    use crate::acme::store::FilesStore;

    /// Serves a directory (with `renewalInfo` and profiles when `ari` is set) and one renewal
    /// window for any certificate.
    async fn mock_directory(ari: bool) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| async move {
                        let base = format!("http://{addr}");
                        let (body, retry_after) = if req.uri().path() == "/dir" {
                            let mut dir = serde_json::json!({
                                "newNonce": format!("{base}/nonce"),
                                "newAccount": format!("{base}/account"),
                                "newOrder": format!("{base}/order"),
                                "revokeCert": format!("{base}/revoke"),
                                "keyChange": format!("{base}/key"),
                            });
                            if ari {
                                dir["renewalInfo"] = format!("{base}/renewal-info").into();
                                dir["meta"] = serde_json::json!({"profiles": {"classic": "90 days", "shortlived": "6 days"}});
                            }
                            (dir.to_string(), None)
                        } else {
                            let window = r#"{"suggestedWindow":{"start":"2030-01-01T00:00:00Z","end":"2030-01-03T00:00:00Z"}}"#;
                            (window.to_owned(), Some("21600"))
                        };
                        let mut resp = http::Response::new(Full::new(Bytes::from(body)));
                        resp.headers_mut()
                            .insert("content-type", "application/json".parse().unwrap());
                        if let Some(r) = retry_after {
                            resp.headers_mut().insert("retry-after", r.parse().unwrap());
                        }
                        Ok::<_, Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        addr
    }

    fn request(directory: String) -> CertificateRequest {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let hosts = vec!["app.test".to_string()];
        let issued = local::from_ca(
            &hosts,
            None,
            KeySpec::EcdsaP256,
            Duration::from_secs(90 * 86400),
            ca_cert.pem().as_bytes(),
            ca_key.serialize_pem().as_bytes(),
        )
        .unwrap();
        let key_pem = pkcs8_pem(&issued.key_pkcs8);
        let cert = Certificate::from_pem(issued.chain_pem.as_bytes(), key_pem.as_bytes()).unwrap();
        let secret = k8s_openapi::api::core::v1::Secret {
            data: Some(BTreeMap::from([
                (
                    "tls.crt".to_owned(),
                    k8s_openapi::ByteString(issued.chain_pem.into_bytes()),
                ),
                (
                    "tls.key".to_owned(),
                    k8s_openapi::ByteString(key_pem.into_bytes()),
                ),
            ])),
            ..Default::default()
        };
        let acme = AcmeIssuer {
            directory,
            email: None,
            account_secret: ObjectKey::new("pylon", "acct"),
            account_secret_key: "tls.key".into(),
            disable_account_key_generation: false,
            external_account: None,
            ca_bundle: None,
            skip_tls_verify: false,
            profile: None,
            solvers: vec![SolverChoice {
                http01: true,
                dns_names: vec![],
                dns_zones: vec![],
                has_labels: false,
            }],
        };
        let state = OrderState {
            revision: 1,
            issuer: "ClusterIssuer mock".into(),
            hosts: hosts.clone(),
            ..OrderState::default()
        };
        CertificateRequest {
            secret: ObjectKey::new("default", "app-tls"),
            ingress: ObjectKey::new("default", "app"),
            ingress_ref: None,
            hosts,
            common_name: None,
            key: KeySpec::EcdsaP256,
            duration: None,
            renew_before: None,
            issuer: Arc::new(IssuerConfig {
                reference: IssuerRef::cluster("mock"),
                method: Method::Acme(Box::new(acme)),
            }),
            material: Arc::new(IssuerMaterial {
                account_secret: Some(ObjectKey::new("pylon", "acct")),
                account_secret_writable: true,
                account_key: Some(AccountKey::generate().unwrap()),
                account_url: Some("http://127.0.0.1:9/account/1".into()),
                eab_key: None,
                ca: None,
            }),
            current: Current {
                exists: true,
                certificate: Some(Arc::new(cert)),
                state,
                pending_key: None,
                secret: Some(Arc::new(secret)),
            },
        }
    }

    fn manager(dir: &std::path::Path) -> Manager {
        let published = Published::default();
        Manager::new(
            Arc::new(FilesStore::new(dir.to_owned())),
            Arc::new(FileLock::new(dir.to_owned())),
            published.clone(),
            Metrics::new(published),
            Options {
                retry_backoff: Duration::from_secs(60),
                retry_backoff_max: Duration::from_secs(86400),
            },
        )
    }

    #[tokio::test]
    async fn renewal_time_comes_from_the_ca_when_it_offers_renewal_information() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let addr = mock_directory(true).await;
        let dir = tempfile::tempdir().unwrap();
        let mut m = manager(dir.path());
        let req = request(format!("http://{addr}/dir"));
        let view = m.view(&req);
        let fallback = Timestamp::now();
        let at = m.check_renewal_info(&req, &view, fallback).await;
        assert!(
            at >= "2030-01-01T00:00:00Z".parse().unwrap() && at <= "2030-01-03T00:00:00Z".parse().unwrap(),
            "{at}"
        );
        // Recorded on the Secret, so the next process does not ask again for twelve hours.
        let written = &m.written[&req.secret];
        let state = OrderState::from_annotations(Some(&written.annotations));
        assert_eq!(state.renew_at, Some(at));
        assert!(state.ari_checked_at.is_some());
        assert_eq!(state.revision, 2);
        assert!(
            std::fs::read_to_string(dir.path().join("secrets/default/app-tls.yaml"))
                .unwrap()
                .contains("acme.pylon.dev/renew-at")
        );
        // And the decision follows it.
        let view = m.view(&req);
        assert_eq!(decide(&req, &view, Timestamp::now()), Decision::Keep(at));
    }

    #[tokio::test]
    async fn without_renewal_information_the_lifetime_rule_applies() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let addr = mock_directory(false).await;
        let dir = tempfile::tempdir().unwrap();
        let mut m = manager(dir.path());
        let req = request(format!("http://{addr}/dir"));
        let view = m.view(&req);
        let fallback: Timestamp = "2031-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(m.check_renewal_info(&req, &view, fallback).await, fallback);
        assert!(m.no_ari.contains(&format!("http://{addr}/dir")));
        assert!(m.written.is_empty(), "nothing to record");
        let Decision::Keep(at) = decide(&req, &view, Timestamp::now()) else {
            panic!("a fresh certificate is kept")
        };
        let cert = view.certificate.as_ref().unwrap();
        let lifetime = cert.not_after - cert.not_before;
        assert_eq!(
            cert.not_after - at.as_second(),
            lifetime / 3,
            "renewed with a third left"
        );
    }

    #[tokio::test]
    async fn profiles_are_checked_against_the_directory() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let addr = mock_directory(true).await;
        let req = request(format!("http://{addr}/dir"));
        let Method::Acme(acme) = &req.issuer.method else {
            unreachable!()
        };
        let opened = order::open_account(acme, &req.material, false).await.unwrap();
        assert!(check_profile(&opened.account, "shortlived").is_ok());
        let err = check_profile(&opened.account, "tlsserver").unwrap_err();
        assert_eq!(err.reason, "profile_not_offered");
        assert!(
            err.message.contains("classic") && err.message.contains("shortlived"),
            "{}",
            err.message
        );

        let plain = mock_directory(false).await;
        let req = request(format!("http://{plain}/dir"));
        let Method::Acme(acme) = &req.issuer.method else {
            unreachable!()
        };
        let opened = order::open_account(acme, &req.material, false).await.unwrap();
        assert!(
            check_profile(&opened.account, "shortlived")
                .unwrap_err()
                .message
                .contains("offered: none")
        );
    }

    #[test]
    fn decisions() {
        let req = request("http://127.0.0.1:9/dir".into());
        let now = Timestamp::now();
        let mut view = View {
            data: BTreeMap::new(),
            state: req.current.state.clone(),
            certificate: req.current.certificate.clone(),
            pending_key: None,
        };
        assert!(matches!(decide(&req, &view, now), Decision::Keep(_)));
        // Another issuer, or other names: issue again.
        view.state.issuer = "ClusterIssuer other".into();
        assert_eq!(
            decide(&req, &view, now),
            Decision::Issue("names, issuer or validity changed")
        );
        view.state.issuer.clear();
        view.certificate = None;
        assert_eq!(decide(&req, &view, now), Decision::Issue("no certificate yet"));
        // A failure waits for its retry time.
        let later = now + SignedDuration::from_mins(5);
        view.state.retry_after = Some(later);
        assert_eq!(decide(&req, &view, now), Decision::Wait(later));
    }

    /// A store that refuses every write, as the API server does without permission.
    struct Refusing(std::sync::atomic::AtomicUsize);

    #[async_trait::async_trait]
    impl Store for Refusing {
        async fn write(&self, secret: &SecretWrite) -> Result<(), crate::acme::store::StoreError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(crate::acme::store::StoreError {
                key: secret.key.clone(),
                reason: "forbidden".into(),
            })
        }
    }

    #[tokio::test]
    async fn a_secret_that_cannot_be_written_is_not_issued_again_and_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Refusing(Default::default()));
        let published = Published::default();
        let lock = Arc::new(FileLock::new(dir.path().to_owned()));
        lock.acquire().await;
        let mut m = Manager::new(
            store.clone(),
            lock,
            published.clone(),
            Metrics::new(published),
            Options {
                retry_backoff: Duration::from_secs(60),
                retry_backoff_max: Duration::from_secs(86400),
            },
        );
        let mut req = request("http://127.0.0.1:9/dir".into());
        req.issuer = Arc::new(IssuerConfig {
            reference: IssuerRef::cluster("self"),
            method: Method::SelfSigned,
        });
        req.current = Current::default();
        let work = Work {
            requests: Arc::new(vec![req]),
            ..Work::default()
        };
        m.pass(&work).await;
        let writes = store.0.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(writes, 1, "one attempt to store");
        for _ in 0..3 {
            m.pass(&work).await;
        }
        assert_eq!(
            store.0.load(std::sync::atomic::Ordering::Relaxed),
            writes,
            "backed off"
        );
    }
}
