//! Health of an HAProxy host: its primary port accepts connections and its stats say that the
//! `primary` backend routes to exactly one server (the leader).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// One HAProxy host to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTarget {
    pub name: String,
    /// Address the checks go to.
    pub check_addr: IpAddr,
    /// Addresses published when healthy (IPv4 and, if any, IPv6).
    pub publish: Vec<IpAddr>,
}

/// Ports and timeout of the checks.
#[derive(Debug, Clone, Copy)]
pub struct HealthPorts {
    pub primary: u16,
    pub stats: u16,
    pub timeout: Duration,
}

/// The verdict for one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostHealth {
    pub name: String,
    pub publish: Vec<IpAddr>,
    pub healthy: bool,
    /// Why it is unhealthy, or "ok".
    pub reason: String,
}

/// Number of servers UP in backend `backend` of an HAProxy stats CSV (`/;csv`).
pub fn backend_servers_up(csv: &str, backend: &str) -> Result<usize, String> {
    let mut lines = csv.lines();
    let header = lines
        .next()
        .ok_or_else(|| "the stats page is empty".to_string())?;
    let header = header.strip_prefix('#').ok_or_else(|| {
        "the stats page is not HAProxy's CSV (no `# pxname,...` header)".to_string()
    })?;
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    let idx = |n: &str| {
        cols.iter()
            .position(|c| *c == n)
            .ok_or_else(|| format!("the stats CSV has no `{n}` column"))
    };
    let (px, sv, st) = (idx("pxname")?, idx("svname")?, idx("status")?);
    let mut seen = false;
    let mut up = 0;
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        if f.get(px).copied() != Some(backend) {
            continue;
        }
        seen = true;
        let svname = f.get(sv).copied().unwrap_or("");
        if svname == "FRONTEND" || svname == "BACKEND" {
            continue;
        }
        if f.get(st).is_some_and(|s| s.starts_with("UP")) {
            up += 1;
        }
    }
    if !seen {
        return Err(format!("HAProxy has no `{backend}` proxy"));
    }
    Ok(up)
}

/// The client for the stats pages: plain HTTP, so it loads no root certificates (the
/// platform's store is a few hundred files, read again for every client built).
fn stats_client(timeout: Duration) -> Result<reqwest::Client, String> {
    crate::crypto::install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .tls_certs_only([])
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

/// Check one host (TCP connect to the primary port + stats CSV).
async fn check_host(client: &reqwest::Client, t: &HealthTarget, ports: HealthPorts) -> HostHealth {
    let verdict = |healthy: bool, reason: String| HostHealth {
        name: t.name.clone(),
        publish: t.publish.clone(),
        healthy,
        reason,
    };
    let primary = SocketAddr::new(t.check_addr, ports.primary);
    match tokio::time::timeout(ports.timeout, tokio::net::TcpStream::connect(primary)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return verdict(false, format!("port {primary}: {e}")),
        Err(_) => {
            return verdict(
                false,
                format!("port {primary}: no answer within {:?}", ports.timeout),
            )
        }
    }
    let url = format!("http://{}/;csv", SocketAddr::new(t.check_addr, ports.stats));
    let body = match client.get(&url).send().await {
        Ok(r) if r.status().is_success() => match r.text().await {
            Ok(b) => b,
            Err(e) => return verdict(false, format!("{url}: {e}")),
        },
        Ok(r) => return verdict(false, format!("{url}: HTTP {}", r.status())),
        Err(e) if e.is_timeout() => return verdict(false, format!("{url}: timed out")),
        Err(e) => return verdict(false, format!("{url}: {e}")),
    };
    match backend_servers_up(&body, "primary") {
        Ok(1) => verdict(true, "ok".into()),
        Ok(0) => verdict(
            false,
            "no server is UP in backend `primary` (no leader?)".into(),
        ),
        Ok(n) => verdict(
            false,
            format!("{n} servers are UP in backend `primary` (expected exactly one leader)"),
        ),
        Err(e) => verdict(false, format!("{url}: {e}")),
    }
}

/// Check every host in parallel; results in the order of `targets`.
pub async fn check_all(targets: &[HealthTarget], ports: HealthPorts) -> Vec<HostHealth> {
    let client = match stats_client(ports.timeout) {
        Ok(c) => c,
        Err(e) => {
            return targets
                .iter()
                .map(|t| HostHealth {
                    name: t.name.clone(),
                    publish: t.publish.clone(),
                    healthy: false,
                    reason: e.clone(),
                })
                .collect()
        }
    };
    futures::future::join_all(targets.iter().map(|t| check_host(&client, t, ports))).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight\n\
primary,FRONTEND,,,0,0,100,0,0,0,0,0,0,,,,,OPEN,\n\
primary,pg1,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP,1\n\
primary,pg2,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1\n\
primary,pg3,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN 1/2,1\n\
primary,BACKEND,0,0,0,0,10,0,0,0,0,0,,0,0,0,0,UP,1\n\
replicas,pg2,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP,1\n\
replicas,pg3,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP,1\n";

    #[test]
    fn counts_up_servers() {
        assert_eq!(backend_servers_up(CSV, "primary"), Ok(1));
        assert_eq!(backend_servers_up(CSV, "replicas"), Ok(2));
        assert!(backend_servers_up(CSV, "nope").is_err());
        assert!(backend_servers_up("<html>", "primary").is_err());
        assert!(backend_servers_up("", "primary").is_err());
        let going_down = CSV.replace(
            "pg2,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1",
            "pg2,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP 1/3,1",
        );
        assert_eq!(backend_servers_up(&going_down, "primary"), Ok(2));
    }
}
