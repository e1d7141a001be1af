//! Unix signals: SIGTERM and SIGINT stop the daemon, SIGHUP asks for a pass.
//!
//! The first SIGTERM or SIGINT cancels the token: the loop lets the pass in
//! flight finish its writes and then returns, and the process exits 0. A second
//! one means "now": the process exits at once with 128 + the signal number
//! ([`exit::TERMINATED`], [`exit::INTERRUPTED`]), as a shell would report it.
//!
//! Traps:
//! - Handlers are installed by [`spawn`] before it returns, so a signal sent
//!   right after start is not lost to the default action (which would kill the
//!   process without finishing writes).
//! - Once installed, tokio keeps the handlers for the life of the process;
//!   dropping the task does not restore the default action.
//! - The second-signal exit skips destructors and buffered output: it is the
//!   operator's explicit choice.

use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::scheduler::{Trigger, TriggerSender};
use crate::exit;

/// Signal handlers could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the {signal} handler: {source}")]
pub struct SignalError {
    signal: &'static str,
    source: std::io::Error,
}

fn install(
    kind: SignalKind,
    name: &'static str,
) -> Result<tokio::signal::unix::Signal, SignalError> {
    signal(kind).map_err(|source| SignalError {
        signal: name,
        source,
    })
}

/// A second stop signal closer than this to the first is the same stop
/// delivered twice, not an operator insisting.
pub const DELIBERATE_SECOND_SIGNAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Installs the handlers and spawns the task that acts on them. Must be called
/// inside a tokio runtime.
pub(crate) fn spawn(
    cancel: CancellationToken,
    triggers: TriggerSender,
) -> Result<JoinHandle<()>, SignalError> {
    let mut term = install(SignalKind::terminate(), "SIGTERM")?;
    let mut int = install(SignalKind::interrupt(), "SIGINT")?;
    let mut hup = install(SignalKind::hangup(), "SIGHUP")?;
    Ok(tokio::spawn(async move {
        let mut first_stop: Option<std::time::Instant> = None;
        loop {
            let (name, second_exit) = tokio::select! {
                Some(()) = term.recv() => ("SIGTERM", exit::TERMINATED),
                Some(()) = int.recv() => ("SIGINT", exit::INTERRUPTED),
                Some(()) = hup.recv() => {
                    tracing::info!("SIGHUP received, reconciling now");
                    triggers.send(Trigger::Signal);
                    continue;
                }
                else => break,
            };
            if let Some(first) = first_stop {
                // Some supervisors (GNU timeout, a shell's process group) deliver
                // one stop to the process twice within microseconds: only a
                // second signal sent on purpose, later, means "exit at once".
                if first.elapsed() < DELIBERATE_SECOND_SIGNAL {
                    continue;
                }
                tracing::warn!(signal = name, "second stop signal, exiting at once");
                std::process::exit(second_exit);
            }
            first_stop = Some(std::time::Instant::now());
            tracing::info!(
                signal = name,
                "stopping: finishing writes in flight (send it again to exit at once)"
            );
            cancel.cancel();
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::daemon::scheduler::trigger_channel;

    fn send_to_self(signal: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), std::process::id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Further apart than DELIBERATE_SECOND_SIGNAL: a second signal on purpose.
    const DELIBERATE: Duration = Duration::from_millis(800);

    const CHILD_ENV: &str = "STAGESYNC_TEST_SIGNAL_CHILD";
    const READY: &str = "signal-child-ready";

    /// In the child process: handlers installed, then a "write in flight" that
    /// outlasts the test unless a second signal ends the process.
    fn child_after_first_signal_waits(in_flight: Duration) {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let (tx, _rx) = trigger_channel();
            let cancel = CancellationToken::new();
            let _task = spawn(cancel.clone(), tx).expect("handlers install");
            println!("{READY}");
            cancel.cancelled().await;
            tokio::time::sleep(in_flight).await;
        });
    }

    /// Runs this very test in a child process in `mode`, sends it `signals`
    /// once it is ready, and returns its exit code.
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
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("child still running 10 s after the signals");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn a_second_stop_signal_exits_at_once() {
        match std::env::var(CHILD_ENV).as_deref() {
            Ok("long-write") => return child_after_first_signal_waits(Duration::from_secs(60)),
            Ok(_) => return,
            Err(_) => {}
        }
        let test = "daemon::signals::tests::a_second_stop_signal_exits_at_once";
        assert_eq!(
            run_child(test, "long-write", &["TERM", "TERM"], DELIBERATE),
            Some(exit::TERMINATED)
        );
        assert_eq!(
            run_child(test, "long-write", &["INT", "INT"], DELIBERATE),
            Some(exit::INTERRUPTED)
        );
    }

    #[test]
    fn a_first_stop_signal_lets_the_write_in_flight_finish() {
        match std::env::var(CHILD_ENV).as_deref() {
            Ok("short-write") => {
                return child_after_first_signal_waits(Duration::from_millis(300));
            }
            Ok(_) => return,
            Err(_) => {}
        }
        let test = "daemon::signals::tests::a_first_stop_signal_lets_the_write_in_flight_finish";
        assert_eq!(
            run_child(test, "short-write", &["TERM"], DELIBERATE),
            Some(0)
        );
    }

    #[test]
    fn one_stop_delivered_twice_at_once_is_still_graceful() {
        match std::env::var(CHILD_ENV).as_deref() {
            Ok("short-write") => {
                return child_after_first_signal_waits(Duration::from_millis(300));
            }
            Ok(_) => return,
            Err(_) => {}
        }
        let test = "daemon::signals::tests::one_stop_delivered_twice_at_once_is_still_graceful";
        assert_eq!(
            run_child(test, "short-write", &["TERM", "TERM"], Duration::ZERO),
            Some(0)
        );
    }

    // One test for both signals: handlers are process-wide, and a second
    // SIGTERM would end the test binary.
    #[tokio::test]
    async fn sighup_triggers_a_pass_and_sigterm_cancels() {
        let (tx, rx) = trigger_channel();
        let cancel = CancellationToken::new();
        let _task = spawn(cancel.clone(), tx).expect("handlers install");

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
        assert!(!cancel.is_cancelled(), "SIGHUP does not stop the daemon");

        send_to_self("TERM");
        tokio::time::timeout(Duration::from_secs(5), cancel.cancelled())
            .await
            .expect("SIGTERM cancels the token");
    }
}
