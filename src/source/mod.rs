//! Sources turn the outside world into a [`World`]: the same k8s-openapi objects whether they
//! come from manifest files or (later) from the API server.

pub mod cert_manager;
pub mod files;
pub mod kubernetes;
pub mod manifest;
pub mod names;

use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ObjectReference, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

use self::cert_manager::IssuerObject;
use crate::problem::Problem;

/// `namespace/name` of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// An object pylon reads, shared: cloning it does not copy the object.
#[derive(Clone, Debug)]
pub enum SharedObject {
    Ingress(Arc<Ingress>),
    IngressClass(Arc<IngressClass>),
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    Secret(Arc<Secret>),
    ClusterIssuer(Arc<IssuerObject>),
    Issuer(Arc<IssuerObject>),
}

impl From<manifest::Object> for SharedObject {
    fn from(object: manifest::Object) -> Self {
        use manifest::Object;
        match object {
            Object::Ingress(o) => Self::Ingress(Arc::new(o)),
            Object::IngressClass(o) => Self::IngressClass(Arc::new(o)),
            Object::Service(o) => Self::Service(Arc::new(o)),
            Object::EndpointSlice(o) => Self::EndpointSlice(Arc::new(o)),
            Object::Secret(o) => Self::Secret(Arc::new(o)),
            Object::ClusterIssuer(o) => Self::ClusterIssuer(Arc::new(o)),
            Object::Issuer(o) => Self::Issuer(Arc::new(o)),
        }
    }
}

impl World {
    /// A reference to an object, for Events; `None` if the world does not hold it.
    pub fn reference(&self, kind: &str, namespace: &str, name: &str) -> Option<ObjectReference> {
        let key = ObjectKey::new(namespace, name);
        let (api_version, meta) = match kind {
            "Ingress" => ("networking.k8s.io/v1", &self.ingresses.get(&key)?.metadata),
            "Secret" => ("v1", &self.secrets.get(&key)?.metadata),
            "Service" => ("v1", &self.services.get(&key)?.metadata),
            "ClusterIssuer" => ("cert-manager.io/v1", &self.cluster_issuers.get(name)?.metadata),
            "Issuer" => ("cert-manager.io/v1", &self.issuers.get(&key)?.metadata),
            _ => return None,
        };
        Some(ObjectReference {
            api_version: Some(api_version.to_owned()),
            kind: Some(kind.to_owned()),
            name: Some(name.to_owned()),
            namespace: (!namespace.is_empty()).then(|| namespace.to_owned()),
            uid: meta.uid.clone(),
            ..ObjectReference::default()
        })
    }

    /// Adds an object; cluster-scoped kinds are keyed by name only.
    pub fn insert(&mut self, key: ObjectKey, object: SharedObject) {
        match object {
            SharedObject::Ingress(o) => drop(self.ingresses.insert(key, o)),
            SharedObject::IngressClass(o) => drop(self.ingress_classes.insert(key.name, o)),
            SharedObject::Service(o) => drop(self.services.insert(key, o)),
            SharedObject::EndpointSlice(o) => drop(self.endpoint_slices.insert(key, o)),
            SharedObject::Secret(o) => drop(self.secrets.insert(key, o)),
            SharedObject::ClusterIssuer(o) => drop(self.cluster_issuers.insert(key.name, o)),
            SharedObject::Issuer(o) => drop(self.issuers.insert(key, o)),
        }
    }

    /// Removes the object `id` names, if present.
    pub fn remove(&mut self, id: &manifest::ObjectId) {
        use manifest::Kind;
        let key = &id.key;
        match id.kind {
            Kind::Ingress => drop(self.ingresses.remove(key)),
            Kind::IngressClass => drop(self.ingress_classes.remove(&key.name)),
            Kind::Service => drop(self.services.remove(key)),
            Kind::EndpointSlice => drop(self.endpoint_slices.remove(key)),
            Kind::Secret => drop(self.secrets.remove(key)),
            Kind::ClusterIssuer => drop(self.cluster_issuers.remove(&key.name)),
            Kind::Issuer => drop(self.issuers.remove(key)),
        }
    }
    /// Removes every object of `kind`.
    pub fn clear(&mut self, kind: manifest::Kind) {
        use manifest::Kind;
        match kind {
            Kind::Ingress => self.ingresses.clear(),
            Kind::IngressClass => self.ingress_classes.clear(),
            Kind::Service => self.services.clear(),
            Kind::EndpointSlice => self.endpoint_slices.clear(),
            Kind::Secret => self.secrets.clear(),
            Kind::ClusterIssuer => self.cluster_issuers.clear(),
            Kind::Issuer => self.issuers.clear(),
        }
    }
}

/// Objects of one kind by key, sorted. A persistent map: a copy shares its structure with the
/// original, so a source hands out a new world after a change without copying the unchanged
/// objects, and translate skips kinds that did not change.
pub type Objects<K, V> = imbl::OrdMap<K, Arc<V>>;

/// Every object pylon reads, as one consistent view.
#[derive(Clone, Debug, Default)]
pub struct World {
    pub ingresses: Objects<ObjectKey, Ingress>,
    /// Cluster-scoped, by name.
    pub ingress_classes: Objects<String, IngressClass>,
    pub services: Objects<ObjectKey, Service>,
    pub endpoint_slices: Objects<ObjectKey, EndpointSlice>,
    pub secrets: Objects<ObjectKey, Secret>,
    /// cert-manager `ClusterIssuer`s, by name.
    pub cluster_issuers: Objects<String, IssuerObject>,
    /// cert-manager `Issuer`s.
    pub issuers: Objects<ObjectKey, IssuerObject>,
    /// Problems the source found while reading (unparseable files, invalid objects).
    pub problems: Vec<Problem>,
    /// What the DNS names of ExternalName Services resolved to (filled in by the control loop,
    /// not by a source).
    pub names: names::Names,
}
