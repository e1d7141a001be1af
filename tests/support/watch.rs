//! Helpers for the watcher tests: a watcher on a temp directory and ways to wait
//! for its hints without asserting exact timings.

use std::path::Path;
use std::time::Duration;

use stagesync::daemon::scheduler::{Trigger, TriggerReceiver, trigger_channel};
use stagesync::daemon::watch::Watcher;

/// Short, so tests are quick; the assertions below never depend on it exactly.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// How long a hint may take to arrive before the test fails.
pub const HINT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to listen before concluding that no hint is coming.
pub const QUIET: Duration = Duration::from_millis(1500);

pub struct Watched {
    pub watcher: Watcher,
    rx: TriggerReceiver,
}

pub fn watch(dir: &Path) -> Watched {
    let (tx, rx) = trigger_channel();
    let watcher = Watcher::spawn(dir, DEBOUNCE, tx).expect("watcher starts");
    Watched { watcher, rx }
}

impl Watched {
    /// Waits for a hint; panics naming `what` if none comes.
    pub async fn expect_hint(&mut self, what: &str) {
        match tokio::time::timeout(HINT_TIMEOUT, self.rx.recv()).await {
            Ok(Some(Trigger::FilesChanged)) => {}
            Ok(other) => panic!("{what}: unexpected {other:?}"),
            Err(_) => panic!("{what}: no hint within {HINT_TIMEOUT:?}"),
        }
    }

    /// Asserts no hint arrives for a while.
    pub async fn expect_quiet(&mut self, what: &str) {
        if let Ok(got) = tokio::time::timeout(QUIET, self.rx.recv()).await {
            panic!("{what}: expected no hint, got {got:?}");
        }
    }

    /// Counts the hints arriving until none has come for [`QUIET`].
    pub async fn count_hints(&mut self) -> usize {
        let mut n = 0;
        while let Ok(Some(_)) = tokio::time::timeout(QUIET, self.rx.recv()).await {
            n += 1;
        }
        n
    }

    /// Waits for the hints of whatever happened so far to arrive, and drops them.
    pub async fn settle(&mut self) {
        self.count_hints().await;
    }
}

pub fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir -p");
    }
    std::fs::write(path, text).expect("write");
}

/// Replaces `path` the way editors save: write a temp file beside it, rename it over.
pub fn atomic_save(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp~");
    std::fs::write(&tmp, text).expect("write temp");
    std::fs::rename(&tmp, path).expect("rename over");
}

/// Points `link` at `target` atomically, as git-sync and the Kubernetes atomic
/// writer do: create a new symlink, rename it over the old one.
pub fn swap_symlink(link: &Path, target: &Path) {
    let tmp = link.with_file_name(format!(
        "{}.tmp-link",
        link.file_name().and_then(|n| n.to_str()).unwrap_or("link")
    ));
    std::os::unix::fs::symlink(target, &tmp).expect("symlink");
    std::fs::rename(&tmp, link).expect("rename link over");
}
