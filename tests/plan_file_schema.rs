//! schema/plan-file.schema.json describes the plan files stagesync writes:
//! every kind of entry and key reference validates, and files a reader of
//! format version 1 must refuse (another version, an unknown action, a key
//! value where a key reference belongs) are rejected by the schema too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use stagesync::authentik::{Capabilities, ServerVersion};
use stagesync::kinds::Origin;
use stagesync::kinds::captcha::{DesiredStage, LiveStage, StageFields};
use stagesync::plan::saved::{PLAN_FILE_FORMAT_VERSION, SavedPlan};
use stagesync::plan::{PlanInputs, plan};
use stagesync::secret::{KeySource, SecretString};
use stagesync::state::KeyState;
use uuid::Uuid;

fn schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/plan-file.schema.json"),
    )
    .unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

fn desired(name: &str, pin: Option<Uuid>, key_source: KeySource) -> DesiredStage {
    DesiredStage {
        origin: Origin {
            file: PathBuf::from(format!("stages/{name}.yaml")),
            line: 1,
            column: 1,
        },
        uuid: pin,
        fields: StageFields::with_defaults(name, format!("site-{name}")),
        key_source,
        private_key: SecretString::from(format!("{name}-secret-value")),
        guards: None,
    }
}

/// A plan file with a create, an update, a rename that waits for it, an
/// in-sync stage, and the three kinds of key reference, on `version`.
fn plan_file(version: ServerVersion) -> String {
    let old = Uuid::from_u128(1);
    let quiet = Uuid::from_u128(2);
    let desired = vec![
        desired("fresh", None, KeySource::Env("FRESH_KEY".into())),
        desired("renamed", Some(old), KeySource::File("keys/renamed".into())),
        desired("old", None, KeySource::Literal),
        desired("quiet", None, KeySource::Env("QUIET_KEY".into())),
    ];
    let mut old_fields = StageFields::with_defaults("old", "site-renamed");
    old_fields.request_content_type = None;
    let live = vec![
        LiveStage {
            uuid: old,
            fields: old_fields,
        },
        LiveStage {
            uuid: quiet,
            fields: StageFields::with_defaults("quiet", "site-quiet"),
        },
    ];
    let mut keys = KeyState::default();
    keys.record(quiet, &SecretString::from("quiet-secret-value"));
    let capabilities = Capabilities::for_version(version);
    let planned = plan(&PlanInputs {
        desired: &desired,
        live: &live,
        keys: &keys,
        capabilities,
        foreign_names: &BTreeMap::new(),
    });
    SavedPlan::from_plan(
        &planned,
        &desired,
        &live,
        "https://auth.example.com",
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000),
        [1; 16],
    )
    .unwrap()
    .to_json()
}

fn errors(schema: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    schema.iter_errors(doc).map(|e| e.to_string()).collect()
}

#[test]
fn every_kind_of_entry_validates_on_old_and_new_servers() {
    let schema = schema();
    for version in [
        ServerVersion::new(2025, 12, 4),
        ServerVersion::new(2026, 8, 0),
    ] {
        let text = plan_file(version);
        let doc: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(errors(&schema, &doc), Vec::<String>::new(), "{text}");
        let actions: Vec<&str> = doc["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        assert_eq!(actions, ["create", "update", "create", "in_sync"], "{text}");
        assert_eq!(doc["entries"][2]["after"], 1, "{text}");
        let sources: Vec<&str> = doc["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["key_source"].as_str().unwrap())
            .collect();
        assert_eq!(
            sources,
            [
                "!Env FRESH_KEY",
                "!File keys/renamed",
                "literal value",
                "!Env QUIET_KEY"
            ]
        );
        for name in ["fresh", "renamed", "old", "quiet"] {
            assert!(!text.contains(&format!("{name}-secret-value")), "{text}");
        }
        // The version field the schema pins is the one the code writes.
        assert_eq!(doc["format_version"], PLAN_FILE_FORMAT_VERSION);
    }
}

#[test]
fn files_a_version_1_reader_refuses_are_rejected() {
    let schema = schema();
    let valid: Value = serde_json::from_str(&plan_file(ServerVersion::new(2025, 12, 4))).unwrap();
    type Edit = fn(&mut Value);
    let cases: [(&str, Edit); 7] = [
        ("another format version", |d| d["format_version"] = json!(2)),
        ("no format version", |d| {
            d.as_object_mut().unwrap().remove("format_version");
        }),
        ("an unknown action", |d| {
            d["entries"][0]["action"] = json!("replace")
        }),
        ("a key value beside the reference", |d| {
            d["entries"][0]["private_key"] = json!("fresh-secret-value")
        }),
        ("a key source that is a value", |d| {
            d["entries"][0]["key_source"] = json!("fresh-secret-value")
        }),
        ("an update without its live digest", |d| {
            d["entries"][1]["digests"]["live"] = json!(null)
        }),
        ("a top-level key of a later version", |d| {
            d["prune"] = json!(true)
        }),
    ];
    for (case, edit) in cases {
        let mut doc = valid.clone();
        edit(&mut doc);
        assert!(!schema.is_valid(&doc), "schema accepted {case}");
    }
}
