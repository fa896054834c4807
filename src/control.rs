//! The control loop: each new [`World`] is translated and the result published in one store.
//! Problems are logged when they first appear and counted; gauges describe the live snapshot.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::acme::manager::Work;
use crate::admin::Health;
use crate::cluster::events::{CONFIGURE, EventRequest, Events, pascal_case};
use crate::metrics::Metrics;
use crate::problem::{Problem, Severity};
use crate::snapshot::Published;
use crate::source::World;
use crate::translate::{Settings, translate};

pub struct Control {
    settings: Settings,
    published: Published,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// Problems of the last publication, so that only new ones are logged.
    reported: BTreeSet<Problem>,
    /// The certificates to look after, for the ACME manager.
    work: watch::Sender<Arc<Work>>,
    /// Events on the objects problems are about (cluster mode).
    events: Events,
}

impl Control {
    pub fn new(settings: Settings, published: Published, metrics: Arc<Metrics>, health: Arc<Health>) -> Self {
        Self {
            settings,
            published,
            metrics,
            health,
            reported: BTreeSet::new(),
            work: watch::Sender::new(Arc::default()),
            events: Events::none(),
        }
    }

    pub fn set_events(&mut self, events: Events) {
        self.events = events;
    }

    /// Receives the certificate requests of every publication.
    pub fn subscribe_work(&self) -> watch::Receiver<Arc<Work>> {
        self.work.subscribe()
    }

    /// Translates `world`, publishes the snapshot and reports what changed. Returns the current
    /// problems.
    pub fn apply(&mut self, world: &Arc<World>) -> Vec<Problem> {
        let previous = self.published.load_full();
        let translation = translate(world, &self.settings, &previous);
        let snapshot = translation.snapshot;

        let current: BTreeSet<Problem> = translation.problems.iter().cloned().collect();
        for problem in current.difference(&self.reported) {
            let (kind, ns, name) = (
                problem.subject.kind,
                &problem.subject.namespace,
                &problem.subject.name,
            );
            match problem.severity {
                Severity::Error => {
                    error!(kind, namespace = %ns, name = %name, reason = problem.reason, "{}", problem.message)
                }
                Severity::Warning => {
                    warn!(kind, namespace = %ns, name = %name, reason = problem.reason, "{}", problem.message)
                }
            }
            self.metrics
                .rejections
                .with_label_values(&[kind, problem.reason])
                .inc();
            if let Some(regarding) = world.reference(kind, ns, name) {
                self.events.send(EventRequest {
                    regarding,
                    warning: true,
                    reason: pascal_case(problem.reason),
                    note: problem.message.clone(),
                    action: CONFIGURE,
                });
            }
        }
        self.metrics.problems.reset();
        for problem in &current {
            self.metrics
                .problems
                .with_label_values(&[problem.subject.kind, problem.severity.label()])
                .inc();
        }
        self.reported = current;

        let m = &self.metrics;
        m.certificate_not_after.reset();
        for cert in &translation.certificates {
            m.certificate_not_after
                .with_label_values(&[&cert.secret.namespace, &cert.secret.name])
                .set(cert.not_after as f64);
        }
        let backends = snapshot.routes.backends();
        m.routes.set(snapshot.routes.len() as i64);
        m.backends.set(backends.len() as i64);
        m.endpoints
            .set(backends.iter().map(|b| b.endpoints().len()).sum::<usize>() as i64);
        m.certificates.set(snapshot.certs.len() as i64);
        m.config_reloads.inc();
        m.config_last_reload.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        info!(
            generation = snapshot.generation,
            routes = snapshot.routes.len(),
            certificates = snapshot.certs.len(),
            problems = translation.problems.len(),
            "configuration published"
        );
        let generation = snapshot.generation;
        self.published.store(Arc::new(snapshot));
        self.health.mark_published();
        self.work.send_replace(Arc::new(Work {
            generation,
            requests: translation.requests,
            served: translation.served,
            world: world.clone(),
        }));
        translation.problems
    }

    /// Applies every new world until the source stops or shutdown begins.
    pub async fn run(mut self, mut worlds: watch::Receiver<Arc<World>>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                changed = worlds.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let world = worlds.borrow_and_update().clone();
                    self.apply(&world);
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
