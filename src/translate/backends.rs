//! Resolving an Ingress backend (Service + port) to ready endpoints via EndpointSlices.

use foldhash::HashMap;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::ServicePort;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::ingress::ServiceRef;
use crate::problem::{Problem, Subject};
use crate::routing::{Backend, BackendId, PortRef, Unavailable};
use crate::source::names::{Names, Resolution};
use crate::source::{ObjectKey, World};

/// The label EndpointSlices carry to name their Service.
pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Backends resolved so far, by Service; kept between runs and dropped when their Service or
/// its EndpointSlices change.
#[derive(Debug, Default)]
pub(super) struct Backends {
    /// EndpointSlices by the Service they belong to.
    slices: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// One backend per Service port in use, by namespace and Service name.
    resolved: HashMap<String, HashMap<String, Vec<Arc<Backend>>>>,
    /// How many routes of served Ingresses use each Service port.
    uses: HashMap<ObjectKey, Vec<(PortRef, usize)>>,
    /// The backends in `resolved` and their endpoints, counted as they come and go.
    counts: Counts,
}

#[derive(Debug, Default)]
struct Counts {
    backends: usize,
    endpoints: usize,
}

impl Counts {
    fn add(&mut self, backend: &Backend) {
        self.backends += 1;
        self.endpoints += backend.endpoints().len();
    }

    fn remove(&mut self, backend: &Backend) {
        self.backends -= 1;
        self.endpoints -= backend.endpoints().len();
    }
}

impl Backends {
    /// Records a changed EndpointSlice; returns the Services whose endpoints it affects.
    pub(super) fn slice_changed(
        &mut self,
        key: &ObjectKey,
        old: Option<&EndpointSlice>,
        new: Option<&EndpointSlice>,
    ) -> Vec<ObjectKey> {
        let owner = |slice: &EndpointSlice| {
            let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
            Some(ObjectKey::new(key.namespace.clone(), service.clone()))
        };
        let mut services = Vec::new();
        if let Some(service) = old.and_then(owner) {
            if let Some(set) = self.slices.get_mut(&service) {
                set.remove(key);
                if set.is_empty() {
                    self.slices.remove(&service);
                }
            }
            services.push(service);
        }
        if let Some(service) = new.and_then(owner) {
            self.slices
                .entry(service.clone())
                .or_default()
                .insert(key.clone());
            services.push(service);
        }
        services
    }

    /// Drops what was resolved for `service`: it changed.
    pub(super) fn forget(&mut self, service: &ObjectKey) {
        if let Some(gone) = self
            .resolved
            .get_mut(&service.namespace)
            .and_then(|names| names.remove(&service.name))
        {
            for backend in &gone {
                self.counts.remove(backend);
            }
        }
    }

    /// Counts a use of a Service port.
    pub(super) fn hold(&mut self, service: ObjectKey, port: &PortRef) {
        let uses = self.uses.entry(service).or_default();
        match uses.iter_mut().find(|(p, _)| p == port) {
            Some((_, n)) => *n += 1,
            None => uses.push((port.clone(), 1)),
        }
    }

    /// Counts a use less; the backend of a port nobody uses is dropped.
    pub(super) fn release(&mut self, service: &ObjectKey, port: &PortRef) {
        let Some(uses) = self.uses.get_mut(service) else {
            return;
        };
        if let Some(i) = uses.iter().position(|(p, _)| p == port) {
            uses[i].1 -= 1;
            if uses[i].1 == 0 {
                uses.swap_remove(i);
                if let Some(resolved) = self
                    .resolved
                    .get_mut(&service.namespace)
                    .and_then(|names| names.get_mut(&service.name))
                    && let Some(i) = resolved.iter().position(|b| b.id.port == *port)
                {
                    let gone = resolved.swap_remove(i);
                    self.counts.remove(&gone);
                }
            }
        }
        if uses.is_empty() {
            self.uses.remove(service);
            self.forget(service);
        }
    }

    /// The backend for `service` in `namespace`, shared by every route using it.
    pub(super) fn resolve(&mut self, world: &World, namespace: &str, service: &ServiceRef) -> Arc<Backend> {
        if let Some(found) = self
            .resolved
            .get(namespace)
            .and_then(|names| names.get(&service.name))
            .and_then(|ports| ports.iter().find(|b| b.id.port == service.port))
        {
            return found.clone();
        }
        let id = BackendId {
            namespace: namespace.into(),
            service: service.name.as_str().into(),
            port: service.port.clone(),
        };
        let key = ObjectKey::new(namespace, service.name.as_str());
        let backend = Arc::new(self.build(world, &key, id));
        self.counts.add(&backend);
        self.resolved
            .entry(key.namespace)
            .or_default()
            .entry(key.name)
            .or_default()
            .push(backend.clone());
        backend
    }

    /// The number of backends in use and of their endpoints.
    pub(super) fn counts(&self) -> (usize, usize) {
        (self.counts.backends, self.counts.endpoints)
    }

    fn build(&self, world: &World, key: &ObjectKey, id: BackendId) -> Backend {
        let Some(service) = world.services.get(key) else {
            return Backend::unavailable(id, Unavailable::ServiceMissing);
        };
        let spec = service.spec.as_ref();
        let ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            return external_name(
                id,
                spec.and_then(|s| s.external_name.as_deref()),
                ports,
                &world.names,
            );
        }
        let Some(port) = ports.iter().find(|p| port_matches(p, &id.port)) else {
            return Backend::unavailable(id, Unavailable::PortMissing);
        };
        let port_name = port.name.as_deref().unwrap_or_default();
        let mut endpoints = Vec::new();
        let slices = self
            .slices
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|k| world.endpoint_slices.get(k));
        for slice in slices {
            if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
                continue;
            }
            let target = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or_default() == port_name)
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok());
            let Some(target) = target else { continue };
            for endpoint in &slice.endpoints {
                // A missing `ready` condition means ready (EndpointSlice API).
                let ready = endpoint.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready {
                    continue;
                }
                for address in &endpoint.addresses {
                    if let Ok(ip) = address.parse::<IpAddr>() {
                        endpoints.push(SocketAddr::new(ip, target));
                    }
                }
            }
        }
        Backend::new(id, endpoints)
    }
}

/// The problem of an Ingress whose backend cannot serve, if it cannot.
pub(super) fn unavailable_problem(ingress: &ObjectKey, backend: &Backend) -> Option<Problem> {
    let (reason, what) = match backend.why_unavailable()? {
        Unavailable::ServiceMissing => ("service_missing", "Service not found"),
        Unavailable::PortMissing => ("service_port_missing", "the Service has no such port"),
        Unavailable::NoReadyEndpoints => ("no_ready_endpoints", "no ready endpoints"),
        Unavailable::ExternalNameMissing => {
            ("external_name_missing", "the ExternalName Service names no host")
        }
        Unavailable::NameUnresolved => (
            "external_name_unresolved",
            "the ExternalName Service's DNS name does not resolve (the log has the lookup's error)",
        ),
        // Looked up within moments; not a problem of the Ingress.
        Unavailable::NamePending => return None,
    };
    Some(Problem::warning(
        Subject::object("Ingress", &ingress.namespace, &ingress.name),
        reason,
        format!("backend {}: {what}; requests get 503", backend.id),
    ))
}

/// An ExternalName Service: its IP address, or the addresses its DNS name resolved to (off the
/// request path, see [`crate::source::names`]), on the Service port's target port (or the port
/// the Ingress names).
fn external_name(id: BackendId, name: Option<&str>, ports: &[ServicePort], names: &Names) -> Backend {
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Backend::unavailable(id, Unavailable::ExternalNameMissing);
    };
    let ips = match name.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => match names.get(name).map(|r| &**r) {
            Some(Resolution::Addresses(ips)) => ips.clone(),
            Some(Resolution::Failed(_)) => return Backend::unavailable(id, Unavailable::NameUnresolved),
            None => return Backend::unavailable(id, Unavailable::NamePending),
        },
    };
    let port = match ports.iter().find(|p| port_matches(p, &id.port)) {
        Some(p) => match &p.target_port {
            Some(IntOrString::Int(t)) => u16::try_from(*t).ok(),
            _ => u16::try_from(p.port).ok(),
        },
        None => match id.port {
            PortRef::Number(n) => Some(n),
            PortRef::Name(_) => None,
        },
    };
    match port {
        Some(port) => Backend::new(id, ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect()),
        None => Backend::unavailable(id, Unavailable::PortMissing),
    }
}

fn port_matches(port: &ServicePort, wanted: &PortRef) -> bool {
    match wanted {
        PortRef::Number(n) => port.port == i32::from(*n),
        PortRef::Name(name) => port.name.as_deref() == Some(&**name),
    }
}
