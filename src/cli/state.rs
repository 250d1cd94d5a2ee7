//! `pgdeploy state export|import`: move the local state (CA, host keys, passwords, journal) to
//! another workstation as one file, without printing any secret.

use clap::{Args as ClapArgs, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `pgdeploy state`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Write the inventory's state directory (`.pgdeploy/<cluster>/`) into FILE.
    ///
    /// FILE is created with mode 0600 and never overwritten. It holds the CA key and the
    /// passwords in the clear: copy it over a secure channel (scp), import it, then delete it.
    Export {
        /// The inventory file.
        inventory: PathBuf,
        /// The file to create.
        file: PathBuf,
    },
    /// Put the state of FILE (from `state export`) into the inventory's state directory.
    ///
    /// A state directory with the same CA is left as it is. One with another CA (say, one that
    /// a `check` on a fresh checkout generated) is refused, or with --replace moved aside
    /// (never deleted) and replaced.
    Import {
        /// The inventory file.
        inventory: PathBuf,
        /// The file written by `state export`.
        file: PathBuf,
        /// Replace a different local state (it is kept beside, renamed).
        #[arg(long)]
        replace: bool,
    },
}

pub async fn run(args: Args) -> miette::Result<ExitCode> {
    match args.cmd {
        Cmd::Export { inventory, file } => {
            let (inv, warnings) = pgdeploy::inventory::load(&inventory)?;
            crate::print_warnings(&warnings);
            let (n, ca) = pgdeploy::state::export(&inv.state_dir(), &inv.cluster.name, &file)?;
            println!(
                "Wrote {n} files of cluster {}'s state to {} (mode 0600; CA sha256 {ca}). It holds \
                 the CA key and the passwords: copy it over a secure channel, run `pgdeploy state \
                 import` there, then delete it.",
                inv.cluster.name,
                file.display()
            );
        }
        Cmd::Import {
            inventory,
            file,
            replace,
        } => {
            let (inv, warnings) = pgdeploy::inventory::load(&inventory)?;
            crate::print_warnings(&warnings);
            let dir = inv.state_dir();
            let r = pgdeploy::state::import(&dir, &inv.cluster.name, &file, replace)?;
            if r.files == 0 {
                println!(
                    "{} already holds this state (CA sha256 {}); nothing was changed.",
                    dir.display(),
                    r.ca
                );
            } else {
                println!(
                    "Imported {} files into {} (CA sha256 {}).",
                    r.files,
                    dir.display(),
                    r.ca
                );
                if let Some(a) = r.kept_aside {
                    println!("The state that was there is kept in {}.", a.display());
                }
                println!("`pgdeploy check` now compares it with the hosts.");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
