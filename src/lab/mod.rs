//! `pgdeploy lab` (to be written by its owner).

/// Arguments of `pgdeploy lab`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args) -> miette::Result<()> {
    Err(miette::miette!("pgdeploy lab: not implemented yet"))
}
