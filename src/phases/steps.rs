//! Running orchestration steps (see [`crate::engine::step`]): exactly the steps a plan holds,
//! in order. Before each step its precondition is checked against the cluster as it is now;
//! if the world moved since the plan, the run stops with an error that says what changed,
//! instead of doing something else. Every step that runs is recorded in the journal with its
//! result and duration; a deferred step records the concrete steps it became.

use super::etcd::wait_until;
use super::patroni::{
    cluster_json, dcs_diff, dcs_patch, desired_dcs, members, patronictl, same_value, streaming,
    wait_all_looped_since, wait_converged, wait_member_running, Member,
};
use super::upgrade::{installed_versions, lag_of, prechecks, running_minor, set_tags, Bounds};
use crate::engine::exec::{install, unit_action};
use crate::engine::phase::{apply_host_plans, PhasePlan};
use crate::engine::step::{Expand, Gate, KeyChange, PlannedStep, Step};
use crate::engine::Ctx;
use crate::shell::sh_quote;
use miette::{miette, Result};
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// How long a member may take to run again after a restart (or to join).
const MEMBER_DEADLINE: Duration = Duration::from_secs(180);
/// How long the whole cluster may take to converge.
const CLUSTER_DEADLINE: Duration = Duration::from_secs(300);
/// Restart rounds a deferred pending-restart step may take (a replica can ask again after the
/// leader restarted with a lower value of max_connections and the like).
const RESTART_ROUNDS: usize = 4;

/// Apply a phase plan whose cross-host work is steps: the hosts' own changes (files,
/// directories, sysctls: their unit actions were moved into the steps) in parallel, then the
/// steps in order.
pub async fn apply_plan(ctx: &Ctx, plan: &PhasePlan) -> Result<()> {
    apply_host_plans(ctx, &plan.hosts).await?;
    run_all(ctx, &plan.steps).await
}

/// Run `steps` in order; stop at the first failure, with the members' state in the error.
pub async fn run_all(ctx: &Ctx, steps: &[PlannedStep]) -> Result<()> {
    for s in steps {
        if let Err(e) = run(ctx, s).await {
            return Err(miette!(
                help = "steps before this one are done; run `pgdeploy check` to see what is left, and `pgdeploy apply` again to continue",
                "step `{}` on {} failed: {e:?}\nmembers now:\n{}",
                s.step.summary(),
                s.host,
                members_now(ctx).await
            ));
        }
    }
    Ok(())
}

/// Run one step: its precondition, then the step, recorded. Deferred steps expand here.
pub fn run<'a>(
    ctx: &'a Ctx,
    s: &'a PlannedStep,
) -> Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>> {
    Box::pin(async move {
        if let Step::Deferred { expand, .. } = &s.step {
            let mut round = 0;
            loop {
                let concrete = expansion(ctx, *expand).await?;
                if concrete.is_empty() {
                    return Ok(());
                }
                for c in &concrete {
                    run(ctx, c).await?;
                }
                round += 1;
                if *expand != Expand::PendingRestarts || round >= RESTART_ROUNDS {
                    return Ok(());
                }
            }
        }
        ctx.observe(&s.host, &s.step.summary());
        let what = ctx.redact(&s.step.summary());
        ctx.step(&s.host, &what, execute(ctx, s)).await
    })
}

async fn members_now(ctx: &Ctx) -> String {
    match members(ctx).await {
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
    }
}

pub(crate) fn moved(what: String) -> miette::Report {
    miette!(
        help =
            "the cluster changed since the plan was made; run `pgdeploy check` to see the new plan",
        "{what}"
    )
}

async fn cluster(ctx: &Ctx) -> Result<Vec<Member>> {
    members(ctx)
        .await?
        .ok_or_else(|| miette!("Patroni does not answer on any member"))
}

/// Check the step's precondition, then do it.
async fn execute(ctx: &Ctx, s: &PlannedStep) -> Result<()> {
    let host = s.host.as_str();
    match &s.step {
        Step::Unit { unit, action, .. } => unit_action(ctx.session(host)?, unit, *action).await,
        Step::DcsPatch { patch, changes } => dcs_patch_step(ctx, host, patch, changes).await,
        Step::RestartMember {
            member, pending, ..
        } => {
            let ms = cluster(ctx).await?;
            let Some(m) = ms.iter().find(|m| &m.name == member) else {
                return Err(moved(format!(
                    "member {member} is no longer in the cluster"
                )));
            };
            if *pending && !m.pending_restart {
                return Ok(()); // restarted meanwhile: nothing left to do
            }
            let out = ctx
                .session(host)?
                .exec(
                    &patronictl(&format!(
                        "restart {} {} {}--force",
                        sh_quote(&ctx.inv.cluster.name),
                        sh_quote(member),
                        if *pending { "--pending " } else { "" }
                    )),
                    None,
                )
                .await?;
            if !out.ok() {
                return Err(miette!(
                    "{member}: restart through Patroni failed: {}",
                    out.stderr_str().trim()
                ));
            }
            Ok(())
        }
        Step::Switchover { from, to } => switchover(ctx, host, from, to).await,
        Step::SetTags { member, on } => set_tags(ctx, member, *on).await,
        Step::Install { member, packages } => {
            let names: Vec<String> = packages.iter().map(|p| p.name.clone()).collect();
            let now = installed_versions(ctx, member, &names).await?;
            for p in packages {
                let cur = now
                    .iter()
                    .find(|(n, _)| n == &p.name)
                    .and_then(|(_, v)| v.clone());
                if cur != p.from && cur.as_deref() != Some(p.to.as_str()) {
                    return Err(moved(format!(
                        "{member}: {} is {} now, the plan expected {}",
                        p.name,
                        cur.as_deref().unwrap_or("not installed"),
                        p.from.as_deref().unwrap_or("it absent")
                    )));
                }
            }
            let s = ctx.session(member)?;
            let refs: Vec<(&String, &String)> = packages.iter().map(|p| (&p.name, &p.to)).collect();
            let opts = super::packages::apt_source_opts(ctx.inv.packages.source);
            install(s, &refs, &opts, false).await?;
            let q: Vec<String> = names.iter().map(|n| sh_quote(n)).collect();
            s.run(&format!("apt-mark hold {} >/dev/null", q.join(" ")))
                .await?;
            Ok(())
        }
        Step::UpgradePrechecks {
            max_lag_bytes,
            max_xact_age_secs,
        } => {
            prechecks(
                ctx,
                &Bounds {
                    max_lag_bytes: *max_lag_bytes,
                    max_xact_age_secs: *max_xact_age_secs,
                },
            )
            .await
        }
        Step::LeavePatroni { member, address } => {
            super::retire::leave_patroni(ctx, member, address).await
        }
        Step::EtcdMemberAdd {
            member,
            peer_url,
            endpoints,
            stale_id,
        } => super::etcd::join(ctx, member, peer_url, endpoints, stale_id.as_deref()).await,
        Step::EtcdMemberRemove { name, id, .. } => {
            super::retire::remove_etcd_member(ctx, host, name, id).await
        }
        Step::EtcdAccess { user, prefix } => super::etcd::access(ctx, host, user, prefix).await,
        Step::EtcdAuthEnable { user, .. } => super::etcd::auth_enable(ctx, host, user).await,
        Step::DisableRetired {
            name,
            address,
            unit,
        } => super::retire::disable_retired(ctx, name, address, unit).await,
        Step::DnsRecordSet {
            before,
            add,
            remove,
            ttl,
            ttl_from,
            ..
        } => super::dns::record_set_step(ctx, before, add, remove, *ttl, *ttl_from).await,
        Step::Catalog {
            database,
            sql,
            password_of,
            drop_role,
            ..
        } => super::catalog::run_step(ctx, host, database, sql, password_of, drop_role).await,
        Step::StanzaCreate { .. } => super::backup::stanza_create(ctx, host).await,
        Step::ArchiveCheck { .. } => super::backup::archive_check(ctx, host).await,
        Step::DcsRemove { cluster } => super::restore::dcs_remove(ctx, host, cluster).await,
        Step::DataAside {
            data_dir, aside, ..
        } => super::restore::data_aside(ctx, host, data_dir, aside).await,
        Step::Restore {
            target, data_dir, ..
        } => super::restore::restore(ctx, host, target, data_dir).await,
        Step::DataAsideRemove { aside } => {
            super::restore::data_aside_remove(ctx, host, aside).await
        }
        Step::RestoreDone { marker } => super::restore::restore_done(ctx, host, marker).await,
        Step::Wait { gate } => wait(ctx, host, gate).await,
        Step::Deferred { .. } | Step::Note { .. } => Ok(()),
    }
}

async fn dcs_patch_step(ctx: &Ctx, host: &str, patch: &Value, changes: &[KeyChange]) -> Result<()> {
    let (_, body) = cluster_json(ctx, "/config")
        .await?
        .ok_or_else(|| miette!("Patroni's REST API does not answer"))?;
    let current: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let mut flat = std::collections::BTreeMap::new();
    super::patroni::flatten("", &current, &mut flat);
    for c in changes {
        let now = flat.get(&c.key);
        let as_planned = match (now, &c.from) {
            (None, None) => true,
            (Some(n), Some(f)) => same_value(n, f),
            _ => false,
        };
        if !as_planned && !now.is_some_and(|n| same_value(n, &c.to)) {
            return Err(moved(format!(
                "the DCS setting {} is {} now; the plan saw {}",
                c.key,
                now.map(String::as_str).unwrap_or("(unset)"),
                c.from.as_deref().unwrap_or("(unset)")
            )));
        }
    }
    let out = ctx
        .session(host)?
        .exec(
            &patronictl("edit-config --force --apply -"),
            Some(patch.to_string().as_bytes()),
        )
        .await?;
    if !out.ok() {
        return Err(miette!(
            "{host}: patronictl edit-config failed: {}",
            ctx.redact(&out.stderr_str())
        ));
    }
    Ok(())
}

async fn switchover(ctx: &Ctx, host: &str, from: &str, to: &str) -> Result<()> {
    let ms = cluster(ctx).await?;
    if !ms
        .iter()
        .any(|m| m.name == from && m.is_leader() && m.is_running())
    {
        return Err(moved(format!("{from} no longer leads the cluster")));
    }
    if !ms
        .iter()
        .any(|m| m.name == to && !m.is_leader() && m.is_running())
        || !streaming(ctx, from).await?.contains(to)
    {
        return Err(moved(format!(
            "{to} does not run as a streaming replica: no switchover to it"
        )));
    }
    let out = ctx
        .session(host)?
        .exec(
            &patronictl(&format!(
                "switchover {} --leader {} --candidate {} --force",
                sh_quote(&ctx.inv.cluster.name),
                sh_quote(from),
                sh_quote(to)
            )),
            None,
        )
        .await?;
    if !out.ok() {
        return Err(miette!(
            "switchover from {from} to {to} failed: {}{}",
            out.stdout_str(),
            out.stderr_str()
        ));
    }
    wait_until(
        &format!("{to} leads and {from} runs as a replica"),
        Duration::from_secs(120),
        || async {
            Ok(members(ctx)
                .await?
                .map(|ms| {
                    ms.iter()
                        .any(|m| m.name == to && m.is_leader() && m.is_running())
                        && ms
                            .iter()
                            .any(|m| m.name == from && !m.is_leader() && m.is_running())
                })
                .unwrap_or(false))
        },
    )
    .await
}

async fn wait(ctx: &Ctx, host: &str, gate: &Gate) -> Result<()> {
    match gate {
        Gate::RoutesToLeader { member } => super::haproxy::wait_routes_to_leader(ctx, member).await,
        Gate::Leads { member } => {
            wait_until(
                &format!("{member} leads the cluster"),
                MEMBER_DEADLINE,
                || async {
                    Ok(members(ctx)
                        .await?
                        .map(|ms| {
                            ms.iter()
                                .any(|m| &m.name == member && m.is_leader() && m.is_running())
                        })
                        .unwrap_or(false))
                },
            )
            .await
        }
        Gate::MemberRunning { member } => wait_member_running(ctx, member).await,
        Gate::Streams {
            member,
            minor,
            max_lag_bytes,
        } => {
            let max_lag_mb = *max_lag_bytes as f64 / 1_048_576.0;
            wait_until(
                &format!("{member} runs {minor} and streams with lag under the bound"),
                CLUSTER_DEADLINE,
                || async {
                    let Some(ms) = members(ctx).await? else {
                        return Ok(false);
                    };
                    let Some(leader) = ms.iter().find(|m| m.is_leader()).map(|m| m.name.clone())
                    else {
                        return Ok(false);
                    };
                    let running = running_minor(ctx, member).await?;
                    let streams = streaming(ctx, &leader).await?.contains(member);
                    Ok(running.as_deref() == Some(minor.as_str())
                        && streams
                        && lag_of(&ms, member).unwrap_or(0.0) <= max_lag_mb)
                },
            )
            .await
        }
        Gate::NextLoop => {
            let since = super::patroni::loop_deadline(ctx, host).await?;
            wait_all_looped_since(ctx, since, "the change").await
        }
        Gate::Converged => wait_converged(ctx, CLUSTER_DEADLINE).await,
        Gate::MemberGone { member } => super::retire::wait_member_gone(ctx, member).await,
        Gate::SlotDropped { slot } => super::retire::wait_slot_dropped(ctx, slot).await,
        Gate::EtcdHealthy => super::retire::wait_etcd_healthy(ctx).await,
        Gate::EtcdMemberHealthy { member } => super::etcd::wait_member_healthy(ctx, member).await,
    }
}

/// The concrete steps a deferred step becomes, as the cluster is now.
async fn expansion(ctx: &Ctx, e: Expand) -> Result<Vec<PlannedStep>> {
    let ms = cluster(ctx).await?;
    match e {
        Expand::PendingRestarts => Ok(pending_restarts(&ms, "PostgreSQL reports pending_restart")),
        Expand::DcsAfterBootstrap => {
            let Some(leader) = ms.iter().find(|m| m.is_leader()) else {
                return Err(miette!("the new cluster has no leader"));
            };
            let (_, body) = cluster_json(ctx, "/config")
                .await?
                .ok_or_else(|| miette!("Patroni's REST API does not answer"))?;
            let current: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            Ok(dcs_steps(&leader.name, &current, &desired_dcs(ctx)))
        }
        Expand::Catalog => super::catalog::expand(ctx, &ms).await,
    }
}

/// Restarts of the members that report pending_restart: replicas one at a time, then the
/// leader, each followed by a wait until it runs (and streams) again.
pub fn pending_restarts(ms: &[Member], reason: &str) -> Vec<PlannedStep> {
    let mut pending: Vec<&Member> = ms.iter().filter(|m| m.pending_restart).collect();
    pending.sort_by_key(|m| m.is_leader());
    let mut out = Vec::new();
    for m in pending {
        out.push(PlannedStep::new(
            &m.name,
            Step::RestartMember {
                member: m.name.clone(),
                pending: true,
                reason: reason.into(),
            },
        ));
        out.push(PlannedStep::new(
            &m.name,
            Step::Wait {
                gate: Gate::MemberRunning {
                    member: m.name.clone(),
                },
            },
        ));
    }
    out
}

/// The DCS patch (run through `leader`) that makes the cluster-wide settings those of the
/// inventory, a wait until every member applied it, and the restarts it may ask for.
pub fn dcs_steps(
    leader: &str,
    current: &Value,
    desired: &std::collections::BTreeMap<String, String>,
) -> Vec<PlannedStep> {
    let diff = dcs_diff(current, desired);
    if diff.is_empty() {
        return Vec::new();
    }
    vec![
        PlannedStep::new(
            leader,
            Step::DcsPatch {
                patch: dcs_patch(&diff),
                changes: diff
                    .into_iter()
                    .map(|(key, from, to)| KeyChange { key, from, to })
                    .collect(),
            },
        ),
        PlannedStep::new(leader, Step::Wait { gate: Gate::NextLoop }),
        PlannedStep::new(
            leader,
            Step::Deferred {
                expand: Expand::PendingRestarts,
                what: "restart, one at a time (replicas first, the leader last), the members that then report pending_restart".into(),
                why: "PostgreSQL tells which parameters need a restart only after they are applied".into(),
            },
        ),
    ]
}

/// Orchestration without a lab: steps run against the recording double of the hosts (see
/// [`crate::ssh::double`]), which plays a small Patroni cluster. The tests check which
/// commands apply sends, to which host, and in which order.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::change::{Change, UnitAction};
    use crate::engine::phase::{HostPlan, Phase};
    use crate::engine::roles::RoleSource;
    use crate::engine::Quiet;
    use crate::ssh::double::{Answer, Call, Script};
    use crate::ssh::{ConnectOptions, Session};
    use serde_json::json;
    use std::collections::BTreeSet;
    use std::sync::{Arc, RwLock};

    /// The cluster the double plays: which members run, which leads, which ask for a restart.
    #[derive(Default)]
    struct Sim {
        running: Vec<String>,
        leader: Option<String>,
        pending: BTreeSet<String>,
        config: Value,
    }

    fn name_of(address: &str) -> String {
        // production.yaml: pg1..3 are 10.0.0.21..23
        format!(
            "pg{}",
            address.rsplit('.').next().unwrap().parse::<u32>().unwrap() - 20
        )
    }

    fn cluster_double(sim: Sim) -> Arc<Script<Sim>> {
        Arc::new(Script::new(sim).rule(cluster_rule))
    }

    /// How the double's cluster answers Patroni's REST API and the commands that change it.
    fn cluster_rule(host: &str, call: &Call, sim: &mut Sim) -> Option<Answer> {
        match call {
            Call::Get { url } if url.ends_with("/cluster") => {
                if sim.running.is_empty() {
                    return Some(Answer::Fail("connection refused".into()));
                }
                let members: Vec<Value> = sim
                .running
                .iter()
                .map(|m| {
                    let lead = sim.leader.as_deref() == Some(m.as_str());
                    json!({"name": m, "host": format!("10.10.0.{}", 20 + m[2..].parse::<u32>().unwrap_or(0)), "role": if lead { "leader" } else { "replica" },
                           "state": if lead { "running" } else { "streaming" }, "lag": 0,
                           "pending_restart": sim.pending.contains(m)})
                })
                .collect();
                Some(Answer::json(&json!({ "members": members })))
            }
            Call::Get { url } if url.ends_with("/config") => Some(Answer::json(&sim.config)),
            Call::Get { url } if url.ends_with("/patroni") => {
                let me = name_of(url.split("//").nth(1)?.split(':').next()?);
                if !sim.running.contains(&me) {
                    return Some(Answer::Fail("connection refused".into()));
                }
                Some(Answer::json(
                    &json!({"dcs_last_seen": 2000.0, "server_version": 170012}),
                ))
            }
            Call::Exec { cmd, stdin } => {
                if cmd == "systemctl start 'patroni.service'"
                    || cmd == "systemctl start patroni.service"
                {
                    sim.running.push(host.to_string());
                    if sim.leader.is_none() {
                        sim.leader = Some(host.to_string());
                    }
                } else if cmd.contains("pg_stat_replication") {
                    let l = sim.leader.clone()?;
                    let r: Vec<&String> = sim.running.iter().filter(|m| **m != l).collect();
                    return Some(Answer::ok(
                        &r.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
                    ));
                } else if cmd.contains("edit-config") {
                    let patch: Value = serde_json::from_slice(stdin).ok()?;
                    sim.config = patch;
                    // A parameter that needs a restart: every member asks for one.
                    sim.pending = sim.running.iter().cloned().collect();
                } else if cmd.contains(" restart ") {
                    let member = cmd.split_whitespace().nth(5)?.trim_matches('\'');
                    sim.pending.remove(member);
                } else if cmd.contains(" switchover ") {
                    let to = cmd
                        .split("--candidate ")
                        .nth(1)?
                        .split_whitespace()
                        .next()?;
                    sim.leader = Some(to.trim_matches('\'').to_string());
                } else if cmd.starts_with("date ") {
                    return Some(Answer::ok("1000.0\n"));
                } else if cmd == "systemctl disable --now patroni.service" {
                    sim.running.retain(|m| m != host);
                } else if cmd.contains("from pg_replication_slots where slot_name") {
                    // The leader drops the slot of a member that is gone.
                    let slot = cmd.split("slot_name = '").nth(1)?.split('\'').next()?;
                    let held = sim.running.iter().any(|m| m == slot);
                    return Some(Answer::ok(if held { "1\n" } else { "0\n" }));
                }
                Some(Answer::ok(""))
            }
            _ => None,
        }
    }

    fn ctx<S: Send + 'static>(double: Arc<Script<S>>, dir: &std::path::Path) -> Ctx {
        ctx_with(double, dir, &[])
    }

    /// `former`: hosts no longer in the inventory that the double still plays (a member that
    /// leaves), reachable as the run's own sessions.
    fn ctx_with<S: Send + 'static>(
        double: Arc<Script<S>>,
        dir: &std::path::Path,
        former: &[&str],
    ) -> Ctx {
        let text = include_str!("../../inventory/production.yaml");
        let (inv, _) = crate::inventory::load_str(text, "production.yaml", dir).unwrap();
        let (vars, host_vars, secret_values) = super::super::run_vars(&inv).unwrap();
        let hosts = inv.hosts_to_connect();
        let names = hosts
            .iter()
            .map(|h| h.name.clone())
            .chain(former.iter().map(|f| f.to_string()));
        let sessions = names
            .map(|n| {
                let d: Arc<dyn crate::ssh::double::HostDouble> = double.clone();
                let s = Session::double(&n, d);
                (n, s)
            })
            .collect();
        Ctx {
            inv,
            hosts,
            sessions,
            roles: RoleSource::new(None),
            vars: RwLock::new(vars),
            host_vars: RwLock::new(host_vars),
            secret_values,
            role_passwords: Default::default(),
            forks: 8,
            observer: Arc::new(Quiet),
            connect: ConnectOptions::default(),
            planning: Default::default(),
        }
    }

    fn start_units() -> Vec<Change> {
        [UnitAction::Enable, UnitAction::Start]
            .map(|action| Change::Unit {
                unit: "patroni.service".into(),
                action,
                reason: "r".into(),
            })
            .to_vec()
    }

    /// Which host ran which of the commands that change the cluster, in order.
    fn actions(d: &Script<Sim>) -> Vec<String> {
        d.calls()
            .iter()
            .filter_map(|(h, c)| match c {
                Call::Exec { cmd, .. }
                    if cmd.starts_with("systemctl start")
                        || cmd.contains("edit-config")
                        || cmd.contains(" restart ")
                        || cmd.contains(" switchover ") =>
                {
                    let short = cmd.replace("patronictl -c /etc/patroni/config.yml ", "");
                    Some(format!("{h}: {short}"))
                }
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn bootstrap_then_dcs_patch_then_restarts_replicas_first() {
        let dir = tempfile::tempdir().unwrap();
        let d = cluster_double(Sim {
            config: json!({}),
            ..Default::default()
        });
        let c = ctx(d.clone(), dir.path());
        let mut hosts: Vec<HostPlan> = ["pg1", "pg2", "pg3"]
            .iter()
            .map(|h| HostPlan {
                host: h.to_string(),
                changes: start_units(),
            })
            .collect();
        let steps = super::super::patroni::plan_steps(
            &mut hosts,
            None,
            None,
            &[],
            &desired_dcs(&c),
            "17.12",
            &Bounds::default(),
        )
        .unwrap();
        run_all(&c, &steps).await.unwrap();
        let got = actions(&d);
        assert_eq!(got[0], "pg1: systemctl start patroni.service", "{got:#?}");
        assert_eq!(got[1], "pg2: systemctl start patroni.service", "{got:#?}");
        assert_eq!(got[2], "pg3: systemctl start patroni.service", "{got:#?}");
        // pg1 was asked whether it leads before anyone else started.
        let calls: Vec<String> = d
            .calls()
            .iter()
            .map(|(h, c)| format!("{h}: {}", c.text()))
            .collect();
        let first = calls
            .iter()
            .position(|c| c == "pg1: systemctl start patroni.service")
            .unwrap();
        let second = calls
            .iter()
            .position(|c| c == "pg2: systemctl start patroni.service")
            .unwrap();
        assert!(
            calls[first..second].iter().any(|c| c.ends_with("/cluster")),
            "{calls:#?}"
        );
        // The deferred DCS comparison became a patch on the leader, then restarts: the
        // replicas one at a time, the leader last.
        assert_eq!(got[3], "pg1: edit-config --force --apply -", "{got:#?}");
        assert_eq!(
            got[4..].to_vec(),
            vec![
                "pg2: restart pg-main pg2 --pending --force",
                "pg3: restart pg-main pg3 --pending --force",
                "pg1: restart pg-main pg1 --pending --force",
            ],
            "{got:#?}"
        );
        assert!(d.with_state(|s| s.pending.is_empty()));
    }

    #[tokio::test]
    async fn a_switchover_checks_that_the_world_did_not_move() {
        let dir = tempfile::tempdir().unwrap();
        let d = cluster_double(Sim {
            running: vec!["pg1".into(), "pg2".into(), "pg3".into()],
            leader: Some("pg1".into()),
            config: json!({"ttl": 30}),
            ..Default::default()
        });
        let c = ctx(d.clone(), dir.path());
        // The plan saw pg3 lead; pg1 leads now: refused, nothing sent.
        let stale = PlannedStep::new(
            "pg3",
            Step::Switchover {
                from: "pg3".into(),
                to: "pg2".into(),
            },
        );
        // The message as text, without miette's wrapping and frame.
        let flat = |e: miette::Report| {
            format!("{e:?}")
                .replace(['│', '×'], " ")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        let e = flat(run_all(&c, &[stale]).await.unwrap_err());
        assert!(e.contains("pg3 no longer leads the cluster"), "{e}");
        assert!(e.contains("pg1: Leader running"), "{e}");
        // A DCS patch planned from ttl 20 while the DCS holds 30 now: refused too.
        let patch = PlannedStep::new(
            "pg1",
            Step::DcsPatch {
                patch: json!({"ttl": 25}),
                changes: vec![KeyChange {
                    key: "ttl".into(),
                    from: Some("20".into()),
                    to: "25".into(),
                }],
            },
        );
        let e = flat(run_all(&c, &[patch]).await.unwrap_err());
        assert!(
            e.contains("the DCS setting ttl is 30 now; the plan saw 20"),
            "{e}"
        );
        assert!(actions(&d).is_empty(), "{:#?}", actions(&d));
        // As planned: the switchover runs on the leader and waits until pg2 leads.
        let ok = PlannedStep::new(
            "pg1",
            Step::Switchover {
                from: "pg1".into(),
                to: "pg2".into(),
            },
        );
        run_all(&c, &[ok]).await.unwrap();
        assert_eq!(
            actions(&d),
            vec!["pg1: switchover pg-main --leader pg1 --candidate pg2 --force"]
        );
        assert_eq!(d.with_state(|s| s.leader.clone()), Some("pg2".into()));
    }

    #[tokio::test]
    async fn retire_stops_patroni_on_the_member_that_left_then_waits_for_its_key_and_slot() {
        let dir = tempfile::tempdir().unwrap();
        let d = cluster_double(Sim {
            running: ["pg1", "pg2", "pg3", "pg4"].map(String::from).to_vec(),
            leader: Some("pg1".into()),
            config: json!({}),
            ..Default::default()
        });
        let c = ctx_with(d.clone(), dir.path(), &["pg4"]);
        let steps = super::super::retire::Retire.plan(&c).await.unwrap().steps;
        let summaries: Vec<String> = steps.iter().map(|s| s.step.summary()).collect();
        assert_eq!(
            summaries,
            vec![
                "! systemctl disable --now patroni.service on pg4 (10.10.0.24): it leaves the Patroni cluster; its data directory stays",
                "? wait: pg4 has left the Patroni cluster",
                "? wait: the leader has dropped replication slot pg4",
            ],
        );
        run_all(&c, &steps).await.unwrap();
        let stops: Vec<String> = d
            .calls()
            .iter()
            .filter_map(|(h, c)| match c {
                Call::Exec { cmd, .. } if cmd.contains("disable --now") => {
                    Some(format!("{h}: {cmd}"))
                }
                _ => None,
            })
            .collect();
        assert_eq!(stops, vec!["pg4: systemctl disable --now patroni.service"]);
        assert_eq!(d.with_state(|s| s.running.len()), 3);
        // The slot was asked for on the leader, after pg4 stopped.
        let calls = d.calls();
        let stop = calls
            .iter()
            .position(|(_, c)| c.text().contains("disable --now"))
            .unwrap();
        assert!(calls[stop..]
            .iter()
            .any(|(h, c)| h == "pg1" && c.text().contains("pg_replication_slots")));

        // Planned while pg4 was a replica; it leads now: refused, nothing stopped.
        let d = cluster_double(Sim {
            running: ["pg1", "pg2", "pg3", "pg4"].map(String::from).to_vec(),
            leader: Some("pg4".into()),
            config: json!({}),
            ..Default::default()
        });
        let c = ctx_with(d.clone(), dir.path(), &["pg4"]);
        let e = format!("{:?}", run_all(&c, &steps[..1]).await.unwrap_err());
        assert!(e.contains("pg4 leads the Patroni cluster now"), "{e}");
        assert!(!d
            .calls()
            .iter()
            .any(|(_, c)| c.text().contains("disable --now")));
    }

    /// The etcd cluster the double plays: its members (name, last octet of the address).
    #[derive(Default)]
    struct Etcd {
        members: Vec<(String, u8)>,
        started: Vec<String>,
    }

    fn etcd_double(sim: Etcd) -> Arc<Script<Etcd>> {
        Arc::new(Script::new(sim).rule(|host, call, sim| match call {
            Call::Post { url, .. } if url.ends_with("/v3/cluster/member/list") => {
                if !sim.started.iter().any(|s| s == host) {
                    return Some(Answer::Fail("connection refused".into()));
                }
                let ms: Vec<Value> = sim
                    .members
                    .iter()
                    .map(|(n, last)| {
                        let started = sim.started.contains(n);
                        json!({"ID": (u64::from(*last) * 1000).to_string(), "name": if started { n.as_str() } else { "" },
                               "peerURLs": [format!("https://10.10.0.{last}:2380")],
                               "clientURLs": [format!("https://10.10.0.{last}:2379")]})
                    })
                    .collect();
                Some(Answer::json(&json!({ "members": ms })))
            }
            Call::Exec { cmd, .. } if cmd.contains("member add") => {
                let last: u8 = host.trim_start_matches("etcd").parse::<u8>().ok()? + 10;
                sim.members.push((host.to_string(), last));
                sim.started.push(host.to_string());
                Some(Answer::ok(""))
            }
            Call::Exec { cmd, .. } if cmd.contains("endpoint health") => {
                if sim.started.iter().any(|s| s == host) {
                    Some(Answer::ok("healthy"))
                } else {
                    Some(Answer::Fail("connection refused".into()))
                }
            }
            Call::Exec { .. } => Some(Answer::ok("")),
            _ => None,
        }))
    }

    #[tokio::test]
    async fn an_etcd_member_joins_by_member_add_then_waits_for_health_and_is_added_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = etcd_double(Etcd {
            members: vec![("etcd1".into(), 11), ("etcd2".into(), 12)],
            started: vec!["etcd1".into(), "etcd2".into()],
        });
        let c = ctx(d.clone(), dir.path());
        let step = PlannedStep::new(
            "etcd3",
            Step::EtcdMemberAdd {
                member: "etcd3".into(),
                peer_url: "https://10.10.0.13:2380".into(),
                endpoints: vec![
                    "https://10.10.0.11:2379".into(),
                    "https://10.10.0.12:2379".into(),
                ],
                stale_id: None,
            },
        );
        run_all(&c, std::slice::from_ref(&step)).await.unwrap();
        let adds: Vec<String> = d
            .calls()
            .iter()
            .filter(|(_, c)| c.text().contains("member add"))
            .map(|(h, c)| {
                let t = c.text();
                let eps = t
                    .split("--endpoints=")
                    .nth(1)
                    .unwrap()
                    .split(' ')
                    .next()
                    .unwrap()
                    .to_string();
                format!("{h}: {eps}")
            })
            .collect();
        assert_eq!(
            adds,
            vec!["etcd3: https://10.10.0.11:2379,https://10.10.0.12:2379"]
        );
        // Health of the new member was checked after the add; the join file was removed last.
        let texts: Vec<String> = d
            .calls()
            .iter()
            .map(|(h, c)| format!("{h}: {}", c.text()))
            .collect();
        let add = texts.iter().position(|t| t.contains("member add")).unwrap();
        assert!(texts[add..]
            .iter()
            .any(|t| t.starts_with("etcd3: ") && t.contains("endpoint health")));
        assert!(
            texts
                .last()
                .unwrap()
                .contains("rm -f /run/pgdeploy/etcd-join.env"),
            "{texts:#?}"
        );
        // Run again (an apply re-run): it is a member now, so nothing is added twice.
        run_all(&c, std::slice::from_ref(&step)).await.unwrap();
        assert_eq!(
            d.calls()
                .iter()
                .filter(|(_, c)| c.text().contains("member add"))
                .count(),
            1
        );
        assert_eq!(d.with_state(|s| s.members.len()), 3);
    }

    #[tokio::test]
    async fn etcd_that_answers_with_another_ca_is_an_error_not_an_empty_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let d = Arc::new(Script::new(()).rule(|_, call, _| match call {
            Call::Post { .. } => Some(Answer::Fail(
                "TLS: invalid peer certificate: UnknownIssuer".into(),
            )),
            Call::Exec { .. } => Some(Answer::ok("PGDEPLOY_ETCD_HAS_DATA\n")),
            _ => None,
        }));
        let c = ctx(d, dir.path());
        let e = format!(
            "{:?}",
            super::super::etcd::probe_membership(&c).await.unwrap_err()
        );
        assert!(e.contains("not with pgdeploy's cluster CA"), "{e}");
        assert!(e.contains("etcd1: "), "{e}");
        // Nobody answering at all is no cluster yet (bootstrap), not an error.
        let d = Arc::new(Script::new(()).rule(|_, call, _| match call {
            Call::Post { .. } => Some(Answer::Fail("the host could not connect: refused".into())),
            Call::Exec { .. } => Some(Answer::ok("")),
            _ => None,
        }));
        let c = ctx(d, dir.path());
        let f = super::super::etcd::probe_membership(&c).await.unwrap();
        assert!(f.members.is_none() && f.has_data.is_empty());
    }

    /// The leader's catalog with nothing declared yet (pgdeploy's check role is to be made).
    const EMPTY_CATALOG: &str = r#"{"roles": [], "databases": [], "available": [], "owned": []}"#;

    #[tokio::test]
    async fn catalog_takes_the_leaders_own_read_and_reads_again_when_it_was_not_complete() {
        for complete in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let sim = Sim {
                running: ["pg1", "pg2", "pg3"].map(String::from).to_vec(),
                leader: Some("pg2".into()),
                config: json!({}),
                ..Default::default()
            };
            // Every member's guarded read: the facts and the end line from the primary (when
            // `complete`), nothing from a standby. Then the leader's own read, if asked for.
            let d = Arc::new(
                Script::new(sim)
                    .rule(move |host, call, sim| match call {
                        Call::Exec { cmd, .. } if cmd.contains("<<'PGDEPLOY_CATALOG'") => {
                            let primary = sim.leader.as_deref() == Some(host);
                            Some(Answer::ok(&if primary && complete {
                                format!("{EMPTY_CATALOG}\n@@PGDEPLOY-CATALOG-DONE\n")
                            } else {
                                String::new()
                            }))
                        }
                        Call::Exec { cmd, .. } if cmd.ends_with(" -f -") => {
                            Some(Answer::ok(&format!("{EMPTY_CATALOG}\n")))
                        }
                        _ => None,
                    })
                    .rule(cluster_rule),
            );
            let c = ctx(d.clone(), dir.path());
            let steps = super::super::catalog::Catalog.plan(&c).await.unwrap().steps;
            let summaries: Vec<String> = steps
                .iter()
                .map(|s| format!("{}: {}", s.host, s.step.summary()))
                .collect();
            assert!(
                summaries.len() == 1 && summaries[0].starts_with("pg2: + role pgdeploy_check"),
                "{summaries:?}"
            );
            let guarded: Vec<String> = d
                .matching("<<'PGDEPLOY_CATALOG'")
                .iter()
                .map(|c| c.split(':').next().unwrap().to_string())
                .collect();
            assert_eq!(guarded.len(), 3, "every member reads if it is the primary");
            assert!(d
                .matching("<<'PGDEPLOY_CATALOG'")
                .iter()
                .all(|c| c.contains("standby.signal") && c.contains("pg_is_in_recovery()")));
            let again = d.matching(" -f -");
            let expected: Vec<String> = if complete { vec![] } else { vec!["pg2".into()] };
            assert_eq!(
                again
                    .iter()
                    .filter(|c| !c.contains("PGDEPLOY_CATALOG"))
                    .map(|c| c.split(':').next().unwrap().to_string())
                    .collect::<Vec<_>>(),
                expected,
                "the leader reads again only when its first read was not complete"
            );
        }
    }
}
