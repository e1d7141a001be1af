//! How fast `manifest::load` checks 10,000 valid documents, once in a single
//! multi-document file (under the 1 MiB limit) and once spread over 10,000
//! files in 100 folders. Run with `cargo bench --bench validate`.

use std::path::Path;
use std::time::{Duration, Instant};

const DOCUMENTS: usize = 10_000;
const RUNS: usize = 7;

fn document(i: usize) -> String {
    format!(
        "name: stage-{i:05}\npublic_key: site-{i:05}\nprivate_key: !Env BENCH_KEY\ninteractive: true\n"
    )
}

fn one_file(dir: &Path) -> u64 {
    let text: String = (0..DOCUMENTS).map(|i| document(i) + "---\n").collect();
    std::fs::write(dir.join("all.yaml"), &text).expect("write");
    text.len() as u64
}

fn many_files(dir: &Path) -> u64 {
    let mut bytes = 0;
    for i in 0..DOCUMENTS {
        let folder = dir.join(format!("team-{:02}", i % 100));
        std::fs::create_dir_all(&folder).expect("mkdir");
        let text = document(i);
        bytes += text.len() as u64;
        std::fs::write(folder.join(format!("stage-{i:05}.yaml")), text).expect("write");
    }
    bytes
}

fn time(dir: &Path) -> (Duration, Duration) {
    let mut runs: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            let manifests = stagesync::manifest::load(dir, &Default::default()).expect("load");
            let elapsed = started.elapsed();
            assert!(manifests.is_valid(), "{:?}", manifests.diagnostics.first());
            assert_eq!(manifests.stages().count(), DOCUMENTS);
            elapsed
        })
        .collect();
    runs.sort();
    (runs[0], runs[RUNS / 2])
}

/// Worst cases just under the size limit: they must fail, and fail fast.
fn hostile(name: &str, text: String) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("hostile.yaml"), &text).expect("write");
    let mut runs: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            let manifests =
                stagesync::manifest::load(dir.path(), &Default::default()).expect("load");
            let elapsed = started.elapsed();
            assert!(!manifests.is_valid());
            elapsed
        })
        .collect();
    runs.sort();
    println!(
        "| hostile: {name} | 1 | - | {} | {:.1} ms | {:.1} ms |",
        text.len(),
        runs[0].as_secs_f64() * 1000.0,
        runs[RUNS / 2].as_secs_f64() * 1000.0
    );
}

fn main() {
    // SAFETY: set before any other thread exists; the benchmark is single-threaded.
    unsafe { std::env::set_var("BENCH_KEY", "bench-secret") };
    println!("| layout | files | documents | bytes | best | median of {RUNS} |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (layout, write) in [
        ("one multi-document file", one_file as fn(&Path) -> u64),
        ("one file per document", many_files),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let bytes = write(dir.path());
        let files = if layout.starts_with("one multi") {
            1
        } else {
            DOCUMENTS
        };
        let (best, median) = time(dir.path());
        println!(
            "| {layout} | {files} | {DOCUMENTS} | {bytes} | {:.1} ms | {:.1} ms |",
            best.as_secs_f64() * 1000.0,
            median.as_secs_f64() * 1000.0
        );
    }
    hostile("149,000 empty documents", "{}\n---\n".repeat(149_000));
    hostile(
        "500,000-item sequence",
        format!("a: [{}]\n", "1,".repeat(500_000)),
    );
    hostile(
        "100,000 unknown keys",
        (0..100_000).map(|i| format!("k{i}: 1\n")).collect(),
    );
}
