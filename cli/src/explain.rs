//! `amesh explain` (being written).

use crate::args::{ExplainArgs, TargetArgs};

pub async fn run(_target: &TargetArgs, _args: ExplainArgs) -> anyhow::Result<()> {
    anyhow::bail!("amesh explain is not built yet")
}
