//! The lab network: one bridge on this machine, one network namespace and veth pair per host.

use super::error::{LabError, Result};
use super::sys::run;
use std::net::Ipv4Addr;

/// Bridge name (owned by the lab).
pub const BRIDGE: &str = "pgdlab0";
/// Marker set as the bridge's alias so that `down` recognizes a bridge it created.
pub const BRIDGE_ALIAS: &str = "pgdeploy-lab";
/// The bridge's address; also the DNS server's.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 1);
pub const PREFIX: u8 = 24;
/// Prefix of the network namespaces (`pgdlab-<host>`).
pub const NETNS_PREFIX: &str = "pgdlab-";
/// Prefix of the host side of the veth pairs (`pgdl-<host>`).
pub const VETH_PREFIX: &str = "pgdl-";

pub fn netns_name(host: &str) -> String {
    format!("{NETNS_PREFIX}{host}")
}
pub fn veth_name(host: &str) -> String {
    format!("{VETH_PREFIX}{host}")
}

pub fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// The alias of a link, if any.
pub fn link_alias(name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/ifalias"))
        .ok()
        .map(|s| s.trim().to_string())
}

pub fn bridge_is_ours() -> bool {
    link_alias(BRIDGE).as_deref() == Some(BRIDGE_ALIAS)
}

/// Any IPv4 address in the lab subnet already configured on this machine?
pub fn subnet_users() -> Result<Vec<String>> {
    let out = run("ip", &["-4", "-o", "addr", "show"])?;
    let mut users = Vec::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(iface), Some(addr)) = (f.get(1), f.get(3)) else {
            continue;
        };
        let ip = addr.split('/').next().unwrap_or("");
        if let Ok(ip) = ip.parse::<Ipv4Addr>() {
            if ip.octets()[..3] == GATEWAY.octets()[..3] {
                users.push(format!("{addr} on {iface}"));
            }
        }
    }
    Ok(users)
}

/// Check that neither the bridge nor the subnet is taken.
pub fn preflight() -> Result<()> {
    if link_exists(BRIDGE) {
        if bridge_is_ours() {
            return Err(LabError::Leftovers(format!("bridge {BRIDGE}")));
        }
        return Err(LabError::BridgeInUse(BRIDGE.into()));
    }
    let users = subnet_users()?;
    if !users.is_empty() {
        return Err(LabError::SubnetInUse {
            subnet: format!("{GATEWAY}/{PREFIX}"),
            detail: users.join(", "),
        });
    }
    let ns = lab_netns()?;
    if !ns.is_empty() {
        return Err(LabError::Leftovers(format!(
            "network namespaces {}",
            ns.join(", ")
        )));
    }
    Ok(())
}

pub fn create_bridge() -> Result<()> {
    run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
    run("ip", &["link", "set", BRIDGE, "alias", BRIDGE_ALIAS])?;
    run(
        "ip",
        &["addr", "add", &format!("{GATEWAY}/{PREFIX}"), "dev", BRIDGE],
    )?;
    run("ip", &["link", "set", BRIDGE, "up"])?;
    Ok(())
}

/// Network namespace + veth for one host, address configured, link up.
pub fn create_host_net(host: &str, addr: Ipv4Addr) -> Result<()> {
    let ns = netns_name(host);
    let veth = veth_name(host);
    run("ip", &["netns", "add", &ns])?;
    run(
        "ip",
        &[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ],
    )?;
    run("ip", &["link", "set", &veth, "master", BRIDGE, "up"])?;
    run(
        "ip",
        &[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/{PREFIX}"),
            "dev",
            "eth0",
        ],
    )?;
    run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
    run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
    run(
        "ip",
        &[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &GATEWAY.to_string(),
        ],
    )?;
    Ok(())
}

/// Set the host side of a host's veth down (partition) or up (heal).
pub fn set_link(host: &str, up: bool) -> Result<()> {
    run(
        "ip",
        &[
            "link",
            "set",
            &veth_name(host),
            if up { "up" } else { "down" },
        ],
    )?;
    Ok(())
}

/// Is the host side of the veth administratively up?
pub fn link_up(host: &str) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{}/flags", veth_name(host)))
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok())
        .map(|f| f & 1 == 1)
        .unwrap_or(false)
}

/// The lab's network namespaces that exist now.
pub fn lab_netns() -> Result<Vec<String>> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(NETNS_PREFIX) {
                out.push(n);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// PIDs of processes in a network namespace.
pub fn netns_pids(ns: &str) -> Vec<i32> {
    run("ip", &["netns", "pids", ns])
        .map(|o| o.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Links whose name starts with the lab's veth prefix.
pub fn lab_veths() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/class/net") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(VETH_PREFIX) {
                out.push(n);
            }
        }
    }
    out
}
