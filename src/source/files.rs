//! The files source: YAML manifests under one or more directories, watched for changes.
//!
//! A file that cannot be read or parsed keeps its last good objects; so does an object whose
//! new version is invalid. Everything is reported, nothing stops the source.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::manifest::{self, Document, ObjectId};
use super::{SharedObject, World};
use crate::problem::{Problem, Subject};

/// Directories deeper than this are not descended into (guards against symlink loops).
const MAX_DEPTH: usize = 16;

#[derive(Debug)]
struct FileState {
    stamp: (SystemTime, u64),
    objects: BTreeMap<ObjectId, SharedObject>,
    problems: Vec<Problem>,
}

/// Reads manifest directories and remembers what each file held.
#[derive(Debug)]
pub struct FilesSource {
    dirs: Vec<PathBuf>,
    files: BTreeMap<PathBuf, FileState>,
    /// Directories that could not be read on the last refresh.
    walk_problems: Vec<Problem>,
}

impl FilesSource {
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        Self {
            dirs,
            files: BTreeMap::new(),
            walk_problems: Vec::new(),
        }
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Reads what changed since the last call. Returns whether anything did.
    pub fn refresh(&mut self) -> bool {
        let mut found = Vec::new();
        let mut walk_problems = Vec::new();
        for dir in &self.dirs {
            walk(dir, 0, &mut found, &mut walk_problems);
        }
        found.sort();
        found.dedup();

        let mut changed = false;
        let mut next = BTreeMap::new();
        for path in found {
            let previous = self.files.remove(&path);
            let stamp = match std::fs::metadata(&path) {
                Ok(m) => (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()),
                Err(_) => {
                    // Vanished between listing and reading: treat as removed.
                    changed |= previous.is_some();
                    continue;
                }
            };
            match previous {
                Some(state) if state.stamp == stamp => {
                    next.insert(path, state);
                }
                previous => {
                    changed = true;
                    let state = read_file(&path, stamp, previous);
                    next.insert(path, state);
                }
            }
        }
        changed |= !self.files.is_empty();
        changed |= walk_problems != self.walk_problems;
        self.files = next;
        self.walk_problems = walk_problems;
        changed
    }

    /// The objects of every file, merged in path order. An object defined in two files is taken
    /// from the first and reported in the second.
    pub fn world(&self) -> World {
        let mut world = World {
            problems: self.walk_problems.clone(),
            ..World::default()
        };
        let mut seen: HashMap<&ObjectId, &Path> = HashMap::new();
        for (path, state) in &self.files {
            world.problems.extend(state.problems.iter().cloned());
            for (id, object) in &state.objects {
                if let Some(first) = seen.get(id) {
                    world.problems.push(Problem::error(
                        subject(id),
                        "duplicate_object",
                        format!(
                            "defined again in {} (the definition in {} is used)",
                            path.display(),
                            first.display()
                        ),
                    ));
                    continue;
                }
                seen.insert(id, path);
                world.insert(id.key.clone(), object.clone());
            }
        }
        world
    }

    /// Watches the directories and sends a new [`World`] after each change, debounced. Returns
    /// when `shutdown` turns true.
    pub async fn run(
        mut self,
        tx: watch::Sender<Arc<World>>,
        debounce: Duration,
        rescan_interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let (events_tx, mut events) = mpsc::channel::<()>(1);
        let handler = move |event: notify::Result<notify::Event>| match event {
            Ok(e) if matches!(e.kind, EventKind::Access(_)) => {}
            _ => {
                let _ = events_tx.try_send(());
            }
        };
        let _watcher = match notify::recommended_watcher(handler) {
            Ok(mut w) => {
                for dir in &self.dirs {
                    if let Err(e) = w.watch(dir, RecursiveMode::Recursive) {
                        warn!(dir = %dir.display(), error = %e, "cannot watch directory; relying on periodic rescans");
                    }
                }
                Some(w)
            }
            Err(e) => {
                warn!(error = %e, "file watching unavailable; relying on periodic rescans");
                None
            }
        };
        loop {
            tokio::select! {
                _ = events.recv() => {}
                _ = tokio::time::sleep(rescan_interval) => {}
                _ = shutdown.changed() => return,
            }
            // Wait for a quiet moment, so that an editor's or kubectl's burst of writes is one change.
            while let Ok(Some(())) = tokio::time::timeout(debounce, events.recv()).await {}
            if self.refresh() {
                info!("manifests changed");
                tx.send_replace(Arc::new(self.world()));
            } else {
                debug!("manifests rescanned, no change");
            }
        }
    }
}

fn walk(dir: &Path, depth: usize, found: &mut Vec<PathBuf>, problems: &mut Vec<Problem>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            problems.push(Problem::error(
                Subject::file(dir),
                "unreadable_directory",
                format!("cannot read directory: {e}"),
            ));
            return;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Hidden files: editor swap files, and Kubernetes ConfigMap volumes' `..data` internals
        // (their files are also reachable through the visible symlinks).
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows symlinks.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if depth < MAX_DEPTH {
                walk(&path, depth + 1, found, problems);
            }
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            found.push(path);
        }
    }
}

fn read_file(path: &Path, stamp: (SystemTime, u64), previous: Option<FileState>) -> FileState {
    let previous_objects = previous.map(|p| p.objects).unwrap_or_default();
    let keep = |problem: Problem| FileState {
        stamp,
        objects: previous_objects.clone(),
        problems: vec![problem],
    };
    let text = match std::fs::read(path).map(String::from_utf8) {
        Ok(Ok(text)) => text,
        Ok(Err(_)) => {
            return keep(Problem::error(
                Subject::file(path),
                "unreadable_file",
                keeping("file is not UTF-8", &previous_objects),
            ));
        }
        Err(e) => {
            return keep(Problem::error(
                Subject::file(path),
                "unreadable_file",
                keeping(&format!("cannot read file: {e}"), &previous_objects),
            ));
        }
    };
    let documents = match manifest::parse(&text) {
        Ok(docs) => docs,
        Err(e) => {
            return keep(Problem::error(
                Subject::file(path),
                "invalid_yaml",
                keeping(&format!("not valid YAML: {e}"), &previous_objects),
            ));
        }
    };

    let mut objects = BTreeMap::new();
    let mut problems = Vec::new();
    for doc in documents {
        match doc {
            Document::Object {
                id,
                object,
                unknown_fields,
            } => {
                for field in unknown_fields {
                    problems.push(Problem::warning(
                        subject(&id),
                        "unknown_field",
                        format!("unknown field {field} (in {}); it is ignored", path.display()),
                    ));
                }
                objects.insert(id, SharedObject::from(*object));
            }
            Document::Invalid { id, reason } => {
                let kept = previous_objects.get(&id);
                let message = match kept {
                    Some(_) => format!(
                        "invalid (in {}): {reason}; the last good version stays in service",
                        path.display()
                    ),
                    None => format!("invalid (in {}): {reason}", path.display()),
                };
                problems.push(Problem::error(subject(&id), "invalid_object", message));
                if let Some(old) = kept {
                    objects.insert(id, old.clone());
                }
            }
            Document::Unidentified { index, reason } => problems.push(Problem::error(
                Subject::file(path),
                "invalid_object",
                format!("document {}: {reason}", index + 1),
            )),
            Document::Ignored { api_version, kind } => {
                debug!(file = %path.display(), %api_version, %kind, "kind not read by pylon, ignored");
            }
        }
    }
    FileState {
        stamp,
        objects,
        problems,
    }
}

fn keeping(reason: &str, previous: &BTreeMap<ObjectId, SharedObject>) -> String {
    if previous.is_empty() {
        reason.to_owned()
    } else {
        format!(
            "{reason}; its last good version ({} objects) stays in service",
            previous.len()
        )
    }
}

fn subject(id: &ObjectId) -> Subject {
    Subject::object(id.kind.name(), &id.key.namespace, &id.key.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::ObjectKey;

    const INGRESS: &str = "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: app}\nspec: {rules: [{host: a.example.com}]}\n";

    #[test]
    fn keeps_the_last_good_version_of_a_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.yaml");
        std::fs::write(&file, INGRESS).unwrap();
        let mut source = FilesSource::new(vec![dir.path().to_owned()]);
        assert!(source.refresh());
        assert_eq!(source.world().ingresses.len(), 1);
        assert!(!source.refresh(), "nothing changed");

        std::fs::write(&file, "spec: [unclosed\n and more").unwrap();
        assert!(source.refresh());
        let world = source.world();
        assert_eq!(world.ingresses.len(), 1, "last good version kept");
        assert_eq!(world.problems.len(), 1);
        assert_eq!(world.problems[0].reason, "invalid_yaml");
        assert!(world.problems[0].message.contains("stays in service"));

        std::fs::remove_file(&file).unwrap();
        assert!(source.refresh());
        assert!(source.world().ingresses.is_empty());
    }

    #[test]
    fn keeps_the_last_good_version_of_an_invalid_object() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.yml");
        std::fs::write(&file, INGRESS).unwrap();
        let mut source = FilesSource::new(vec![dir.path().to_owned()]);
        source.refresh();
        std::fs::write(
            &file,
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: app}\nspec: {rules: 7}\n",
        )
        .unwrap();
        source.refresh();
        let world = source.world();
        let kept = &world.ingresses[&ObjectKey::new("default", "app")];
        assert_eq!(
            kept.spec.as_ref().unwrap().rules.as_ref().unwrap()[0]
                .host
                .as_deref(),
            Some("a.example.com")
        );
        assert_eq!(world.problems[0].reason, "invalid_object");
    }

    #[test]
    fn duplicates_are_reported_and_the_first_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), INGRESS).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(
            dir.path().join("sub/b.yaml"),
            INGRESS.replace("a.example.com", "b.example.com"),
        )
        .unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), "not: [yaml").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let mut source = FilesSource::new(vec![dir.path().to_owned()]);
        source.refresh();
        let world = source.world();
        assert_eq!(world.ingresses.len(), 1);
        let rules = world.ingresses[&ObjectKey::new("default", "app")]
            .spec
            .clone()
            .unwrap()
            .rules
            .unwrap();
        assert_eq!(rules[0].host.as_deref(), Some("a.example.com"));
        assert_eq!(world.problems.len(), 1);
        assert_eq!(world.problems[0].reason, "duplicate_object");
    }
}
