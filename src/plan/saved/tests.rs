use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use uuid::Uuid;

use super::*;
use crate::kinds::Origin;
use crate::plan::{PlanInputs, plan};
use crate::secret::{KeySource, SecretString};
use crate::state::KeyState;

const URL: &str = "https://auth.example.com";
const VERSION: ServerVersion = ServerVersion::new(2025, 12, 4);
const SALT: [u8; 16] = [7; 16];

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000)
}

fn desired(name: &str, pin: Option<u128>, key: &str) -> DesiredStage {
    DesiredStage {
        origin: Origin {
            file: PathBuf::from(format!("stages/{name}.yaml")),
            line: 1,
            column: 1,
        },
        uuid: pin.map(Uuid::from_u128),
        fields: StageFields::with_defaults(name, format!("site-{name}")),
        key_source: KeySource::Env(format!("{}_KEY", name.to_uppercase())),
        private_key: SecretString::from(key),
        guards: None,
    }
}

fn live(uuid: u128, name: &str) -> LiveStage {
    LiveStage {
        uuid: Uuid::from_u128(uuid),
        fields: StageFields::with_defaults(name, format!("site-{name}")),
    }
}

/// `login` (live 1, drifted: update), `signup` (not live: create), `quiet`
/// (live 3, in sync, key recorded).
struct World {
    desired: Vec<DesiredStage>,
    live: Vec<LiveStage>,
    keys: KeyState,
}

fn world() -> World {
    let mut login = live(1, "login");
    login.fields.score_min_threshold = 0.3;
    let quiet = live(3, "quiet");
    let mut keys = KeyState::default();
    keys.record(quiet.uuid, &SecretString::from("quiet-secret"));
    World {
        desired: vec![
            desired("login", None, "login-secret"),
            desired("signup", None, "signup-secret"),
            desired("quiet", None, "quiet-secret"),
        ],
        live: vec![login, quiet],
        keys,
    }
}

fn plan_of(w: &World) -> Plan {
    plan(&PlanInputs {
        desired: &w.desired,
        live: &w.live,
        keys: &w.keys,
        capabilities: Capabilities::for_version(VERSION),
        foreign_names: &BTreeMap::new(),
    })
}

fn save(w: &World) -> SavedPlan {
    save_with_salt(w, SALT).unwrap()
}

fn save_with_salt(w: &World, salt: [u8; 16]) -> Result<SavedPlan, SaveError> {
    SavedPlan::from_plan(&plan_of(w), &w.desired, &w.live, URL, t0(), salt)
}

/// The plan made again from `w` (names in `foreign` held by stages of
/// other types), as `apply --plan` makes it.
fn fresh_plan(w: &World, foreign: &BTreeMap<String, String>) -> Plan {
    plan(&PlanInputs {
        desired: &w.desired,
        live: &w.live,
        keys: &w.keys,
        capabilities: Capabilities::for_version(VERSION),
        foreign_names: foreign,
    })
}

fn check_against(saved: &SavedPlan, w: &World, fresh: &Plan) -> Result<Verified, Refusal> {
    check(
        saved,
        &Fresh {
            plan: fresh,
            desired: &w.desired,
            live: &w.live,
            url: URL,
            version: VERSION,
            now: t0() + Duration::from_secs(600),
            max_age: DEFAULT_MAX_AGE,
        },
    )
}

fn check_at(
    saved: &SavedPlan,
    w: &World,
    foreign: &BTreeMap<String, String>,
) -> Result<Verified, Refusal> {
    check_against(saved, w, &fresh_plan(w, foreign))
}

fn refused(result: Result<Verified, Refusal>) -> Vec<StageReport> {
    match result {
        Err(Refusal::Stale(reports)) => reports,
        other => panic!("expected a stale refusal, got {other:?}"),
    }
}

/// The refused entries' names and kinds of change.
fn stale(result: Result<Verified, Refusal>) -> Vec<(String, Vec<&'static str>)> {
    refused(result)
        .into_iter()
        .map(|r| (r.name, r.changes.iter().map(Change::kind).collect()))
        .collect()
}

fn reparsed(saved: &SavedPlan) -> SavedPlan {
    SavedPlan::parse(&saved.to_json()).unwrap()
}

#[test]
fn a_saved_plan_reads_back_as_written() {
    let w = world();
    let saved = save(&w);
    let back = reparsed(&saved);
    assert_eq!(back.format_version, PLAN_FILE_FORMAT_VERSION);
    assert_eq!(back.created_at, "2026-09-21T14:13:20Z");
    assert_eq!(back.server.url, URL);
    assert_eq!(back.server.version, "2025.12.4");
    let actions: Vec<_> = back
        .entries
        .iter()
        .map(|e| (e.name.as_str(), e.action))
        .collect();
    assert_eq!(
        actions,
        [
            ("login", SavedAction::Update),
            ("signup", SavedAction::Create),
            ("quiet", SavedAction::InSync)
        ]
    );
    // `changes` are for a reader of the file; everything else round-trips.
    let mut written = saved.clone();
    for entry in &mut written.entries {
        entry.changes.clear();
    }
    assert_eq!(back, written);
    assert!(saved.to_json().contains("\"score_min_threshold\""));
    assert!(back.has_changes());
}

#[test]
fn the_file_holds_no_key_nor_its_bare_hash() {
    let w = world();
    let text = save(&w).to_json();
    for key in ["login-secret", "signup-secret", "quiet-secret"] {
        assert!(!text.contains(key), "{key} in {text}");
        let bare = state::hex(&Sha256::digest(key.as_bytes()));
        assert!(!text.contains(&bare), "bare SHA-256 of {key} in the file");
    }
    assert!(text.contains("\"!Env LOGIN_KEY\""), "{text}");
}

#[test]
fn the_same_key_on_two_entries_gives_unrelated_fingerprints() {
    let mut w = world();
    w.desired[1].private_key = SecretString::from("login-secret");
    let saved = save(&w);
    assert_ne!(saved.entries[0].digests.key, saved.entries[1].digests.key);
    // A new file has a new salt, and so new fingerprints.
    let other = save_with_salt(&w, [8; 16]).unwrap();
    assert_ne!(saved.entries[0].digests.key, other.entries[0].digests.key);
}

#[test]
fn a_plan_with_errors_is_not_saved() {
    let mut w = world();
    w.desired.push(desired("ghost", Some(99), "k"));
    assert_eq!(save_with_salt(&w, SALT), Err(SaveError::PlanHasErrors(1)));
}

#[test]
fn reformatting_keeps_the_digest_and_editing_breaks_it() {
    let saved = save(&world());
    let value: Json = serde_json::from_str(&saved.to_json()).unwrap();
    // Compact, and with the keys in another order: the same content.
    let compact = serde_json::to_string(&value).unwrap();
    assert!(SavedPlan::parse(&compact).is_ok());
    let mut reordered = String::from("{");
    let Json::Object(map) = &value else { panic!() };
    let mut keys: Vec<_> = map.keys().collect();
    keys.reverse();
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            reordered.push(',');
        }
        reordered.push_str(&format!("{}:{}", Json::String((*k).clone()), map[*k]));
    }
    reordered.push('}');
    assert!(SavedPlan::parse(&reordered).is_ok(), "{reordered}");

    let edited = saved.to_json().replacen("0.5", "0.25", 1);
    assert_ne!(edited, saved.to_json());
    assert_eq!(SavedPlan::parse(&edited), Err(Refusal::Edited));
}

#[test]
fn damaged_and_newer_files_are_refused_by_name() {
    assert!(matches!(
        SavedPlan::parse("{\"format_version\": 1, \"entries\": ["),
        Err(Refusal::Corrupt(_))
    ));
    assert!(matches!(SavedPlan::parse("[]"), Err(Refusal::Corrupt(_))));
    assert!(matches!(
        SavedPlan::parse("{\"entries\": []}"),
        Err(Refusal::Corrupt(m)) if m.contains("format_version")
    ));
    // A newer format is reported as such, before its digest is even looked at.
    assert_eq!(
        SavedPlan::parse("{\"format_version\": 2, \"anything\": true}"),
        Err(Refusal::UnsupportedVersion(2))
    );
    // Right digest, wrong shape: an `after` that points nowhere, or at an
    // entry that renames nothing.
    for after in [17, 1, 2] {
        let mut saved = save(&world());
        saved.entries[1].after = Some(after);
        saved.digest = saved.computed_digest();
        assert!(
            matches!(
                SavedPlan::parse(&saved.to_json()),
                Err(Refusal::Corrupt(m)) if m.contains("after")
            ),
            "after {after}"
        );
    }
}

#[test]
fn an_unchanged_world_passes_and_says_where_each_key_comes_from() {
    let w = world();
    let saved = reparsed(&save(&w));
    let verified = check_at(&saved, &w, &BTreeMap::new()).unwrap();
    assert_eq!(
        verified.entries,
        [(EntryId(0), true), (EntryId(1), true), (EntryId(2), false)],
        "the update and the create are made, the in-sync entry only shown"
    );
    assert!(verified.left_alone.is_empty());
    assert!(verified.unplanned.is_empty());
}

#[test]
fn each_change_of_a_planned_stage_refuses_it_by_kind() {
    type Edit = fn(&mut World);
    let cases: [(&str, Edit, &str, &str); 6] = [
        (
            "a UI edit",
            |w| w.live[0].fields.js_url = "https://o.example/a.js".into(),
            "login",
            "live_edited",
        ),
        (
            "a deleted stage",
            |w| {
                w.live.remove(0);
            },
            "login",
            "stage_gone",
        ),
        (
            "a changed field",
            |w| w.desired[1].fields.interactive = true,
            "signup",
            "manifest_changed",
        ),
        (
            "another key source",
            |w| w.desired[0].key_source = KeySource::File("keys/login".into()),
            "login",
            "manifest_changed",
        ),
        (
            "a new pin",
            |w| w.desired[1].uuid = Some(Uuid::from_u128(1)),
            "signup",
            "manifest_changed",
        ),
        (
            "a rotated key",
            |w| w.desired[0].private_key = SecretString::from("login-secret-2"),
            "login",
            "key_changed",
        ),
    ];
    for (case, edit, name, kind) in cases {
        let mut w = world();
        let saved = save(&w);
        edit(&mut w);
        assert_eq!(
            stale(check_at(&saved, &w, &BTreeMap::new())),
            [(name.to_owned(), vec![kind])],
            "{case}"
        );
    }
}

#[test]
fn what_authentik_would_trim_is_no_change() {
    let mut w = world();
    let saved = save(&w);
    w.live[0].fields.public_key = " site-login ".into();
    w.desired[0].private_key = SecretString::from(" login-secret\n");
    assert!(check_at(&saved, &w, &BTreeMap::new()).is_ok());
}

#[test]
fn a_removed_manifest_is_named() {
    let mut w = world();
    let saved = save(&w);
    w.desired.remove(1);
    assert_eq!(
        refused(check_at(&saved, &w, &BTreeMap::new()))[0].to_string(),
        "signup (stages/signup.yaml:1): manifest changed: no manifest declares this stage any more"
    );
}

#[test]
fn a_name_taken_since_refuses() {
    let mut w = world();
    let saved = save(&w);
    w.live.push(live(9, "signup"));
    let reports = refused(check_at(&saved, &w, &BTreeMap::new()));
    assert_eq!(reports.len(), 1);
    assert_eq!(
        reports[0].changes,
        [Change::NameTaken {
            message: format!(
                "name \"signup\" is already used by captcha stage {}",
                Uuid::from_u128(9)
            )
        }]
    );

    let w = world();
    assert_eq!(crate::plan::names_to_check(&w.desired, &w.live), ["signup"]);
    let foreign = BTreeMap::from([("signup".to_owned(), "identification".to_owned())]);
    let reports = refused(check_at(&saved, &w, &foreign));
    assert_eq!(
        reports[0].to_string(),
        "signup (stages/signup.yaml:1): name taken: name \"signup\" is already used by an identification stage; stage names are unique across all stage types"
    );
}

#[test]
fn a_name_freed_by_a_planned_rename_is_not_taken() {
    // `old` (live 5, pinned) is renamed to `renamed`; a new `old` takes its name.
    let mut w = World {
        desired: vec![
            desired("renamed", Some(5), "k1"),
            desired("old", None, "k2"),
        ],
        live: vec![live(5, "old")],
        keys: KeyState::default(),
    };
    w.desired[0].fields.public_key = "site-old".into();
    let saved = save(&w);
    assert_eq!(saved.entries[1].action, SavedAction::Create);
    assert_eq!(saved.entries[1].after, Some(0));
    assert!(check_at(&saved, &w, &BTreeMap::new()).is_ok());
}

#[test]
fn a_stage_in_sync_when_planned_that_drifted_is_left_alone() {
    let mut w = world();
    let saved = save(&w);
    w.live[1].fields.interactive = true;
    w.desired[2].private_key = SecretString::from("quiet-secret-2");
    let verified = check_at(&saved, &w, &BTreeMap::new()).unwrap();
    assert_eq!(verified.left_alone.len(), 1);
    assert_eq!(verified.left_alone[0].name, "quiet");
    let kinds: Vec<_> = verified.left_alone[0]
        .changes
        .iter()
        .map(Change::kind)
        .collect();
    assert_eq!(kinds, ["live_edited", "key_changed"]);
}

#[test]
fn a_manifest_added_since_is_not_applied() {
    let mut w = world();
    let saved = save(&w);
    w.desired.push(desired("newcomer", None, "k"));
    let verified = check_at(&saved, &w, &BTreeMap::new()).unwrap();
    assert_eq!(verified.unplanned, ["newcomer"]);
    assert!(!verified.entries.iter().any(|(id, _)| id.0 == 3));
}

#[test]
fn old_future_foreign_and_upgraded_plans_are_refused() {
    let w = world();
    let saved = save(&w);
    let planned = fresh_plan(&w, &BTreeMap::new());
    let fresh = |url, version, now, max_age| {
        check(
            &saved,
            &Fresh {
                plan: &planned,
                desired: &w.desired,
                live: &w.live,
                url,
                version,
                now,
                max_age,
            },
        )
    };
    let day = DEFAULT_MAX_AGE;
    assert!(fresh(URL, VERSION, t0() + day, day).is_ok());
    assert!(matches!(
        fresh(URL, VERSION, t0() + day + Duration::from_secs(1), day),
        Err(Refusal::Expired { .. })
    ));
    let expired = fresh(
        URL,
        VERSION,
        t0() + Duration::from_secs(7200),
        Duration::from_secs(3600),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        expired,
        "the plan file was made at 2026-09-21T14:13:20Z, 2h ago: older than --max-age 1h"
    );
    assert!(fresh(URL, VERSION, t0() - CLOCK_SKEW, day).is_ok());
    assert!(matches!(
        fresh(
            URL,
            VERSION,
            t0() - CLOCK_SKEW - Duration::from_secs(1),
            day
        ),
        Err(Refusal::FromTheFuture(_))
    ));
    assert_eq!(
        fresh("https://staging.example.com", VERSION, t0(), day),
        Err(Refusal::OtherServer {
            planned: URL.into(),
            now: "https://staging.example.com".into()
        })
    );
    assert!(matches!(
        fresh(URL, ServerVersion::new(2026, 8, 0), t0(), day),
        Err(Refusal::ServerVersionChanged { .. })
    ));
}

#[test]
fn a_forged_file_cannot_write_what_the_manifests_do_not_say() {
    let w = world();
    let mut saved = save(&w);
    let Some(SavedFields::CaptchaStage(fields)) = saved.entries[1].fields.as_mut() else {
        panic!("a create has fields");
    };
    fields.api_url = "https://attacker.example/siteverify".into();
    saved.digest = saved.computed_digest();
    let saved = reparsed(&saved);
    assert!(matches!(
        check_at(&saved, &w, &BTreeMap::new()),
        Err(Refusal::Corrupt(m)) if m.contains("signup")
    ));
}

/// `w` with `stray` (live 8) managed and declared by no manifest, planned
/// with `--prune`; `users` is what `used_by` says of it.
fn with_prune(w: &World, users: Vec<crate::kinds::UsedBy>) -> Plan {
    with_pruned_guards(w, users, Vec::new())
}

/// [`with_prune`], `stray` having `guards` of its own to remove first.
fn with_pruned_guards(
    w: &World,
    users: Vec<crate::kinds::UsedBy>,
    guards: Vec<crate::plan::prune::Removal>,
) -> Plan {
    let mut inventory = crate::state::Inventory::default();
    inventory.manage(
        crate::kinds::Kind::CaptchaStage,
        Uuid::from_u128(8),
        "stray",
        crate::state::ManagedAs::Created,
    );
    let mut planned = fresh_plan(w, &BTreeMap::new());
    let decided = crate::plan::prune::decide(&crate::plan::prune::PruneInputs {
        inventory: &inventory,
        live: &w.live,
        desired: &w.desired,
        plan: &planned,
        used_by: &BTreeMap::from([(Uuid::from_u128(8), users)]),
        guards: &BTreeMap::from([(Uuid::from_u128(8), guards)]),
        manifests_complete: true,
        live_complete: true,
        settings: crate::plan::PruneSettings {
            enabled: true,
            max_deletes: Some(1),
            from_plan_file: true,
        },
    });
    planned.add_deletes(decided);
    planned
}

#[test]
fn a_saved_delete_is_made_while_it_is_still_the_delete_planned() {
    let mut w = world();
    w.live.push(live(8, "stray"));
    let planned = with_prune(&w, Vec::new());
    let saved =
        reparsed(&SavedPlan::from_plan(&planned, &w.desired, &w.live, URL, t0(), SALT).unwrap());
    assert_eq!(saved.entries[3].action, SavedAction::Delete);
    assert_eq!(saved.entries[3].uuid, Some(Uuid::from_u128(8)));
    assert_eq!(
        saved.prune_settings(),
        crate::plan::PruneSettings {
            enabled: true,
            max_deletes: Some(1),
            from_plan_file: true,
        }
    );
    let verified = check_against(&saved, &w, &with_prune(&w, Vec::new())).unwrap();
    assert!(verified.entries.contains(&(EntryId(3), true)));
    assert_eq!(
        to_plan(&with_prune(&w, Vec::new()), &verified)
            .deletes()
            .count(),
        1
    );

    // Bound since: not a delete any more, and nothing is applied.
    let bound = crate::kinds::UsedBy {
        app: "authentik_flows".into(),
        model_name: "flow".into(),
        pk: "1".into(),
        name: "Flow Login (login)".into(),
        action: "cascade_many".into(),
    };
    let reports = refused(check_against(&saved, &w, &with_prune(&w, vec![bound])));
    assert_eq!(
        reports[0].to_string(),
        "stray: not a delete now: in use now: bound to flow `login`"
    );
    // Edited since: its live digest no longer matches.
    w.live[2].fields.interactive = true;
    assert_eq!(
        stale(check_against(&saved, &w, &with_prune(&w, Vec::new()))),
        [("stray".to_owned(), vec!["live_edited"])]
    );
}

#[test]
fn a_pruned_stages_guards_are_saved_with_it_and_one_more_since_refuses_the_delete() {
    let mut w = world();
    w.live.push(live(8, "stray"));
    let unbind = |binding: u128, flow: &str| crate::plan::prune::Removal {
        name: format!("stray in flow {flow}"),
        change: crate::kinds::guard::matching::Change::Unbind {
            uuid: Uuid::from_u128(binding),
        },
    };
    let planned = with_pruned_guards(&w, Vec::new(), vec![unbind(9, "login")]);
    let saved =
        reparsed(&SavedPlan::from_plan(&planned, &w.desired, &w.live, URL, t0(), SALT).unwrap());
    // Its guard's unbind is saved, and is no prune of its own.
    assert_eq!(saved.prune_settings().max_deletes, Some(1));
    let fresh = with_pruned_guards(&w, Vec::new(), vec![unbind(9, "login")]);
    let verified = check_against(&saved, &w, &fresh).unwrap();
    let plan = to_plan(&fresh, &verified);
    assert_eq!(plan.deletes().count(), 2, "the unbind and the delete");
    assert!(plan.removals_without_their_delete().is_empty());

    // A second guard of its own since: the file does not say it goes.
    let grown = with_pruned_guards(
        &w,
        Vec::new(),
        vec![unbind(9, "login"), unbind(10, "signup")],
    );
    let reports = refused(check_against(&saved, &w, &grown));
    assert_eq!(
        reports[0].to_string(),
        "stray: not a delete now: its guard stray in flow signup is to be removed with it now, which the plan did not say"
    );
}

#[test]
fn a_delete_the_manifests_do_not_plan_is_refused() {
    let mut w = world();
    let stray = live(8, "stray");
    w.live.push(stray.clone());
    let mut saved = save(&w);
    saved.entries.push(SavedEntry {
        id: 3,
        kind: crate::kinds::Kind::CaptchaStage,
        action: SavedAction::Delete,
        name: "stray".into(),
        origin: None,
        uuid: Some(stray.uuid),
        pinned_uuid: None,
        after: None,
        key_source: None,
        private_key: None,
        changes: Vec::new(),
        fields: None,
        digests: SavedDigests {
            live: Some(live_digest(&stray, Capabilities::for_version(VERSION))),
            desired: None,
            key: None,
        },
    });
    saved.digest = saved.computed_digest();
    let saved = reparsed(&saved);
    // Not managed (no inventory), so no plan deletes it.
    assert_eq!(
        stale(check_at(&saved, &w, &BTreeMap::new())),
        [("stray".to_owned(), vec!["not_deleted"])]
    );
}

#[test]
fn an_entry_retargeted_at_another_stage_is_refused() {
    // A hand-made file: the create of `signup` turned into an update of the
    // unmanaged stage 9, its digests recomputed.
    let mut w = world();
    let unmanaged = live(9, "clicked");
    w.live.push(unmanaged.clone());
    let mut saved = save(&w);
    let entry = &mut saved.entries[1];
    entry.action = SavedAction::Update;
    entry.uuid = Some(unmanaged.uuid);
    entry.digests.live = Some(live_digest(&unmanaged, Capabilities::for_version(VERSION)));
    saved.digest = saved.computed_digest();
    let saved = reparsed(&saved);
    match check_at(&saved, &w, &BTreeMap::new()) {
        Err(Refusal::NotFromManifests(reports)) => {
            assert_eq!(reports.len(), 1);
            assert_eq!(
                reports[0].to_string(),
                format!(
                    "signup (stages/signup.yaml:1): the file writes captcha stage {}, but its manifest means a new stage now",
                    unmanaged.uuid
                )
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn an_in_sync_entry_may_not_hide_a_change_the_manifests_ask_for() {
    // A hand-made file: the update of `login` saved as in sync, so that
    // applying it would skip the change in silence.
    let w = world();
    let mut saved = save(&w);
    let entry = &mut saved.entries[0];
    entry.action = SavedAction::InSync;
    entry.fields = None;
    entry.changes = Vec::new();
    saved.digest = saved.computed_digest();
    let saved = reparsed(&saved);
    match check_at(&saved, &w, &BTreeMap::new()) {
        Err(Refusal::NotFromManifests(reports)) => assert_eq!(
            reports[0].to_string(),
            "login (stages/login.yaml:1): saved as in sync, but its manifest asks for a change (score_min_threshold)"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn an_entry_waiting_for_what_the_manifests_do_not_say_is_refused() {
    let mut w = World {
        desired: vec![
            desired("renamed", Some(5), "k1"),
            desired("old", None, "k2"),
        ],
        live: vec![live(5, "old")],
        keys: KeyState::default(),
    };
    w.desired[0].fields.public_key = "site-old".into();
    let mut saved = save(&w);
    saved.entries[1].after = None;
    saved.digest = saved.computed_digest();
    let saved = reparsed(&saved);
    assert!(matches!(
        check_at(&saved, &w, &BTreeMap::new()),
        Err(Refusal::NotFromManifests(reports))
            if reports[0].to_string().contains("the file makes it wait for nothing, the manifests for \"renamed\"")
    ));
}

#[test]
fn a_verified_file_becomes_the_plan_it_was_saved_from() {
    let w = world();
    let original = plan_of(&w);
    let saved = reparsed(&save(&w));
    let verified = check_at(&saved, &w, &BTreeMap::new()).unwrap();
    let rebuilt = to_plan(&fresh_plan(&w, &BTreeMap::new()), &verified);
    assert_eq!(rebuilt, original);
}

#[test]
fn a_drifted_in_sync_entry_still_writes_nothing() {
    let mut w = world();
    let saved = save(&w);
    w.live[1].fields.interactive = true;
    let verified = check_at(&saved, &w, &BTreeMap::new()).unwrap();
    let rebuilt = to_plan(&fresh_plan(&w, &BTreeMap::new()), &verified);
    assert_eq!(
        rebuilt.entries[2].action,
        Action::InSync {
            uuid: w.live[1].uuid
        }
    );
    assert_eq!(rebuilt.summary().update, 1);
    assert_eq!(rebuilt.summary().create, 1);
}

#[test]
fn two_entries_of_one_stage_are_refused() {
    let w = world();
    let mut saved = save(&w);
    // The in-sync entry renamed after another: both pair with `login`.
    saved.entries[2].name = "login".into();
    saved.digest = saved.computed_digest();
    let saved = reparsed(&saved);
    assert!(matches!(
        check_at(&saved, &w, &BTreeMap::new()),
        Err(Refusal::Corrupt(m)) if m == "entry 2 (\"login\") is the second entry of one stage"
    ));
}
