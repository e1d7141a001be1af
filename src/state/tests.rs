use std::fs;
use std::path::Path;

use uuid::Uuid;

use super::file::OnDisk;
use super::keys::Entry;
use super::*;
use crate::kinds::Kind;
use crate::secret::PrivateKey;
use crate::secret::SecretString;

fn key(s: &str) -> PrivateKey {
    SecretString::from(s)
}

#[test]
fn status_follows_what_was_recorded() {
    let uuid = Uuid::from_u128(1);
    let mut keys = KeyState::default();
    assert_eq!(keys.status(uuid, &key("k")), KeyStatus::Unknown);
    keys.record(uuid, &key("k"));
    assert_eq!(keys.status(uuid, &key("k")), KeyStatus::Unchanged);
    assert_eq!(keys.status(uuid, &key(" k\n")), KeyStatus::Unchanged);
    assert_eq!(keys.status(uuid, &key("k2")), KeyStatus::Rotated);
    keys.forget(uuid);
    assert_eq!(keys.status(uuid, &key("k")), KeyStatus::Unknown);
}

#[test]
fn same_key_on_two_stages_gives_unrelated_fingerprints() {
    let mut keys = KeyState::default();
    keys.record(Uuid::from_u128(1), &key("same"));
    keys.record(Uuid::from_u128(2), &key("same"));
    let fingerprint = |n| match &keys.stages[&Uuid::from_u128(n)] {
        Entry::Written(fp) => fp.clone(),
        other => panic!("not written: {other:?}"),
    };
    let (a, b) = (fingerprint(1), fingerprint(2));
    assert_ne!(a.salt, b.salt);
    assert_ne!(a.sha256, b.sha256);
    assert_eq!(a.salt.len(), 32);
    assert_eq!(a.sha256.len(), 64);
}

#[test]
fn round_trip_through_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/deeper/state.json");
    let mut state = StateFile::open_for_write(&path).unwrap();
    assert!(state.keys().is_empty());
    state.keys_mut().record(Uuid::from_u128(7), &key("seven"));
    state.save().unwrap();
    drop(state);

    let keys = StateFile::read_only(&path).unwrap();
    assert_eq!(
        keys.status(Uuid::from_u128(7), &key("seven")),
        KeyStatus::Unchanged
    );
    let reopened = StateFile::open_for_write(&path).unwrap();
    assert_eq!(reopened.keys(), &keys);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
    }
}

#[test]
fn the_inventory_round_trips_and_an_old_file_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    fs::write(&path, r#"{"version": 1, "stages": {}}"#).unwrap();
    let mut state = StateFile::open_for_write(&path).unwrap();
    assert!(state.inventory().is_empty());
    let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
    state
        .inventory_mut()
        .manage(Kind::CaptchaStage, a, " made ", ManagedAs::Created);
    state
        .inventory_mut()
        .manage(Kind::CaptchaStage, a, "made", ManagedAs::Adopted);
    state
        .inventory_mut()
        .manage(Kind::CaptchaStage, b, "found", ManagedAs::Adopted);
    state.save().unwrap();
    drop(state);
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains(r#""managed_as": "created""#), "{text}");
    let (_, inventory) = StateFile::read_only_with_inventory(&path).unwrap();
    assert_eq!(inventory.len(), 2);
    assert_eq!(
        inventory.get(a),
        Some(&inventory::Managed {
            kind: Kind::CaptchaStage,
            name: "made".into(),
            managed_as: ManagedAs::Created
        })
    );
    assert_eq!(inventory.get(b).unwrap().managed_as, ManagedAs::Adopted);
    // An empty inventory is not written at all.
    let mut state = StateFile::open_for_write(&dir.path().join("other.json")).unwrap();
    state.save().unwrap();
    let text = fs::read_to_string(dir.path().join("other.json")).unwrap();
    assert!(!text.contains("inventory"), "{text}");
}

#[test]
fn read_only_of_a_missing_file_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let keys = StateFile::read_only(&dir.path().join("absent.json")).unwrap();
    assert!(keys.is_empty());
    assert!(!dir.path().join("absent.json.lock").exists());
}

#[test]
fn save_leaves_no_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let mut state = StateFile::open_for_write(&path).unwrap();
    for i in 0..3 {
        state.keys_mut().record(Uuid::from_u128(i), &key("k"));
        state.save().unwrap();
    }
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["state.json", "state.json.lock"]);
}

#[test]
fn a_second_writer_is_refused_until_the_first_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let first = StateFile::open_for_write(&path).unwrap();
    let err = StateFile::open_for_write(&path).unwrap_err();
    assert!(matches!(&err, StateError::Locked { path: p } if p == &path));
    assert_eq!(
        err.to_string(),
        format!(
            "another stagesync (apply or run) is using {}; wait for it to finish",
            path.display()
        )
    );
    // Readers are never blocked.
    assert!(StateFile::read_only(&path).is_ok());
    drop(first);
    assert!(StateFile::open_for_write(&path).is_ok());
}

#[test]
fn a_corrupt_file_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    fs::write(&path, "{\"version\": 1, \"stages\": [").unwrap();
    let err = StateFile::read_only(&path).unwrap_err();
    assert!(matches!(err, StateError::Corrupt { .. }));
    assert!(err.to_string().contains(&path.display().to_string()));
    assert!(matches!(
        StateFile::open_for_write(&path).unwrap_err(),
        StateError::Corrupt { .. }
    ));
    // Never silently reset.
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        "{\"version\": 1, \"stages\": ["
    );

    fs::write(&path, "{\"version\": 9, \"stages\": {}}").unwrap();
    assert!(matches!(
        StateFile::read_only(&path).unwrap_err(),
        StateError::UnsupportedVersion { found: 9, .. }
    ));
}

#[test]
fn the_file_and_debug_output_never_contain_the_key() {
    let secret = "6LeSuperSecretPrivateKeyValue";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let mut state = StateFile::open_for_write(&path).unwrap();
    state.keys_mut().record(Uuid::from_u128(1), &key(secret));
    state.save().unwrap();
    let text = fs::read_to_string(&path).unwrap();
    assert!(!text.contains(secret));
    assert!(!text.contains(&hex(secret.as_bytes())));
    assert!(!format!("{state:?}").contains(secret));
    let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(parsed["version"], 2);
    assert!(parsed["stages"][Uuid::from_u128(1).to_string()]["sha256"].is_string());
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn an_in_flight_key_reads_as_unknown_until_its_answer_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let uuid = Uuid::from_u128(3);
    let mut state = StateFile::open_for_write(&path).unwrap();
    state.keys_mut().record(uuid, &key("old"));
    state.keys_mut().mark_in_flight(uuid);
    state.save().unwrap();
    drop(state);

    // What a crash between sending and the answer leaves: neither the old
    // key nor the new one reads as unchanged.
    let keys = StateFile::read_only(&path).unwrap();
    assert_eq!(keys.status(uuid, &key("old")), KeyStatus::Unknown);
    assert_eq!(keys.status(uuid, &key("new")), KeyStatus::Unknown);
    assert_eq!(keys.in_flight().collect::<Vec<_>>(), [uuid]);
    let text = fs::read_to_string(&path).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        parsed["stages"][uuid.to_string()],
        serde_json::json!({"in_flight": true})
    );

    let mut state = StateFile::open_for_write(&path).unwrap();
    state.keys_mut().record(uuid, &key("new"));
    state.save().unwrap();
    let keys = StateFile::read_only(&path).unwrap();
    assert_eq!(keys.status(uuid, &key("new")), KeyStatus::Unchanged);
    assert_eq!(keys.in_flight().count(), 0);
}

#[test]
fn a_created_stage_enters_the_inventory_with_the_next_batched_save() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let uuid = Uuid::from_u128(9);
    let mut state = StateFile::open_for_write(&path).unwrap();
    KeyStore::record_created(&mut state, Kind::CaptchaStage, uuid, "signup");
    // The first save is always due: what a kill -9 after it finds.
    assert!(state.save_if_due().unwrap());
    let (_, inventory) = StateFile::read_only_with_inventory(&path).unwrap();
    assert_eq!(
        inventory.get(uuid).map(|m| (m.name.as_str(), m.managed_as)),
        Some(("signup", ManagedAs::Created))
    );
}

#[test]
fn a_version_1_file_is_read_and_saved_as_version_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let uuid = Uuid::from_u128(5);
    let mut keys = KeyState::default();
    keys.record(uuid, &key("five"));
    let Entry::Written(fp) = &keys.stages[&uuid] else {
        unreachable!()
    };
    let v1 = serde_json::json!({"version": 1, "stages": {uuid.to_string(): fp}});
    fs::write(&path, v1.to_string()).unwrap();

    let read = StateFile::read_only(&path).unwrap();
    assert_eq!(read.status(uuid, &key("five")), KeyStatus::Unchanged);
    let mut state = StateFile::open_for_write(&path).unwrap();
    state.save().unwrap();
    let parsed: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(parsed["version"], 2);
    assert_eq!(
        parsed["stages"][uuid.to_string()],
        v1["stages"][uuid.to_string()]
    );
}

#[test]
fn a_damaged_entry_is_reported_reads_as_unknown_and_is_kept_until_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let (bad_salt, not_a_fingerprint, good) =
        (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
    let mut keys = KeyState::default();
    keys.record(bad_salt, &key("k"));
    keys.record(good, &key("k"));
    let mut file = serde_json::to_value(OnDisk::of(&keys, &Inventory::default())).unwrap();
    // A hand edit that loses one hex digit of the salt.
    let salt = &mut file["stages"][bad_salt.to_string()]["salt"];
    *salt = serde_json::Value::String(salt.as_str().unwrap()[1..].to_owned());
    file["stages"][not_a_fingerprint.to_string()] = serde_json::json!("oops");
    fs::write(&path, file.to_string()).unwrap();

    let mut state = StateFile::open_for_write(&path).unwrap();
    let damaged: Vec<(Uuid, String)> = state
        .keys()
        .damaged()
        .map(|(u, why)| (u, why.to_owned()))
        .collect();
    assert_eq!(
        damaged,
        [
            (
                bad_salt,
                "its salt is not 32 lowercase hex digits".to_owned()
            ),
            (
                not_a_fingerprint,
                "it is neither a fingerprint (salt, sha256) nor an in-flight mark".to_owned()
            ),
        ]
    );
    // Unknown, not "rotated": nothing says stagesync wrote another key.
    assert_eq!(state.keys().status(bad_salt, &key("k")), KeyStatus::Unknown);
    assert_eq!(state.keys().status(good, &key("k")), KeyStatus::Unchanged);

    // Saving keeps the damaged entries as they were, until rewritten.
    state.keys_mut().record(not_a_fingerprint, &key("k"));
    state.save().unwrap();
    let saved: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        saved["stages"][bad_salt.to_string()],
        file["stages"][bad_salt.to_string()]
    );
    let keys = StateFile::read_only(&path).unwrap();
    assert_eq!(keys.damaged().count(), 1);
    assert_eq!(
        keys.status(not_a_fingerprint, &key("k")),
        KeyStatus::Unchanged
    );
}

#[test]
fn the_leftovers_of_an_interrupted_save_are_removed_by_the_next_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let leftover = dir.path().join(".state.json.tmp-00000000deadbeef");
    let unrelated = dir.path().join(".other.json.tmp-00000000deadbeef");
    fs::write(&leftover, "{\"version\": 2").unwrap();
    fs::write(&unrelated, "not ours").unwrap();

    StateFile::read_only(&path).unwrap();
    assert!(
        leftover.exists(),
        "a reader takes no lock and removes nothing"
    );
    let state = StateFile::open_for_write(&path).unwrap();
    assert!(!leftover.exists());
    assert!(unrelated.exists());
    drop(state);
}

#[cfg(unix)]
#[test]
fn a_state_file_reached_through_a_symlink_stays_a_symlink_to_the_updated_file() {
    let dir = tempfile::tempdir().unwrap();
    let real_dir = dir.path().join("real");
    fs::create_dir(&real_dir).unwrap();
    let real = real_dir.join("state.json");
    let link = dir.path().join("state.json");
    std::os::unix::fs::symlink("real/state.json", &link).unwrap();

    // The target does not exist yet: the first save creates it.
    let mut state = StateFile::open_for_write(&link).unwrap();
    state.keys_mut().record(Uuid::from_u128(1), &key("k"));
    state.save().unwrap();
    drop(state);
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(fs::symlink_metadata(&real).unwrap().file_type().is_file());
    assert_eq!(
        StateFile::read_only(&real)
            .unwrap()
            .status(Uuid::from_u128(1), &key("k")),
        KeyStatus::Unchanged
    );
    // The lock and the temp files live beside the real file.
    assert_eq!(names_in(&real_dir), ["state.json", "state.json.lock"]);
    assert_eq!(names_in(dir.path()), ["real", "state.json"]);
}

#[cfg(unix)]
#[test]
fn two_paths_to_the_same_file_exclude_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("a/state.json");
    fs::create_dir_all(dir.path().join("a")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("a"), dir.path().join("b")).unwrap();
    std::os::unix::fs::symlink(&real, dir.path().join("link.json")).unwrap();

    let first = StateFile::open_for_write(&real).unwrap();
    for other in [
        dir.path().join("b/state.json"),
        dir.path().join("link.json"),
        dir.path().join("a/../a/state.json"),
    ] {
        let err = StateFile::open_for_write(&other).unwrap_err();
        assert!(
            matches!(&err, StateError::Locked { path } if path == &other),
            "{other:?}: {err}"
        );
    }
    drop(first);
    assert!(StateFile::open_for_write(&dir.path().join("link.json")).is_ok());
}

#[test]
fn saves_are_batched_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let mut state = StateFile::open_for_write(&path).unwrap();
    let on_disk = || StateFile::read_only(&path).unwrap().len();

    state.keys_mut().record(Uuid::from_u128(1), &key("k"));
    assert!(state.save_if_due().unwrap(), "the first save is always due");
    assert_eq!(on_disk(), 1);
    state.keys_mut().record(Uuid::from_u128(2), &key("k"));
    assert!(
        !state.save_if_due().unwrap(),
        "within the interval: batched"
    );
    assert_eq!(on_disk(), 1);
    state.save().unwrap();
    assert_eq!(on_disk(), 2);
    assert!(!state.save_if_due().unwrap(), "nothing changed");
}
