//! Which stages hold a set of names, in the fewest calls.
//!
//! A name to be created may already be held by a stage of another type (names
//! are unique across every stage type), which the captcha list cannot show.
//! Two ways to find out, priced in calls (on a real authentik 2025.12 with one
//! worker, a look-up `stages/all/?name=` costs about 370 ms, a page of 100 of
//! `stages/all/` about 720 ms):
//!
//! - one look-up per name, [`NAME_CHECK_CONCURRENCY`] at a time;
//! - the whole of `stages/all/`, one call per 100 stages of every type, the
//!   pages after the first
//!   [`LIST_PAGE_CONCURRENCY`](super::transport::LIST_PAGE_CONCURRENCY) at a time.
//!
//! One name is always looked up. For more, the first page of `stages/all/` is
//! read: it holds up to 100 stages and says how many pages the list has. When
//! more names remain than pages, the list is read to its end; otherwise the
//! names not on the first page are looked up. Either way it costs at most one
//! call more than the cheaper of the two, and never more than one call per name
//! plus one.

use std::collections::{BTreeMap, BTreeSet};

use super::transport::{List, page_count, raise_panic};
use super::wire::{Page, WireAnyStage};
use super::{ApiError, Client, NamedStage};

/// Stages of every type.
pub(crate) const ALL_STAGES: List = List {
    path: "stages/all/",
    route: "/api/v3/stages/all/",
};

/// The first page of `stages/all/`, kept so that listing the rest does not
/// fetch it again.
pub(crate) struct AllStagesPage {
    page: Page<WireAnyStage>,
    /// How many pages the list has, when the server says.
    pages: Option<u64>,
}

impl AllStagesPage {
    /// Pages in the whole list (1 when the server does not say and there is no
    /// next page; `None` when it does not say and there is one).
    pub(crate) fn pages(&self) -> Option<u64> {
        if self.page.pagination.next == 0.0 {
            Some(1)
        } else {
            self.pages
        }
    }

    /// The stages on this page.
    pub(crate) fn stages(&self) -> impl Iterator<Item = NamedStage> + '_ {
        self.page.results.iter().map(WireAnyStage::to_named)
    }
}

impl Client {
    /// The stage of any type that holds `name` (names are unique across types).
    pub async fn find_stage_by_name(&self, name: &str) -> Result<Option<NamedStage>, ApiError> {
        let name = name.trim();
        let mut url = self.endpoint(ALL_STAGES.path)?;
        url.query_pairs_mut().append_pair("name", name);
        let list: Page<WireAnyStage> = self.get_json(url, ALL_STAGES.route).await?;
        Ok(list
            .results
            .into_iter()
            .map(WireAnyStage::into_named)
            .find(|s| s.name == name))
    }

    /// The first page (of 100) of stages of every type: its `count` says how
    /// many pages the whole list has, which decides whether listing it beats
    /// looking names up one by one.
    pub(crate) async fn first_page_of_all_stages(&self) -> Result<AllStagesPage, ApiError> {
        let page: Page<WireAnyStage> = self.list_page(ALL_STAGES, 1).await?;
        let pages = page_count(&page.pagination);
        Ok(AllStagesPage { page, pages })
    }

    /// Every stage of every type, `first` being the page already read.
    pub(crate) async fn list_all_stages(
        &self,
        first: AllStagesPage,
    ) -> Result<Vec<NamedStage>, ApiError> {
        let stages = self
            .list_every_page(ALL_STAGES, Some(first.page), |s: &WireAnyStage| s.pk)
            .await?;
        Ok(stages.into_iter().map(WireAnyStage::into_named).collect())
    }
}

/// How many name look-ups run at once: enough that 1,000 new stages do not
/// cost 1,000 round trips in a row, few enough not to load authentik.
pub(crate) const NAME_CHECK_CONCURRENCY: usize = 8;

/// The stage (of any type) holding each of `names` that is held, by name.
pub(crate) async fn holders_of(
    client: &Client,
    names: Vec<String>,
) -> Result<BTreeMap<String, NamedStage>, ApiError> {
    let mut wanted: BTreeSet<String> = names.into_iter().map(|n| n.trim().to_owned()).collect();
    let mut found = BTreeMap::new();
    if wanted.len() >= 2 {
        let first = client.first_page_of_all_stages().await?;
        let more_names_than_pages = first
            .pages()
            .is_some_and(|pages| wanted.len() as u64 > pages);
        if more_names_than_pages {
            let all = client.list_all_stages(first).await?;
            keep_holders(all, &wanted, &mut found);
            return Ok(found);
        }
        keep_holders(first.stages(), &wanted, &mut found);
        wanted.retain(|name| !found.contains_key(name));
    }
    look_up(client, wanted, &mut found).await?;
    Ok(found)
}

fn keep_holders(
    stages: impl IntoIterator<Item = NamedStage>,
    wanted: &BTreeSet<String>,
    found: &mut BTreeMap<String, NamedStage>,
) {
    for stage in stages {
        if wanted.contains(&stage.name) {
            found.insert(stage.name.clone(), stage);
        }
    }
}

/// One `stages/all/?name=` per name, [`NAME_CHECK_CONCURRENCY`] at a time.
async fn look_up(
    client: &Client,
    names: BTreeSet<String>,
    found: &mut BTreeMap<String, NamedStage>,
) -> Result<(), ApiError> {
    let mut pending = names.into_iter();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        while tasks.len() < NAME_CHECK_CONCURRENCY {
            let Some(name) = pending.next() else { break };
            let client = client.clone();
            tasks.spawn(async move {
                let holder = client.find_stage_by_name(&name).await;
                (name, holder)
            });
        }
        let Some(joined) = tasks.join_next().await else {
            return Ok(());
        };
        let (name, holder) = joined.unwrap_or_else(|e| raise_panic(e, "a name look-up"));
        if let Some(holder) = holder? {
            found.insert(name, holder);
        }
    }
}
