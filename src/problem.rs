//! Problems found in the input: an unreadable file, an invalid object, a conflict, a missing
//! reference. Each one names the object and says why; none of them stops pylon.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    /// The object (or the part named) is not served; the last good version stays, if any.
    Error,
    /// Served, but not as the user probably intended (missing Service, ignored annotation).
    Warning,
}

impl Severity {
    pub fn label(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warning => "warning",
        }
    }
}

/// What a problem is about: a Kubernetes object, or a manifest file.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject {
    /// `Ingress`, `Secret`, … or `File`.
    pub kind: &'static str,
    /// Empty for cluster-scoped objects and files.
    pub namespace: String,
    /// Object name, or file path.
    pub name: String,
}

impl Subject {
    pub fn object(kind: &'static str, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    pub fn file(path: &std::path::Path) -> Self {
        Self {
            kind: "File",
            namespace: String::new(),
            name: path.display().to_string(),
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Problem {
    pub subject: Subject,
    pub severity: Severity,
    /// A short, bounded identifier used as a metric label, e.g. `invalid_path`.
    pub reason: &'static str,
    /// The full explanation for a person.
    pub message: String,
}

impl Problem {
    pub fn error(subject: Subject, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            subject,
            severity: Severity::Error,
            reason,
            message: message.into(),
        }
    }

    pub fn warning(subject: Subject, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            subject,
            severity: Severity::Warning,
            reason,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.severity.label(), self.subject, self.message)
    }
}
