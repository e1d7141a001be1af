//! `stagesync apply`.

use anyhow::Result;

use crate::cli::{ApplyConfig, ColorChoice};

pub async fn run(_cfg: ApplyConfig, _color: ColorChoice) -> Result<i32> {
    anyhow::bail!("`stagesync apply` is not built yet")
}
