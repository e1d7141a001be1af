//! Exit codes of every command, in one place.
//!
//! They follow the conventions CI systems already know from `terraform plan
//! -detailed-exitcode` (2 = changes pending) and BSD `sysexits.h` (64 = usage).

/// Success; for `plan`, also "everything is in sync".
pub const SUCCESS: i32 = 0;
/// A runtime error: authentik unreachable or refusing, a write that failed.
pub const FAILURE: i32 = 1;
/// `plan` found changes to make.
pub const CHANGES_PENDING: i32 = 2;
/// Invalid manifests or configuration; nothing was contacted or written.
pub const INVALID: i32 = 3;
/// The command line itself is wrong (`EX_USAGE`).
pub const USAGE: i32 = 64;
