//! Where commands write ([`Console`]): stdout for data, stderr for
//! diagnostics. The binary's console is the process's streams; a test's
//! writes into buffers it reads back ([`Console::captured`]), as ripgrep's
//! printer writes to any `io::Write`.
//!
//! A closed pipe (`stagesync plan | head`) is not an error worth reporting:
//! the reader has seen what it wanted.

use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Mutex};

type Sink = Arc<Mutex<Box<dyn Write + Send>>>;

/// A command's stdout and stderr. Cheap to clone: clones share the streams.
#[derive(Clone)]
pub struct Console {
    out: Sink,
    err: Sink,
    /// Whether stderr is a terminal (a progress bar may draw there).
    err_is_terminal: bool,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").finish_non_exhaustive()
    }
}

/// What a captured console received.
#[derive(Clone, Default)]
pub struct Captured {
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
}

impl Captured {
    /// Everything written to stdout so far, lossily decoded.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Everything written to stderr so far, lossily decoded.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

/// A buffer shared with a [`Captured`].
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Console {
    /// The process's stdout and stderr.
    pub fn stdio() -> Console {
        Console {
            out: Arc::new(Mutex::new(Box::new(io::stdout()))),
            err: Arc::new(Mutex::new(Box::new(io::stderr()))),
            err_is_terminal: io::stderr().is_terminal(),
        }
    }

    /// A console writing into buffers, and what it received.
    pub fn captured() -> (Console, Captured) {
        let captured = Captured::default();
        let console = Console {
            out: Arc::new(Mutex::new(Box::new(Shared(captured.out.clone())))),
            err: Arc::new(Mutex::new(Box::new(Shared(captured.err.clone())))),
            err_is_terminal: false,
        };
        (console, captured)
    }

    /// Writes `text` to stdout and flushes. A closed pipe is not an error.
    pub(crate) fn out(&self, text: &str) -> io::Result<()> {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            other => other,
        }
    }

    /// Writes `text` to stderr, as `eprint!` does: a failure to tell is not
    /// worth failing for.
    pub(crate) fn err(&self, text: &str) {
        let mut err = self.err.lock().unwrap_or_else(|p| p.into_inner());
        let _ = err.write_all(text.as_bytes()).and_then(|()| err.flush());
    }

    /// [`Self::err`] with a newline.
    pub(crate) fn errln(&self, line: &str) {
        self.err(&format!("{line}\n"));
    }

    /// Whether stderr is a terminal (a progress bar may draw there).
    pub(crate) fn err_is_terminal(&self) -> bool {
        self.err_is_terminal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_captured_console_keeps_both_streams_apart() {
        let (console, captured) = Console::captured();
        console.out("data\n").unwrap();
        console.errln("note");
        let clone = console.clone();
        clone.out("more\n").unwrap();
        assert_eq!(captured.stdout(), "data\nmore\n");
        assert_eq!(captured.stderr(), "note\n");
        assert!(!console.err_is_terminal());
    }
}
