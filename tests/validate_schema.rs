//! The JSON Schema and the parser agree: every valid fixture validates against
//! schema/manifest.schema.json, and every invalid fixture whose problem a
//! schema can express is rejected by both. Custom tags (`!Env X`, `!File p`)
//! are plain strings for the schema.

use std::path::Path;

use serde_json::Value;

fn schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/manifest.schema.json"),
    )
    .unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

/// Every document of every manifest under `dir`, as JSON.
fn documents(dir: &Path) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let hidden = path.file_name().unwrap().to_string_lossy().starts_with('.');
            if hidden {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                let text = std::fs::read_to_string(&path).unwrap();
                let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
                out.extend(docs.into_iter().map(|d| (path.display().to_string(), d)));
            }
        }
    }
    out
}

fn parser_accepts(dir: &Path) -> bool {
    let env = |var: &str| (var == "TEST_CAPTCHA_SECRET").then(|| "s".into());
    stagesync::manifest::load_with_env(dir, &stagesync::policy::Policy::default(), &env)
        .unwrap()
        .is_valid()
}

#[test]
fn tags_are_strings_for_the_schema() {
    let doc: Value = serde_saphyr::from_str("private_key: !Env VAR\n").unwrap();
    assert_eq!(doc["private_key"], "VAR");
}

#[test]
fn every_valid_fixture_validates() {
    let schema = schema();
    let mut checked = 0;
    let roots = [
        support::validate::fixtures().join("valid-full"),
        support::validate::fixtures().join("valid-minimal"),
        support::validate::fixtures().join("valid-multi-document"),
        support::validate::fixtures().join("valid-nested"),
        support::validate::fixtures().join("valid-file-secret"),
        support::validate::fixtures().join("warning-literal-key"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("stages"),
    ];
    for root in roots {
        if root.ends_with("stages") {
            // Needs the real variables; the parser side is covered by the black-box test.
        } else {
            assert!(parser_accepts(&root), "{}", root.display());
        }
        for (file, doc) in documents(&root) {
            let errors: Vec<String> = schema.iter_errors(&doc).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{file}: {errors:?}");
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} documents checked");
}

#[test]
fn schema_expressible_invalid_fixtures_are_rejected_by_both() {
    let schema = schema();
    for case in [
        "unknown-key",
        "wrong-type",
        "empty-required",
        "missing-required",
        "bad-uuid",
        "bad-url",
        "bad-content-type",
        "top-level-not-mapping",
    ] {
        let root = support::validate::fixtures().join(case);
        assert!(!parser_accepts(&root), "parser accepted {case}");
        let docs = documents(&root);
        assert!(!docs.is_empty(), "{case} has no documents");
        let rejected = docs.iter().any(|(_, doc)| !schema.is_valid(doc));
        assert!(rejected, "schema accepted {case}");
    }
}
