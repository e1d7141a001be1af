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

/// The line range of the `"fields": {...}` member of `"$defs"`, by its
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
    let (start, end) = fields_lines(&text).expect("a `fields` member in `$defs`");
    let lines: Vec<&str> = text.lines().collect();
    let on_disk = lines[start..=end].join("\n") + "\n";
    if updating() && on_disk != generated {
        let mut lines: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
        lines.splice(start..=end, generated.lines().map(str::to_owned));
        std::fs::write(&path, lines.join("\n") + "\n").expect("write the schema");
        return;
    }
    assert!(
        on_disk == generated,
        "{}'s `$defs.fields` is not what the field table says; run `UPDATE_SCHEMAS=1 cargo test --test schemas`\n--- on disk\n{on_disk}\n--- generated\n{generated}",
        path.display()
    );
    // Still a valid schema, whose `fields` is the generated one.
    let parsed: Value = serde_json::from_str(&text).expect("valid JSON");
    let member: Value = serde_json::from_str(&format!(
        "{{{}}}",
        generated.trim_end().trim_end_matches(',')
    ))
    .expect("the member is JSON");
    assert_eq!(parsed["$defs"]["fields"], member["fields"]);
}
