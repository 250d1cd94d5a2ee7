//! `pgdeploy lab`: real Debian 12 hosts (systemd as PID 1, sshd) in systemd-nspawn containers,
//! each in its own network namespace on the bridge `pgdlab0` (10.231.0.1/24), plus an
//! authoritative BIND 9 for `db.lab.test.` that accepts TSIG-signed RFC 2136 updates.
//!
//! The library API ([`Lab`]) lets end-to-end tests bring a lab up, power hosts off and on, cut
//! their network, and tear everything down:
//!
//! ```no_run
//! # async fn demo() -> pgdeploy::lab::Result<()> {
//! use pgdeploy::lab::{self, Lab, LabOptions, Topology};
//! let _guard = lab::exclusive().await; // one lab per machine: serialize tests
//! let mut opts = LabOptions::new(Topology::Production, "target/lab");
//! opts.down_on_drop = true; // torn down even when the test panics
//! let mut lab = Lab::up(opts).await?;
//! let _inventory = lab.inventory_path(); // inventory.yaml for the cluster code
//! lab.kill("pg1").await?; // power loss
//! lab.start("pg1").await?; // boots on the same disk; waits for SSH
//! lab.partition("etcd2").await?; // veth down: processes keep running
//! lab.heal("etcd2").await?;
//! let out = lab.ssh("pg1", "systemctl is-system-running").await?;
//! assert_eq!(out.code, 0);
//! lab.down().await?;
//! # Ok(()) }
//! ```
//!
//! Layout: state file, overlays and the DNS server's files under [`STATE_DIR`]; the base image
//! under [`CACHE_DIR`]; each container in its own cgroup subtree `pgdeploy-lab/<host>`.

mod base;
mod control;
mod error;
mod named;
mod net;
mod sys;

pub use base::{base_path, cache_key, ensure_base, mirror, BaseImage, CACHE_DIR, PACKAGES};
pub use control::{
    exclusive, exclusive_blocking, leftovers, preflight_tools, teardown, DownReport, HostState,
    HostStatus, Lab, LabHost, LabOptions, SshOutput, State, Topology, UpReport, STATE_DIR,
};
pub use error::{LabError, Result};
pub use named::{KEY_ALG, KEY_NAME, NAME as DNS_NAME, ZONE as DNS_ZONE};
pub use net::{BRIDGE, GATEWAY, NETNS_PREFIX, VETH_PREFIX};
pub use sys::ProcId;

use clap::{Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `pgdeploy lab`.
#[derive(Debug, clap::Args)]
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
    Up {
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
    },
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

pub async fn run(args: Args) -> miette::Result<()> {
    match args.cmd {
        LabCmd::Up {
            topology,
            hosts,
            spares,
            dir,
            timeout,
            keep_on_failure,
            debian,
        } => {
            let topology = match (hosts, topology) {
                (Some(n), _) => Topology::Hosts(n),
                (None, TopologyArg::Production) => Topology::Production,
                (None, TopologyArg::Poc) => Topology::Poc,
            };
            let mut opts = LabOptions::new(topology, dir);
            opts.boot_timeout = Duration::from_secs(timeout);
            opts.down_on_failure = !keep_on_failure;
            opts.spares = spares;
            opts.platform = crate::platform::Platform::from_version_id(&debian)
                .ok_or_else(|| miette::miette!("--debian takes 12 or 13, not {debian}"))?;
            if !control::base_cached(&opts.cache_dir, opts.platform) {
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
        LabCmd::Status => {
            preflight_root()?;
            let lab = Lab::open()?;
            println!(
                "{:<10} {:<15} {:<8} {:<4} network",
                "HOST", "ADDRESS", "RUNNING", "SSH"
            );
            for s in lab.status().await {
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
                lab.dns_server(),
                if lab.named_running() {
                    "running"
                } else {
                    "not running"
                }
            );
            Ok(())
        }
        LabCmd::Down => {
            let rep = tokio::task::spawn_blocking(teardown)
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
            Ok(())
        }
        LabCmd::Kill { host } => {
            preflight_root()?;
            Lab::open()?.kill(&host).await?;
            println!("{host}: powered off");
            Ok(())
        }
        LabCmd::Start { host } => {
            preflight_root()?;
            Lab::open()?.start(&host).await?;
            println!("{host}: up");
            Ok(())
        }
        LabCmd::Partition { host } => {
            preflight_root()?;
            Lab::open()?.partition(&host).await?;
            println!("{host}: partitioned");
            Ok(())
        }
        LabCmd::Heal { host } => {
            preflight_root()?;
            Lab::open()?.heal(&host).await?;
            println!("{host}: network restored");
            Ok(())
        }
    }
}

fn preflight_root() -> Result<()> {
    if sys::is_root() {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
