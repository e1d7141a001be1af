//! stagesync keeps authentik's Captcha Stages exactly as a directory of YAML
//! manifests says.
//!
//! # Architecture
//!
//! The flow is `manifests -> plan <- live state`, then `plan -> apply`; the daemon
//! wraps the same path in a loop. Loading, fetching and writing are I/O at the
//! edges; comparing and rendering are pure functions of their inputs. The
//! pipeline is written once; what differs per kind of object is data in that
//! kind's folder.
//!
//! - [`kinds`]: the kinds of objects stagesync manages, each a table plus a few
//!   functions: identity, fields (one table: defaults, normalisation, manifest
//!   keys and checks, diff, wire body, JSON schemas), endpoints, dependencies.
//!   [`kinds::captcha`] is the first kind, [`kinds::field`] the table machinery.
//! - [`secret`]: private keys and tokens as types that cannot be printed, and the
//!   `!Env` / `!File` references manifests use instead of values.
//! - [`manifest`]: finds `*.yaml` files under a directory, parses them and checks
//!   each document against its kind's table (with file, line and column for
//!   every problem), and resolves secret references.
//! - `confined`: opening untrusted paths beneath a directory handle (no `..` or
//!   symlink leads out), regular files only, bounded reads.
//! - [`capabilities`]: what the connected authentik's version is
//!   ([`capabilities::Capabilities`]), pure.
//! - [`authentik`]: the transport to authentik's API (pagination, retries,
//!   errors in the user's words) and name look-ups across stage types; each
//!   kind's endpoints live with the kind.
//! - [`simulator`]: an in-memory authentik that answers as the real one does; the
//!   demo, the tests and the benchmarks share it.
//! - [`policy`]: the operator's policy (trusted): which `!File` / `!Env`
//!   references a manifest may use, and the captcha provider hosts a key may
//!   be sent to. Resolved once in [`cli`], checked while manifests load.
//! - [`plan`]: a pure function of (desired, live, recorded key fingerprints,
//!   what may be pruned) to one list of entries (writes and deletes, ordered by
//!   their dependencies), and its renderings as text, JSON and Markdown;
//!   [`plan::saved`] is the plan file of `plan --out` and the pure comparison
//!   `apply --plan` makes of it with a plan made again.
//! - [`state`]: the state file: salted fingerprints of the keys stagesync
//!   wrote, and the inventory of the objects it manages.
//! - [`reconcile`]: the one pipeline of plan, apply, apply --plan, run and
//!   demo: a [`reconcile::Session`] whose steps are load, fetch, plan,
//!   execute, record, save.
//! - [`drift`]: who made a drift: the newest event of a drifted object in
//!   authentik's event log, stagesync's own writes recognised (pure).
//! - [`verify`]: key checks: asks each stage's captcha provider whether its
//!   private key works, with a made-up response token.
//! - [`apply`]: executes a plan with bounded concurrency; it does not decide one.
//! - [`daemon`]: `stagesync run`: watcher, scheduler (periodic resync, one pass
//!   at a time), backoff, health, metrics, the HTTP endpoints and the pass.
//! - [`signals`]: stop signals as an input ([`signals::Shutdown`]) for `apply`
//!   and `run`, and SIGHUP for the daemon.
//! - [`cli`]: the command line, turned once into resolved configuration;
//!   [`commands`]: one module per subcommand, writing through an
//!   [`output::Console`] that tests capture.
//! - [`exit`]: every exit code, and the one place that maps a command's
//!   [`exit::Exit`] or error to a code and prints the error; only `main` ends
//!   the process.
//! - `text`: escaping of outside text and error chains (a leaf module).
//!
//! No module imports another that imports it back (`tests/architecture.rs`).

pub mod apply;
pub mod authentik;
pub mod capabilities;
pub mod cli;
pub mod commands;
pub(crate) mod confined;
pub mod daemon;
pub mod drift;
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
