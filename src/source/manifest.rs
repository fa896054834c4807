//! Parsing multi-document YAML manifests into the typed objects pylon reads.
//!
//! Each document is read into a generic value first, so that even an object whose fields do not
//! fit its type can be named in the error (and its last good version kept). Fields the type does
//! not know are reported, as `kubectl apply` does with strict validation.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use serde::Deserialize;
use serde_json::Value;

use super::ObjectKey;
use super::cert_manager::IssuerObject;

/// The kinds pylon reads, with their `apiVersion`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Ingress,
    IngressClass,
    Service,
    EndpointSlice,
    Secret,
    ClusterIssuer,
    Issuer,
}

impl Kind {
    fn from_type(api_version: &str, kind: &str) -> Option<Self> {
        match (api_version, kind) {
            ("networking.k8s.io/v1", "Ingress") => Some(Self::Ingress),
            ("networking.k8s.io/v1", "IngressClass") => Some(Self::IngressClass),
            ("v1", "Service") => Some(Self::Service),
            ("discovery.k8s.io/v1", "EndpointSlice") => Some(Self::EndpointSlice),
            ("v1", "Secret") => Some(Self::Secret),
            ("cert-manager.io/v1", "ClusterIssuer") => Some(Self::ClusterIssuer),
            ("cert-manager.io/v1", "Issuer") => Some(Self::Issuer),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Ingress => "Ingress",
            Self::IngressClass => "IngressClass",
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::Secret => "Secret",
            Self::ClusterIssuer => "ClusterIssuer",
            Self::Issuer => "Issuer",
        }
    }

    fn namespaced(self) -> bool {
        !matches!(self, Self::IngressClass | Self::ClusterIssuer)
    }
}

/// Kind, namespace and name: enough to say which object a document is, even when invalid.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId {
    pub kind: Kind,
    pub key: ObjectKey,
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.namespace.is_empty() {
            write!(f, "{} {}", self.kind.name(), self.key.name)
        } else {
            write!(f, "{} {}", self.kind.name(), self.key)
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "objects are boxed where they are stored"
)]
pub enum Object {
    Ingress(Ingress),
    IngressClass(IngressClass),
    Service(Service),
    EndpointSlice(EndpointSlice),
    Secret(Secret),
    ClusterIssuer(IssuerObject),
    Issuer(IssuerObject),
}

/// One document of a manifest file.
#[derive(Debug)]
pub enum Document {
    /// A valid object. `unknown_fields` lists field paths its type does not have.
    Object {
        id: ObjectId,
        object: Box<Object>,
        unknown_fields: Vec<String>,
    },
    /// An object of a kind pylon reads, whose content is invalid.
    Invalid { id: ObjectId, reason: String },
    /// A document that is not an object pylon can identify (no kind, no name, not a mapping).
    Unidentified { index: usize, reason: String },
    /// An object of a kind pylon does not read (a Deployment, say).
    Ignored { api_version: String, kind: String },
}

/// Parses every document of a YAML file. Fails as a whole on a YAML syntax error.
pub fn parse(text: &str) -> Result<Vec<Document>, String> {
    let mut docs = Vec::new();
    for (index, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(de).map_err(|e| e.to_string())?;
        read_value(index, value, &mut docs);
    }
    Ok(docs)
}

fn read_value(index: usize, value: Value, docs: &mut Vec<Document>) {
    let Value::Object(map) = value else {
        if !value.is_null() {
            docs.push(Document::Unidentified {
                index,
                reason: "document is not a mapping".into(),
            });
        }
        return;
    };
    let field = |name: &str| {
        map.get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (api_version, kind_name) = (field("apiVersion"), field("kind"));
    if api_version.is_empty() || kind_name.is_empty() {
        docs.push(Document::Unidentified {
            index,
            reason: "document has no apiVersion or kind".into(),
        });
        return;
    }
    if kind_name == "List" && api_version == "v1" {
        if let Some(Value::Array(items)) = map.get("items") {
            for item in items {
                read_value(index, item.clone(), docs);
            }
        }
        return;
    }
    let Some(kind) = Kind::from_type(&api_version, &kind_name) else {
        docs.push(Document::Ignored {
            api_version,
            kind: kind_name,
        });
        return;
    };
    let meta = map.get("metadata");
    let meta_str = |name: &str| meta.and_then(|m| m.get(name)).and_then(Value::as_str);
    let Some(name) = meta_str("name").filter(|n| !n.is_empty()).map(str::to_owned) else {
        docs.push(Document::Unidentified {
            index,
            reason: format!("{kind_name} has no metadata.name"),
        });
        return;
    };
    let namespace = if kind.namespaced() {
        meta_str("namespace")
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
            .to_owned()
    } else {
        String::new()
    };
    let id = ObjectId {
        kind,
        key: ObjectKey::new(namespace.clone(), name),
    };
    let value = Value::Object(map);
    match typed(kind, value.clone(), &namespace) {
        Ok(object) => {
            let mut unknown_fields = Vec::new();
            if let Ok(round_trip) = object.to_value() {
                unknown(&value, &round_trip, String::new(), &mut unknown_fields);
            }
            docs.push(Document::Object {
                id,
                object: Box::new(object),
                unknown_fields,
            });
        }
        Err(reason) => docs.push(Document::Invalid { id, reason }),
    }
}

fn typed(kind: Kind, value: Value, namespace: &str) -> Result<Object, String> {
    let ns = (!namespace.is_empty()).then(|| namespace.to_owned());
    let err = |e: serde_json::Error| e.to_string();
    Ok(match kind {
        Kind::Ingress => {
            let mut o: Ingress = serde_json::from_value(value).map_err(err)?;
            o.metadata.namespace = ns;
            Object::Ingress(o)
        }
        Kind::IngressClass => Object::IngressClass(serde_json::from_value(value).map_err(err)?),
        Kind::Service => {
            let mut o: Service = serde_json::from_value(value).map_err(err)?;
            o.metadata.namespace = ns;
            Object::Service(o)
        }
        Kind::EndpointSlice => {
            let mut o: EndpointSlice = serde_json::from_value(value).map_err(err)?;
            o.metadata.namespace = ns;
            Object::EndpointSlice(o)
        }
        Kind::Secret => {
            let mut o: Secret = serde_json::from_value(value).map_err(err)?;
            o.metadata.namespace = ns;
            merge_string_data(&mut o);
            Object::Secret(o)
        }
        Kind::ClusterIssuer => Object::ClusterIssuer(serde_json::from_value(value).map_err(err)?),
        Kind::Issuer => {
            let mut o: IssuerObject = serde_json::from_value(value).map_err(err)?;
            o.metadata.namespace = ns;
            Object::Issuer(o)
        }
    })
}

/// The API server merges `stringData` into `data` on write; so do we.
fn merge_string_data(secret: &mut Secret) {
    if let Some(strings) = secret.string_data.take() {
        let data = secret.data.get_or_insert_with(BTreeMap::new);
        for (k, v) in strings {
            data.insert(k, ByteString(v.into_bytes()));
        }
    }
}

impl Object {
    fn to_value(&self) -> Result<Value, serde_json::Error> {
        match self {
            Self::Ingress(o) => serde_json::to_value(o),
            Self::IngressClass(o) => serde_json::to_value(o),
            Self::Service(o) => serde_json::to_value(o),
            Self::EndpointSlice(o) => serde_json::to_value(o),
            Self::Secret(o) => serde_json::to_value(o),
            Self::ClusterIssuer(o) | Self::Issuer(o) => serde_json::to_value(o),
        }
    }
}

/// Field paths present in `raw` but absent from `known` (the typed object serialised again).
fn unknown(raw: &Value, known: &Value, path: String, out: &mut Vec<String>) {
    match (raw, known) {
        (Value::Object(r), Value::Object(k)) => {
            for (key, value) in r {
                // Fields the API server handles itself or that we merged away.
                if path.is_empty() && matches!(key.as_str(), "status" | "stringData" | "apiVersion" | "kind")
                {
                    continue;
                }
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match k.get(key) {
                    Some(kv) => unknown(value, kv, child, out),
                    None if value.is_null() => {}
                    None => out.push(child),
                }
            }
        }
        (Value::Array(r), Value::Array(k)) => {
            for (i, (rv, kv)) in r.iter().zip(k).enumerate() {
                unknown(rv, kv, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(docs: &[Document]) -> Vec<String> {
        docs.iter()
            .map(|d| match d {
                Document::Object { id, .. } => format!("ok {id}"),
                Document::Invalid { id, .. } => format!("invalid {id}"),
                Document::Unidentified { index, .. } => format!("unidentified #{index}"),
                Document::Ignored { kind, .. } => format!("ignored {kind}"),
            })
            .collect()
    }

    #[test]
    fn reads_every_document_and_names_the_bad_ones() {
        let text = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: app}
spec:
  rules: [{host: a.example.com}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: broken, namespace: team}
spec:
  rules: "not a list"
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: app}
---
kind: Service
---
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: pylon, namespace: ignored}
spec: {controller: pylon.dev/ingress-controller}
"#;
        let docs = parse(text).unwrap();
        assert_eq!(
            ids(&docs),
            [
                "ok Ingress default/app",
                "invalid Ingress team/broken",
                "ignored Deployment",
                "unidentified #3",
                "ok IngressClass pylon",
            ]
        );
    }

    #[test]
    fn syntax_errors_fail_the_file() {
        assert!(parse("a: [unclosed\n").is_err());
    }

    #[test]
    fn reports_unknown_fields() {
        let text = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: app}
spec:
  rules:
  - host: a.example.com
    http:
      paths:
      - path: /
        pathtype: Prefix
        backend: {service: {name: app, port: {number: 80}}}
"#;
        let docs = parse(text).unwrap();
        let Document::Object { unknown_fields, .. } = &docs[0] else {
            panic!("{docs:?}")
        };
        assert_eq!(unknown_fields, &["spec.rules[0].http.paths[0].pathtype"]);
    }

    #[test]
    fn merges_string_data_and_reads_lists() {
        let text = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Secret
  metadata: {name: s}
  type: kubernetes.io/tls
  stringData: {tls.crt: "CERT"}
  data: {tls.key: S0VZ}
"#;
        let docs = parse(text).unwrap();
        let Document::Object {
            object,
            unknown_fields,
            ..
        } = &docs[0]
        else {
            panic!("{docs:?}")
        };
        assert!(unknown_fields.is_empty(), "{unknown_fields:?}");
        let Object::Secret(secret) = &**object else {
            panic!()
        };
        let data = secret.data.as_ref().unwrap();
        assert_eq!(data["tls.crt"].0, b"CERT");
        assert_eq!(data["tls.key"].0, b"KEY");
    }
}
