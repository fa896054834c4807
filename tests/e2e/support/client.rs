//! Real clients: plain HTTP/1.1, and TLS (rustls) with HTTP/1.1 or HTTP/2 chosen by ALPN.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The server certificate a TLS client was shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCert {
    pub dns_names: Vec<String>,
    pub serial: String,
}

/// A GET with `Connection: close` on a blocking socket; `None` if nothing answers.
pub fn blocking_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let status = raw.split(' ').nth(1)?.parse().ok()?;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// A request builder with `Host` set.
pub fn get(host: &str, path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(path)
        .header(http::header::HOST, host)
        .body(Full::new(Bytes::new()))
        .expect("valid request")
}

async fn collect(resp: http::Response<hyper::body::Incoming>) -> Result<Response, Error> {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Response {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// One plain HTTP/1.1 request on a new connection.
pub async fn http(addr: SocketAddr, req: http::Request<Full<Bytes>>) -> Result<Response, Error> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    collect(send.send_request(req).await?).await
}

pub async fn http_get(addr: SocketAddr, host: &str, path: &str) -> Result<Response, Error> {
    http(addr, get(host, path)).await
}

/// A TLS client trusting the test CA (or, `insecure`, anything: to look at the default
/// certificate).
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
}

impl TlsClient {
    pub fn trusting(ca_pem: &str, alpn: &[&[u8]]) -> Self {
        Self::trusting_versions(ca_pem, alpn, rustls::DEFAULT_VERSIONS)
    }

    /// Offers only `versions` (e.g. `&[&rustls::version::TLS12]`).
    pub fn trusting_versions(
        ca_pem: &str,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Self {
        let roots = roots(ca_pem);
        Self::build(alpn, versions, |b| {
            b.with_root_certificates(roots).with_no_client_auth()
        })
    }

    pub fn insecure(alpn: &[&[u8]]) -> Self {
        Self::build(alpn, rustls::DEFAULT_VERSIONS, |b| {
            b.dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnything))
                .with_no_client_auth()
        })
    }

    /// Offers only the key exchange groups `groups`, in that order (aws-lc-rs's, which include
    /// the post-quantum hybrid `X25519MLKEM768`), and sends a key share for the first.
    pub fn trusting_kx_groups(
        ca_pem: &str,
        alpn: &[&[u8]],
        groups: &[&'static dyn rustls::crypto::SupportedKxGroup],
    ) -> Self {
        let provider = rustls::crypto::CryptoProvider {
            kx_groups: groups.to_vec(),
            ..rustls::crypto::aws_lc_rs::default_provider()
        };
        let roots = roots(ca_pem);
        Self::build_with(provider, alpn, rustls::DEFAULT_VERSIONS, |b| {
            b.with_root_certificates(roots).with_no_client_auth()
        })
    }

    fn build(
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
        verify: impl FnOnce(rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>) -> ClientConfig,
    ) -> Self {
        Self::build_with(rustls::crypto::ring::default_provider(), alpn, versions, verify)
    }

    fn build_with(
        provider: rustls::crypto::CryptoProvider,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
        verify: impl FnOnce(rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>) -> ClientConfig,
    ) -> Self {
        let builder = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .expect("protocol versions");
        let mut config = verify(builder);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // Every connection is a full handshake, so the server picks a certificate each time
        // (a resumed TLS 1.3 session presents none).
        config.resumption = rustls::client::Resumption::disabled();
        Self {
            config: Arc::new(config),
        }
    }

    /// Keeps the sessions (tickets) servers hand out and resumes them on later connections.
    pub fn resuming(mut self) -> Self {
        Arc::make_mut(&mut self.config).resumption = rustls::client::Resumption::in_memory_sessions(64);
        self
    }

    /// Connects with `sni` (an IP address sends no SNI) and returns the TLS stream and the
    /// certificate the server presented.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        sni: &str,
    ) -> Result<(tokio_rustls::client::TlsStream<tokio::net::TcpStream>, PeerCert), Error> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        self.connect_over(stream, sni).await
    }

    /// As [`connect`](Self::connect), over a connection already open (on which something may
    /// have been sent before TLS, such as a PROXY protocol header).
    pub async fn connect_over(
        &self,
        stream: tokio::net::TcpStream,
        sni: &str,
    ) -> Result<(tokio_rustls::client::TlsStream<tokio::net::TcpStream>, PeerCert), Error> {
        let name = ServerName::try_from(sni.to_owned())?;
        let tls = TlsConnector::from(self.config.clone())
            .connect(name, stream)
            .await?;
        let der = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or("no server certificate")?
            .clone();
        Ok((tls, peer_cert(&der)?))
    }

    /// One request on a new TLS connection; HTTP/2 if the server selected it by ALPN.
    pub async fn request(
        &self,
        addr: SocketAddr,
        sni: &str,
        req: http::Request<Full<Bytes>>,
    ) -> Result<(Response, PeerCert), Error> {
        let (tls, cert) = self.connect(addr, sni).await?;
        Ok((Self::send(tls, sni, req).await?, cert))
    }

    /// One request on a connection made by [`connect`](Self::connect); HTTP/2 if the server
    /// selected it by ALPN.
    pub async fn send(
        tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        sni: &str,
        req: http::Request<Full<Bytes>>,
    ) -> Result<Response, Error> {
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        let resp = if h2 {
            let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            // HTTP/2 carries the host in :authority.
            let (mut parts, body) = req.into_parts();
            let host = parts
                .headers
                .remove(http::header::HOST)
                .and_then(|h| h.to_str().ok().map(str::to_owned))
                .unwrap_or_else(|| sni.to_owned());
            parts.uri = format!(
                "https://{host}{}",
                parts.uri.path_and_query().map_or("/", |p| p.as_str())
            )
            .parse()?;
            parts.version = http::Version::HTTP_2;
            collect(send.send_request(http::Request::from_parts(parts, body)).await?).await?
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            collect(send.send_request(req).await?).await?
        };
        Ok(resp)
    }

    /// A GET of `/` for `host` on a new connection, which also reads the TLS 1.3 tickets that
    /// follow the handshake. Returns how the handshake went (full or resumed) and the response.
    pub async fn get_on_new_connection(
        &self,
        addr: SocketAddr,
        host: &str,
    ) -> Result<(Option<rustls::HandshakeKind>, Response), Error> {
        let (tls, _) = self.connect(addr, host).await?;
        let kind = tls.get_ref().1.handshake_kind();
        Ok((kind, Self::send(tls, host, get(host, "/")).await?))
    }

    pub async fn get(&self, addr: SocketAddr, host: &str, path: &str) -> Result<(Response, PeerCert), Error> {
        self.request(addr, host, get(host, path)).await
    }
}

fn roots(ca_pem: &str) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile_certs(ca_pem) {
        roots.add(cert).expect("CA certificate");
    }
    roots
}

fn rustls_pemfile_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM certificates")
}

pub fn peer_cert(der: &[u8]) -> Result<PeerCert, Error> {
    let (_, cert) = X509Certificate::from_der(der)?;
    let dns_names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(PeerCert {
        dns_names,
        serial: cert.raw_serial_as_string(),
    })
}

#[derive(Debug)]
struct AcceptAnything;

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
