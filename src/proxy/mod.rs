//! The data plane: pingora's `ProxyHttp` phases, kept thin. Each request loads its route from
//! the current snapshot once (an `ArcSwap` load and hash lookups) and never waits on the
//! control plane.

/// pingora's identity and digest traits for a stream wrapper, passed to its `$inner` stream.
macro_rules! delegate_digests {
    ($type:ty, $inner:ident) => {
        impl pingora::protocols::UniqueID for $type {
            fn id(&self) -> pingora::protocols::UniqueIDType {
                self.$inner.id()
            }
        }

        impl pingora::protocols::GetTimingDigest for $type {
            fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
                self.$inner.get_timing_digest()
            }

            fn get_read_pending_time(&self) -> std::time::Duration {
                self.$inner.get_read_pending_time()
            }

            fn get_write_pending_time(&self) -> std::time::Duration {
                self.$inner.get_write_pending_time()
            }
        }

        impl pingora::protocols::GetProxyDigest for $type {
            fn get_proxy_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora::protocols::raw_connect::ProxyDigest>> {
                self.$inner.get_proxy_digest()
            }

            fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
                self.$inner.set_proxy_digest(digest);
            }
        }

        impl pingora::protocols::GetSocketDigest for $type {
            fn get_socket_digest(&self) -> Option<std::sync::Arc<pingora::protocols::SocketDigest>> {
                self.$inner.get_socket_digest()
            }

            fn set_socket_digest(&mut self, digest: pingora::protocols::SocketDigest) {
                self.$inner.set_socket_digest(digest);
            }
        }
    };
}

mod coalesce;
mod connection;
mod forwarded;
mod headers;
mod listener;
mod proxy_protocol;
mod replay;
mod respond;
mod tls_stream;

pub use connection::{HeadLimits, ProxyApp};
pub use listener::{Listener, ProxyService};

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use self::forwarded::TrustedProxies;
use self::headers::*;
use crate::access_log::{self, AccessLog};
use crate::acme::challenge::Answer;
use crate::config::ProxyConfig;
use crate::metrics::Metrics;
use crate::routing::Route;
use crate::routing::host::MAX_HOST_LEN;
use crate::snapshot::Published;

/// Path prefix of ACME HTTP-01 challenges; never redirected to HTTPS.
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Requests currently being processed, for the shutdown drain.
#[derive(Debug, Default)]
pub struct InFlight(AtomicUsize);

impl InFlight {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// Held by a request's context while it is processed.
#[derive(Debug)]
struct InFlightGuard(Arc<InFlight>);

impl InFlightGuard {
    fn new(counter: &Arc<InFlight>) -> Self {
        counter.0.fetch_add(1, Ordering::AcqRel);
        Self(counter.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Per-request state.
pub struct Ctx {
    start: Instant,
    _in_flight: InFlightGuard,
    route: Option<Arc<Route>>,
    tls: bool,
    request_id: Option<http::HeaderValue>,
    tried: Vec<SocketAddr>,
    upstream_start: Option<Instant>,
    upstream_duration: Option<Duration>,
    upstream_status: Option<u16>,
    body_limit: u64,
    body_bytes: u64,
    /// The request came from a trusted proxy (`proxy.trusted-proxies`): its `X-Forwarded-*`
    /// headers are believed, and `client` is the address its `X-Forwarded-For` names when that
    /// is not the proxy itself.
    forwarded: bool,
    client: Option<IpAddr>,
}

/// pylon's proxy logic.
pub struct Proxy {
    published: Published,
    metrics: Arc<Metrics>,
    access_log: Arc<AccessLog>,
    config: ProxyConfig,
    https_port: u16,
    in_flight: Arc<InFlight>,
    trusted: TrustedProxies,
}

impl Proxy {
    pub fn new(
        published: Published,
        metrics: Arc<Metrics>,
        access_log: Arc<AccessLog>,
        config: ProxyConfig,
        https_port: u16,
        in_flight: Arc<InFlight>,
    ) -> Self {
        Self {
            published,
            metrics,
            access_log,
            trusted: TrustedProxies::new(config.trusted_proxies.clone()),
            config,
            https_port,
            in_flight,
        }
    }

    fn redirect_location(&self, req: &RequestHeader) -> Option<String> {
        let mut buf = [0; MAX_HOST_LEN];
        let host = routing_host(req, &mut buf)?;
        let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
        Some(if self.https_port == 443 {
            format!("https://{host}{path}")
        } else {
            format!("https://{host}:{}{path}", self.https_port)
        })
    }
}

/// `X-Forwarded-For` of a request from a trusted proxy: the list it sent (all its lines, in
/// order), then the proxy itself.
fn forward_for(upstream: &mut RequestHeader, peer: Option<http::HeaderValue>) -> Result<()> {
    let mut list: Vec<u8> = Vec::new();
    for value in upstream.headers.get_all(X_FORWARDED_FOR) {
        if !list.is_empty() {
            list.extend_from_slice(b", ");
        }
        list.extend_from_slice(value.as_bytes());
    }
    if let Some(peer) = peer {
        if !list.is_empty() {
            list.extend_from_slice(b", ");
        }
        list.extend_from_slice(peer.as_bytes());
    }
    match http::HeaderValue::from_bytes(&list) {
        Ok(value) if !list.is_empty() => upstream.insert_header(X_FORWARDED_FOR, value),
        _ => {
            upstream.remove_header(X_FORWARDED_FOR);
            Ok(())
        }
    }
}

/// Removes hop-by-hop fields (RFC 9110 §7.6.1) from an upstream response: those the
/// `Connection` field names, and `Keep-Alive`, `Proxy-Connection`, `TE`. A `101 Switching
/// Protocols` keeps `Connection` and `Upgrade`, which the upgrade needs.
fn strip_hop_by_hop(resp: &mut ResponseHeader) {
    if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    // One pass over the few fields a response has; most have none of these, and a removal by
    // name parses and hashes the name for both of pingora's header maps.
    let present: Vec<http::HeaderName> = resp
        .headers
        .keys()
        .filter(|name| is_hop_by_hop(name))
        .cloned()
        .collect();
    if present.is_empty() {
        return;
    }
    let nominated: Vec<String> = resp
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && t != "close" && t != "keep-alive")
        .collect();
    for name in nominated {
        resp.remove_header(&name);
    }
    for name in &present {
        resp.remove_header(name);
    }
}

fn is_hop_by_hop(name: &http::HeaderName) -> bool {
    use http::header::{CONNECTION, TE, UPGRADE};
    name == CONNECTION
        || name == TE
        || name == UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// The client connection's TLS version ("TLSv1_3"), if it is a TLS connection.
fn tls_version(digest: Option<&Digest>) -> Option<&str> {
    Some(&digest?.ssl_digest.as_ref()?.version)
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            _in_flight: InFlightGuard::new(&self.in_flight),
            route: None,
            tls: false,
            request_id: None,
            tried: Vec::new(),
            upstream_start: None,
            upstream_duration: None,
            upstream_status: None,
            body_limit: self.config.max_request_body_bytes,
            body_bytes: 0,
            forwarded: false,
            client: None,
        }
    }

    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {
        // No response compression: pylon passes bodies through untouched.
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        if let Some(peer) = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip())
            && self.trusted.trusts(peer)
        {
            ctx.forwarded = true;
            let client = self.trusted.client(peer, &session.req_header().headers);
            ctx.client = (client != peer).then_some(client);
        }
        if !session.is_process_shutting_down() {
            session.set_keepalive(Some(self.config.client_keepalive_timeout.as_secs()));
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // A client that stops reading must not hold the connection (and the upstream's) for
        // ever; pingora starts the timer only when a write has to wait.
        session.set_write_timeout(Some(self.config.client_send_timeout));
        if let Some(token) = session
            .req_header()
            .uri
            .path()
            .strip_prefix(ACME_CHALLENGE_PREFIX)
        {
            let answer = {
                let snapshot = self.published.load();
                if snapshot.challenges.is_empty() {
                    Answer::NotManaged
                } else {
                    let mut buf = [0; MAX_HOST_LEN];
                    snapshot
                        .challenges
                        .answer(routing_host(session.req_header(), &mut buf), token)
                }
            };
            match answer {
                Answer::Respond(key_authorization) => {
                    self.metrics
                        .acme_challenges
                        .with_label_values(&["answered"])
                        .inc();
                    respond::exact(session, 200, key_authorization, None).await?;
                    return Ok(true);
                }
                Answer::BadToken => {
                    self.metrics
                        .acme_challenges
                        .with_label_values(&["bad_token"])
                        .inc();
                    respond::text(session, 404, "404 not found: not an ACME challenge token", None).await?;
                    return Ok(true);
                }
                Answer::NotManaged => {}
            }
        }
        let req = session.req_header();
        if head_size(req) > self.config.max_request_header_bytes {
            respond::text(session, 431, "request header fields too large", None).await?;
            return Ok(true);
        }
        if let Some(coding) = req.headers.get(http::header::TRANSFER_ENCODING)
            && !only_chunked(coding.as_bytes())
        {
            // pingora would pass on a body sent as `gzip, chunked` marked only `chunked`, so
            // the pod would read compressed bytes as the body. As nginx does: 501, and the
            // connection closes (its framing cannot be trusted).
            session.set_keepalive(None);
            respond::text(
                session,
                501,
                "501 not implemented: the only transfer coding accepted is chunked",
                None,
            )
            .await?;
            return Ok(true);
        }
        ctx.request_id = Some(match req.headers.get(&X_REQUEST_ID_NAME) {
            Some(v) if usable_request_id(v.as_bytes()) => v.clone(),
            _ => new_request_id(),
        });

        let route = {
            let mut buf = [0; MAX_HOST_LEN];
            let host = routing_host(req, &mut buf);
            let snapshot = self.published.load();
            snapshot.routes.find(host, req.uri.path()).cloned()
        };
        let Some(route) = route else {
            respond::text(
                session,
                404,
                "404 not found: no route for this host and path",
                None,
            )
            .await?;
            return Ok(true);
        };
        let policy = &route.policy;
        ctx.route = Some(route.clone());

        if !ctx.tls
            && policy.redirect_https
            && !session.req_header().uri.path().starts_with(ACME_CHALLENGE_PREFIX)
            && let Some(location) = self.redirect_location(session.req_header())
        {
            respond::text(session, 308, "308 permanent redirect to HTTPS", Some(&location)).await?;
            return Ok(true);
        }
        if let Some(why) = route.backend.why_unavailable() {
            let body = format!(
                "503 service unavailable: {} ({})",
                why.message(),
                route.backend.id
            );
            respond::text(session, 503, &body, None).await?;
            return Ok(true);
        }

        ctx.body_limit = policy
            .max_request_body
            .unwrap_or(self.config.max_request_body_bytes);
        let declared = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if ctx.body_limit > 0 && declared.is_some_and(|n| n > ctx.body_limit) {
            respond::text(session, 413, "413 request body too large", None).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(chunk) = body {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_limit > 0 && ctx.body_bytes > ctx.body_limit {
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body larger than the limit");
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(route) = &ctx.route else {
            return Error::e_explain(ErrorType::InternalError, "no route chosen");
        };
        let Some(addr) = route.backend.pick(&ctx.tried) else {
            return Error::e_explain(
                ErrorType::ConnectNoRoute,
                format!("no untried endpoint left for {}", route.backend.id),
            );
        };
        ctx.tried.push(addr);
        let policy = &route.policy;
        let mut peer = HttpPeer::new(addr, false, String::new());
        let options = &mut peer.options;
        options.connection_timeout = Some(policy.connect_timeout.unwrap_or(self.config.connect_timeout));
        options.read_timeout = Some(policy.read_timeout.unwrap_or(self.config.read_timeout));
        options.write_timeout = Some(policy.write_timeout.unwrap_or(self.config.write_timeout));
        options.idle_timeout = Some(self.config.upstream_idle_timeout);
        ctx.upstream_start = Some(Instant::now());
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.metrics.upstream_connect_failures.inc();
        let untried = ctx
            .route
            .as_ref()
            .is_some_and(|r| r.backend.endpoints().len() > ctx.tried.len());
        e.set_retry(untried && ctx.tried.len() <= self.config.connect_retries);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let peer = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        if ctx.forwarded {
            // From a trusted proxy: the proxy is appended to its X-Forwarded-For.
            forward_for(upstream, peer.map(ip_header_value))?;
            match ctx.client.or(peer) {
                Some(client) => upstream.insert_header(X_REAL_IP, ip_header_value(client))?,
                None => {
                    upstream.remove_header(X_REAL_IP);
                }
            }
        } else {
            match peer.map(ip_header_value) {
                Some(ip) => {
                    upstream.insert_header(X_FORWARDED_FOR, ip.clone())?;
                    upstream.insert_header(X_REAL_IP, ip)?;
                }
                None => {
                    upstream.remove_header(X_FORWARDED_FOR);
                    upstream.remove_header(X_REAL_IP);
                }
            }
        }
        // A trusted proxy's own X-Forwarded-Proto, -Host and -Port are kept; anyone else's are
        // replaced with what pylon saw.
        let kept = |name: &str| ctx.forwarded && upstream.headers.contains_key(name);
        let (keep_proto, keep_host, keep_port) = (
            kept(X_FORWARDED_PROTO),
            kept(X_FORWARDED_HOST),
            kept(X_FORWARDED_PORT),
        );
        if !keep_proto {
            let proto = http::HeaderValue::from_static(if ctx.tls { "https" } else { "http" });
            upstream.insert_header(X_FORWARDED_PROTO, proto)?;
        }
        let host = authority(session.req_header()).and_then(|a| http::HeaderValue::from_bytes(a).ok());
        if let Some(host) = &host
            && upstream.headers.get(http::header::HOST).is_none()
        {
            upstream.insert_header(http::header::HOST, host.clone())?;
        }
        if !keep_host {
            match host {
                Some(host) => upstream.insert_header(X_FORWARDED_HOST, host)?,
                None => {
                    upstream.remove_header(X_FORWARDED_HOST);
                }
            }
        }
        if !keep_port && let Some(port) = session.server_addr().and_then(|a| a.as_inet()).map(|a| a.port()) {
            upstream.insert_header(X_FORWARDED_PORT, http::HeaderValue::from(port))?;
        }
        if let Some(id) = &ctx.request_id {
            upstream.insert_header(X_REQUEST_ID, id.clone())?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.upstream_status = Some(upstream.status.as_u16());
        strip_hop_by_hop(upstream);
        // A proxy answers in its own HTTP version (RFC 9110, section 6.2), whatever the
        // upstream spoke; pingora would pass an HTTP/1.0 status line through.
        if matches!(upstream.version, http::Version::HTTP_09 | http::Version::HTTP_10) {
            upstream.set_version(http::Version::HTTP_11);
        }
        if let Some(start) = ctx.upstream_start {
            let elapsed = start.elapsed();
            ctx.upstream_duration = Some(elapsed);
            self.metrics.upstream_duration.observe(elapsed.as_secs_f64());
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut Ctx) -> FailToProxy {
        use ErrorType::*;
        let code = match e.etype() {
            HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => match e.etype() {
                    ConnectTimedout | ReadTimedout | WriteTimedout => 504,
                    _ => 502,
                },
                ErrorSource::Downstream => match e.etype() {
                    WriteError | ReadError | ConnectionClosed => 0,
                    ReadTimedout | WriteTimedout => 408,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => match e.etype() {
                    ConnectNoRoute | ConnectRefused | ConnectTimedout | ConnectError => 502,
                    _ => 500,
                },
            },
        };
        if code > 0 && session.response_written().is_none() {
            let body = match code {
                413 => "413 request body too large",
                502 => "502 bad gateway: the upstream could not be reached",
                504 => "504 gateway timeout: the upstream did not answer in time",
                408 => "408 request timeout",
                400 => "400 bad request",
                _ => "error",
            };
            let _ = respond::text(session, code, body, None).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, error: &Error) -> bool {
        // Clients going away mid-request are normal; they are visible in the access log (and
        // those that stop reading in `pylon_client_send_timeouts_total`).
        matches!(error.esource(), ErrorSource::Downstream)
            && matches!(
                error.etype(),
                ErrorType::ConnectionClosed
                    | ErrorType::ReadError
                    | ErrorType::WriteError
                    | ErrorType::WriteTimedout
            )
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let elapsed = ctx.start.elapsed();
        if let Some(e) = e
            && matches!(e.esource(), ErrorSource::Downstream)
            && matches!(e.etype(), ErrorType::WriteTimedout)
        {
            self.metrics.client_send_timeouts.inc();
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let req = session.req_header();
        let bytes_out = session.body_bytes_sent() as u64;
        let bytes_in = session.body_bytes_read() as u64;
        let counters = ctx.route.as_ref().map_or(&self.metrics.unrouted, |r| &r.counters);
        counters.record(&req.method, status, bytes_in, bytes_out);
        self.metrics.request_duration.observe(elapsed.as_secs_f64());

        if !self.access_log.enabled() {
            return;
        }
        let mut buf = [0; MAX_HOST_LEN];
        let host = routing_host(req, &mut buf);
        let alpn = match (ctx.tls, session.is_http2()) {
            (false, _) => None,
            (true, true) => Some("h2"),
            (true, false) => Some("http/1.1"),
        };
        let entry = access_log::Entry {
            time: access_log::now_rfc3339(),
            client: match ctx.client {
                Some(client) => Some(client.to_string()),
                None => session.client_addr().map(ToString::to_string),
            },
            method: req.method.as_str(),
            host,
            path: req.uri.path(),
            status: if status == 0 { 499 } else { status },
            bytes_in,
            bytes_out,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            upstream_addr: ctx.tried.last().map(ToString::to_string),
            upstream_status: ctx.upstream_status,
            upstream_duration_ms: ctx.upstream_duration.map(|d| d.as_secs_f64() * 1000.0),
            ingress: ctx.route.as_ref().map(|r| r.ingress.to_string()),
            service: ctx.route.as_ref().map(|r| r.backend.id.to_string()),
            request_id: ctx.request_id.as_ref().and_then(|id| id.to_str().ok()),
            tls_version: tls_version(session.digest()),
            alpn,
            user_agent: req
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok()),
        };
        self.access_log.write(&entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(fields: &[(&'static str, &'static str)]) -> ResponseHeader {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        for (name, value) in fields {
            resp.append_header(*name, *value).unwrap();
        }
        resp
    }

    fn names(resp: &ResponseHeader) -> Vec<String> {
        resp.headers.keys().map(|n| n.to_string()).collect()
    }

    #[test]
    fn hop_by_hop_fields_are_removed_and_the_rest_kept() {
        let mut resp = response(&[
            ("Content-Type", "text/plain"),
            ("Connection", "keep-alive, X-Secret"),
            ("Keep-Alive", "timeout=5"),
            ("X-Secret", "1"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("Upgrade", "h2c"),
            ("Content-Length", "3"),
        ]);
        strip_hop_by_hop(&mut resp);
        assert_eq!(names(&resp), ["content-type", "content-length"]);
        let mut wire = Vec::new();
        resp.header_to_h1_wire(&mut wire);
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "Content-Type: text/plain\r\nContent-Length: 3\r\n",
            "the case map is kept in step"
        );

        // Without any of them, nothing is touched.
        let mut resp = response(&[("Content-Type", "text/plain"), ("X-Secret", "1")]);
        strip_hop_by_hop(&mut resp);
        assert_eq!(names(&resp), ["content-type", "x-secret"]);

        // A protocol switch keeps what the upgrade needs.
        let mut resp = response(&[("Connection", "upgrade"), ("Upgrade", "websocket")]);
        resp.set_status(101).unwrap();
        strip_hop_by_hop(&mut resp);
        assert_eq!(names(&resp), ["connection", "upgrade"]);
    }
}
