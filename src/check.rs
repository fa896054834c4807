//! `pylon check`: read everything once, translate, and describe the result.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::config::Config;
use crate::problem::Problem;
use crate::routing::PathKind;
use crate::snapshot::Snapshot;
use crate::source::files::FilesSource;
use crate::translate::{Memo, Settings, translate};

#[derive(Debug)]
pub struct Report {
    pub text: String,
    pub problems: Vec<Problem>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("manifest directory {0} does not exist or is not a directory")]
    ManifestDir(std::path::PathBuf),
    #[error("cannot generate the default certificate: {0}")]
    DefaultCertificate(#[from] crate::tls::Error),
}

pub fn check(config: &Config) -> Result<Report, Error> {
    let mut dirs = Vec::new();
    for dir in &config.manifests.dirs {
        if !dir.is_dir() {
            return Err(Error::ManifestDir(dir.clone()));
        }
        dirs.push(dir.clone());
    }
    if config.manifests.state_dir.is_dir() {
        dirs.push(config.manifests.state_dir.clone());
    }
    let mut source = FilesSource::new(dirs);
    source.refresh();
    let settings = Settings::new(
        &config.ingress,
        &config.acme,
        crate::tls::self_signed(crate::server::DEFAULT_CERT_NAME)?,
    );
    let translation = translate(
        &Arc::new(source.world()),
        &settings,
        &Snapshot::default(),
        &mut Memo::default(),
    );
    let mut text = String::new();
    describe(&translation.snapshot, &mut text);
    if !translation.requests.is_empty() {
        let _ = writeln!(text, "\n{:<40} {:<40} {:<28} STATE", "SECRET", "HOSTS", "ISSUER");
        for r in translation.requests.iter() {
            let state = match (&r.current.certificate, &r.current.state) {
                (Some(c), s) if s.failures == 0 => format!("valid until {}", unix_time(c.not_after)),
                (_, s) if s.failures > 0 => format!(
                    "{} failed attempt(s), next after {}: {}",
                    s.failures,
                    s.retry_after.map(|t| t.to_string()).unwrap_or_default(),
                    s.last_error.as_deref().unwrap_or_default()
                ),
                _ => "to be issued".to_owned(),
            };
            let _ = writeln!(
                text,
                "{:<40} {:<40} {:<28} {state}",
                r.secret.to_string(),
                r.hosts.join(","),
                r.issuer_id()
            );
        }
    }
    if !translation.ignored.is_empty() {
        let _ = writeln!(
            text,
            "\n{} Ingress(es) left to other controllers:",
            translation.ignored.len()
        );
        for (key, class) in translation.ignored.iter() {
            let class = class
                .as_deref()
                .map_or("no class".to_owned(), |c| format!("class {c:?}"));
            let _ = writeln!(text, "  {key} ({class})");
        }
    }
    if translation.problems.is_empty() {
        text.push_str("\nno problems\n");
    } else {
        let _ = writeln!(text, "\n{} problem(s):", translation.problems.len());
        for p in &translation.problems {
            let _ = writeln!(text, "  {p}");
        }
    }
    Ok(Report {
        text,
        problems: translation.problems,
    })
}

fn unix_time(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn describe(snapshot: &Snapshot, out: &mut String) {
    let entries = snapshot.routes.entries();
    if entries.is_empty() && snapshot.routes.default_route().is_none() {
        out.push_str("no routes\n");
        return;
    }
    let _ = writeln!(
        out,
        "{:<32} {:<28} {:<36} {:<24} POLICY",
        "HOST", "PATH", "BACKEND", "INGRESS"
    );
    let mut row = |host: &str, path: String, route: &crate::routing::Route| {
        let mut policy = Vec::new();
        if route.policy.redirect_https {
            policy.push("https-redirect".to_string());
        }
        if let Some(b) = route.policy.max_request_body {
            policy.push(format!("max-body={b}"));
        }
        if let Some(why) = route.backend.why_unavailable() {
            policy.push(format!("503: {}", why.message()));
        } else {
            policy.push(format!("{} endpoint(s)", route.backend.endpoints().len()));
        }
        let _ = writeln!(
            out,
            "{:<32} {:<28} {:<36} {:<24} {}",
            host,
            path,
            route.backend.id.to_string(),
            route.ingress.to_string(),
            policy.join(", ")
        );
    };
    for e in &entries {
        let path = match e.kind {
            PathKind::Exact => format!("{} (exact)", e.path),
            PathKind::Prefix if e.path.is_empty() => "/".to_string(),
            PathKind::Prefix => e.path.to_string(),
        };
        row(&e.host, path, e.route);
    }
    if let Some(route) = snapshot.routes.default_route() {
        row("(default backend)", "-".into(), route);
    }
}
