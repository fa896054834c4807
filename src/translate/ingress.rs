//! One Ingress, checked on its own: hosts, paths, backends, TLS entries and annotations.
//! Whatever is wrong here is wrong with the object itself, independent of other objects.

use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use k8s_openapi::jiff::Timestamp;

use super::annotations::{self, Annotations};
use crate::routing::{HostPattern, PathKind, PathMatch, PortRef};
use crate::source::ObjectKey;

/// The Service port an Ingress backend names, in the Ingress's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceRef {
    pub name: String,
    pub port: PortRef,
}

#[derive(Clone, Debug)]
pub struct PathRule {
    pub host: HostPattern,
    pub path: PathMatch,
    pub backend: ServiceRef,
}

#[derive(Clone, Debug)]
pub struct TlsEntry {
    /// The hosts of the entry, or of all rules when the entry lists none.
    pub hosts: Vec<HostPattern>,
    pub secret: Option<String>,
}

/// An Ingress that passed validation.
#[derive(Clone, Debug)]
pub struct ParsedIngress {
    pub key: ObjectKey,
    pub created: Option<Timestamp>,
    pub rules: Vec<PathRule>,
    pub default_backend: Option<ServiceRef>,
    pub tls: Vec<TlsEntry>,
    pub annotations: Annotations,
    /// Things worth telling the user that do not stop the Ingress from serving.
    pub notes: Vec<String>,
}

impl ParsedIngress {
    /// Sort key: oldest first, then namespace/name; the oldest wins conflicts.
    pub fn age_key(&self) -> (Timestamp, &str, &str) {
        (
            self.created.unwrap_or(Timestamp::MIN),
            &self.key.namespace,
            &self.key.name,
        )
    }
}

/// Why an Ingress is rejected, and what else is worth saying about it.
#[derive(Clone, Debug)]
pub struct Rejected {
    pub errors: Vec<String>,
    pub notes: Vec<String>,
}

/// Checks an Ingress. On failure, returns every reason.
pub fn parse(key: &ObjectKey, ingress: &Ingress) -> Result<ParsedIngress, Rejected> {
    let mut errors = Vec::new();
    let mut notes = Vec::new();
    let annotations = annotations::parse(ingress.metadata.annotations.as_ref());
    errors.extend(annotations.errors);
    notes.extend(annotations.notes);

    let spec = ingress.spec.as_ref();
    let default_backend = spec
        .and_then(|s| s.default_backend.as_ref())
        .and_then(|b| backend(b, "spec.defaultBackend", &mut errors));

    let mut rules = Vec::new();
    let mut rule_hosts = Vec::new();
    for (i, rule) in spec
        .and_then(|s| s.rules.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        // An invalid host is reported, and its paths are still checked so that every error
        // is reported at once.
        let host = match HostPattern::parse(rule.host.as_deref()) {
            Ok(h) => Some(h),
            Err(e) => {
                errors.push(format!(
                    "spec.rules[{i}].host {:?}: {e}",
                    rule.host.as_deref().unwrap_or_default()
                ));
                None
            }
        };
        if let Some(h) = &host
            && !rule_hosts.contains(h)
        {
            rule_hosts.push(h.clone());
        }
        let Some(http) = &rule.http else { continue };
        for (j, p) in http.paths.iter().enumerate() {
            let field = format!("spec.rules[{i}].http.paths[{j}]");
            let kind = match p.path_type.as_str() {
                "Exact" => PathKind::Exact,
                "Prefix" | "ImplementationSpecific" => PathKind::Prefix,
                "" => {
                    errors.push(format!("{field}.pathType is required"));
                    continue;
                }
                other => {
                    errors.push(format!(
                        "{field}.pathType {other:?} is not Exact, Prefix or ImplementationSpecific"
                    ));
                    continue;
                }
            };
            let path = match PathMatch::parse(kind, p.path.as_deref()) {
                Ok(path) => path,
                Err(e) => {
                    errors.push(format!(
                        "{field}.path {:?}: {e}",
                        p.path.as_deref().unwrap_or_default()
                    ));
                    continue;
                }
            };
            let backend = backend(&p.backend, &format!("{field}.backend"), &mut errors);
            if let (Some(host), Some(backend)) = (&host, backend) {
                rules.push(PathRule {
                    host: host.clone(),
                    path,
                    backend,
                });
            }
        }
    }
    if rules.is_empty() && default_backend.is_none() && errors.is_empty() {
        notes.push("has no paths and no default backend; it routes nothing".into());
    }

    let mut tls = Vec::new();
    for (i, entry) in spec
        .and_then(|s| s.tls.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let mut hosts = Vec::new();
        for (j, h) in entry.hosts.iter().flatten().enumerate() {
            match HostPattern::parse(Some(h)) {
                Ok(HostPattern::Any) => {}
                Ok(p) => hosts.push(p),
                Err(e) => errors.push(format!("spec.tls[{i}].hosts[{j}] {h:?}: {e}")),
            }
        }
        if entry.hosts.as_ref().is_none_or(Vec::is_empty) {
            hosts = rule_hosts
                .iter()
                .filter(|h| **h != HostPattern::Any)
                .cloned()
                .collect();
        }
        let secret = entry.secret_name.clone().filter(|s| !s.is_empty());
        if secret.is_none() {
            notes.push(format!(
                "spec.tls[{i}] names no secretName; its hosts get the default certificate"
            ));
        }
        tls.push(TlsEntry { hosts, secret });
    }

    if !errors.is_empty() {
        return Err(Rejected { errors, notes });
    }
    Ok(ParsedIngress {
        key: key.clone(),
        created: ingress.metadata.creation_timestamp.as_ref().map(|t| t.0),
        rules,
        default_backend,
        tls,
        annotations: annotations.annotations,
        notes,
    })
}

fn backend(b: &IngressBackend, field: &str, errors: &mut Vec<String>) -> Option<ServiceRef> {
    if b.resource.is_some() {
        errors.push(format!("{field}.resource: resource backends are not supported"));
        return None;
    }
    let Some(service) = &b.service else {
        errors.push(format!("{field}.service is required"));
        return None;
    };
    if service.name.is_empty() {
        errors.push(format!("{field}.service.name is required"));
        return None;
    }
    let port = match &service.port {
        Some(p) => match (p.number, p.name.as_deref()) {
            (Some(n), None) => match u16::try_from(n) {
                Ok(n) if n > 0 => PortRef::Number(n),
                _ => {
                    errors.push(format!("{field}.service.port.number {n} is not a port"));
                    return None;
                }
            },
            (None, Some(name)) if !name.is_empty() => PortRef::Name(name.into()),
            (Some(_), Some(_)) => {
                errors.push(format!("{field}.service.port: set number or name, not both"));
                return None;
            }
            _ => {
                errors.push(format!("{field}.service.port needs a number or a name"));
                return None;
            }
        },
        None => {
            errors.push(format!("{field}.service.port is required"));
            return None;
        }
    };
    Some(ServiceRef {
        name: service.name.clone(),
        port,
    })
}
