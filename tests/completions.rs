//! Shell completions and `--help` texts, through the real binary.

use assert_cmd::Command;

const SUBCOMMANDS: [&str; 7] = [
    "validate",
    "plan",
    "apply",
    "run",
    "demo",
    "export",
    "completions",
];

fn stagesync(args: &[&str]) -> std::process::Output {
    Command::cargo_bin("stagesync")
        .expect("binary")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .args(args)
        .output()
        .expect("binary runs")
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How each shell's script declares subcommand `sub` (not merely mentions the
/// word, which help texts like `--dry-run` would do).
fn declares(shell: &str, script: &str, sub: &str) -> bool {
    match shell {
        "zsh" => script.contains(&format!("\n'{sub}:")),
        "fish" => script.contains(&format!("__fish_stagesync_needs_command\" -f -a \"{sub}\"")),
        "bash" => script.contains(&format!("stagesync,{sub})")),
        _ => false,
    }
}

/// The script for `shell`, checked to declare every subcommand and plan's
/// `--format` flag (`format_flag` as that shell spells it).
fn completion_script(shell: &str, format_flag: &str) -> String {
    let out = stagesync(&["completions", shell]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{shell}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = stdout(&out);
    for sub in SUBCOMMANDS {
        assert!(declares(shell, &script, sub), "{shell} script lacks {sub}");
    }
    assert!(
        script.contains(format_flag),
        "{shell} script lacks {format_flag}"
    );
    script
}

#[test]
fn zsh_and_fish_scripts_name_every_subcommand() {
    let zsh = completion_script("zsh", "--format");
    assert!(zsh.starts_with("#compdef stagesync"), "{}", &zsh[..80]);
    let fish = completion_script("fish", "-l format");
    assert!(fish.contains("complete -c stagesync"));
}

/// Runs bash's completion function of the script for the words typed so far
/// (the last one being completed) and returns the candidates.
fn bash_candidates(script: &std::path::Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source '{}'\nCOMP_WORDS=({})\nCOMP_CWORD={}\n_stagesync stagesync '{}' '{}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        quoted.join(" "),
        words.len() - 1,
        words[words.len() - 1],
        words[words.len() - 2],
    );
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(program)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out).lines().map(str::to_owned).collect()
}

#[test]
fn bash_script_is_valid_and_completes_subcommands_flags_and_values() {
    let script = completion_script("bash", "--format");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("stagesync.bash");
    std::fs::write(&path, &script).expect("write script");

    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
        .expect("bash runs");
    assert!(
        check.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    let subcommands = bash_candidates(&path, &["stagesync", ""]);
    for sub in SUBCOMMANDS {
        assert!(subcommands.iter().any(|c| c == sub), "{subcommands:?}");
    }
    assert_eq!(
        bash_candidates(&path, &["stagesync", "plan", "--fo"]),
        ["--format"]
    );
    assert_eq!(
        bash_candidates(&path, &["stagesync", "plan", "--format", ""]),
        ["text", "json", "markdown"]
    );
    assert_eq!(
        bash_candidates(&path, &["stagesync", "completions", "f"]),
        ["fish"]
    );
}

#[test]
fn an_unknown_shell_is_a_usage_error() {
    let out = stagesync(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(out.stdout.is_empty());
}

#[test]
fn top_level_help_shows_examples_and_exit_codes() {
    let out = stagesync(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = stdout(&out);
    for sub in SUBCOMMANDS {
        assert!(help.contains(sub), "{help}");
    }
    assert!(help.contains("Examples:"), "{help}");
    assert!(help.contains("stagesync demo"), "{help}");
    assert!(help.contains("stagesync apply --yes stages/"), "{help}");
    assert!(help.contains("Exit codes:"), "{help}");
    for code in [
        "0 success",
        "1 runtime error",
        "2 changes pending",
        "3 invalid",
        "64 usage error",
    ] {
        assert!(help.contains(code), "{code}: {help}");
    }
}

#[test]
fn plan_help_shows_examples_and_its_exit_codes() {
    let out = stagesync(&["plan", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = stdout(&out);
    assert!(help.contains("Examples:"), "{help}");
    assert!(help.contains("stagesync plan stages/"), "{help}");
    assert!(help.contains("--format markdown"), "{help}");
    assert!(
        help.contains("Exit codes: 0 in sync, 2 changes pending, 1 error, 3 invalid manifests."),
        "{help}"
    );
}

#[test]
fn every_subcommand_help_has_an_example() {
    for sub in SUBCOMMANDS {
        let out = stagesync(&[sub, "--help"]);
        assert_eq!(out.status.code(), Some(0), "{sub}");
        let help = stdout(&out);
        assert!(
            help.contains("Example:") || help.contains("Examples:"),
            "{sub}: {help}"
        );
        assert!(help.contains(&format!("stagesync {sub}")), "{sub}: {help}");
    }
}
