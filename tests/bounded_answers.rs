//! A hostile or broken server costs bounded memory and time: the real binary
//! against the simulator sending an endless body, a 50 MB error message and
//! a long one under the limit.
//!
//! Peak memory is the children's maximum resident set size (`getrusage`), so
//! this file runs nothing but stagesync children, each of which must stay far
//! below what the server sends.

use std::time::{Duration, Instant};

use stagesync::simulator::{Fault, FaultKind};
use support::cli::{Workspace, manifest, run, start_sim, stderr, stdout};

/// Far above what a bounded reader needs (the 8 MiB limit plus the process),
/// far below what reading the answers whole would take.
const MAX_CHILD_RSS_MIB: i64 = 96;

const KEY: &str = "bounded-answers-key-51c0e2";

fn peak_child_rss_mib() -> i64 {
    // SAFETY: getrusage only writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    usage.ru_maxrss / 1024
}

fn workspace() -> Workspace {
    let ws = Workspace::new();
    ws.write("a.yaml", &manifest("alpha", "site-alpha", "KEY", ""));
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_list_fails_with_the_limit_named_in_bounded_memory() {
    let sim = start_sim().await;
    let ws = workspace();
    sim.inject(
        Fault::new(FaultKind::StreamedDetail {
            status: 200,
            bytes: None,
        })
        .on("GET", "/api/v3/stages/captcha/"),
    );
    let mut cmd = ws.cmd(&sim);
    cmd.env("KEY", KEY)
        .args(["plan", "--timeout", "20s", "stages"]);
    let started = Instant::now();
    let out = run(cmd).await;
    let took = started.elapsed();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("(HTTP 200) is larger than 8 MiB, the most stagesync reads of one answer"),
        "{err}"
    );
    assert!(err.contains(r#"it starts with: {"detail": "xxx"#), "{err}");
    assert!(err.len() < 1_500, "a short message: {} bytes", err.len());
    assert!(
        took < Duration::from_secs(15),
        "not waiting for a timeout: {took:?}"
    );
    assert_eq!(
        sim.request_counts().get("GET", "/api/v3/stages/captcha/"),
        1,
        "a too large answer is not asked for again"
    );
    let rss = peak_child_rss_mib();
    assert!(rss < MAX_CHILD_RSS_MIB, "peak RSS {rss} MiB");
}

/// `apply --yes` of one new stage whose create is answered with a 400 of a
/// `{"detail": "xxx…"}` body `bytes` long: what it printed (stdout and stderr)
/// and how many creates it sent.
async fn apply_against_a_400_of(bytes: u64) -> (Option<i32>, String, u64) {
    let sim = start_sim().await;
    let ws = workspace();
    sim.inject(
        Fault::new(FaultKind::StreamedDetail {
            status: 400,
            bytes: Some(bytes),
        })
        .on("POST", "/api/v3/stages/captcha/"),
    );
    let mut cmd = ws.cmd(&sim);
    cmd.env("KEY", KEY).args(["apply", "--yes", "stages"]);
    let out = run(cmd).await;
    let printed = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!printed.contains(KEY));
    let creates = sim.request_counts().get("POST", "/api/v3/stages/captcha/");
    (out.status.code(), printed, creates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_with_a_50_mb_detail_is_refused_at_the_limit_not_printed() {
    let (code, printed, creates) = apply_against_a_400_of(50_000_000).await;
    assert_eq!(code, Some(1), "{printed}");
    assert!(
        printed.contains("(HTTP 400) is larger than 8 MiB"),
        "{printed}"
    );
    assert!(
        printed.len() < 4_000,
        "a short report: {} bytes",
        printed.len()
    );
    assert_eq!(creates, 1, "not retried");
    let rss = peak_child_rss_mib();
    assert!(rss < MAX_CHILD_RSS_MIB, "peak RSS {rss} MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_detail_under_the_limit_is_quoted_cut_with_what_is_left() {
    let (code, printed, _) = apply_against_a_400_of(1_000_000).await;
    assert_eq!(code, Some(1), "{printed}");
    // {"detail": "…"} of 1,000,000 bytes: 999,986 of message, 300 shown.
    let quoted = format!(
        "authentik rejected the stage (HTTP 400): {}…(999686 bytes more)",
        "x".repeat(300)
    );
    assert!(printed.contains(&quoted), "{printed}");
    assert!(
        printed.len() < 4_000,
        "a short report: {} bytes",
        printed.len()
    );
}
