//! `pgdeploy lab`: arguments and output.

use clap::{Args as ClapArgs, Subcommand, ValueEnum};
use pgdeploy::lab::{self, Lab, LabOptions, Topology, DNS_ZONE, KEY_NAME};
use pgdeploy::platform::Platform;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Arguments of `pgdeploy lab`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    #[command(subcommand)]
    cmd: LabCmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TopologyArg {
    /// 3 etcd, 3 PostgreSQL, 3 HAProxy hosts.
    Production,
    /// 3 PostgreSQL hosts; etcd and HAProxy on pg1.
    Poc,
}

#[derive(Debug, Subcommand)]
enum LabCmd {
    /// Boot the lab's hosts and DNS server; write inventory, keys and known_hosts into DIR.
    Up(UpArgs),
    /// Each host: running, answering SSH, address.
    Status,
    /// Remove everything the lab created (idempotent; also after a crash or a partial `up`).
    Down,
    /// Power loss: SIGKILL the host's container.
    Kill { host: String },
    /// Boot a killed host again on its existing disk.
    Start { host: String },
    /// Cut a host off the network (its processes keep running).
    Partition { host: String },
    /// Reconnect a partitioned host.
    Heal { host: String },
}

#[derive(Debug, ClapArgs)]
struct UpArgs {
    #[arg(
        long,
        value_enum,
        default_value = "production",
        conflicts_with = "hosts"
    )]
    topology: TopologyArg,
    /// N plain hosts h1..hN (no cluster inventory).
    #[arg(long)]
    hosts: Option<usize>,
    /// Also boot N bare hosts spare1..spareN (10.231.0.41 upward) that are not in the
    /// inventory: add them to a group to grow the cluster.
    #[arg(long, default_value_t = 0, value_name = "N", conflicts_with = "hosts")]
    spares: usize,
    /// Output directory for inventory.yaml, id_ed25519, known_hosts and tsig.key.
    #[arg(long, default_value = "lab")]
    dir: PathBuf,
    /// Seconds to wait for every host to boot and answer SSH.
    #[arg(long, default_value_t = 180)]
    timeout: u64,
    /// Keep what was created when `up` fails (for debugging; remove with `lab down`).
    #[arg(long)]
    keep_on_failure: bool,
    /// The Debian release the hosts run (the inventory gets the matching `platform`).
    #[arg(long, default_value = "13", value_parser = ["12", "13"], value_name = "RELEASE")]
    debian: String,
}

impl UpArgs {
    fn options(&self) -> miette::Result<LabOptions> {
        let topology = match (self.hosts, self.topology) {
            (Some(n), _) => Topology::Hosts(n),
            (None, TopologyArg::Production) => Topology::Production,
            (None, TopologyArg::Poc) => Topology::Poc,
        };
        let mut opts = LabOptions::new(topology, self.dir.clone());
        opts.boot_timeout = Duration::from_secs(self.timeout);
        opts.down_on_failure = !self.keep_on_failure;
        opts.spares = self.spares;
        opts.platform = Platform::from_version_id(&self.debian)
            .ok_or_else(|| miette::miette!("--debian takes 12 or 13, not {}", self.debian))?;
        Ok(opts)
    }
}

pub async fn run(args: Args) -> miette::Result<ExitCode> {
    match args.cmd {
        LabCmd::Up(a) => up(a.options()?).await?,
        LabCmd::Status => print_status(&lab::status().await?),
        LabCmd::Down => {
            let rep = tokio::task::spawn_blocking(lab::teardown)
                .await
                .map_err(|e| miette::miette!("lab down: {e}"))??;
            if rep.nothing() {
                println!("nothing to remove");
            } else {
                println!(
                    "stopped {} process(es), unmounted {} overlay(s), removed {} netns, bridge {}",
                    rep.killed.len(),
                    rep.unmounted.len(),
                    rep.netns_removed.len(),
                    if rep.bridge_removed {
                        "removed"
                    } else {
                        "absent"
                    }
                );
            }
        }
        LabCmd::Kill { host } => {
            lab::kill(&host).await?;
            println!("{host}: powered off");
        }
        LabCmd::Start { host } => {
            lab::start(&host).await?;
            println!("{host}: up");
        }
        LabCmd::Partition { host } => {
            lab::partition(&host).await?;
            println!("{host}: partitioned");
        }
        LabCmd::Heal { host } => {
            lab::heal(&host).await?;
            println!("{host}: network restored");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn up(opts: LabOptions) -> miette::Result<()> {
    if !lab::base_cached(&opts.cache_dir, opts.platform) {
        eprintln!(
            "building the {} base image in {} (once; about a minute)...",
            opts.platform.describe(),
            opts.cache_dir.display()
        );
    }
    let (lab, rep) = Lab::up_with_report(opts).await?;
    if rep.base.built {
        println!(
            "base image built in {:.1} s",
            rep.base.build_time.as_secs_f64()
        );
    }
    for h in lab.hosts() {
        println!("{:<10} {:<15} {}", h.name, h.address, h.groups.join(","));
    }
    println!(
        "DNS: {} zone {} (TSIG key {})",
        lab.dns_server(),
        DNS_ZONE,
        KEY_NAME
    );
    match lab.inventory_path() {
        Some(p) => println!("inventory: {}", p.display()),
        None => println!(
            "ssh: ssh -i {} -o UserKnownHostsFile={} root@ADDRESS",
            lab.private_key_path().display(),
            lab.known_hosts_path().display()
        ),
    }
    println!("lab up in {:.1} s", rep.total.as_secs_f64());
    Ok(())
}

fn print_status(st: &lab::LabStatus) {
    println!(
        "{:<10} {:<15} {:<8} {:<4} network",
        "HOST", "ADDRESS", "RUNNING", "SSH"
    );
    for s in &st.hosts {
        println!(
            "{:<10} {:<15} {:<8} {:<4} {}",
            s.name,
            s.address,
            yes(s.running),
            yes(s.ssh),
            if s.partitioned { "partitioned" } else { "up" }
        );
    }
    println!(
        "DNS {}: {}",
        st.dns_server,
        if st.named_running {
            "running"
        } else {
            "not running"
        }
    );
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
