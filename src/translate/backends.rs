//! Resolving an Ingress backend (Service + port) to ready endpoints via EndpointSlices.

use foldhash::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::ServicePort;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::ingress::ServiceRef;
use crate::problem::{Problem, Subject};
use crate::routing::{Backend, BackendId, PortRef, Unavailable};
use crate::source::{ObjectKey, World};

/// The label EndpointSlices carry to name their Service.
pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

pub(super) struct Backends<'w> {
    world: &'w World,
    slices: HashMap<(&'w str, &'w str), Vec<&'w EndpointSlice>>,
    resolved: HashMap<BackendId, Arc<Backend>>,
    reported: HashSet<(ObjectKey, BackendId)>,
}

impl<'w> Backends<'w> {
    pub(super) fn new(world: &'w World) -> Self {
        let mut slices: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::default();
        for (key, slice) in &world.endpoint_slices {
            let service = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let Some(service) = service {
                slices
                    .entry((key.namespace.as_str(), service.as_str()))
                    .or_default()
                    .push(slice);
            }
        }
        Self {
            world,
            slices,
            resolved: HashMap::default(),
            reported: HashSet::default(),
        }
    }

    /// The backend for `service` in the namespace of `ingress`, shared by every route using it.
    pub(super) fn resolve(
        &mut self,
        ingress: &ObjectKey,
        service: &ServiceRef,
        problems: &mut Vec<Problem>,
    ) -> Arc<Backend> {
        let id = BackendId {
            namespace: ingress.namespace.as_str().into(),
            service: service.name.as_str().into(),
            port: service.port.clone(),
        };
        let backend = match self.resolved.get(&id) {
            Some(b) => b.clone(),
            None => {
                let b = Arc::new(self.build(id.clone()));
                self.resolved.insert(id.clone(), b.clone());
                b
            }
        };
        if let Some(why) = backend.why_unavailable()
            && self.reported.insert((ingress.clone(), id.clone()))
        {
            let (reason, what) = match why {
                Unavailable::ServiceMissing => ("service_missing", "Service not found"),
                Unavailable::PortMissing => ("service_port_missing", "the Service has no such port"),
                Unavailable::NoReadyEndpoints => ("no_ready_endpoints", "no ready endpoints"),
                Unavailable::ExternalNameUnsupported => (
                    "external_name_unsupported",
                    "ExternalName Services are supported with an IP address only, not a DNS name yet",
                ),
            };
            problems.push(Problem::warning(
                Subject::object("Ingress", &ingress.namespace, &ingress.name),
                reason,
                format!("backend {id}: {what}; requests get 503"),
            ));
        }
        backend
    }

    fn build(&self, id: BackendId) -> Backend {
        let key = ObjectKey::new(&*id.namespace, &*id.service);
        let Some(service) = self.world.services.get(&key) else {
            return Backend::unavailable(id, Unavailable::ServiceMissing);
        };
        let spec = service.spec.as_ref();
        let ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            return external_name(id, spec.and_then(|s| s.external_name.as_deref()), ports);
        }
        let Some(port) = ports.iter().find(|p| port_matches(p, &id.port)) else {
            return Backend::unavailable(id, Unavailable::PortMissing);
        };
        let port_name = port.name.as_deref().unwrap_or_default();
        let mut endpoints = Vec::new();
        let slices = self
            .slices
            .get(&(&*id.namespace, &*id.service))
            .map(Vec::as_slice)
            .unwrap_or_default();
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

/// An ExternalName Service whose name is an IP address: that address, on the Service port's
/// target port (or the port the Ingress names). DNS names would need resolving off the
/// request path, which pylon does not do yet.
fn external_name(id: BackendId, name: Option<&str>, ports: &[ServicePort]) -> Backend {
    let Some(ip) = name.and_then(|n| n.parse::<IpAddr>().ok()) else {
        return Backend::unavailable(id, Unavailable::ExternalNameUnsupported);
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
        Some(port) => Backend::new(id, vec![SocketAddr::new(ip, port)]),
        None => Backend::unavailable(id, Unavailable::PortMissing),
    }
}

fn port_matches(port: &ServicePort, wanted: &PortRef) -> bool {
    match wanted {
        PortRef::Number(n) => port.port == i32::from(*n),
        PortRef::Name(name) => port.name.as_deref() == Some(&**name),
    }
}
