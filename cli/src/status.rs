//! `amesh status` (being written).

use crate::args::{StatusArgs, TargetArgs};

pub async fn run(_target: &TargetArgs, _args: StatusArgs) -> anyhow::Result<()> {
    anyhow::bail!("amesh status is not built yet")
}
