//! Translate: the pure function from a [`World`] to a [`Snapshot`] and the problems found.
//!
//! It knows Kubernetes Ingress v1 semantics (classes, hosts, paths, backends, TLS) and parses
//! annotations into typed values. A bad object is reported and left out — or, if an earlier
//! version of it was good, that version keeps serving. Nothing here does I/O. A change costs
//! work in proportion to the hosts it touches: the rest of the snapshot is shared.

pub mod annotations;
mod backends;
mod certificates;
mod certs;
pub mod ingress;

use std::collections::BTreeSet;
use std::sync::Arc;

use foldhash::{HashMap, HashSet};
use imbl::ordmap::DiffItem;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::jiff::Timestamp;

use self::backends::{Backends, unavailable_problem};
use self::certs::Certs;
use self::ingress::{ParsedIngress, ServiceRef};
use crate::acme::challenge::ChallengeIndex;
use crate::acme::issuer::IssuerKind;
use crate::acme::request::CertificateRequest;
use crate::config::{AcmeConfig, IngressConfig};
use crate::metrics::{CounterKey, RequestCounters};
use crate::problem::{Problem, Subject};
use crate::routing::{HostPattern, HostRoutes, IngressRef, Policy, Route, RouteTable};
use crate::snapshot::Snapshot;
use crate::source::{ObjectKey, Objects, World};
use crate::tls::{CertIndex, Certificate};

/// The legacy annotation naming an Ingress's class.
pub const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// The IngressClass annotation marking the cluster's default class.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// What translate needs from the configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub controller: String,
    pub extra_classes: Vec<String>,
    pub serve_without_class: bool,
    pub default_certificate: Option<ObjectKey>,
    /// Served when no certificate matches and no default Secret is configured (or usable).
    pub fallback_certificate: Arc<Certificate>,
    /// The issuer for Ingresses with TLS but no cert-manager annotation.
    pub default_issuer: Option<(IssuerKind, String)>,
    /// Where the Secrets of ClusterIssuers live (account keys, CA keys).
    pub cluster_resource_namespace: String,
}

impl Settings {
    pub fn new(config: &IngressConfig, acme: &AcmeConfig, fallback_certificate: Certificate) -> Self {
        Self {
            default_issuer: acme.default_issuer.clone(),
            cluster_resource_namespace: acme.cluster_resource_namespace.clone(),
            controller: config.controller.clone(),
            extra_classes: config.classes.clone(),
            serve_without_class: config.serve_without_class,
            default_certificate: config
                .default_certificate
                .as_ref()
                .map(|(ns, name)| ObjectKey::new(ns.clone(), name.clone())),
            fallback_certificate: Arc::new(fallback_certificate),
        }
    }
}

/// An Ingress's place in conflicts: oldest first, then namespace/name.
type Age = (Timestamp, ObjectKey);

/// What translate remembers between runs, so that a change costs work in proportion to what it
/// touches, not to the number of objects. It describes one snapshot: passed with any other
/// snapshot, it is discarded and the next snapshot is built from scratch.
#[derive(Debug, Default)]
pub struct Memo {
    /// The generation of the snapshot this memo describes.
    generation: u64,
    /// The objects that snapshot was made from; the next world is compared with them.
    world: Option<Arc<World>>,
    ingresses: HashMap<ObjectKey, IngressMemo>,
    /// Every host named by a served Ingress (rules and TLS entries).
    hosts: HashMap<HostPattern, HostMemo>,
    /// The Ingresses and hosts above that have problems: collecting the problems visits only
    /// these.
    troubled_ingresses: HashSet<ObjectKey>,
    troubled_hosts: HashSet<HostPattern>,
    /// Served Ingresses with a default backend.
    defaulting: BTreeSet<Age>,
    default_problems: Vec<Problem>,
    backends: Backends,
    /// Which served Ingresses use a Service, and a TLS Secret.
    service_users: HashMap<ObjectKey, HashSet<ObjectKey>>,
    secret_users: HashMap<ObjectKey, HashSet<ObjectKey>>,
    certs: Certs,
    /// The expiry of each certificate in service, as last reported.
    in_use: HashMap<ObjectKey, i64>,
    /// Served Ingresses that ask for certificates.
    issuing: BTreeSet<Age>,
    acme: AcmeMemo,
    served: imbl::OrdSet<ObjectKey>,
    ignored: imbl::OrdMap<ObjectKey, Option<String>>,
    /// Request counters by Ingress and Service: a route built again keeps counting where the
    /// last one stopped.
    counters: HashMap<CounterKey, Arc<RequestCounters>>,
}

#[derive(Debug)]
struct IngressMemo {
    source: Arc<Ingress>,
    /// The version in service: this one, or the last good one while this one is invalid.
    serving: Option<Arc<ParsedIngress>>,
    origin: Option<Arc<IngressRef>>,
    /// Left to another controller, with the class it names.
    ignored: Option<Option<String>>,
    /// Problems of the object itself.
    own_problems: Vec<Problem>,
    /// Problems of what it refers to (backends, TLS Secrets), as of its last evaluation.
    ref_problems: Vec<Problem>,
}

impl IngressMemo {
    /// Its problems count: its own, and while it is served, those of what it refers to.
    fn has_problems(&self) -> bool {
        !self.own_problems.is_empty() || (self.serving.is_some() && !self.ref_problems.is_empty())
    }
}

#[derive(Debug, Default)]
struct HostMemo {
    /// The served Ingresses naming this host, oldest first.
    contributors: BTreeSet<Age>,
    problems: Vec<Problem>,
}

#[derive(Debug, Default)]
struct AcmeMemo {
    requests: Arc<Vec<CertificateRequest>>,
    challenges: Arc<ChallengeIndex>,
    problems: Vec<Problem>,
}

#[derive(Debug)]
pub struct Translation {
    pub snapshot: Snapshot,
    pub problems: Vec<Problem>,
    /// Certificates whose expiry changed since the last translation: `None` when a
    /// certificate left service.
    pub certificate_updates: Vec<(ObjectKey, Option<i64>)>,
    /// Ingresses left to other controllers, with the class they name (if any).
    pub ignored: imbl::OrdMap<ObjectKey, Option<String>>,
    /// Certificates pylon should obtain or keep renewed.
    pub requests: Arc<Vec<CertificateRequest>>,
    /// The Ingresses pylon serves (their status carries pylon's addresses).
    pub served: imbl::OrdSet<ObjectKey>,
    /// Distinct backends in use, and their endpoints.
    pub backends: usize,
    pub endpoints: usize,
}

/// Builds the next snapshot from `world`. `memo` describes `previous` (or is empty) and is
/// brought up to date: only the hosts whose Ingresses, Services, EndpointSlices or Secrets
/// changed are built again; every other host is shared with `previous`. The result is the same
/// as a translation from scratch (tests check this).
pub fn translate(
    world: &Arc<World>,
    settings: &Settings,
    previous: &Snapshot,
    memo: &mut Memo,
) -> Translation {
    if memo.generation != previous.generation || memo.world.is_none() {
        *memo = Memo::default();
    }
    let old_world = memo.world.take();
    let fresh = old_world.is_none();
    let empty = World::default();
    let old = old_world.as_deref().unwrap_or(&empty);
    let mut run = Run {
        world,
        settings,
        previous,
        memo,
        dirty_ingresses: HashSet::default(),
        dirty_hosts: HashSet::default(),
        wildcard_tls: Vec::new(),
        default_dirty: fresh,
        acme_dirty: fresh,
        touched_secrets: HashSet::default(),
    };
    run.take_changes(old);
    run.finish(fresh)
}

/// One translation: what changed, and what must be built again because of it.
struct Run<'a> {
    world: &'a Arc<World>,
    settings: &'a Settings,
    previous: &'a Snapshot,
    memo: &'a mut Memo,
    /// Served Ingresses whose references (backends, Secrets) are evaluated again.
    dirty_ingresses: HashSet<ObjectKey>,
    dirty_hosts: HashSet<HostPattern>,
    /// Parents of wildcard TLS hosts added or removed: their exact hosts' redirects may change.
    wildcard_tls: Vec<String>,
    default_dirty: bool,
    acme_dirty: bool,
    touched_secrets: HashSet<ObjectKey>,
}

impl Run<'_> {
    /// Compares the world with the one of the previous run and marks what the changes touch.
    fn take_changes(&mut self, old: &World) {
        let world = self.world.clone();
        let classes = Classes::new(&world, self.settings);
        let mut ingresses = BTreeSet::new();
        if !same(&old.ingress_classes, &world.ingress_classes) {
            // Which Ingresses are served may have changed for any of them.
            ingresses.extend(old.ingresses.keys().cloned());
            ingresses.extend(world.ingresses.keys().cloned());
        } else {
            diff(&old.ingresses, &world.ingresses, |key, _, _| {
                ingresses.insert(key.clone());
            });
        }
        if !same(&old.cluster_issuers, &world.cluster_issuers) || !same(&old.issuers, &world.issuers) {
            self.acme_dirty = true;
        }
        let mut services = BTreeSet::new();
        diff(&old.services, &world.services, |key, _, _| {
            services.insert(key.clone());
        });
        let mut names = BTreeSet::new();
        diff(&old.names, &world.names, |name, _, _| {
            names.insert(name.clone());
        });
        if !names.is_empty() {
            // Rare (a name's addresses changed): the Services pointing at the names are found by
            // looking at each one.
            for (key, service) in &world.services {
                if crate::source::names::external_dns_name(service).is_some_and(|n| names.contains(n)) {
                    services.insert(key.clone());
                }
            }
        }
        let backends = &mut self.memo.backends;
        diff(
            &old.endpoint_slices,
            &world.endpoint_slices,
            |key, before, after| {
                services.extend(backends.slice_changed(key, before.map(|s| &**s), after.map(|s| &**s)));
            },
        );
        let mut secrets = Vec::new();
        diff(&old.secrets, &world.secrets, |key, _, _| {
            secrets.push(key.clone())
        });

        for key in &ingresses {
            self.update_ingress(key, &classes);
        }
        for service in &services {
            self.memo.backends.forget(service);
            if let Some(users) = self.memo.service_users.get(service) {
                self.dirty_ingresses.extend(users.iter().cloned());
            }
        }
        if !secrets.is_empty()
            && (!self.memo.issuing.is_empty()
                || !world.cluster_issuers.is_empty()
                || !world.issuers.is_empty())
        {
            // Issuers read account and CA keys from Secrets; requests look at their Secrets.
            self.acme_dirty = true;
        }
        for secret in secrets {
            if let Some(users) = self.memo.secret_users.get(&secret) {
                self.dirty_ingresses.extend(users.iter().cloned());
            }
            self.touched_secrets.insert(secret);
        }
    }

    /// Evaluates a new, changed or deleted Ingress and moves its entries in the indexes.
    fn update_ingress(&mut self, key: &ObjectKey, classes: &Classes<'_>) {
        let old = self.memo.ingresses.remove(key);
        let old_serving = old.as_ref().and_then(|m| m.serving.clone());
        if let Some(ing) = &old_serving {
            self.unindex(ing);
        }
        let Some(source) = self.world.ingresses.get(key) else {
            self.memo.served.remove(key);
            self.memo.ignored.remove(key);
            self.memo.troubled_ingresses.remove(key);
            self.drop_counters(old_serving.as_deref(), None);
            return;
        };
        let class = class_of(source);
        let mut memo = IngressMemo {
            source: source.clone(),
            serving: None,
            origin: None,
            ignored: None,
            own_problems: Vec::new(),
            ref_problems: Vec::new(),
        };
        let subject = ingress_subject(key);
        if !classes.serves(class) {
            memo.ignored = Some(class.map(str::to_owned));
        } else {
            // The same object that parsed cleanly last time (only the classes changed).
            let reused = old
                .as_ref()
                .filter(|m| Arc::ptr_eq(&m.source, source) && m.own_problems.is_empty())
                .and_then(|m| m.serving.clone());
            memo.serving = match reused {
                Some(parsed) => Some(parsed),
                None => match ingress::parse(key, source) {
                    Ok(parsed) => Some(Arc::new(parsed)),
                    Err(rejected) => {
                        let tail = if old_serving.is_some() {
                            "; the last good version stays in service"
                        } else {
                            "; it is not served"
                        };
                        memo.own_problems.push(Problem::error(
                            subject.clone(),
                            "invalid_ingress",
                            format!("{}{tail}", rejected.errors.join("; ")),
                        ));
                        for note in rejected.notes {
                            memo.own_problems.push(Problem::warning(
                                subject.clone(),
                                "ignored_setting",
                                note,
                            ));
                        }
                        old_serving.clone()
                    }
                },
            };
        }
        if let Some(ing) = &memo.serving {
            for note in &ing.notes {
                memo.own_problems
                    .push(Problem::warning(subject.clone(), "ignored_setting", note.clone()));
            }
            memo.origin = Some(Arc::new(IngressRef {
                namespace: key.namespace.as_str().into(),
                name: key.name.as_str().into(),
            }));
            self.index(ing);
            self.dirty_ingresses.insert(key.clone());
        }
        self.drop_counters(old_serving.as_deref(), memo.serving.as_deref());
        if memo.serving.is_some() {
            self.memo.served.insert(key.clone());
        } else {
            self.memo.served.remove(key);
        }
        match &memo.ignored {
            Some(class) => drop(self.memo.ignored.insert(key.clone(), class.clone())),
            None => drop(self.memo.ignored.remove(key)),
        }
        self.memo.ingresses.insert(key.clone(), memo);
        self.note_ingress_problems(key);
    }

    /// Keeps [`Memo::troubled_ingresses`] up to date after `key`'s problems were evaluated.
    fn note_ingress_problems(&mut self, key: &ObjectKey) {
        if self
            .memo
            .ingresses
            .get(key)
            .is_some_and(IngressMemo::has_problems)
        {
            self.memo.troubled_ingresses.insert(key.clone());
        } else {
            self.memo.troubled_ingresses.remove(key);
        }
    }

    /// Forgets the request counters of backends an Ingress no longer has.
    fn drop_counters(&mut self, old: Option<&ParsedIngress>, new: Option<&ParsedIngress>) {
        let Some(old) = old else { return };
        let kept: BTreeSet<&str> = new
            .map(|n| services(n).map(|s| s.name.as_str()).collect())
            .unwrap_or_default();
        for service in services(old) {
            if !kept.contains(service.name.as_str()) {
                self.memo.counters.remove(&counter_key(&old.key, service));
            }
        }
    }

    fn index(&mut self, ing: &ParsedIngress) {
        let age = age(ing);
        for host in hosts(ing) {
            self.memo
                .hosts
                .entry(host.clone())
                .or_default()
                .contributors
                .insert(age.clone());
            self.dirty_hosts.insert(host.clone());
        }
        self.note_wildcard_tls(ing);
        if ing.default_backend.is_some() {
            self.memo.defaulting.insert(age.clone());
            self.default_dirty = true;
        }
        for service in services(ing) {
            let key = ObjectKey::new(ing.key.namespace.as_str(), service.name.as_str());
            self.memo.backends.hold(key.clone(), &service.port);
            self.memo
                .service_users
                .entry(key)
                .or_default()
                .insert(ing.key.clone());
        }
        for secret in secrets(ing) {
            self.memo
                .secret_users
                .entry(secret.clone())
                .or_default()
                .insert(ing.key.clone());
            self.touched_secrets.insert(secret);
        }
        if self.issuing(ing) {
            self.memo.issuing.insert(age);
            self.acme_dirty = true;
        }
    }

    fn unindex(&mut self, ing: &ParsedIngress) {
        let age = age(ing);
        for host in hosts(ing) {
            if let Some(memo) = self.memo.hosts.get_mut(host) {
                memo.contributors.remove(&age);
            }
            self.dirty_hosts.insert(host.clone());
        }
        self.note_wildcard_tls(ing);
        if self.memo.defaulting.remove(&age) {
            self.default_dirty = true;
        }
        for service in services(ing) {
            let key = ObjectKey::new(ing.key.namespace.as_str(), service.name.as_str());
            self.memo.backends.release(&key, &service.port);
            if let Some(users) = self.memo.service_users.get_mut(&key) {
                users.remove(&ing.key);
                if users.is_empty() {
                    self.memo.service_users.remove(&key);
                }
            }
        }
        for secret in secrets(ing) {
            if let Some(users) = self.memo.secret_users.get_mut(&secret) {
                users.remove(&ing.key);
                if users.is_empty() {
                    self.memo.secret_users.remove(&secret);
                }
            }
            self.touched_secrets.insert(secret);
        }
        if self.memo.issuing.remove(&age) {
            self.acme_dirty = true;
        }
    }

    fn note_wildcard_tls(&mut self, ing: &ParsedIngress) {
        for entry in &ing.tls {
            for host in &entry.hosts {
                if let HostPattern::Wildcard(parent) = host {
                    self.wildcard_tls.push(parent.to_string());
                }
            }
        }
    }

    /// Whether pylon obtains certificates for this Ingress (or reports why it cannot).
    fn issuing(&self, ing: &ParsedIngress) -> bool {
        ing.annotations.certificate.issuer.is_some()
            || (!ing.tls.is_empty() && self.settings.default_issuer.is_some())
    }

    /// Evaluates what a served Ingress refers to: its backends and TLS Secrets.
    fn refresh_references(&mut self, key: &ObjectKey) {
        let Some(ing) = self.memo.ingresses.get(key).and_then(|m| m.serving.clone()) else {
            return;
        };
        let mut problems = Vec::new();
        let mut reported = BTreeSet::new();
        for service in services(&ing) {
            let backend = self.memo.backends.resolve(self.world, &key.namespace, service);
            if let Some(problem) = unavailable_problem(key, &backend)
                && reported.insert(backend.id.clone())
            {
                problems.push(problem);
            }
        }
        // A missing Secret is not worth a warning when pylon is about to issue it.
        let report_missing =
            ing.annotations.certificate.issuer.is_none() && self.settings.default_issuer.is_none();
        for entry in &ing.tls {
            let Some(name) = &entry.secret else { continue };
            let secret = ObjectKey::new(key.namespace.as_str(), name.as_str());
            if self.memo.certs.get(self.world, &secret).is_none() && report_missing {
                problems.push(Problem::warning(
                    ingress_subject(key),
                    "tls_secret_missing",
                    format!("TLS Secret {name} not found; its hosts get the default certificate"),
                ));
            }
        }
        self.dirty_hosts.extend(hosts(&ing).cloned());
        if ing.default_backend.is_some() {
            self.default_dirty = true;
        }
        if let Some(memo) = self.memo.ingresses.get_mut(key) {
            memo.ref_problems = problems;
        }
        self.note_ingress_problems(key);
    }

    /// The served version of an Ingress in the indexes.
    fn serving(&self, key: &ObjectKey) -> Option<(&Arc<ParsedIngress>, &Arc<IngressRef>)> {
        let memo = self.memo.ingresses.get(key)?;
        Some((memo.serving.as_ref()?, memo.origin.as_ref()?))
    }

    fn route(
        &mut self,
        ing: &ParsedIngress,
        origin: &Arc<IngressRef>,
        service: &ServiceRef,
        has_tls: bool,
    ) -> Arc<Route> {
        let backend = self
            .memo
            .backends
            .resolve(self.world, &ing.key.namespace, service);
        let counters = self
            .memo
            .counters
            .entry(counter_key(&ing.key, service))
            .or_default()
            .clone();
        let a = &ing.annotations;
        Arc::new(Route {
            ingress: origin.clone(),
            backend,
            policy: Policy {
                redirect_https: a.force_ssl_redirect || (a.ssl_redirect && has_tls),
                max_request_body: a.max_body,
                connect_timeout: a.connect_timeout,
                read_timeout: a.read_timeout,
                write_timeout: a.write_timeout,
            },
            counters,
        })
    }

    /// Whether a TLS entry of a served Ingress names `host` itself.
    fn lists_tls(&self, host: &HostPattern) -> bool {
        self.memo.hosts.get(host).is_some_and(|memo| {
            memo.contributors.iter().any(|(_, key)| {
                self.serving(key)
                    .is_some_and(|(ing, _)| ing.tls.iter().any(|e| e.hosts.contains(host)))
            })
        })
    }

    /// Whether a rule host is covered by a TLS entry (exactly, or by a wildcard entry).
    fn has_tls(&self, host: &HostPattern) -> bool {
        match host {
            HostPattern::Exact(h) => {
                self.lists_tls(host) || h.covering_wildcard().is_some_and(|w| self.lists_tls(&w))
            }
            HostPattern::Wildcard(_) => self.lists_tls(host),
            HostPattern::Any => false,
        }
    }

    /// Builds the routes and the certificate of one host from the Ingresses naming it.
    fn build_host(&mut self, host: &HostPattern, table: &mut RouteTable, index: &mut CertIndex) {
        let contributors: Vec<(Arc<ParsedIngress>, Arc<IngressRef>)> = self
            .memo
            .hosts
            .get(host)
            .into_iter()
            .flat_map(|memo| &memo.contributors)
            .filter_map(|(_, key)| self.serving(key))
            .map(|(ing, origin)| (ing.clone(), origin.clone()))
            .collect();
        if contributors.is_empty() {
            self.memo.hosts.remove(host);
            self.memo.troubled_hosts.remove(host);
            table.set_host(host, None);
            index.set(host, None);
            return;
        }
        let has_tls = self.has_tls(host);
        let mut problems = Vec::new();
        let mut routes = HostRoutes::default();
        for (ing, origin) in &contributors {
            for rule in ing.rules.iter().filter(|r| &r.host == host) {
                let route = self.route(ing, origin, &rule.backend, has_tls);
                if let Err(winner) = routes.insert(&rule.path, route) {
                    problems.push(Problem::error(
                        ingress_subject(&ing.key),
                        "path_conflict",
                        format!(
                            "host {} path {} is already served by Ingress {} (older); this path is not served",
                            rule.host, rule.path, winner.ingress
                        ),
                    ));
                }
            }
        }
        table.set_host(host, Some(routes));

        let mut winner: Option<(Arc<Certificate>, &ObjectKey, &str)> = None;
        for (ing, _) in &contributors {
            for entry in ing.tls.iter().filter(|e| e.hosts.contains(host)) {
                let Some(name) = &entry.secret else { continue };
                let secret = ObjectKey::new(ing.key.namespace.as_str(), name.as_str());
                let Some(cert) = self.memo.certs.current(self.world, &secret) else {
                    continue;
                };
                match &winner {
                    None => {
                        if let HostPattern::Exact(h) = host
                            && !cert.covers(h.as_str())
                        {
                            problems.push(Problem::warning(
                                ingress_subject(&ing.key),
                                "certificate_name_mismatch",
                                format!(
                                    "the certificate in Secret {name} does not cover host {h}; clients will reject it"
                                ),
                            ));
                        }
                        winner = Some((cert, &ing.key, name));
                    }
                    Some((held, owner, held_secret)) if !Arc::ptr_eq(&held.key, &cert.key) => {
                        problems.push(Problem::warning(
                            ingress_subject(&ing.key),
                            "tls_host_conflict",
                            format!(
                                "host {host} already uses Secret {held_secret} of Ingress {owner} (older); Secret {name} is not used for it"
                            ),
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        index.set(host, winner.map(|(cert, ..)| cert.key.clone()));
        if problems.is_empty() {
            self.memo.troubled_hosts.remove(host);
        } else {
            self.memo.troubled_hosts.insert(host.clone());
        }
        if let Some(memo) = self.memo.hosts.get_mut(host) {
            memo.problems = problems;
        }
    }

    /// The default backend: the oldest Ingress with one wins.
    fn build_default(&mut self, table: &mut RouteTable) {
        let mut problems = Vec::new();
        let mut route: Option<Arc<Route>> = None;
        let defaulting: Vec<(Arc<ParsedIngress>, Arc<IngressRef>)> = self
            .memo
            .defaulting
            .iter()
            .filter_map(|(_, key)| self.serving(key))
            .map(|(ing, origin)| (ing.clone(), origin.clone()))
            .collect();
        for (ing, origin) in &defaulting {
            let Some(service) = &ing.default_backend else {
                continue;
            };
            match &route {
                None => route = Some(self.route(ing, origin, service, false)),
                Some(winner) => problems.push(Problem::warning(
                    ingress_subject(&ing.key),
                    "default_backend_conflict",
                    format!(
                        "the default backend of Ingress {} (older) is used; this one is not",
                        winner.ingress
                    ),
                )),
            }
        }
        table.set_default(route);
        self.memo.default_problems = problems;
    }

    /// Builds what changed and assembles the translation.
    fn finish(mut self, fresh: bool) -> Translation {
        let world = self.world.clone();
        let settings = self.settings;
        for key in std::mem::take(&mut self.dirty_ingresses) {
            self.refresh_references(&key);
        }
        if !self.wildcard_tls.is_empty() {
            let parents: HashSet<String> = std::mem::take(&mut self.wildcard_tls).into_iter().collect();
            let under: Vec<HostPattern> = self
                .memo
                .hosts
                .keys()
                .filter(|h| match h {
                    HostPattern::Exact(h) => h.parent().is_some_and(|p| parents.contains(p)),
                    _ => false,
                })
                .cloned()
                .collect();
            self.dirty_hosts.extend(under);
        }

        let (mut table, mut index) = if fresh {
            (RouteTable::default(), CertIndex::default())
        } else {
            (self.previous.routes.clone(), self.previous.certs.clone())
        };
        for host in std::mem::take(&mut self.dirty_hosts) {
            self.build_host(&host, &mut table, &mut index);
        }
        if self.default_dirty {
            self.build_default(&mut table);
        }

        let mut problems = world.problems.clone();
        let default_key = settings.default_certificate.as_ref().and_then(|key| {
            self.touched_secrets.insert(key.clone());
            let cert = self.memo.certs.current(&world, key);
            if !world.secrets.contains_key(key) {
                problems.push(Problem::error(
                    Subject::object("Secret", &key.namespace, &key.name),
                    "tls_secret_missing",
                    "configured as the default certificate but not found; a self-signed certificate is served",
                ));
            }
            cert
        });
        index.set_default(
            default_key.map_or_else(|| settings.fallback_certificate.key.clone(), |c| c.key.clone()),
        );

        if self.acme_dirty {
            let issuing: Vec<&ParsedIngress> = self
                .memo
                .issuing
                .iter()
                .filter_map(|(_, key)| self.memo.ingresses.get(key)?.serving.as_deref())
                .collect();
            let mut acme_problems = Vec::new();
            let wanted = certificates::certificates(
                &issuing,
                &world,
                settings,
                &mut self.memo.certs,
                &mut acme_problems,
            );
            self.memo.acme = AcmeMemo {
                requests: Arc::new(wanted.requests),
                challenges: Arc::new(wanted.challenges),
                problems: acme_problems,
            };
        }

        // Certificates in service: loaded for every Secret a served Ingress names, and the
        // default; Secrets no longer named are forgotten.
        let mut certificate_updates = Vec::new();
        for secret in std::mem::take(&mut self.touched_secrets) {
            let named = self.memo.secret_users.contains_key(&secret)
                || settings.default_certificate.as_ref() == Some(&secret);
            if !named {
                self.memo.certs.forget(&secret);
            }
            let now = self.memo.certs.not_after(&secret);
            let before = match now {
                Some(t) => self.memo.in_use.insert(secret.clone(), t),
                None => self.memo.in_use.remove(&secret),
            };
            if before != now {
                certificate_updates.push((secret, now));
            }
        }
        certificate_updates.sort();

        for memo in self
            .memo
            .troubled_ingresses
            .iter()
            .filter_map(|k| self.memo.ingresses.get(k))
        {
            problems.extend(memo.own_problems.iter().cloned());
            if memo.serving.is_some() {
                problems.extend(memo.ref_problems.iter().cloned());
            }
        }
        for memo in self
            .memo
            .troubled_hosts
            .iter()
            .filter_map(|h| self.memo.hosts.get(h))
        {
            problems.extend(memo.problems.iter().cloned());
        }
        problems.extend(self.memo.default_problems.iter().cloned());
        problems.extend(self.memo.acme.problems.iter().cloned());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.memo.certs.problems(now, &mut problems);
        problems.sort();
        problems.dedup();

        let (backends, endpoints) = self.memo.backends.counts();
        let generation = self.previous.generation + 1;
        self.memo.generation = generation;
        self.memo.world = Some(world);
        Translation {
            snapshot: Snapshot {
                generation,
                routes: table,
                certs: index,
                challenges: self.memo.acme.challenges.clone(),
            },
            problems,
            certificate_updates,
            ignored: self.memo.ignored.clone(),
            requests: self.memo.acme.requests.clone(),
            served: self.memo.served.clone(),
            backends,
            endpoints,
        }
    }
}

fn age(ing: &ParsedIngress) -> Age {
    (ing.created.unwrap_or(Timestamp::MIN), ing.key.clone())
}

/// Every host an Ingress names, in rules and TLS entries, once each.
fn hosts(ing: &ParsedIngress) -> impl Iterator<Item = &HostPattern> {
    let mut all: Vec<&HostPattern> = ing
        .rules
        .iter()
        .map(|r| &r.host)
        .chain(ing.tls.iter().flat_map(|e| &e.hosts))
        .collect();
    all.sort_unstable();
    all.dedup();
    all.into_iter()
}

/// Every Service an Ingress sends requests to.
fn services(ing: &ParsedIngress) -> impl Iterator<Item = &ServiceRef> {
    ing.rules
        .iter()
        .map(|r| &r.backend)
        .chain(ing.default_backend.iter())
}

/// Every TLS Secret an Ingress names.
fn secrets(ing: &ParsedIngress) -> impl Iterator<Item = ObjectKey> + '_ {
    ing.tls
        .iter()
        .filter_map(|e| e.secret.as_deref())
        .map(|name| ObjectKey::new(ing.key.namespace.as_str(), name))
}

fn counter_key(ingress: &ObjectKey, service: &ServiceRef) -> CounterKey {
    CounterKey {
        namespace: ingress.namespace.as_str().into(),
        ingress: ingress.name.as_str().into(),
        service: service.name.as_str().into(),
    }
}

/// Whether two maps hold the same objects.
fn same<K: Ord + Clone, V: PartialEq>(a: &Objects<K, V>, b: &Objects<K, V>) -> bool {
    a.diff(b).next().is_none()
}

/// Calls `f` for every key whose object was added, removed or replaced from `old` to `new`.
/// The maps are persistent: the parts a source did not touch are shared and skipped unseen, so
/// a change costs in proportion to what changed, not to the number of objects. An object
/// replaced by an equal one (a resync) is not a change.
fn diff<K: Ord + Clone, V: PartialEq>(
    old: &Objects<K, V>,
    new: &Objects<K, V>,
    mut f: impl FnMut(&K, Option<&Arc<V>>, Option<&Arc<V>>),
) {
    for item in old.diff(new) {
        match item {
            DiffItem::Add(key, after) => f(key, None, Some(after)),
            DiffItem::Update {
                old: (key, before),
                new: (_, after),
            } => f(key, Some(before), Some(after)),
            DiffItem::Remove(key, before) => f(key, Some(before), None),
        }
    }
}

/// The class an Ingress names: `spec.ingressClassName`, else the legacy annotation.
fn class_of(ing: &Ingress) -> Option<&str> {
    ing.spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
        .or_else(|| {
            ing.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(CLASS_ANNOTATION))
                .map(String::as_str)
        })
        .filter(|c| !c.is_empty())
}

/// Which class names pylon serves.
struct Classes<'a> {
    names: BTreeSet<&'a str>,
    default_is_ours: bool,
    serve_without_class: bool,
}

impl<'a> Classes<'a> {
    fn new(world: &'a World, settings: &'a Settings) -> Self {
        let mut names: BTreeSet<&str> = settings.extra_classes.iter().map(String::as_str).collect();
        let mut default_is_ours = false;
        for (name, class) in &world.ingress_classes {
            let ours = class
                .spec
                .as_ref()
                .and_then(|s| s.controller.as_deref())
                .is_some_and(|c| c == settings.controller);
            if ours {
                names.insert(name);
                let is_default = class
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                    .is_some_and(|v| v == "true");
                default_is_ours |= is_default;
            }
        }
        Self {
            names,
            default_is_ours,
            serve_without_class: settings.serve_without_class,
        }
    }

    fn serves(&self, class: Option<&str>) -> bool {
        match class {
            Some(name) => self.names.contains(name),
            None => self.serve_without_class || self.default_is_ours,
        }
    }
}

fn ingress_subject(key: &ObjectKey) -> Subject {
    Subject::object("Ingress", &key.namespace, &key.name)
}

#[cfg(test)]
impl Memo {
    /// Whether the indexes of what has problems hold exactly what a visit of every entry finds.
    fn troubles_indexed(&self) -> bool {
        let ingresses: HashSet<ObjectKey> = self
            .ingresses
            .iter()
            .filter(|(_, m)| m.has_problems())
            .map(|(k, _)| k.clone())
            .collect();
        let hosts: HashSet<HostPattern> = self
            .hosts
            .iter()
            .filter(|(_, m)| !m.problems.is_empty())
            .map(|(h, _)| h.clone())
            .collect();
        ingresses == self.troubled_ingresses && hosts == self.troubled_hosts && self.certs.troubles_indexed()
    }
}

#[cfg(test)]
mod tests;
