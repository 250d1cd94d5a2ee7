//! `pgdeploy status`: one read-only view of the whole system, with problems flagged where
//! they are. Hosts that cannot be reached are reported, not fatal.

use crate::dns::DnsConfig;
use crate::inventory::{self, Group, Host, Inventory};
use crate::phases::etcd::etcdctl;
use crate::phases::haproxy::{servers_up, stats_csv};
use crate::phases::patroni::parse_cluster;
use crate::ssh::{ConnectOptions, Session};
use miette::Result;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct EtcdMember {
    pub name: String,
    pub reachable: bool,
    pub healthy: bool,
    pub leader: bool,
    pub version: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PatroniMember {
    pub name: String,
    pub role: String,
    pub state: String,
    pub timeline: Option<i64>,
    pub lag_mb: Option<f64>,
    pub pending_restart: bool,
    pub tags: Value,
    pub postgres_version: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Balancer {
    pub name: String,
    pub reachable: bool,
    /// Servers of the `primary` backend that are up (should be exactly the leader).
    pub routes_writes_to: Vec<String>,
    pub agrees_with_leader: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DnsStatus {
    pub name: String,
    pub published: Vec<String>,
    pub healthy: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub cluster: String,
    pub etcd: Vec<EtcdMember>,
    pub leader: Option<String>,
    pub patroni: Vec<PatroniMember>,
    pub haproxy: Vec<Balancer>,
    pub dns: Option<DnsStatus>,
    /// WAL archiving on the leader, when the inventory has a backup host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveStatus>,
    /// The last restore drill on the repository host, and its age in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillStatus>,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DrillStatus {
    #[serde(flatten)]
    pub last: crate::backup::Drill,
    pub age_secs: i64,
}

async fn drill_status(
    inv: &Inventory,
    sessions: &BTreeMap<String, Session>,
    problems: &mut Vec<String>,
) -> Option<DrillStatus> {
    let repo = inv.backup_host()?;
    let s = sessions.get(&repo.name)?;
    let out = s
        .exec(
            &format!("cat {} 2>/dev/null", crate::backup::DRILL_RESULT),
            None,
        )
        .await
        .ok()?;
    let last = crate::backup::parse_drill(&out.stdout_str())?;
    if !last.ok {
        problems.push(format!(
            "backup: the last restore drill failed: {}",
            last.message
        ));
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    Some(DrillStatus {
        age_secs: now - last.at,
        last,
    })
}

/// The leader's WAL archiving (`pg_stat_archiver` and the segments waiting in pg_wal), with
/// ages in seconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ArchiveStatus {
    pub archived_count: u64,
    pub last_archived_wal: Option<String>,
    pub last_archived_age_secs: Option<f64>,
    pub failed_count: u64,
    pub last_failed_wal: Option<String>,
    pub last_failed_age_secs: Option<f64>,
    /// Segments waiting to be archived, and how long the oldest has waited.
    pub waiting: u64,
    pub oldest_waiting_secs: Option<f64>,
    /// The newest attempt failed, or a segment has waited longer than archiving allows.
    pub failing: bool,
}

/// The query behind [`ArchiveStatus`]: one line, `|`-separated.
const ARCHIVER_SQL: &str = "select archived_count, coalesce(last_archived_wal, ''), coalesce(extract(epoch from now() - last_archived_time)::text, ''), failed_count, coalesce(last_failed_wal, ''), coalesce(extract(epoch from now() - last_failed_time)::text, ''), (select count(*) from pg_ls_archive_statusdir() where name like '%.ready'), coalesce((select extract(epoch from now() - min(modification))::text from pg_ls_archive_statusdir() where name like '%.ready'), '') from pg_stat_archiver";

/// Pure: [`ArchiveStatus`] from psql's unaligned output of [`ARCHIVER_SQL`]. `stall_secs`: how
/// long a segment may wait before archiving counts as failing.
pub fn parse_archiver(out: &str, stall_secs: f64) -> Option<ArchiveStatus> {
    let f: Vec<&str> = out.trim().split('|').collect();
    if f.len() != 8 {
        return None;
    }
    let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let secs = |s: &str| s.parse::<f64>().ok();
    let mut a = ArchiveStatus {
        archived_count: f[0].parse().ok()?,
        last_archived_wal: text(f[1]),
        last_archived_age_secs: secs(f[2]),
        failed_count: f[3].parse().ok()?,
        last_failed_wal: text(f[4]),
        last_failed_age_secs: secs(f[5]),
        waiting: f[6].parse().ok()?,
        oldest_waiting_secs: secs(f[7]),
        failing: false,
    };
    let newest_failed = match (a.last_failed_age_secs, a.last_archived_age_secs) {
        (Some(_), None) => true,
        (Some(failed), Some(ok)) => failed < ok,
        _ => false,
    };
    a.failing = newest_failed || a.oldest_waiting_secs.is_some_and(|w| w > stall_secs);
    Some(a)
}

/// A segment waits at most archive_timeout before it is switched, then a moment to be pushed.
fn stall_secs(inv: &Inventory) -> f64 {
    f64::from(inv.backup.archive_timeout) + 60.0
}

async fn archive_status(
    inv: &Inventory,
    sessions: &BTreeMap<String, Session>,
    leader: Option<&str>,
    problems: &mut Vec<String>,
) -> Option<ArchiveStatus> {
    inv.backup_host()?;
    let s = leader.and_then(|l| sessions.get(l))?;
    let cmd = format!(
        "{} -XAtc {}",
        crate::phases::superuser_psql(inv),
        crate::shell::sh_quote(ARCHIVER_SQL)
    );
    let a = s
        .exec(&cmd, None)
        .await
        .ok()
        .filter(|o| o.ok())
        .and_then(|o| parse_archiver(&o.stdout_str(), stall_secs(inv)));
    match &a {
        None => problems.push("archive: the leader's pg_stat_archiver could not be read".into()),
        Some(a) if a.failing => problems.push(format!(
            "archive: WAL archiving to the repository is failing: {} segment(s) waiting, the oldest for {:.0} s; {} failure(s)",
            a.waiting,
            a.oldest_waiting_secs.unwrap_or_default(),
            a.failed_count
        )),
        Some(_) => {}
    }
    a
}

impl Status {
    pub fn healthy(&self) -> bool {
        self.problems.is_empty()
    }
}

async fn connect(hosts: &[Host], opts: &ConnectOptions) -> BTreeMap<String, Session> {
    let futs = hosts.iter().map(|h| async move {
        let connect = tokio::time::timeout(
            std::time::Duration::from_secs(h.ssh.connect_timeout.max(1) + 2),
            Session::connect(h, opts),
        );
        (h.name.clone(), connect.await.ok().and_then(|r| r.ok()))
    });
    futures::future::join_all(futs)
        .await
        .into_iter()
        .filter_map(|(n, s)| s.map(|s| (n, s)))
        .collect()
}

/// Gather the status of everything the inventory describes.
pub async fn gather(path: &Path, opts: &ConnectOptions) -> Result<Status> {
    let (inv, _) = inventory::load(path)?;
    let hosts = inv.hosts_to_connect();
    let sessions = connect(&hosts, opts).await;
    let mut problems = Vec::new();
    for h in &hosts {
        if !sessions.contains_key(&h.name) {
            problems.push(format!("{}: unreachable over SSH", h.name));
        }
    }
    // Everything at once; HAProxy's routing is compared with the leader found meanwhile.
    let (mut pe, mut pp, mut pd) = (Vec::new(), Vec::new(), Vec::new());
    let (etcd, (leader, patroni), dns) = tokio::join!(
        etcd_status(&inv, &sessions, &mut pe),
        patroni_status(&inv, &sessions, &mut pp),
        dns_status(&inv, &mut pd)
    );
    let mut ph = Vec::new();
    let (mut pa, mut pb) = (Vec::new(), Vec::new());
    let (haproxy, archive, drill) = tokio::join!(
        haproxy_status(&inv, &sessions, leader.as_deref(), &mut ph),
        archive_status(&inv, &sessions, leader.as_deref(), &mut pa),
        drill_status(&inv, &sessions, &mut pb)
    );
    for p in [pe, pp, ph, pd, pa, pb] {
        problems.extend(p);
    }
    for s in sessions.values() {
        s.close().await;
    }
    Ok(Status {
        cluster: inv.cluster.name.clone(),
        etcd,
        leader,
        patroni,
        haproxy,
        dns,
        archive,
        drill,
        problems,
    })
}

async fn etcd_status(
    inv: &Inventory,
    sessions: &BTreeMap<String, Session>,
    problems: &mut Vec<String>,
) -> Vec<EtcdMember> {
    let hosts = inv.group_hosts(Group::Etcd);
    // The cluster's own member list, to flag members the inventory no longer lists.
    let member_list = async {
        let h = hosts.iter().find(|h| sessions.contains_key(&h.name))?;
        let url = format!("https://127.0.0.1:{}", inv.etcd.client_port);
        let cmd = etcdctl(&h.name, &[url], "member list -w json");
        let o = sessions.get(&h.name)?.exec(&cmd, None).await.ok()?;
        crate::phases::etcd::parse_member_list(&o.stdout_str()).ok()
    };
    let each = futures::future::join_all(hosts.iter().map(|h| async move {
        let mut m = EtcdMember {
            name: h.name.clone(),
            reachable: false,
            healthy: false,
            leader: false,
            version: None,
        };
        if let Some(s) = sessions.get(&h.name) {
            m.reachable = true;
            let url = format!("https://{}:{}", h.address, inv.etcd.client_port);
            let cmd = etcdctl(&h.name, &[url], "endpoint status -w json");
            if let Ok(o) = s.exec(&cmd, None).await {
                let v: Value = serde_json::from_str(&o.stdout_str()).unwrap_or(Value::Null);
                if let Some(st) = v.get(0).and_then(|e| e.get("Status")) {
                    m.healthy = o.ok();
                    m.version = st["version"].as_str().map(String::from);
                    m.leader = st["leader"].as_u64().is_some()
                        && st["leader"] == st["header"]["member_id"];
                }
            }
        }
        m
    }));
    let (out, listed): (Vec<EtcdMember>, _) = tokio::join!(each, member_list);
    for m in &out {
        if !m.healthy {
            problems.push(format!("etcd member {} is not healthy", m.name));
        }
    }
    for m in listed.unwrap_or_default() {
        if m.name.is_empty() {
            problems.push(format!(
                "etcd member {:x} ({}) was added but never started (`pgdeploy apply` repairs it)",
                m.id,
                m.peer_urls.join(",")
            ));
        } else if !hosts.iter().any(|h| h.name == m.name) {
            problems.push(format!(
                "etcd member {} is in the cluster but not in the inventory (`pgdeploy apply` removes it)",
                m.name
            ));
        }
    }
    if !out.is_empty() && out.iter().filter(|m| m.leader).count() != 1 {
        problems.push("etcd has no single leader".into());
    }
    out
}

async fn patroni_status(
    inv: &Inventory,
    sessions: &BTreeMap<String, Session>,
    problems: &mut Vec<String>,
) -> (Option<String>, Vec<PatroniMember>) {
    let port = inv.patroni.restapi_port;
    let mut cluster = None;
    // Patroni's REST API is asked through each host's SSH connection, verified against the
    // cluster CA kept next to the inventory (read only: status never creates state).
    let ca_path = inv.state_dir().join("tls").join("ca.crt");
    let tls = match std::fs::read_to_string(&ca_path)
        .map_err(|e| e.to_string())
        .and_then(|pem| crate::ssh::tls_config(&pem))
    {
        Ok(t) => Some(t),
        Err(e) => {
            problems.push(format!(
                "cannot ask Patroni's REST API without the cluster CA ({}: {e})",
                ca_path.display()
            ));
            None
        }
    };
    for h in inv.group_hosts(Group::Patroni) {
        let (Some(s), Some(tls)) = (sessions.get(&h.name), tls.clone()) else {
            continue;
        };
        if let Ok(r) = s
            .https_get(
                tls,
                &h.address,
                port,
                "/cluster",
                crate::engine::REST_TIMEOUT,
            )
            .await
        {
            if r.ok() {
                cluster = parse_cluster(&r.body_str()).ok();
                break;
            }
        }
    }
    let Some(members) = cluster else {
        problems.push("Patroni does not answer on any member".into());
        return (None, vec![]);
    };
    let leader = members
        .iter()
        .find(|m| m.is_leader())
        .map(|m| m.name.clone());
    if leader.is_none() {
        problems.push("the Patroni cluster has no leader".into());
    }
    let hosts = inv.group_hosts(Group::Patroni);
    for m in &members {
        if !hosts.iter().any(|h| h.name == m.name) {
            problems.push(format!(
                "Patroni member {} is in the cluster but not in the inventory (`pgdeploy apply` removes it)",
                m.name
            ));
        }
    }
    let details: Vec<(Option<String>, Value)> = futures::future::join_all(hosts.iter().map(|h| {
        let tls = tls.clone();
        async move {
            let (Some(s), Some(tls)) = (sessions.get(&h.name), tls) else {
                return (None, Value::Null);
            };
            match s
                .https_get(
                    tls,
                    &h.address,
                    port,
                    "/patroni",
                    crate::engine::REST_TIMEOUT,
                )
                .await
            {
                Ok(r) => {
                    let v: Value = serde_json::from_str(&r.body_str()).unwrap_or(Value::Null);
                    (
                        v["server_version"]
                            .as_i64()
                            .map(crate::phases::upgrade::minor_of_version_num),
                        v["tags"].clone(),
                    )
                }
                Err(_) => (None, Value::Null),
            }
        }
    }))
    .await;
    let mut out = Vec::new();
    for (h, (version, tags)) in hosts.iter().zip(details) {
        let Some(m) = members.iter().find(|m| m.name == h.name) else {
            problems.push(format!("Patroni member {} is not in the cluster", h.name));
            continue;
        };
        if !m.is_running() {
            problems.push(format!("Patroni member {} is {}", m.name, m.state));
        }
        if m.pending_restart {
            problems.push(format!("Patroni member {} has a pending restart", m.name));
        }
        if m.lag_mb.unwrap_or(0.0) > 10.0 {
            problems.push(format!(
                "Patroni member {} lags {:.1} MB",
                m.name,
                m.lag_mb.unwrap_or(0.0)
            ));
        }
        out.push(PatroniMember {
            name: m.name.clone(),
            role: m.role.clone(),
            state: m.state.clone(),
            timeline: m.timeline,
            lag_mb: m.lag_mb,
            pending_restart: m.pending_restart,
            tags,
            postgres_version: version,
        });
    }
    (leader, out)
}

async fn haproxy_status(
    inv: &Inventory,
    sessions: &BTreeMap<String, Session>,
    leader: Option<&str>,
    problems: &mut Vec<String>,
) -> Vec<Balancer> {
    let hosts = inv.group_hosts(Group::Haproxy);
    let stats: Vec<Option<String>> = futures::future::join_all(hosts.iter().map(|h| async move {
        let s = sessions.get(&h.name)?;
        stats_csv(s, inv.haproxy.stats_port).await
    }))
    .await;
    let mut out = Vec::new();
    for (h, csv) in hosts.iter().zip(stats) {
        let mut b = Balancer {
            name: h.name.clone(),
            reachable: csv.is_some(),
            routes_writes_to: csv
                .as_deref()
                .map(|c| servers_up(c, "primary"))
                .unwrap_or_default(),
            agrees_with_leader: false,
        };
        b.agrees_with_leader =
            b.routes_writes_to.len() == 1 && Some(b.routes_writes_to[0].as_str()) == leader;
        if !b.agrees_with_leader {
            problems.push(format!(
                "HAProxy {} routes writes to [{}], Patroni's leader is {}",
                b.name,
                b.routes_writes_to.join(", "),
                leader.unwrap_or("(none)")
            ));
        }
        out.push(b);
    }
    out
}

async fn dns_status(inv: &Inventory, problems: &mut Vec<String>) -> Option<DnsStatus> {
    let cfg = match DnsConfig::from_inventory(inv) {
        Ok(Some(c)) => c,
        Ok(None) => return None,
        Err(e) => {
            problems.push(format!("DNS: {e}"));
            return None;
        }
    };
    let targets = crate::dns::haproxy_targets(inv).ok()?;
    let health = crate::dns::check_all(
        &targets,
        crate::dns::HealthPorts {
            primary: inv.haproxy.primary_port,
            stats: inv.haproxy.stats_port,
            timeout: std::time::Duration::from_secs(2),
        },
    )
    .await;
    let mut healthy: Vec<String> = health
        .iter()
        .filter(|h| h.healthy)
        .flat_map(|h| h.publish.iter().map(|a| a.to_string()))
        .collect();
    healthy.sort();
    let published = match crate::dns::query(&cfg).await {
        Ok(r) => {
            let mut v: Vec<String> = r.addrs.iter().map(|a| a.to_string()).collect();
            v.sort();
            v
        }
        Err(e) => {
            problems.push(format!("DNS: cannot read {}: {e}", cfg.name));
            vec![]
        }
    };
    if published != healthy && !healthy.is_empty() {
        problems.push(format!(
            "DNS {} publishes [{}] but the healthy HAProxy hosts are [{}]: run `pgdeploy dns sync`",
            cfg.name,
            published.join(", "),
            healthy.join(", ")
        ));
    }
    Some(DnsStatus {
        name: cfg.name.clone(),
        published,
        healthy,
    })
}

/// One refresh of `pgdeploy status --watch`. On a terminal the frame redraws the screen in
/// place (cursor home, each line cleared to its end, the rest of the screen cleared) under a
/// header with the time of the refresh; otherwise refreshes follow one another, each under a
/// header line. JSON (`json`: the body is one compact document) is one line per refresh when
/// not on a terminal, so the output stays a valid JSON Lines stream.
pub fn watch_frame(body: &str, clock: &str, interval_secs: u64, tty: bool, json: bool) -> String {
    if !tty {
        return if json {
            format!("{}\n", body.trim_end())
        } else {
            format!("--- {clock} ---\n{body}")
        };
    }
    let mut t = String::from("\x1b[H");
    let header = format!("every {interval_secs} s, last refresh {clock} (Ctrl-C to stop)");
    for line in std::iter::once(header.as_str())
        .chain(std::iter::once(""))
        .chain(body.lines())
    {
        t.push_str(line);
        t.push_str("\x1b[K\n");
    }
    t.push_str("\x1b[J");
    t
}

/// The status as text, problems flagged on their lines, a summary at the end.
pub fn text(s: &Status) -> String {
    let mut t = format!("cluster {}\n", s.cluster);
    t.push_str("etcd\n");
    for m in &s.etcd {
        t.push_str(&format!(
            "  {} {:<12} {:<9} {:<7} {}\n",
            if m.healthy { " " } else { "!" },
            m.name,
            if !m.reachable {
                "unreachable"
            } else if m.healthy {
                "healthy"
            } else {
                "unhealthy"
            },
            if m.leader { "leader" } else { "" },
            m.version.as_deref().unwrap_or("")
        ));
    }
    t.push_str(&format!(
        "patroni (leader {})\n",
        s.leader.as_deref().unwrap_or("none")
    ));
    for m in &s.patroni {
        let bad = !(m.state == "running" || m.state == "streaming") || m.pending_restart;
        t.push_str(&format!(
            "  {} {:<12} {:<13} {:<10} TL {:<3} lag {:<8} {}{}\n",
            if bad { "!" } else { " " },
            m.name,
            m.role,
            m.state,
            m.timeline.map(|x| x.to_string()).unwrap_or_default(),
            m.lag_mb
                .map(|l| format!("{l:.1} MB"))
                .unwrap_or_else(|| "-".into()),
            m.postgres_version
                .as_deref()
                .map(|v| format!("PostgreSQL {v}"))
                .unwrap_or_default(),
            if m.pending_restart {
                " pending restart"
            } else {
                ""
            }
        ));
    }
    t.push_str("haproxy\n");
    for b in &s.haproxy {
        t.push_str(&format!(
            "  {} {:<12} {}\n",
            if b.agrees_with_leader { " " } else { "!" },
            b.name,
            if !b.reachable {
                "unreachable".to_string()
            } else {
                format!(
                    "writes -> {}",
                    if b.routes_writes_to.is_empty() {
                        "nothing".into()
                    } else {
                        b.routes_writes_to.join(", ")
                    }
                )
            }
        ));
    }
    if let Some(d) = &s.dns {
        let ok = d.published == d.healthy;
        t.push_str(&format!(
            "dns {}\n  {} published {}; healthy {}\n",
            d.name,
            if ok { " " } else { "!" },
            d.published.join(", "),
            d.healthy.join(", ")
        ));
    }
    if let Some(a) = &s.archive {
        let age = |x: Option<f64>| {
            x.map(|s| format!("{s:.0} s ago"))
                .unwrap_or_else(|| "never".into())
        };
        t.push_str(&format!(
            "archive\n  {} last archived {} ({}); {} waiting; {} failure(s), last {} ({})\n",
            if a.failing { "!" } else { " " },
            a.last_archived_wal.as_deref().unwrap_or("none"),
            age(a.last_archived_age_secs),
            a.waiting,
            a.failed_count,
            a.last_failed_wal.as_deref().unwrap_or("none"),
            age(a.last_failed_age_secs)
        ));
    }
    if let Some(d) = &s.drill {
        t.push_str(&format!(
            "restore drill\n  {} {} {:.1} h ago: last transaction {}\n",
            if d.last.ok { " " } else { "!" },
            if d.last.ok { "passed" } else { "FAILED" },
            d.age_secs as f64 / 3600.0,
            if d.last.last_transaction.is_empty() {
                "none"
            } else {
                d.last.last_transaction.as_str()
            }
        ));
    }
    if s.problems.is_empty() {
        t.push_str("healthy\n");
    } else {
        t.push_str(&format!("{} problem(s):\n", s.problems.len()));
        for p in &s.problems {
            t.push_str(&format!("  - {p}\n"));
        }
    }
    t
}

#[cfg(test)]
mod archive_tests {
    use super::*;

    #[test]
    fn archiving_fails_when_the_newest_attempt_failed_or_a_segment_waits_too_long() {
        let ok = parse_archiver(
            "12|00000001000000000000000B|4.5|18|000000010000000000000001|300.2|0|\n",
            120.0,
        )
        .unwrap();
        assert_eq!(
            ok.last_archived_wal.as_deref(),
            Some("00000001000000000000000B")
        );
        assert!(!ok.failing && ok.waiting == 0);
        let failed = parse_archiver(
            "12|0000000100000000000000B|90|19|00000001000000000000000C|2|1|95",
            120.0,
        )
        .unwrap();
        assert!(failed.failing);
        // No attempt failed yet (pgBackRest still waits on the repository), but a segment has
        // waited longer than archiving allows.
        let stalled = parse_archiver(
            "12|00000001000000000000000C|130|18|000000010000000000000001|600|3|125",
            120.0,
        )
        .unwrap();
        assert!(stalled.failing && stalled.waiting == 3);
        let waiting = parse_archiver("12|00000001000000000000000C|30|0|||1|20", 120.0).unwrap();
        assert!(!waiting.failing);
        assert!(parse_archiver("psql: error", 120.0).is_none());
    }
}

#[cfg(test)]
mod watch_tests {
    use super::watch_frame;

    #[test]
    fn terminal_frames_redraw_in_place() {
        let f = watch_frame("cluster c\nhealthy\n", "10:11:12", 2, true, false);
        assert!(f.starts_with("\x1b[H"), "{f:?}");
        assert!(f.contains("last refresh 10:11:12"), "{f:?}");
        assert!(f.contains("healthy\x1b[K\n"), "{f:?}");
        assert!(f.ends_with("\x1b[J"), "{f:?}");
    }

    #[test]
    fn piped_frames_follow_one_another() {
        let f = watch_frame("cluster c\nhealthy\n", "10:11:12", 2, false, false);
        assert_eq!(f, "--- 10:11:12 ---\ncluster c\nhealthy\n");
        assert!(!f.contains('\x1b'));
        let j = watch_frame("{\"cluster\":\"c\"}", "10:11:12", 2, false, true);
        assert_eq!(j, "{\"cluster\":\"c\"}\n");
    }
}
