//! The files source: YAML manifests under one or more directories, watched for changes.
//!
//! A file that cannot be read or parsed keeps its last good objects; so does an object whose
//! new version is invalid. Everything is reported, nothing stops the source.
//!
//! Changes are incremental: the watcher names the files that changed, only those are read
//! again, and the [`World`] is updated in place, so a change costs the same with ten files as
//! with ten thousand. Anything the watcher cannot describe file by file (a directory created,
//! moved or removed; a Kubernetes ConfigMap volume swapping its `..data` link; a lost event)
//! falls back to a full rescan. A periodic timer checks every file too, a tenth of them at a
//! time, in case an event was lost without notice.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use super::manifest::{self, Document, ObjectId};
use super::{SharedObject, World};
use crate::problem::{Problem, Subject};

/// Directories deeper than this are not descended into (guards against symlink loops).
const MAX_DEPTH: usize = 16;

/// More changed paths than this between two refreshes are handled by one full rescan.
const MAX_PENDING_PATHS: usize = 4096;

/// The periodic rescan checks the files in this many steps over its interval.
const SWEEP_STEPS: u32 = 10;

/// However often files keep changing, a refresh happens at least this often.
const MAX_DEBOUNCE_WAIT: Duration = Duration::from_secs(1);

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
    /// By path, in byte order: `Path`'s own order compares component by component, which
    /// took 15 % of the start's instructions with 10 000 files.
    files: BTreeMap<OsString, FileState>,
    /// The files above with problems: a new world visits only these for its problems.
    troubled: BTreeSet<PathBuf>,
    /// Directories that could not be read on the last full scan.
    walk_problems: Vec<Problem>,
    /// The files defining each object, in path order: the first one is used.
    definers: HashMap<ObjectId, BTreeSet<PathBuf>>,
    /// Objects defined by more than one file.
    duplicates: BTreeSet<ObjectId>,
    /// The objects in use, kept up to date file by file (without problems).
    world: World,
    /// Where the periodic rescan's next step starts; `None`: a new round.
    sweep_from: Option<OsString>,
}

/// What the watcher reported since the last refresh.
#[derive(Debug, Default)]
struct Pending {
    paths: HashSet<PathBuf>,
    rescan: bool,
}

impl FilesSource {
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        Self {
            // One spelling per directory ("a//b/" is "a/b"): files are known by their paths'
            // bytes.
            dirs: dirs.iter().map(|dir| dir.components().collect()).collect(),
            files: BTreeMap::new(),
            troubled: BTreeSet::new(),
            walk_problems: Vec::new(),
            definers: HashMap::new(),
            duplicates: BTreeSet::new(),
            world: World::default(),
            sweep_from: None,
        }
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Scans every directory and reads what changed since the last call. Returns whether
    /// anything did.
    pub fn refresh(&mut self) -> bool {
        let (new, mut changed) = self.walk_all();
        let known: Vec<PathBuf> = self.files.keys().map(PathBuf::from).collect();
        for path in known.iter().chain(&new) {
            changed |= self.reread(path);
        }
        changed
    }

    /// One step of the periodic rescan, which checks `1 / steps` of the files at a time: with
    /// many files, checking them all at once (a `stat` each, about 2 µs) would hold up a change
    /// that arrives meanwhile, and take the proxy's CPU in one block. The step that starts a
    /// round also walks the directories for files that appeared or went. Returns whether
    /// anything changed.
    pub fn sweep(&mut self, steps: usize) -> bool {
        let mut changed = false;
        let from: OsString = match self.sweep_from.take() {
            Some(from) => from,
            None => {
                let (new, walked) = self.walk_all();
                changed = walked;
                for path in &new {
                    changed |= self.reread(path);
                }
                OsString::new()
            }
        };
        // The stamps are compared in place: only the files that changed are looked up again.
        let chunk = self.files.len().div_ceil(steps.max(1)).max(1);
        let mut stale = Vec::new();
        for (n, (path, state)) in self.files.range(from..).enumerate() {
            if n == chunk {
                self.sweep_from = Some(path.clone());
                break;
            }
            if stamp(Path::new(path)) != Some(state.stamp) {
                stale.push(PathBuf::from(path));
            }
        }
        for path in &stale {
            changed |= self.reread(path);
        }
        changed
    }

    /// Walks the directories and forgets the known files that are gone. Returns the manifest
    /// files found that are not known yet, and whether the files gone, or a directory's
    /// readability, changed anything.
    ///
    /// Paths are matched by their bytes, hashed: with 10 000 files, sorting them and looking
    /// them up in path order (`Path` compares component by component) took 25–35 ms. The
    /// directories are spelled one way (see [`new`](Self::new)), so each file's path is too.
    fn walk_all(&mut self) -> (Vec<PathBuf>, bool) {
        let mut found = Vec::new();
        let mut walk_problems = Vec::new();
        for dir in &self.dirs {
            walk(dir, 0, &mut found, &mut walk_problems);
        }
        let mut changed = walk_problems != self.walk_problems;
        self.walk_problems = walk_problems;

        let index: HashMap<&OsStr, usize> = found
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_os_str(), i))
            .collect();
        let mut known = vec![false; found.len()];
        let mut gone = Vec::new();
        for path in self.files.keys() {
            match index.get(path.as_os_str()) {
                Some(&i) => known[i] = true,
                None => gone.push(PathBuf::from(path)),
            }
        }
        drop(index);
        for path in gone {
            changed |= self.reread(&path);
        }
        let mut new: Vec<PathBuf> = found
            .into_iter()
            .zip(known)
            .filter_map(|(path, known)| (!known).then_some(path))
            .collect();
        // (A directory listed twice, or inside another listed one.)
        new.sort_unstable_by(|a, b| a.as_os_str().cmp(b.as_os_str()));
        new.dedup_by(|a, b| a.as_os_str() == b.as_os_str());
        (new, changed)
    }

    /// Reads the files at `paths` again (the watcher reported them). Returns whether anything
    /// changed, or `None` when the paths do not describe the change file by file and a full
    /// [`refresh`](Self::refresh) is needed.
    pub fn refresh_paths<'p>(&mut self, paths: impl IntoIterator<Item = &'p Path>) -> Option<bool> {
        let mut manifests = Vec::new();
        for path in paths {
            let Some(dir) = self.dirs.iter().find(|d| path.starts_with(d)) else {
                continue;
            };
            // Follows symlinks, like the full scan.
            match std::fs::metadata(path) {
                // A directory appeared or changed (also a ConfigMap volume's `..data` link).
                Ok(meta) if meta.is_dir() => return None,
                Ok(_) => {}
                // Gone: if it was a directory holding manifests, rescan.
                Err(_) => {
                    // The files under it follow it in byte order, after its separator.
                    let mut under = path.as_os_str().to_owned();
                    under.push(std::path::MAIN_SEPARATOR_STR);
                    if self
                        .files
                        .range(under.clone()..)
                        .next()
                        .is_some_and(|(p, _)| p.as_encoded_bytes().starts_with(under.as_encoded_bytes()))
                    {
                        return None;
                    }
                }
            }
            let Ok(relative) = path.strip_prefix(dir) else {
                continue;
            };
            let depth = relative.components().count();
            let hidden = relative
                .components()
                .any(|c| c.as_os_str().to_string_lossy().starts_with('.'));
            if hidden || depth > MAX_DEPTH + 1 || !is_manifest_name(path) {
                continue;
            }
            manifests.push(path.to_path_buf());
        }
        let mut changed = false;
        for path in manifests {
            changed |= self.reread(&path);
        }
        Some(changed)
    }

    /// Brings the file at `path` up to date (read again if its stamp changed, forgotten if it
    /// is gone). Returns whether it changed.
    fn reread(&mut self, path: &Path) -> bool {
        let stamp = stamp(path);
        if let (Some(stamp), Some(state)) = (stamp, self.files.get(path.as_os_str()))
            && state.stamp == stamp
        {
            return false;
        }
        let previous = self.files.remove(path.as_os_str());
        let next = match (stamp, previous) {
            (None, None) => return false,
            (None, Some(state)) => {
                self.forget(path, &state);
                None
            }
            (Some(stamp), previous) => {
                let state = read_file(path, stamp, previous.as_ref().map(|p| &p.objects));
                if let Some(previous) = &previous {
                    self.forget(path, previous);
                }
                Some(state)
            }
        };
        if next.as_ref().is_some_and(|state| !state.problems.is_empty()) {
            self.troubled.insert(path.to_path_buf());
        } else {
            self.troubled.remove(path);
        }
        if let Some(state) = next {
            let ids: Vec<ObjectId> = state.objects.keys().cloned().collect();
            self.files.insert(path.as_os_str().to_owned(), state);
            for id in ids {
                self.definers
                    .entry(id.clone())
                    .or_default()
                    .insert(path.to_path_buf());
                self.settle(&id);
            }
        }
        true
    }

    /// Drops what `state` (the old content of `path`) defined.
    fn forget(&mut self, path: &Path, state: &FileState) {
        for id in state.objects.keys() {
            if let Some(paths) = self.definers.get_mut(id) {
                paths.remove(path);
            }
            self.settle(id);
        }
    }

    /// Puts the version of `id` from its first defining file into the world (or removes it).
    fn settle(&mut self, id: &ObjectId) {
        let first = self
            .definers
            .get(id)
            .and_then(|paths| Some((paths.first()?, paths.len())));
        match first {
            None => {
                self.definers.remove(id);
                self.duplicates.remove(id);
                self.world.remove(id);
            }
            Some((path, count)) => {
                if count > 1 {
                    self.duplicates.insert(id.clone());
                } else {
                    self.duplicates.remove(id);
                }
                if let Some(object) = self.files.get(path.as_os_str()).and_then(|f| f.objects.get(id)) {
                    self.world.insert(id.key.clone(), object.clone());
                }
            }
        }
    }

    /// The objects of every file. An object defined in two files is taken from the first in
    /// path order and reported in the others.
    pub fn world(&self) -> World {
        let mut world = self.world.clone();
        world.problems = self.walk_problems.clone();
        for state in self
            .troubled
            .iter()
            .filter_map(|path| self.files.get(path.as_os_str()))
        {
            world.problems.extend(state.problems.iter().cloned());
        }
        for id in &self.duplicates {
            let mut paths = self.definers[id].iter();
            let Some(first) = paths.next() else { continue };
            for path in paths {
                world.problems.push(Problem::error(
                    subject(id),
                    "duplicate_object",
                    format!(
                        "defined again in {} (the definition in {} is used)",
                        path.display(),
                        first.display()
                    ),
                ));
            }
        }
        world
    }

    /// Watches the directories and sends a new [`World`] after each change, debounced: once no
    /// file has changed for `debounce` (or at most a second after the first change). Returns
    /// when `shutdown` turns true.
    pub async fn run(
        mut self,
        tx: watch::Sender<Arc<World>>,
        debounce: Duration,
        rescan_interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let pending = Arc::new(Mutex::new(Pending::default()));
        let wake = Arc::new(Notify::new());
        let handler = {
            let (pending, wake) = (pending.clone(), wake.clone());
            move |event: notify::Result<notify::Event>| {
                let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
                match event {
                    Ok(e) if matches!(e.kind, EventKind::Access(_)) => return,
                    Ok(e) if !e.need_rescan() && !e.paths.is_empty() => {
                        p.paths.extend(e.paths);
                        if p.paths.len() > MAX_PENDING_PATHS {
                            p.rescan = true;
                            p.paths.clear();
                        }
                    }
                    _ => p.rescan = true,
                }
                drop(p);
                wake.notify_one();
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
        // The steps keep their own schedule: file events do not push the next one back, so a
        // steady stream of events (a busy directory) cannot hold off the safety net. Nor does
        // a change wait for a step: they take turns.
        let step = rescan_interval / SWEEP_STEPS;
        let mut next_step = tokio::time::Instant::now() + step;
        loop {
            let periodic = tokio::select! {
                () = wake.notified() => false,
                () = tokio::time::sleep_until(next_step) => true,
                _ = shutdown.changed() => return,
            };
            let (changed, files, rescan, started) = if periodic {
                next_step = tokio::time::Instant::now() + step;
                let started = Instant::now();
                (self.sweep(SWEEP_STEPS as usize), 0, false, started)
            } else {
                // Wait for a quiet moment, so that an editor's burst of writes is one change.
                let first = Instant::now();
                while first.elapsed() < MAX_DEBOUNCE_WAIT
                    && tokio::time::timeout(debounce, wake.notified()).await.is_ok()
                {}
                let Pending { paths, rescan } =
                    std::mem::take(&mut *pending.lock().unwrap_or_else(|e| e.into_inner()));
                let started = Instant::now();
                let changed = if rescan {
                    self.refresh()
                } else {
                    self.refresh_paths(paths.iter().map(PathBuf::as_path))
                        .unwrap_or_else(|| self.refresh())
                };
                (changed, paths.len(), rescan, started)
            };
            let read_ms = started.elapsed().as_secs_f64() * 1e3;
            if changed {
                let world = Arc::new(self.world());
                info!(files, full_scan = rescan, periodic, read_ms, "manifests changed");
                tx.send_replace(world);
            } else {
                debug!(periodic, read_ms, "manifests rescanned, no change");
            }
        }
    }
}

/// What tells a file's versions apart: its modification time and size (symlinks followed).
/// `None`: gone, or a directory.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    std::fs::metadata(path)
        .ok()
        .filter(|m| !m.is_dir())
        .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
}

fn is_manifest_name(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "yaml" || e == "yml")
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
        // The directory entry's own type saves a stat per file; symlinks are followed.
        let is_dir = match entry.file_type() {
            Ok(t) if t.is_file() => false,
            Ok(t) if t.is_dir() => true,
            _ => match std::fs::metadata(&path) {
                Ok(meta) => meta.is_dir(),
                Err(_) => continue,
            },
        };
        if is_dir {
            if depth < MAX_DEPTH {
                walk(&path, depth + 1, found, problems);
            }
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            found.push(path);
        }
    }
}

fn read_file(
    path: &Path,
    stamp: (SystemTime, u64),
    previous: Option<&BTreeMap<ObjectId, SharedObject>>,
) -> FileState {
    let empty = BTreeMap::new();
    let previous_objects = previous.unwrap_or(&empty);
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
                keeping("file is not UTF-8", previous_objects),
            ));
        }
        Err(e) => {
            return keep(Problem::error(
                Subject::file(path),
                "unreadable_file",
                keeping(&format!("cannot read file: {e}"), previous_objects),
            ));
        }
    };
    let documents = match manifest::parse(&text) {
        Ok(docs) => docs,
        Err(e) => {
            return keep(Problem::error(
                Subject::file(path),
                "invalid_yaml",
                keeping(&format!("not valid YAML: {e}"), previous_objects),
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

    /// The first host of Ingress `default/name`.
    fn host_of(world: &World, name: &str) -> Option<String> {
        let ing = world.ingresses.get(&ObjectKey::new("default", name))?;
        ing.spec.as_ref()?.rules.as_ref()?[0].host.clone()
    }

    #[test]
    fn the_periodic_rescan_checks_a_part_of_the_files_per_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(format!("{name}.yaml"));
        for i in 0..20 {
            std::fs::write(path(&format!("i{i}")), INGRESS.replace("app", &format!("app{i}"))).unwrap();
        }
        let mut source = FilesSource::new(vec![dir.path().to_owned()]);
        assert!(source.refresh());

        // Changes no watcher reported: one file edited, one added, one removed.
        let edited = INGRESS
            .replace("app", "app13")
            .replace("a.example.com", "changed.example.com");
        std::fs::write(path("i13"), edited).unwrap();
        std::fs::write(path("new"), INGRESS.replace("app", "new")).unwrap();
        std::fs::remove_file(path("i5")).unwrap();

        // In path order (i0, i1, i10, i11, i12 | i13 …), five files a step out of 20. The step
        // that starts a round finds the added and the removed file.
        assert!(source.sweep(4));
        assert!(
            source
                .world()
                .ingresses
                .contains_key(&ObjectKey::new("default", "new"))
        );
        assert!(
            !source
                .world()
                .ingresses
                .contains_key(&ObjectKey::new("default", "app5"))
        );
        assert_eq!(
            host_of(&source.world(), "app13").as_deref(),
            Some("a.example.com"),
            "not checked yet"
        );
        assert!(source.sweep(4), "the second step reads i13 again");
        assert_eq!(
            host_of(&source.world(), "app13").as_deref(),
            Some("changed.example.com")
        );
        assert!(!source.sweep(4));
        assert!(!source.sweep(4));
        assert!(source.sweep_from.is_none(), "four steps make a round");
        assert!(!source.sweep(4), "a new round, nothing changed");
        assert_eq!(source.world().ingresses.len(), 20);
    }

    #[tokio::test]
    async fn the_periodic_steps_run_while_file_events_keep_coming() {
        let dir = tempfile::tempdir().unwrap();
        let (app, busy) = (dir.path().join("app.yaml"), dir.path().join("busy.yaml"));
        std::fs::write(&app, INGRESS).unwrap();
        std::fs::write(&busy, INGRESS.replace("app", "busy")).unwrap();
        let mut source = FilesSource::new(vec![dir.path().to_owned()]);
        source.refresh();
        // Edited before the watcher starts: only the periodic steps can find this.
        std::fs::write(&app, INGRESS.replace("a.example.com", "edited.example.com")).unwrap();

        let (tx, mut rx) = watch::channel(Arc::new(source.world()));
        let (stop, stopped) = watch::channel(false);
        let interval = Duration::from_millis(200);
        let run = tokio::spawn(source.run(tx, Duration::from_millis(1), interval, stopped));
        // A file event every 5 ms, far more often than a step (20 ms).
        let writer = tokio::spawn(async move {
            loop {
                std::fs::write(&busy, INGRESS.replace("app", "busy")).unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let found = tokio::time::timeout(Duration::from_secs(5), async {
            while host_of(&rx.borrow_and_update(), "app").as_deref() != Some("edited.example.com") {
                rx.changed().await.unwrap();
            }
        })
        .await;
        writer.abort();
        stop.send_replace(true);
        run.await.unwrap();
        assert!(
            found.is_ok(),
            "the edit was not found within 5 s (25 rescan intervals)"
        );
    }

    #[test]
    fn reads_only_the_files_the_watcher_names() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        let b = dir.path().join("b.yaml");
        std::fs::write(&a, INGRESS).unwrap();
        let mut source = FilesSource::new(vec![dir.path().to_owned()]);
        assert!(source.refresh());

        // A new file, and an editor's temporary file that is already gone.
        std::fs::write(&b, INGRESS.replace("app", "other")).unwrap();
        let tmp = dir.path().join(".b.yaml.tmp");
        assert_eq!(source.refresh_paths([b.as_path(), tmp.as_path()]), Some(true));
        assert_eq!(source.world().ingresses.len(), 2);

        // A changed file the watcher did not name is not read; the next full scan reads it.
        std::fs::write(&a, INGRESS.replace("a.example.com", "changed.example.com")).unwrap();
        assert_eq!(source.refresh_paths([b.as_path()]), Some(false));
        assert_eq!(host_of(&source.world(), "app").as_deref(), Some("a.example.com"));
        assert_eq!(source.refresh_paths([a.as_path()]), Some(true));
        assert_eq!(
            host_of(&source.world(), "app").as_deref(),
            Some("changed.example.com")
        );

        std::fs::remove_file(&b).unwrap();
        assert_eq!(source.refresh_paths([b.as_path()]), Some(true));
        assert_eq!(source.world().ingresses.len(), 1);
        assert_eq!(source.refresh_paths([b.as_path()]), Some(false), "already gone");
        assert!(!source.refresh(), "a full scan agrees");
    }

    #[test]
    fn directories_and_links_to_them_need_a_full_scan() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("a.yaml"), INGRESS).unwrap();
        // Between "sub" and "sub/a.yaml" in byte order.
        let sibling = dir.path().join("sub-old");
        std::fs::create_dir(&sibling).unwrap();
        std::fs::write(sibling.join("b.yaml"), INGRESS.replace("app", "other")).unwrap();
        let mut source = FilesSource::new(vec![dir.path().to_owned()]);
        assert_eq!(source.refresh_paths([sub.as_path()]), None, "directory appeared");
        assert!(source.refresh());
        assert_eq!(source.world().ingresses.len(), 2);

        // A ConfigMap volume swaps its hidden `..data` link to a new directory.
        let data = dir.path().join("..data");
        std::os::unix::fs::symlink(&sub, &data).unwrap();
        assert_eq!(source.refresh_paths([data.as_path()]), None);

        // A directory of manifests moved away.
        std::fs::rename(&sub, dir.path().join(".moved")).unwrap();
        assert_eq!(source.refresh_paths([sub.as_path()]), None);
        assert!(source.refresh());
        assert_eq!(source.world().ingresses.len(), 1);
    }

    #[test]
    fn a_duplicate_takes_over_when_the_first_definition_goes() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        let b = dir.path().join("b.yaml");
        std::fs::write(&a, INGRESS).unwrap();
        std::fs::write(&b, INGRESS.replace("a.example.com", "b.example.com")).unwrap();
        let mut source = FilesSource::new(vec![dir.path().to_owned()]);
        source.refresh();
        assert_eq!(host_of(&source.world(), "app").as_deref(), Some("a.example.com"));
        assert_eq!(source.world().problems[0].reason, "duplicate_object");

        std::fs::remove_file(&a).unwrap();
        assert_eq!(source.refresh_paths([a.as_path()]), Some(true));
        let world = source.world();
        assert_eq!(host_of(&world, "app").as_deref(), Some("b.example.com"));
        assert!(world.problems.is_empty(), "{:?}", world.problems);

        std::fs::remove_file(&b).unwrap();
        assert_eq!(source.refresh_paths([b.as_path()]), Some(true));
        assert!(source.world().ingresses.is_empty());
    }
}
