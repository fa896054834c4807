//! Session-ticket keys shared by every replica through one Secret
//! (`kubernetes.session-ticket-secret`), so that a client resumes its TLS session on whichever
//! replica the load balancer sends it to.
//!
//! Every replica watches the Secret and opens tickets under any key in it. The replica holding
//! the lease maintains it: it creates the Secret with a first key, adds a key every rotation
//! period (`tls.session-ticket-rotation`) and removes a key once no ticket it encrypted can
//! still be valid. A new key encrypts only after every replica has had time to read it (see
//! [`crate::tls::tickets`]). Each write is conditional on the version read, so two processes
//! that both believe they lead cannot undo each other's rotation.
//!
//! pylon writes only a Secret it created. Another owner's Secret of that name is reported (log,
//! `pylon_config_rejections_total`, an Event on it) and left untouched, and every replica keeps
//! its own keys. An entry that is not a key is reported the same way and the other keys are used.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use prometheus::IntCounterVec;
use tracing::{debug, info, warn};

use super::events::{CONFIGURE, EventRequest, Events, pascal_case};
use crate::acme::lock::Leadership;
use crate::acme::state::{MANAGED_BY, PYLON, managed_by_pylon};
use crate::tls::tickets::{SessionTickets, TicketKey, propagation};

/// The Secret's type: not a TLS Secret, and plain to see in `kubectl get secrets`.
pub const SECRET_TYPE: &str = "pylon.dev/session-ticket-keys";
/// Entries are named `key-<creation time in Unix milliseconds>`.
const ENTRY_PREFIX: &str = "key-";

/// A Secret's keys, and the entries that are not keys with the reason.
#[derive(Debug, Default)]
pub struct Parsed {
    pub keys: Vec<(String, TicketKey)>,
    pub rejected: Vec<(String, String)>,
}

/// Reads the keys of the Secret. `Err`: the whole Secret is unusable (another owner, another
/// type), with the reason.
pub fn parse(secret: &Secret) -> Result<Parsed, String> {
    if !managed_by_pylon(secret) {
        return Err(format!(
            "it exists and was not created by pylon ({MANAGED_BY} is not {PYLON}); it is left \
             untouched and each replica keeps its own session-ticket keys"
        ));
    }
    let type_ = secret.type_.as_deref().unwrap_or("Opaque");
    if type_ != SECRET_TYPE {
        return Err(format!(
            "it has type {type_}, not {SECRET_TYPE}; each replica keeps its own session-ticket keys"
        ));
    }
    let mut parsed = Parsed::default();
    for (entry, value) in secret.data.iter().flatten() {
        let key = created_at(entry)
            .ok_or_else(|| format!("the entry name is not {ENTRY_PREFIX}<Unix milliseconds>"))
            .and_then(|created| TicketKey::from_material(&value.0, created));
        match key {
            Ok(key) => parsed.keys.push((entry.clone(), key)),
            Err(reason) => parsed.rejected.push((entry.clone(), reason)),
        }
    }
    Ok(parsed)
}

fn created_at(entry: &str) -> Option<SystemTime> {
    let millis: u64 = entry.strip_prefix(ENTRY_PREFIX)?.parse().ok()?;
    UNIX_EPOCH.checked_add(Duration::from_millis(millis))
}

fn entry_name(created: SystemTime) -> String {
    let millis = created.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    format!("{ENTRY_PREFIX}{millis}")
}

/// What the lease holder changes in the Secret.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Add a new key, created now.
    pub add: bool,
    /// Entries to remove: keys whose tickets have all expired, and entries that are not keys.
    pub remove: Vec<String>,
}

/// A key encrypts from `propagation` after its creation until the next key takes over one
/// rotation period later, and its tickets live two periods after that: it is kept for three
/// periods and two propagation times, then removed. The newest key is never removed.
pub fn plan(parsed: &Parsed, now: SystemTime, rotation: Duration) -> Plan {
    let newest = parsed.keys.iter().map(|(_, k)| k.created()).max();
    let add = newest.is_none_or(|n| now.duration_since(n).is_ok_and(|age| age >= rotation));
    let keep_for = rotation * 3 + propagation(rotation) * 2;
    let mut remove: Vec<String> = parsed
        .keys
        .iter()
        .filter(|(_, k)| Some(k.created()) != newest)
        .filter(|(_, k)| now.duration_since(k.created()).is_ok_and(|age| age >= keep_for))
        .map(|(entry, _)| entry.clone())
        .collect();
    remove.extend(parsed.rejected.iter().map(|(entry, _)| entry.clone()));
    remove.sort();
    Plan { add, remove }
}

pub struct TicketKeySecret {
    api: Api<Secret>,
    namespace: String,
    name: String,
    tickets: Arc<SessionTickets>,
    leadership: Arc<dyn Leadership>,
    events: Events,
    rejections: IntCounterVec,
}

impl TicketKeySecret {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        tickets: Arc<SessionTickets>,
        leadership: Arc<dyn Leadership>,
        events: Events,
        rejections: IntCounterVec,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            tickets,
            leadership,
            events,
            rejections,
        }
    }

    /// Watches the Secret, loads its keys, and maintains it while this process holds the lease.
    pub async fn run(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let mut events = watcher::watcher(self.api.clone(), config)
            .default_backoff()
            .boxed();
        let rotation = self.tickets.rotation();
        // Checks only read the watched copy: cheap, and a new lease holder acts within seconds.
        let mut check = tokio::time::interval(
            propagation(rotation).clamp(Duration::from_secs(1), Duration::from_secs(5)),
        );
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The Secret as last seen, once the watch has listed it (None inside: there is none).
        let mut seen: Option<Option<Secret>> = None;
        let mut listing: Option<Secret> = None;
        // What was last reported, so that a problem is reported once, not on every event.
        let mut reported: Option<String> = None;
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(Event::Apply(s))) => {
                        self.load(&s, &mut reported);
                        seen = Some(Some(s));
                    }
                    Some(Ok(Event::Delete(_))) => {
                        self.tickets.set_shared(Vec::new());
                        seen = Some(None);
                    }
                    Some(Ok(Event::Init)) => listing = None,
                    Some(Ok(Event::InitApply(s))) => listing = Some(s),
                    Some(Ok(Event::InitDone)) => {
                        match &listing {
                            Some(s) => self.load(s, &mut reported),
                            None => self.tickets.set_shared(Vec::new()),
                        }
                        seen = Some(listing.take());
                    }
                    Some(Err(e)) => debug!(secret = %self.name, error = %e, "cannot watch the session-ticket Secret"),
                    None => return,
                },
                _ = check.tick() => {
                    if let Some(secret) = &seen
                        && self.leadership.is_leader()
                    {
                        self.maintain(secret.as_ref()).await;
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Uses the Secret's keys; reports what is wrong with it.
    fn load(&self, secret: &Secret, reported: &mut Option<String>) {
        match parse(secret) {
            Ok(parsed) => {
                for (entry, reason) in &parsed.rejected {
                    self.report(secret, &format!("entry {entry}: {reason}"), reported);
                }
                if parsed.rejected.is_empty() {
                    *reported = None;
                }
                let count = parsed.keys.len();
                self.tickets
                    .set_shared(parsed.keys.into_iter().map(|(_, k)| k).collect());
                debug!(secret = %self.name, keys = count, "session-ticket keys loaded");
            }
            Err(reason) => {
                self.tickets.set_shared(Vec::new());
                self.report(secret, &reason, reported);
            }
        }
    }

    fn report(&self, secret: &Secret, reason: &str, reported: &mut Option<String>) {
        if reported.as_deref() == Some(reason) {
            return;
        }
        warn!(kind = "Secret", namespace = %self.namespace, name = %self.name, reason = "BadSessionTicketKeys", "{reason}");
        self.rejections
            .with_label_values(&["Secret", "BadSessionTicketKeys"])
            .inc();
        self.events.send(EventRequest {
            regarding: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Secret".into()),
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                uid: secret.metadata.uid.clone(),
                ..ObjectReference::default()
            },
            warning: true,
            reason: pascal_case("BadSessionTicketKeys"),
            note: reason.to_owned(),
            action: CONFIGURE,
        });
        *reported = Some(reason.to_owned());
    }

    /// Creates the Secret, or adds and removes keys, as [`plan`] says.
    async fn maintain(&self, secret: Option<&Secret>) {
        let now = SystemTime::now();
        let result = match secret {
            None => self.create(now).await,
            Some(secret) => {
                let Ok(parsed) = parse(secret) else {
                    return; // Not pylon's: reported when loaded, never written.
                };
                let plan = plan(&parsed, now, self.tickets.rotation());
                if plan == Plan::default() {
                    return;
                }
                self.update(secret, &plan, now).await
            }
        };
        match result {
            Ok(()) => {}
            // Another process wrote first; the watch brings its version.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                debug!(secret = %self.name, "the session-ticket Secret changed meanwhile")
            }
            Err(e) => warn!(secret = %self.name, error = %e, "cannot write the session-ticket Secret"),
        }
    }

    async fn create(&self, now: SystemTime) -> Result<(), kube::Error> {
        let material = TicketKey::generate_material().map_err(|e| kube::Error::Service(e.into()))?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(BTreeMap::from([(MANAGED_BY.to_owned(), PYLON.to_owned())])),
                ..ObjectMeta::default()
            },
            type_: Some(SECRET_TYPE.to_owned()),
            data: Some(BTreeMap::from([(entry_name(now), ByteString(material.to_vec()))])),
            ..Secret::default()
        };
        self.api.create(&PostParams::default(), &secret).await?;
        info!(secret = %self.name, "session-ticket Secret created; replicas share their keys");
        Ok(())
    }

    async fn update(&self, secret: &Secret, plan: &Plan, now: SystemTime) -> Result<(), kube::Error> {
        let mut data = serde_json::Map::new();
        for entry in &plan.remove {
            data.insert(entry.clone(), serde_json::Value::Null);
        }
        if plan.add {
            let material = TicketKey::generate_material().map_err(|e| kube::Error::Service(e.into()))?;
            let encoded =
                serde_json::to_value(ByteString(material.to_vec())).map_err(kube::Error::SerdeError)?;
            data.insert(entry_name(now), encoded);
        }
        // The version read makes the patch conditional: a 409 if the Secret changed meanwhile.
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": secret.metadata.resource_version },
            "data": data,
        });
        self.api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        info!(secret = %self.name, added = plan.add, removed = plan.remove.len(), "session-ticket keys rotated");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(entries: &[(&str, Vec<u8>)], labelled: bool, type_: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("pylon-session-tickets".into()),
                labels: labelled.then(|| BTreeMap::from([(MANAGED_BY.to_owned(), PYLON.to_owned())])),
                ..ObjectMeta::default()
            },
            type_: Some(type_.into()),
            data: Some(
                entries
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.clone())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    fn material() -> Vec<u8> {
        TicketKey::generate_material().unwrap().to_vec()
    }

    #[test]
    fn only_pylons_own_secret_of_its_type_is_read() {
        let entries = [("key-1700000000000", material())];
        assert_eq!(parse(&secret(&entries, true, SECRET_TYPE)).unwrap().keys.len(), 1);
        let err = parse(&secret(&entries, false, SECRET_TYPE)).unwrap_err();
        assert!(err.contains("not created by pylon"), "{err}");
        let err = parse(&secret(&entries, true, "Opaque")).unwrap_err();
        assert!(err.contains("type Opaque"), "{err}");
    }

    #[test]
    fn bad_entries_are_named_and_the_rest_are_used() {
        let parsed = parse(&secret(
            &[
                ("key-1700000000000", material()),
                ("key-1700000001000", vec![1, 2, 3]),
                ("notes", material()),
            ],
            true,
            SECRET_TYPE,
        ))
        .unwrap();
        assert_eq!(parsed.keys.len(), 1);
        assert_eq!(
            parsed.keys[0].1.created(),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
        let rejected: BTreeMap<_, _> = parsed.rejected.into_iter().collect();
        assert!(rejected["key-1700000001000"].contains("48 bytes"), "{rejected:?}");
        assert!(
            rejected["notes"].contains("key-<Unix milliseconds>"),
            "{rejected:?}"
        );
    }

    #[test]
    fn keys_are_added_every_period_and_removed_when_their_tickets_expired() {
        let hour = Duration::from_secs(3600);
        let rotation = hour * 6;
        let now = UNIX_EPOCH + hour * 1000;
        let at = |age: Duration| entry_name(now - age);
        let parsed = |ages: &[Duration], bad: &[&str]| {
            let mut entries: Vec<(String, Vec<u8>)> = ages.iter().map(|a| (at(*a), material())).collect();
            entries.extend(bad.iter().map(|b| ((*b).to_owned(), vec![0])));
            let refs: Vec<(&str, Vec<u8>)> = entries.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            parse(&secret(&refs, true, SECRET_TYPE)).unwrap()
        };
        // None yet: add one.
        assert_eq!(
            plan(&parsed(&[], &[]), now, rotation),
            Plan {
                add: true,
                remove: vec![]
            }
        );
        // The newest is younger than a period: nothing to do.
        assert_eq!(
            plan(&parsed(&[hour * 5, hour * 11], &[]), now, rotation),
            Plan::default()
        );
        // A period old: a new one; keys older than 3 periods and 2 minutes go, bad entries too.
        assert_eq!(
            plan(
                &parsed(&[hour * 6, hour * 12, hour * 18, hour * 19], &["junk"]),
                now,
                rotation
            ),
            Plan {
                add: true,
                remove: vec!["junk".into(), at(hour * 19)]
            }
        );
        // The newest key stays, however old (nobody rotated while the API server was away).
        assert_eq!(
            plan(&parsed(&[hour * 100], &[]), now, rotation),
            Plan {
                add: true,
                remove: vec![]
            }
        );
    }
}
