//! Where commands write: stdout for data, stderr for diagnostics.
//!
//! A closed pipe (`stagesync plan | head`) is not an error worth reporting:
//! the reader has seen what it wanted.

/// Writes `text` to stdout. A closed pipe is not an error.
pub(crate) fn print_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
