//! Records the git commit the binary is built from, for `stagesync --version`.
//!
//! `STAGESYNC_GIT_COMMIT` in the build's environment wins (a build from a
//! source archive can pass it); otherwise `git rev-parse HEAD`, when the
//! sources are a git checkout and git is installed. Neither: no commit, and
//! `--version` says so. Re-runs only when HEAD or the branch it names moves.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=STAGESYNC_GIT_COMMIT");
    let given = std::env::var("STAGESYNC_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty());
    let commit = given.or_else(|| {
        // Only this package's own checkout counts, not one it happens to sit in.
        let top = git(&["rev-parse", "--show-toplevel"])?;
        let here = std::env::var("CARGO_MANIFEST_DIR").ok()?;
        if std::fs::canonicalize(&top).ok()? != std::fs::canonicalize(&here).ok()? {
            return None;
        }
        // Worktrees keep HEAD and the refs in different places: ask git. A
        // path that does not exist (a packed ref) would re-run every build.
        let branch = git(&["symbolic-ref", "-q", "HEAD"]);
        for path in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
            if let Some(p) = git(&["rev-parse", "--git-path", path])
                && std::path::Path::new(&p).exists()
            {
                println!("cargo:rerun-if-changed={p}");
            }
        }
        git(&["rev-parse", "HEAD"])
    });
    if let Some(commit) = commit {
        println!("cargo:rustc-env=STAGESYNC_GIT_COMMIT={commit}");
    }
}
