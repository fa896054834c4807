//! Ingress path matching: `Exact` and element-wise `Prefix` (Kubernetes Ingress v1).

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathKind {
    Exact,
    /// Also used for `ImplementationSpecific`.
    Prefix,
}

/// A parsed Ingress path. For `Prefix`, trailing slashes are removed (`/foo/` ≡ `/foo`) and the
/// root prefix `/` is stored as the empty string, so that a request path can be cut at `/`
/// boundaries and looked up directly.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathMatch {
    kind: PathKind,
    key: Box<str>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path must start with '/'")]
    NotAbsolute,
    #[error("path must not contain {0:?}")]
    BadSequence(&'static str),
    #[error("path must not end with {0:?}")]
    BadSuffix(&'static str),
    #[error("path must not contain whitespace, control characters, '?' or '#'")]
    BadCharacter,
}

const INVALID_SEQUENCES: [&str; 5] = ["//", "/./", "/../", "%2f", "%2F"];
const INVALID_SUFFIXES: [&str; 2] = ["/..", "/."];

impl PathMatch {
    /// Parses `path` (default `/`) as Kubernetes validates `Exact` and `Prefix` paths.
    pub fn parse(kind: PathKind, path: Option<&str>) -> Result<Self, PathError> {
        let path = match path {
            None | Some("") => "/",
            Some(p) => p,
        };
        if !path.starts_with('/') {
            return Err(PathError::NotAbsolute);
        }
        if let Some(seq) = INVALID_SEQUENCES.iter().find(|s| path.contains(**s)) {
            return Err(PathError::BadSequence(seq));
        }
        if let Some(suffix) = INVALID_SUFFIXES.iter().find(|s| path.ends_with(**s)) {
            return Err(PathError::BadSuffix(suffix));
        }
        if path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'?' || b == b'#')
        {
            return Err(PathError::BadCharacter);
        }
        let key = match kind {
            PathKind::Exact => path,
            PathKind::Prefix => path.trim_end_matches('/'),
        };
        Ok(Self {
            kind,
            key: key.into(),
        })
    }

    pub fn kind(&self) -> PathKind {
        self.kind
    }

    /// The lookup key: the exact path, or the prefix without trailing slash.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Reference semantics of one path against a request path, for tests and tools; the route
    /// table does the same with hash lookups.
    pub fn matches(&self, request_path: &str) -> bool {
        match self.kind {
            PathKind::Exact => *self.key == *request_path,
            PathKind::Prefix => {
                let Some(rest) = request_path.strip_prefix(&*self.key) else {
                    return false;
                };
                rest.is_empty() || rest.starts_with('/') || self.key.is_empty()
            }
        }
    }
}

impl fmt::Display for PathMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PathKind::Exact => write!(f, "={}", self.key),
            PathKind::Prefix if self.key.is_empty() => f.write_str("/"),
            PathKind::Prefix => write!(f, "{}", self.key),
        }
    }
}

/// The prefix keys a request path can match, longest first: `/a/b/c` yields `/a/b/c`, `/a/b`,
/// `/a` and `` (the root). Trailing slashes of the request are ignored, as Kubernetes specifies.
pub fn prefix_candidates(request_path: &str) -> impl Iterator<Item = &str> {
    let mut next = Some(request_path.trim_end_matches('/'));
    std::iter::from_fn(move || {
        let current = next?;
        next = match current.rfind('/') {
            Some(i) => Some(&current[..i]),
            // A request target that is not a path (`*`) can still match the root prefix.
            None if !current.is_empty() => Some(""),
            None => None,
        };
        Some(current)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(p: &str) -> PathMatch {
        PathMatch::parse(PathKind::Prefix, Some(p)).unwrap()
    }

    /// The examples table of the Kubernetes Ingress documentation.
    #[test]
    fn kubernetes_documentation_examples() {
        let exact = |p| PathMatch::parse(PathKind::Exact, Some(p)).unwrap();
        assert!(prefix("/").matches("/anything/at/all"));
        assert!(exact("/foo").matches("/foo"));
        assert!(!exact("/foo").matches("/bar"));
        assert!(!exact("/foo").matches("/foo/"));
        assert!(!exact("/foo/").matches("/foo"));
        assert!(prefix("/foo").matches("/foo"));
        assert!(prefix("/foo").matches("/foo/"));
        assert!(prefix("/foo/").matches("/foo"));
        assert!(prefix("/foo/").matches("/foo/"));
        assert!(prefix("/aaa/bb").matches("/aaa/bb/ccc"));
        assert!(!prefix("/aaa/bb").matches("/aaa/bbb"));
        assert!(prefix("/aaa/bbb").matches("/aaa/bbb/"));
        assert!(prefix("/aaa/bbb/").matches("/aaa/bbb"));
        assert!(!prefix("/aaa/bbb").matches("/aaa/bbbxyz"));
        assert!(!prefix("/foo").matches("/foobar"));
    }

    #[test]
    fn rejects_what_kubernetes_rejects() {
        let bad = |p| PathMatch::parse(PathKind::Prefix, Some(p)).unwrap_err();
        assert_eq!(bad("foo"), PathError::NotAbsolute);
        assert_eq!(bad("/a//b"), PathError::BadSequence("//"));
        assert_eq!(bad("/a/../b"), PathError::BadSequence("/../"));
        assert_eq!(bad("/a%2Fb"), PathError::BadSequence("%2F"));
        assert_eq!(bad("/a/."), PathError::BadSuffix("/."));
        assert_eq!(bad("/a b"), PathError::BadCharacter);
        assert_eq!(bad("/a?b"), PathError::BadCharacter);
    }

    #[test]
    fn candidates_walk_up_the_path() {
        let c: Vec<_> = prefix_candidates("/a/b/c/").collect();
        assert_eq!(c, ["/a/b/c", "/a/b", "/a", ""]);
        let c: Vec<_> = prefix_candidates("/").collect();
        assert_eq!(c, [""]);
        let c: Vec<_> = prefix_candidates("*").collect();
        assert_eq!(c, ["*", ""]);
    }
}
