//! `stagesync plan`.

use anyhow::Result;

use crate::cli::{ColorChoice, PlanConfig};

pub async fn run(_cfg: PlanConfig, _color: ColorChoice) -> Result<i32> {
    anyhow::bail!("`stagesync plan` is not built yet")
}
