//! The CI examples in examples/ci/ call stagesync the way this build parses:
//! every `stagesync validate|plan|apply ...` line is a valid command line, and
//! each file has the whole saved-plan flow.

use std::path::Path;

use clap::Parser;
use stagesync::cli::Cli;

/// The shell lines of a CI file that run stagesync (as a YAML `run:` or
/// list item, or a line of a script block), up to a redirection, pipe or end
/// of command, quotes removed (`"$PLAN_FILE"` stays a placeholder word).
fn command_lines(text: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for line in text.lines() {
        let line = line.trim_start();
        let line = line
            .strip_prefix("run: ")
            .or_else(|| line.strip_prefix("- "))
            .unwrap_or(line);
        if !line.starts_with("stagesync ") {
            continue;
        }
        let words: Vec<String> = line
            .split_whitespace()
            .take_while(|w| !w.starts_with(['>', '|', ';', '&', '#']) && !w.starts_with("2>"))
            .map(|w| w.trim_matches('"').to_owned())
            .collect();
        if matches!(
            words.get(1).map(String::as_str),
            Some("validate" | "plan" | "apply")
        ) {
            found.push(words);
        }
    }
    found
}

#[test]
fn every_stagesync_call_in_the_ci_examples_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ci");
    for file in ["github-actions.yml", "gitlab-ci.yml"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let calls = command_lines(&text);
        for call in &calls {
            if let Err(err) = Cli::try_parse_from(call) {
                panic!("{file}: {call:?}: {err}");
            }
        }
        let joined: Vec<String> = calls.iter().map(|c| c.join(" ")).collect();
        // The comment fits where it is posted, and says where the rest is.
        assert!(
            joined.iter().any(
                |c| c.starts_with("stagesync plan --format markdown --max-chars ")
                    && c.contains(" --full-plan-at $")
                    && c.ends_with(" --out $PLAN_FILE stages/")
            ),
            "{file}: no Markdown plan within a limit in {joined:#?}"
        );
        for needed in [
            "stagesync validate stages/",
            "stagesync apply --plan $PLAN_FILE stages/",
        ] {
            assert!(
                joined.iter().any(|c| c == needed),
                "{file}: no `{needed}` in {joined:#?}"
            );
        }
    }
}
