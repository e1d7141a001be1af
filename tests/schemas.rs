//! The JSON schemas in `schema/` are derived from each kind's field table:
//! `manifest.schema.json` whole, and the `fields` a plan file's entries hold.
//! A changed table makes this test fail with the difference;
//! `UPDATE_SCHEMAS=1 cargo test --test schemas` writes the files anew.

use std::path::{Path, PathBuf};

use serde_json::Value;
use stagesync::kinds::captcha;

fn schema_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schema")
        .join(name)
}

fn updating() -> bool {
    std::env::var_os("UPDATE_SCHEMAS").is_some()
}

#[test]
fn the_manifest_schema_is_the_captcha_table() {
    let path = schema_file("manifest.schema.json");
    let generated = captcha::manifest_schema();
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    if updating() {
        std::fs::write(&path, &generated).expect("write the schema");
        return;
    }
    assert!(
        on_disk == generated,
        "{} is not what the field table says; run `UPDATE_SCHEMAS=1 cargo test --test schemas`\n--- on disk\n{on_disk}\n--- generated\n{generated}",
        path.display()
    );
    // It is a schema, and it says what the table says.
    let parsed: Value = serde_json::from_str(&generated).expect("valid JSON");
    jsonschema::validator_for(&parsed).expect("a valid JSON schema");
}

/// The line range of the `"fields": {...}` object inside `"$defs"`, by its
/// indentation (four spaces: a direct child of `$defs`).
fn fields_lines(text: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let defs = lines.iter().position(|l| l.starts_with("  \"$defs\""))?;
    let start = defs
        + lines[defs..]
            .iter()
            .position(|l| *l == "    \"fields\": {")?;
    let end = start + lines[start..].iter().position(|l| *l == "    },")?;
    Some((start, end))
}

#[test]
fn the_plan_file_schema_lists_the_captcha_fields() {
    let path = schema_file("plan-file.schema.json");
    let text = std::fs::read_to_string(&path).expect("the plan file schema");
    let generated = captcha::saved_fields_schema();
    let on_disk: Value = serde_json::from_str(&text).expect("valid JSON");
    if updating() && on_disk["$defs"]["fields"] != generated {
        let (start, end) = fields_lines(&text).expect("a `fields` object in `$defs`");
        let pretty = serde_json::to_string_pretty(&generated).expect("JSON");
        let indented: Vec<String> = pretty
            .lines()
            .enumerate()
            .map(|(i, l)| {
                if i == 0 {
                    format!("    \"fields\": {l}")
                } else {
                    format!("    {l}")
                }
            })
            .collect();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let mut replacement = indented;
        if let Some(last) = replacement.last_mut() {
            last.push(',');
        }
        lines.splice(start..=end, replacement);
        std::fs::write(&path, lines.join("\n") + "\n").expect("write the schema");
        return;
    }
    assert_eq!(
        on_disk["$defs"]["fields"],
        generated,
        "{}'s `$defs.fields` is not what the field table says; run `UPDATE_SCHEMAS=1 cargo test --test schemas`",
        path.display()
    );
}
