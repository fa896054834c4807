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
use crate::source::names::Names;
use crate::translate::{Memo, Settings, translate};

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
    /// What translate remembers about the published snapshot.
    memo: Memo,
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
            memo: Memo::default(),
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
        let started = std::time::Instant::now();
        let previous = self.published.load_full();
        let translation = match crate::recover::catch(|| {
            translate(world, &self.settings, &previous, &mut self.memo)
        }) {
            Ok(t) => t,
            Err(message) => {
                // A bug reached by some input: the snapshot in service stays, and the next
                // change is translated from scratch.
                error!(%message, "translating the configuration failed; the configuration in service is kept");
                self.metrics
                    .rejections
                    .with_label_values(&["Configuration", "internal_error"])
                    .inc();
                self.memo = Memo::default();
                return self.reported.iter().cloned().collect();
            }
        };
        let translated = started.elapsed();
        // Publish first: reporting below does not delay the change.
        let snapshot = Arc::new(translation.snapshot);
        self.published.store(snapshot.clone());
        self.health.mark_published();
        let elapsed = started.elapsed();
        self.metrics.config_apply_duration.observe(elapsed.as_secs_f64());

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
        for (secret, not_after) in &translation.certificate_updates {
            let labels = [secret.namespace.as_str(), secret.name.as_str()];
            match not_after {
                Some(t) => m.certificate_not_after.with_label_values(&labels).set(*t as f64),
                None => drop(m.certificate_not_after.remove_label_values(&labels)),
            }
        }
        m.routes.set(snapshot.routes.len() as i64);
        m.backends.set(translation.backends as i64);
        m.endpoints.set(translation.endpoints as i64);
        m.certificates.set(snapshot.certs.len() as i64);
        m.config_reloads.inc();
        m.config_last_reload.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        let generation = snapshot.generation;
        info!(
            generation,
            routes = snapshot.routes.len(),
            certificates = snapshot.certs.len(),
            problems = translation.problems.len(),
            translate_ms = translated.as_secs_f64() * 1e3,
            publish_ms = elapsed.as_secs_f64() * 1e3,
            "configuration published"
        );
        self.work.send_replace(Arc::new(Work {
            generation,
            requests: translation.requests,
            served: translation.served,
            world: world.clone(),
        }));
        // Freeing a large snapshot takes as long as building it; the next change need not wait.
        let _ = std::thread::Builder::new()
            .name("pylon-free".into())
            .spawn(move || {
                crate::server::yield_cpu_to_traffic();
                drop(previous)
            });
        translation.problems
    }

    /// Applies every new world until the source stops or shutdown begins, with the DNS names of
    /// its ExternalName Services resolved beside it (each new result is applied too).
    pub async fn run(mut self, mut worlds: watch::Receiver<Arc<World>>, mut shutdown: watch::Receiver<bool>) {
        let (names_tx, mut names) = watch::channel(Names::default());
        let resolver = crate::source::names::run(worlds.clone(), names_tx, shutdown.clone());
        let apply = async move {
            loop {
                tokio::select! {
                    changed = worlds.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    changed = names.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    _ = shutdown.changed() => return,
                }
                let world = worlds.borrow_and_update().clone();
                let names = names.borrow_and_update().clone();
                self.apply(&with_names(world, names));
            }
        };
        tokio::join!(resolver, apply);
    }
}

/// `world` with `names` in it (the same world when neither has names).
fn with_names(world: Arc<World>, names: Names) -> Arc<World> {
    if names.is_empty() && world.names.is_empty() {
        return world;
    }
    let mut w = (*world).clone();
    w.names = names;
    Arc::new(w)
}
