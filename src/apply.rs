//! Executes a plan: one write per changed stage, a bounded number at a time.
//!
//! `apply` does not decide anything; the plan says what to write. A stage that
//! fails is reported with authentik's message and does not stop the others.
//! Cancelling stops *starting* writes; the ones in flight finish, so nothing is
//! left half-written. After each successful write the fingerprint of the key
//! that was sent is recorded, so the next plan knows the key is current.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::authentik::{ApiError, Client, StageWrite};
use crate::plan::Action;
use crate::reconcile::Planned;
use crate::stage::{LiveStage, Origin, StageFields};
use crate::state::KeyState;

/// What a write was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Update => "update",
        }
    }

    /// "created" / "updated", for reports and logs.
    pub fn past_tense(self) -> &'static str {
        match self {
            Operation::Create => "created",
            Operation::Update => "updated",
        }
    }
}

/// The result of one write.
#[derive(Debug)]
pub struct WriteOutcome {
    pub name: String,
    pub origin: Origin,
    pub operation: Operation,
    pub result: WriteResult,
}

#[derive(Debug)]
pub enum WriteResult {
    /// authentik accepted the write and answered with the stage.
    Written(LiveStage),
    /// authentik (or the network) refused it; the message is the user's.
    Failed(ApiError),
    /// Never sent: the run was interrupted, or a write it depends on failed.
    NotStarted(String),
}

/// Every write of one apply, in plan order.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub outcomes: Vec<WriteOutcome>,
}

impl ApplyReport {
    pub fn failed(&self) -> impl Iterator<Item = (&WriteOutcome, &ApiError)> {
        self.outcomes.iter().filter_map(|o| match &o.result {
            WriteResult::Failed(e) => Some((o, e)),
            _ => None,
        })
    }
    pub fn not_started(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| matches!(o.result, WriteResult::NotStarted(_)))
            .count()
    }
    /// True when every planned write succeeded.
    pub fn converged(&self) -> bool {
        self.outcomes
            .iter()
            .all(|o| matches!(o.result, WriteResult::Written(_)))
    }
}

/// One write to make.
struct Write {
    /// Where the private key comes from.
    desired_index: usize,
    fields: StageFields,
    /// `None` to create.
    target: Option<Uuid>,
    /// Index of the write that must succeed first (it frees this one's name).
    after: Option<usize>,
}

/// Runs the writes of `planned`, at most `concurrency` at once, recording the
/// fingerprint of each key that was written into `keys`.
///
/// Writes run in waves: one whose name is being freed by another stage's
/// rename waits for that rename (authentik's names are unique), and is not sent
/// if the rename failed. `skip` lets the daemon hold back stages in backoff.
pub async fn apply(
    client: &Client,
    planned: &Planned,
    keys: &mut KeyState,
    concurrency: usize,
    cancel: &CancellationToken,
    skip: impl Fn(&str) -> bool,
) -> ApplyReport {
    let mut outcomes = Vec::new();
    let mut writes = Vec::new();
    let mut afters = Vec::new();
    for entry in planned
        .plan
        .stages
        .iter()
        .filter(|entry| !skip(&entry.name))
    {
        // The plan's fields (normalised, version-filtered) are what is sent.
        let (operation, target, fields) = match &entry.action {
            Action::Create { fields, .. } => (Operation::Create, None, fields),
            Action::Update { uuid, fields, .. } => (Operation::Update, Some(*uuid), fields),
            Action::InSync { .. } | Action::Error { .. } => continue,
        };
        outcomes.push(WriteOutcome {
            name: entry.name.clone(),
            origin: entry.origin.clone(),
            operation,
            result: WriteResult::NotStarted("interrupted".into()),
        });
        writes.push(Write {
            desired_index: entry.desired_index,
            fields: fields.clone(),
            target,
            after: None,
        });
        afters.push(entry.after);
    }
    for (i, after) in afters.into_iter().enumerate() {
        writes[i].after = after.and_then(|uuid| writes.iter().position(|w| w.target == Some(uuid)));
    }

    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut done = vec![false; writes.len()];
    loop {
        // This wave: writes not done whose dependency (if any) is done.
        let wave: Vec<usize> = (0..writes.len())
            .filter(|&i| !done[i] && writes[i].after.is_none_or(|j| done[j]))
            .collect();
        if wave.is_empty() || cancel.is_cancelled() {
            break;
        }
        let mut tasks = JoinSet::new();
        for index in wave {
            done[index] = true;
            if let Some(j) = writes[index].after
                && !matches!(outcomes[j].result, WriteResult::Written(_))
            {
                outcomes[index].result = WriteResult::NotStarted(format!(
                    "it takes the name of {}, whose update did not succeed",
                    outcomes[j].name
                ));
                continue;
            }
            // Wait for a free slot, unless cancelled: then start nothing more.
            let permit = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let desired = &planned.desired[writes[index].desired_index];
            let client = client.clone();
            let fields = writes[index].fields.clone();
            let private_key = desired.private_key.clone();
            let capabilities = planned.capabilities;
            let target = writes[index].target;
            tasks.spawn(async move {
                let write = StageWrite {
                    fields: &fields,
                    private_key: &private_key,
                    capabilities,
                };
                let result = match target {
                    None => client.create_stage(&write).await,
                    Some(uuid) => client.update_stage(uuid, &write).await,
                };
                drop(permit);
                (index, result)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            // A write task only ends without a result if it panicked (a bug);
            // that outcome stays "not started" rather than taking the apply down.
            let Ok((index, result)) = joined else {
                continue;
            };
            outcomes[index].result = match result {
                Ok(live) => {
                    keys.record(
                        live.uuid,
                        &planned.desired[writes[index].desired_index].private_key,
                    );
                    WriteResult::Written(live)
                }
                Err(err) => WriteResult::Failed(err),
            };
        }
    }
    ApplyReport { outcomes }
}
