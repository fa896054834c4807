//! Translate: the pure function from a [`World`] to a [`Snapshot`] and the problems found.
//!
//! It knows Kubernetes Ingress v1 semantics (classes, hosts, paths, backends, TLS) and parses
//! annotations into typed values. A bad object is reported and left out — or, if an earlier
//! version of it was good, that version keeps serving. Nothing here does I/O.

pub mod annotations;
mod backends;
mod certificates;
mod certs;
pub mod ingress;

use std::collections::BTreeSet;
use std::sync::Arc;

use foldhash::{HashMap, HashSet};
use k8s_openapi::api::networking::v1::Ingress;

use self::backends::Backends;
use self::certs::{CertMemo, Certs};
use self::ingress::{ParsedIngress, ServiceRef};
use crate::acme::issuer::IssuerKind;
use crate::acme::request::CertificateRequest;
use crate::config::{AcmeConfig, IngressConfig};
use crate::metrics::{CounterKey, RequestCounters};
use crate::problem::{Problem, Subject};
use crate::routing::{HostPattern, IngressRef, Policy, Route, RouteTableBuilder};
use crate::snapshot::Snapshot;
use crate::source::{ObjectKey, World};
use crate::tls::{CertIndexBuilder, Certificate};

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

/// What translate remembers between runs. It lives in the snapshot so that translate stays a
/// function of its inputs.
#[derive(Debug, Default)]
pub struct Memo {
    /// The last version of each served Ingress that passed validation, parsed. An Ingress the
    /// source hands over unchanged (the same `Arc`) is not parsed again.
    good_ingresses: HashMap<ObjectKey, (Arc<Ingress>, Arc<ParsedIngress>)>,
    /// Parsed certificates by Secret.
    certs: HashMap<ObjectKey, Arc<CertMemo>>,
}

/// A certificate in service, for metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInUse {
    pub secret: ObjectKey,
    pub not_after: i64,
}

#[derive(Debug)]
pub struct Translation {
    pub snapshot: Snapshot,
    pub problems: Vec<Problem>,
    pub certificates: Vec<CertificateInUse>,
    /// Ingresses left to other controllers, with the class they name (if any).
    pub ignored: Vec<(ObjectKey, Option<String>)>,
    /// Certificates pylon should obtain or keep renewed.
    pub requests: Vec<CertificateRequest>,
    /// The Ingresses pylon serves (their status carries pylon's addresses).
    pub served: Vec<ObjectKey>,
}

/// Builds the next snapshot from `world`, reusing what `previous` already parsed.
pub fn translate(world: &World, settings: &Settings, previous: &Snapshot) -> Translation {
    let mut problems = world.problems.clone();
    let mut memo = Memo::default();

    let (served, ignored) = select(world, settings, previous, &mut memo, &mut problems);

    let mut backends = Backends::new(world);
    let mut certs = Certs::new(world, &previous.memo.certs);

    // TLS first: which hosts have TLS decides where plain HTTP is redirected.
    let mut index = CertIndexBuilder::default();
    let mut tls_hosts = TlsHosts::default();
    let mut cert_owner: HashMap<HostPattern, (ObjectKey, Option<String>)> = HashMap::default();
    for ing in &served {
        let issues_certificates =
            ing.annotations.certificate.issuer.is_some() || settings.default_issuer.is_some();
        for entry in &ing.tls {
            let cert = entry.secret.as_ref().and_then(|name| {
                let key = ObjectKey::new(ing.key.namespace.clone(), name.clone());
                certs.load(&key, &ing.key, !issues_certificates, &mut problems)
            });
            for host in &entry.hosts {
                tls_hosts.insert(host);
                let Some(cert) = &cert else { continue };
                match index.add(host, cert.key.clone()) {
                    Ok(()) => {
                        cert_owner.insert(host.clone(), (ing.key.clone(), entry.secret.clone()));
                        if let HostPattern::Exact(h) = host
                            && !cert.covers(h.as_str())
                        {
                            problems.push(Problem::warning(
                                    ingress_subject(&ing.key),
                                    "certificate_name_mismatch",
                                    format!(
                                        "the certificate in Secret {} does not cover host {h}; clients will reject it",
                                        entry.secret.as_deref().unwrap_or_default()
                                    ),
                                ));
                        }
                    }
                    Err(_) => {
                        let (owner, secret) = &cert_owner[host];
                        problems.push(Problem::warning(
                            ingress_subject(&ing.key),
                            "tls_host_conflict",
                            format!(
                                "host {host} already uses Secret {} of Ingress {owner} (older); Secret {} is not used for it",
                                secret.as_deref().unwrap_or_default(),
                                entry.secret.as_deref().unwrap_or_default()
                            ),
                        ));
                    }
                }
            }
        }
    }
    let default_key = settings
        .default_certificate
        .as_ref()
        .and_then(|key| certs.load_default(key, &mut problems))
        .map_or_else(|| settings.fallback_certificate.key.clone(), |c| c.key.clone());
    index.set_default(default_key);

    // Routes, oldest Ingress first: the first route for a host and path wins.
    let mut table = RouteTableBuilder::default();
    let mut counters: HashMap<CounterKey, Arc<RequestCounters>> = HashMap::default();
    let mut route_for = |ing: &ParsedIngress,
                         origin: &Arc<IngressRef>,
                         service: &ServiceRef,
                         host: Option<&HostPattern>,
                         backends: &mut Backends<'_>,
                         problems: &mut Vec<Problem>| {
        let backend = backends.resolve(&ing.key, service, problems);
        let counter_key = CounterKey {
            namespace: ing.key.namespace.as_str().into(),
            ingress: ing.key.name.as_str().into(),
            service: service.name.as_str().into(),
        };
        let counter = counters
            .entry(counter_key)
            .or_insert_with_key(|k| previous.counters.get(k).cloned().unwrap_or_default())
            .clone();
        let a = &ing.annotations;
        let has_tls = host.is_some_and(|h| tls_hosts.covers(h));
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
            counters: counter,
        })
    };
    for ing in &served {
        let origin = Arc::new(IngressRef {
            namespace: ing.key.namespace.as_str().into(),
            name: ing.key.name.as_str().into(),
        });
        for rule in &ing.rules {
            let route = route_for(
                ing,
                &origin,
                &rule.backend,
                Some(&rule.host),
                &mut backends,
                &mut problems,
            );
            if let Err(winner) = table.add(&rule.host, &rule.path, route) {
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
        if let Some(service) = &ing.default_backend {
            let route = route_for(ing, &origin, service, None, &mut backends, &mut problems);
            if let Err(winner) = table.set_default(route) {
                problems.push(Problem::warning(
                    ingress_subject(&ing.key),
                    "default_backend_conflict",
                    format!(
                        "the default backend of Ingress {} (older) is used; this one is not",
                        winner.ingress
                    ),
                ));
            }
        }
    }

    let wanted = certificates::certificates(&served, world, settings, &mut certs, &mut problems);
    let (cert_memo, certificates) = certs.finish();
    memo.certs = cert_memo;
    problems.sort();
    problems.dedup();
    Translation {
        snapshot: Snapshot {
            generation: previous.generation + 1,
            routes: table.build(),
            certs: index.build(),
            challenges: wanted.challenges,
            counters,
            memo,
        },
        problems,
        certificates,
        ignored,
        requests: wanted.requests,
        served: served.iter().map(|i| i.key.clone()).collect(),
    }
}

/// An Ingress left to another controller, with the class it names.
type Ignored = (ObjectKey, Option<String>);

/// The Ingresses pylon serves, validated, oldest first. Invalid ones fall back to their last
/// good version when there is one.
fn select(
    world: &World,
    settings: &Settings,
    previous: &Snapshot,
    memo: &mut Memo,
    problems: &mut Vec<Problem>,
) -> (Vec<Arc<ParsedIngress>>, Vec<Ignored>) {
    let classes = Classes::new(world, settings);
    let mut served = Vec::new();
    let mut ignored = Vec::new();
    for (key, ing) in &world.ingresses {
        let class = class_of(ing);
        if !classes.serves(class) {
            ignored.push((key.clone(), class.map(str::to_owned)));
            continue;
        }
        let previous_good = previous.memo.good_ingresses.get(key);
        if let Some((old, parsed)) = previous_good
            && Arc::ptr_eq(old, ing)
        {
            memo.good_ingresses
                .insert(key.clone(), (old.clone(), parsed.clone()));
            served.push(parsed.clone());
            continue;
        }
        match ingress::parse(key, ing) {
            Ok(parsed) => {
                let parsed = Arc::new(parsed);
                memo.good_ingresses
                    .insert(key.clone(), (ing.clone(), parsed.clone()));
                served.push(parsed);
            }
            Err(rejected) => {
                let tail = if previous_good.is_some() {
                    "; the last good version stays in service"
                } else {
                    "; it is not served"
                };
                let subject = ingress_subject(key);
                problems.push(Problem::error(
                    subject.clone(),
                    "invalid_ingress",
                    format!("{}{tail}", rejected.errors.join("; ")),
                ));
                for note in rejected.notes {
                    problems.push(Problem::warning(subject.clone(), "ignored_setting", note));
                }
                if let Some((old, parsed)) = previous_good {
                    memo.good_ingresses
                        .insert(key.clone(), (old.clone(), parsed.clone()));
                    served.push(parsed.clone());
                }
            }
        }
    }
    for ing in &served {
        for note in &ing.notes {
            problems.push(Problem::warning(
                ingress_subject(&ing.key),
                "ignored_setting",
                note.clone(),
            ));
        }
    }
    served.sort_by(|a, b| a.age_key().cmp(&b.age_key()));
    (served, ignored)
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

/// The hosts named in TLS entries: exact names and wildcard parents.
#[derive(Default)]
struct TlsHosts {
    exact: HashSet<String>,
    wildcard: HashSet<String>,
}

impl TlsHosts {
    fn insert(&mut self, host: &HostPattern) {
        match host {
            HostPattern::Exact(h) => self.exact.insert(h.to_string()),
            HostPattern::Wildcard(p) => self.wildcard.insert(p.to_string()),
            HostPattern::Any => false,
        };
    }

    /// Whether a rule host is covered by a TLS entry (exactly, or by a wildcard entry).
    fn covers(&self, host: &HostPattern) -> bool {
        match host {
            HostPattern::Exact(h) => {
                self.exact.contains(h.as_str()) || h.parent().is_some_and(|p| self.wildcard.contains(p))
            }
            HostPattern::Wildcard(p) => self.wildcard.contains(p.as_str()),
            HostPattern::Any => false,
        }
    }
}

fn ingress_subject(key: &ObjectKey) -> Subject {
    Subject::object("Ingress", &key.namespace, &key.name)
}

#[cfg(test)]
mod tests;
