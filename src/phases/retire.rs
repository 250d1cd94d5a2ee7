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
use crate::engine::change::Change;
use crate::engine::phase::{HostPlan, Phase, PhasePlan};
use crate::engine::Ctx;
use crate::inventory::Group;
use crate::ssh::Session;
use async_trait::async_trait;
use miette::{miette, Result};
use std::collections::BTreeSet;
use std::time::Duration;

pub struct Retire;

const STOP_PATRONI: &str = "systemctl disable --now patroni.service";
const STOP_ETCD: &str = "systemctl disable --now etcd.service";

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

fn push(hosts: &mut Vec<HostPlan>, host: &str, change: Change) {
    match hosts.iter_mut().find(|h| h.host == host) {
        Some(h) => h.changes.push(change),
        None => hosts.push(HostPlan {
            host: host.to_string(),
            changes: vec![change],
        }),
    }
}

#[async_trait]
impl Phase for Retire {
    fn name(&self) -> &str {
        "retire"
    }

    async fn plan(&self, ctx: &Ctx) -> Result<PhasePlan> {
        let l = leaving(ctx).await?;
        let mut hosts = Vec::new();
        for m in &l.patroni {
            push(
                &mut hosts,
                &m.name,
                Change::Command {
                    command: STOP_PATRONI.into(),
                    reason: format!(
                        "{} ({}) is no longer in the inventory: it leaves the Patroni cluster \
                         after HAProxy stopped routing to it; its replication slot is dropped, \
                         its data directory is kept",
                        m.name, m.host
                    ),
                },
            );
        }
        let runner = ctx
            .inv
            .group_hosts(Group::Etcd)
            .first()
            .map(|h| h.name.clone());
        for (i, e) in l.etcd.iter().enumerate() {
            let from = l.etcd_size - i;
            push(
                &mut hosts,
                &e.name,
                Change::Command {
                    command: format!(
                        "etcdctl member remove {:x} (on {})",
                        e.id,
                        runner.as_deref().unwrap_or("an etcd host")
                    ),
                    reason: format!(
                        "{} ({}) is no longer in the inventory: the etcd cluster goes from {from} \
                         to {} members, once every member is healthy",
                        e.name,
                        e.address,
                        from - 1
                    ),
                },
            );
            push(
                &mut hosts,
                &e.name,
                Change::Command {
                    command: STOP_ETCD.into(),
                    reason: "the removed member's etcd stays stopped (its data directory is kept)"
                        .into(),
                },
            );
        }
        Ok(PhasePlan {
            phase: "retire".into(),
            hosts,
        })
    }

    async fn apply(&self, ctx: &Ctx, _plan: &PhasePlan) -> Result<()> {
        // The cluster is read again: it is what the plan was made from, and it is the truth.
        let l = leaving(ctx).await?;
        for m in &l.patroni {
            retire_patroni_member(ctx, m).await?;
        }
        for e in &l.etcd {
            retire_etcd_member(ctx, e).await?;
        }
        Ok(())
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

async fn retire_patroni_member(ctx: &Ctx, m: &Member) -> Result<()> {
    ctx.observe(&m.name, "leaving the Patroni cluster");
    let own = reach(ctx, &m.name, &m.host).await.map_err(|e| {
        miette!(
            help = format!(
                "stop it yourself on {} (`{STOP_PATRONI}`), then run apply again",
                m.host
            ),
            "{} is no longer in the inventory but still runs in the Patroni cluster, and \
             pgdeploy cannot reach it to stop Patroni: {e}",
            m.name
        )
    })?;
    let s = match &own {
        Some(s) => s,
        None => ctx.session(&m.name)?,
    };
    ctx.step(
        &m.name,
        &format!("! run `{STOP_PATRONI}` ({} leaves the cluster)", m.name),
        async {
            let out = s.exec(STOP_PATRONI, None).await?;
            if !out.ok() {
                return Err(miette!(
                    "{}: `{STOP_PATRONI}` failed: {}",
                    m.name,
                    out.stderr_str().trim()
                ));
            }
            Ok(())
        },
    )
    .await?;
    if let Some(s) = own {
        s.close().await;
    }
    // Its member key expires within Patroni's ttl; the leader then drops its slot.
    wait_until(
        &format!("{} has left the Patroni cluster", m.name),
        Duration::from_secs(90),
        || async {
            Ok(members(ctx)
                .await?
                .is_some_and(|ms| ms.iter().all(|x| x.name != m.name)))
        },
    )
    .await?;
    let slot = slot_name(&m.name);
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
                        "runuser -u postgres -- psql -AtXq -c \"select count(*) from pg_replication_slots where slot_name = '{slot}'\""
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

async fn retire_etcd_member(ctx: &Ctx, e: &Leave) -> Result<()> {
    let stays = wanted_members(ctx);
    let Some((runner, _)) = stays.first() else {
        return Err(miette!("the inventory lists no etcd host"));
    };
    let rs = ctx.session(runner)?;
    let local = [etcd::client_url(ctx, "127.0.0.1")];
    let health = rs
        .exec(&etcdctl(runner, &local, "endpoint health --cluster"), None)
        .await?;
    if !health.ok() {
        return Err(miette!(
            help = "bring every member back first (`pgdeploy status` shows which), then run apply again",
            "not every etcd member is healthy, so removing {} now could cost the cluster its \
             quorum; nothing was removed:\n{}",
            e.name,
            (health.stdout_str() + &health.stderr_str()).trim()
        ));
    }
    ctx.observe(runner, &format!("removing etcd member {}", e.name));
    ctx.step(
        &e.name,
        &format!("! run `etcdctl member remove {:x}` (on {runner})", e.id),
        async {
            let out = rs
                .exec(
                    &etcdctl(runner, &local, &format!("member remove {:x}", e.id)),
                    None,
                )
                .await?;
            if !out.ok() {
                return Err(miette!(
                    "etcdctl member remove {:x} ({}) failed: {}",
                    e.id,
                    e.name,
                    out.stderr_str().trim()
                ));
            }
            Ok(())
        },
    )
    .await?;
    // The removed member stops by itself; make sure it stays stopped after a reboot.
    match reach(ctx, &e.name, &e.address).await {
        Ok(own) => {
            let s = match &own {
                Some(s) => s,
                None => ctx.session(&e.name)?,
            };
            let out = ctx
                .step(&e.name, &format!("! run `{STOP_ETCD}`"), async {
                    Ok(s.exec(STOP_ETCD, None).await?)
                })
                .await?;
            if !out.ok() {
                ctx.observer.message(&format!(
                    "warning: {}: `{STOP_ETCD}` failed: {}",
                    e.name,
                    out.stderr_str().trim()
                ));
            }
            if let Some(s) = own {
                s.close().await;
            }
        }
        Err(err) => ctx.observer.message(&format!(
            "warning: {} left the etcd cluster, but pgdeploy cannot reach it to disable etcd \
             there ({err}); disable it yourself (`{STOP_ETCD}`)",
            e.name
        )),
    }
    wait_until(
        &format!("every etcd member is healthy after {} left", e.name),
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
}
