//! Leader election with a `coordination.k8s.io/v1` Lease.
//!
//! The holder renews every third of the lease duration. Leadership is counted from the start of
//! the last successful renewal and ends a safety margin before the lease could expire, so a
//! holder that can no longer renew (API server unreachable) stops ordering before another
//! process may take the lease over. Expiry is judged by when this process last saw the lease
//! change, not by the holder's clock.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use tracing::{debug, info, warn};

use crate::acme::lock::Leadership;

#[derive(Debug, Default)]
struct State {
    /// Leader until this instant.
    leader_until: Option<Instant>,
    /// The last lease record seen (holder and renew time) and when it was seen to change.
    observed: Option<(String, Instant)>,
}

pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    state: Mutex<State>,
}

impl LeaseLock {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
            state: Mutex::new(State::default()),
        }
    }

    fn margin(&self) -> Duration {
        (self.duration / 5).max(Duration::from_secs(1))
    }

    /// One attempt to take or renew the lease. `Ok(true)`: held now.
    async fn try_hold(&self) -> Result<bool, kube::Error> {
        let started = Instant::now();
        let now = MicroTime(jiff::Timestamp::now());
        let seconds = self.duration.as_secs().max(1) as i32;
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(self.held(started)),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let record = format!(
            "{holder}@{}",
            spec.renew_time
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default()
        );
        let expired = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let seen = match &state.observed {
                Some((r, at)) if *r == record => *at,
                _ => {
                    state.observed = Some((record, Instant::now()));
                    Instant::now()
                }
            };
            let their_duration =
                Duration::from_secs(spec.lease_duration_seconds.unwrap_or(seconds).max(1) as u64);
            seen.elapsed() > their_duration
        };
        let ours = holder == self.identity;
        if !(ours || holder.is_empty() || expired) {
            self.lost();
            return Ok(false);
        }
        if !ours {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.holder_identity = Some(self.identity.clone());
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(seconds);
        // The resourceVersion from the read makes this a compare-and-swap.
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(self.held(started)),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn held(&self, started: Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let was = state.leader_until.is_some_and(|t| Instant::now() < t);
        state.leader_until = Some(started + self.duration - self.margin());
        if !was {
            info!(lease = %self.name, identity = %self.identity, "holding the lease");
        }
        true
    }

    fn lost(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.leader_until.take().is_some() {
            warn!(lease = %self.name, "the lease is held by another process");
        }
    }

    /// Keeps renewing while this process holds the lease; retries taking it otherwise.
    pub async fn run(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            let wait = if self.is_leader() {
                self.duration / 3
            } else {
                self.duration / 2
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {
                    self.release().await;
                    return;
                }
            }
            if let Err(e) = self.try_hold().await {
                debug!(error = %e, "cannot renew the lease");
            }
        }
    }

    /// Gives the lease up, so another process can take over at once.
    pub async fn release(&self) {
        if !self.is_leader() {
            return;
        }
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await
            && let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(&self.identity)
        {
            spec.holder_identity = None;
            spec.renew_time = None;
            if self
                .api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
                .is_ok()
            {
                info!(lease = %self.name, "lease released");
            }
        }
        self.state.lock().unwrap_or_else(|p| p.into_inner()).leader_until = None;
    }
}

#[async_trait]
impl Leadership for LeaseLock {
    async fn acquire(&self) {
        loop {
            match self.try_hold().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => debug!(error = %e, "cannot read the lease"),
            }
            tokio::time::sleep(self.duration / 2).await;
        }
    }

    fn is_leader(&self) -> bool {
        self.state
            .lock()
            .map(|s| s.leader_until.is_some_and(|t| Instant::now() < t))
            .unwrap_or(false)
    }
}
