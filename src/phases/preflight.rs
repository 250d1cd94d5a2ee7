//! Preflight: before anything changes, every host must be reachable with root rights, run
//! the inventory's Debian release, keep its clock close to ours, have its ports free (or already ours) and enough
//! disk. All failures of all hosts are reported at once.

use crate::engine::phase::{HostPlan, Phase, PhasePlan};
use crate::engine::{bounded, Ctx};
use crate::inventory::{Group, Host, Inventory};
use crate::platform::Platform;
use crate::state;
use async_trait::async_trait;
use miette::{miette, Result};
use std::time::{SystemTime, UNIX_EPOCH};

pub struct Preflight;

/// What one host told us.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PreflightFacts {
    pub uid: Option<u32>,
    pub os_id: String,
    pub os_version: String,
    pub os_pretty: String,
    pub arch: String,
    /// Remote clock, seconds since the epoch.
    pub remote_time: f64,
    /// (port, process name) of TCP listeners.
    pub listeners: Vec<(u16, String)>,
    /// Free KiB on the file system holding /var/lib.
    pub free_kib: u64,
    /// The CA and the state marker pgdeploy left on the host (empty: none).
    pub ca_pem: String,
    pub state_marker: String,
    /// What an interrupted `pgdeploy restore` left beside the data directory (a member only):
    /// moved-aside data directories and the restore's marker.
    pub restore_left: Vec<String>,
}

/// One round trip, few processes (the hosts may share a few cores): the two small files are
/// read by the shell itself (the parser takes them line by line, so a missing last newline
/// reads the same). `data_dir`, on a Patroni member: what an interrupted restore left beside
/// it is listed by shell builtins alone.
///
/// The listening ports (`ss -p`: 10 ms of the host's CPU) are not asked for when every unit
/// of `port_units` (those that hold the host's ports) is active, as the probe before this
/// command in the same round trip saw (`$pgdeploy_active`): a port is only a problem when a
/// unit of ours is to start and something else holds it, and a running unit of ours holds its
/// ports (etcd, HAProxy and pgBackRest's server do not run without them; for PostgreSQL's
/// port a process named postgres was always taken for ours). Alone, or where one of those
/// units is not active, the ports are listed.
pub fn preflight_command(data_dir: Option<&str>, port_units: &[&str]) -> String {
    let restore = data_dir
        .map(|d| {
            format!(
                "for a in {}* {}; do [ -e \"$a\" ] && echo \"$a\"; done; ",
                crate::shell::sh_quote(&crate::phases::restore::aside_prefix(d)),
                crate::shell::sh_quote(&crate::phases::restore::marker_path(d))
            )
        })
        .unwrap_or_default();
    format!(
        "export LC_ALL=C; echo '@ID'; \
while read -r k r e _; do [ \"$k\" = Uid: ] && echo \"$e\"; done < /proc/self/status; \
echo '@OS'; while IFS= read -r l || [ -n \"$l\" ]; do printf '%s\\n' \"$l\"; done 2>/dev/null < /etc/os-release; \
echo '@ARCH'; echo \"${{HOSTTYPE:-$(dpkg --print-architecture 2>/dev/null)}}\"; \
echo '@TIME'; echo \"${{EPOCHREALTIME:-$(date +%s.%N)}}\"; \
echo '@PORTS'; v=y; for u in {units}; do case \"${{pgdeploy_active- }}\" in *\" $u \"*) ;; *) v=;; esac; done; \
if [ -n \"$v\" ]; then echo '@VOUCHED'; else ss -ltnpH 2>/dev/null || true; fi; \
echo '@DISK'; df -Pk /var/lib; \
echo '@CA'; while IFS= read -r l || [ -n \"$l\" ]; do printf '%s\\n' \"$l\"; done 2>/dev/null < /etc/pgdeploy/tls/ca.crt; \
echo '@STATE'; while IFS= read -r l || [ -n \"$l\" ]; do printf '%s\\n' \"$l\"; done 2>/dev/null < /etc/pgdeploy/state; \
echo '@RESTORE'; {restore}echo '@END'",
        units = port_units.join(" ")
    )
}

/// A value of os-release(5): shell-quoted (double quotes with `\` escapes, or single quotes) or
/// bare.
fn os_release_value(v: &str) -> String {
    let v = v.trim();
    if let Some(inner) = v.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.extend(chars.next()),
                c => out.push(c),
            }
        }
        out
    } else if let Some(inner) = v.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        inner.to_string()
    } else {
        v.to_string()
    }
}

/// Pure parser of [`preflight_command`]'s output.
pub fn parse(out: &str) -> Result<PreflightFacts, String> {
    let mut f = PreflightFacts::default();
    let mut sec = "";
    let mut ended = false;
    for line in out.lines() {
        if let Some(s) = line.strip_prefix('@') {
            sec = match s {
                "ID" => "ID",
                "OS" => "OS",
                "ARCH" => "ARCH",
                "TIME" => "TIME",
                "PORTS" => "PORTS",
                "DISK" => "DISK",
                "CA" => "CA",
                "STATE" => "STATE",
                "RESTORE" => "RESTORE",
                "END" => {
                    ended = true;
                    ""
                }
                _ => sec,
            };
            continue;
        }
        match sec {
            "ID" => f.uid = line.trim().parse().ok(),
            // os-release's KEY=value lines, read by the shell (no subshell to source it).
            "OS" => {
                if let Some((k, v)) = line.split_once('=') {
                    let v = os_release_value(v);
                    match k.trim() {
                        "ID" => f.os_id = v,
                        "VERSION_ID" => f.os_version = v,
                        "PRETTY_NAME" => f.os_pretty = v,
                        _ => {}
                    }
                }
            }
            // bash's HOSTTYPE (the machine bash, an essential package, was built for), else
            // dpkg's name for it.
            "ARCH" => {
                f.arch = match line.trim() {
                    "x86_64" => "amd64",
                    "aarch64" => "arm64",
                    other => other,
                }
                .to_string()
            }
            // bash's EPOCHREALTIME, else date's; either with the locale's decimal mark.
            "TIME" => {
                f.remote_time = line
                    .trim()
                    .replace(',', ".")
                    .parse()
                    .map_err(|_| format!("bad time {line:?}"))?
            }
            "PORTS" => {
                // State Recv-Q Send-Q Local:Port Peer:Port Process
                let cols: Vec<&str> = line.split_whitespace().collect();
                if cols.len() < 4 {
                    continue;
                }
                let local = cols[3];
                let Some(port) = local.rsplit(':').next().and_then(|p| p.parse().ok()) else {
                    continue;
                };
                let proc_name = line
                    .split("((\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or("")
                    .to_string();
                f.listeners.push((port, proc_name));
            }
            // df's header, then one line (-P: never wrapped); the header is no number.
            "DISK" => {
                let cols: Vec<&str> = line.split_whitespace().collect();
                if let Some(kib) = cols.get(3).and_then(|c| c.parse().ok()) {
                    f.free_kib = kib;
                }
            }
            "CA" => {
                f.ca_pem.push_str(line);
                f.ca_pem.push('\n');
            }
            "STATE" => {
                f.state_marker.push_str(line);
                f.state_marker.push('\n');
            }
            "RESTORE" if !line.trim().is_empty() => f.restore_left.push(line.trim().to_string()),
            _ => {}
        }
    }
    if !ended {
        return Err("output ended early".into());
    }
    Ok(f)
}

/// A port a host needs.
pub struct RequiredPort {
    pub port: u16,
    pub what: &'static str,
    /// The process names that may already hold it (ours).
    pub ours: &'static [&'static str],
    /// The unit of ours that holds it while it runs.
    pub unit: &'static str,
}

/// Ports a host needs.
pub fn required_ports(inv: &Inventory, h: &Host) -> Vec<RequiredPort> {
    let mut v = Vec::new();
    let mut need = |port, what, ours, unit| {
        v.push(RequiredPort {
            port,
            what,
            ours,
            unit,
        })
    };
    if h.in_group(Group::Etcd) {
        need(
            inv.etcd.client_port,
            "etcd client",
            &["etcd"][..],
            "etcd.service",
        );
        need(
            inv.etcd.peer_port,
            "etcd peer",
            &["etcd"][..],
            "etcd.service",
        );
    }
    if h.in_group(Group::Patroni) {
        need(
            inv.postgres.port,
            "PostgreSQL",
            &["postgres"][..],
            "patroni.service",
        );
        need(
            inv.patroni.restapi_port,
            "Patroni REST API",
            &["patroni", "python3"][..],
            "patroni.service",
        );
    }
    if h.in_group(Group::Haproxy) {
        for (port, what) in [
            (inv.haproxy.primary_port, "HAProxy primary"),
            (inv.haproxy.replica_port, "HAProxy replicas"),
            (inv.haproxy.stats_port, "HAProxy stats"),
        ] {
            need(port, what, &["haproxy"][..], "haproxy.service");
        }
    }
    if inv.backs_up(h) {
        need(
            inv.backup.tls_port,
            "pgBackRest TLS server",
            &["pgbackrest"][..],
            "pgdeploy-pgbackrest.service",
        );
    }
    v
}

/// Pure: every problem of one host. `skew` is remote minus local clock, `rtt` the round trip.
pub fn problems(inv: &Inventory, h: &Host, f: &PreflightFacts, skew: f64, rtt: f64) -> Vec<String> {
    let mut p = Vec::new();
    if f.uid != Some(0) {
        p.push(format!(
            "commands do not run as root (uid {}): set `become: sudo` for this user, or connect as root",
            f.uid.map(|u| u.to_string()).unwrap_or_else(|| "unknown".into())
        ));
    }
    if let Some(problem) = release_problem(inv, f) {
        p.push(problem);
    }
    if !f.arch.is_empty() && f.arch != "amd64" {
        p.push(format!(
            "unsupported architecture {}: pgdeploy's bundles are amd64",
            f.arch
        ));
    }
    // The measured skew is only known within half the round trip.
    if skew.abs() - rtt / 2.0 > 0.5 {
        p.push(format!(
            "clock differs from this machine's by {:.2} s (limit 0.5 s): synchronise it (e.g. systemd-timesyncd or chrony)",
            skew
        ));
    }
    for RequiredPort {
        port, what, ours, ..
    } in required_ports(inv, h)
    {
        for (lp, name) in &f.listeners {
            if *lp == port && !ours.contains(&name.as_str()) {
                p.push(format!(
                    "port {port} ({what}) is already used by {}: stop that service or choose another port in the inventory",
                    if name.is_empty() { "another process" } else { name }
                ));
            }
        }
    }
    if !f.restore_left.is_empty() {
        p.push(format!(
            "an interrupted `pgdeploy restore` left {}: run the same restore again to finish it \
             (an apply now would start Patroni on data directories that the restore emptied)",
            f.restore_left.join(", ")
        ));
    }
    let need_kib: u64 = if h.in_group(Group::Patroni) {
        1024 * 1024
    } else {
        300 * 1024
    };
    if f.free_kib < need_kib {
        p.push(format!(
            "only {} MiB free under /var/lib, {} MiB needed",
            f.free_kib / 1024,
            need_kib / 1024
        ));
    }
    p
}

/// The release a host runs, when it is one pgdeploy supports.
pub fn host_platform(f: &PreflightFacts) -> Option<Platform> {
    (f.os_id == "debian")
        .then(|| Platform::from_version_id(&f.os_version))
        .flatten()
}

/// Pure: why a host's release does not fit the inventory, if it does not.
fn release_problem(inv: &Inventory, f: &PreflightFacts) -> Option<String> {
    let want = inv.platform;
    let runs = if f.os_pretty.is_empty() {
        format!("{} {}", f.os_id, f.os_version)
    } else {
        f.os_pretty.clone()
    };
    let chosen = if inv.platform_written {
        format!("`platform: {want}`")
    } else {
        format!("{want} (the default: `platform` is not set)")
    };
    match host_platform(f) {
        Some(have) if have == want => None,
        Some(have) => Some(format!(
            "runs {runs}, but the inventory says {chosen}: to deploy {} {}, or reinstall the host \
             with {}",
            have.describe(),
            if inv.platform_written {
                format!("write `platform: {have}` instead")
            } else {
                format!("add `platform: {have}` at the top of the inventory")
            },
            want.describe()
        )),
        None => Some(format!(
            "unsupported operating system {runs:?}: the inventory says {chosen}, and pgdeploy \
             supports {}",
            Platform::ALL
                .iter()
                .map(|p| p.describe())
                .collect::<Vec<_>>()
                .join(" and ")
        )),
    }
}

/// Pure: hosts that run different supported releases (one cluster runs one release for now).
pub fn mixed_releases(facts: &[(String, Option<Platform>)]) -> Option<String> {
    let mut seen: Vec<Platform> = facts.iter().filter_map(|(_, p)| *p).collect();
    seen.sort_by_key(|p| p.version_id());
    seen.dedup();
    if seen.len() < 2 {
        return None;
    }
    let groups: Vec<String> = seen
        .iter()
        .map(|p| {
            let names: Vec<&str> = facts
                .iter()
                .filter(|(_, q)| q == &Some(*p))
                .map(|(h, _)| h.as_str())
                .collect();
            format!("{} on {}", p.describe(), names.join(", "))
        })
        .collect();
    Some(format!(
        "the hosts run a mix of releases ({}): pgdeploy deploys one release per cluster; bring \
         every host to the same release first",
        groups.join("; ")
    ))
}

/// The fingerprints of the local state (None before the run's values are set, as in tests
/// that plan preflight alone).
fn local_state(ctx: &Ctx) -> Option<state::Local> {
    let vars = ctx.vars.read().ok()?;
    let host_vars = ctx.host_vars.read().ok()?;
    let ca_pem = host_vars
        .values()
        .find_map(|v| v["tls"]["ca_pem"].as_str())?;
    Some(state::Local {
        dir: ctx.inv.state_dir(),
        ca: state::cert_fingerprint(ca_pem)?,
        secrets: state::secrets_fingerprints(&vars["secrets"]),
    })
}

/// The preflight command for `host` (a Patroni member's lists what a restore left).
fn command_for(ctx: &Ctx, host: &str) -> String {
    let member = ctx
        .inv
        .group_hosts(Group::Patroni)
        .iter()
        .any(|h| h.name == host);
    let mut units: Vec<&str> = Vec::new();
    if let Ok(h) = ctx.host(host) {
        for r in required_ports(&ctx.inv, h) {
            if !units.contains(&r.unit) {
                units.push(r.unit);
            }
        }
    }
    preflight_command(
        member.then(|| ctx.inv.postgres.data_directory()).as_deref(),
        &units,
    )
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[async_trait]
impl Phase for Preflight {
    fn name(&self) -> &str {
        "preflight"
    }
    fn probe_extras(&self, ctx: &Ctx, host: &str) -> Vec<(String, String)> {
        vec![("preflight".into(), command_for(ctx, host))]
    }

    async fn plan(&self, ctx: &Ctx) -> Result<PhasePlan> {
        let local = local_state(ctx);
        let local = &local;
        let mut futs = Vec::new();
        for h in &ctx.hosts {
            futs.push(async move {
                ctx.observe(&h.name, "checking");
                let (out, (t0, t1)) = match ctx
                    .probed_extra(&h.name, "preflight", &command_for(ctx, &h.name))
                    .await
                {
                    Some(got) => got,
                    None => {
                        let s = ctx.session(&h.name)?;
                        let t0 = now();
                        let out = s.exec(&command_for(ctx, &h.name), None).await?;
                        (out.stdout_str(), (t0, now()))
                    }
                };
                let facts = parse(&out)
                    .map_err(|e| miette!("{}: cannot read preflight facts: {e}", h.name))?;
                let skew = facts.remote_time - (t0 + t1) / 2.0;
                let other_state = local.as_ref().and_then(|l| {
                    state::mismatch(
                        l,
                        &state::Deployed::parse(&facts.ca_pem, &facts.state_marker),
                    )
                });
                Ok::<_, miette::Report>((
                    h.name.clone(),
                    problems(&ctx.inv, h, &facts, skew, t1 - t0),
                    host_platform(&facts),
                    other_state,
                ))
            });
        }
        let all = bounded(ctx.forks, futs).await?;
        let other: Vec<String> = all
            .iter()
            .filter_map(|(h, _, _, o)| o.as_ref().map(|o| format!("  {h}: {o}")))
            .collect();
        if !other.is_empty() {
            return Err(miette!(
                help = format!(
                    "nothing was changed. The hosts were deployed from another copy of the state \
                     directory, {}. Bring that one here: on the workstation that has it, run \
                     `pgdeploy state export INVENTORY FILE`, copy FILE over a secure channel, then \
                     `pgdeploy state import INVENTORY FILE --replace` here (the state found here \
                     is kept aside). Applying from this state would replace the CA and the \
                     passwords of a running cluster",
                    ctx.inv.state_dir().display()
                ),
                "the local state does not match the cluster on {} host(s):\n{}",
                other.len(),
                other.join("\n")
            ));
        }
        let all: Vec<_> = all.into_iter().map(|(h, p, r, _)| (h, p, r)).collect();
        let releases: Vec<(String, Option<Platform>)> =
            all.iter().map(|(h, _, p)| (h.clone(), *p)).collect();
        let results: Vec<(String, Vec<String>)> =
            all.into_iter().map(|(h, probs, _)| (h, probs)).collect();
        let mut lines = Vec::new();
        if let Some(mix) = mixed_releases(&releases) {
            lines.push(format!("  {mix}"));
        }
        for (host, probs) in &results {
            for p in probs {
                lines.push(format!("  {host}: {p}"));
            }
        }
        if !lines.is_empty() {
            return Err(miette!(
                help = "nothing was changed; fix these and run again",
                "preflight failed on {} host(s):\n{}",
                results.iter().filter(|(_, p)| !p.is_empty()).count(),
                lines.join("\n")
            ));
        }
        Ok(PhasePlan {
            steps: Vec::new(),
            phase: "preflight".into(),
            hosts: results
                .into_iter()
                .map(|(host, _)| HostPlan {
                    host,
                    changes: vec![],
                })
                .collect(),
        })
    }
    async fn apply(&self, _ctx: &Ctx, _plan: &PhasePlan) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "@ID\n0\n@OS\nPRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID='13'\nID=debian\nHOME_URL=\"https://www.debian.org/\"\n@ARCH\namd64\n@TIME\n1764100000.250000000\n@PORTS\nLISTEN 0 128 0.0.0.0:22 0.0.0.0:* users:((\"sshd\",pid=50,fd=3))\nLISTEN 0 4096 10.231.0.11:2379 0.0.0.0:* users:((\"etcd\",pid=70,fd=7))\nLISTEN 0 4096 *:5000 *:* users:((\"nginx\",pid=80,fd=7))\n@DISK\nFilesystem 1024-blocks Used Available Capacity Mounted on\n/dev/vda 263174212 11000000 84000000 12% /\n@END\n";

    fn inv() -> Inventory {
        let text = "cluster: {name: t}\ngroups:\n  etcd: [{name: a, address: 10.0.0.1}]\n  patroni: [{name: a, address: 10.0.0.1}]\n  haproxy: [{name: a, address: 10.0.0.1}]\n";
        serde_saphyr::from_str(text).unwrap()
    }

    #[test]
    fn parses_preflight_output() {
        let f = parse(OUT).unwrap();
        assert_eq!(f.uid, Some(0));
        assert_eq!(f.os_id, "debian");
        assert_eq!(f.os_version, "13");
        assert_eq!(f.os_pretty, "Debian GNU/Linux 13 (trixie)");
        assert_eq!(os_release_value(r#""a \"b\" \\c""#), r#"a "b" \c"#);
        assert_eq!(f.arch, "amd64");
        assert_eq!(f.listeners.len(), 3);
        assert_eq!(f.listeners[1], (2379, "etcd".to_string()));
        assert_eq!(f.free_kib, 84000000);
        assert_eq!(f.ca_pem, "");
        // A host pgdeploy deployed: its CA and state marker are read too.
        let out = OUT.replace(
            "@END",
            "@CA\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n@STATE\nca_sha256 = AB\n@END",
        );
        let f = parse(&out).unwrap();
        assert!(f.ca_pem.starts_with("-----BEGIN CERTIFICATE-----\nAAAA\n"));
        assert_eq!(f.state_marker, "ca_sha256 = AB\n");
        assert_eq!(f.free_kib, 84000000);
    }

    #[test]
    fn what_an_interrupted_restore_left_is_listed_and_refused() {
        // The command's listing, run by a real shell over a real directory.
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("main");
        let data = data.to_str().unwrap();
        std::fs::create_dir_all(format!("{data}.pgdeploy-before-restore-20261207T010000")).unwrap();
        std::fs::write(crate::phases::restore::marker_path(data), "x").unwrap();
        let out = std::process::Command::new("sh")
            .args(["-c", &preflight_command(Some(data), &[])])
            .output()
            .unwrap();
        let f = parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
        assert_eq!(
            f.restore_left,
            [
                format!("{data}.pgdeploy-before-restore-20261207T010000"),
                format!("{data}.pgdeploy-restored")
            ]
        );
        let inv = inv();
        let p = problems(&inv, &inv.hosts()[0], &f, 0.0, 0.0);
        assert!(
            p.iter().any(|x| x.contains("run the same restore again")),
            "{p:?}"
        );
        // Nothing left: nothing listed (the unmatched glob is not a path).
        let clean = dir.path().join("other");
        let out = std::process::Command::new("sh")
            .args(["-c", &preflight_command(clean.to_str(), &[])])
            .output()
            .unwrap();
        let f = parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
        assert!(f.restore_left.is_empty(), "{:?}", f.restore_left);
    }

    /// Ports are listed unless the probe before saw every unit that holds them active.
    #[test]
    fn ports_are_not_listed_when_their_units_run() {
        let run = |active: Option<&str>| {
            let set = active
                .map(|a| format!("pgdeploy_active={};", crate::shell::sh_quote(a)))
                .unwrap_or_default();
            let cmd = preflight_command(None, &["etcd.service", "haproxy.service"]);
            let out = std::process::Command::new("sh")
                .args(["-c", &format!("{set}{cmd}")])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert!(run(Some(" etcd.service haproxy.service ")).contains("@VOUCHED"));
        assert!(!run(Some(" haproxy.service ")).contains("@VOUCHED"));
        assert!(!run(Some(" etcd.service.d haproxy.service ")).contains("@VOUCHED"));
        // Not probed before (the command alone): listed.
        assert!(!run(None).contains("@VOUCHED"));
        let f = parse(&run(Some(" etcd.service haproxy.service "))).unwrap();
        assert!(f.listeners.is_empty());
    }

    #[test]
    fn our_own_listeners_are_fine_others_are_not() {
        let inv = inv();
        let h = &inv.hosts()[0];
        let f = parse(OUT).unwrap();
        let p = problems(&inv, h, &f, 0.01, 0.002);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("port 5000") && p[0].contains("nginx"),
            "{p:?}"
        );
    }

    #[test]
    fn wrong_os_user_and_clock_are_all_reported() {
        let inv = inv();
        let h = &inv.hosts()[0];
        let mut f = parse(OUT).unwrap();
        f.listeners.clear();
        f.uid = Some(1000);
        f.os_id = "ubuntu".into();
        f.os_version = "24.04".into();
        f.os_pretty = "Ubuntu 24.04".into();
        let p = problems(&inv, h, &f, 2.0, 0.01);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p.iter().any(|x| x.contains("become: sudo")));
        assert!(p.iter().any(|x| x.contains("Ubuntu 24.04")));
        assert!(p.iter().any(|x| x.contains("clock")));
    }

    #[test]
    fn a_release_other_than_the_inventorys_is_refused_with_the_line_to_add() {
        let inv = inv();
        let h = &inv.hosts()[0];
        let mut f = parse(OUT).unwrap();
        f.listeners.clear();
        f.os_version = "12".into();
        f.os_pretty = "Debian GNU/Linux 12 (bookworm)".into();
        // The test inventory sets no platform: Debian 13 is the default.
        let p = problems(&inv, h, &f, 0.0, 0.0);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("Debian GNU/Linux 12 (bookworm)")
                && p[0].contains("debian-13 (the default")
                && p[0].contains("add `platform: debian-12`"),
            "{p:?}"
        );
        f.os_version = "13".into();
        assert!(problems(&inv, h, &f, 0.0, 0.0).is_empty());
    }

    #[test]
    fn mixed_releases_are_refused() {
        let facts = vec![
            ("a".to_string(), Some(Platform::Debian12)),
            ("b".to_string(), Some(Platform::Debian13)),
            ("c".to_string(), Some(Platform::Debian13)),
        ];
        let m = mixed_releases(&facts).unwrap();
        assert!(
            m.contains("Debian 12 (bookworm) on a") && m.contains("Debian 13 (trixie) on b, c"),
            "{m}"
        );
        assert!(mixed_releases(&facts[1..]).is_none());
    }

    #[test]
    fn truncated_output_is_an_error() {
        assert!(parse("@ID\n0\n").is_err());
    }
}
