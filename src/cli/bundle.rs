//! `pgdeploy bundle`: arguments and output (on stderr, like the build's progress lines).

use clap::Args as ClapArgs;
use pgdeploy::bundle::{BuildOptions, HOST_REPO_DIR};
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `pgdeploy bundle`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Inventory file.
    #[arg(default_value = "inventory.yaml")]
    inventory: PathBuf,
    /// Also include this PostgreSQL minor (e.g. 15.20) for a rolling upgrade; repeatable.
    #[arg(long = "also-postgres", value_name = "VERSION")]
    also_postgres: Vec<String>,
}

pub async fn run(args: Args) -> miette::Result<ExitCode> {
    let (inv, warnings) = pgdeploy::inventory::load(&args.inventory)?;
    crate::print_warnings(&warnings);
    let opts = BuildOptions::from_inventory(&inv, &args.also_postgres);
    eprintln!(
        "pgdeploy bundle: {} for postgres {} ({} {})",
        opts.bundle_dir.display(),
        opts.postgres_versions.join(", "),
        opts.codename,
        opts.architecture
    );
    let summary = pgdeploy::bundle::build_async(opts, |line| eprintln!("  {line}")).await?;
    eprintln!(
        "bundle {}: {} packages, {:.1} MB, {} downloaded, {:.1} s -> {}",
        if summary.up_to_date {
            "up to date"
        } else {
            "ready"
        },
        summary.packages,
        summary.bytes as f64 / 1_000_000.0,
        summary.downloaded,
        summary.elapsed.as_secs_f64(),
        summary.bundle_dir.display()
    );
    eprintln!("hosts use it as: deb [trusted=yes] file:{HOST_REPO_DIR} ./");
    Ok(ExitCode::SUCCESS)
}
