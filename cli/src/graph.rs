//! `amesh graph` (being written).

use crate::args::{GraphArgs, TargetArgs};

pub async fn run(_target: &TargetArgs, _args: GraphArgs) -> anyhow::Result<()> {
    anyhow::bail!("amesh graph is not built yet")
}
