//! Rolling minor upgrades of PostgreSQL with no acknowledged write lost.
//!
//! Replicas first, one at a time: tag it out of failover and out of HAProxy's replica pool
//! (`nofailover`, `noloadbalance`), install the new packages, restart PostgreSQL through
//! Patroni, wait until it streams again with lag under the bound, restore its tags. Then a
//! planned switchover to the upgraded replica with the least lag, and the old leader is
//! upgraded like a replica. The plan holds every one of these steps (`check` and
//! `upgrade --check` list them); a failed run leaves the hosts in a state from which the same
//! command plans the steps that are left.

use super::etcd::wait_until;
use super::patroni::{members, Member, CONFIG};
use super::verify::local_sql;
use crate::engine::change::Change;
use crate::engine::exec::apply_one;
use crate::engine::phase::desired_for_host;
use crate::engine::plan::{plan_resources, DesiredPackage};
use crate::engine::step::{Gate, PackageChange, PlannedStep, Step};
use crate::engine::Ctx;
use crate::inventory::Group;
use crate::shell::sh_quote;
use miette::{miette, Result};
use serde_json::{json, Value};
use std::time::Duration;

/// Bounds of the pre-checks.
#[derive(Debug, Clone)]
pub struct Bounds {
    pub max_lag_bytes: u64,
    pub max_xact_age_secs: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_lag_bytes: 10 * 1024 * 1024,
            max_xact_age_secs: 300,
        }
    }
}

/// Whether a package belongs to the PostgreSQL server and is upgraded member by member.
pub fn is_postgres_package(name: &str) -> bool {
    name.starts_with("postgresql-") || name == "libpq5"
}

/// "15.20" from a server_version_num like 150020.
pub fn minor_of_version_num(n: i64) -> String {
    format!("{}.{}", n / 10000, n % 10000)
}

/// One member's upgrade state.
#[derive(Debug, Clone)]
pub struct MemberState {
    pub name: String,
    pub leader: bool,
    /// Postgres packages whose installed version differs from the desired one.
    pub packages: Vec<DesiredPackage>,
    pub installed: Vec<(String, Option<String>)>,
    /// The running server's minor, e.g. "15.18".
    pub running_minor: Option<String>,
}

impl MemberState {
    pub fn needs_upgrade(&self, want_minor: &str) -> bool {
        // A member whose running version cannot be read right now (restarting) is judged by
        // its packages alone.
        !self.packages.is_empty()
            || matches!(self.running_minor.as_deref(), Some(r) if r != want_minor)
    }
}

pub(crate) async fn installed_versions(
    ctx: &Ctx,
    host: &str,
    names: &[String],
) -> Result<Vec<(String, Option<String>)>> {
    let s = ctx.session(host)?;
    let q: Vec<String> = names.iter().map(|n| sh_quote(n)).collect();
    let out = s
        .exec(
            &format!("dpkg-query -W -f='${{Package}} ${{Version}} ${{db:Status-Abbrev}}\\n' {} 2>/dev/null", q.join(" ")),
            None,
        )
        .await?;
    let text = out.stdout_str();
    Ok(names
        .iter()
        .map(|n| {
            let v = text.lines().find_map(|l| {
                let p: Vec<&str> = l.split_whitespace().collect();
                (p.len() >= 3 && p[0] == n && (p[2] == "ii" || p[2] == "hi"))
                    .then(|| p[1].to_string())
            });
            (n.clone(), v)
        })
        .collect())
}

/// Like [`installed_versions`]; while phases are planned together, read from the host's
/// shared probe, which holds every role's packages (no round trip of its own).
async fn installed_now(
    ctx: &Ctx,
    host: &str,
    names: &[String],
) -> Result<Vec<(String, Option<String>)>> {
    if ctx.planning_facts(host).is_none() {
        return installed_versions(ctx, host, names).await;
    }
    let d = crate::engine::plan::Desired {
        packages: names
            .iter()
            .map(|n| DesiredPackage {
                name: n.clone(),
                version: None,
                hold: false,
            })
            .collect(),
        ..Default::default()
    };
    let f = crate::engine::phase::probe(ctx, host, &d).await?;
    Ok(names
        .iter()
        .map(|n| (n.clone(), f.packages.get(n).cloned()))
        .collect())
}

pub(crate) async fn running_minor(ctx: &Ctx, host: &str) -> Result<Option<String>> {
    let h = ctx.host(host)?;
    let out = ctx
        .https_get(host, &h.address, ctx.inv.patroni.restapi_port, "/patroni")
        .await?;
    if !out.ok() {
        return Ok(None);
    }
    let v: Value = serde_json::from_str(&out.stdout_str()).unwrap_or(Value::Null);
    Ok(v["server_version"].as_i64().map(minor_of_version_num))
}

/// The upgrade state of every Patroni member (empty when Patroni is not running yet).
pub async fn states(ctx: &Ctx) -> Result<Vec<MemberState>> {
    let Some(ms) = members(ctx).await? else {
        return Ok(vec![]);
    };
    let mut futs = Vec::new();
    for h in ctx.inv.group_hosts(Group::Patroni) {
        let Some(m) = ms.iter().find(|m| m.name == h.name) else {
            continue;
        };
        let leader = m.is_leader();
        futs.push(async move {
            let desired = desired_for_host(ctx, &["patroni".to_string()], &h.name)?;
            let want: Vec<DesiredPackage> = desired
                .packages
                .into_iter()
                .filter(|p| is_postgres_package(&p.name) && p.version.is_some())
                .collect();
            let names: Vec<String> = want.iter().map(|p| p.name.clone()).collect();
            let (installed, running) = tokio::join!(
                installed_now(ctx, &h.name, &names),
                running_minor(ctx, &h.name)
            );
            let installed = installed?;
            let differing: Vec<DesiredPackage> = want
                .into_iter()
                .filter(|p| {
                    installed
                        .iter()
                        .any(|(n, v)| n == &p.name && v.as_ref() != p.version.as_ref())
                })
                .collect();
            Ok::<_, miette::Report>(MemberState {
                name: h.name.clone(),
                leader,
                packages: differing,
                installed,
                running_minor: running?,
            })
        });
    }
    crate::engine::bounded(ctx.forks, futs).await
}

/// Pure: the order of a rolling upgrade: replicas first (inventory order), the leader last.
pub fn order(states: &[MemberState], want_minor: &str) -> Vec<String> {
    let mut v: Vec<&MemberState> = states
        .iter()
        .filter(|s| s.needs_upgrade(want_minor))
        .collect();
    v.sort_by_key(|s| s.leader);
    v.into_iter().map(|s| s.name.clone()).collect()
}

/// Pure: the steps of a rolling minor upgrade to `want_minor`, as data: a fitness gate, then
/// member by member (replicas first, the leader last, after a switchover to an upgraded
/// replica): tag it out of failover and the replica pool, install the pinned packages,
/// restart it through Patroni, wait until it runs the new minor and streams, restore its tags.
pub fn plan_steps(
    states: &[MemberState],
    ms: &[Member],
    want_minor: &str,
    bounds: &Bounds,
) -> Result<Vec<PlannedStep>> {
    let seq = order(states, want_minor);
    let Some(first) = seq.first() else {
        return Ok(Vec::new());
    };
    let mut out = vec![PlannedStep::new(
        first,
        Step::UpgradePrechecks {
            max_lag_bytes: bounds.max_lag_bytes,
            max_xact_age_secs: bounds.max_xact_age_secs,
        },
    )];
    for (i, name) in seq.iter().enumerate() {
        let Some(st) = states.iter().find(|s| &s.name == name) else {
            continue;
        };
        if st.leader {
            // The upgraded (or to be upgraded) running replica with the least lag now.
            let mut cands: Vec<(f64, &str)> = ms
                .iter()
                .filter(|m| !m.is_leader() && m.is_running())
                .filter(|m| {
                    seq.contains(&m.name)
                        || states.iter().any(|s| {
                            s.name == m.name && s.running_minor.as_deref() == Some(want_minor)
                        })
                })
                .map(|m| (m.lag_mb.unwrap_or(0.0), m.name.as_str()))
                .collect();
            cands.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
            let Some((_, to)) = cands.first() else {
                return Err(miette!(
                    help = "add a replica (or start the stopped one) and run the command again; nothing was changed",
                    "the rolling upgrade needs a running replica to switch over to before {name}, the leader, restarts"
                ));
            };
            out.push(PlannedStep::new(
                name,
                Step::Switchover {
                    from: name.clone(),
                    to: to.to_string(),
                },
            ));
        }
        out.push(PlannedStep::new(
            name,
            Step::SetTags {
                member: name.clone(),
                on: true,
            },
        ));
        if !st.packages.is_empty() {
            out.push(PlannedStep::new(
                name,
                Step::Install {
                    member: name.clone(),
                    packages: st
                        .packages
                        .iter()
                        .map(|p| PackageChange {
                            name: p.name.clone(),
                            from: st
                                .installed
                                .iter()
                                .find(|(n, _)| n == &p.name)
                                .and_then(|(_, v)| v.clone()),
                            to: p.version.clone().unwrap_or_default(),
                        })
                        .collect(),
                },
            ));
        }
        out.push(PlannedStep::new(
            name,
            Step::RestartMember {
                member: name.clone(),
                pending: false,
                reason: format!(
                    "upgrade {} of {}: runs {}, the inventory pins {want_minor}",
                    i + 1,
                    seq.len(),
                    st.running_minor.as_deref().unwrap_or("an unknown version")
                ),
            },
        ));
        out.push(PlannedStep::new(
            name,
            Step::Wait {
                gate: Gate::Streams {
                    member: name.clone(),
                    minor: want_minor.to_string(),
                    max_lag_bytes: bounds.max_lag_bytes,
                },
            },
        ));
        out.push(PlannedStep::new(
            name,
            Step::SetTags {
                member: name.clone(),
                on: false,
            },
        ));
    }
    Ok(out)
}

pub(crate) async fn set_tags(ctx: &Ctx, host: &str, on: bool) -> Result<()> {
    let tags = if on {
        json!({"nofailover": true, "noloadbalance": true})
    } else {
        Value::Null
    };
    ctx.set_host_var(host, "patroni_tags", tags);
    let desired = desired_for_host(ctx, &["patroni".to_string()], host)?;
    let cfg: Vec<_> = desired
        .files
        .into_iter()
        .filter(|f| f.path == CONFIG)
        .collect();
    let d = crate::engine::plan::Desired {
        files: cfg,
        ..Default::default()
    };
    let facts = crate::engine::phase::probe(ctx, host, &d).await?;
    let mut changes = plan_resources(&d, &facts, &ctx.secret_values);
    for c in changes.iter_mut() {
        if let Change::File { notify, .. } = c {
            notify.clear(); // reloaded below, not restarted
        }
    }
    let s = ctx.session(host)?;
    // The file and the reload are part of the SetTags step, which the journal records once.
    for c in &changes {
        apply_one(s, c).await?;
    }
    s.run("systemctl reload patroni").await?;
    let h = ctx.host(host)?;
    let port = ctx.inv.patroni.restapi_port;
    wait_until(
        &format!("Patroni on {host} reports nofailover={on}"),
        Duration::from_secs(60),
        || async {
            let out = ctx.https_get(host, &h.address, port, "/patroni").await?;
            let v: Value = serde_json::from_str(&out.stdout_str()).unwrap_or(Value::Null);
            Ok(out.ok() && v["tags"]["nofailover"].as_bool().unwrap_or(false) == on)
        },
    )
    .await
}

pub(crate) fn lag_of(ms: &[Member], name: &str) -> Option<f64> {
    ms.iter().find(|m| m.name == name).and_then(|m| m.lag_mb)
}

/// Refuse to start unless the cluster is healthy enough to lose one member at a time.
pub async fn prechecks(ctx: &Ctx, bounds: &Bounds) -> Result<()> {
    let mut problems = Vec::new();
    let ms = members(ctx)
        .await?
        .ok_or_else(|| miette!("Patroni does not answer"))?;
    let want = ctx.inv.group_hosts(Group::Patroni).len();
    if ms.len() < want {
        problems.push(format!(
            "only {} of {want} Patroni members are known to the cluster",
            ms.len()
        ));
    }
    let leader = ms.iter().find(|m| m.is_leader()).map(|m| m.name.clone());
    for m in &ms {
        if !m.is_running() {
            problems.push(format!("member {} is {}", m.name, m.state));
        }
        if !m.is_leader() {
            if let Some(l) = m.lag_mb {
                if l * 1_048_576.0 > bounds.max_lag_bytes as f64 {
                    problems.push(format!(
                        "member {} lags {:.1} MB behind (bound {} MB)",
                        m.name,
                        l,
                        bounds.max_lag_bytes / 1_048_576
                    ));
                }
            }
        }
    }
    match &leader {
        None => problems.push("the cluster has no leader".into()),
        Some(l) => {
            let s = ctx.session(l)?;
            let streaming = super::patroni::streaming(ctx, l).await?;
            for m in ms.iter().filter(|m| !m.is_leader()) {
                if !streaming.contains(&m.name) {
                    problems.push(format!("member {} does not stream from the leader", m.name));
                }
            }
            let age = local_sql(
                ctx,
                s,
                "select coalesce(max(extract(epoch from now() - xact_start))::bigint, 0) from pg_stat_activity where xact_start is not null and pid <> pg_backend_pid()",
            )
            .await?;
            let age: u64 = age.trim().parse().unwrap_or(0);
            if age > bounds.max_xact_age_secs {
                problems.push(format!(
                    "a transaction on the leader is {age} s old (bound {} s): finish or cancel it first",
                    bounds.max_xact_age_secs
                ));
            }
        }
    }
    if let Err(e) = super::etcd::check_cluster_healthy(ctx).await {
        problems.push(format!("etcd is not healthy: {e}"));
    }
    if !problems.is_empty() {
        return Err(miette!(
            help = "nothing was changed; fix these and run the same command again",
            "the rolling upgrade cannot start:\n{}",
            problems
                .iter()
                .map(|p| format!("  - {p}"))
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(name: &str, leader: bool, minor: &str, pkgs: bool) -> MemberState {
        MemberState {
            name: name.into(),
            leader,
            packages: if pkgs {
                vec![DesiredPackage {
                    name: "postgresql-15".into(),
                    version: Some("15.20-0+deb12u1".into()),
                    hold: true,
                }]
            } else {
                vec![]
            },
            installed: vec![("postgresql-15".into(), Some("15.18-0+deb12u1".into()))],
            running_minor: Some(minor.into()),
        }
    }

    fn member(name: &str, leader: bool, lag: f64) -> Member {
        Member {
            name: name.into(),
            host: String::new(),
            role: if leader { "Leader" } else { "Replica" }.into(),
            state: if leader { "running" } else { "streaming" }.into(),
            timeline: Some(1),
            lag_mb: Some(lag),
            pending_restart: false,
        }
    }

    fn line(steps: &[PlannedStep]) -> Vec<String> {
        steps
            .iter()
            .map(|s| format!("{}: {}", s.host, s.step.summary()))
            .collect()
    }

    #[test]
    fn replicas_first_then_switchover_then_the_old_leader() {
        let s = vec![
            st("pg1", true, "15.18", true),
            st("pg2", false, "15.18", true),
            st("pg3", false, "15.20", false),
        ];
        assert_eq!(order(&s, "15.20"), vec!["pg2", "pg1"]);
        // pg3 already runs 15.20 but lags more than pg2, which will be upgraded first.
        let ms = vec![
            member("pg1", true, 0.0),
            member("pg2", false, 0.0),
            member("pg3", false, 3.0),
        ];
        let steps = plan_steps(&s, &ms, "15.20", &Bounds::default()).unwrap();
        let got = line(&steps);
        assert_eq!(got.len(), 12, "{got:#?}");
        assert!(
            got[0].starts_with("pg2: ? gate: fit for a rolling upgrade"),
            "{got:#?}"
        );
        assert_eq!(
            got[1],
            "pg2: ~ tags of pg2: nofailover, noloadbalance = true (config, reload Patroni)"
        );
        assert_eq!(
            got[2],
            "pg2: ~ install and hold on pg2: postgresql-15 15.18-0+deb12u1 -> 15.20-0+deb12u1"
        );
        assert!(
            got[3].starts_with(
                "pg2: ! restart PostgreSQL of pg2 through Patroni (upgrade 1 of 2: runs 15.18"
            ),
            "{}",
            got[3]
        );
        assert_eq!(
            got[4],
            "pg2: ? wait: pg2 runs 15.20 and streams with lag under 10 MB"
        );
        assert_eq!(
            got[5],
            "pg2: ~ tags of pg2: nofailover, noloadbalance = false (config, reload Patroni)"
        );
        assert_eq!(got[6], "pg1: ! switchover from pg1 to pg2");
        assert_eq!(
            got[7],
            "pg1: ~ tags of pg1: nofailover, noloadbalance = true (config, reload Patroni)"
        );
        assert!(got[9].contains("upgrade 2 of 2"), "{}", got[9]);
        assert!(steps
            .iter()
            .all(|s| !matches!(&s.step, Step::Switchover { to, .. } if to == "pg3")));
    }

    #[test]
    fn a_lone_leader_cannot_be_upgraded_without_a_replica() {
        let s = vec![st("pg1", true, "15.18", true)];
        let e = plan_steps(&s, &[member("pg1", true, 0.0)], "15.20", &Bounds::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs a running replica"), "{e}");
        assert!(plan_steps(&s, &[], "15.18", &Bounds::default()).is_err());
        let done = vec![st("pg1", true, "15.20", false)];
        assert!(plan_steps(
            &done,
            &[member("pg1", true, 0.0)],
            "15.20",
            &Bounds::default()
        )
        .unwrap()
        .is_empty());
    }

    #[test]
    fn installed_but_not_restarted_still_needs_the_restart() {
        let s = vec![st("pg2", false, "15.18", false)];
        assert_eq!(order(&s, "15.20"), vec!["pg2"]);
    }

    #[test]
    fn version_num() {
        assert_eq!(minor_of_version_num(150020), "15.20");
        assert_eq!(minor_of_version_num(160004), "16.4");
    }
}
