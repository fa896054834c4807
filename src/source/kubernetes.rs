//! The Kubernetes source: one reflector per kind, the World rebuilt (debounced) after changes.
//!
//! Readiness waits for every reflector's initial list. When the API server goes away the
//! reflectors keep their last state and retry with backoff, so pylon keeps serving the last
//! snapshot and resyncs when the server returns.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Lookup, Store};
use kube::runtime::utils::{Backoff, ResetTimerBackoff};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::{WatchStreamExt, reflector::store::Writer};
use kube::{Client, Resource, ResourceExt};
use prometheus::IntCounterVec;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::cert_manager::IssuerObject;
use super::{ObjectKey, SharedObject, World};
use crate::acme::state;

/// How long the source waits after a change for more changes before rebuilding.
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

/// The reflectors' stores.
struct Stores {
    ingresses: Vec<Store<Ingress>>,
    classes: Vec<Store<IngressClass>>,
    services: Vec<Store<Service>>,
    slices: Vec<Store<EndpointSlice>>,
    secrets: Vec<Store<Secret>>,
    cluster_issuers: Vec<Store<DynamicObject>>,
    issuers: Vec<Store<DynamicObject>>,
}

fn key<K: ResourceExt>(o: &K) -> ObjectKey {
    ObjectKey::new(o.namespace().unwrap_or_default(), o.name_any())
}

fn issuer(o: &DynamicObject) -> Option<IssuerObject> {
    let value = serde_json::to_value(o).ok()?;
    serde_json::from_value(value).ok()
}

impl Stores {
    fn world(&self) -> World {
        let mut w = World::default();
        for o in self.ingresses.iter().flat_map(Store::state) {
            w.insert(key(&*o), SharedObject::Ingress(o));
        }
        for o in self.classes.iter().flat_map(Store::state) {
            w.insert(key(&*o), SharedObject::IngressClass(o));
        }
        for o in self.services.iter().flat_map(Store::state) {
            w.insert(key(&*o), SharedObject::Service(o));
        }
        for o in self.slices.iter().flat_map(Store::state) {
            w.insert(key(&*o), SharedObject::EndpointSlice(o));
        }
        for o in self.secrets.iter().flat_map(Store::state) {
            w.insert(key(&*o), SharedObject::Secret(o));
        }
        for o in self.cluster_issuers.iter().flat_map(Store::state) {
            if let Some(i) = issuer(&o) {
                w.insert(key(&*o), SharedObject::ClusterIssuer(Arc::new(i)));
            }
        }
        for o in self.issuers.iter().flat_map(Store::state) {
            if let Some(i) = issuer(&o) {
                w.insert(key(&*o), SharedObject::Issuer(Arc::new(i)));
            }
        }
        w
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

    let mut stores = Stores {
        ingresses: Vec::new(),
        classes: Vec::new(),
        services: Vec::new(),
        slices: Vec::new(),
        secrets: Vec::new(),
        cluster_issuers: Vec::new(),
        issuers: Vec::new(),
    };
    let ctx = Ctx {
        changed: changed_tx,
        errors,
    };
    for ns in &scopes {
        let ns = namespaced(ns);
        stores
            .ingresses
            .push(reflect(api(&client, &ns), config(), "Ingress", &ctx, &mut tasks));
        stores
            .services
            .push(reflect(api(&client, &ns), config(), "Service", &ctx, &mut tasks));
        stores.slices.push(reflect(
            api(&client, &ns),
            config().labels("kubernetes.io/service-name"),
            "EndpointSlice",
            &ctx,
            &mut tasks,
        ));
        stores.secrets.push(reflect(
            api(&client, &ns),
            config().fields("type=kubernetes.io/tls"),
            "Secret",
            &ctx,
            &mut tasks,
        ));
        stores.secrets.push(reflect(
            api(&client, &ns),
            config().labels(&format!("{}={}", state::MANAGED_BY, state::PYLON)),
            "Secret",
            &ctx,
            &mut tasks,
        ));
    }
    stores.classes.push(reflect(
        Api::all(client.clone()),
        config(),
        "IngressClass",
        &ctx,
        &mut tasks,
    ));
    stores.secrets.push(reflect(
        Api::namespaced(client.clone(), &scope.resource_namespace),
        config(),
        "Secret",
        &ctx,
        &mut tasks,
    ));
    if let Some(resources) = cert_manager_resources(&client).await {
        let (cluster, namespaced_issuer) = resources;
        let writer = Writer::new(cluster.clone());
        stores.cluster_issuers.push(writer.as_reader());
        tasks.push(tokio::spawn(drive(
            Api::<DynamicObject>::all_with(client.clone(), &cluster),
            config(),
            writer,
            "ClusterIssuer",
            ctx.clone(),
        )));
        for ns in &scopes {
            let api = match ns {
                Some(ns) => Api::<DynamicObject>::namespaced_with(client.clone(), ns, &namespaced_issuer),
                None => Api::<DynamicObject>::all_with(client.clone(), &namespaced_issuer),
            };
            let writer = Writer::new(namespaced_issuer.clone());
            stores.issuers.push(writer.as_reader());
            tasks.push(tokio::spawn(drive(api, config(), writer, "Issuer", ctx.clone())));
        }
    } else {
        info!("cert-manager's CRDs are not installed: no ClusterIssuer or Issuer is read");
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
    tx.send_replace(Arc::new(stores.world()));
    loop {
        tokio::select! {
            c = changed.recv() => if c.is_none() { break },
            _ = shutdown.changed() => break,
        }
        tokio::time::sleep(DEBOUNCE).await;
        while changed.try_recv().is_ok() {}
        tx.send_replace(Arc::new(stores.world()));
    }
    for t in tasks {
        t.abort();
    }
}

#[derive(Clone)]
struct Ctx {
    changed: mpsc::Sender<()>,
    errors: IntCounterVec,
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
    kind: &'static str,
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
async fn drive<K>(api: Api<K>, config: watcher::Config, writer: Writer<K>, kind: &'static str, ctx: Ctx)
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
            Ok(_) => {
                let _ = ctx.changed.try_send(());
            }
            Err(e) => {
                ctx.errors.with_label_values(&[kind]).inc();
                warn!(kind, error = %e, "watch failed; retrying with backoff");
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

/// cert-manager's issuer resources, if its CRDs are installed.
async fn cert_manager_resources(client: &Client) -> Option<(ApiResource, ApiResource)> {
    let resources = client.list_api_group_resources("cert-manager.io/v1").await.ok()?;
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
mod backoff_tests {
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
}
