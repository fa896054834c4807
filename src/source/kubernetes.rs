//! The Kubernetes source: one reflector per kind; the World kept up to date (debounced) from the
//! objects the watches report changed.
//!
//! Readiness waits for every reflector's initial list. When the API server goes away the
//! reflectors keep their last state and retry with backoff, so pylon keeps serving the last
//! snapshot and resyncs when the server returns. cert-manager's CRDs may be installed after
//! pylon starts: the source looks for them every 10 s until it finds them, then watches the
//! issuers.
//!
//! After a change only the objects a watch names are looked up again in the stores, so a
//! change costs the same with 10 objects or 10 000; a watch that lists again (after an outage,
//! or when its resource version expired) rebuilds that kind. Unchanged objects keep their
//! `Arc`s from the stores, which lets translate skip them by identity.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Lookup, ObjectRef, Store};
use kube::runtime::utils::{Backoff, ResetTimerBackoff};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::{WatchStreamExt, reflector::store::Writer};
use kube::{Client, Resource, ResourceExt};
use prometheus::IntCounterVec;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::cert_manager::IssuerObject;
use super::manifest::{Kind, ObjectId};
use super::{ObjectKey, SharedObject, World};
use crate::acme::state;

/// How often the source looks for cert-manager's CRDs while they are not installed (one
/// discovery request to the API server).
const CRD_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// How long one look for cert-manager's CRDs may take.
const CRD_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the source waits after a change for more changes before updating the world.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// What to watch.
#[derive(Clone, Debug)]
pub struct Scope {
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    /// Where ClusterIssuers' Secrets live: every Secret there is read (account and EAB keys are
    /// not TLS Secrets).
    pub resource_namespace: String,
}

/// The reflectors' stores. Several watches may feed one kind (Secrets: TLS ones, pylon's own,
/// and every Secret of the resource namespace); an object is in the world while any store of
/// its kind holds it.
#[derive(Default)]
struct Stores {
    ingresses: Vec<Store<Ingress>>,
    classes: Vec<Store<IngressClass>>,
    services: Vec<Store<Service>>,
    slices: Vec<Store<EndpointSlice>>,
    secrets: Vec<Store<Secret>>,
    cluster_issuers: Vec<Store<DynamicObject>>,
    issuers: Vec<Store<DynamicObject>>,
    /// The issuer resources, once cert-manager's CRDs are found.
    issuer_resources: Option<(ApiResource, ApiResource)>,
}

/// What the watches reported changed since the world was last updated.
#[derive(Debug, Default)]
struct Changes {
    objects: BTreeSet<ObjectId>,
    /// Kinds a watch listed again: every object of the kind is looked at.
    kinds: BTreeSet<Kind>,
}

impl Changes {
    fn is_empty(&self) -> bool {
        self.objects.is_empty() && self.kinds.is_empty()
    }
}

fn key<K: ResourceExt>(o: &K) -> ObjectKey {
    ObjectKey::new(o.namespace().unwrap_or_default(), o.name_any())
}

fn issuer(o: &DynamicObject) -> Option<IssuerObject> {
    let value = serde_json::to_value(o).ok()?;
    serde_json::from_value(value).ok()
}

/// The object `key` names in the last of `stores` that holds it.
fn find<K>(stores: &[Store<K>], key: &ObjectKey, dyntype: &K::DynamicType) -> Option<Arc<K>>
where
    K: Lookup + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    let mut at = ObjectRef::new_with(&key.name, dyntype.clone());
    if !key.namespace.is_empty() {
        at = at.within(&key.namespace);
    }
    stores.iter().rev().find_map(|s| s.get(&at))
}

/// The keys of every object in `stores`.
fn keys<K>(stores: &[Store<K>]) -> BTreeSet<ObjectKey>
where
    K: Lookup + ResourceExt + Clone + 'static,
    <K as Lookup>::DynamicType: Eq + Hash + Clone,
{
    stores.iter().flat_map(Store::state).map(|o| key(&*o)).collect()
}

impl Stores {
    /// The world built from every store.
    fn world(&self) -> World {
        let mut w = World::default();
        for kind in KINDS {
            self.replace(&mut w, kind);
        }
        w
    }

    /// Brings `world` up to date with `changes`.
    fn update(&self, world: &mut World, changes: &Changes) {
        for &kind in &changes.kinds {
            self.replace(world, kind);
        }
        for id in changes
            .objects
            .iter()
            .filter(|id| !changes.kinds.contains(&id.kind))
        {
            match self.get(id) {
                Some(o) => world.insert(id.key.clone(), o),
                None => world.remove(id),
            }
        }
    }

    /// Replaces every object of `kind` in `world` with the stores' objects.
    fn replace(&self, world: &mut World, kind: Kind) {
        world.clear(kind);
        let keys = match kind {
            Kind::Ingress => keys(&self.ingresses),
            Kind::IngressClass => keys(&self.classes),
            Kind::Service => keys(&self.services),
            Kind::EndpointSlice => keys(&self.slices),
            Kind::Secret => keys(&self.secrets),
            Kind::ClusterIssuer => keys(&self.cluster_issuers),
            Kind::Issuer => keys(&self.issuers),
        };
        for key in keys {
            let id = ObjectId { kind, key };
            if let Some(object) = self.get(&id) {
                world.insert(id.key, object);
            }
        }
    }

    /// The object `id` names, as the stores hold it now.
    fn get(&self, id: &ObjectId) -> Option<SharedObject> {
        let key = &id.key;
        Some(match id.kind {
            Kind::Ingress => SharedObject::Ingress(find(&self.ingresses, key, &())?),
            Kind::IngressClass => SharedObject::IngressClass(find(&self.classes, key, &())?),
            Kind::Service => SharedObject::Service(find(&self.services, key, &())?),
            Kind::EndpointSlice => SharedObject::EndpointSlice(find(&self.slices, key, &())?),
            Kind::Secret => SharedObject::Secret(find(&self.secrets, key, &())?),
            Kind::ClusterIssuer => {
                let (resource, _) = self.issuer_resources.as_ref()?;
                let o = find(&self.cluster_issuers, key, resource)?;
                SharedObject::ClusterIssuer(Arc::new(issuer(&o)?))
            }
            Kind::Issuer => {
                let (_, resource) = self.issuer_resources.as_ref()?;
                let o = find(&self.issuers, key, resource)?;
                SharedObject::Issuer(Arc::new(issuer(&o)?))
            }
        })
    }

    async fn wait_until_ready(&self) -> bool {
        let mut waits = Vec::new();
        macro_rules! all {
            ($($s:expr),*) => { $( for s in &$s { waits.push(Box::pin(s.wait_until_ready()) as std::pin::Pin<Box<dyn Future<Output = _> + Send + '_>>); } )* };
        }
        all!(
            self.ingresses,
            self.classes,
            self.services,
            self.slices,
            self.secrets,
            self.cluster_issuers,
            self.issuers
        );
        futures_util::future::join_all(waits)
            .await
            .iter()
            .all(Result::is_ok)
    }
}

const KINDS: [Kind; 7] = [
    Kind::Ingress,
    Kind::IngressClass,
    Kind::Service,
    Kind::EndpointSlice,
    Kind::Secret,
    Kind::ClusterIssuer,
    Kind::Issuer,
];

/// Watches the API server and sends a new [`World`] after each (debounced) change; the first
/// one once every reflector has listed. Returns when `shutdown` turns true.
pub async fn run(
    client: Client,
    scope: Scope,
    tx: watch::Sender<Arc<World>>,
    errors: IntCounterVec,
    mut shutdown: watch::Receiver<bool>,
) {
    let (changed_tx, mut changed) = mpsc::channel::<()>(1);
    let mut tasks = Vec::new();
    let config = || watcher::Config::default().any_semantic();
    let namespaced = |ns: &Option<String>| ns.clone();
    let scopes: Vec<Option<String>> = if scope.namespaces.is_empty() {
        vec![None]
    } else {
        scope.namespaces.iter().cloned().map(Some).collect()
    };

    let mut stores = Stores::default();
    let pending = Arc::new(Mutex::new(Changes::default()));
    let ctx = Ctx {
        changed: changed_tx,
        pending: pending.clone(),
        errors,
    };
    for ns in &scopes {
        let ns = namespaced(ns);
        stores.ingresses.push(reflect(
            api(&client, &ns),
            config(),
            Kind::Ingress,
            &ctx,
            &mut tasks,
        ));
        stores.services.push(reflect(
            api(&client, &ns),
            config(),
            Kind::Service,
            &ctx,
            &mut tasks,
        ));
        stores.slices.push(reflect(
            api(&client, &ns),
            config().labels("kubernetes.io/service-name"),
            Kind::EndpointSlice,
            &ctx,
            &mut tasks,
        ));
        stores.secrets.push(reflect(
            api(&client, &ns),
            config().fields("type=kubernetes.io/tls"),
            Kind::Secret,
            &ctx,
            &mut tasks,
        ));
        stores.secrets.push(reflect(
            api(&client, &ns),
            config().labels(&format!("{}={}", state::MANAGED_BY, state::PYLON)),
            Kind::Secret,
            &ctx,
            &mut tasks,
        ));
    }
    stores.classes.push(reflect(
        Api::all(client.clone()),
        config(),
        Kind::IngressClass,
        &ctx,
        &mut tasks,
    ));
    stores.secrets.push(reflect(
        Api::namespaced(client.clone(), &scope.resource_namespace),
        config(),
        Kind::Secret,
        &ctx,
        &mut tasks,
    ));
    // Until cert-manager's CRDs are found, the loop below looks for them now and then and
    // starts the issuer watches then; it keeps a context for them until it does.
    let mut issuers_ctx = None;
    match cert_manager_resources(&client).await {
        Some(resources) => watch_issuers(&client, resources, &scopes, &ctx, &mut stores, &mut tasks),
        None => {
            info!("cert-manager's CRDs are not installed: no ClusterIssuer or Issuer is read until they are");
            issuers_ctx = Some(ctx.clone());
        }
    }
    drop(ctx);

    tokio::select! {
        ready = stores.wait_until_ready() => {
            if !ready {
                warn!("a watch ended before its first list");
                return;
            }
        }
        _ = shutdown.changed() => return,
    }
    info!("every watch has listed its objects");
    // Changes reported from here on are applied to this world again; applying one twice is
    // harmless.
    take(&pending);
    let mut world = stores.world();
    tx.send_replace(Arc::new(world.clone()));
    let mut crd_check = tokio::time::interval_at(
        tokio::time::Instant::now() + CRD_CHECK_INTERVAL,
        CRD_CHECK_INTERVAL,
    );
    crd_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            c = changed.recv() => if c.is_none() { break },
            _ = shutdown.changed() => break,
            _ = crd_check.tick(), if issuers_ctx.is_some() => {
                if let Some(resources) = cert_manager_resources(&client).await {
                    info!("cert-manager's CRDs are installed now: reading ClusterIssuers and Issuers");
                    let ctx = issuers_ctx.take().expect("checked by the branch's condition");
                    watch_issuers(&client, resources, &scopes, &ctx, &mut stores, &mut tasks);
                }
                // The new watches report their first lists as changes.
                continue;
            }
        }
        tokio::time::sleep(DEBOUNCE).await;
        while changed.try_recv().is_ok() {}
        let changes = take(&pending);
        if changes.is_empty() {
            continue;
        }
        let started = Instant::now();
        stores.update(&mut world, &changes);
        debug!(
            objects = changes.objects.len(),
            relisted = ?changes.kinds,
            update_ms = started.elapsed().as_secs_f64() * 1e3,
            "world updated"
        );
        tx.send_replace(Arc::new(world.clone()));
    }
    for t in tasks {
        t.abort();
    }
}

#[derive(Clone)]
struct Ctx {
    /// Wakes the loop that updates the world.
    changed: mpsc::Sender<()>,
    pending: Arc<Mutex<Changes>>,
    errors: IntCounterVec,
}

impl Ctx {
    /// Notes what a watch event changed in a store (after the store applied it).
    fn record<K: Resource>(&self, kind: Kind, event: &watcher::Event<K>) {
        let noted = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .note(kind, event);
        if noted {
            let _ = self.changed.try_send(());
        }
    }
}

impl Changes {
    /// Notes what `event` changed; false if nothing yet (a re-list is buffered in the store
    /// until it is done).
    fn note<K: Resource>(&mut self, kind: Kind, event: &watcher::Event<K>) -> bool {
        match event {
            watcher::Event::Apply(o) | watcher::Event::Delete(o) => {
                self.objects.insert(ObjectId { kind, key: key(o) })
            }
            watcher::Event::InitDone => self.kinds.insert(kind),
            watcher::Event::Init | watcher::Event::InitApply(_) => false,
        }
    }
}

fn take(pending: &Mutex<Changes>) -> Changes {
    std::mem::take(&mut *pending.lock().unwrap_or_else(|e| e.into_inner()))
}

fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    ctx: &Ctx,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Lookup<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    tasks.push(tokio::spawn(drive(api, config, writer, kind, ctx.clone())));
    reader
}

/// Runs one watch into its store, signalling changes and counting errors.
async fn drive<K>(api: Api<K>, config: watcher::Config, writer: Writer<K>, kind: Kind, ctx: Ctx)
where
    K: Resource + Lookup + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    <K as Resource>::DynamicType: Eq + Hash + Clone,
    <K as Lookup>::DynamicType: Eq + Hash + Clone,
{
    let stream = watcher(api, config)
        .backoff(ResetTimerBackoff::new(
            WatchBackoff::default(),
            Duration::from_secs(10),
        ))
        .modify(|o| o.managed_fields_mut().clear())
        .reflect(writer);
    futures_util::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => ctx.record(kind, &event),
            Err(e) => {
                ctx.errors.with_label_values(&[kind.name()]).inc();
                warn!(kind = kind.name(), error = %e, "watch failed; retrying with backoff");
            }
        }
    }
}

/// Delays between watch retries: 0.5 s doubling to at most 5 s, with jitter, so that pylon
/// notices a returning API server within seconds (kube's default backoff grows to 30 s: after a
/// minute-long outage, changes would wait that long).
struct WatchBackoff {
    next: Duration,
    jitter: foldhash::fast::RandomState,
    tries: u64,
}

const WATCH_RETRY_MIN: Duration = Duration::from_millis(500);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(5);

impl Default for WatchBackoff {
    fn default() -> Self {
        Self {
            next: WATCH_RETRY_MIN,
            jitter: foldhash::fast::RandomState::default(),
            tries: 0,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        use std::hash::BuildHasher;
        let delay = self.next;
        self.next = (delay * 2).min(WATCH_RETRY_MAX);
        self.tries += 1;
        // Up to a quarter more, so that the watches of many replicas do not retry in step.
        let quarter = (self.jitter.hash_one(self.tries) % 256) as u32;
        Some(delay + delay / 4 * quarter / 256)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = WATCH_RETRY_MIN;
    }
}

/// Starts the watches of cert-manager's ClusterIssuers and Issuers (in each of `scopes`).
fn watch_issuers(
    client: &Client,
    resources: (ApiResource, ApiResource),
    scopes: &[Option<String>],
    ctx: &Ctx,
    stores: &mut Stores,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) {
    let (cluster, namespaced_issuer) = resources.clone();
    stores.issuer_resources = Some(resources);
    let writer = Writer::new(cluster.clone());
    stores.cluster_issuers.push(writer.as_reader());
    tasks.push(tokio::spawn(drive(
        Api::<DynamicObject>::all_with(client.clone(), &cluster),
        watcher::Config::default().any_semantic(),
        writer,
        Kind::ClusterIssuer,
        ctx.clone(),
    )));
    for ns in scopes {
        let api = match ns {
            Some(ns) => Api::<DynamicObject>::namespaced_with(client.clone(), ns, &namespaced_issuer),
            None => Api::<DynamicObject>::all_with(client.clone(), &namespaced_issuer),
        };
        let writer = Writer::new(namespaced_issuer.clone());
        stores.issuers.push(writer.as_reader());
        tasks.push(tokio::spawn(drive(
            api,
            watcher::Config::default().any_semantic(),
            writer,
            Kind::Issuer,
            ctx.clone(),
        )));
    }
}

/// cert-manager's issuer resources, if its CRDs are installed. The question is bounded by
/// [`CRD_CHECK_TIMEOUT`]: the loop that applies changes asks it, and a slow API server must not
/// hold that loop up; a missed answer is asked for again at the next check.
async fn cert_manager_resources(client: &Client) -> Option<(ApiResource, ApiResource)> {
    let resources = tokio::time::timeout(
        CRD_CHECK_TIMEOUT,
        client.list_api_group_resources("cert-manager.io/v1"),
    )
    .await
    .ok()?
    .ok()?;
    let has = |plural: &str| resources.resources.iter().any(|r| r.name == plural);
    if !has("clusterissuers") || !has("issuers") {
        return None;
    }
    let resource = |kind: &str, plural: &str| {
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("cert-manager.io", "v1", kind), plural)
    };
    Some((
        resource("ClusterIssuer", "clusterissuers"),
        resource("Issuer", "issuers"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_retries_grow_to_five_seconds_and_start_again_after_a_reset() {
        let mut b = WatchBackoff::default();
        let delays: Vec<Duration> = b.by_ref().take(8).collect();
        assert!(delays[0] >= WATCH_RETRY_MIN && delays[0] <= WATCH_RETRY_MIN * 5 / 4);
        assert!(delays[7] >= WATCH_RETRY_MAX && delays[7] <= WATCH_RETRY_MAX * 5 / 4);
        assert!(delays.windows(2).all(|w| w[1] + WATCH_RETRY_MAX / 4 >= w[0]));
        b.reset();
        assert!(b.next().unwrap() <= WATCH_RETRY_MIN * 5 / 4);
    }

    fn object<K: DeserializeOwned>(json: serde_json::Value) -> K {
        serde_json::from_value(json).expect("a valid object")
    }

    fn ingress(name: &str, version: &str) -> Ingress {
        object(serde_json::json!({
            "metadata": {"namespace": "default", "name": name, "resourceVersion": version},
            "spec": {"rules": [{"host": format!("{name}.example.com")}]},
        }))
    }

    fn secret(name: &str, version: &str) -> Secret {
        object(serde_json::json!({
            "metadata": {"namespace": "default", "name": name, "resourceVersion": version},
            "type": "kubernetes.io/tls",
        }))
    }

    fn cluster_issuer(name: &str, server: &str) -> DynamicObject {
        object(serde_json::json!({
            "apiVersion": "cert-manager.io/v1",
            "kind": "ClusterIssuer",
            "metadata": {"name": name},
            "spec": {"acme": {"server": server}},
        }))
    }

    /// What a world holds, comparable: keys and resource versions (issuers: their servers).
    fn summary(w: &World) -> Vec<String> {
        let meta = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            m.resource_version.clone().unwrap_or_default()
        };
        let mut out: Vec<String> = w
            .ingresses
            .iter()
            .map(|(k, o)| format!("Ingress {k} {}", meta(&o.metadata)))
            .collect();
        out.extend(
            w.secrets
                .iter()
                .map(|(k, o)| format!("Secret {k} {}", meta(&o.metadata))),
        );
        out.extend(w.cluster_issuers.iter().map(|(k, o)| {
            let server = o.spec.acme.as_ref().map(|a| a.server.clone()).unwrap_or_default();
            format!("ClusterIssuer {k} {server}")
        }));
        out
    }

    /// A world kept up to date from the changes watches report equals one built from the
    /// stores after every step: overlapping Secret watches, deletes, re-lists, issuers; and
    /// objects no change named keep their identity.
    #[test]
    fn a_world_kept_from_changes_equals_one_built_from_the_stores() {
        use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};
        let resource = |kind| ApiResource::from_gvk(&GroupVersionKind::gvk("cert-manager.io", "v1", kind));
        let (ingresses, mut ingress_writer) = reflector::store::<Ingress>();
        let (tls, mut tls_writer) = reflector::store::<Secret>();
        let (own, mut own_writer) = reflector::store::<Secret>();
        let mut issuer_writer = Writer::<DynamicObject>::new(resource("ClusterIssuer"));
        let stores = Stores {
            ingresses: vec![ingresses],
            secrets: vec![tls, own],
            cluster_issuers: vec![issuer_writer.as_reader()],
            issuer_resources: Some((resource("ClusterIssuer"), resource("Issuer"))),
            ..Stores::default()
        };
        for e in [
            Init,
            InitApply(ingress("a", "1")),
            InitApply(ingress("b", "1")),
            InitDone,
        ] {
            ingress_writer.apply_watcher_event(&e);
        }
        for e in [Init, InitApply(secret("s1", "1")), InitDone] {
            tls_writer.apply_watcher_event(&e);
            own_writer.apply_watcher_event(&e);
        }
        for e in [Init, InitApply(cluster_issuer("le", "https://one")), InitDone] {
            issuer_writer.apply_watcher_event(&e);
        }
        let mut world = stores.world();
        assert_eq!(summary(&world).len(), 4);

        let mut step = |what: &str, apply: &mut dyn FnMut(&mut Changes)| {
            let mut changes = Changes::default();
            apply(&mut changes);
            let before = world.clone();
            stores.update(&mut world, &changes);
            assert_eq!(summary(&world), summary(&stores.world()), "after {what}");
            for (k, o) in &before.ingresses {
                let id = ObjectId {
                    kind: Kind::Ingress,
                    key: k.clone(),
                };
                let named = changes.kinds.contains(&Kind::Ingress) || changes.objects.contains(&id);
                if !named && let Some(now) = world.ingresses.get(k) {
                    assert!(Arc::ptr_eq(o, now), "{k} copied after {what}");
                }
            }
            world.clone()
        };
        step("a new Ingress", &mut |c| {
            let e = Apply(ingress("c", "2"));
            ingress_writer.apply_watcher_event(&e);
            c.note(Kind::Ingress, &e);
        });
        step("a changed and a deleted Ingress", &mut |c| {
            for e in [Apply(ingress("b", "3")), Delete(ingress("a", "1"))] {
                ingress_writer.apply_watcher_event(&e);
                c.note(Kind::Ingress, &e);
            }
        });
        let now = step("a Secret leaving one of two watches", &mut |c| {
            let e = Delete(secret("s1", "1"));
            own_writer.apply_watcher_event(&e);
            c.note(Kind::Secret, &e);
        });
        assert!(now.secrets.contains_key(&ObjectKey::new("default", "s1")));
        let now = step("a Secret leaving its last watch, another arriving", &mut |c| {
            let (gone, new) = (Delete(secret("s1", "1")), Apply(secret("s2", "4")));
            tls_writer.apply_watcher_event(&gone);
            own_writer.apply_watcher_event(&new);
            c.note(Kind::Secret, &gone);
            c.note(Kind::Secret, &new);
        });
        assert!(!now.secrets.contains_key(&ObjectKey::new("default", "s1")));
        step("a changed ClusterIssuer", &mut |c| {
            let e = Apply(cluster_issuer("le", "https://two"));
            issuer_writer.apply_watcher_event(&e);
            c.note(Kind::ClusterIssuer, &e);
        });
        let now = step("an Ingress watch listing again", &mut |c| {
            for e in [
                Init,
                InitApply(ingress("b", "3")),
                InitApply(ingress("d", "5")),
                InitDone,
            ] {
                ingress_writer.apply_watcher_event(&e);
                c.note(Kind::Ingress, &e);
            }
        });
        assert_eq!(
            now.ingresses.keys().map(|k| k.name.as_str()).collect::<Vec<_>>(),
            ["b", "d"]
        );
    }
}
