//! `stagesync demo`.

use anyhow::Result;

use crate::cli::{ColorChoice, DemoConfig};

pub async fn run(_cfg: DemoConfig, _color: ColorChoice) -> Result<i32> {
    anyhow::bail!("`stagesync demo` is not built yet")
}
