//! `pgdeploy dns sync`: arguments, the `--watch` loop and its output.

use clap::{Args as ClapArgs, Subcommand};
use pgdeploy::dns::{HostHealth, SyncOptions, SyncReport, Syncer};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Arguments of `pgdeploy dns`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Publish the healthy HAProxy hosts as the A/AAAA records of the inventory's DNS name.
    Sync(SyncArgs),
}

#[derive(Debug, ClapArgs)]
struct SyncArgs {
    /// Inventory file.
    #[arg(default_value = "inventory.yaml")]
    inventory: PathBuf,
    /// Keep syncing every --interval seconds until Ctrl-C (or SIGTERM), printing only changes.
    #[arg(long)]
    watch: bool,
    /// Seconds between two syncs with --watch.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    interval: u64,
    /// Show the plan, send nothing.
    #[arg(long)]
    dry_run: bool,
}

impl SyncArgs {
    fn options(&self) -> SyncOptions {
        SyncOptions {
            inventory: self.inventory.clone(),
            watch: self.watch,
            interval: self.interval,
            dry_run: self.dry_run,
        }
    }
}

pub async fn run(args: Args) -> miette::Result<ExitCode> {
    match args.cmd {
        Cmd::Sync(a) => sync(a.options()).await.map(|_| ExitCode::SUCCESS),
    }
}

async fn sync(opts: SyncOptions) -> miette::Result<()> {
    let (inv, warnings) = pgdeploy::inventory::load(&opts.inventory)?;
    crate::print_warnings(&warnings);
    let syncer = Syncer::new(&inv, &opts)?;
    let result = if opts.watch {
        watch(&syncer, opts.interval).await
    } else {
        once(&syncer).await
    };
    if let Some(w) = syncer.finish(&result) {
        crate::print_warnings(&[w]);
    }
    result
}

fn print_header(s: &Syncer, dry_run: bool) {
    println!(
        "{} {} via {}",
        if dry_run { "planning" } else { "syncing" },
        s.name(),
        s.describe()
    );
}

async fn once(s: &Syncer) -> miette::Result<()> {
    print_header(s, s.dry_run());
    let t0 = Instant::now();
    let health = s.health().await;
    print_health(&health);
    let r = s.sync(health).await?;
    print_report(&r, s.dry_run(), t0.elapsed());
    Ok(())
}

/// Sync every `interval` seconds until Ctrl-C or SIGTERM, printing only what changed: the
/// hosts' health, the plan's warnings, an error (once until it changes) and updates.
async fn watch(s: &Syncer, interval: u64) -> miette::Result<()> {
    print_header(s, s.dry_run());
    let mut last_health: Option<Vec<HostHealth>> = None;
    let mut last_error: Option<String> = None;
    let mut last_warnings: Vec<String> = Vec::new();
    // registered once, so a Ctrl-C that arrives during a sync is not lost
    let signal = |k| {
        tokio::signal::unix::signal(k)
            .map_err(|e| miette::miette!("cannot install the signal handler: {e}"))
    };
    let mut sigint = signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut sigterm = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut failed: bool;
    loop {
        let t0 = Instant::now();
        let health = s.health().await;
        if last_health.as_ref() != Some(&health) {
            print_health(&health);
            last_health = Some(health.clone());
        }
        match s.sync(health).await {
            Ok(r) => {
                failed = false;
                if last_error.take().is_some() {
                    println!("DNS is reachable again");
                }
                if r.plan.warnings != last_warnings {
                    for w in &r.plan.warnings {
                        println!("warning: {w}");
                    }
                    last_warnings = r.plan.warnings.clone();
                }
                if !r.plan.is_empty() || !r.notes.is_empty() {
                    let mut r = r;
                    r.plan.warnings.clear();
                    print_report(&r, s.dry_run(), t0.elapsed());
                }
            }
            Err(e) => {
                failed = true;
                let msg = format!("{:?}", miette::Report::new(e));
                if last_error.as_deref() != Some(msg.as_str()) {
                    eprintln!("{msg}");
                    last_error = Some(msg);
                }
            }
        }
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = tokio::time::sleep(Duration::from_secs(interval)) => {}
        }
    }
    if failed {
        return Err(miette::miette!("the last DNS sync failed (see above)"));
    }
    Ok(())
}

fn print_health(health: &[HostHealth]) {
    for h in health {
        let addrs: Vec<String> = h.publish.iter().map(|a| a.to_string()).collect();
        if h.healthy {
            println!("  {} ({}): healthy", h.name, addrs.join(", "));
        } else {
            println!("  {} ({}): DOWN: {}", h.name, addrs.join(", "), h.reason);
        }
    }
}

fn print_report(r: &SyncReport, dry_run: bool, took: Duration) {
    for n in &r.notes {
        println!("note: {n}");
    }
    for w in &r.plan.warnings {
        println!("warning: {w}");
    }
    println!("current: {}", r.before);
    if r.plan.is_empty() {
        println!("no change ({} ms)", took.as_millis());
        return;
    }
    for line in r.plan.to_string().lines() {
        println!("  {line}");
    }
    if dry_run {
        println!("dry run: nothing sent");
    } else {
        println!("applied ({} ms)", took.as_millis());
    }
}
