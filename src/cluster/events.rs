//! Events (`events.k8s.io/v1`) on the objects users look at first (`kubectl describe ingress`):
//! certificates ordered, issued or failing, annotations rejected, backends missing. Only the
//! process holding the lease publishes, so replicas do not repeat each other.

use std::sync::Arc;

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
            },
        )
    }
}

pub struct Publisher {
    rx: mpsc::Receiver<EventRequest>,
    recorder: Recorder,
    leadership: Arc<dyn Leadership>,
}

impl Publisher {
    pub async fn run(mut self) {
        while let Some(e) = self.rx.recv().await {
            if !self.leadership.is_leader() {
                continue;
            }
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
