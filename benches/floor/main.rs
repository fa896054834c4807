//! The "pingora + rustls floor": the smallest pingora proxy that does what the benchmark asks
//! of pylon — TLS with one certificate, HTTP/2 and HTTP/1.1, every request to one upstream over
//! the shared keep-alive pool — and nothing else (no routing, headers, metrics or logs).
//! `benches/compare.sh` runs it as a reference: pylon's own cost per request is pylon's figure
//! minus this one.
//!
//! Usage: `pingora-floor <listen> <upstream> <cert.pem> <key.pem>`

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

/// The allocator pylon uses, so that the difference to pylon is pylon's own work.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Floor {
    upstream: std::net::SocketAddr,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream, cert, key] = args.as_slice() else {
        eprintln!("usage: pingora-floor <listen> <upstream> <cert.pem> <key.pem>");
        std::process::exit(2);
    };
    // The same crypto provider as pylon's listeners.
    let _ = pylon::tls::provider().install_default();
    // Stopped at once on SIGTERM: pingora's default grace period is five minutes, and the
    // harness would wait out its own timeout on every round.
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    let upstream = upstream.parse().expect("upstream address");
    let mut proxy = http_proxy_service(&server.configuration, Floor { upstream });
    let mut tls = TlsSettings::intermediate(cert, key).expect("certificate and key");
    tls.enable_h2();
    proxy.add_tls_with_settings(listen, None, tls);
    server.add_service(proxy);
    server.run_forever();
}
