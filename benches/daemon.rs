//! Benchmark: what `stagesync run` costs while it waits, and how fast it reacts.
//!
//! Run: `cargo bench --bench daemon` (`BENCH_IDLE_SECS` sets the idle window,
//! default 10).
//!
//! For each size N, N manifests (one stage each, in 20 sub-folders) are
//! written, the real binary (release build, a child process) runs against the
//! simulator with the default `--interval 5m` and `--debounce 500ms`, and once
//! it has created every stage:
//! - idle CPU: the child's utime+stime from `/proc/<pid>/stat` over the idle
//!   window, as a share of one core; context switches of all its threads over
//!   the same window (a polling loop would show up as a steady count);
//! - memory: `VmRSS` (now) and `VmHWM` (peak) from `/proc/<pid>/status`;
//! - reaction: from rewriting one manifest to the simulator holding the new
//!   value, five times (this includes the 500 ms debounce and a full pass over
//!   all N manifests and live stages).
//!
//! Nothing talks to the daemon during the idle window (no /metrics scrape).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::daemon::{Daemon, Harness};

const KEY_VAR: &str = "BENCH_CAPTCHA_KEY";
const FOLDERS: usize = 20;
const EDITS: usize = 5;

fn main() {
    let idle = Duration::from_secs(
        std::env::var("BENCH_IDLE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10),
    );
    println!(
        "stagesync run, release build, --interval 5m --debounce 500ms, idle window {} s, {} CPUs",
        idle.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| manifests | start-up to converged | CPU time while idle | context switches while idle | VmRSS | VmHWM | edit to converged (median / max of {EDITS}) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for n in [100usize, 1_000] {
        let row = measure(n, idle);
        println!(
            "| {n} | {:.2} s | {} ms ({:.2} % of a core) | {} | {:.1} MiB | {:.1} MiB | {} ms / {} ms |",
            row.startup.as_secs_f64(),
            row.idle_cpu.as_millis(),
            row.idle_cpu_percent,
            row.idle_switches,
            row.rss_kib as f64 / 1024.0,
            row.hwm_kib as f64 / 1024.0,
            row.edit_median.as_millis(),
            row.edit_max.as_millis(),
        );
    }
}

struct Row {
    startup: Duration,
    /// CPU time used in the idle window (clock-tick resolution, usually 10 ms).
    idle_cpu: Duration,
    idle_cpu_percent: f64,
    idle_switches: u64,
    rss_kib: u64,
    hwm_kib: u64,
    edit_median: Duration,
    edit_max: Duration,
}

fn measure(n: usize, idle: Duration) -> Row {
    let h = Harness::new();
    let sim = &h.sim;
    let stages = h.ws.stages();
    let paths: Vec<PathBuf> = (0..n)
        .map(|i| {
            let path = stages
                .join(format!("team-{:02}", i % FOLDERS))
                .join(format!("stage-{i:05}.yaml"));
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, manifest(i, 0.5)).expect("write manifest");
            path
        })
        .collect();

    let started = Instant::now();
    let mut d = h.start_daemon(
        stages,
        &["--interval", "5m", "--debounce", "500ms"],
        &[(KEY_VAR, "bench-private-key")],
    );
    wait(&mut d, Duration::from_secs(120), || {
        sim.captcha_stages().len() == n
    });
    let startup = started.elapsed();
    // The pass that created them has finished (state saved, metrics set).
    d.wait_for_metric("stagesync_stages{status=\"in_sync\"}", n as f64);
    std::thread::sleep(Duration::from_secs(1));

    let pid = d.pid();
    let (cpu_before, switches_before) = (cpu_ticks(pid), context_switches(pid));
    let window = Instant::now();
    std::thread::sleep(idle);
    let (cpu_after, switches_after) = (cpu_ticks(pid), context_switches(pid));
    let elapsed = window.elapsed().as_secs_f64();
    let ticks_per_second = clock_ticks_per_second();
    let idle_cpu = Duration::from_secs_f64((cpu_after - cpu_before) as f64 / ticks_per_second);
    let idle_cpu_percent = idle_cpu.as_secs_f64() / elapsed * 100.0;
    let (rss_kib, hwm_kib) = memory_kib(pid);

    let mut edits = Vec::new();
    for round in 0..EDITS {
        let i = (round * 7919) % n;
        let value = 0.1 + 0.1 * (round + 1) as f64;
        let value = (value * 10.0).round() / 10.0;
        let edited = Instant::now();
        std::fs::write(&paths[i], manifest(i, value)).expect("edit manifest");
        let name = format!("bench-{i:05}");
        wait(&mut d, Duration::from_secs(60), || {
            sim.captcha_stages()
                .iter()
                .any(|s| s.fields.name == name && s.fields.score_min_threshold == value)
        });
        edits.push(edited.elapsed());
        // Quiet again before the next edit.
        std::thread::sleep(Duration::from_millis(700));
    }
    edits.sort();
    d.signal(libc::SIGTERM);
    let _ = d.wait_exit(Duration::from_secs(10));
    sim.shutdown();
    Row {
        startup,
        idle_cpu,
        idle_cpu_percent,
        idle_switches: switches_after.saturating_sub(switches_before),
        rss_kib,
        hwm_kib,
        edit_median: edits[edits.len() / 2],
        edit_max: edits[edits.len() - 1],
    }
}

fn manifest(i: usize, threshold: f64) -> String {
    format!(
        "name: bench-{i:05}\npublic_key: site-{i:05}\nprivate_key: !Env {KEY_VAR}\nscore_min_threshold: {threshold}\n"
    )
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

/// utime + stime of the whole process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/pid/stat");
    // The command name (field 2) may contain spaces; fields after it are plain.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15, i.e. the 12th and 13th after the name.
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// Voluntary and involuntary context switches, summed over every thread.
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// (VmRSS, VmHWM) in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))
        .expect("/proc/pid/status");
    let value = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (value("VmRSS:"), value("VmHWM:"))
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}
