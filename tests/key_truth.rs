//! The state file's invariant, as a property: `plan` never says a key is
//! *unchanged* when authentik's may differ, whatever answers were lost, where
//! the process was killed and how often it restarted.
//!
//! Each case is a few rounds against the simulator (which knows the real keys)
//! over real HTTP. A round is a restart: the state file is opened from disk,
//! the manifests ask for a generated key per stage, and the plan is checked
//! against the simulator. Then faults are queued on the writes (answers lost
//! after the write was made, connections reset before it, truncated bodies,
//! refusals, answers slow to come back) and `apply` runs; in some rounds it is killed after a number of
//! writes completed: its future is dropped and nothing more is saved, which is
//! what the state file sees of a `kill -9` (requests already sent may still
//! land). A last round without faults checks once more.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use stagesync::apply::{Stop, apply};
use stagesync::kinds::Origin;
use stagesync::kinds::captcha::{DesiredStage, StageFields};
use stagesync::plan::{Action, KeyStatus};
use stagesync::reconcile::fetch_and_plan;
use stagesync::secret::{KeySource, SecretString};
use stagesync::simulator::{Fault, FaultKind, SimHandle};
use stagesync::state::StateFile;
use support::client::{client, sim};

const CASES: u32 = 32;
const KEYS: [&str; 3] = ["key-a", "key-b", " key-a\n"];
const CAPTCHA: &str = "/api/v3/stages/captcha/";

#[derive(Clone, Debug)]
struct Round {
    /// Index into [`KEYS`] per stage.
    keys: Vec<usize>,
    /// (fault kind, on a PUT rather than a POST, how many requests it hits)
    /// in queue order.
    faults: Vec<(usize, bool, usize)>,
    /// Kill after this many writes completed.
    kill_after: Option<usize>,
}

fn fault(kind: usize) -> FaultKind {
    match kind {
        0 => FaultKind::LostAnswer,
        5 => FaultKind::SlowAnswer(Duration::from_millis(40)),
        1 => FaultKind::Truncated,
        2 => FaultKind::Reset,
        3 => FaultKind::Status {
            status: 400,
            retry_after: None,
            body: r#"{"name": ["injected refusal"]}"#.to_owned(),
        },
        _ => FaultKind::Status {
            status: 503,
            retry_after: None,
            body: r#"{"detail": "injected"}"#.to_owned(),
        },
    }
}

fn rounds() -> impl Strategy<Value = (usize, Vec<Round>)> {
    (1usize..=4).prop_flat_map(|stages| {
        let round = (
            prop::collection::vec(0..KEYS.len(), stages),
            prop::collection::vec(
                (
                    // Mostly the faults after which a write was made.
                    prop_oneof![3 => Just(0usize), 2 => Just(5), 1 => 1usize..5],
                    prop::bool::weighted(0.75),
                    1usize..=6,
                ),
                0..4,
            ),
            prop::option::weighted(0.5, 0..=stages),
        )
            .prop_map(|(keys, faults, kill_after)| Round {
                keys,
                faults,
                kill_after,
            });
        (Just(stages), prop::collection::vec(round, 1..5))
    })
}

fn desired(stages: usize, keys: &[usize]) -> Vec<DesiredStage> {
    (0..stages)
        .map(|i| DesiredStage {
            origin: Origin {
                file: PathBuf::from(format!("stage-{i}.yaml")),
                line: 1,
                column: 1,
            },
            uuid: None,
            fields: StageFields::with_defaults(format!("stage-{i}"), "site"),
            key_source: KeySource::Env("KEY".into()),
            private_key: SecretString::from(KEYS[keys[i]]),
            guards: None,
        })
        .collect()
}

/// A restart: reads the state file, plans, and fails if an entry the plan
/// calls unchanged holds another key in authentik.
async fn plan_tells_the_truth(
    sim: &SimHandle,
    path: &Path,
    stages: usize,
    keys: &[usize],
) -> Result<usize, TestCaseError> {
    let recorded =
        StateFile::read_only(path).map_err(|e| TestCaseError::fail(format!("state file: {e}")))?;
    let client = client(&sim.url());
    let planned = fetch_and_plan(&client, desired(stages, keys), &recorded)
        .await
        .map_err(|e| TestCaseError::fail(format!("plan: {e}")))?;
    let mut unchanged = 0;
    for entry in &planned.plan.entries {
        let (uuid, key_unchanged) = match &entry.action {
            Action::InSync { uuid } => (*uuid, true),
            Action::Update { uuid, key, .. } => (*uuid, *key == KeyStatus::Unchanged),
            _ => continue,
        };
        if !key_unchanged {
            continue;
        }
        unchanged += 1;
        let index: usize = entry.name["stage-".len()..]
            .parse()
            .expect("generated name");
        let real = sim.private_key_of(uuid);
        prop_assert_eq!(
            real.as_deref(),
            Some(KEYS[keys[index]].trim()),
            "{} reads as unchanged; authentik holds another key (state: {:?})",
            entry.name,
            std::fs::read_to_string(path).unwrap_or_default()
        );
    }
    Ok(unchanged)
}

async fn case(stages: usize, rounds: Vec<Round>) -> Result<(usize, usize), TestCaseError> {
    let sim = sim().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("state.json");
    let (mut kills, mut unchanged) = (0, 0);
    let last = Round {
        keys: rounds.last().map_or(vec![0; stages], |r| r.keys.clone()),
        faults: Vec::new(),
        kill_after: None,
    };
    for round in rounds.iter().chain([&last]) {
        unchanged += plan_tells_the_truth(&sim, &path, stages, &round.keys).await?;

        let mut state = StateFile::open_for_write(&path)
            .map_err(|e| TestCaseError::fail(format!("open: {e}")))?;
        let client = client(&sim.url());
        let planned = fetch_and_plan(&client, desired(stages, &round.keys), state.keys())
            .await
            .map_err(|e| TestCaseError::fail(format!("plan: {e}")))?;
        for &(kind, on_put, times) in &round.faults {
            let method = if on_put { "PUT" } else { "POST" };
            sim.inject(Fault::new(fault(kind)).on(method, CAPTCHA).times(times));
        }
        let (done, mut completed) = tokio::sync::watch::channel(0usize);
        let stop = Stop::new();
        let applying = apply(
            &client,
            &planned.plan,
            &mut state,
            2,
            &stop,
            |_| false,
            |_| done.send_modify(|n| *n += 1),
        );
        match round.kill_after {
            Some(n) => {
                tokio::select! {
                    _ = applying => {
                        state.save().map_err(|e| TestCaseError::fail(format!("save: {e}")))?;
                    }
                    _ = completed.wait_for(|done| *done >= n) => kills += 1,
                }
            }
            None => {
                applying.await;
                state
                    .save()
                    .map_err(|e| TestCaseError::fail(format!("save: {e}")))?;
            }
        }
        drop(state);
        sim.clear_faults();
        // A killed apply's requests may still be on their way: let them land
        // before the next restart reads authentik, as they would.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sim.shutdown();
    Ok((kills, unchanged))
}

#[test]
fn plan_never_calls_a_key_unchanged_that_authentik_may_not_hold() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let totals = std::cell::Cell::new((0, 0));
    let result = runner.run(&rounds(), |(stages, rounds)| {
        let (kills, unchanged) = runtime.block_on(case(stages, rounds))?;
        let (k, u) = totals.get();
        totals.set((k + kills, u + unchanged));
        Ok(())
    });
    if let Err(err) = result {
        panic!("{err}");
    }
    // The property says little unless kills happened and keys did read as
    // unchanged (and were checked).
    let (kills, unchanged) = totals.get();
    eprintln!("kills: {kills}, unchanged keys checked: {unchanged}");
    assert!(
        kills > 0 && unchanged > 0,
        "kills {kills}, unchanged {unchanged}"
    );
}
