//! The file watcher on a temp directory and ways to wait for its hints without
//! asserting exact timings. [`crate::files`] makes the changes it should see.

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

/// A running watcher and the receiving end of its hints.
pub struct Watched {
    pub watcher: Watcher,
    rx: TriggerReceiver,
}

/// Starts a watcher on `dir` with [`DEBOUNCE`].
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
