//! The pgdeploy command line: parse arguments, call one operation, map errors to exit codes.

mod progress;

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};
use pgdeploy::ops::{self, RunOptions};
use pgdeploy::report;
use pgdeploy::ssh::ConnectOptions;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Deploy highly available PostgreSQL (etcd, Patroni, HAProxy and a DNS name) onto bare Debian
/// hosts over SSH, with nothing installed on them beforehand.
///
/// Typical use: `pgdeploy check inventory.yaml` shows what would change (diffs), then
/// `pgdeploy apply inventory.yaml` makes it so. `pgdeploy lab up` gives you nine real local
/// Debian hosts to try it on.
///
/// Exit codes: 0 success / nothing to change, 2 `check` found changes, 1 error.
#[derive(Debug, Parser)]
#[command(name = "pgdeploy", version, about, long_about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Debug, ClapArgs)]
struct RunArgs {
    /// The inventory file.
    #[arg(default_value = "inventory.yaml")]
    inventory: PathBuf,
    /// Directory whose roles (DIR/<role>/role.yaml) and templates override the built-in ones.
    #[arg(long, value_name = "DIR")]
    roles_dir: Option<PathBuf>,
    /// How many hosts to work on at once within a phase.
    #[arg(long, default_value_t = 10, value_name = "N")]
    forks: usize,
    /// Accept and record host keys not yet in known_hosts (like OpenSSH's accept-new).
    /// A key that CHANGED is always refused.
    #[arg(long)]
    accept_new_host_keys: bool,
    /// Use this known_hosts file instead of the inventory's or ~/.ssh/known_hosts.
    #[arg(long, value_name = "FILE")]
    known_hosts: Option<PathBuf>,
    /// Run only these phases (comma-separated), e.g. `--only common`.
    #[arg(long, value_delimiter = ',', value_name = "PHASE")]
    only: Vec<String>,
    /// Allow the inventory to take a running etcd cluster to an even number of members
    /// (an even number adds no fault tolerance over one member fewer).
    #[arg(long)]
    allow_even_etcd: bool,
}

impl RunArgs {
    fn options(&self) -> RunOptions {
        RunOptions {
            roles_dir: self.roles_dir.clone(),
            forks: self.forks,
            connect: ConnectOptions {
                accept_new_host_keys: self.accept_new_host_keys,
                known_hosts: self.known_hosts.clone(),
            },
            only: self.only.clone(),
            allow_even_etcd: self.allow_even_etcd,
            ..RunOptions::new(self.inventory.clone())
        }
    }
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Show what `apply` would change, without changing anything.
    ///
    /// Connects to every host, reads its state (read-only) and prints, per phase and host,
    /// unified diffs of files, package and unit changes, and a summary line. Secrets are
    /// redacted. Exit code 0 when nothing would change, 2 when something would, 1 on error.
    Check {
        #[command(flatten)]
        run: RunArgs,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Make the hosts match the inventory, phase by phase.
    ///
    /// Each phase is planned exactly as `check` plans it, applied, then planned again: if
    /// anything is left the run stops with "did not converge". A second `apply` changes and
    /// restarts nothing.
    Apply {
        #[command(flatten)]
        run: RunArgs,
    },
    /// Rolling upgrade of the PostgreSQL minor version, with no acknowledged write lost.
    ///
    /// Replicas first, one at a time (tagged out of failover and of the replica pool while they
    /// restart), then a planned switchover to the upgraded replica with the least lag, then the
    /// old leader. Refuses to start unless every member runs and streams, lag is under the bound,
    /// no transaction is older than the bound and etcd is healthy. On success the inventory's
    /// `postgres.version` is updated to the new minor. With `--check`, only shows the plan.
    /// The same happens when you change `postgres.version` in the inventory and run `apply`.
    Upgrade {
        #[command(flatten)]
        run: RunArgs,
        /// The PostgreSQL minor to upgrade to, e.g. 15.20.
        #[arg(long, value_name = "MAJOR.MINOR")]
        postgres: String,
        /// Largest replication lag allowed before and during the upgrade, in MB.
        #[arg(long, default_value_t = 10, value_name = "MB")]
        max_lag_mb: u64,
        /// Oldest transaction allowed on the leader before starting, in seconds.
        #[arg(long, default_value_t = 300, value_name = "SECONDS")]
        max_xact_age: u64,
        /// Show the plan (order, switchover, package versions) and change nothing.
        #[arg(long)]
        check: bool,
    },
    /// One view of the whole system: etcd members, Patroni members, HAProxy routing, DNS.
    ///
    /// Read-only. Unreachable hosts are reported, not fatal. Problems are flagged with `!` on
    /// their line and listed at the end. Exit code 0 when healthy, 1 when degraded.
    Status {
        /// The inventory file.
        #[arg(default_value = "inventory.yaml")]
        inventory: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Use this known_hosts file instead of the inventory's or ~/.ssh/known_hosts.
        #[arg(long, value_name = "FILE")]
        known_hosts: Option<PathBuf>,
    },
    /// Local lab: real Debian hosts in systemd-nspawn containers.
    Lab(pgdeploy::lab::Args),
    /// Build the offline package repository for an inventory.
    Bundle(pgdeploy::bundle::Args),
    /// DNS record management for the HAProxy name.
    Dns(pgdeploy::dns::Args),
}

fn print_warnings(w: &[pgdeploy::inventory::Warning]) {
    for x in w {
        eprintln!("warning: {}", x.0);
    }
}

async fn run(cli: Cli) -> miette::Result<ExitCode> {
    match cli.cmd {
        Cmd::Check { run, format } => {
            let progress = Arc::new(progress::Progress::new(matches!(format, Format::Json)));
            let (plans, warnings) = ops::check(&run.options(), progress).await?;
            print_warnings(&warnings);
            match format {
                Format::Text => print!("{}", report::plan_text(&plans)),
                Format::Json => println!("{}", report::plan_json(&plans)),
            }
            let (n, _) = report::totals(&plans);
            Ok(if n == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Cmd::Apply { run } => {
            let progress = Arc::new(progress::Progress::new(false));
            let (outcomes, warnings) = ops::apply(&run.options(), progress, &|p| {
                print!("{}", report::phase_text(p));
            })
            .await?;
            print_warnings(&warnings);
            let plans: Vec<_> = outcomes.iter().map(|o| o.plan.clone()).collect();
            let (n, hosts) = report::totals(&plans);
            let secs: f64 = outcomes.iter().map(|o| o.seconds).sum();
            if n == 0 {
                println!("No changes: the hosts already matched the inventory ({secs:.1} s).");
            } else {
                println!("Applied {n} change(s) on {hosts} host(s) in {secs:.1} s; the hosts now match the inventory.");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Upgrade {
            run,
            postgres,
            max_lag_mb,
            max_xact_age,
            check,
        } => {
            let mut opts = run.options();
            opts.postgres_version = Some(postgres.clone());
            opts.max_lag_bytes = Some(max_lag_mb * 1024 * 1024);
            opts.max_xact_age_secs = Some(max_xact_age);
            if check {
                let progress = Arc::new(progress::Progress::new(false));
                let (plans, warnings) = ops::check(&opts, progress).await?;
                print_warnings(&warnings);
                print!("{}", report::plan_text(&plans));
                let (n, _) = report::totals(&plans);
                return Ok(if n == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(2)
                });
            }
            let progress = Arc::new(progress::Progress::new(false));
            let (outcomes, warnings) = ops::apply(&opts, progress, &|p| {
                print!("{}", report::phase_text(p));
            })
            .await?;
            print_warnings(&warnings);
            let secs: f64 = outcomes.iter().map(|o| o.seconds).sum();
            if ops::pin_postgres_version(&run.inventory, &postgres)? {
                println!(
                    "Every member runs PostgreSQL {postgres} ({secs:.1} s); {} now pins {postgres}.",
                    run.inventory.display()
                );
            } else {
                println!("Every member runs PostgreSQL {postgres} ({secs:.1} s). Set postgres.version to \"{postgres}\" in {} so that the next apply keeps it.", run.inventory.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status {
            inventory,
            format,
            known_hosts,
        } => {
            let opts = ConnectOptions {
                accept_new_host_keys: false,
                known_hosts,
            };
            let st = pgdeploy::status::gather(&inventory, &opts).await?;
            match format {
                Format::Text => print!("{}", pgdeploy::status::text(&st)),
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&st)
                        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
                ),
            }
            Ok(if st.healthy() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Lab(a) => pgdeploy::lab::run(a).await.map(|_| ExitCode::SUCCESS),
        Cmd::Bundle(a) => pgdeploy::bundle::run(a).await.map(|_| ExitCode::SUCCESS),
        Cmd::Dns(a) => pgdeploy::dns::run(a).await.map(|_| ExitCode::SUCCESS),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Reports wrap to the terminal; piped or logged, lines stay whole (searchable).
    let _ = miette::set_hook(Box::new(|_| {
        use std::io::IsTerminal;
        let mut opts = miette::MietteHandlerOpts::new();
        if !std::io::stderr().is_terminal() {
            opts = opts.width(1000).color(false).unicode(false);
        }
        Box::new(opts.build())
    }));
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            match e.downcast_ref::<pgdeploy::inventory::InventoryError>() {
                Some(ie) => eprint!("{}", pgdeploy::inventory::render_plain(ie)),
                None => eprintln!("{e:?}"),
            }
            ExitCode::from(1)
        }
    }
}
