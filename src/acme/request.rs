//! A certificate pylon should have: what translate asks of the ACME manager.

use std::sync::Arc;
use std::time::Duration;

use super::issuer::IssuerConfig;
use super::keys::{AccountKey, KeySpec};
use super::state::OrderState;
use crate::source::ObjectKey;
use crate::tls::Certificate;

/// One certificate, for one `spec.tls` entry of an Ingress.
#[derive(Clone, Debug)]
pub struct CertificateRequest {
    /// The `kubernetes.io/tls` Secret the certificate goes to.
    pub secret: ObjectKey,
    pub ingress: ObjectKey,
    /// The Ingress, for Events.
    pub ingress_ref: Option<k8s_openapi::api::core::v1::ObjectReference>,
    /// Subject alternative names, sorted.
    pub hosts: Vec<String>,
    pub common_name: Option<String>,
    pub key: KeySpec,
    pub duration: Option<Duration>,
    pub renew_before: Option<Duration>,
    pub issuer: Arc<IssuerConfig>,
    /// What the issuer needs besides its spec, read from its Secrets.
    pub material: Arc<IssuerMaterial>,
    /// The Secret as it is now.
    pub current: Current,
}

/// What an issuer needs from Secrets.
#[derive(Clone, Debug, Default)]
pub struct IssuerMaterial {
    /// ACME: where pylon keeps the account key (the named Secret, or a sibling when the named
    /// one holds a key pylon cannot use).
    pub account_secret: Option<ObjectKey>,
    /// Whether pylon may write that Secret (it does not exist, or pylon created it).
    pub account_secret_writable: bool,
    pub account_key: Option<AccountKey>,
    /// The account URL recorded with the key, if it belongs to this directory.
    pub account_url: Option<String>,
    /// The external account binding MAC key, decoded.
    pub eab_key: Option<Vec<u8>>,
    /// CA issuers: the CA certificate and key, PEM.
    pub ca: Option<(Vec<u8>, Vec<u8>)>,
}

/// The target Secret as pylon last saw it.
#[derive(Clone, Debug, Default)]
pub struct Current {
    /// The Secret exists (and is pylon's: others are never requested).
    pub exists: bool,
    /// Its certificate, if it holds a valid one.
    pub certificate: Option<Arc<Certificate>>,
    pub state: OrderState,
    /// A key generated for an order in flight, PKCS#8 DER.
    pub pending_key: Option<Vec<u8>>,
    /// The Secret itself.
    pub secret: Option<Arc<k8s_openapi::api::core::v1::Secret>>,
}

impl CertificateRequest {
    /// `ClusterIssuer name` or `Issuer ns/name`, as recorded on the Secret.
    pub fn issuer_id(&self) -> String {
        self.issuer.reference.to_string()
    }
}
