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
    base_cached, exclusive, exclusive_blocking, leftovers, preflight_tools, teardown, DownReport,
    HostState, HostStatus, Lab, LabHost, LabOptions, SshOutput, State, Topology, UpReport,
    STATE_DIR,
};
pub use error::{LabError, Result};
pub use named::{KEY_ALG, KEY_NAME, NAME as DNS_NAME, ZONE as DNS_ZONE};
pub use net::{BRIDGE, GATEWAY, NETNS_PREFIX, VETH_PREFIX};
pub use sys::ProcId;

/// `pgdeploy lab status`: every host, and the DNS server.
#[derive(Debug, Clone)]
pub struct LabStatus {
    pub hosts: Vec<HostStatus>,
    pub dns_server: std::net::SocketAddr,
    pub named_running: bool,
}

/// `pgdeploy lab status` of the lab that is up (needs root).
pub async fn status() -> Result<LabStatus> {
    preflight_root()?;
    let lab = Lab::open()?;
    Ok(LabStatus {
        hosts: lab.status().await,
        dns_server: lab.dns_server(),
        named_running: lab.named_running(),
    })
}

/// `pgdeploy lab kill HOST`: power loss (see [`Lab::kill`]; needs root).
pub async fn kill(host: &str) -> Result<()> {
    preflight_root()?;
    Lab::open()?.kill(host).await
}

/// `pgdeploy lab start HOST` (see [`Lab::start`]; needs root).
pub async fn start(host: &str) -> Result<()> {
    preflight_root()?;
    Lab::open()?.start(host).await
}

/// `pgdeploy lab partition HOST` (see [`Lab::partition`]; needs root).
pub async fn partition(host: &str) -> Result<()> {
    preflight_root()?;
    Lab::open()?.partition(host).await
}

/// `pgdeploy lab heal HOST` (see [`Lab::heal`]; needs root).
pub async fn heal(host: &str) -> Result<()> {
    preflight_root()?;
    Lab::open()?.heal(host).await
}

fn preflight_root() -> Result<()> {
    if sys::is_root() {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}
