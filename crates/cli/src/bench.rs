//! Benchmarks: each prints its figure next to a baseline measured in the same run.

use clap::Subcommand;

#[derive(Subcommand)]
pub enum Which {}

pub async fn run(which: Which) -> anyhow::Result<()> {
    match which {}
}
