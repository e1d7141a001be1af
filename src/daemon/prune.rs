//! Prune in the daemon: the plan's prune decisions ([`crate::plan::prune`])
//! with one more guard, and their logs.
//!
//! The extra guard: a stage is deleted only when two passes at least one
//! debounce apart both found its manifest gone. A checkout that removes a file
//! and writes its replacement later (slower than the debounce) would otherwise
//! delete a stage that is about to be declared again. The first pass holds the
//! delete back and asks for another pass after the debounce.
//!
//! A pass only prunes with a complete, valid manifest set (no manifest errors,
//! the directory readable and not empty) and a complete live list: the pass
//! says so to [`crate::reconcile::Session::plan`]. A pass that kept an invalid
//! file's last valid stages is not complete.
//!
//! Logs: one INFO line per delete; blocked and held-back stages are logged
//! when their reason changes, not on every pass.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::apply::{Ended, Outcome};
use crate::plan::{Action, Held, Plan, PruneSettings};
use crate::text::escape;

/// What the daemon remembers about pruning between passes.
#[derive(Debug)]
pub(crate) struct PruneMemory {
    pub(crate) settings: PruneSettings,
    debounce: Duration,
    /// When each delete candidate was first seen, for the two-pass guard.
    first_seen: BTreeMap<Uuid, Instant>,
    /// The last logged decision per stage, to log a change once.
    logged: BTreeMap<Uuid, String>,
}

impl PruneMemory {
    pub(crate) fn new(settings: PruneSettings, debounce: Duration) -> Self {
        PruneMemory {
            settings,
            debounce,
            first_seen: BTreeMap::new(),
            logged: BTreeMap::new(),
        }
    }

    /// Holds back every delete of a stage whose manifest is gone (and of
    /// the guards it removes) first seen less than a debounce ago (pure but
    /// for the memory); a guard its present manifest no longer lists is not
    /// about a manifest gone. Returns when the next pass should run to
    /// confirm them.
    pub(crate) fn confirm(&mut self, plan: &mut Plan, now: Instant) -> Option<Duration> {
        let deletes: Vec<Uuid> = plan.deletes().filter_map(|e| e.uuid()).collect();
        self.first_seen.retain(|uuid, _| deletes.contains(uuid));
        let mut wait: Option<Duration> = None;
        // A removal of a pruned stage's guard is held with its delete
        // (`Plan::removals_without_their_delete`), never on its own.
        for entry in plan
            .entries
            .iter_mut()
            .filter(|e| !e.is_manifest() && !e.is_guard_removal())
        {
            let Action::Delete {
                uuid,
                held: held @ None,
            } = &mut entry.action
            else {
                continue;
            };
            let seen = *self.first_seen.entry(*uuid).or_insert(now);
            let age = now.saturating_duration_since(seen);
            if age < self.debounce {
                let left = self.debounce - age;
                wait = Some(wait.map_or(left, |w| w.min(left)));
                *held = Some(Held::Guard {
                    reason: "its manifest was gone on this pass only; deleted on the next pass if it is still gone".into(),
                });
            }
        }
        wait
    }

    /// Logs the prune decisions that changed since the last pass.
    pub(crate) fn log_decisions(&mut self, plan: &Plan) {
        let mut now_logged = BTreeMap::new();
        for entry in plan.prune_entries() {
            let Action::Delete { uuid, held } = &entry.action else {
                continue;
            };
            let (line, warn_level) = match held {
                None => continue,
                Some(Held::InUse { users }) => (format!("in use: {}", users.join(", ")), true),
                Some(Held::Guard { reason }) => (reason.clone(), false),
                Some(Held::NotPruned) => (
                    "no longer in the manifests (not pruned; --prune would delete it)".to_owned(),
                    false,
                ),
            };
            if self.logged.get(uuid) != Some(&line) {
                let (stage, why) = (escape(&entry.name), escape(&line));
                if warn_level {
                    warn!(stage = %stage, uuid = %uuid, why = %why, "not pruned: the stage is in use; unbind it first, or restore its manifest");
                } else {
                    info!(stage = %stage, uuid = %uuid, why = %why, "not pruned");
                }
            }
            now_logged.insert(*uuid, line);
        }
        self.logged = now_logged;
    }
}

/// The log line of a delete's outcome.
pub(crate) fn log_delete(outcome: &Outcome, result: &Ended) {
    let stage = escape(&outcome.name);
    match result {
        Ended::Deleted {
            already_gone: false,
        } => {
            info!(stage = %stage, "deleted stage (pruned: no manifest declares it)");
        }
        Ended::Deleted { already_gone: true } => info!(stage = %stage, "stage already gone"),
        Ended::InUse(users) => {
            warn!(stage = %stage, users = %escape(&users.join(", ")), "not deleted: in use now");
        }
        Ended::Failed(err) => {
            warn!(stage = %stage, error = %escape(&err.to_string()), "delete failed");
        }
        Ended::Skipped(why) => {
            debug!(stage = %stage, why = %why, "delete not started")
        }
        Ended::Written(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::{Capabilities, ServerVersion};
    use crate::kinds::Kind;
    use crate::plan::prune::Decided;

    fn plan_deleting(uuids: &[u128]) -> Plan {
        let mut plan = Plan::assemble(
            Vec::new(),
            &[],
            &Default::default(),
            Capabilities::for_version(ServerVersion::new(2025, 12, 4)),
        );
        plan.add_deletes(
            uuids
                .iter()
                .map(|n| Decided {
                    kind: Kind::CaptchaStage,
                    uuid: Uuid::from_u128(*n),
                    name: format!("s{n}"),
                    held: None,
                    guards: Vec::new(),
                })
                .collect(),
        );
        plan
    }

    #[test]
    fn a_guard_its_present_manifest_no_longer_lists_is_not_held_for_a_second_look() {
        let unbind = crate::plan::Entry {
            id: crate::plan::EntryId(0),
            kind: Kind::Guard,
            name: "a in flow login".into(),
            origin: Some(crate::kinds::Origin {
                file: "a.yaml".into(),
                line: 1,
                column: 1,
            }),
            key_source: None,
            action: Action::Delete {
                uuid: Uuid::from_u128(9),
                held: None,
            },
            after: Vec::new(),
        };
        let mut plan = Plan::assemble(
            vec![unbind],
            &[],
            &Default::default(),
            Capabilities::for_version(ServerVersion::new(2025, 12, 4)),
        );
        let mut memory = PruneMemory::new(PruneSettings::default(), Duration::from_secs(1));
        assert_eq!(memory.confirm(&mut plan, Instant::now()), None);
        assert_eq!(plan.deletes().count(), 1);
    }

    #[test]
    fn a_delete_needs_two_passes_a_debounce_apart() {
        let debounce = Duration::from_millis(500);
        let mut memory = PruneMemory::new(PruneSettings::default(), debounce);
        let t0 = Instant::now();
        let mut first = plan_deleting(&[1]);
        assert_eq!(memory.confirm(&mut first, t0), Some(debounce));
        assert_eq!(first.deletes().count(), 0);

        let mut early = plan_deleting(&[1, 2]);
        let wait = memory.confirm(&mut early, t0 + Duration::from_millis(200));
        assert_eq!(wait, Some(Duration::from_millis(300)));
        assert_eq!(early.deletes().count(), 0);

        let mut later = plan_deleting(&[1, 2]);
        let wait = memory.confirm(&mut later, t0 + Duration::from_millis(600));
        let deleted: Vec<u128> = later
            .deletes()
            .filter_map(|e| e.uuid())
            .map(|u| u.as_u128())
            .collect();
        assert_eq!(deleted, [1], "2 was first seen 400 ms ago");
        assert_eq!(wait, Some(Duration::from_millis(100)));

        // A candidate that reappears in the manifests starts over.
        let mut back = plan_deleting(&[]);
        memory.confirm(&mut back, t0 + Duration::from_millis(700));
        let mut again = plan_deleting(&[1]);
        assert!(
            memory
                .confirm(&mut again, t0 + Duration::from_millis(800))
                .is_some()
        );
        assert_eq!(again.deletes().count(), 0);
    }
}
