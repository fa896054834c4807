//! The route table: host (exact map, wildcard by parent domain, host-less rules) → path → route.

use std::collections::HashMap;
use std::sync::Arc;

use foldhash::fast::RandomState;

use super::Route;
use super::host::{HostPattern, parent};
use super::path::{PathKind, PathMatch, prefix_candidates};
use super::shared::SharedMap;

type Map<V> = HashMap<Arc<str>, V, RandomState>;

/// The routes of one host: exact paths and prefixes, each a hash map.
#[derive(Clone, Debug, Default)]
pub struct HostRoutes {
    exact: Map<Arc<Route>>,
    prefix: Map<Arc<Route>>,
    /// Length of the longest prefix key; longer request-path candidates are skipped.
    longest_prefix: usize,
}

impl HostRoutes {
    /// Longest match wins; an `Exact` path beats a `Prefix` of the same path.
    pub fn find(&self, path: &str) -> Option<&Arc<Route>> {
        if let Some(route) = self.exact.get(path) {
            return Some(route);
        }
        if self.prefix.is_empty() {
            return None;
        }
        prefix_candidates(path)
            .filter(|candidate| candidate.len() <= self.longest_prefix)
            .find_map(|candidate| self.prefix.get(candidate))
    }

    /// Adds a route, or returns the route already holding this path.
    pub fn insert(&mut self, path: &PathMatch, route: Arc<Route>) -> Result<(), Arc<Route>> {
        let map = match path.kind() {
            PathKind::Exact => &mut self.exact,
            PathKind::Prefix => &mut self.prefix,
        };
        if let Some(existing) = map.get(path.key()) {
            return Err(existing.clone());
        }
        map.insert(path.key().into(), route);
        if path.kind() == PathKind::Prefix {
            self.longest_prefix = self.longest_prefix.max(path.key().len());
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.prefix.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn entries(&self) -> impl Iterator<Item = (PathKind, &str, &Arc<Route>)> {
        let exact = self.exact.iter().map(|(k, r)| (PathKind::Exact, &**k, r));
        let prefix = self.prefix.iter().map(|(k, r)| (PathKind::Prefix, &**k, r));
        exact.chain(prefix)
    }
}

/// Immutable once published; lookups are hash probes only. Hosts are shared between tables, so
/// the next table is a cheap clone of the last one with the changed hosts replaced.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    exact: SharedMap<Arc<HostRoutes>>,
    wildcard: SharedMap<Arc<HostRoutes>>,
    any: Option<Arc<HostRoutes>>,
    default: Option<Arc<Route>>,
    /// Number of (host, path) routes.
    routes: usize,
}

/// One row of [`RouteTable::entries`], for `pylon check` and tests.
#[derive(Debug)]
pub struct Entry<'a> {
    pub host: String,
    pub kind: PathKind,
    pub path: &'a str,
    pub route: &'a Arc<Route>,
}

impl RouteTable {
    /// The route for a normalised request host (`None` when the request has no usable host) and
    /// path. The most specific host wins (exact, then wildcard, then host-less rules); if its
    /// paths do not match, the request goes to the default backend.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        let routes = host
            .and_then(|h| {
                self.exact
                    .get(h)
                    .or_else(|| parent(h).and_then(|p| self.wildcard.get(p)))
            })
            .or(self.any.as_ref());
        routes.and_then(|r| r.find(path)).or(self.default.as_ref())
    }

    pub fn default_route(&self) -> Option<&Arc<Route>> {
        self.default.as_ref()
    }

    /// Number of (host, path) routes, plus one for a default backend.
    pub fn len(&self) -> usize {
        self.routes + usize::from(self.default.is_some())
    }

    /// Replaces the routes of `host` (none: the host is no longer served).
    pub fn set_host(&mut self, host: &HostPattern, routes: Option<HostRoutes>) {
        let routes = routes.filter(|r| !r.is_empty()).map(Arc::new);
        self.routes += routes.as_ref().map_or(0, |r| r.len());
        let old = match host {
            HostPattern::Exact(h) => self.exact.set(h.as_str(), routes),
            HostPattern::Wildcard(p) => self.wildcard.set(p.as_str(), routes),
            HostPattern::Any => std::mem::replace(&mut self.any, routes),
        };
        self.routes -= old.map_or(0, |r| r.len());
    }

    /// Replaces the default backend.
    pub fn set_default(&mut self, route: Option<Arc<Route>>) {
        self.default = route;
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every route, sorted by host then path; the default backend last with host `*` and no path.
    pub fn entries(&self) -> Vec<Entry<'_>> {
        let mut rows = Vec::with_capacity(self.len());
        let hosts = self
            .exact
            .iter()
            .map(|(h, r)| (h.to_string(), &**r))
            .chain(self.wildcard.iter().map(|(h, r)| (format!("*.{h}"), &**r)))
            .chain(self.any.iter().map(|r| ("*".to_owned(), &**r)));
        for (host, routes) in hosts {
            for (kind, path, route) in routes.entries() {
                rows.push(Entry {
                    host: host.clone(),
                    kind,
                    path,
                    route,
                });
            }
        }
        rows.sort_by(|a, b| (&a.host, a.path, a.kind).cmp(&(&b.host, b.path, b.kind)));
        rows
    }

    /// Every route, in no particular order; the default backend last.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.exact
            .values()
            .chain(self.wildcard.values())
            .chain(self.any.iter())
            .flat_map(|routes| routes.entries().map(|(_, _, route)| route))
            .chain(self.default.iter())
    }
}

/// Builds a [`RouteTable`]; the first route added for a (host, path) wins.
#[derive(Debug, Default)]
pub struct RouteTableBuilder {
    table: RouteTable,
}

impl RouteTableBuilder {
    /// Adds a route, or returns the route already holding this host and path.
    pub fn add(&mut self, host: &HostPattern, path: &PathMatch, route: Arc<Route>) -> Result<(), Arc<Route>> {
        let table = &mut self.table;
        // Taken out and put back, so that the host's routes are not shared while changed.
        let mut routes = match host {
            HostPattern::Exact(h) => table.exact.set(h.as_str(), None),
            HostPattern::Wildcard(p) => table.wildcard.set(p.as_str(), None),
            HostPattern::Any => table.any.take(),
        }
        .unwrap_or_default();
        let added = Arc::make_mut(&mut routes).insert(path, route);
        let routes = Some(routes);
        match host {
            HostPattern::Exact(h) => drop(table.exact.set(h.as_str(), routes)),
            HostPattern::Wildcard(p) => drop(table.wildcard.set(p.as_str(), routes)),
            HostPattern::Any => table.any = routes,
        }
        table.routes += usize::from(added.is_ok());
        added
    }

    /// Sets the default backend, or returns the one already set.
    pub fn set_default(&mut self, route: Arc<Route>) -> Result<(), Arc<Route>> {
        match &self.table.default {
            Some(existing) => Err(existing.clone()),
            None => {
                self.table.default = Some(route);
                Ok(())
            }
        }
    }

    pub fn build(self) -> RouteTable {
        self.table
    }
}
