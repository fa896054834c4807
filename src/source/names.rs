//! The DNS names of ExternalName Services, resolved off the request path.
//!
//! A resolver task follows the worlds a source hands out, keeps the set of names that
//! ExternalName Services point at, looks each new name up at once and every name again every
//! [`REFRESH`], and publishes the results as [`Names`]. The control loop puts them into the
//! world it translates, so a backend's endpoints are the name's addresses; a request never waits
//! for DNS. A name that stops resolving keeps its last addresses (and is logged); a name that has
//! never resolved leaves its backends without endpoints (503, reported on the Ingress).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use tokio::sync::watch;
use tracing::{info, warn};

use super::World;

/// How often every name is looked up again (ingress-nginx's resolver keeps answers 30 s).
pub const REFRESH: Duration = Duration::from_secs(30);

/// How many lookups run at once (each holds a thread of the blocking pool while it waits).
const PARALLEL_LOOKUPS: usize = 16;

/// How long one lookup may take before it counts as failed.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// What a DNS name resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Its addresses: sorted, without duplicates, at least one.
    Addresses(Vec<IpAddr>),
    /// Why it has never resolved.
    Failed(String),
}

/// Resolved names by name. A persistent map, so that translate sees which names changed.
pub type Names = imbl::OrdMap<String, Arc<Resolution>>;

/// The DNS name an ExternalName Service points at; `None` for other Services and for an
/// ExternalName that is an IP address.
pub fn external_dns_name(service: &Service) -> Option<&str> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() != Some("ExternalName") {
        return None;
    }
    let name = spec.external_name.as_deref()?;
    (name.parse::<IpAddr>().is_err()).then_some(name)
}

/// Why `name` cannot be looked up, if it is not a DNS name (RFC 1123 host name, an optional
/// final dot).
fn invalid(name: &str) -> Option<&'static str> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() || bare.len() > 253 {
        return Some("empty or longer than 253 characters");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    (!bare.split('.').all(label_ok)).then_some("not a DNS name (letters, digits, '-' and '.')")
}

/// Looks `name` up with the system's resolver (`/etc/resolv.conf`: a cluster's search domains
/// apply).
async fn lookup(name: &str) -> Resolution {
    if let Some(why) = invalid(name) {
        return Resolution::Failed(why.to_owned());
    }
    match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((name, 0))).await {
        Err(_) => Resolution::Failed(format!("no answer within {} s", LOOKUP_TIMEOUT.as_secs())),
        Ok(Err(e)) => Resolution::Failed(e.to_string()),
        Ok(Ok(addrs)) => {
            let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
            ips.sort_unstable();
            ips.dedup();
            if ips.is_empty() {
                Resolution::Failed("no addresses".to_owned())
            } else {
                Resolution::Addresses(ips)
            }
        }
    }
}

/// The resolver's state: how many Services point at each name, and the last results.
#[derive(Default)]
struct Resolver {
    wanted: BTreeMap<String, usize>,
    names: Names,
    /// The world the counts describe.
    world: Arc<World>,
}

impl Resolver {
    /// Follows the Services that changed since the last world; returns the names no result is
    /// known for yet.
    fn follow(&mut self, world: &Arc<World>) -> Vec<String> {
        let mut touched = BTreeSet::new();
        for item in self.world.services.diff(&world.services) {
            let (before, after) = match item {
                imbl::ordmap::DiffItem::Add(_, after) => (None, Some(after)),
                imbl::ordmap::DiffItem::Update { old, new } => (Some(old.1), Some(new.1)),
                imbl::ordmap::DiffItem::Remove(_, before) => (Some(before), None),
            };
            if let Some(name) = before.and_then(|s| external_dns_name(s)) {
                if let Some(n) = self.wanted.get_mut(name) {
                    *n -= 1;
                    if *n == 0 {
                        self.wanted.remove(name);
                    }
                }
                touched.insert(name.to_owned());
            }
            if let Some(name) = after.and_then(|s| external_dns_name(s)) {
                *self.wanted.entry(name.to_owned()).or_default() += 1;
                touched.insert(name.to_owned());
            }
        }
        self.world = world.clone();
        for name in &touched {
            if !self.wanted.contains_key(name) {
                self.names.remove(name);
            }
        }
        touched
            .into_iter()
            .filter(|n| self.wanted.contains_key(n) && !self.names.contains_key(n))
            .collect()
    }

    /// Looks `names` up ([`PARALLEL_LOOKUPS`] at a time) and records the results. A name that
    /// resolved before and fails now keeps its addresses.
    async fn resolve(&mut self, names: Vec<String>) {
        let mut results = Vec::with_capacity(names.len());
        for chunk in names.chunks(PARALLEL_LOOKUPS) {
            results.extend(futures_util::future::join_all(chunk.iter().map(|n| lookup(n))).await);
        }
        for (name, result) in names.into_iter().zip(results) {
            if !self.wanted.contains_key(&name) {
                continue;
            }
            let before = self.names.get(&name).cloned();
            match (&result, before.as_deref()) {
                (Resolution::Failed(why), Some(Resolution::Addresses(_))) => {
                    warn!(name = %name, error = %why, "ExternalName lookup failed; the last addresses stay in use");
                    continue;
                }
                (Resolution::Failed(why), last) if last != Some(&result) => {
                    warn!(name = %name, error = %why, "ExternalName does not resolve");
                }
                (Resolution::Addresses(ips), last) if last != Some(&result) => {
                    info!(name = %name, addresses = ?ips, "ExternalName resolved");
                }
                _ => continue,
            }
            self.names.insert(name, Arc::new(result));
        }
    }
}

/// Resolves the ExternalName DNS names of the worlds `worlds` hands out into `tx`, until
/// `shutdown` turns true or the worlds end.
pub async fn run(
    mut worlds: watch::Receiver<Arc<World>>,
    tx: watch::Sender<Names>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut resolver = Resolver::default();
    let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + REFRESH, REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fresh = {
        let world = worlds.borrow_and_update().clone();
        resolver.follow(&world)
    };
    loop {
        if !fresh.is_empty() {
            resolver.resolve(std::mem::take(&mut fresh)).await;
        }
        tx.send_if_modified(|names| {
            let changed = !names.ptr_eq(&resolver.names) && *names != resolver.names;
            *names = resolver.names.clone();
            changed
        });
        tokio::select! {
            changed = worlds.changed() => {
                if changed.is_err() {
                    return;
                }
                let world = worlds.borrow_and_update().clone();
                fresh = resolver.follow(&world);
            }
            _ = refresh.tick() => fresh = resolver.wanted.keys().cloned().collect(),
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::ObjectKey;

    fn service(name: &str, external: &str) -> (ObjectKey, Arc<Service>) {
        let s: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": external}
        }))
        .expect("a Service");
        (ObjectKey::new("default", name), Arc::new(s))
    }

    #[test]
    fn only_dns_names_of_external_name_services_are_looked_up() {
        let (_, s) = service("a", "db.example.com");
        assert_eq!(external_dns_name(&s), Some("db.example.com"));
        let (_, s) = service("b", "10.0.0.1");
        assert_eq!(external_dns_name(&s), None);
        let plain: Service =
            serde_json::from_value(serde_json::json!({"spec": {"type": "ClusterIP"}})).unwrap();
        assert_eq!(external_dns_name(&plain), None);
        assert_eq!(invalid("db.example.com."), None);
        assert_eq!(invalid("my-svc.other-ns"), None);
        assert!(invalid("-bad.example").is_some());
        assert!(invalid("a b").is_some());
        assert!(invalid("x;rm -rf").is_some());
        assert!(invalid("").is_some());
        assert!(invalid(&"a".repeat(64)).is_some());
    }

    #[test]
    fn names_are_counted_per_service_and_forgotten_with_the_last_one() {
        let mut r = Resolver::default();
        let mut w = World::default();
        let (k1, s1) = service("one", "db.example.com");
        let (k2, s2) = service("two", "db.example.com");
        w.services.insert(k1.clone(), s1);
        w.services.insert(k2.clone(), s2);
        assert_eq!(r.follow(&Arc::new(w.clone())), ["db.example.com"]);
        r.names.insert(
            "db.example.com".into(),
            Arc::new(Resolution::Addresses(vec!["10.0.0.1".parse().unwrap()])),
        );
        w.services.remove(&k1);
        assert!(
            r.follow(&Arc::new(w.clone())).is_empty(),
            "still wanted, result known"
        );
        assert!(r.names.contains_key("db.example.com"));
        w.services.remove(&k2);
        assert!(r.follow(&Arc::new(w.clone())).is_empty());
        assert!(r.names.is_empty() && r.wanted.is_empty());
    }

    #[tokio::test]
    async fn a_name_that_fails_later_keeps_its_addresses() {
        let mut r = Resolver::default();
        let mut w = World::default();
        let (k, s) = service("one", "localhost");
        w.services.insert(k, s);
        let fresh = r.follow(&Arc::new(w));
        r.resolve(fresh).await;
        let Some(Resolution::Addresses(ips)) = r.names.get("localhost").map(|r| (**r).clone()) else {
            panic!("localhost resolves: {:?}", r.names);
        };
        assert!(ips.iter().all(IpAddr::is_loopback), "{ips:?}");
        // A later lookup that fails (here: the name made invalid in place) changes nothing.
        let kept = r.names.clone();
        r.wanted.insert("bad name".into(), 1);
        r.names.insert("bad name".into(), kept["localhost"].clone());
        r.resolve(vec!["bad name".into()]).await;
        assert_eq!(r.names["bad name"], kept["localhost"]);
        r.names.remove("bad name");
        r.resolve(vec!["bad name".into()]).await;
        assert!(matches!(&*r.names["bad name"], Resolution::Failed(_)));
    }
}
