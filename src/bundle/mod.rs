//! `pgdeploy bundle` (to be written by its owner).

/// Arguments of `pgdeploy bundle`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args) -> miette::Result<()> {
    Err(miette::miette!("pgdeploy bundle: not implemented yet"))
}
