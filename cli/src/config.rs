//! `amesh config` (being written).

use crate::args::{ConfigArgs, TargetArgs};

pub async fn run(_target: &TargetArgs, _args: ConfigArgs) -> anyhow::Result<()> {
    anyhow::bail!("amesh config is not built yet")
}
