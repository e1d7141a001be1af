//! Unix signals as inputs, for `apply` and `run` alike (as mini-redis passes
//! its shutdown into `run`): the stop signals become a [`Shutdown`] the work
//! watches, and SIGHUP a trigger for the daemon ([`on_hangup`]).
//!
//! The stop signals, SIGTERM and SIGINT:
//! 1. the first stops *starting* work ([`Stop::cancel`]); requests in flight
//!    get the grace period of `--shutdown-timeout` ([`apply::grace_period`]),
//!    then are abandoned ([`Stop::abandon`]), their keys left unknown; the
//!    state file is saved and the command ends with 128 + the signal number
//!    (`apply`) or 0 (`run`, a finished shutdown);
//! 2. the second (more than [`DELIBERATE_SECOND_SIGNAL`] after the first)
//!    abandons them at once; the state file is still saved, and the command
//!    ends with 128 + the signal number;
//! 3. the third ends the process at once, without saving: `main` exits with
//!    128 + the signal number ([`Shutdown::forced`]).
//!
//! A daemon also has a backstop: once stopping, it ends at the shutdown
//! timeout whatever still runs (the state file is saved atomically, so it is
//! whole either way), exiting 0 as a finished shutdown would.
//!
//! Nothing here ends the process: [`Shutdown::forced`] resolves, and
//! `commands::dispatch` returns to `main`, which exits.
//!
//! Traps:
//! - Handlers are installed by [`Shutdown::listen`] before it returns, so a
//!   signal sent right after start is not lost to the default action (which
//!   would kill the process without finishing writes).
//! - Once installed, tokio keeps the handlers for the life of the process.
//!   Only the commands that write listen: `plan` and `validate` keep the
//!   default action (Ctrl-C ends them at once; they write nothing).
//! - Some supervisors (GNU timeout, a shell's process group) deliver one stop
//!   to the process twice within microseconds: only a signal sent on purpose,
//!   later, counts as the next one.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::apply::{self, Stop};
use crate::exit::Exit;
use crate::output::Console;

/// A second stop signal closer than this to the previous one is the same stop
/// delivered twice, not an operator insisting.
pub const DELIBERATE_SECOND_SIGNAL: Duration = Duration::from_millis(500);

/// A stop signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopSignal {
    Interrupt,
    Terminate,
}

impl StopSignal {
    pub(crate) fn name(self) -> &'static str {
        match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
        }
    }

    /// How a command that this signal stopped ends: 128 + the signal number.
    pub(crate) fn exit(self) -> Exit {
        match self {
            StopSignal::Interrupt => Exit::Interrupted,
            StopSignal::Terminate => Exit::Terminated,
        }
    }
}

/// Signal handlers could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the {signal} handler: {source}")]
pub struct SignalError {
    signal: &'static str,
    source: std::io::Error,
}

fn install(kind: SignalKind, name: &'static str) -> Result<Signal, SignalError> {
    signal(kind).map_err(|source| SignalError {
        signal: name,
        source,
    })
}

/// Who hears of a stop signal: `apply` says it on its console's stderr (the
/// user is at the terminal), the daemon in its log.
#[derive(Clone, Debug)]
pub(crate) enum Announce {
    Console(Console),
    Log,
}

/// How the stop signals have ended the work so far.
#[derive(Debug, Default)]
struct Seen {
    /// The first stop signal: work stops starting.
    first: Option<StopSignal>,
    /// The second: work in flight was abandoned at once.
    abandoned_by: Option<StopSignal>,
}

/// The shutdown of one command: what its work watches ([`Shutdown::stop`]),
/// and how it ended.
#[derive(Clone, Debug)]
pub struct Shutdown {
    pub(crate) stop: Stop,
    seen: Arc<Mutex<Seen>>,
    /// Fires when the process must end now (a third signal, the backstop).
    forced: CancellationToken,
    /// How `main` exits then.
    forced_exit: Arc<OnceLock<Exit>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    /// A shutdown nothing triggers yet: [`Shutdown::listen`] installs the handlers.
    pub fn new() -> Shutdown {
        Shutdown {
            stop: Stop::new(),
            seen: Arc::default(),
            forced: CancellationToken::new(),
            forced_exit: Arc::default(),
        }
    }

    /// Installs the SIGTERM and SIGINT handlers and acts on them (see the
    /// module docs); the writes in flight are abandoned once the grace period
    /// of `shutdown_timeout` is over. With `backstop`, the process ends at
    /// `shutdown_timeout` after the first signal, whatever still runs.
    pub(crate) fn listen(
        &self,
        shutdown_timeout: Duration,
        announce: Announce,
        backstop: bool,
    ) -> Result<(), SignalError> {
        let mut term = install(SignalKind::terminate(), "SIGTERM")?;
        let mut int = install(SignalKind::interrupt(), "SIGINT")?;
        self.stop.abandon_after_grace(shutdown_timeout);
        if backstop {
            self.force_at_timeout(shutdown_timeout);
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut last: Option<Instant> = None;
            let mut count = 0;
            loop {
                let signal = tokio::select! {
                    Some(()) = term.recv() => StopSignal::Terminate,
                    Some(()) = int.recv() => StopSignal::Interrupt,
                    else => break,
                };
                if last.is_some_and(|at| at.elapsed() < DELIBERATE_SECOND_SIGNAL) {
                    continue;
                }
                last = Some(Instant::now());
                count += 1;
                this.on_signal(count, signal, shutdown_timeout, &announce);
            }
        });
        Ok(())
    }

    /// The `n`th deliberate stop signal.
    fn on_signal(&self, n: usize, signal: StopSignal, timeout: Duration, announce: &Announce) {
        let say = |message: &str| match announce {
            Announce::Console(console) => console.errln(message),
            Announce::Log => tracing::warn!(signal = signal.name(), "{message}"),
        };
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match n {
            1 => {
                seen.first = Some(signal);
                drop(seen);
                match announce {
                    Announce::Console(console) => console.errln(&format!(
                        "{} received: starting no more writes; the writes in flight get {} to finish, then are abandoned (send it again to abandon them now)",
                        signal.name(),
                        humantime::format_duration(apply::grace_period(timeout)),
                    )),
                    Announce::Log => tracing::info!(
                        signal = signal.name(),
                        "stopping: finishing writes in flight (send it again to abandon them now)"
                    ),
                }
                self.stop.cancel.cancel();
            }
            2 => {
                seen.abandoned_by = Some(signal);
                drop(seen);
                say(&format!(
                    "{} received again: abandoning the writes in flight now",
                    signal.name()
                ));
                self.stop.abandon.cancel();
            }
            _ => {
                drop(seen);
                say(&format!(
                    "{} received again: exiting without saving the state file",
                    signal.name()
                ));
                self.force(signal.exit());
            }
        }
    }

    /// Once stopping, forces the end `timeout` later.
    fn force_at_timeout(&self, timeout: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            this.stop.cancel.cancelled().await;
            tokio::time::sleep(timeout).await;
            tracing::error!(timeout = ?timeout, "the shutdown timeout passed, exiting now");
            this.force(Exit::Success);
        });
    }

    fn force(&self, exit: Exit) {
        let _ = self.forced_exit.set(exit);
        self.forced.cancel();
    }

    /// Resolves when the process must end now, with how `main` exits.
    pub(crate) async fn forced(&self) -> Exit {
        self.forced.cancelled().await;
        self.forced_exit.get().copied().unwrap_or(Exit::Success)
    }

    /// The first stop signal, if one came.
    pub(crate) fn stopped_by(&self) -> Option<StopSignal> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).first
    }

    /// The signal that abandoned the work in flight at once, if one did.
    pub(crate) fn abandoned_by(&self) -> Option<StopSignal> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .abandoned_by
    }
}

/// Installs the SIGHUP handler: `on_signal` runs on each SIGHUP (the daemon
/// asks for a pass now).
pub(crate) fn on_hangup(
    on_signal: impl Fn() + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>, SignalError> {
    let mut hup = install(SignalKind::hangup(), "SIGHUP")?;
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            on_signal();
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::scheduler::{Trigger, trigger_channel};

    fn send_to_self(signal: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), std::process::id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Further apart than DELIBERATE_SECOND_SIGNAL: a signal on purpose.
    const DELIBERATE: Duration = Duration::from_millis(800);

    const CHILD_ENV: &str = "STAGESYNC_TEST_SIGNAL_CHILD";
    const READY: &str = "signal-child-ready";

    /// In the child process: the handlers installed, then a "write in
    /// flight" of `in_flight` once stopping, cut short by an abandon unless
    /// `stubborn`; the child exits as `main` would: with the forced exit,
    /// else the code of the signal that abandoned the work, else 0.
    fn child(in_flight: Duration, stubborn: bool) -> ! {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let code = runtime.block_on(async {
            let shutdown = Shutdown::new();
            shutdown
                .listen(Duration::from_secs(60), Announce::Log, false)
                .expect("handlers install");
            println!("{READY}");
            let work = async {
                shutdown.stop.cancel.cancelled().await;
                let abandoned = async {
                    if stubborn {
                        std::future::pending::<()>().await;
                    }
                    shutdown.stop.abandon.cancelled().await;
                };
                tokio::select! {
                    () = tokio::time::sleep(in_flight) => {}
                    () = abandoned => {}
                }
                shutdown
                    .abandoned_by()
                    .map_or(Exit::Success, StopSignal::exit)
            };
            let exit = tokio::select! {
                exit = work => exit,
                exit = shutdown.forced() => exit,
            };
            exit.code()
        });
        runtime.shutdown_background();
        std::process::exit(code);
    }

    /// Runs this very test in a child process in `mode`, sends it `signals`
    /// once it is ready, `gap` apart, and returns its exit code.
    fn run_child(test: &str, mode: &str, signals: &[&str], gap: Duration) -> Option<i32> {
        use std::io::BufRead;
        let exe = std::env::current_exe().expect("test binary");
        let mut child = std::process::Command::new(exe)
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, mode)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("child starts");
        let stdout = child.stdout.take().expect("stdout");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // The harness prints the test's name on the same line first. Keep
            // reading to the end: a closed pipe would fail the child's harness.
            for line in std::io::BufReader::new(stdout).lines() {
                if line.is_ok_and(|l| l.contains(READY)) {
                    let _ = ready_tx.send(true);
                }
            }
            let _ = ready_tx.send(false);
        });
        if ready_rx.recv_timeout(Duration::from_secs(10)) != Ok(true) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child never got ready");
        }
        for signal in signals {
            let status = std::process::Command::new("kill")
                .args([format!("-{signal}"), child.id().to_string()])
                .status()
                .expect("kill runs");
            assert!(status.success());
            std::thread::sleep(gap);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("child still running 10 s after the signals");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The child's part of a test, when this process is the child (it
    /// then never returns).
    fn as_child(in_flight: Duration) -> bool {
        match std::env::var(CHILD_ENV).as_deref() {
            Ok("child") => child(in_flight, false),
            Ok("stubborn") => child(in_flight, true),
            Ok(_) => true,
            Err(_) => false,
        }
    }

    #[test]
    fn a_second_stop_signal_abandons_the_work_in_flight() {
        if as_child(Duration::from_secs(60)) {
            return;
        }
        let test = "signals::tests::a_second_stop_signal_abandons_the_work_in_flight";
        assert_eq!(
            run_child(test, "child", &["TERM", "TERM"], DELIBERATE),
            Some(Exit::Terminated.code()),
            "abandoned by the second SIGTERM"
        );
        assert_eq!(
            run_child(test, "child", &["INT", "INT"], DELIBERATE),
            Some(Exit::Interrupted.code())
        );
    }

    #[test]
    fn a_third_stop_signal_forces_the_end() {
        // The work ignores the abandon here: only the forced end stops it.
        if as_child(Duration::from_secs(60)) {
            return;
        }
        let test = "signals::tests::a_third_stop_signal_forces_the_end";
        assert_eq!(
            run_child(test, "stubborn", &["TERM", "TERM", "INT"], DELIBERATE),
            Some(Exit::Interrupted.code())
        );
    }

    #[test]
    fn a_first_stop_signal_lets_the_write_in_flight_finish() {
        if as_child(Duration::from_millis(300)) {
            return;
        }
        let test = "signals::tests::a_first_stop_signal_lets_the_write_in_flight_finish";
        assert_eq!(run_child(test, "child", &["TERM"], DELIBERATE), Some(0));
    }

    #[test]
    fn one_stop_delivered_twice_at_once_is_still_graceful() {
        if as_child(Duration::from_millis(300)) {
            return;
        }
        let test = "signals::tests::one_stop_delivered_twice_at_once_is_still_graceful";
        assert_eq!(
            run_child(test, "child", &["TERM", "TERM"], Duration::ZERO),
            Some(0)
        );
    }

    // One test for both signals: handlers are process-wide, and a second
    // SIGTERM would end the test binary.
    #[tokio::test]
    async fn sighup_triggers_a_pass_and_sigterm_cancels() {
        let (tx, rx) = trigger_channel();
        let shutdown = Shutdown::new();
        shutdown
            .listen(Duration::from_secs(60), Announce::Log, false)
            .expect("handlers install");
        let _hup = on_hangup(move || tx.send(Trigger::Signal)).expect("handler installs");

        send_to_self("HUP");
        let mut seen = None;
        let loop_cancel = CancellationToken::new();
        let stop = loop_cancel.clone();
        crate::daemon::scheduler::run_loop(rx, Duration::from_secs(3600), loop_cancel, |t, _| {
            if t == Trigger::Signal {
                seen = Some(t);
                stop.cancel();
            }
            async {}
        })
        .await;
        assert_eq!(seen, Some(Trigger::Signal));
        assert!(
            !shutdown.stop.cancel.is_cancelled(),
            "SIGHUP does not stop the daemon"
        );

        send_to_self("TERM");
        tokio::time::timeout(Duration::from_secs(5), shutdown.stop.cancel.cancelled())
            .await
            .expect("SIGTERM cancels");
        assert_eq!(shutdown.stopped_by(), Some(StopSignal::Terminate));
    }
}
