//! Output helpers shared by every command.
//!
//! Text that comes from files or from authentik (names, URLs, error messages)
//! passes through [`escape`] before it reaches a terminal, so a manifest cannot
//! move the cursor, change colours or hide lines with escape sequences.

use std::borrow::Cow;

/// Escapes control characters (C0, DEL, C1) as `\u{..}`-style sequences; tab
/// and newline are kept only when `keep_newlines` would be wanted, so this
/// escapes them too: a message is one line.
pub(crate) fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() || is_invisible(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || is_invisible(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Characters that render as nothing or reorder the text around them: zero
/// width spaces and joiners, bidirectional controls ("Trojan Source"), line and
/// paragraph separators, the byte-order mark. Escaped like control characters.
pub(crate) fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

/// Whether to colour what goes to stdout: `--color always|never`, or with `auto`
/// only when stdout is a terminal and `NO_COLOR` is not set (anstream decides,
/// following the NO_COLOR and CLICOLOR conventions).
pub(crate) fn stdout_color(choice: crate::cli::ColorChoice) -> bool {
    match choice {
        crate::cli::ColorChoice::Always => true,
        crate::cli::ColorChoice::Never => false,
        crate::cli::ColorChoice::Auto => {
            anstream::AutoStream::choice(&std::io::stdout()) != anstream::ColorChoice::Never
        }
    }
}

/// Writes `text` to stdout. A closed pipe (`stagesync plan | head`) is not an
/// error worth reporting: the reader has seen what it wanted.
pub(crate) fn print_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_terminal_control_sequences() {
        assert_eq!(escape("plain"), "plain");
        assert_eq!(escape("a\u{1b}[31mred"), "a\\u{1b}[31mred");
        assert_eq!(escape("two\nlines"), "two\\nlines");
        assert_eq!(escape("c1\u{9b}x"), "c1\\u{9b}x");
        assert_eq!(escape("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(escape("zero\u{200b}width"), "zero\\u{200b}width");
    }
}
