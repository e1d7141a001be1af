//! Helpers for black-box tests and benchmarks of `stagesync run`: the real
//! binary as a child process, its stderr collected in the background, its HTTP
//! endpoints, and polling with a deadline instead of fixed sleeps.
//!
//! The child listens on `127.0.0.1:0` and the port it got is read from its
//! "serving /healthz..." log line, so parallel tests never race for a port.
//! A [`Daemon`] kills its child when dropped, so a failing test leaves no
//! process behind; set `STAGESYNC_TEST_PRINT_LOG=1` to see its log then.
//!
//! [`Harness`] is the usual set-up: the simulator on a runtime of its own (the
//! daemon is a child process, so these tests are synchronous) and a
//! [`Workspace`], with [`Harness::start_daemon`] pointing `stagesync run` at both.
//! For anything else (stderr appended to a file, as `2>>FILE` does), change the
//! [`DaemonArgs`] of [`Harness::daemon_args`] and call [`Daemon::start`].

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stagesync::kinds::captcha::LiveStage;
use stagesync::simulator::SimHandle;

use crate::cli::{TOKEN, Workspace, start_sim};

/// The binary under test, as Cargo built it for the running test or benchmark.
pub fn binary() -> PathBuf {
    assert_cmd::cargo::cargo_bin("stagesync")
}

/// How long a condition may take before a test gives up.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A running `stagesync run`.
pub struct Daemon {
    child: Child,
    log: Log,
    /// `http://127.0.0.1:PORT` when listening.
    base: Option<String>,
}

/// What to start: the directory, the flags after `run`, extra environment.
pub struct DaemonArgs<'a> {
    pub url: String,
    pub token: &'a str,
    pub dir: PathBuf,
    pub state_file: PathBuf,
    /// Flags such as `--interval 2s`; `--listen` defaults to `127.0.0.1:0`.
    pub flags: Vec<String>,
    pub env: Vec<(String, String)>,
    pub current_dir: PathBuf,
    /// Append stderr to this file (a real file, as `2>>FILE` gives the
    /// daemon) instead of collecting it through a pipe. The log is read back
    /// from the file.
    pub log_file: Option<PathBuf>,
}

/// Where the daemon's stderr goes.
enum Log {
    /// Collected from a pipe by a thread.
    Piped(Arc<Mutex<String>>),
    /// Appended to a file.
    File(PathBuf),
}

/// The simulator on its own runtime and a workspace: what a daemon test starts from.
pub struct Harness {
    pub ws: Workspace,
    pub sim: SimHandle,
    runtime: tokio::runtime::Runtime,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    /// Starts the simulator and makes a fresh workspace.
    pub fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let sim = runtime.block_on(start_sim());
        Harness {
            ws: Workspace::new(),
            sim,
            runtime,
        }
    }

    /// Runs `future` on the simulator's runtime: to start another loopback
    /// server (a fake captcha provider) that lives as long as the harness.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Starts `stagesync run` on `dir` against the simulator, with the
    /// workspace's state file, the workspace as working directory, `flags`
    /// after `run` and `env` added to the environment.
    pub fn start_daemon(&self, dir: PathBuf, flags: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::start(self.daemon_args(dir, flags, env))
    }

    /// What [`Harness::start_daemon`] starts, to change before
    /// [`Daemon::start`].
    pub fn daemon_args(
        &self,
        dir: PathBuf,
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> DaemonArgs<'static> {
        DaemonArgs {
            url: self.sim.url(),
            token: TOKEN,
            dir,
            state_file: self.ws.state_file(),
            flags: flags.iter().map(|f| (*f).to_owned()).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            current_dir: self.ws.root.path().to_path_buf(),
            log_file: None,
        }
    }

    /// The live stage called `name`, if the simulator holds one.
    pub fn live(&self, name: &str) -> Option<LiveStage> {
        self.sim
            .captcha_stages()
            .into_iter()
            .find(|s| s.fields.name == name)
    }

    /// The live `score_min_threshold` of stage `name`.
    pub fn threshold(&self, name: &str) -> Option<f64> {
        self.live(name).map(|s| s.fields.score_min_threshold)
    }

    /// Waits until stage `name` is live with `score_min_threshold` = `value`;
    /// returns how long that took.
    pub fn wait_threshold(&self, daemon: &mut Daemon, name: &str, value: f64) -> Duration {
        daemon.wait_until(&format!("{name} at score_min_threshold {value}"), || {
            self.threshold(name) == Some(value)
        })
    }
}

impl Daemon {
    /// Starts the daemon and waits until its HTTP server is up (unless
    /// `--listen off` is among the flags).
    pub fn start(args: DaemonArgs<'_>) -> Daemon {
        let listen_off = args
            .flags
            .windows(2)
            .any(|w| w[0] == "--listen" && w[1] == "off");
        let has_listen = args.flags.iter().any(|f| f == "--listen");
        let mut cmd = Command::new(binary());
        cmd.current_dir(&args.current_dir)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .env("AUTHENTIK_URL", &args.url)
            .env("AUTHENTIK_TOKEN", args.token)
            .env("STAGESYNC_STATE_FILE", &args.state_file)
            .arg("run")
            .args(&args.flags);
        if !has_listen {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.arg(&args.dir);
        for (k, v) in &args.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        let log = match args.log_file {
            Some(path) => {
                let file = File::options()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                cmd.stderr(file);
                Log::File(path)
            }
            None => {
                cmd.stderr(Stdio::piped());
                Log::Piped(Arc::new(Mutex::new(String::new())))
            }
        };
        let mut child = cmd.spawn().expect("stagesync starts");
        if let Log::Piped(sink) = &log {
            let stderr = child.stderr.take().expect("stderr piped");
            let sink = sink.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stderr);
                let mut line = Vec::new();
                while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                    sink.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_str(&String::from_utf8_lossy(&line));
                    line.clear();
                }
            });
        }
        let mut daemon = Daemon {
            child,
            log,
            base: None,
        };
        if !listen_off {
            let line = daemon.wait_for_log("serving /healthz");
            let addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .or_else(|| {
                    line.split("\"addr\":\"")
                        .nth(1)
                        .and_then(|rest| rest.split('"').next())
                })
                .unwrap_or_else(|| panic!("no address in {line:?}"))
                .to_owned();
            daemon.base = Some(format!("http://{addr}"));
        }
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the daemon wrote on stderr so far (with a log file: the
    /// whole file).
    pub fn log(&self) -> String {
        match &self.log {
            Log::Piped(text) => text.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            Log::File(path) => {
                String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
            }
        }
    }

    /// How many log lines contain `needle`.
    pub fn count_lines(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits until a log line contains `needle`; returns the first such line.
    pub fn wait_for_log(&mut self, needle: &str) -> String {
        self.wait_for_log_count(needle, 1)
    }

    /// Waits until `n` log lines contain `needle`; returns the n-th.
    pub fn wait_for_log_count(&mut self, needle: &str, n: usize) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(line) = self.log().lines().filter(|l| l.contains(needle)).nth(n - 1) {
                return line.to_owned();
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "no {n} log line(s) with {needle:?} within {DEADLINE:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics (with the log) if the daemon has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("the daemon exited ({status}); log:\n{}", self.log());
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`).
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid fits");
        // SAFETY: kill(2) with our own child's pid has no memory effects.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }

    /// Waits for the child to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET path` on the daemon's HTTP server: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        let base = self.base.as_deref().expect("the daemon listens");
        http_get(base, path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Waits until `GET path` answers `status`, at most `limit`; returns the body.
    pub fn wait_for_status(&mut self, path: &str, status: u16, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let (got, body) = self.get(path);
            if got == status {
                return body;
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "{path} still answers {got} ({body:?}), expected {status}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The value of the metric sample whose line starts with `series`
    /// (e.g. `stagesync_stages{status="drifted"}`).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics");
        metric_value(&text, series)
    }

    /// Waits until the metric `series` is at least `value`.
    pub fn wait_for_metric(&mut self, series: &str, value: f64) {
        self.wait_for_metric_where(series, value, |got| got >= value);
    }

    /// Waits until the metric `series` is exactly `value`.
    pub fn wait_for_metric_eq(&mut self, series: &str, value: f64) {
        self.wait_for_metric_where(series, value, |got| got == value);
    }

    fn wait_for_metric_where(&mut self, series: &str, value: f64, ok: impl Fn(f64) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let got = self.metric(series);
            if got.is_some_and(&ok) {
                return;
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "{series} is {got:?}, not yet {value}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `cond` holds, checking that the daemon still runs.
    pub fn wait_until(&mut self, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
        let started = Instant::now();
        let deadline = started + DEADLINE;
        loop {
            if cond() {
                return started.elapsed();
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "{what}: not within {DEADLINE:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    /// Kills the child; with `STAGESYNC_TEST_PRINT_LOG` set, prints its log.
    fn drop(&mut self) {
        if std::env::var_os("STAGESYNC_TEST_PRINT_LOG").is_some() {
            eprintln!("---- stagesync run log ----\n{}", self.log());
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The value of the first sample line starting with `series` followed by a space.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// A minimal HTTP/1.1 GET over a fresh connection (the tests' tokio runtime
/// serves the simulator; a blocking client here keeps the two apart).
pub fn http_get(base: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad answer: {head:?}")))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}
