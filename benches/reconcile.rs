//! Benchmark: `stagesync apply` against the simulator with per-request latency,
//! next to the same work done the naive way (one GET and one PUT per stage, in
//! sequence).
//!
//! Run: `cargo bench --bench reconcile` (add `BENCH_FULL=1` to include the naive
//! run at 10,000 stages, which takes several minutes by construction).
//! `BENCH_LATENCY_MS` sets the injected latency (default 20).
//!
//! For each size N, live authentik holds N stages that the manifests describe,
//! with their keys already recorded; 10% of them are then edited out of band.
//! stagesync (the real binary, a child process) plans and applies; its peak
//! memory is the child's maximum resident set size.
//!
//! A second table creates N new stages (N = 100 and 1,000) on an install that
//! already holds 20 stages of other types, with the per-call latencies of a
//! real authentik 2025.12.4 on one worker
//! ([`LatencyProfile::authentik_2025_12`]: list page 200 ms, `stages/all` page
//! 720 ms, name look-up 370 ms, PUT 127 ms, POST 130 ms), scaled by
//! `BENCH_REAL_SCALE` (default 0.1, so the table takes seconds, not minutes).
//! It reports the calls, the bound they must stay within (ceil(all stages /
//! 100) + creates + 2), the measured time and that time divided by the scale,
//! the estimate for a real server (the run is dominated by the injected waits).
//! `BENCH_ONLY_CREATES=1` runs this table alone.
//!
//! A third table: N stages (100 and 1,000) each guarding its own flow
//! (`guards:` with one binding), 10% of the bindings drifted in the UI (half
//! removed, half moved to another order), at the injected latency. It
//! reports the calls next to the minimal count (the version, one call per 100
//! of each list: captcha stages, bindings, identification stages, flows, and
//! one write per drifted guard), which they must stay within plus 3, and the
//! stage-only figure of the same stages without `guards` keys.
//! `BENCH_ONLY_GUARDS=1` runs this table alone.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use stagesync::kinds::captcha::StageFields;
use stagesync::simulator::{self, LatencyProfile, SimConfig, SimHandle};

const TOKEN: &str = "bench-token";
const DOCS_PER_FILE: usize = 1000;

fn main() {
    let latency = Duration::from_millis(
        std::env::var("BENCH_LATENCY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    );
    let full = std::env::var_os("BENCH_FULL").is_some();
    let binary = env!("CARGO_BIN_EXE_stagesync");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    if std::env::var_os("BENCH_ONLY_GUARDS").is_some() {
        guards_table(&runtime, binary, latency);
        return;
    }
    if std::env::var_os("BENCH_ONLY_CREATES").is_none() {
        drift_table(&runtime, binary, latency, full);
    }
    creates_table(&runtime, binary);
    guards_table(&runtime, binary, latency);
}

/// N stages each guarding one flow, 10% of the guards drifted.
fn guards_table(runtime: &tokio::runtime::Runtime, binary: &str, latency: Duration) {
    println!();
    println!(
        "guards: each stage guards its own flow, 10% of the bindings drifted, latency {} ms",
        latency.as_millis()
    );
    println!(
        "| stages | calls | minimal | bound (minimal + 3) | writes | wall | stage-only calls (no guards key) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for n in [100usize, 1_000] {
        let work = tempfile::tempdir().expect("temp dir");
        let stages = work.path().join("stages");
        std::fs::create_dir_all(&stages).expect("stages dir");
        let sim = runtime.block_on(async {
            simulator::start(SimConfig {
                token: TOKEN.to_owned(),
                ..SimConfig::default()
            })
            .await
            .expect("simulator")
        });
        let mut text = String::new();
        for i in 0..n {
            sim.seed_flow(&format!("flow-{i:05}"), "Flow");
            text.push_str(&format!(
                "---\nname: stage-{i:05}\npublic_key: site-{i}\nprivate_key: !Env BENCH_KEY\nguards:\n  - flow: flow-{i:05}\n    order: 10\n"
            ));
        }
        std::fs::write(stages.join("guarded.yaml"), text).expect("manifest");
        // Converged first: stages created and bound.
        let status = stagesync(binary, &sim, work.path())
            .status()
            .expect("first apply");
        assert_eq!(status.code(), Some(0), "first apply converged");
        // 10% drifted in the UI: half unbound, half moved.
        let live = sim.captcha_stages();
        for (k, stage) in live.iter().step_by(10).take(n / 10).enumerate() {
            let (binding, _, _) = sim.bindings_of_stage(stage.uuid)[0];
            if k % 2 == 0 {
                sim.unbind(binding);
            } else {
                sim.set_binding_order(binding, 99);
            }
        }
        sim.set_latency(latency);
        sim.reset_counts();
        let started = Instant::now();
        let status = stagesync(binary, &sim, work.path())
            .status()
            .expect("apply");
        let wall = started.elapsed();
        assert_eq!(status.code(), Some(0), "apply converged");
        let counts = sim.request_counts();
        let pages = |count: usize| count.div_ceil(100).max(1) as u64;
        let minimal = 1 + pages(n) * 3 + 1 + (n / 10) as u64;
        // Who changed the drifted guards is asked apart (the token's user,
        // one event query per drifted binding): not part of the guards' bound.
        let attribution = counts.get("GET", "/api/v3/core/users/me/")
            + counts.get("GET", "/api/v3/events/events/");
        assert!(
            counts.total() - attribution <= minimal + 3,
            "{} calls ({attribution} for who changed them), minimal {minimal}",
            counts.total()
        );
        // The same stages without guards keys: today's stage-only figure.
        let plain: String = (0..n)
            .map(|i| {
                format!(
                    "---\nname: stage-{i:05}\npublic_key: site-{i}\nprivate_key: !Env BENCH_KEY\n"
                )
            })
            .collect();
        std::fs::write(stages.join("guarded.yaml"), plain).expect("manifest");
        sim.reset_counts();
        let status = stagesync(binary, &sim, work.path())
            .status()
            .expect("apply");
        assert_eq!(status.code(), Some(0), "stage-only apply");
        let stage_only = sim.request_counts().total();
        println!(
            "| {n} | {} | {minimal} | {} | {} | {:.2} s | {stage_only} |",
            counts.total() - attribution,
            minimal + 3,
            counts.writes(),
            wall.as_secs_f64(),
        );
        sim.shutdown();
    }
}

/// Stages of other types on the install of the creates table.
const OTHER_STAGES: usize = 20;

/// N creates at a real server's per-call latencies (scaled).
fn creates_table(runtime: &tokio::runtime::Runtime, binary: &str) {
    let scale: f64 = std::env::var("BENCH_REAL_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|s: &f64| *s > 0.0)
        .unwrap_or(0.1);
    println!();
    println!(
        "creates on an install holding {OTHER_STAGES} stages of other types, authentik 2025.12.4 latencies x {scale}"
    );
    println!(
        "| creates | calls | bound | version + captcha list | stages/all | POST | wall (scaled) | estimate at real latency |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in [100usize, 1_000] {
        let work = tempfile::tempdir().expect("temp dir");
        let sim = runtime.block_on(async {
            simulator::start(SimConfig {
                token: TOKEN.to_owned(),
                ..SimConfig::default()
            })
            .await
            .expect("simulator")
        });
        for i in 0..OTHER_STAGES {
            sim.seed_other_stage(
                &format!("default-stage-{i:02}"),
                "ak-stage-identification-form",
            );
        }
        let stages = work.path().join("stages");
        std::fs::create_dir_all(&stages).expect("stages dir");
        let text: String = (0..n)
            .map(|i| {
                format!(
                    "---\nname: new-{i:05}\npublic_key: site-{i}\nprivate_key: !Env BENCH_KEY\n"
                )
            })
            .collect();
        std::fs::write(stages.join("new.yaml"), text).expect("manifest");
        sim.set_latency_profile(LatencyProfile::authentik_2025_12().scaled(scale));
        let started = Instant::now();
        let status = stagesync(binary, &sim, work.path())
            .status()
            .expect("run stagesync");
        let wall = started.elapsed();
        assert_eq!(status.code(), Some(0), "apply created every stage");
        let counts = sim.request_counts();
        let all_stages = OTHER_STAGES + n;
        let bound = all_stages.div_ceil(100) as u64 + n as u64 + 2;
        assert!(
            counts.total() <= bound,
            "{} calls, bound {bound}",
            counts.total()
        );
        println!(
            "| {n} | {} | {bound} | {} | {} | {} | {:.2} s | {:.1} s |",
            counts.total(),
            counts.get("GET", "/api/v3/admin/version/")
                + counts.get("GET", "/api/v3/stages/captcha/"),
            counts.get("GET", "/api/v3/stages/all/"),
            counts.get("POST", "/api/v3/stages/captcha/"),
            wall.as_secs_f64(),
            wall.as_secs_f64() / scale,
        );
        sim.shutdown();
    }
}

/// Plan and apply N drifted stages against the naive reconciler.
fn drift_table(runtime: &tokio::runtime::Runtime, binary: &str, latency: Duration, full: bool) {
    println!(
        "latency per request: {} ms, drift: 10%",
        latency.as_millis()
    );
    println!(
        "| stages | stagesync requests | stagesync wall | stagesync peak RSS | naive requests | naive wall | speed-up |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for n in [100usize, 1_000, 10_000] {
        let work = tempfile::tempdir().expect("temp dir");
        let sim = runtime.block_on(setup(n, work.path(), binary));

        drift(&sim, n);
        sim.set_latency(latency);
        sim.reset_counts();
        let started = Instant::now();
        let status = stagesync(binary, &sim, work.path())
            .status()
            .expect("run stagesync");
        let wall = started.elapsed();
        assert_eq!(status.code(), Some(0), "apply converged");
        let requests = sim.request_counts().total();
        let rss_kib = peak_child_rss_kib();

        let (naive_requests, naive_wall) = if n < 10_000 || full {
            sim.set_latency(Duration::ZERO);
            drift(&sim, n);
            sim.set_latency(latency);
            sim.reset_counts();
            let started = Instant::now();
            runtime.block_on(naive(&sim));
            (Some(sim.request_counts().total()), Some(started.elapsed()))
        } else {
            (None, None)
        };
        println!(
            "| {n} | {requests} | {:.2} s | {:.1} MiB | {} | {} | {} |",
            wall.as_secs_f64(),
            rss_kib as f64 / 1024.0,
            naive_requests.map_or("(BENCH_FULL=1)".into(), |r| r.to_string()),
            naive_wall.map_or("-".into(), |w| format!("{:.2} s", w.as_secs_f64())),
            naive_wall.map_or("-".into(), |w| format!(
                "{:.0}x",
                w.as_secs_f64() / wall.as_secs_f64()
            )),
        );
        sim.shutdown();
    }
}

/// N live stages, N manifests describing them, keys recorded by a first apply
/// at zero latency.
async fn setup(n: usize, dir: &Path, binary: &str) -> SimHandle {
    let sim = simulator::start(SimConfig {
        token: TOKEN.to_owned(),
        ..SimConfig::default()
    })
    .await
    .expect("simulator");
    let stages = dir.join("stages");
    std::fs::create_dir_all(&stages).expect("stages dir");
    for chunk in 0..n.div_ceil(DOCS_PER_FILE) {
        let mut text = String::new();
        for i in chunk * DOCS_PER_FILE..((chunk + 1) * DOCS_PER_FILE).min(n) {
            sim.seed_captcha(
                StageFields::with_defaults(format!("stage-{i:05}"), format!("site-{i}")),
                "k",
            );
            text.push_str(&format!(
                "---\nname: stage-{i:05}\npublic_key: site-{i}\nprivate_key: !Env BENCH_KEY\n"
            ));
        }
        std::fs::write(stages.join(format!("part-{chunk:03}.yaml")), text).expect("manifest");
    }
    let status = tokio::task::spawn_blocking({
        let mut cmd = stagesync(binary, &sim, dir);
        move || cmd.status()
    })
    .await
    .expect("join")
    .expect("first apply");
    assert_eq!(status.code(), Some(0), "first apply records the keys");
    sim
}

/// Edits every tenth stage out of band, as an admin in the UI would.
fn drift(sim: &SimHandle, n: usize) {
    let live = sim.captcha_stages();
    for stage in live.iter().step_by(10).take(n / 10) {
        sim.edit(stage.uuid, |f| f.score_min_threshold = 0.1);
    }
}

fn stagesync(binary: &str, sim: &SimHandle, dir: &Path) -> Command {
    let mut cmd = Command::new(binary);
    cmd.current_dir(dir)
        .args(["apply", "--yes", "stages"])
        .env("AUTHENTIK_URL", sim.url())
        .env("AUTHENTIK_TOKEN", TOKEN)
        .env("BENCH_KEY", "k")
        .env("STAGESYNC_STATE_FILE", dir.join("state.json"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null());
    cmd
}

/// The naive reconciler: GET each stage, then PUT it, one after another.
async fn naive(sim: &SimHandle) {
    let client = reqwest::Client::new();
    let base = format!("{}/api/v3/stages/captcha", sim.url());
    for stage in sim.captcha_stages() {
        let url = format!("{base}/{}/", stage.uuid);
        let got = client
            .get(&url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("GET");
        assert!(got.status().is_success());
        let body = serde_json::json!({
            "name": stage.fields.name,
            "public_key": stage.fields.public_key,
            "private_key": "k",
            "score_min_threshold": 0.5,
        });
        let put = client
            .put(&url)
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .expect("PUT");
        assert!(put.status().is_success());
    }
}

/// The largest resident set of any finished child, in KiB (Linux reports KiB).
fn peak_child_rss_kib() -> i64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    usage.ru_maxrss
}
