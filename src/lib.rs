//! stagesync keeps authentik's Captcha Stages exactly as a directory of YAML
//! manifests says.
//!
//! # Architecture
//!
//! The flow is `manifests -> plan <- live state`, then `plan -> apply`; the daemon
//! wraps the same path in a loop. Loading, fetching and writing are I/O at the
//! edges; comparing and rendering are pure functions of their inputs.
//!
//! - [`stage`]: the one domain type ([`stage::StageFields`]) for a stage's desired
//!   and live fields, with authentik's defaults and normalisation.
//! - [`secret`]: private keys and tokens as types that cannot be printed, and the
//!   `!Env` / `!File` references manifests use instead of values.
//! - [`manifest`]: finds `*.yaml` files under a directory, parses and checks them
//!   (with file, line and column for every problem) and resolves secret references.
//! - [`capabilities`]: what the connected authentik's version allows
//!   ([`capabilities::Capabilities`]), pure.
//! - [`authentik`]: the API client (pagination, retries, errors in the user's
//!   words) and the wire format.
//! - [`simulator`]: an in-memory authentik that answers as the real one does; the
//!   demo, the tests and the benchmarks share it.
//! - [`policy`]: the operator's policy (trusted): which `!File` / `!Env`
//!   references a manifest may use, and the captcha provider hosts a key may
//!   be sent to. Resolved once in [`cli`], checked while manifests load.
//! - [`plan`]: a pure function of (desired, live, recorded key fingerprints) to a
//!   plan, and its renderings as text, JSON and Markdown; [`plan::saved`] is the
//!   plan file of `plan --out` and the pure check `apply --plan` makes of it.
//! - [`state`]: the state file of salted fingerprints of the keys stagesync wrote.
//! - [`reconcile`]: the shared path of plan, apply and the daemon: fetch live
//!   state with the fewest calls, then plan.
//! - [`verify`]: key checks: asks each stage's captcha provider whether its
//!   private key works, with a made-up response token.
//! - [`apply`]: executes a plan with bounded concurrency; it does not decide one.
//! - [`daemon`]: `stagesync run`: watcher, scheduler (periodic resync, one pass
//!   at a time), signals, backoff, health, metrics and the HTTP endpoints.
//! - [`cli`]: the command line, turned once into resolved configuration;
//!   [`commands`]: one module per subcommand.
//! - [`exit`]: every exit code, and the one place that maps a command's
//!   [`exit::Exit`] or error to a code and prints the error.

pub mod apply;
pub mod authentik;
pub mod capabilities;
pub mod cli;
pub mod commands;
pub mod daemon;
pub mod exit;
pub mod kinds;
pub mod logging;
pub mod manifest;
pub mod output;
pub mod plan;
pub mod policy;
pub mod reconcile;
pub mod secret;
pub mod signals;
pub mod simulator;
pub mod state;
pub(crate) mod text;
pub mod verify;
