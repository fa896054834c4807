//! Secrets written with server-side apply.

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

use super::FIELD_MANAGER;
use crate::acme::state::managed_by_pylon;
use crate::acme::store::{SecretWrite, Store, StoreError};

pub struct KubeStore {
    client: Client,
}

impl KubeStore {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl Store for KubeStore {
    async fn write(&self, secret: &SecretWrite) -> Result<(), StoreError> {
        let err = |reason: String| StoreError {
            key: secret.key.clone(),
            reason,
        };
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &secret.key.namespace);
        // Never write over a Secret of another owner, nor change a Secret's type.
        match api.get_opt(&secret.key.name).await {
            Ok(Some(existing)) if !managed_by_pylon(&existing) => {
                return Err(err(
                    "it exists and was not created by pylon; it is left untouched".into(),
                ));
            }
            Ok(Some(existing)) if existing.type_.as_deref().unwrap_or("Opaque") != secret.type_ => {
                return Err(err(format!(
                    "it has type {} and pylon would write {}; it is left untouched",
                    existing.type_.as_deref().unwrap_or("Opaque"),
                    secret.type_
                )));
            }
            Ok(_) => {}
            Err(e) => return Err(err(e.to_string())),
        }
        api.patch(
            &secret.key.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret.to_secret()),
        )
        .await
        .map(drop)
        .map_err(|e| err(e.to_string()))
    }
}
