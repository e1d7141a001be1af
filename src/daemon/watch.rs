//! File-system events under the manifest directory, turned into debounced hints.
//!
//! [`Watcher::spawn`] watches DIR (recursively, new sub-folders included) and
//! sends one [`Trigger::FilesChanged`](super::scheduler::Trigger::FilesChanged) after `debounce` without further events,
//! with the paths the events named ([`ChangedFiles`]; "everything" when DIR or
//! a symlink on its path was swapped). A hint only marks work to do: the pass
//! re-reads the whole directory (the paths say which stages' backoff to
//! forget), and the periodic pass repairs anything the events missed. Nothing polls:
//! when nothing changes, the watcher's task sleeps on its channels.
//!
//! What is watched, and why:
//! - **DIR's real directory, recursively.** `notify` adds a watch for every
//!   sub-folder created later (a file created in a brand-new folder before its
//!   watch exists is still covered: the folder's creation is itself a hint, and
//!   the pass reads the folder).
//! - **DIR's parent, for DIR's own name.** DIR may be deleted and recreated (a
//!   checkout, `rm -rf && cp -r`), or be a symlink replaced by renaming another
//!   symlink over it (git-sync's atomic swap). Either way the old watch is on a
//!   directory that no longer is DIR. An event on DIR's name in its parent makes
//!   the watcher re-resolve DIR and watch the new target.
//! - **The parent of every symlink on DIR's path**, for the same reason
//!   (`/git/current/stages` where `current` is swapped).
//! - **The parent directories of the extra paths** ([`Watcher::set_extra_paths`],
//!   the secret files `!File` references), both as written and where their
//!   symlinks lead, filtered to those files and to `..`-prefixed names (the
//!   Kubernetes Secret/ConfigMap volume layout swaps a `..data` symlink).
//!
//! What is a hint under DIR is decided by the loader's own rule
//! ([`manifest::is_manifest_name`], [`manifest::walk_reaches`]): an event on a
//! manifest the loader reads (`*.yaml`, `*.yml`, no hidden name on the way),
//! and an event on a folder it enters that holds such manifests when the
//! burst's debounce ends (or that is gone by then). Anything else (a log file,
//! an editor's swap file, `.git` internals, `.github/workflows/ci.yml`, an
//! empty folder) is not: a daemon whose log is written inside DIR would
//! otherwise run a pass per log line, each pass writing the lines of the next.
//!
//! One exception for a Kubernetes ConfigMap volume: its files are symlinks into
//! the hidden `..data/`, which the kubelet swaps. A `..`-named folder holding
//! manifests is a hint, so the swap is, though the loader reads the files
//! through the visible links only.
//!
//! Traps:
//! - **A folder is looked into when the debounce ends, not when its event
//!   arrives.** `notify` watches a new sub-folder only after delivering its
//!   creation, so a manifest written into it before then has no event of its
//!   own. By the end of the debounce the watch exists: a manifest written
//!   before it is found by looking ([`MAX_FOLDER_ENTRIES`] at most), one
//!   written after it has its own event. A folder renamed away is not
//!   recognised as one (its path no longer exists); the periodic pass covers
//!   it.
//! - **The watcher's own trace lines** (`notify`'s per-event lines and ours,
//!   target [`EVENT_LOG_TARGET`]) are off unless `RUST_LOG` names them (see
//!   `crate::logging`): with the log written to a watched folder (DIR's parent
//!   is one), each such line is an event that is logged again, without end.
//! - **Our own reads are events too**: notify's inotify backend reports opens
//!   and read-only closes. They are ignored; otherwise every pass, by reading
//!   the directory, would trigger the next one.
//! - **A vanished DIR is a hint like any other.** The watcher does not decide
//!   that the source is unavailable; the pass does, and must not take a missing
//!   directory as "nothing is desired".
//! - **Event paths are real paths** (symlinks on the way resolved), because the
//!   watches are put on canonical directories.
//! - **When a directory to watch does not exist** (DIR's parent, a secret's
//!   folder), the watcher looks again every [`RETRY_MISSING`] until it does: the
//!   only timer, and only in that degraded state.
//! - **A symlink chain** (a link whose target is itself a swapped link
//!   elsewhere) is resolved at each rebuild, but only the links on DIR's own
//!   path are watched for swaps; the periodic pass covers the rest.
//! - **inotify limits**: each directory costs one watch
//!   (`fs.inotify.max_user_watches`); running out is logged as a warning and the
//!   periodic pass keeps working.
//! - **Re-watching walks the tree** (notify adds one watch per folder) on the
//!   watcher's task, synchronously. That is milliseconds for thousands of
//!   manifests, and it happens only at start, after a swap and when the
//!   extra paths change.
//! - **Why not `notify-debouncer-full`:** its debouncer thread wakes every
//!   debounce/4 for the life of the process (a polling loop), and its
//!   rename and file-id bookkeeping buys nothing when an event is only a hint.
//!   The debounce here is a timer armed by the first event of a burst.
//! - A steady stream of events (a log file written inside DIR) would postpone
//!   the hint forever; it is sent at the latest [`MAX_WAIT_FACTOR`] × debounce
//!   after the first event.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::scheduler::{ChangedFiles, TriggerSender};
use crate::manifest;

/// How often to look again for a directory to watch that does not exist yet.
pub(crate) const RETRY_MISSING: Duration = Duration::from_secs(5);

/// A hint is sent at the latest this many debounce periods after the first
/// event of a burst, even if events keep coming.
pub(crate) const MAX_WAIT_FACTOR: u32 = 10;

/// How many changed paths a debug log line names.
const SAMPLE_PATHS: usize = 5;

/// How many changed folders a burst remembers to look into.
const SAMPLE_FOLDERS: usize = 1000;

/// How many entries a look into changed folders reads, at most, per burst;
/// beyond that the folders are taken to hold manifests.
pub(crate) const MAX_FOLDER_ENTRIES: usize = 10_000;

/// The log target of the per-event trace line. Logged only when `RUST_LOG`
/// names it: see the module's traps.
pub(crate) const EVENT_LOG_TARGET: &str = "stagesync::watch::events";

/// The watcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot start watching files: {0}")]
    Init(#[source] notify::Error),
    #[error("cannot make {path} absolute: {source}")]
    Path {
        path: PathBuf,
        source: std::io::Error,
    },
}

enum Command {
    SetExtraPaths(Vec<PathBuf>),
}

/// Watches DIR (and extra files) and sends hints; stops when dropped.
#[derive(Debug)]
pub struct Watcher {
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watcher {
    /// Starts watching `dir` (which need not exist yet). Hints go to
    /// `triggers` after `debounce` of quiet. Must be called inside a tokio
    /// runtime.
    pub fn spawn(
        dir: &Path,
        debounce: Duration,
        triggers: TriggerSender,
    ) -> Result<Watcher, WatchError> {
        let dir = std::path::absolute(dir).map_err(|source| WatchError::Path {
            path: dir.to_owned(),
            source,
        })?;
        let (event_tx, events) = mpsc::unbounded_channel();
        let notify = notify::recommended_watcher(move |event| {
            // The receiver only goes away with the task; nothing to do then.
            let _ = event_tx.send(event);
        })
        .map_err(WatchError::Init)?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let mut state = WatchTask {
            dir,
            extras: Vec::new(),
            debounce,
            triggers,
            notify,
            events,
            commands: command_rx,
            layout: Layout::default(),
            watched: BTreeMap::new(),
            degraded_since: None,
            pending: None,
        };
        state.rebuild(true);
        let task = tokio::spawn(state.run());
        Ok(Watcher { commands, task })
    }

    /// Also watches these files (absolute, or relative to the working
    /// directory), replacing the previous list. Changing them sends hints like
    /// changes under DIR. Setting the same list again costs nothing.
    pub fn set_extra_paths(&self, paths: Vec<PathBuf>) {
        let paths = paths
            .into_iter()
            .map(|p| std::path::absolute(&p).unwrap_or(p))
            .collect();
        // Fails only when the task has ended, and then there is nothing to update.
        let _ = self.commands.send(Command::SetExtraPaths(paths));
    }
}

/// What is watched, resolved from the file system at one moment.
#[derive(Debug, Default, PartialEq, Eq)]
struct Layout {
    /// DIR's real directory, when it exists.
    root: Option<PathBuf>,
    /// Paths (real parent + name) whose events mean "re-resolve": DIR itself
    /// and the symlinks on its path.
    anchors: Vec<PathBuf>,
    extras: Vec<ExtraFile>,
    /// Directories to watch.
    dirs: BTreeMap<PathBuf, Mode>,
    /// Directories that should be watched but do not exist.
    missing: Vec<PathBuf>,
}

#[derive(Debug, PartialEq, Eq)]
struct ExtraFile {
    /// The file as named, under its real parent directory.
    named: PathBuf,
    /// Where it leads, when it exists.
    target: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Recursive,
    Flat,
}

impl Layout {
    /// Resolves `dir` and `extras` against the file system.
    fn resolve(dir: &Path, extras: &[PathBuf]) -> Layout {
        let mut layout = Layout {
            root: std::fs::canonicalize(dir).ok().filter(|p| p.is_dir()),
            ..Layout::default()
        };
        if let Some(root) = &layout.root {
            layout.dirs.insert(root.clone(), Mode::Recursive);
        }
        for path in dir.ancestors() {
            let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            if (path == dir || is_link)
                && let Some(named) = layout.watch_parent_of(path)
            {
                layout.anchors.push(named);
            }
        }
        for file in extras {
            let Some(named) = layout.watch_parent_of(file) else {
                continue;
            };
            let target = std::fs::canonicalize(file).ok();
            if let Some(parent) = target.as_deref().and_then(Path::parent) {
                layout.watch_flat(parent.to_owned());
            }
            layout.extras.push(ExtraFile { named, target });
        }
        layout
    }

    /// Watches the real parent of `path`; returns `path` as events will name it.
    fn watch_parent_of(&mut self, path: &Path) -> Option<PathBuf> {
        let (parent, name) = (path.parent()?, path.file_name()?);
        match std::fs::canonicalize(parent) {
            Ok(real) => {
                let named = real.join(name);
                self.watch_flat(real);
                Some(named)
            }
            Err(_) => {
                self.missing.push(parent.to_owned());
                None
            }
        }
    }

    fn watch_flat(&mut self, dir: PathBuf) {
        // Inside the recursive root it is watched already; a second, flat
        // watch on the same directory would replace the recursive one.
        if self.root.as_ref().is_some_and(|root| dir.starts_with(root)) {
            return;
        }
        self.dirs.entry(dir).or_insert(Mode::Flat);
    }

    /// What an event means for us.
    fn classify(&self, event: &Event) -> Relevance {
        if event.need_rescan() {
            return Relevance::Structure;
        }
        match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
            EventKind::Access(_) => return Relevance::None,
            _ => {}
        }
        if event.paths.is_empty() {
            // Nothing says where: assume the worst.
            return Relevance::Structure;
        }
        event
            .paths
            .iter()
            .map(|path| self.classify_path(path, event.kind))
            .max()
            .unwrap_or(Relevance::None)
    }

    /// What an event of `kind` means for `path`.
    fn classify_path(&self, path: &Path, kind: EventKind) -> Relevance {
        if self.anchors.iter().any(|a| a == path) || self.dirs.contains_key(path) {
            return Relevance::Structure;
        }
        if let Some(root) = self.root.as_ref().filter(|root| path.starts_with(root)) {
            return classify_under_dir(root, path, kind);
        }
        for extra in &self.extras {
            if path == extra.named || extra.target.as_deref() == Some(path) {
                return Relevance::Content;
            }
            let beside = |file: &Path| path.parent() == file.parent();
            let dotdot = path.file_name().is_some_and(is_kubelet_name);
            if dotdot && (beside(&extra.named) || extra.target.as_deref().is_some_and(beside)) {
                return Relevance::Structure;
            }
        }
        Relevance::None
    }
}

/// What an event of `kind` on `path` under DIR (`root`) means, by the
/// loader's rule: a manifest it would read is content, a folder it would enter
/// may hold some; anything under a hidden name (`.git`,
/// `.github/workflows/ci.yml`) is not ours. Except the kubelet's names: the
/// swap of its `..data` folder changes what the visible symlinks beside it
/// lead to.
fn classify_under_dir(root: &Path, path: &Path, kind: EventKind) -> Relevance {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Relevance::None;
    };
    if !manifest::walk_reaches(root, parent) {
        Relevance::None
    } else if manifest::is_manifest_name(name) {
        Relevance::Content
    } else if manifest::is_hidden_name(name) && !is_kubelet_name(name) {
        Relevance::None
    } else if is_folder(path, kind) {
        Relevance::Folder
    } else {
        Relevance::None
    }
}

/// Whether `name` is one of the kubelet's atomic writer (`..data`, its
/// timestamped folders): a Kubernetes Secret or ConfigMap volume's files are
/// symlinks into `..data`, which the kubelet swaps.
fn is_kubelet_name(name: &OsStr) -> bool {
    name.as_encoded_bytes().starts_with(b"..")
}

/// Whether the event is about a folder (or a symlink to one), which may hold
/// manifests no event of their own announced.
fn is_folder(path: &Path, kind: EventKind) -> bool {
    use notify::event::{CreateKind, RemoveKind};
    matches!(
        kind,
        EventKind::Create(CreateKind::Folder) | EventKind::Remove(RemoveKind::Folder)
    ) || std::fs::metadata(path).is_ok_and(|m| m.is_dir())
}

/// Whether any of `folders` holds a manifest the loader would read, at any
/// depth, or is gone (it may have held some). Reads at most
/// [`MAX_FOLDER_ENTRIES`] entries, and says yes when that is not enough to tell.
fn hold_manifests(folders: &[PathBuf]) -> bool {
    let mut budget = MAX_FOLDER_ENTRIES;
    let mut queue: Vec<PathBuf> = folders.to_vec();
    while let Some(dir) = queue.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return true,
            // Unreadable now: the pass will say why, if it matters.
            Err(_) => continue,
        };
        for entry in entries.flatten() {
            budget = budget.saturating_sub(1);
            if budget == 0 {
                return true;
            }
            let name = entry.file_name();
            if manifest::is_manifest_name(&name) {
                return true;
            }
            // Real folders the loader enters only: a symlink to a folder is an
            // event of its own when it changes, and following links could loop.
            if !manifest::is_hidden_name(&name) && entry.file_type().is_ok_and(|t| t.is_dir()) {
                queue.push(entry.path());
            }
        }
    }
    false
}

/// Ordered: the strongest wins when an event names several paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Relevance {
    /// Not ours (another file beside a secret, our own reads).
    None,
    /// A folder under DIR: ours if it holds manifests (looked at on flush).
    Folder,
    /// A file we care about changed.
    Content,
    /// What we watch may have moved: re-resolve and re-watch before hinting.
    Structure,
}

/// A burst of events waiting for quiet.
#[derive(Debug)]
struct Pending {
    first: Instant,
    last: Instant,
    structure: bool,
    /// Whether a manifest, a secret file or DIR itself changed: a hint for sure.
    certain: bool,
    /// Folders that changed: a hint if they hold manifests.
    folders: Vec<PathBuf>,
    sample: Vec<PathBuf>,
    changed: ChangedFiles,
    events: usize,
}

struct WatchTask {
    dir: PathBuf,
    extras: Vec<PathBuf>,
    debounce: Duration,
    triggers: TriggerSender,
    notify: RecommendedWatcher,
    events: mpsc::UnboundedReceiver<notify::Result<Event>>,
    commands: mpsc::UnboundedReceiver<Command>,
    layout: Layout,
    watched: BTreeMap<PathBuf, Mode>,
    /// Set while a directory to watch is missing or could not be watched.
    degraded_since: Option<Instant>,
    pending: Option<Pending>,
}

impl WatchTask {
    async fn run(mut self) {
        loop {
            let flush_at = self
                .pending
                .as_ref()
                .map(|p| (p.last + self.debounce).min(p.first + self.debounce * MAX_WAIT_FACTOR));
            let retry_at = self.degraded_since.map(|since| since + RETRY_MISSING);
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::SetExtraPaths(paths)) => {
                        if paths != self.extras {
                            self.extras = paths;
                            self.rebuild(false);
                        }
                    }
                    None => break,
                },
                Some(event) = self.events.recv() => self.note(event),
                () = sleep_until(flush_at) => self.flush(),
                () = sleep_until(retry_at) => self.retry_missing(),
            }
        }
    }

    fn note(&mut self, event: notify::Result<Event>) {
        let (relevance, paths) = match event {
            Ok(event) => {
                let relevance = self.layout.classify(&event);
                tracing::trace!(target: EVENT_LOG_TARGET, ?event, ?relevance, "file event");
                // Only the paths that matter travel with the hint (a rename
                // names both ends; one may be a temporary file).
                let paths: Vec<(PathBuf, Relevance)> = event
                    .paths
                    .into_iter()
                    .map(|p| {
                        let relevance = self.layout.classify_path(&p, event.kind);
                        (p, relevance)
                    })
                    .filter(|(_, relevance)| *relevance != Relevance::None)
                    .collect();
                (relevance, paths)
            }
            Err(err) => {
                tracing::warn!(error = %err, "file watcher error; re-watching (the periodic pass still runs)");
                let paths = err.paths.into_iter().map(|p| (p, Relevance::Structure));
                (Relevance::Structure, paths.collect())
            }
        };
        if relevance == Relevance::None {
            return;
        }
        let now = Instant::now();
        let pending = self.pending.get_or_insert(Pending {
            first: now,
            last: now,
            structure: false,
            certain: false,
            folders: Vec::new(),
            sample: Vec::new(),
            changed: ChangedFiles::none(),
            events: 0,
        });
        pending.last = now;
        pending.events += 1;
        pending.certain |= relevance > Relevance::Folder;
        if relevance == Relevance::Structure {
            // DIR or a link on its path moved: any file may be new.
            pending.structure = true;
            pending.changed = ChangedFiles::everything();
        }
        for (path, relevance) in paths {
            if pending.sample.len() < SAMPLE_PATHS && !pending.sample.contains(&path) {
                pending.sample.push(path.clone());
            }
            if relevance == Relevance::Folder && !pending.folders.contains(&path) {
                if pending.folders.len() < SAMPLE_FOLDERS {
                    pending.folders.push(path.clone());
                } else {
                    // Too many to look into: take them as holding manifests.
                    pending.certain = true;
                }
            }
            pending.changed.add(path);
        }
    }

    fn flush(&mut self) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        if pending.structure {
            self.rebuild(true);
        }
        if !pending.certain && !hold_manifests(&pending.folders) {
            tracing::debug!(folders = ?pending.folders, "changed folders hold no manifests: no hint");
            return;
        }
        tracing::debug!(
            events = pending.events,
            paths = ?pending.sample,
            "files changed"
        );
        self.triggers.send_files_changed(pending.changed);
    }

    fn retry_missing(&mut self) {
        let before = self.watched.clone();
        self.rebuild(false);
        if self.watched != before {
            tracing::debug!("a directory to watch appeared");
            self.triggers.send_files_changed(ChangedFiles::everything());
        }
    }

    /// Re-resolves what to watch and adjusts the watches. With `force`, every
    /// watch is renewed (a directory may have been replaced at the same path,
    /// leaving the old watch on a deleted inode).
    fn rebuild(&mut self, force: bool) {
        let layout = Layout::resolve(&self.dir, &self.extras);
        let stale: Vec<PathBuf> = self
            .watched
            .iter()
            .filter(|(dir, mode)| force || layout.dirs.get(*dir) != Some(mode))
            .map(|(dir, _)| dir.clone())
            .collect();
        for dir in stale {
            // Fails when the directory is gone (its watch went with it): fine.
            let _ = self.notify.unwatch(&dir);
            self.watched.remove(&dir);
        }
        let mut failed = false;
        for (dir, mode) in &layout.dirs {
            if self.watched.get(dir) == Some(mode) {
                continue;
            }
            let recursive = match mode {
                Mode::Recursive => RecursiveMode::Recursive,
                Mode::Flat => RecursiveMode::NonRecursive,
            };
            match self.notify.watch(dir, recursive) {
                Ok(()) => {
                    self.watched.insert(dir.clone(), *mode);
                }
                Err(err) => {
                    failed = true;
                    // Warn once when entering the degraded state, not at every retry.
                    if self.degraded_since.is_none()
                        && matches!(err.kind, notify::ErrorKind::MaxFilesWatch)
                    {
                        tracing::warn!(
                            dir = %dir.display(),
                            "inotify watch limit reached (raise fs.inotify.max_user_watches); changes there are seen only by the periodic pass"
                        );
                    } else {
                        tracing::debug!(dir = %dir.display(), error = %err, "cannot watch");
                    }
                }
            }
        }
        if !layout.missing.is_empty() {
            tracing::debug!(missing = ?layout.missing, "directories to watch do not exist yet");
        }
        let degraded = failed || !layout.missing.is_empty();
        if !degraded && self.degraded_since.is_some() {
            tracing::debug!("every directory to watch is watched again");
        }
        self.degraded_since = degraded.then(Instant::now);
        self.layout = layout;
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, ModifyKind, RemoveKind};

    use super::*;

    fn event(kind: EventKind, path: &Path) -> Event {
        Event::new(kind).add_path(path.to_owned())
    }

    #[test]
    fn reads_are_not_changes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let layout = Layout::resolve(tmp.path(), &[]);
        let real = std::fs::canonicalize(tmp.path()).expect("canonical");
        let file = real.join("a.yaml");
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
        ] {
            assert_eq!(layout.classify(&event(kind, &file)), Relevance::None);
        }
        assert_eq!(
            layout.classify(&event(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                &file
            )),
            Relevance::Content
        );
        assert_eq!(
            layout.classify(&event(EventKind::Create(CreateKind::File), &file)),
            Relevance::Content
        );
    }

    #[test]
    fn only_manifests_and_folders_under_dir_are_hints() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let layout = Layout::resolve(tmp.path(), &[]);
        let real = std::fs::canonicalize(tmp.path()).expect("canonical");
        let modify = EventKind::Modify(ModifyKind::Any);
        for manifest in ["a.yaml", "b.YML", "team/c.yml"] {
            assert_eq!(
                layout.classify(&event(modify, &real.join(manifest))),
                Relevance::Content,
                "{manifest}"
            );
        }
        for other in [
            "stagesync.log",
            "a.yaml.swp",
            "a.yaml~",
            "4913",
            ".git/index",
        ] {
            assert_eq!(
                layout.classify(&event(modify, &real.join(other))),
                Relevance::None,
                "{other}"
            );
        }
        let team = real.join("team");
        assert_eq!(
            layout.classify(&event(EventKind::Create(CreateKind::Folder), &team)),
            Relevance::Folder,
            "a new folder may hold manifests its watch came too late for"
        );
        assert_eq!(
            layout.classify(&event(EventKind::Remove(RemoveKind::Folder), &team)),
            Relevance::Folder
        );
        std::fs::create_dir(&team).expect("mkdir");
        assert_eq!(
            layout.classify(&event(EventKind::Modify(ModifyKind::Any), &team)),
            Relevance::Folder,
            "a folder renamed into DIR"
        );
    }

    #[test]
    fn a_folder_is_a_hint_when_it_holds_manifests_or_is_gone() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let logs = tmp.path().join("logs");
        std::fs::create_dir_all(logs.join("old")).expect("mkdir");
        std::fs::write(logs.join("old/stagesync.log"), "x").expect("write");
        assert!(!hold_manifests(std::slice::from_ref(&logs)));
        let team = tmp.path().join("team");
        std::fs::create_dir_all(team.join("deeper")).expect("mkdir");
        std::fs::write(team.join("deeper/a.yml"), "x").expect("write");
        assert!(hold_manifests(&[logs.clone(), team]));
        assert!(hold_manifests(&[tmp.path().join("gone")]));
        assert!(!hold_manifests(&[]));
    }

    #[test]
    fn dir_itself_and_its_parent_entry_are_structure() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("stages");
        std::fs::create_dir(&dir).expect("mkdir");
        let layout = Layout::resolve(&dir, &[]);
        let real = std::fs::canonicalize(&dir).expect("canonical");
        assert_eq!(
            layout.classify(&event(EventKind::Remove(RemoveKind::Folder), &real)),
            Relevance::Structure
        );
        let sibling = real.parent().expect("parent").join("other");
        assert_eq!(
            layout.classify(&event(EventKind::Create(CreateKind::File), &sibling)),
            Relevance::None,
            "other entries of the parent are not ours"
        );
        assert_eq!(layout.dirs.len(), 2, "{layout:?}");
    }

    #[test]
    fn a_missing_dir_watches_its_parent_only() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let layout = Layout::resolve(&tmp.path().join("absent"), &[]);
        assert_eq!(layout.root, None);
        assert_eq!(layout.dirs.len(), 1);
        assert!(layout.missing.is_empty());
        let gone = Layout::resolve(&tmp.path().join("a/b/c"), &[]);
        assert_eq!(gone.missing.len(), 1, "{gone:?}");
    }

    #[test]
    fn extra_files_are_filtered_to_themselves_and_dotdot_swaps() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let secrets = std::fs::canonicalize(tmp.path()).expect("canonical");
        let key = secrets.join("key");
        std::fs::write(&key, "x").expect("write");
        let layout = Layout::resolve(&secrets.join("stages"), std::slice::from_ref(&key));
        let modify = EventKind::Modify(ModifyKind::Any);
        assert_eq!(layout.classify(&event(modify, &key)), Relevance::Content);
        assert_eq!(
            layout.classify(&event(modify, &secrets.join("unrelated"))),
            Relevance::None
        );
        assert_eq!(
            layout.classify(&event(modify, &secrets.join("..data"))),
            Relevance::Structure
        );
    }
}
