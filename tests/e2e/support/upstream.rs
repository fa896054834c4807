//! Real upstream servers on loopback: an HTTP/1.1 echo server that says who answered, and a
//! WebSocket echo server. Each runs on its own thread and stops when dropped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

/// An HTTP echo server. `GET /anything` answers JSON naming the upstream, the request method,
/// path, headers and body length. `/slow?ms=N` waits first; `/big?bytes=N` sends N bytes;
/// `/status/NNN` answers that status.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    hits: Arc<AtomicUsize>,
    /// The path of every request received, in order.
    paths: Arc<Mutex<Vec<String>>>,
    _stop: oneshot::Sender<()>,
}

/// Binds a loopback port and serves each accepted connection with `serve` on a thread of its
/// own; the server stops when the returned sender is dropped.
fn spawn_server<F, Fut>(serve: F) -> (SocketAddr, oneshot::Sender<()>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let accept = async {
                loop {
                    if let Ok((stream, _)) = listener.accept().await {
                        tokio::spawn(serve(stream));
                    }
                }
            };
            tokio::select! {
                _ = accept => {}
                _ = stopped => {}
            }
        });
    });
    (addr, stop)
}

impl Upstream {
    pub fn start(name: &str) -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (name_owned, counter, recorder) = (name.to_owned(), hits.clone(), paths.clone());
        let (addr, stop) = spawn_server(move |stream| {
            let (name, hits, paths) = (name_owned.clone(), counter.clone(), recorder.clone());
            async move {
                let svc = service_fn(move |req: http::Request<Incoming>| {
                    hits.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut p) = paths.lock() {
                        p.push(req.uri().path().to_owned());
                    }
                    handle(name.clone(), req)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            }
        });
        Self {
            addr,
            name: name.to_owned(),
            hits,
            paths,
            _stop: stop,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }

    /// The paths of the requests received so far.
    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

fn query_number(query: Option<&str>, key: &str) -> Option<u64> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

async fn handle(
    name: String,
    req: http::Request<Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    if path.starts_with("/slow") {
        let ms = query_number(query.as_deref(), "ms").unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if path.starts_with("/big") {
        let n = query_number(query.as_deref(), "bytes").unwrap_or(1 << 20) as usize;
        return Ok(http::Response::new(Full::new(Bytes::from(vec![b'x'; n]))));
    }
    let status = path
        .strip_prefix("/status/")
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(200);
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().into()))
        .collect();
    let json = serde_json::json!({
        "upstream": name,
        "method": parts.method.as_str(),
        "path": path,
        "query": query,
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body.len(),
    });
    let mut resp = http::Response::new(Full::new(Bytes::from(json.to_string())));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    resp.headers_mut()
        .insert("x-upstream", http::HeaderValue::from_str(&name).expect("header"));
    // Hop-by-hop headers a proxy must not pass on.
    resp.headers_mut()
        .insert("keep-alive", http::HeaderValue::from_static("timeout=5"));
    Ok(resp)
}

/// A WebSocket server that echoes every message, prefixed with its name.
pub struct WsUpstream {
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl WsUpstream {
    pub fn start(name: &str) -> Self {
        let name = name.to_owned();
        let (addr, stop) = spawn_server(move |stream| {
            let name = name.clone();
            async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() {
                        let reply = format!("{name}: {}", msg.to_text().unwrap_or_default());
                        if ws.send(reply.into()).await.is_err() {
                            return;
                        }
                    } else if msg.is_close() {
                        return;
                    }
                }
            }
        });
        Self { addr, _stop: stop }
    }
}
