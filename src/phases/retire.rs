//! retire: members that the cluster still has but the inventory no longer lists leave it.
//!
//! What was deployed is read from the cluster itself (Patroni's and etcd's membership), not
//! from a local record. The phase runs after the haproxy phase, so HAProxy has already stopped
//! routing to a leaving database host.
//!
//! - Patroni: the leader is never removed (the plan refuses and says how to switch over).
//!   Patroni is stopped and disabled on the leaving host (its data directory stays); the phase
//!   waits until its member key has expired and the leader has dropped its replication slot.
//! - etcd: one member at a time, and only while every member is healthy (never below quorum):
//!   `etcdctl member remove`, then etcd is stopped and disabled on the host if it can be
//!   reached (a removed member also stops by itself).

use super::etcd::{
    self, check_cluster_healthy, etcdctl, plan_membership, probe_membership, wait_until,
    wanted_members, Leave,
};
use super::patroni::{members, Member};
use crate::engine::phase::{Phase, PhasePlan};
use crate::engine::step::{Gate, PlannedStep, Step};
use crate::engine::Ctx;
use crate::inventory::Group;
use crate::ssh::Session;
use async_trait::async_trait;
use miette::{miette, Result};
use std::collections::BTreeSet;
use std::time::Duration;

pub struct Retire;

const STOP_PATRONI: &str = "systemctl disable --now patroni.service";
const ETCD_UNIT: &str = "etcd.service";

/// What leaves, read from the cluster.
struct Leaving {
    patroni: Vec<Member>,
    etcd: Vec<Leave>,
    /// Members of the etcd cluster now (before any removal).
    etcd_size: usize,
}

async fn leaving(ctx: &Ctx) -> Result<Leaving> {
    let wanted: BTreeSet<String> = ctx
        .inv
        .group_hosts(Group::Patroni)
        .into_iter()
        .map(|h| h.name)
        .collect();
    let ms = members(ctx).await?.unwrap_or_default();
    let patroni = leaving_patroni(&ms, &wanted).map_err(|(leader, stays)| {
        miette!(
            help = format!(
                "switch over first, on any Patroni host: `patronictl -c /etc/patroni/config.yml \
                 switchover --leader {leader} --candidate {stays} --force`, then run apply again"
            ),
            "{leader} leads the Patroni cluster and is no longer in the inventory: pgdeploy \
             does not remove the leader, and changed nothing"
        )
    })?;
    let (etcd, etcd_size) = match probe_membership(ctx).await?.members {
        Some(ms) => (plan_membership(&wanted_members(ctx), &ms).1, ms.len()),
        None => (Vec::new(), 0),
    };
    Ok(Leaving {
        patroni,
        etcd,
        etcd_size,
    })
}

/// Pure: the Patroni members that leave; Err((leader, a member that stays)) if the leader
/// would be one of them.
fn leaving_patroni(
    ms: &[Member],
    wanted: &BTreeSet<String>,
) -> std::result::Result<Vec<Member>, (String, String)> {
    let out: Vec<Member> = ms
        .iter()
        .filter(|m| !wanted.contains(&m.name))
        .cloned()
        .collect();
    if let Some(l) = out.iter().find(|m| m.is_leader()) {
        let stays = ms
            .iter()
            .find(|m| wanted.contains(&m.name) && m.is_running())
            .map(|m| m.name.clone())
            .unwrap_or_else(|| "<a member that stays>".into());
        return Err((l.name.clone(), stays));
    }
    Ok(out)
}

/// Pure: the ordered steps for what leaves. Patroni members first (HAProxy has already
/// stopped routing to them): stop Patroni, wait until its member key expired and the leader
/// dropped its slot. Then etcd members, one at a time through `runner` (a member that stays),
/// each followed by disabling etcd on the host that left and a wait until etcd is healthy.
fn plan_steps(l: &Leaving, runner: Option<&str>) -> Vec<PlannedStep> {
    let mut steps = Vec::new();
    for m in &l.patroni {
        steps.push(PlannedStep::new(
            &m.name,
            Step::LeavePatroni {
                member: m.name.clone(),
                address: m.host.clone(),
            },
        ));
        for gate in [
            Gate::MemberGone {
                member: m.name.clone(),
            },
            Gate::SlotDropped {
                slot: slot_name(&m.name),
            },
        ] {
            steps.push(PlannedStep::new(&m.name, Step::Wait { gate }));
        }
    }
    let Some(runner) = runner else {
        return steps;
    };
    for (i, e) in l.etcd.iter().enumerate() {
        steps.push(PlannedStep::new(
            runner,
            Step::EtcdMemberRemove {
                name: e.name.clone(),
                id: format!("{:x}", e.id),
                size_after: l.etcd_size.saturating_sub(i + 1),
            },
        ));
        steps.push(PlannedStep::new(
            &e.name,
            Step::DisableRetired {
                name: e.name.clone(),
                address: e.address.clone(),
                unit: ETCD_UNIT.into(),
            },
        ));
        steps.push(PlannedStep::new(
            runner,
            Step::Wait {
                gate: Gate::EtcdHealthy,
            },
        ));
    }
    steps
}

#[async_trait]
impl Phase for Retire {
    fn name(&self) -> &str {
        "retire"
    }

    async fn plan(&self, ctx: &Ctx) -> Result<PhasePlan> {
        let l = leaving(ctx).await?;
        let runner = ctx
            .inv
            .group_hosts(Group::Etcd)
            .first()
            .map(|h| h.name.clone());
        let mut plan = PhasePlan::new("retire", Vec::new());
        plan.steps = plan_steps(&l, runner.as_deref());
        Ok(plan)
    }

    async fn apply(&self, ctx: &Ctx, plan: &PhasePlan) -> Result<()> {
        super::steps::apply_plan(ctx, plan).await
    }
}

/// A session to `name`: the run's own if the host is still in the inventory, else a new one
/// to `address` with the inventory's SSH settings.
async fn reach(ctx: &Ctx, name: &str, address: &str) -> Result<Option<Session>> {
    if ctx.sessions.contains_key(name) {
        return Ok(None);
    }
    let host = ctx.inv.former_host(name, address);
    Session::connect(&host, &ctx.connect)
        .await
        .map(Some)
        .map_err(|e| miette!("{e}"))
}

/// Step: stop and disable Patroni on a member that leaves (never the leader).
pub(crate) async fn leave_patroni(ctx: &Ctx, member: &str, address: &str) -> Result<()> {
    let ms = members(ctx).await?.unwrap_or_default();
    match ms.iter().find(|m| m.name == member) {
        None => return Ok(()), // already gone
        Some(m) if m.is_leader() => {
            return Err(miette!(
                help = "run `pgdeploy check` to see the new plan",
                "{member} leads the Patroni cluster now: pgdeploy does not remove the leader"
            ))
        }
        Some(_) => {}
    }
    let own = reach(ctx, member, address).await.map_err(|e| {
        miette!(
            help =
                format!("stop it yourself on {address} (`{STOP_PATRONI}`), then run apply again"),
            "{member} is no longer in the inventory but still runs in the Patroni cluster, and \
             pgdeploy cannot reach it to stop Patroni: {e}"
        )
    })?;
    let s = match &own {
        Some(s) => s,
        None => ctx.session(member)?,
    };
    let out = s.exec(STOP_PATRONI, None).await?;
    if let Some(s) = own {
        s.close().await;
    }
    if !out.ok() {
        return Err(miette!(
            "{member}: `{STOP_PATRONI}` failed: {}",
            out.stderr_str().trim()
        ));
    }
    Ok(())
}

/// Gate: `member` has left the Patroni cluster (its key expires within Patroni's ttl).
pub(crate) async fn wait_member_gone(ctx: &Ctx, member: &str) -> Result<()> {
    wait_until(
        &format!("{member} has left the Patroni cluster"),
        Duration::from_secs(90),
        || async {
            Ok(members(ctx)
                .await?
                .is_some_and(|ms| ms.iter().all(|x| x.name != member)))
        },
    )
    .await
}

/// Gate: the leader has dropped replication slot `slot`.
pub(crate) async fn wait_slot_dropped(ctx: &Ctx, slot: &str) -> Result<()> {
    wait_until(
        &format!("the leader has dropped replication slot {slot}"),
        Duration::from_secs(90),
        || async {
            let Some(leader) = members(ctx)
                .await?
                .and_then(|ms| ms.into_iter().find(|x| x.is_leader()))
            else {
                return Ok(false);
            };
            let out = ctx
                .session(&leader.name)?
                .exec(
                    &format!(
                        "{} -AtXq -c \"select count(*) from pg_replication_slots where slot_name = '{slot}'\"",
                        super::superuser_psql(&ctx.inv)
                    ),
                    None,
                )
                .await?;
            Ok(out.ok() && out.stdout_str().trim() == "0")
        },
    )
    .await
}

/// Patroni's slot name for a member: lowercase, other characters than [a-z0-9_] become `_`.
pub fn slot_name(member: &str) -> String {
    member
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect()
}

/// Step: remove etcd member `name` (`id` in hexadecimal) through `runner`, only while every
/// member is healthy (never below quorum).
pub(crate) async fn remove_etcd_member(
    ctx: &Ctx,
    runner: &str,
    name: &str,
    id: &str,
) -> Result<()> {
    let rs = ctx.session(runner)?;
    let local = [etcd::client_url(ctx, "127.0.0.1")];
    let health = rs
        .exec(&etcdctl(runner, &local, "endpoint health --cluster"), None)
        .await?;
    if !health.ok() {
        return Err(miette!(
            help = "bring every member back first (`pgdeploy status` shows which), then run apply again",
            "not every etcd member is healthy, so removing {name} now could cost the cluster its \
             quorum; nothing was removed:\n{}",
            (health.stdout_str() + &health.stderr_str()).trim()
        ));
    }
    let listed = probe_membership(ctx)
        .await?
        .members
        .is_some_and(|ms| ms.iter().any(|m| format!("{:x}", m.id) == id));
    if !listed {
        return Ok(()); // already removed
    }
    let out = rs
        .exec(
            &etcdctl(runner, &local, &format!("member remove {id}")),
            None,
        )
        .await?;
    if !out.ok() {
        return Err(miette!(
            "etcdctl member remove {id} ({name}) failed: {}",
            out.stderr_str().trim()
        ));
    }
    Ok(())
}

/// Step: disable `unit` on a host that left; one that cannot be reached only gets a warning
/// (a removed etcd member also stops by itself).
pub(crate) async fn disable_retired(
    ctx: &Ctx,
    name: &str,
    address: &str,
    unit: &str,
) -> Result<()> {
    let cmd = format!("systemctl disable --now {unit}");
    match reach(ctx, name, address).await {
        Ok(own) => {
            let s = match &own {
                Some(s) => s,
                None => ctx.session(name)?,
            };
            let out = s.exec(&cmd, None).await?;
            if !out.ok() {
                ctx.observer.message(&format!(
                    "warning: {name}: `{cmd}` failed: {}",
                    out.stderr_str().trim()
                ));
            }
            if let Some(s) = own {
                s.close().await;
            }
        }
        Err(err) => ctx.observer.message(&format!(
            "warning: {name} left the cluster, but pgdeploy cannot reach it to disable {unit} \
             there ({err}); disable it yourself (`{cmd}`)"
        )),
    }
    Ok(())
}

/// Gate: every etcd member is healthy.
pub(crate) async fn wait_etcd_healthy(ctx: &Ctx) -> Result<()> {
    wait_until(
        "every etcd member is healthy",
        Duration::from_secs(120),
        || async { check_cluster_healthy(ctx).await.map(|()| true) },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, role: &str) -> Member {
        Member {
            name: name.into(),
            host: "10.0.0.1".into(),
            role: role.into(),
            state: "streaming".into(),
            timeline: Some(1),
            lag_mb: Some(0.0),
            pending_restart: false,
        }
    }

    #[test]
    fn leaving_members_and_the_leader_refusal() {
        let ms = [m("pg1", "Leader"), m("pg2", "Replica"), m("pg3", "Replica")];
        let wanted = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert!(leaving_patroni(&ms, &wanted(&["pg1", "pg2", "pg3"]))
            .unwrap()
            .is_empty());
        let l = leaving_patroni(&ms, &wanted(&["pg1", "pg2"])).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].name, "pg3");
        assert_eq!(
            leaving_patroni(&ms, &wanted(&["pg2", "pg3"])).unwrap_err(),
            ("pg1".to_string(), "pg2".to_string())
        );
    }

    #[test]
    fn slot_names_follow_patroni() {
        assert_eq!(slot_name("pg4"), "pg4");
        assert_eq!(slot_name("DB-Node.2"), "db_node_2");
    }

    #[test]
    fn patroni_members_leave_first_then_etcd_members_one_at_a_time() {
        let l = Leaving {
            patroni: vec![m("pg4", "Replica")],
            etcd: vec![
                Leave {
                    id: 0xabc,
                    name: "etcd4".into(),
                    address: "10.0.0.14".into(),
                },
                Leave {
                    id: 0xdef,
                    name: "etcd5".into(),
                    address: "10.0.0.15".into(),
                },
            ],
            etcd_size: 5,
        };
        let got: Vec<String> = plan_steps(&l, Some("etcd1"))
            .iter()
            .map(|s| format!("{}: {}", s.host, s.step.summary()))
            .collect();
        assert_eq!(got.len(), 9, "{got:#?}");
        assert!(got[0].starts_with("pg4: ! systemctl disable --now patroni.service on pg4"));
        assert_eq!(got[1], "pg4: ? wait: pg4 has left the Patroni cluster");
        assert_eq!(
            got[2],
            "pg4: ? wait: the leader has dropped replication slot pg4"
        );
        assert!(got[3].starts_with("etcd1: ! etcdctl member remove abc (etcd4): 4 members remain"));
        assert!(got[4].starts_with("etcd4: ! disable --now etcd.service on etcd4 (10.0.0.14)"));
        assert_eq!(got[5], "etcd1: ? wait: every etcd member is healthy");
        assert!(got[6].contains("member remove def (etcd5): 3 members remain"));
    }
}
