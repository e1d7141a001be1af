//! When a reconcile pass runs.
//!
//! [`run_loop`] runs one pass at start, then one on every [`Trigger`] that
//! arrives on the channel (file changes, SIGHUP), and one every `interval` with
//! ±10% jitter. The interval restarts after every pass, whatever triggered it, so
//! a busy directory does not cause extra periodic passes. A pass may ask to run
//! again sooner ([`PassOutcome::retry_in`]), which is how per-stage backoff gets
//! its retries without waiting for the next interval.
//!
//! Traps:
//! - **One pass at a time, by construction.** The loop awaits the pass; it never
//!   spawns it. Triggers that arrive meanwhile wait in the channel and are drained
//!   together afterwards: any number of them make exactly one follow-up pass.
//! - **Dropping a trigger is correct when the channel is full.** A full channel
//!   means triggers are already waiting, so a follow-up pass is guaranteed;
//!   [`TriggerSender::send`] therefore never blocks (it is called from the
//!   watcher and the signal handler, which must not wait for a long pass).
//!   What a dropped trigger must not lose is what it asks the pass to do: a
//!   SIGHUP makes the pass forget every backoff, so it also raises a "signal
//!   pending" flag beside the channel, which the loop reads when a pass starts;
//!   a SIGHUP dropped behind queued file changes still makes a SIGHUP pass.
//! - **Cancellation does not interrupt a pass.** The in-flight pass runs to its
//!   end (finishing the writes it started); no new pass starts afterwards. A pass
//!   that wants to stop early (skip writes it has not started) holds a clone of
//!   the token itself.
//! - **Which files changed travels beside the channel, not in it.** The
//!   watcher adds the paths of a hint to a [`ChangedFiles`] shared with the
//!   receiver *before* sending the trigger, and the loop takes them when a pass
//!   starts; so a trigger dropped on a full channel loses no path, and a pass
//!   sees every path whose hint it answers (the pass forgets the backoff of
//!   those files' stages only).
//! - **Jitter** spreads the periodic passes of many replicas or many daemons
//!   pointing at one authentik, so they do not hit the API in lockstep.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How far a periodic pass may move from the interval, either way (±10%).
pub(crate) const JITTER_FRACTION: f64 = 0.10;

/// The soonest a pass may ask to run again: a pass returning "retry now"
/// repeatedly must not turn the loop into a busy loop against authentik.
pub(crate) const MIN_RETRY: Duration = Duration::from_secs(1);

/// Room for triggers waiting while a pass runs. Any number coalesce into one
/// pass, so a small buffer is enough; see [`TriggerSender::send`].
const TRIGGER_BUFFER: usize = 16;

/// More changed paths than this between two passes are not listed one by one:
/// the set becomes "everything" (a checkout of thousands of files).
pub(crate) const MAX_CHANGED_PATHS: usize = 1000;

/// Why a pass runs. Every pass is a full pass; the reason is for logs, and a
/// SIGHUP also makes the pass forget every backoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// The first pass, at start.
    Startup,
    /// Files under the manifest directory, or a referenced secret file, changed.
    FilesChanged,
    /// SIGHUP.
    Signal,
    /// A previous pass asked to run again ([`PassOutcome::retry_in`]).
    Retry,
    /// The periodic resync.
    Interval,
    /// The event poll saw someone else change a managed object.
    EventLog,
}

impl Trigger {
    /// The reason to report when several triggers coalesce into one pass: the
    /// most specific one (an operator's SIGHUP over a file change over a timer).
    pub(crate) fn merge(self, other: Trigger) -> Trigger {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }

    fn rank(self) -> u8 {
        match self {
            Trigger::Startup => 0,
            Trigger::Interval => 1,
            Trigger::Retry => 2,
            Trigger::EventLog => 3,
            Trigger::FilesChanged => 4,
            Trigger::Signal => 5,
        }
    }

    /// A short description for log lines.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::FilesChanged => "files changed",
            Trigger::Signal => "SIGHUP",
            Trigger::Retry => "retry",
            Trigger::Interval => "interval",
            Trigger::EventLog => "event log",
        }
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a pass tells the loop about the next one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassOutcome {
    /// Run again after this long, if sooner than the interval (the earliest
    /// moment a backed-off stage may be retried).
    pub(crate) retry_in: Option<Duration>,
}

impl PassOutcome {
    /// Nothing to retry: the next pass comes with the interval or a trigger.
    pub(crate) fn done() -> Self {
        Self::default()
    }

    /// Run again after `delay` unless something triggers a pass sooner.
    pub(crate) fn retry_in(delay: Duration) -> Self {
        Self {
            retry_in: Some(delay),
        }
    }
}

impl From<()> for PassOutcome {
    fn from((): ()) -> Self {
        Self::done()
    }
}

/// The files the hints since the last pass were about, as the watcher names
/// them (real paths: symlinks on the way resolved). A folder stands for
/// everything under it; "everything" is for hints that cannot say (the
/// directory was swapped or re-created, the watcher lost events, too many
/// paths).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ChangedFiles {
    paths: BTreeSet<PathBuf>,
    everything: bool,
}

impl ChangedFiles {
    /// No file changed (a startup, timer or retry pass).
    pub(crate) fn none() -> Self {
        Self::default()
    }

    /// Any file may have changed.
    pub(crate) fn everything() -> Self {
        ChangedFiles {
            paths: BTreeSet::new(),
            everything: true,
        }
    }

    /// Adds one changed file or folder.
    pub(crate) fn add(&mut self, path: PathBuf) {
        if self.everything {
            return;
        }
        self.paths.insert(path);
        if self.paths.len() > MAX_CHANGED_PATHS {
            *self = Self::everything();
        }
    }

    /// Adds everything `other` holds.
    pub(crate) fn merge(&mut self, other: ChangedFiles) {
        if other.everything {
            *self = Self::everything();
        }
        for path in other.paths {
            self.add(path);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        !self.everything && self.paths.is_empty()
    }

    pub(crate) fn is_everything(&self) -> bool {
        self.everything
    }

    /// Whether `path` changed: it is listed, a folder above it is, or
    /// everything changed.
    pub(crate) fn contains(&self, path: &Path) -> bool {
        self.everything || path.ancestors().any(|p| self.paths.contains(p))
    }
}

impl FromIterator<PathBuf> for ChangedFiles {
    fn from_iter<I: IntoIterator<Item = PathBuf>>(paths: I) -> Self {
        let mut changed = Self::none();
        for path in paths {
            changed.add(path);
        }
        changed
    }
}

/// The sending side of the trigger channel; cheap to clone.
#[derive(Clone, Debug)]
pub struct TriggerSender {
    tx: mpsc::Sender<Trigger>,
    changed: Arc<Mutex<ChangedFiles>>,
    signal_pending: Arc<AtomicBool>,
}

/// The receiving side, consumed by [`run_loop`].
#[derive(Debug)]
pub struct TriggerReceiver {
    rx: mpsc::Receiver<Trigger>,
    changed: Arc<Mutex<ChangedFiles>>,
    signal_pending: Arc<AtomicBool>,
}

/// A channel for triggers from the watcher and the signal handler.
pub fn trigger_channel() -> (TriggerSender, TriggerReceiver) {
    let (tx, rx) = mpsc::channel(TRIGGER_BUFFER);
    let changed = Arc::new(Mutex::new(ChangedFiles::none()));
    let signal_pending = Arc::new(AtomicBool::new(false));
    (
        TriggerSender {
            tx,
            changed: changed.clone(),
            signal_pending: signal_pending.clone(),
        },
        TriggerReceiver {
            rx,
            changed,
            signal_pending,
        },
    )
}

/// Locks the shared set; a panic while it was held left a valid set (every
/// change to it is one call), so a poisoned lock is used as is.
fn lock(changed: &Mutex<ChangedFiles>) -> std::sync::MutexGuard<'_, ChangedFiles> {
    changed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl TriggerSender {
    /// Asks for a pass because `changed` files changed. The paths are recorded
    /// before the trigger is sent, so the pass that answers it sees them.
    pub(crate) fn send_files_changed(&self, changed: ChangedFiles) {
        lock(&self.changed).merge(changed);
        self.send(Trigger::FilesChanged);
    }

    /// Asks for a pass. Never waits: when the channel is full, triggers are
    /// already pending and will cause a pass, so this one is redundant; a
    /// [`Trigger::Signal`] is also recorded beside the channel first, so the
    /// pass that follows is a SIGHUP pass even if this one is dropped. After
    /// the loop has stopped, the trigger is dropped.
    pub(crate) fn send(&self, trigger: Trigger) {
        if trigger == Trigger::Signal {
            self.signal_pending.store(true, Ordering::SeqCst);
        }
        match self.tx.try_send(trigger) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::trace!(%trigger, "trigger after the loop stopped, ignored");
            }
        }
    }
}

impl TriggerReceiver {
    /// The next trigger; `None` once every sender is gone. [`run_loop`] is the
    /// consumer in the daemon; this is for other consumers (tests, tools).
    pub async fn recv(&mut self) -> Option<Trigger> {
        self.rx.recv().await
    }

    /// The files changed since the last call, leaving none.
    pub(crate) fn take_changed(&mut self) -> ChangedFiles {
        std::mem::take(&mut *lock(&self.changed))
    }

    /// Whether a SIGHUP came since the last call, leaving none.
    fn take_signal(&mut self) -> bool {
        self.signal_pending.swap(false, Ordering::SeqCst)
    }

    /// Everything waiting right now, merged into one trigger.
    fn drain(&mut self) -> Option<Trigger> {
        let mut merged: Option<Trigger> = None;
        while let Ok(trigger) = self.rx.try_recv() {
            merged = Some(merged.map_or(trigger, |m| m.merge(trigger)));
        }
        merged
    }
}

/// `interval` moved by up to ±[`JITTER_FRACTION`]; `unit` in `[0, 1]` picks
/// where (0 = 10% early, 0.5 = on time, 1 = 10% late). Values outside are
/// clamped.
pub(crate) fn jittered(interval: Duration, unit: f64) -> Duration {
    let unit = if unit.is_nan() {
        0.5
    } else {
        unit.clamp(0.0, 1.0)
    };
    let factor = 1.0 - JITTER_FRACTION + 2.0 * JITTER_FRACTION * unit;
    interval.mul_f64(factor)
}

/// Runs `pass` at start, on every trigger, and every `interval` (jittered),
/// until `cancel` fires. Returns once the pass in flight at cancellation has
/// finished. `pass` gets why it runs and the files changed since the last
/// pass, and may return `()` or a [`PassOutcome`].
pub(crate) async fn run_loop<F, Fut, O>(
    mut triggers: TriggerReceiver,
    interval: Duration,
    cancel: CancellationToken,
    mut pass: F,
) where
    F: FnMut(Trigger, ChangedFiles) -> Fut,
    Fut: Future<Output = O>,
    O: Into<PassOutcome>,
{
    let mut next = Trigger::Startup;
    let mut triggers_open = true;
    loop {
        if cancel.is_cancelled() {
            break;
        }
        if triggers.take_signal() {
            next = next.merge(Trigger::Signal);
        }
        tracing::debug!(trigger = %next, "reconcile pass starting");
        let changed = triggers.take_changed();
        let outcome: PassOutcome = pass(next, changed).await.into();

        let now = Instant::now();
        let periodic_at = now + jittered(interval, rand::random::<f64>());
        let (wake_at, timer_trigger) = match outcome.retry_in.map(|d| now + d.max(MIN_RETRY)) {
            Some(retry_at) if retry_at < periodic_at => (retry_at, Trigger::Retry),
            _ => (periodic_at, Trigger::Interval),
        };

        if let Some(pending) = triggers.drain() {
            next = pending;
            continue;
        }
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            received = triggers.rx.recv(), if triggers_open => match received {
                Some(trigger) => {
                    next = triggers.drain().map_or(trigger, |more| trigger.merge(more));
                }
                None => {
                    // Every sender is gone (no watcher, no signal handler): only
                    // the timer is left. Go round again to wait for it.
                    triggers_open = false;
                    next = timer_trigger;
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep_until(wake_at) => {}
                    }
                }
            },
            () = tokio::time::sleep_until(wake_at) => next = timer_trigger,
        }
    }
    tracing::debug!("reconcile loop stopped");
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    const INTERVAL: Duration = Duration::from_secs(100);

    type Passes = Arc<Mutex<Vec<(Trigger, Instant)>>>;

    /// Starts the loop with a pass that records (trigger, start time) and takes
    /// `pass_takes` to run.
    fn start(
        interval: Duration,
        pass_takes: Duration,
    ) -> (
        TriggerSender,
        CancellationToken,
        Passes,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = trigger_channel();
        let cancel = CancellationToken::new();
        let passes = Arc::new(Mutex::new(Vec::new()));
        let recorded = passes.clone();
        let task = tokio::spawn(run_loop(rx, interval, cancel.clone(), move |trigger, _| {
            let recorded = recorded.clone();
            async move {
                recorded
                    .lock()
                    .expect("test mutex")
                    .push((trigger, Instant::now()));
                tokio::time::sleep(pass_takes).await;
            }
        }));
        (tx, cancel, passes, task)
    }

    fn triggers_of(passes: &Mutex<Vec<(Trigger, Instant)>>) -> Vec<Trigger> {
        passes
            .lock()
            .expect("test mutex")
            .iter()
            .map(|(t, _)| *t)
            .collect()
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        assert_eq!(jittered(INTERVAL, 0.0), Duration::from_secs(90));
        assert_eq!(jittered(INTERVAL, 0.5), INTERVAL);
        assert_eq!(jittered(INTERVAL, 1.0), Duration::from_secs(110));
        assert_eq!(jittered(INTERVAL, -3.0), Duration::from_secs(90));
        assert_eq!(jittered(INTERVAL, 7.0), Duration::from_secs(110));
        assert_eq!(jittered(INTERVAL, f64::NAN), INTERVAL);
    }

    #[test]
    fn merge_keeps_the_most_specific_reason() {
        assert_eq!(
            Trigger::Interval.merge(Trigger::FilesChanged),
            Trigger::FilesChanged
        );
        assert_eq!(
            Trigger::Signal.merge(Trigger::FilesChanged),
            Trigger::Signal
        );
        assert_eq!(Trigger::Retry.merge(Trigger::Interval), Trigger::Retry);
    }

    #[tokio::test(start_paused = true)]
    async fn runs_at_start_then_every_jittered_interval() {
        let (_tx, cancel, passes, task) = start(INTERVAL, Duration::from_secs(1));
        tokio::time::sleep(Duration::from_secs(350)).await;
        cancel.cancel();
        task.await.expect("loop task");

        let passes = passes.lock().expect("test mutex").clone();
        assert_eq!(passes[0].0, Trigger::Startup);
        assert!(passes.len() >= 4, "{passes:?}");
        for pair in passes.windows(2) {
            assert_eq!(pair[1].0, Trigger::Interval);
            // The interval restarts after the pass (which takes 1 s).
            let gap = pair[1].1 - pair[0].1 - Duration::from_secs(1);
            assert!(
                gap >= Duration::from_secs(90) && gap <= Duration::from_secs(110),
                "gap {gap:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_trigger_runs_a_pass_at_once_and_restarts_the_interval() {
        let (tx, cancel, passes, task) = start(INTERVAL, Duration::from_secs(1));
        tokio::time::sleep(Duration::from_secs(50)).await;
        let sent_at = Instant::now();
        tx.send(Trigger::FilesChanged);
        tokio::time::sleep(Duration::from_secs(80)).await;
        cancel.cancel();
        task.await.expect("loop task");

        let passes = passes.lock().expect("test mutex").clone();
        assert_eq!(
            passes.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            vec![Trigger::Startup, Trigger::FilesChanged],
            "no periodic pass 100 s after start: the trigger restarted the interval"
        );
        assert!(passes[1].1 - sent_at < Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn triggers_during_a_pass_coalesce_into_one_follow_up() {
        let (tx, cancel, passes, task) = start(INTERVAL, Duration::from_secs(10));
        // The startup pass runs for 10 s; send a burst during it.
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send(Trigger::Signal);
        // More than the channel holds: the surplus is dropped, harmlessly.
        for _ in 0..40 {
            tx.send(Trigger::FilesChanged);
        }
        tokio::time::sleep(Duration::from_secs(50)).await;
        cancel.cancel();
        task.await.expect("loop task");

        assert_eq!(
            triggers_of(&passes),
            vec![Trigger::Startup, Trigger::Signal]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_sighup_dropped_on_a_full_channel_still_makes_a_sighup_pass() {
        let (tx, cancel, passes, task) = start(INTERVAL, Duration::from_secs(10));
        // During the startup pass, file changes fill the channel; the SIGHUP
        // that comes after them does not fit.
        tokio::time::sleep(Duration::from_secs(1)).await;
        for _ in 0..(TRIGGER_BUFFER * 2) {
            tx.send(Trigger::FilesChanged);
        }
        tx.send(Trigger::Signal);
        tokio::time::sleep(Duration::from_secs(50)).await;
        cancel.cancel();
        task.await.expect("loop task");

        assert_eq!(
            triggers_of(&passes),
            vec![Trigger::Startup, Trigger::Signal],
            "the follow-up pass forgets every backoff, as a SIGHUP asks"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_lets_the_pass_in_flight_finish_and_starts_no_other() {
        let (tx, rx) = trigger_channel();
        let cancel = CancellationToken::new();
        let finished = Arc::new(Mutex::new(0_u32));
        let started = Arc::new(Mutex::new(0_u32));
        let (f, s) = (finished.clone(), started.clone());
        let task = tokio::spawn(run_loop(rx, INTERVAL, cancel.clone(), move |_, _| {
            let (f, s) = (f.clone(), s.clone());
            async move {
                *s.lock().expect("test mutex") += 1;
                tokio::time::sleep(Duration::from_secs(10)).await;
                *f.lock().expect("test mutex") += 1;
            }
        }));
        tokio::time::sleep(Duration::from_secs(5)).await;
        tx.send(Trigger::FilesChanged);
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("loop stops after the pass")
            .expect("loop task");
        assert_eq!(*started.lock().expect("test mutex"), 1);
        assert_eq!(*finished.lock().expect("test mutex"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_can_ask_to_run_again_sooner() {
        let (_tx, rx) = trigger_channel();
        let cancel = CancellationToken::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        let task = tokio::spawn(run_loop(rx, INTERVAL, cancel.clone(), move |trigger, _| {
            let recorded = recorded.clone();
            async move {
                let mut seen = recorded.lock().expect("test mutex");
                seen.push((trigger, Instant::now()));
                if seen.len() < 3 {
                    PassOutcome::retry_in(Duration::from_secs(5))
                } else {
                    PassOutcome::done()
                }
            }
        }));
        tokio::time::sleep(Duration::from_secs(60)).await;
        cancel.cancel();
        task.await.expect("loop task");
        let seen = seen.lock().expect("test mutex").clone();
        let kinds: Vec<_> = seen.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            kinds,
            vec![Trigger::Startup, Trigger::Retry, Trigger::Retry]
        );
        assert_eq!(seen[1].1 - seen[0].1, Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_now_is_not_a_busy_loop() {
        let (_tx, rx) = trigger_channel();
        let cancel = CancellationToken::new();
        let count = Arc::new(Mutex::new(0_u32));
        let c = count.clone();
        let task = tokio::spawn(run_loop(rx, INTERVAL, cancel.clone(), move |_, _| {
            *c.lock().expect("test mutex") += 1;
            async { PassOutcome::retry_in(Duration::ZERO) }
        }));
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        cancel.cancel();
        task.await.expect("loop task");
        // At start, then once per MIN_RETRY.
        assert_eq!(*count.lock().expect("test mutex"), 11);
    }

    #[test]
    fn a_changed_folder_covers_its_files_and_too_many_paths_are_everything() {
        let mut changed: ChangedFiles = [PathBuf::from("/m/team")].into_iter().collect();
        changed.add(PathBuf::from("/m/a.yaml"));
        assert!(changed.contains(Path::new("/m/team/b.yaml")));
        assert!(changed.contains(Path::new("/m/a.yaml")));
        assert!(!changed.contains(Path::new("/m/b.yaml")));
        assert!(!changed.contains(Path::new("/m/team-b/c.yaml")));
        assert!(!changed.is_everything());

        let many: ChangedFiles = (0..=MAX_CHANGED_PATHS)
            .map(|i| PathBuf::from(format!("/m/{i}.yaml")))
            .collect();
        assert!(many.is_everything());
        assert!(many.contains(Path::new("/elsewhere.yaml")));
        assert!(ChangedFiles::none().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_pass_gets_every_changed_path_even_when_triggers_were_dropped() {
        let (tx, rx) = trigger_channel();
        let cancel = CancellationToken::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        let task = tokio::spawn(run_loop(
            rx,
            INTERVAL,
            cancel.clone(),
            move |trigger, changed| {
                let recorded = recorded.clone();
                async move {
                    recorded
                        .lock()
                        .expect("test mutex")
                        .push((trigger, changed));
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
            },
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        // During the startup pass: more hints than the channel holds.
        for i in 0..(TRIGGER_BUFFER * 3) {
            tx.send_files_changed(
                [PathBuf::from(format!("/m/{i}.yaml"))]
                    .into_iter()
                    .collect(),
            );
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
        cancel.cancel();
        task.await.expect("loop task");

        let seen = seen.lock().expect("test mutex").clone();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0], (Trigger::Startup, ChangedFiles::none()));
        assert_eq!(seen[1].0, Trigger::FilesChanged);
        for i in 0..(TRIGGER_BUFFER * 3) {
            assert!(
                seen[1].1.contains(Path::new(&format!("/m/{i}.yaml"))),
                "{i}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn keeps_the_interval_when_every_sender_is_gone() {
        let (tx, cancel, passes, task) = start(INTERVAL, Duration::ZERO);
        drop(tx);
        tokio::time::sleep(Duration::from_secs(250)).await;
        cancel.cancel();
        task.await.expect("loop task");
        let kinds = triggers_of(&passes);
        assert_eq!(kinds[0], Trigger::Startup);
        assert!(kinds.len() >= 3, "{kinds:?}");
        assert!(kinds[1..].iter().all(|t| *t == Trigger::Interval));
    }
}
