//! Events (`events.k8s.io/v1`) on the objects users look at first (`kubectl describe ingress`):
//! certificates ordered, issued or failing, annotations rejected, backends missing. Only the
//! process holding the lease publishes, so replicas do not repeat each other. Configuration
//! problems found before this process holds the lease are kept and published once it does, so
//! that a problem present at start-up is not lost to the election.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;
use tracing::debug;

use crate::acme::lock::Leadership;

/// One event to publish.
#[derive(Clone, Debug)]
pub struct EventRequest {
    pub regarding: ObjectReference,
    pub warning: bool,
    /// PascalCase, e.g. `CertificateIssued`.
    pub reason: String,
    pub note: String,
    pub action: &'static str,
}

/// A handle to send events; a no-op outside a cluster.
#[derive(Clone, Debug, Default)]
pub struct Events {
    tx: Option<mpsc::Sender<EventRequest>>,
}

impl Events {
    pub fn none() -> Self {
        Self::default()
    }

    /// Queues an event; dropped if the queue is full (events are advisory).
    pub fn send(&self, event: EventRequest) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(event);
        }
    }

    /// The publisher and its handle.
    pub fn publisher(client: Client, instance: String, leadership: Arc<dyn Leadership>) -> (Self, Publisher) {
        let (tx, rx) = mpsc::channel(1024);
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: "pylon".into(),
                instance: Some(instance),
            },
        );
        (
            Self { tx: Some(tx) },
            Publisher {
                rx,
                recorder,
                leadership,
                held: BTreeMap::new(),
            },
        )
    }
}

/// Configuration problems kept while this process does not hold the lease, at most this many.
const MAX_HELD: usize = 4096;
/// The action of configuration-problem events (the others are about one certificate order and
/// only ever come from the leader).
pub const CONFIGURE: &str = "Configure";

pub struct Publisher {
    rx: mpsc::Receiver<EventRequest>,
    recorder: Recorder,
    leadership: Arc<dyn Leadership>,
    /// Configuration problems seen while not leading, by object and reason (the latest wins).
    held: BTreeMap<(String, String, String, String), EventRequest>,
}

impl Publisher {
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                e = self.rx.recv() => match e {
                    Some(e) if self.leadership.is_leader() => self.publish(e).await,
                    Some(e) => self.hold(e),
                    None => return,
                },
                _ = tick.tick() => {
                    if !self.held.is_empty() && self.leadership.is_leader() {
                        for (_, e) in std::mem::take(&mut self.held) {
                            self.publish(e).await;
                        }
                    }
                }
            }
        }
    }

    fn hold(&mut self, e: EventRequest) {
        if e.action != CONFIGURE {
            return;
        }
        let key = (
            e.regarding.kind.clone().unwrap_or_default(),
            e.regarding.namespace.clone().unwrap_or_default(),
            e.regarding.name.clone().unwrap_or_default(),
            e.reason.clone(),
        );
        if self.held.len() < MAX_HELD || self.held.contains_key(&key) {
            self.held.insert(key, e);
        }
    }

    async fn publish(&self, e: EventRequest) {
        let event = Event {
            type_: if e.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: e.reason,
            note: Some(truncate(&e.note, 1024)),
            action: e.action.to_owned(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, &e.regarding).await {
            debug!(error = %err, "cannot publish an event");
        }
    }
}

/// `snake_case` to `PascalCase`, for Event reasons.
pub fn pascal_case(reason: &str) -> String {
    reason
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reasons_are_pascal_case() {
        assert_eq!(super::pascal_case("service_missing"), "ServiceMissing");
        assert_eq!(super::pascal_case("invalid_ingress"), "InvalidIngress");
    }
}
