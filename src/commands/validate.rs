//! `stagesync validate`.

use anyhow::Result;

use crate::cli::{ColorChoice, ValidateConfig};

pub async fn run(_cfg: ValidateConfig, _color: ColorChoice) -> Result<i32> {
    anyhow::bail!("`stagesync validate` is not built yet")
}
