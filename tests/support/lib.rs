//! What the integration tests (`tests/*.rs`) and benchmarks share. A test file
//! reaches it as the crate `support` (a dev-dependency of stagesync):
//! `use support::cli::{Workspace, start_sim};`.
//!
//! - [`cli`]: black-box runs of the real binary: a temp [`cli::Workspace`] of
//!   manifests and a state file, the simulator on loopback ([`cli::start_sim`]),
//!   a command pointed at both ([`cli::Workspace::cmd`]) and [`cli::run`] to
//!   run it from an async test.
//! - [`client`]: the library's HTTP client against the simulator, with fast
//!   retries ([`client::sim`], [`client::client`]) and write requests.
//! - [`daemon`]: `stagesync run` as a child process ([`daemon::Daemon`]), its
//!   log, HTTP endpoints and metrics, polled with a deadline; a
//!   [`daemon::Harness`] of simulator and workspace that starts it.
//! - [`files`]: writing files the ways editors, git-sync and the kubelet do.
//! - [`validate`]: `stagesync validate` on the fixture directories.
//! - [`watch`]: the file watcher on a temp directory, waiting for its hints.
//!
//! Traps: [`cli::TOKEN`] and [`client::TOKEN`] differ (each is searched for in
//! captured output, so each must be distinctive). Nothing here sleeps a fixed
//! time to let things settle: waits poll until a deadline and then fail with
//! what they saw.

pub mod cli;
pub mod client;
pub mod daemon;
pub mod files;
pub mod validate;
pub mod watch;
