//! Benchmark: what `run`'s event poll costs while nothing happens, and how
//! fast it reverts a change made in authentik's UI.
//!
//! Run: `cargo bench --bench drift` (`BENCH_IDLE_SECS` sets the idle window,
//! default 20; `BENCH_UI_EDITS` the number of UI edits, default 10;
//! `BENCH_EVENT_POLL` the poll, default 5s).
//!
//! For each size N, N manifests are converged by the real binary against the
//! simulator answering with a real server's latencies
//! (`LatencyProfile::authentik_2025_12`), with `--interval 5m` and the poll.
//! Then:
//! - idle: every request the simulator receives over the window, per poll
//!   (the goal: one small request per poll);
//! - revert: a UI edit by another user (the simulator logs its event as
//!   authentik does), timed until the simulator holds the manifest's value
//!   again; median, p95 and max. The goal: within the poll + 2 s at p95, with
//!   the resync five minutes away.

use std::time::{Duration, Instant};

use stagesync::simulator::{Actor, LatencyProfile};
use support::daemon::{Daemon, Harness};

const KEY_VAR: &str = "BENCH_CAPTCHA_KEY";
const EVENTS: &str = "/api/v3/events/events/";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let idle = Duration::from_secs(env_or("BENCH_IDLE_SECS", 20));
    let edits: usize = env_or("BENCH_UI_EDITS", 10);
    let poll: String = env_or("BENCH_EVENT_POLL", "5s".to_owned());
    println!(
        "stagesync run --interval 5m --event-poll {poll}, simulator at authentik 2025.12.4's latencies, idle window {} s",
        idle.as_secs()
    );
    println!(
        "| stages | idle requests | polls | requests per idle poll | UI edit to reverted (median / p95 / max of {edits}) |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for n in [100usize, 1_000] {
        let row = measure(n, idle, edits, &poll);
        println!(
            "| {n} | {} | {} | {:.2} | {} ms / {} ms / {} ms |",
            row.idle_requests,
            row.polls,
            row.idle_requests as f64 / row.polls.max(1) as f64,
            row.median.as_millis(),
            row.p95.as_millis(),
            row.max.as_millis(),
        );
    }
}

struct Row {
    idle_requests: u64,
    polls: u64,
    median: Duration,
    p95: Duration,
    max: Duration,
}

fn measure(n: usize, idle: Duration, edits: usize, poll: &str) -> Row {
    let h = Harness::new();
    let sim = &h.sim;
    for i in 0..n {
        h.ws.write(
            &format!("stage-{i:05}.yaml"),
            &format!(
                "name: bench-{i:05}\npublic_key: site-{i:05}\nprivate_key: !Env {KEY_VAR}\nscore_min_threshold: 0.5\n"
            ),
        );
    }
    let mut d = h.start_daemon(
        h.ws.stages(),
        &["--interval", "5m", "--event-poll", poll],
        &[(KEY_VAR, "bench-private-key")],
    );
    wait(&mut d, Duration::from_secs(300), || {
        sim.captcha_stages().len() == n
    });
    d.wait_for_metric("stagesync_stages{status=\"in_sync\"}", n as f64);
    sim.set_latency_profile(LatencyProfile::authentik_2025_12());
    // Past the poll that sees the creates' events.
    std::thread::sleep(Duration::from_secs(12));

    sim.reset_counts();
    std::thread::sleep(idle);
    let counts = sim.request_counts();
    let polls = counts.get("GET", EVENTS);

    let stages = sim.captcha_stages();
    let ui = Actor::ui("bench-admin", "192.0.2.7");
    let mut took = Vec::new();
    for round in 0..edits {
        let stage = &stages[(round * 7919) % n];
        let name = stage.fields.name.clone();
        let edited = Instant::now();
        sim.edit_as(&ui, stage.uuid, |f| f.score_min_threshold = 0.05);
        wait(&mut d, Duration::from_secs(60), || {
            sim.captcha_stages()
                .iter()
                .any(|s| s.fields.name == name && s.fields.score_min_threshold == 0.5)
        });
        took.push(edited.elapsed());
        // A moment apart, at a random-ish phase of the poll.
        std::thread::sleep(Duration::from_millis(700 + 300 * (round as u64 % 5)));
    }
    took.sort();
    d.signal(libc::SIGTERM);
    let _ = d.wait_exit(Duration::from_secs(10));
    sim.shutdown();
    let at = |q: f64| took[((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1];
    Row {
        idle_requests: counts.total(),
        polls,
        median: at(0.5),
        p95: at(0.95),
        max: took[took.len() - 1],
    }
}

fn wait(d: &mut Daemon, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        d.assert_running();
        assert!(
            Instant::now() < deadline,
            "not converged; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
