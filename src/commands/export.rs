//! `stagesync export`.

use anyhow::Result;

use crate::cli::ExportConfig;

pub async fn run(_cfg: ExportConfig) -> Result<i32> {
    anyhow::bail!("`stagesync export` is not built yet")
}
