//! The access log: one JSON line per request on stdout, written by its own thread so the request
//! path only formats a line and hands it over. When the writer falls behind, lines are dropped
//! and counted rather than slowing requests down.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use serde::Serialize;

/// Lines waiting for the writer before new ones are dropped.
const QUEUE: usize = 8192;

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub time: String,
    pub client: Option<String>,
    pub method: &'a str,
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: f64,
    pub upstream_addr: Option<String>,
    pub upstream_status: Option<u16>,
    pub upstream_duration_ms: Option<f64>,
    pub ingress: Option<String>,
    pub service: Option<String>,
    pub request_id: Option<&'a str>,
    pub tls_version: Option<&'a str>,
    pub alpn: Option<&'static str>,
    pub user_agent: Option<&'a str>,
}

#[derive(Debug)]
pub struct AccessLog {
    sender: Option<SyncSender<String>>,
    pending: Arc<AtomicUsize>,
    dropped: IntCounter,
}

impl AccessLog {
    /// Starts the writer thread when `enabled`; a disabled log accepts and discards nothing.
    pub fn start(enabled: bool, dropped: IntCounter) -> Arc<Self> {
        let pending = Arc::new(AtomicUsize::new(0));
        let sender = enabled.then(|| {
            let (tx, rx) = sync_channel(QUEUE);
            let pending = pending.clone();
            let spawned = std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || write_lines(rx, pending));
            match spawned {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the access log writer; access log disabled");
                    None
                }
            }
        });
        Arc::new(Self {
            sender: sender.flatten(),
            pending,
            dropped,
        })
    }

    pub fn enabled(&self) -> bool {
        self.sender.is_some()
    }

    pub fn write(&self, entry: &Entry<'_>) {
        let Some(sender) = &self.sender else { return };
        let Ok(line) = serde_json::to_string(entry) else {
            return;
        };
        self.pending.fetch_add(1, Ordering::Relaxed);
        match sender.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.pending.fetch_sub(1, Ordering::Relaxed);
                self.dropped.inc();
            }
        }
    }

    /// Waits (up to `timeout`) until every accepted line is written and flushed.
    pub fn flush(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.pending.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn write_lines(rx: Receiver<String>, pending: Arc<AtomicUsize>) {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    while let Ok(first) = rx.recv() {
        // Write what is queued in one batch, then flush: lines appear promptly at low load and
        // in large writes at high load.
        let mut written = 0;
        let mut next = Some(first);
        while let Some(line) = next {
            let _ = out.write_all(line.as_bytes());
            let _ = out.write_all(b"\n");
            written += 1;
            next = if written < 1024 { rx.try_recv().ok() } else { None };
        }
        let _ = out.flush();
        pending.fetch_sub(written, Ordering::Release);
    }
    let _ = out.flush();
}

/// The current time as RFC 3339 with milliseconds, UTC.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
