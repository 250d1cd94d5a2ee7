//! `pgdeploy dns` (to be written by its owner).

/// Arguments of `pgdeploy dns`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args) -> miette::Result<()> {
    Err(miette::miette!("pgdeploy dns: not implemented yet"))
}
