//! Rolling minor upgrades of PostgreSQL with no acknowledged write lost.
//!
//! Replicas first, one at a time: tag it out of failover and out of HAProxy's replica pool
//! (`nofailover`, `noloadbalance`), install the new packages, restart PostgreSQL through
//! Patroni, wait until it streams again with lag under the bound, restore its tags. Then a
//! planned switchover to the upgraded replica with the least lag, and the old leader is
//! upgraded like a replica. Every step is re-derived from the hosts, so running the same
//! command again after a failure continues where it stopped.

use super::etcd::wait_until;
use super::patroni::{members, Member, CONFIG};
use super::verify::local_sql;
use crate::engine::change::{Change, UnitAction};
use crate::engine::exec::{apply_changes, install_packages};
use crate::engine::phase::desired_for_host;
use crate::engine::plan::{plan_resources, DesiredPackage};
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

async fn installed_versions(
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

async fn running_minor(ctx: &Ctx, host: &str) -> Result<Option<String>> {
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
                installed_versions(ctx, &h.name, &names),
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

/// Pure: the changes `check` shows for an upgrade.
pub fn plan_changes(states: &[MemberState], want_minor: &str) -> Vec<(String, Vec<Change>)> {
    let seq = order(states, want_minor);
    let mut out = Vec::new();
    for (i, name) in seq.iter().enumerate() {
        let Some(st) = states.iter().find(|s| &s.name == name) else {
            continue;
        };
        let mut ch = Vec::new();
        if st.leader {
            ch.push(Change::Command {
                command: "switchover to the upgraded replica with the least lag".into(),
                reason: "the leader is upgraded last, as a replica".into(),
            });
        }
        ch.push(Change::Command {
            command: "tag nofailover + noloadbalance, reload Patroni".into(),
            reason: format!(
                "step {} of {}: keep {name} out of failover and the replica pool while it restarts",
                i + 1,
                seq.len()
            ),
        });
        for p in &st.packages {
            let from = st
                .installed
                .iter()
                .find(|(n, _)| n == &p.name)
                .and_then(|(_, v)| v.clone());
            ch.push(Change::Package {
                name: p.name.clone(),
                from,
                to: p.version.clone().unwrap_or_default(),
            });
        }
        ch.push(Change::Unit {
            unit: format!("postgresql (member {name})"),
            action: UnitAction::Restart,
            reason: format!(
                "runs {}, the inventory pins {want_minor}; restarted through Patroni, then waits until it streams",
                st.running_minor.as_deref().unwrap_or("an unknown version")
            ),
        });
        ch.push(Change::Command {
            command: "restore tags, reload Patroni".into(),
            reason: "back into failover and the replica pool".into(),
        });
        out.push((name.clone(), ch));
    }
    out
}

async fn set_tags(ctx: &Ctx, host: &str, on: bool) -> Result<()> {
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
    apply_changes(s, &changes).await?;
    ctx.step(
        host,
        &format!("! reload patroni.service (tags nofailover/noloadbalance = {on})"),
        async {
            s.run("systemctl reload patroni").await?;
            Ok(())
        },
    )
    .await?;
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

async fn install(ctx: &Ctx, host: &str, pkgs: &[DesiredPackage]) -> Result<()> {
    if pkgs.is_empty() {
        return Ok(());
    }
    let s = ctx.session(host)?;
    let versions: Vec<(String, String)> = pkgs
        .iter()
        .map(|p| (p.name.clone(), p.version.clone().unwrap_or_default()))
        .collect();
    let refs: Vec<(&String, &String)> = versions.iter().map(|(n, v)| (n, v)).collect();
    let opts = super::packages::apt_source_opts(ctx.inv.packages.source);
    install_packages(s, &refs, &opts, false).await?;
    let names: Vec<String> = pkgs.iter().map(|p| sh_quote(&p.name)).collect();
    ctx.step(
        host,
        &format!("~ hold packages {}", names.join(" ")),
        async {
            s.run(&format!("apt-mark hold {} >/dev/null", names.join(" ")))
                .await?;
            Ok(())
        },
    )
    .await
}

fn lag_of(ms: &[Member], name: &str) -> Option<f64> {
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

/// Run the rolling upgrade (no-op when every member already runs the pinned minor).
pub async fn run(ctx: &Ctx, bounds: &Bounds) -> Result<()> {
    let want = ctx.inv.postgres.version.clone();
    let st = states(ctx).await?;
    let seq = order(&st, &want);
    if seq.is_empty() {
        return Ok(());
    }
    prechecks(ctx, bounds).await?;
    for name in &seq {
        let result = upgrade_member(ctx, name, &want, bounds).await;
        if let Err(e) = result {
            let summary = match members(ctx).await {
                Ok(Some(ms)) => ms
                    .iter()
                    .map(|m| {
                        format!(
                            "  {}: {} {}{}",
                            m.name,
                            m.role,
                            m.state,
                            if m.pending_restart {
                                " (pending restart)"
                            } else {
                                ""
                            }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => "  (Patroni does not answer)".into(),
            };
            return Err(miette!(
                help = "the cluster keeps serving writes; running the same command again continues from here",
                "the rolling upgrade stopped at {name}: {e:?}\nmembers now:\n{summary}"
            ));
        }
    }
    // Every member runs the pinned minor.
    for h in ctx.inv.group_hosts(Group::Patroni) {
        let v = local_sql(ctx.session(&h.name)?, "show server_version").await?;
        if !v.trim().starts_with(&want) {
            return Err(miette!(
                "{}: runs PostgreSQL {} after the upgrade, not {want}",
                h.name,
                v.trim()
            ));
        }
    }
    Ok(())
}

async fn upgrade_member(ctx: &Ctx, name: &str, want: &str, bounds: &Bounds) -> Result<()> {
    let ms = members(ctx)
        .await?
        .ok_or_else(|| miette!("Patroni does not answer"))?;
    let is_leader = ms.iter().any(|m| m.name == name && m.is_leader());
    if is_leader {
        ctx.step(
            name,
            &format!("! switchover from {name} to the upgraded replica with the least lag"),
            switchover_from(ctx, name, want),
        )
        .await?;
    }
    ctx.observe(name, "upgrade: tagging nofailover/noloadbalance");
    set_tags(ctx, name, true).await?;
    let st = states(ctx).await?;
    let pkgs = st
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.packages.clone())
        .unwrap_or_default();
    ctx.observe(name, "upgrade: installing packages");
    install(ctx, name, &pkgs).await?;
    ctx.observe(name, "upgrade: restarting PostgreSQL through Patroni");
    let s = ctx.session(name)?;
    ctx.step(
        name,
        &format!("! restart PostgreSQL on {name} through Patroni (upgrade to {want})"),
        async {
            let out = s
                .exec(
                    &format!(
                        "patronictl -c {CONFIG} restart {} {} --force",
                        sh_quote(&ctx.inv.cluster.name),
                        sh_quote(name)
                    ),
                    None,
                )
                .await?;
            if !out.ok() {
                return Err(miette!(
                    "{name}: restart through Patroni failed: {}",
                    out.stderr_str().trim()
                ));
            }
            Ok(())
        },
    )
    .await?;
    ctx.observe(name, "upgrade: waiting until it streams again");
    let max_lag_mb = bounds.max_lag_bytes as f64 / 1_048_576.0;
    wait_until(
        &format!("{name} runs {want} and streams with lag under the bound"),
        Duration::from_secs(300),
        || async {
            let Some(ms) = members(ctx).await? else {
                return Ok(false);
            };
            let Some(leader) = ms.iter().find(|m| m.is_leader()).map(|m| m.name.clone()) else {
                return Ok(false);
            };
            let running = running_minor(ctx, name).await?;
            let streams = super::patroni::streaming(ctx, &leader)
                .await?
                .contains(name);
            Ok(running.as_deref() == Some(want)
                && streams
                && lag_of(&ms, name).unwrap_or(0.0) <= max_lag_mb)
        },
    )
    .await?;
    ctx.observe(name, "upgrade: restoring tags");
    set_tags(ctx, name, false).await
}

/// Planned switchover from `leader` to the upgraded replica with the least lag.
async fn switchover_from(ctx: &Ctx, leader: &str, want: &str) -> Result<()> {
    let ms = members(ctx)
        .await?
        .ok_or_else(|| miette!("Patroni does not answer"))?;
    let mut candidates = Vec::new();
    for m in ms.iter().filter(|m| !m.is_leader() && m.is_running()) {
        if running_minor(ctx, &m.name).await?.as_deref() == Some(want) {
            candidates.push((m.lag_mb.unwrap_or(0.0), m.name.clone()));
        }
    }
    candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
    let Some((_, cand)) = candidates.first().cloned() else {
        return Err(miette!("no upgraded, running replica to switch over to"));
    };
    ctx.observe(leader, &format!("upgrade: switchover to {cand}"));
    let s = ctx.session(leader)?;
    let out = s
        .exec(
            &format!(
                "patronictl -c {CONFIG} switchover {} --leader {} --candidate {} --force",
                sh_quote(&ctx.inv.cluster.name),
                sh_quote(leader),
                sh_quote(&cand)
            ),
            None,
        )
        .await?;
    if !out.ok() {
        return Err(miette!(
            "switchover from {leader} to {cand} failed: {}{}",
            out.stdout_str(),
            out.stderr_str()
        ));
    }
    wait_until(
        &format!("{cand} leads and {leader} runs as a replica"),
        Duration::from_secs(120),
        || async {
            Ok(members(ctx)
                .await?
                .map(|ms| {
                    ms.iter()
                        .any(|m| m.name == cand && m.is_leader() && m.is_running())
                        && ms
                            .iter()
                            .any(|m| m.name == leader && !m.is_leader() && m.is_running())
                })
                .unwrap_or(false))
        },
    )
    .await
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

    #[test]
    fn replicas_first_leader_last_upgraded_skipped() {
        let s = vec![
            st("pg1", true, "15.18", true),
            st("pg2", false, "15.18", true),
            st("pg3", false, "15.20", false),
        ];
        assert_eq!(order(&s, "15.20"), vec!["pg2", "pg1"]);
        let plan = plan_changes(&s, "15.20");
        assert_eq!(plan.len(), 2);
        assert!(
            matches!(&plan[1].1[0], Change::Command { command, .. } if command.contains("switchover"))
        );
        assert!(plan[0].1.iter().any(|c| matches!(c, Change::Package { from: Some(f), to, .. } if f == "15.18-0+deb12u1" && to == "15.20-0+deb12u1")));
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
