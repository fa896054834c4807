//! Wiring: the pingora server with its three services (proxy, admin, control), the SIGTERM
//! sequence and the drain.
//!
//! Shutdown: on SIGTERM `/readyz` fails at once while traffic is still served for
//! `shutdown.delay` (load balancers take the replica out first); then the listeners close and
//! in-flight requests get up to `shutdown.drain-timeout` to finish; pylon exits as soon as none is
//! left. pingora's own 300 s grace period never applies.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::{ExecutionPhase, RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};
use pingora::services::listening::Service;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::access_log::AccessLog;
use crate::acme::lock::FileLock;
use crate::acme::manager::{self, Manager};
use crate::acme::store::FilesStore;
use crate::admin::{AdminApp, Health};
use crate::cluster::events::Events;
use crate::cluster::lease::LeaseLock;
use crate::cluster::secrets::KubeStore;
use crate::cluster::status::{Publish, StatusWriter};
use crate::cluster::tickets::TicketKeySecret;
use crate::config::{Config, KubernetesConfig};
use crate::control::Control;
use crate::metrics::Metrics;
use crate::proxy::{HeadLimits, InFlight, Listener, Proxy, ProxyApp, ProxyService};
use crate::snapshot::Published;
use crate::source::files::FilesSource;
use crate::source::{ObjectKey, World};
use crate::tls::{self, SessionTickets, SniResolver};
use crate::translate::Settings;

/// The name in pylon's self-signed default certificate.
pub const DEFAULT_CERT_NAME: &str = "pylon-default.invalid";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("manifest directory {0} does not exist or is not a directory")]
    ManifestDir(PathBuf),
    #[error("cannot create state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} ({listener}): {source}")]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot generate the default certificate: {0}")]
    DefaultCertificate(#[from] tls::Error),
    #[error("cannot set up TLS session resumption: {0}")]
    SessionResumption(#[from] rustls::Error),
    #[error("cannot configure the Kubernetes client: {0}")]
    Kubernetes(String),
}

/// Serves until SIGTERM. From manifest files, the first snapshot is published before the
/// listeners open; from the API server, once every watch has listed (`/readyz` says when).
pub fn run(config: Config, published: Published, metrics: Arc<Metrics>) -> Result<(), Error> {
    let cluster = if config.kubernetes.enabled {
        if !config.manifests.dirs.is_empty() {
            warn!("--kubernetes: the manifest directories are not read");
        }
        Some(Cluster::new(
            &config.kubernetes,
            &config.acme.cluster_resource_namespace,
        )?)
    } else {
        for dir in &config.manifests.dirs {
            if !dir.is_dir() {
                return Err(Error::ManifestDir(dir.clone()));
            }
        }
        let state_dir = &config.manifests.state_dir;
        std::fs::create_dir_all(state_dir).map_err(|source| Error::StateDir {
            path: state_dir.clone(),
            source,
        })?;
        None
    };
    let bind = |listener, addr| {
        Listener::bind(listener, addr).map_err(|source| Error::Bind {
            listener,
            addr,
            source,
        })
    };
    // The proxy's sockets stay open from here; connections wait in the kernel's queue until
    // the proxy service accepts them.
    let (http_listener, https_listener) = (
        bind("http", config.listen.http)?,
        bind("https", config.listen.https)?,
    );
    // The admin listener is pingora's: check its address now, for a clear message.
    bind("admin", config.listen.admin)?;

    let health = Arc::new(Health::default());
    let in_flight = Arc::new(InFlight::default());
    let access_log = AccessLog::start(config.log.access_log, metrics.access_log_dropped.clone());
    let settings = Settings::new(
        &config.ingress,
        &config.acme,
        tls::self_signed(DEFAULT_CERT_NAME)?,
    );
    let mut control = Control::new(settings, published.clone(), metrics.clone(), health.clone());
    let options = manager::Options {
        retry_backoff: config.acme.retry_backoff,
        retry_backoff_max: config.acme.retry_backoff_max,
    };
    let mode = match cluster {
        Some(cluster) => Mode::Kubernetes(Box::new(cluster)),
        None => {
            let state_dir = config.manifests.state_dir.clone();
            let mut dirs = config.manifests.dirs.clone();
            dirs.push(state_dir.clone());
            let mut source = FilesSource::new(dirs);
            source.refresh();
            control.apply(&Arc::new(source.world()));
            Mode::Files {
                source: Box::new(source),
                state_dir,
                debounce: config.manifests.debounce,
                rescan_interval: config.manifests.rescan_interval,
            }
        }
    };

    let conf = ServerConf {
        threads: config.proxy.threads,
        work_stealing: true,
        upstream_keepalive_pool_size: config.proxy.upstream_keepalive_pool_size,
        max_retries: config.proxy.connect_retries + 1,
        // The drain is pylon's: the grace period is its upper bound, ended early when idle.
        grace_period_seconds: Some(config.shutdown.drain_timeout.as_secs().max(1)),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    let conf = server.configuration.clone();

    let proxy = Proxy::new(
        published.clone(),
        metrics.clone(),
        access_log.clone(),
        config.proxy.clone(),
        config.ingress.https_redirect_port,
        in_flight.clone(),
    );
    let mut options_h = HttpServerOptions::default();
    options_h.h2c = false;
    // An HTTP/2 connection without open streams is closed after the keep-alive timeout too.
    options_h.h2_idle_timeout = Some(config.proxy.client_keepalive_timeout);
    let mut http = pingora::proxy::http_proxy(&conf, proxy);
    http.server_options = Some(options_h);
    let app = ProxyApp::new(
        http,
        config.proxy.client_keepalive_timeout,
        HeadLimits {
            timeout: config.proxy.client_header_timeout,
            max_bytes: config.proxy.max_request_header_bytes,
            timeouts: metrics.client_header_timeouts.clone(),
        },
    );
    let tickets = if config.tls.session_resumption {
        Some(Arc::new(SessionTickets::new(
            config.tls.session_ticket_rotation,
            metrics.tls_session_tickets_accepted.clone(),
            metrics.tls_session_ticket_shared_keys.clone(),
        )?))
    } else {
        None
    };
    let proxy_protocol = config.listen.proxy_protocol;
    let listeners = vec![
        https_listener
            .tls(tls::server_config(
                Arc::new(SniResolver::new(published.clone(), &metrics)),
                tickets.clone(),
            ))
            .proxy_protocol(proxy_protocol),
        http_listener.proxy_protocol(proxy_protocol),
    ];
    server.add_service(ProxyService::new(app, listeners, metrics.clone(), health.clone()));

    let mut admin = Service::new(
        "pylon admin".into(),
        AdminApp::new(metrics.clone(), health.clone()),
    );
    admin.threads = Some(1);
    admin.add_tcp(&config.listen.admin.to_string());
    server.add_service(admin);

    server.add_service(background_service(
        "control",
        ControlTask(Mutex::new(Some(ControlParts {
            mode,
            control,
            published,
            metrics,
            options,
            tickets,
        }))),
    ));

    spawn_drain_watch(
        server.watch_execution_phase(),
        in_flight,
        access_log.clone(),
        config.shutdown.drain_timeout,
    );
    info!(
        http = %config.listen.http,
        https = %config.listen.https,
        admin = %config.listen.admin,
        threads = config.proxy.threads,
        kubernetes = config.kubernetes.enabled,
        "pylon serving"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            health,
            delay: config.shutdown.delay,
        }),
    });
    access_log.flush(Duration::from_secs(2));
    info!("pylon stopped");
    Ok(())
}

/// Where objects come from, and where certificates go.
enum Mode {
    Files {
        source: Box<FilesSource>,
        state_dir: PathBuf,
        debounce: Duration,
        rescan_interval: Duration,
    },
    Kubernetes(Box<Cluster>),
}

/// Cluster mode's settings, read before the server starts (a bad kubeconfig stops pylon here).
struct Cluster {
    client_config: kube::Config,
    scope: crate::source::kubernetes::Scope,
    lease_namespace: String,
    lease_name: String,
    lease_duration: Duration,
    identity: String,
    publish: Publish,
    session_ticket_secret: Option<String>,
}

impl Cluster {
    fn new(config: &KubernetesConfig, resource_namespace: &str) -> Result<Self, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Kubernetes(e.to_string()))?;
        let client_config = runtime
            .block_on(async {
                match &config.kubeconfig {
                    Some(path) => {
                        let kubeconfig = kube::config::Kubeconfig::read_from(path)
                            .map_err(|e| format!("{}: {e}", path.display()))?;
                        kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                            .await
                            .map_err(|e| format!("{}: {e}", path.display()))
                    }
                    None => kube::Config::infer().await.map_err(|e| e.to_string()),
                }
            })
            .map_err(Error::Kubernetes)?;
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let identity = env("POD_NAME").unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        });
        let publish = match (
            &config.publish_service,
            config.publish_status_addresses.is_empty(),
        ) {
            (Some((ns, name)), _) => Publish::Service(ObjectKey::new(ns.clone(), name.clone())),
            (None, false) => Publish::Addresses(config.publish_status_addresses.clone()),
            (None, true) => Publish::Nothing,
        };
        Ok(Self {
            client_config,
            scope: crate::source::kubernetes::Scope {
                namespaces: config.watch_namespaces.clone(),
                resource_namespace: resource_namespace.to_owned(),
            },
            lease_namespace: env("POD_NAMESPACE").unwrap_or_else(|| resource_namespace.to_owned()),
            lease_name: config.lease_name.clone(),
            lease_duration: config.lease_duration,
            identity,
            publish,
            session_ticket_secret: config.session_ticket_secret.clone(),
        })
    }
}

struct ControlParts {
    mode: Mode,
    control: Control,
    published: Published,
    metrics: Arc<Metrics>,
    options: manager::Options,
    /// The HTTPS listener's session-ticket keys, shared with the other replicas in cluster mode.
    tickets: Option<Arc<SessionTickets>>,
}

/// The source, the control loop, the ACME manager (and in cluster mode the lease, status and
/// event writers), on their own runtime.
struct ControlTask(Mutex<Option<ControlParts>>);

/// How much lower than the proxy's threads the configuration work runs (a nice value).
/// Translating ten thousand Ingresses takes tens of milliseconds of CPU; on a busy core that
/// must not delay requests. Linux applies it to the calling thread only.
pub const CONTROL_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority to [`CONTROL_NICE`].
pub fn yield_cpu_to_traffic() {
    if let Err(e) = rustix::process::setpriority_process(None, CONTROL_NICE) {
        debug!(error = %e, "cannot lower the priority of the configuration thread");
    }
}

#[async_trait]
impl BackgroundService for ControlTask {
    async fn start(&self, shutdown: ShutdownWatch) {
        // This service has its own single-threaded runtime: everything below runs on this thread.
        yield_cpu_to_traffic();
        let parts = self.0.lock().ok().and_then(|mut p| p.take());
        let Some(ControlParts {
            mode,
            mut control,
            published,
            metrics,
            options,
            tickets,
        }) = parts
        else {
            return;
        };
        match mode {
            Mode::Files {
                source,
                state_dir,
                debounce,
                rescan_interval,
            } => {
                let manager = Manager::new(
                    Arc::new(FilesStore::new(state_dir.clone())),
                    Arc::new(FileLock::new(state_dir)),
                    published.clone(),
                    metrics,
                    options,
                );
                let work = control.subscribe_work();
                let (worlds_tx, worlds_rx) = watch::channel(Arc::new(source.world()));
                tokio::join!(
                    source.run(worlds_tx, debounce, rescan_interval, shutdown.clone()),
                    control.run(worlds_rx, shutdown.clone()),
                    manager.run(work, shutdown),
                );
            }
            Mode::Kubernetes(cluster) => {
                let client = match kube::Client::try_from(cluster.client_config) {
                    Ok(c) => c,
                    Err(e) => {
                        error!(error = %e, "cannot create a Kubernetes client");
                        return;
                    }
                };
                let lease = Arc::new(LeaseLock::new(
                    client.clone(),
                    &cluster.lease_namespace,
                    &cluster.lease_name,
                    &cluster.identity,
                    cluster.lease_duration,
                ));
                let (events, publisher) =
                    Events::publisher(client.clone(), cluster.identity.clone(), lease.clone());
                control.set_events(events.clone());
                let manager = Manager::new(
                    Arc::new(KubeStore::new(client.clone())),
                    lease.clone(),
                    published,
                    metrics.clone(),
                    options,
                )
                .with_events(events.clone());
                let status = StatusWriter::new(client.clone(), lease.clone(), cluster.publish);
                let tickets_shutdown = shutdown.clone();
                let shared_tickets = tickets.zip(cluster.session_ticket_secret).map(|(t, name)| {
                    TicketKeySecret::new(
                        client.clone(),
                        &cluster.lease_namespace,
                        &name,
                        t,
                        lease.clone(),
                        events.clone(),
                        metrics.rejections.clone(),
                    )
                });
                let (work_manager, work_status) = (control.subscribe_work(), control.subscribe_work());
                let (worlds_tx, worlds_rx) = watch::channel(Arc::new(World::default()));
                info!(identity = %cluster.identity, lease = %cluster.lease_name, "reading objects from the Kubernetes API server");
                tokio::join!(
                    crate::source::kubernetes::run(
                        client,
                        cluster.scope,
                        worlds_tx,
                        metrics.kubernetes_watch_errors.clone(),
                        shutdown.clone()
                    ),
                    control.run(worlds_rx, shutdown.clone()),
                    manager.run(work_manager, shutdown.clone()),
                    status.run(work_status, shutdown.clone()),
                    async {
                        if let Some(shared) = &shared_tickets {
                            shared.run(tickets_shutdown).await;
                        }
                    },
                    lease.run(shutdown),
                    publisher.run(),
                );
            }
        }
    }
}

/// SIGTERM: fail readiness, keep serving for `delay`, then let pingora close the listeners.
/// SIGINT: stop at once. A second signal during the delay cuts it short.
struct Signals {
    health: Arc<Health>,
    delay: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        else {
            warn!("cannot install signal handlers");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {
                info!("SIGINT: stopping now");
                self.health.mark_shutting_down();
                return ShutdownSignal::FastShutdown;
            }
        }
        self.health.mark_shutting_down();
        info!(delay = ?self.delay, "SIGTERM: readiness off, still serving during the shutdown delay");
        tokio::select! {
            _ = tokio::time::sleep(self.delay) => {}
            _ = term.recv() => info!("second SIGTERM: delay cut short"),
            _ = int.recv() => return ShutdownSignal::FastShutdown,
        }
        info!("closing listeners and draining in-flight requests");
        ShutdownSignal::GracefulTerminate
    }
}

/// Once the listeners are closed, exits as soon as no request is in flight (pingora would
/// otherwise sleep out the whole grace period).
fn spawn_drain_watch(
    mut phases: tokio::sync::broadcast::Receiver<ExecutionPhase>,
    in_flight: Arc<InFlight>,
    access_log: Arc<AccessLog>,
    drain_timeout: Duration,
) {
    let spawned = std::thread::Builder::new()
        .name("drain-watch".into())
        .spawn(move || {
            loop {
                match phases.blocking_recv() {
                    Ok(ExecutionPhase::ShutdownGracePeriod) => break,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                }
            }
            let deadline = Instant::now() + drain_timeout;
            while in_flight.count() > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let left = in_flight.count();
            if left == 0 {
                info!("drained: no request in flight, exiting");
            } else {
                warn!(
                    requests = left,
                    "drain timeout reached with requests in flight, exiting"
                );
            }
            access_log.flush(Duration::from_secs(2));
            std::process::exit(0);
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the drain watcher; shutdown waits for the whole drain timeout");
    }
}
