//! Test support: the real pylon binary, real upstreams, real clients, a test CA and manifests.

#![allow(dead_code)]

pub mod client;
pub mod kube_env;
pub mod pebble;
pub mod pylon;
pub mod upstream;

use std::net::SocketAddr;

/// A certificate authority for one test, and leaf certificates it signs.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pub pem: String,
}

/// A leaf certificate and its key, PEM.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub cert: String,
    pub key: String,
    /// Serial as the TLS client reports it.
    pub serial: String,
}

impl TestCa {
    pub fn new() -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pylon test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        let pem = issuer.pem();
        Self { issuer, pem }
    }

    /// A leaf for `names` (wildcards allowed) with an ECDSA P-256 key, signed by this CA.
    pub fn issue(&self, names: &[&str]) -> Leaf {
        self.issue_with(names, ::pylon::acme::keys::KeySpec::EcdsaP256)
    }

    /// A leaf for `names` with a new key of kind `spec`, signed by this CA.
    pub fn issue_with(&self, names: &[&str], spec: ::pylon::acme::keys::KeySpec) -> Leaf {
        let der = spec.generate().expect("key");
        let key = spec.key_pair(&der).expect("key pair");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&fastrand_serial()));
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        let serial = client::peer_cert(cert.der()).expect("parse leaf").serial;
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            serial,
        }
    }
}

fn fastrand_serial() -> [u8; 16] {
    let mut s = [0u8; 16];
    for b in &mut s {
        *b = fastrand::u8(..);
    }
    s[0] &= 0x7f;
    s[0] |= 0x01;
    s
}

fn indent(text: &str, spaces: usize) -> String {
    let pad = " ".repeat(spaces);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// A `kubernetes.io/tls` Secret.
pub fn tls_secret(name: &str, leaf: &Leaf) -> String {
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(&leaf.cert, 4),
        indent(&leaf.key, 4)
    )
}

/// A Service `name` (port 80, named `http`) and one EndpointSlice per endpoint.
pub fn service(name: &str, endpoints: &[SocketAddr]) -> String {
    let mut yaml = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n"
    );
    for (i, addr) in endpoints.iter().enumerate() {
        yaml += &endpoint_slice(&format!("{name}-{i}"), name, *addr, true);
    }
    yaml
}

/// A Service `name` of type ExternalName pointing at `addr` (an IP literal): the way to reach
/// a loopback upstream through a real API server, which refuses loopback EndpointSlices.
pub fn external_service(name: &str, addr: SocketAddr) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{type: ExternalName, externalName: \"{ip}\", ports: [{{name: http, port: 80, targetPort: {port}}}]}}\n",
        ip = addr.ip(),
        port = addr.port()
    )
}

pub fn endpoint_slice(slice: &str, service: &str, addr: SocketAddr, ready: bool) -> String {
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {slice}, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints: [{{addresses: [\"{ip}\"], conditions: {{ready: {ready}}}}}]\n",
        port = addr.port(),
        ip = addr.ip(),
    )
}

/// The manifests of one Service `up` (at `addr`) behind one Ingress for `host`, with `extra`
/// Ingress settings.
pub fn single_route(addr: SocketAddr, host: &str, annotations: &[(&str, &str)]) -> String {
    format!(
        "{CLASS}{}{}",
        service("up", &[addr]),
        IngressYaml {
            annotations,
            rules: &[(host, "/", "Prefix", "up")],
            ..Default::default()
        }
        .render()
    )
}

/// The IngressClass `pylon`, pylon's controller.
pub const CLASS: &str = "---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: pylon}\nspec: {controller: pylon.dev/ingress-controller}\n";

/// An Ingress of class `pylon` with `rules` as (host, path, pathType, service) and optional
/// extra spec/metadata lines.
pub struct IngressYaml<'a> {
    pub name: &'a str,
    pub class: Option<&'a str>,
    pub annotations: &'a [(&'a str, &'a str)],
    pub tls: &'a [(&'a [&'a str], &'a str)],
    pub rules: &'a [(&'a str, &'a str, &'a str, &'a str)],
    pub default_backend: Option<&'a str>,
}

impl Default for IngressYaml<'_> {
    fn default() -> Self {
        Self {
            name: "app",
            class: Some("pylon"),
            annotations: &[],
            tls: &[],
            rules: &[],
            default_backend: None,
        }
    }
}

impl IngressYaml<'_> {
    pub fn render(&self) -> String {
        let mut y = format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {}\n",
            self.name
        );
        if !self.annotations.is_empty() {
            y += "  annotations:\n";
            for (k, v) in self.annotations {
                y += &format!("    {k}: \"{v}\"\n");
            }
        }
        y += "spec:\n";
        if let Some(c) = self.class {
            y += &format!("  ingressClassName: {c}\n");
        }
        if let Some(svc) = self.default_backend {
            y += &format!("  defaultBackend: {{service: {{name: {svc}, port: {{number: 80}}}}}}\n");
        }
        if !self.tls.is_empty() {
            y += "  tls:\n";
            for (hosts, secret) in self.tls {
                let hosts: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
                y += &format!("  - hosts: [{}]\n    secretName: {secret}\n", hosts.join(", "));
            }
        }
        if !self.rules.is_empty() {
            y += "  rules:\n";
            for (host, path, kind, svc) in self.rules {
                if host.is_empty() {
                    y += "  - http:\n";
                } else {
                    y += &format!("  - host: \"{host}\"\n    http:\n");
                }
                y += &format!(
                    "      paths: [{{path: \"{path}\", pathType: {kind}, backend: {{service: {{name: {svc}, port: {{name: http}}}}}}}}]\n"
                );
            }
        }
        y
    }
}
