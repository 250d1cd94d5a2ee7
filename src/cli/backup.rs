//! `pgdeploy backup`: take a backup now, or list what the repository holds.

use crate::Format;
use clap::{Args as ClapArgs, Subcommand, ValueEnum};
use pgdeploy::backup::{self, Kind};
use pgdeploy::ssh::ConnectOptions;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `pgdeploy backup`.
#[derive(Debug, ClapArgs)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    now: NowArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The backup sets in the repository: type, start and end, size, WAL range, and the times
    /// a point-in-time restore can reach.
    List {
        /// The inventory file.
        #[arg(default_value = "inventory.yaml")]
        inventory: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// A restore drill: restore the latest backup (or the state at --to) into a scratch
    /// instance on the repository host, start it, report the last transaction it reached, its
    /// databases and sizes and pg_amcheck's verdict, and remove it. The cluster is not touched.
    Verify {
        /// The inventory file.
        #[arg(default_value = "inventory.yaml")]
        inventory: PathBuf,
        /// Restore to this time (with its offset) instead of the end of the archive.
        #[arg(long, value_name = "TIME")]
        to: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KindArg {
    Full,
    Diff,
    Incr,
}

#[derive(Debug, ClapArgs)]
struct NowArgs {
    /// The inventory file.
    #[arg(default_value = "inventory.yaml")]
    inventory: PathBuf,
    /// Full: every file. Diff: what changed since the last full backup. Incr: what changed
    /// since the last backup of any type.
    #[arg(long = "type", value_enum, default_value = "full")]
    kind: KindArg,
}

fn opts() -> ConnectOptions {
    ConnectOptions {
        accept_new_host_keys: false,
        known_hosts: None,
    }
}

pub async fn run(args: Args) -> miette::Result<ExitCode> {
    match args.cmd {
        Some(Cmd::List { inventory, format }) => {
            let (inv, warnings) = pgdeploy::inventory::load(&inventory)?;
            crate::print_warnings(&warnings);
            let r = backup::list(&inv, &opts()).await?;
            match format {
                Format::Text => print!("{}", backup::list_text(&r)),
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&r).map_err(|e| miette::miette!("{e}"))?
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Cmd::Verify {
            inventory,
            to,
            format,
        }) => {
            let (inv, warnings) = pgdeploy::inventory::load(&inventory)?;
            crate::print_warnings(&warnings);
            let to = to
                .map(|t| pgdeploy::phases::restore::parse_time(&t))
                .transpose()?;
            let d = backup::drill(&inv, to, &opts()).await?;
            match format {
                Format::Text => print!("{}", backup::drill_text(&d)),
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&d).map_err(|e| miette::miette!("{e}"))?
                ),
            }
            Ok(if d.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        None => {
            let (inv, warnings) = pgdeploy::inventory::load(&args.now.inventory)?;
            crate::print_warnings(&warnings);
            let kind = match args.now.kind {
                KindArg::Full => Kind::Full,
                KindArg::Diff => Kind::Diff,
                KindArg::Incr => Kind::Incr,
            };
            let t = std::time::Instant::now();
            let set = backup::take(&inv, kind, &opts()).await?;
            println!("{}", backup::set_line(&set));
            println!(
                "{} backup {} taken in {:.1} s.",
                kind.as_str(),
                set.label,
                t.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
