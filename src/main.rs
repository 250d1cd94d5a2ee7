use clap::{Parser, Subcommand};

/// pgdeploy: deploy highly available PostgreSQL (etcd, Patroni, HAProxy, DNS) over SSH.
#[derive(Debug, Parser)]
#[command(name = "pgdeploy", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Local lab: real Debian hosts in systemd-nspawn containers.
    Lab(pgdeploy::lab::Args),
    /// Build the offline package repository for an inventory.
    Bundle(pgdeploy::bundle::Args),
    /// DNS record management for the HAProxy name.
    Dns(pgdeploy::dns::Args),
}

#[tokio::main]
async fn main() -> miette::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Lab(a) => pgdeploy::lab::run(a).await,
        Cmd::Bundle(a) => pgdeploy::bundle::run(a).await,
        Cmd::Dns(a) => pgdeploy::dns::run(a).await,
    }
}
