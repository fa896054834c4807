//! Where pylon writes Secrets: in files mode, manifests in the state directory that the files
//! source reads back (the same single path to the resolver as the API server in cluster mode).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use async_trait::async_trait;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::source::ObjectKey;

/// A Secret as pylon writes it: the whole content pylon manages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretWrite {
    pub key: ObjectKey,
    pub type_: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub data: BTreeMap<String, Vec<u8>>,
}

impl SecretWrite {
    pub fn to_secret(&self) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(self.key.name.clone()),
                namespace: Some(self.key.namespace.clone()),
                labels: Some(self.labels.clone()),
                annotations: Some(self.annotations.clone()),
                ..ObjectMeta::default()
            },
            type_: Some(self.type_.clone()),
            data: Some(
                self.data
                    .iter()
                    .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write Secret {key}: {reason}")]
pub struct StoreError {
    pub key: ObjectKey,
    pub reason: String,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Creates or replaces a Secret pylon manages. Callers never pass a Secret of another owner.
    async fn write(&self, secret: &SecretWrite) -> Result<(), StoreError>;
}

/// Writes Secret manifests under `<state-dir>/secrets/<namespace>/<name>.yaml`, atomically and
/// readable by the owner only.
#[derive(Debug)]
pub struct FilesStore {
    dir: PathBuf,
}

impl FilesStore {
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            dir: state_dir.join("secrets"),
        }
    }

    pub fn path(&self, key: &ObjectKey) -> PathBuf {
        self.dir.join(&key.namespace).join(format!("{}.yaml", key.name))
    }
}

#[async_trait]
impl Store for FilesStore {
    async fn write(&self, secret: &SecretWrite) -> Result<(), StoreError> {
        let err = |reason: String| StoreError {
            key: secret.key.clone(),
            reason,
        };
        let mut value = serde_json::to_value(secret.to_secret()).map_err(|e| err(e.to_string()))?;
        if let Some(map) = value.as_object_mut() {
            map.insert("apiVersion".into(), "v1".into());
            map.insert("kind".into(), "Secret".into());
        }
        let yaml = serde_yaml_ng::to_string(&value).map_err(|e| err(e.to_string()))?;
        let text = format!("# Written by pylon. Do not edit: pylon rewrites this file.\n{yaml}");
        let path = self.path(&secret.key);
        let dir = path
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| self.dir.clone());
        let name = secret.key.name.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::create_dir_all(&dir)?;
            // A hidden temporary name: the files source skips it until the rename.
            let tmp = dir.join(format!(".{}.{}.tmp", name, std::process::id()));
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        })
        .await
        .map_err(|e| err(e.to_string()))?
        .map_err(|e| err(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::manifest::{self, Document, Object};

    #[tokio::test]
    async fn written_secrets_read_back_as_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let store = FilesStore::new(dir.path().to_owned());
        let write = SecretWrite {
            key: ObjectKey::new("team", "app-tls"),
            type_: "kubernetes.io/tls".into(),
            labels: BTreeMap::from([("app.kubernetes.io/managed-by".into(), "pylon".into())]),
            annotations: BTreeMap::from([("acme.pylon.dev/revision".into(), "3".into())]),
            data: BTreeMap::from([
                ("tls.crt".into(), b"CERT".to_vec()),
                ("tls.key".into(), b"KEY".to_vec()),
            ]),
        };
        store.write(&write).await.unwrap();
        let path = store.path(&write.key);
        let text = std::fs::read_to_string(&path).unwrap();
        let docs = manifest::parse(&text).unwrap();
        let Document::Object {
            id,
            object,
            unknown_fields,
        } = &docs[0]
        else {
            panic!("{docs:?}")
        };
        assert_eq!(id.key, write.key);
        assert!(unknown_fields.is_empty());
        let Object::Secret(secret) = &**object else {
            panic!()
        };
        assert_eq!(secret, &write.to_secret());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
