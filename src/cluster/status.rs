//! `status.loadBalancer.ingress` of the Ingresses pylon serves: the addresses of a published
//! Service (its load balancer) or fixed addresses. Written by the lease holder only, with
//! server-side apply; cleared from Ingresses pylon no longer serves.

use std::sync::Arc;

use foldhash::HashMap;
use k8s_openapi::api::networking::v1::{
    Ingress, IngressLoadBalancerIngress, IngressLoadBalancerStatus, IngressStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::acme::lock::Leadership;
use crate::acme::manager::Work;
use crate::source::{ObjectKey, World};

/// Where the addresses come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Publish {
    #[default]
    Nothing,
    /// The load-balancer addresses of this Service.
    Service(ObjectKey),
    /// These IPs or host names.
    Addresses(Vec<String>),
}

const STATUS_MANAGER: &str = "pylon-status";

pub struct StatusWriter {
    client: Client,
    leadership: Arc<dyn Leadership>,
    publish: Publish,
    /// What was last applied to each Ingress.
    applied: HashMap<ObjectKey, Vec<IngressLoadBalancerIngress>>,
}

impl StatusWriter {
    pub fn new(client: Client, leadership: Arc<dyn Leadership>, publish: Publish) -> Self {
        Self {
            client,
            leadership,
            publish,
            applied: HashMap::default(),
        }
    }

    pub async fn run(mut self, mut work: watch::Receiver<Arc<Work>>, mut shutdown: watch::Receiver<bool>) {
        if self.publish == Publish::Nothing {
            return;
        }
        loop {
            let current = work.borrow_and_update().clone();
            if self.leadership.is_leader() {
                self.update(&current).await;
            }
            tokio::select! {
                changed = work.changed() => if changed.is_err() { return },
                // Leadership may arrive without a change of configuration.
                _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn update(&mut self, work: &Work) {
        let desired = addresses(&self.publish, &work.world);
        for (key, ing) in &work.world.ingresses {
            let current = current(ing);
            let serves = work.served.contains(key);
            let target = if serves {
                desired.clone()
            } else if !current.is_empty() && current == desired {
                // Ours from before: this Ingress is no longer served.
                Vec::new()
            } else {
                continue;
            };
            if current == target {
                self.applied.insert(key.clone(), target);
                continue;
            }
            match self.apply(key, &target).await {
                Ok(()) => {
                    info!(ingress = %key, addresses = ?target.iter().map(show).collect::<Vec<_>>(), "Ingress status written");
                    self.applied.insert(key.clone(), target);
                }
                Err(e) => warn!(ingress = %key, error = %e, "cannot write Ingress status"),
            }
        }
        self.applied.retain(|k, _| work.world.ingresses.contains_key(k));
    }

    async fn apply(
        &self,
        key: &ObjectKey,
        addresses: &[IngressLoadBalancerIngress],
    ) -> Result<(), kube::Error> {
        let api: Api<Ingress> = Api::namespaced(self.client.clone(), &key.namespace);
        let status = Ingress {
            metadata: ObjectMeta {
                name: Some(key.name.clone()),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(IngressStatus {
                load_balancer: Some(IngressLoadBalancerStatus {
                    ingress: Some(addresses.to_vec()),
                }),
            }),
        };
        debug!(ingress = %key, "applying status");
        api.patch_status(
            &key.name,
            &PatchParams::apply(STATUS_MANAGER).force(),
            &Patch::Apply(&status),
        )
        .await
        .map(drop)
    }
}

fn current(ing: &Ingress) -> Vec<IngressLoadBalancerIngress> {
    ing.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.clone())
        .unwrap_or_default()
}

fn show(a: &IngressLoadBalancerIngress) -> String {
    a.ip.clone().or_else(|| a.hostname.clone()).unwrap_or_default()
}

/// The addresses to publish, from the configuration and the world.
pub fn addresses(publish: &Publish, world: &World) -> Vec<IngressLoadBalancerIngress> {
    match publish {
        Publish::Nothing => Vec::new(),
        Publish::Addresses(list) => list
            .iter()
            .map(|a| {
                if a.parse::<std::net::IpAddr>().is_ok() {
                    IngressLoadBalancerIngress {
                        ip: Some(a.clone()),
                        ..IngressLoadBalancerIngress::default()
                    }
                } else {
                    IngressLoadBalancerIngress {
                        hostname: Some(a.clone()),
                        ..IngressLoadBalancerIngress::default()
                    }
                }
            })
            .collect(),
        Publish::Service(key) => world
            .services
            .get(key)
            .and_then(|s| s.status.as_ref())
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .map(|list| {
                list.iter()
                    .map(|i| IngressLoadBalancerIngress {
                        ip: i.ip.clone(),
                        hostname: i.hostname.clone(),
                        ..IngressLoadBalancerIngress::default()
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}
