//! The pgdeploy command line: parse arguments, call one operation, map errors to exit codes.

mod cli;
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
pub(crate) enum Format {
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

/// `apply_until` with the plans printed as they run, Ctrl-C as the interrupt and the warnings
/// printed: the outcomes and the seconds they took.
async fn apply_printing(
    opts: &RunOptions,
) -> miette::Result<(Vec<pgdeploy::engine::PhaseOutcome>, f64)> {
    let progress = Arc::new(progress::Progress::new(false));
    let (outcomes, warnings) = ops::apply_until(
        opts,
        progress,
        &|p| print!("{}", report::phase_text(p)),
        ctrl_c(),
    )
    .await?;
    print_warnings(&warnings);
    let secs: f64 = outcomes.iter().map(|o| o.seconds).sum();
    Ok((outcomes, secs))
}

/// A path given on the command line, made absolute against the current directory: it may be
/// handed to another program that runs elsewhere. Paths inside the inventory resolve against
/// the inventory's directory instead (see `Inventory::resolve_path`).
fn absolute(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

impl RunArgs {
    fn options(&self) -> RunOptions {
        RunOptions {
            roles_dir: self.roles_dir.as_deref().map(absolute),
            forks: self.forks,
            connect: ConnectOptions {
                accept_new_host_keys: self.accept_new_host_keys,
                known_hosts: self.known_hosts.as_deref().map(absolute),
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
        /// The PostgreSQL minor to upgrade to, e.g. 15.20. Left out: the newest minor in the
        /// bundle (nothing to do when the inventory already pins it).
        #[arg(long, value_name = "MAJOR.MINOR")]
        postgres: Option<String>,
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
    /// Point-in-time recovery of the whole cluster from the pgBackRest repository.
    ///
    /// Exactly one of --to TIME, --latest or --set LABEL. The target is checked against the
    /// repository before anything stops. Then Patroni stops (replicas first), the cluster's
    /// DCS state is removed, every data directory is moved aside, one member restores and
    /// replays the archive to the target, becomes the leader, and the others rebuild from it;
    /// the old data directories are removed only once the restored cluster runs. HAProxy and
    /// DNS need no change. Asks for confirmation on a terminal; --yes skips it.
    Restore {
        #[command(flatten)]
        run: RunArgs,
        /// The time to restore to, with its offset: 2026-12-04T19:30:00Z.
        #[arg(long, value_name = "TIME", group = "target")]
        to: Option<String>,
        /// Everything the archive holds.
        #[arg(long, group = "target")]
        latest: bool,
        /// The consistent end of one backup set (see `pgdeploy backup list`).
        #[arg(long, value_name = "LABEL", group = "target")]
        set: Option<String>,
        /// Show every step, change nothing.
        #[arg(long)]
        check: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
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
        /// Refresh until Ctrl-C: in place on a terminal, one refresh after another otherwise
        /// (with `--format json`: one JSON document per line). The exit code is the last status's.
        #[arg(long)]
        watch: bool,
        /// Seconds between two refreshes with --watch.
        #[arg(long, default_value_t = 2, value_name = "SECS", requires = "watch", value_parser = clap::value_parser!(u64).range(1..))]
        interval: u64,
    },
    /// What past runs of apply, upgrade and dns sync changed, from the run journal.
    ///
    /// Every run is recorded in `.pgdeploy/<cluster>/journal.jsonl` next to the inventory: when
    /// it started, who ran what, each change on each host with its result and duration (secrets
    /// redacted), and how it ended: ok, failed, interrupted (killed or Ctrl-C) or running.
    ///
    /// `pgdeploy history` lists the runs, oldest first; `pgdeploy history RUN` shows what one run
    /// changed, per phase and host. RUN is an id, a unique prefix of one, or `last`. With a single
    /// argument, it is the inventory if it names a file or ends in .yaml/.yml, otherwise a RUN.
    History {
        /// The inventory file.
        #[arg(value_name = "INVENTORY")]
        inventory: Option<PathBuf>,
        /// The run to show: an id, a unique prefix of one, or `last`.
        #[arg(value_name = "RUN")]
        run: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Take a backup now (`--type full|diff|incr`), or list the backups (`backup list`).
    ///
    /// Runs on the repository host (`groups.backup`), from a replica when one streams, and
    /// waits until the backup is complete. The cluster is never changed.
    Backup(cli::backup::Args),
    /// Local lab: real Debian hosts in systemd-nspawn containers.
    Lab(cli::lab::Args),
    /// Build the offline package repository for an inventory.
    Bundle(cli::bundle::Args),
    /// DNS record management for the HAProxy name.
    Dns(cli::dns::Args),
    /// Print the cluster CA certificate (PEM), for clients' `sslrootcert`.
    ///
    /// Clients connect by the inventory's DNS name through HAProxy, which passes TCP through:
    /// with this file, `sslmode=verify-full` verifies whichever member leads.
    Ca {
        /// The inventory file.
        #[arg(default_value = "inventory.yaml")]
        inventory: PathBuf,
    },
    /// Print how applications connect: the libpq keyword form and the URI, for writes (HAProxy's
    /// primary port) and reads (its replica port), with TLS verified against the cluster CA.
    ///
    /// Contacts no host and never prints a password, only where it is. Save the CA with
    /// `pgdeploy ca INVENTORY > FILE` and give FILE as --sslrootcert.
    ConnectInfo {
        /// The inventory file.
        #[arg(default_value = "inventory.yaml")]
        inventory: PathBuf,
        /// The role that connects (default: the first declared login role).
        #[arg(long)]
        user: Option<String>,
        /// The database (default: the one the role owns, else one it reads, else its name).
        #[arg(long)]
        dbname: Option<String>,
        /// Where the client keeps the CA certificate from `pgdeploy ca`.
        #[arg(long, default_value = "pgdeploy-ca.crt")]
        sslrootcert: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Move the local state (CA, keys, passwords) to another workstation.
    ///
    /// `check` and `apply` refuse to run when the hosts were deployed from another state
    /// directory (another CA or other passwords): export it where it is, import it here.
    State(cli::state::Args),
    /// Hold one host's SSH connection for the commands that follow (started by pgdeploy
    /// itself, see `ssh.persist`).
    #[command(hide = true)]
    SshPersist { socket: PathBuf },
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
            let (outcomes, secs) = apply_printing(&run.options()).await?;
            let plans: Vec<_> = outcomes.iter().map(|o| o.plan.clone()).collect();
            let (n, hosts) = report::totals(&plans);
            if n == 0 {
                println!("No changes: the hosts already matched the inventory ({secs:.1} s).");
            } else {
                println!("Applied {n} change(s) on {hosts} host(s) in {secs:.1} s; the hosts now match the inventory.");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Restore {
            run,
            to,
            latest,
            set,
            check,
            yes,
        } => {
            use pgdeploy::phases::restore::{parse_time, Target};
            let target = match (to, latest, set) {
                (Some(t), _, _) => Target::Time {
                    at: parse_time(&t)?,
                    text: t,
                },
                (None, true, _) => Target::Latest,
                (None, false, Some(label)) => Target::Set { label },
                (None, false, None) => {
                    return Err(miette::miette!(
                        help = "`pgdeploy backup list` shows the backups and the restorable range",
                        "say what to restore to: --to TIME, --latest or --set LABEL"
                    ))
                }
            };
            let mut opts = run.options();
            opts.restore = Some(target);
            if check || !yes {
                let progress = Arc::new(progress::Progress::new(false));
                let (plans, warnings) = ops::check(&opts, progress).await?;
                print_warnings(&warnings);
                print!("{}", report::plan_text(&plans));
                if check {
                    return Ok(ExitCode::from(2));
                }
                use std::io::IsTerminal;
                if !std::io::stdin().is_terminal() {
                    return Err(miette::miette!(
                        help = "run it on a terminal to confirm, or pass --yes",
                        "a restore replaces the cluster's data; nothing was changed"
                    ));
                }
                let (inv, _) = pgdeploy::inventory::load(&run.inventory)?;
                eprint!(
                    "Type the cluster's name ({}) to restore it: ",
                    inv.cluster.name
                );
                let mut answer = String::new();
                std::io::stdin()
                    .read_line(&mut answer)
                    .map_err(|e| miette::miette!("{e}"))?;
                if answer.trim() != inv.cluster.name {
                    return Err(miette::miette!("not confirmed; nothing was changed"));
                }
            }
            let (_, secs) = apply_printing(&opts).await?;
            println!("Restored in {secs:.1} s: one leader runs on the restored data and the other members stream from it.");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Upgrade {
            run,
            postgres,
            max_lag_mb,
            max_xact_age,
            check,
        } => {
            let postgres = match postgres {
                Some(v) => v,
                None => {
                    let (inv, _) = pgdeploy::inventory::load(&run.inventory)?;
                    let bundle = format!("pgdeploy bundle {}", run.inventory.display());
                    match ops::upgrade_target(&inv)? {
                        ops::UpgradeTarget::Bundled(v) => v,
                        ops::UpgradeTarget::NotBundled(v) => {
                            return Err(miette::miette!(
                                help =
                                    format!("add it to the bundle: {bundle} --also-postgres {v}"),
                                "PostgreSQL {v} is available but not in the bundle; nothing was \
                                 changed"
                            ))
                        }
                        ops::UpgradeTarget::Newest => {
                            println!(
                                "Nothing to upgrade: PostgreSQL {} is the newest {} minor in the \
                                 bundle and in the {} sources it was built from. Nothing was \
                                 changed. When a newer minor is published, rebuild the bundle \
                                 (`{bundle}`) and run this again.",
                                inv.postgres.version,
                                inv.platform.postgres_major(),
                                inv.platform.describe(),
                            );
                            return Ok(ExitCode::SUCCESS);
                        }
                    }
                }
            };
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
            let (_, secs) = apply_printing(&opts).await?;
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
            watch,
            interval,
        } => {
            let opts = ConnectOptions {
                accept_new_host_keys: false,
                known_hosts: known_hosts.as_deref().map(absolute),
            };
            if watch {
                return Ok(watch_status(&inventory, &opts, format, interval).await);
            }
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
        Cmd::History {
            inventory,
            run,
            format,
        } => {
            let (inventory, run) = history_args(inventory, run);
            let (inv, _) = pgdeploy::inventory::load(&inventory)?;
            let state = inv.state_dir();
            let (journal, runs) = pgdeploy::journal::history(&state)?;
            if journal.unreadable > 0 {
                eprintln!(
                    "warning: {} unreadable line(s) of {} skipped",
                    journal.unreadable,
                    pgdeploy::journal::path(&state).display()
                );
            }
            let json = matches!(format, Format::Json);
            match run {
                None if runs.is_empty() && !json => println!(
                    "No runs recorded yet ({}).",
                    pgdeploy::journal::path(&state).display()
                ),
                None if json => println!("{}", pgdeploy::journal::list_json(&runs)),
                None => print!("{}", pgdeploy::journal::list_text(&runs)),
                Some(q) => {
                    let d =
                        pgdeploy::journal::detail(&journal, pgdeploy::journal::select(&runs, &q)?);
                    if json {
                        println!("{}", pgdeploy::journal::detail_json(&d));
                    } else {
                        print!("{}", pgdeploy::journal::detail_text(&d));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Backup(a) => cli::backup::run(a).await,
        Cmd::Lab(a) => cli::lab::run(a).await,
        Cmd::Bundle(a) => cli::bundle::run(a).await,
        Cmd::Dns(a) => cli::dns::run(a).await,
        Cmd::State(a) => cli::state::run(a).await,
        Cmd::SshPersist { .. } => Ok(ExitCode::from(1)),
        Cmd::ConnectInfo {
            inventory,
            user,
            dbname,
            sslrootcert,
            format,
        } => {
            let (inv, warnings) = pgdeploy::inventory::load(&inventory)?;
            print_warnings(&warnings);
            let c = pgdeploy::connect::connect_info(
                &inv,
                user.as_deref(),
                dbname.as_deref(),
                &sslrootcert,
            )
            .map_err(|e| {
                miette::miette!(
                    help = "declare the application's roles under `users:` in the inventory",
                    "{e}"
                )
            })?;
            match format {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&c).map_err(|e| miette::miette!("{e}"))?
                ),
                Format::Text => {
                    println!(
                        "# {} through HAProxy, TLS {} against the cluster CA; save the CA with: \
                         pgdeploy ca {} > {}",
                        c.hosts.join(", "),
                        c.sslmode,
                        inventory.display(),
                        c.sslrootcert
                    );
                    for e in &c.endpoints {
                        println!("{} (port {}):", e.role, e.port);
                        println!("  {}", e.keywords);
                        println!("  {}", e.uri);
                    }
                    println!("password: {}", c.password);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ca { inventory } => {
            let (inv, warnings) = pgdeploy::inventory::load(&inventory)?;
            print_warnings(&warnings);
            let path = inv.state_dir().join("tls").join("ca.crt");
            let pem = std::fs::read_to_string(&path)
                .ok()
                .filter(|p| pgdeploy::state::cert_fingerprint(p).is_some());
            let Some(pem) = pem else {
                return Err(miette::miette!(
                    help =
                        "the CA is created by the first `pgdeploy check` or `apply`; on another \
                            workstation, bring the state with `pgdeploy state import`",
                    "no cluster CA in {}",
                    path.display()
                ));
            };
            print!("{pem}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Completes at the first Ctrl-C (never, if the handler cannot be installed).
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await
    }
}

/// `history [INVENTORY] [RUN]`: a single argument is the inventory if it names a file or looks
/// like one (.yaml/.yml), otherwise a run.
fn history_args(inventory: Option<PathBuf>, run: Option<String>) -> (PathBuf, Option<String>) {
    let default = PathBuf::from("inventory.yaml");
    match (inventory, run) {
        (Some(one), None) => {
            let yaml = matches!(
                one.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            );
            if one.is_file() || yaml {
                (one, None)
            } else {
                (default, Some(one.to_string_lossy().into_owned()))
            }
        }
        (inventory, run) => (inventory.unwrap_or(default), run),
    }
}

/// `status --watch`: gather and print every `interval` seconds until Ctrl-C; the exit code is
/// the last status's (130 when stopped before the first one).
async fn watch_status(
    inventory: &std::path::Path,
    opts: &ConnectOptions,
    format: Format,
    interval: u64,
) -> ExitCode {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stdout().is_terminal();
    let json = matches!(format, Format::Json);
    let stop = ctrl_c();
    tokio::pin!(stop);
    let mut last: Option<u8> = None;
    loop {
        let gathered = tokio::select! {
            st = pgdeploy::status::gather(inventory, opts) => st,
            _ = &mut stop => break,
        };
        let (body, code) = match gathered {
            Ok(st) => {
                let body = match (format, tty) {
                    (Format::Text, _) => pgdeploy::status::text(&st),
                    (Format::Json, true) => serde_json::to_string_pretty(&st)
                        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")),
                    (Format::Json, false) => serde_json::to_string(&st)
                        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")),
                };
                (body, if st.healthy() { 0 } else { 1 })
            }
            Err(e) if json => (
                serde_json::json!({ "error": format!("{e}") }).to_string(),
                1,
            ),
            Err(e) => (format!("{e:?}\n"), 1),
        };
        let frame = pgdeploy::status::watch_frame(
            &body,
            &pgdeploy::clock::local_hms(),
            interval,
            tty,
            json,
        );
        let mut out = std::io::stdout().lock();
        if out
            .write_all(frame.as_bytes())
            .and_then(|_| out.flush())
            .is_err()
        {
            // The reader went away (a closed pipe): stop like at Ctrl-C.
            last = Some(code);
            break;
        }
        drop(out);
        last = Some(code);
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(interval)) => {}
            _ = &mut stop => break,
        }
    }
    if tty {
        println!();
    }
    ExitCode::from(last.unwrap_or(130))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::SshPersist { socket } = &cli.cmd {
        return ExitCode::from(pgdeploy::ssh::persist::serve(socket));
    }
    pgdeploy::ssh::persist::enable();
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
            if e.downcast_ref::<ops::Interrupted>().is_some() {
                eprintln!("{e:?}");
                return ExitCode::from(130);
            }
            match e.downcast_ref::<pgdeploy::inventory::InventoryError>() {
                Some(ie) => eprint!("{}", pgdeploy::inventory::render_plain(ie)),
                None => eprintln!("{e:?}"),
            }
            ExitCode::from(1)
        }
    }
}
