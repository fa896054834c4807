//! The admin listener: `/metrics`, `/healthz` and `/readyz`, apart from the traffic ports.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::metrics::Metrics;

/// Readiness: true once the first snapshot is published and the traffic ports accept
/// connections, false again as soon as shutdown starts.
#[derive(Debug, Default)]
pub struct Health {
    published: AtomicBool,
    listening: AtomicBool,
    shutting_down: AtomicBool,
}

impl Health {
    pub fn mark_published(&self) {
        self.published.store(true, Ordering::Release);
    }

    /// The traffic listeners accept connections.
    pub fn mark_listening(&self) {
        self.listening.store(true, Ordering::Release);
    }

    pub fn mark_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.published.load(Ordering::Acquire)
            && self.listening.load(Ordering::Acquire)
            && !self.shutting_down.load(Ordering::Acquire)
    }
}

pub struct AdminApp {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl AdminApp {
    pub fn new(metrics: Arc<Metrics>, health: Arc<Health>) -> Self {
        Self { metrics, health }
    }
}

fn response(status: u16, content_type: &str, body: Vec<u8>) -> http::Response<Vec<u8>> {
    let mut r = http::Response::new(body);
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    let len = r.body().len();
    r.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    r
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        const TEXT: &str = "text/plain; charset=utf-8";
        match session.req_header().uri.path() {
            "/metrics" => response(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics.render(),
            ),
            "/healthz" => response(200, TEXT, b"ok\n".to_vec()),
            "/readyz" if self.health.is_ready() => response(200, TEXT, b"ready\n".to_vec()),
            "/readyz" => response(503, TEXT, b"not ready\n".to_vec()),
            _ => response(404, TEXT, b"not found\n".to_vec()),
        }
    }
}
