//! `stagesync run`.

use anyhow::Result;

use crate::cli::RunConfig;

pub async fn run(_cfg: RunConfig) -> Result<i32> {
    anyhow::bail!("`stagesync run` is not built yet")
}
