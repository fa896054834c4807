//! cert-manager issuers, checked into what pylon can do with them: an ACME account solving
//! HTTP-01, a self-signed issuer, or a CA issuer. Everything pylon cannot honour is said.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::source::ObjectKey;
use crate::source::cert_manager::{IssuerSpec, Solver};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IssuerKind {
    ClusterIssuer,
    Issuer,
}

impl IssuerKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::ClusterIssuer => "ClusterIssuer",
            Self::Issuer => "Issuer",
        }
    }
}

/// Which issuer: a `ClusterIssuer` by name, or an `Issuer` in a namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IssuerRef {
    pub kind: IssuerKind,
    /// Empty for a `ClusterIssuer`.
    pub namespace: String,
    pub name: String,
}

impl IssuerRef {
    pub fn cluster(name: &str) -> Self {
        Self {
            kind: IssuerKind::ClusterIssuer,
            namespace: String::new(),
            name: name.to_owned(),
        }
    }

    pub fn namespaced(namespace: &str, name: &str) -> Self {
        Self {
            kind: IssuerKind::Issuer,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// Parses the configuration form: `ClusterIssuer/name`, or `Issuer/name` (in the Ingress's
    /// namespace, filled in by the caller).
    pub fn parse_config(s: &str) -> Option<(IssuerKind, String)> {
        let (kind, name) = s.split_once('/')?;
        let kind = match kind {
            "ClusterIssuer" => IssuerKind::ClusterIssuer,
            "Issuer" => IssuerKind::Issuer,
            _ => return None,
        };
        (!name.is_empty() && !name.contains('/')).then(|| (kind, name.to_owned()))
    }
}

impl fmt::Display for IssuerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            IssuerKind::ClusterIssuer => write!(f, "ClusterIssuer {}", self.name),
            IssuerKind::Issuer => write!(f, "Issuer {}/{}", self.namespace, self.name),
        }
    }
}

/// How an issuer signs certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    Acme(Box<AcmeIssuer>),
    SelfSigned,
    /// Signs with the CA certificate and key in this Secret.
    Ca {
        secret: ObjectKey,
    },
}

/// An issuer pylon can use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerConfig {
    pub reference: IssuerRef,
    pub method: Method,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeIssuer {
    pub directory: String,
    pub email: Option<String>,
    /// `privateKeySecretRef`, in the issuer's resource namespace.
    pub account_secret: ObjectKey,
    /// The data key holding the account key (default `tls.key`).
    pub account_secret_key: String,
    pub disable_account_key_generation: bool,
    pub external_account: Option<ExternalAccount>,
    /// PEM certificates trusted for the ACME server, instead of the public roots.
    pub ca_bundle: Option<Vec<u8>>,
    pub skip_tls_verify: bool,
    pub profile: Option<String>,
    pub solvers: Vec<SolverChoice>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalAccount {
    pub key_id: String,
    pub secret: ObjectKey,
    pub secret_key: String,
}

/// A solver and the hosts it claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SolverChoice {
    pub http01: bool,
    pub dns_names: Vec<String>,
    pub dns_zones: Vec<String>,
    pub has_labels: bool,
}

impl AcmeIssuer {
    /// Whether `host` is solved with HTTP-01, following cert-manager's precedence: a solver
    /// naming the host in `dnsNames`, then the longest matching `dnsZones`, then one without a
    /// name selector; the first in list order wins a tie.
    pub fn solves_with_http01(&self, host: &str) -> bool {
        let score = |s: &SolverChoice| -> Option<usize> {
            if s.dns_names.iter().any(|n| n == host) {
                return Some(usize::MAX);
            }
            let zone = s
                .dns_zones
                .iter()
                .filter(|z| host == z.as_str() || host.ends_with(&format!(".{z}")))
                .map(String::len)
                .max();
            match zone {
                Some(len) => Some(1 + len),
                None if s.dns_names.is_empty() && s.dns_zones.is_empty() => Some(0),
                None => None,
            }
        };
        let mut best: Option<(usize, &SolverChoice)> = None;
        for s in &self.solvers {
            if let Some(sc) = score(s)
                && best.is_none_or(|(b, _)| sc > b)
            {
                best = Some((sc, s));
            }
        }
        best.is_some_and(|(_, s)| s.http01)
    }
}

/// The outcome of reading an issuer: usable or not, plus remarks worth telling the user.
#[derive(Debug)]
pub struct Parsed {
    pub config: Result<IssuerConfig, Vec<String>>,
    pub notes: Vec<String>,
}

/// Reads an issuer's spec. `resource_namespace` is where its Secrets live: the Issuer's own
/// namespace, or pylon's cluster resource namespace for a ClusterIssuer.
pub fn parse(reference: IssuerRef, spec: &IssuerSpec, resource_namespace: &str) -> Parsed {
    let mut errors = Vec::new();
    let mut notes = Vec::new();
    let unsupported: Vec<&String> = spec.other.keys().collect();
    let kinds = usize::from(spec.acme.is_some())
        + usize::from(spec.self_signed.is_some())
        + usize::from(spec.ca.is_some());
    let method = if kinds > 1 {
        errors.push("spec sets more than one of acme, selfSigned and ca".into());
        None
    } else if let Some(acme) = &spec.acme {
        acme_issuer(acme, resource_namespace, &mut errors, &mut notes).map(|a| Method::Acme(Box::new(a)))
    } else if spec.self_signed.is_some() {
        Some(Method::SelfSigned)
    } else if let Some(ca) = &spec.ca {
        for key in ca.other.keys() {
            notes.push(format!("spec.ca.{key} is not supported; it is ignored"));
        }
        if ca.secret_name.is_empty() {
            errors.push("spec.ca.secretName is required".into());
            None
        } else {
            Some(Method::Ca {
                secret: ObjectKey::new(resource_namespace, ca.secret_name.clone()),
            })
        }
    } else if let Some(kind) = unsupported.first() {
        errors.push(format!(
            "issuer type {kind:?} is not supported; pylon issues with acme (HTTP-01), selfSigned and ca"
        ));
        None
    } else {
        errors.push("spec has no issuer type (acme, selfSigned or ca)".into());
        None
    };
    if kinds > 0 {
        for kind in unsupported {
            notes.push(format!("spec.{kind} is not supported; it is ignored"));
        }
    }
    let config = match method {
        Some(method) if errors.is_empty() => Ok(IssuerConfig { reference, method }),
        _ => Err(errors),
    };
    Parsed { config, notes }
}

fn acme_issuer(
    acme: &crate::source::cert_manager::AcmeSpec,
    ns: &str,
    errors: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Option<AcmeIssuer> {
    let before = errors.len();
    match acme.server.parse::<http::Uri>() {
        Ok(uri) if matches!(uri.scheme_str(), Some("https" | "http")) && uri.host().is_some() => {}
        _ => errors.push(format!(
            "spec.acme.server {:?} is not an http(s) URL of an ACME directory",
            acme.server
        )),
    }
    if acme.private_key_secret_ref.name.is_empty() {
        errors.push(
            "spec.acme.privateKeySecretRef.name is required (the Secret that holds the ACME account key)"
                .into(),
        );
    }
    let solvers: Vec<SolverChoice> = acme.solvers.iter().map(solver).collect();
    for (i, s) in acme.solvers.iter().enumerate() {
        for key in s.other.keys() {
            notes.push(format!(
                "spec.acme.solvers[{i}].{key} is not supported; it is ignored"
            ));
        }
        if s.dns01.is_some() {
            notes.push(format!(
                "spec.acme.solvers[{i}] is a DNS-01 solver: pylon solves HTTP-01 only, hosts it selects get no certificate"
            ));
        }
    }
    if !solvers.iter().any(|s| s.http01) {
        errors.push(
            "spec.acme.solvers has no http01 solver: pylon solves HTTP-01 only (DNS-01 is not supported)"
                .into(),
        );
    }
    let external_account = acme.external_account_binding.as_ref().and_then(|eab| {
        if eab.key_id.is_empty() || eab.key_secret_ref.name.is_empty() {
            errors.push("spec.acme.externalAccountBinding needs keyID and keySecretRef.name".into());
            return None;
        }
        if eab.key_algorithm.as_deref().is_some_and(|a| a != "HS256") {
            notes.push("spec.acme.externalAccountBinding.keyAlgorithm is deprecated; HS256 is used".into());
        }
        Some(ExternalAccount {
            key_id: eab.key_id.clone(),
            secret: ObjectKey::new(ns, eab.key_secret_ref.name.clone()),
            secret_key: eab.key_secret_ref.key.clone().unwrap_or_else(|| "secret".into()),
        })
    });
    let ca_bundle = acme
        .ca_bundle
        .as_ref()
        .and_then(|b| match STANDARD.decode(b.trim()) {
            Ok(pem) if pem_has_certificate(&pem) => Some(pem),
            Ok(_) => {
                errors.push("spec.acme.caBundle holds no PEM certificate".into());
                None
            }
            Err(e) => {
                errors.push(format!("spec.acme.caBundle is not base64: {e}"));
                None
            }
        });
    if acme.preferred_chain.as_deref().is_some_and(|c| !c.is_empty()) {
        notes.push("spec.acme.preferredChain is not supported; the CA's default chain is used".into());
    }
    if acme.enable_duration_feature == Some(true) {
        notes.push("spec.acme.enableDurationFeature is not supported; it is ignored".into());
    }
    for key in acme.other.keys() {
        notes.push(format!("spec.acme.{key} is not supported; it is ignored"));
    }
    if errors.len() > before {
        return None;
    }
    Some(AcmeIssuer {
        directory: acme.server.clone(),
        email: acme.email.clone().filter(|e| !e.is_empty()),
        account_secret: ObjectKey::new(ns, acme.private_key_secret_ref.name.clone()),
        account_secret_key: acme
            .private_key_secret_ref
            .key
            .clone()
            .unwrap_or_else(|| "tls.key".into()),
        disable_account_key_generation: acme.disable_account_key_generation == Some(true),
        external_account,
        ca_bundle,
        skip_tls_verify: acme.skip_tls_verify == Some(true),
        profile: acme.profile.clone().filter(|p| !p.is_empty()),
        solvers,
    })
}

fn solver(s: &Solver) -> SolverChoice {
    let selector = s.selector.as_ref();
    SolverChoice {
        http01: s.http01.is_some(),
        dns_names: selector.map(|s| s.dns_names.clone()).unwrap_or_default(),
        dns_zones: selector.map(|s| s.dns_zones.clone()).unwrap_or_default(),
        has_labels: selector.is_some_and(|s| !s.match_labels.is_empty()),
    }
}

fn pem_has_certificate(pem: &[u8]) -> bool {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem).any(|c| c.is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::cert_manager::IssuerObject;

    fn spec(yaml: &str) -> IssuerSpec {
        let obj: IssuerObject = serde_yaml_ng::from_str(yaml).unwrap();
        obj.spec
    }

    fn parse_yaml(yaml: &str) -> Parsed {
        parse(IssuerRef::cluster("le"), &spec(yaml), "pylon")
    }

    #[test]
    fn reads_the_cert_manager_documentation_example() {
        let p = parse_yaml(
            "spec:\n  acme:\n    email: user@example.com\n    server: https://acme-v02.api.letsencrypt.org/directory\n    privateKeySecretRef: {name: letsencrypt-prod-account-key}\n    solvers:\n    - http01:\n        ingress:\n          ingressClassName: nginx\n",
        );
        assert!(p.notes.is_empty(), "{:?}", p.notes);
        let config = p.config.unwrap();
        let Method::Acme(acme) = config.method else {
            panic!()
        };
        assert_eq!(
            acme.account_secret,
            ObjectKey::new("pylon", "letsencrypt-prod-account-key")
        );
        assert_eq!(acme.account_secret_key, "tls.key");
        assert_eq!(acme.email.as_deref(), Some("user@example.com"));
        assert!(acme.solves_with_http01("app.example.com"));
    }

    #[test]
    fn reports_what_cannot_work() {
        let dns_only = parse_yaml(
            "spec:\n  acme:\n    server: https://acme.test/dir\n    privateKeySecretRef: {name: k}\n    solvers: [{dns01: {cloudflare: {}}}]\n",
        );
        let errors = dns_only.config.unwrap_err();
        assert!(errors[0].contains("no http01 solver"), "{errors:?}");

        let no_key =
            parse_yaml("spec:\n  acme:\n    server: https://acme.test/dir\n    solvers: [{http01: {}}]\n");
        assert!(no_key.config.unwrap_err()[0].contains("privateKeySecretRef"));

        let vault = parse_yaml("spec:\n  vault: {server: https://vault}\n");
        assert!(vault.config.unwrap_err()[0].contains("\"vault\" is not supported"));

        let bad_bundle = parse_yaml(
            "spec:\n  acme:\n    server: https://acme.test/dir\n    privateKeySecretRef: {name: k}\n    caBundle: bm90IGEgY2VydA==\n    solvers: [{http01: {}}]\n",
        );
        assert!(bad_bundle.config.unwrap_err()[0].contains("caBundle"));

        let notes = parse_yaml(
            "spec:\n  acme:\n    server: https://acme.test/dir\n    privateKeySecretRef: {name: k}\n    preferredChain: ISRG Root X1\n    solvers: [{http01: {}}, {dns01: {}, selector: {dnsZones: [internal.test]}}]\n",
        );
        assert!(notes.config.is_ok());
        assert_eq!(notes.notes.len(), 2, "{:?}", notes.notes);
    }

    #[test]
    fn solver_precedence_follows_cert_manager() {
        let p = parse_yaml(
            "spec:\n  acme:\n    server: https://acme.test/dir\n    privateKeySecretRef: {name: k}\n    solvers:\n    - http01: {}\n    - dns01: {}\n      selector: {dnsZones: [example.com]}\n    - http01: {}\n      selector: {dnsNames: [www.example.com]}\n",
        );
        let Method::Acme(acme) = p.config.unwrap().method else {
            panic!()
        };
        assert!(acme.solves_with_http01("other.org"));
        assert!(!acme.solves_with_http01("app.example.com"));
        assert!(!acme.solves_with_http01("example.com"));
        assert!(acme.solves_with_http01("www.example.com"));
    }

    #[test]
    fn self_signed_and_ca() {
        assert_eq!(
            parse_yaml("spec: {selfSigned: {}}").config.unwrap().method,
            Method::SelfSigned
        );
        let ca = parse(
            IssuerRef::namespaced("team", "ca"),
            &spec("spec: {ca: {secretName: root}}"),
            "team",
        );
        assert_eq!(
            ca.config.unwrap().method,
            Method::Ca {
                secret: ObjectKey::new("team", "root")
            }
        );
        assert!(parse_yaml("spec: {ca: {}}").config.is_err());
    }
}
