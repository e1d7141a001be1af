//! Text from outside (manifests, authentik, the file system) made safe to
//! show: one line, no terminal control. A leaf module: it uses nothing else
//! of the crate, so every other module may use it.
//!
//! Text that comes from files or from authentik (names, URLs, error messages)
//! passes through [`escape`] before it reaches a terminal, so a manifest cannot
//! move the cursor, change colours or hide lines with escape sequences.

use std::borrow::Cow;

/// Escapes control characters (C0, DEL, C1) and invisible characters as
/// `\u{..}`-style sequences; newline, tab and carriage return as `\n`, `\t`,
/// `\r`: a message is one line.
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

/// The messages of an error and its sources, deduplicated, on one escaped line.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        let text = err.to_string();
        // hyper's wrappers ("client error (Connect)") say nothing the causes
        // after them do not say better.
        let wrapper = text.starts_with("client error (") && err.source().is_some();
        if !wrapper && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = err.source();
    }
    escape(&parts.join(": ")).into_owned()
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

    #[test]
    fn an_error_chain_names_each_cause_once() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "reading failed: {}", self.0)
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let err = Outer(std::io::Error::other("disk\nfull"));
        assert_eq!(error_chain(&err), "reading failed: disk\\nfull");
    }
}
