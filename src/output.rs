//! Output helpers shared by every command.
//!
//! Text that comes from files or from authentik (names, URLs, error messages)
//! passes through [`escape`] before it reaches a terminal, so a manifest cannot
//! move the cursor, change colours or hide lines with escape sequences.

use std::borrow::Cow;

/// Escapes control characters (C0, DEL, C1) as `\u{..}`-style sequences; tab
/// and newline are kept only when `keep_newlines` would be wanted, so this
/// escapes them too: a message is one line.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
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
    }
}
