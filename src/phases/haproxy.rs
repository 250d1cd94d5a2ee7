//! HAProxy: writes to the leader (port 5000), reads to replicas (5001), a stats page. The
//! config is validated with `haproxy -c` on the host before it replaces the live one (role
//! data: `validate`), and reloads go one load balancer at a time, each gated on it routing
//! writes to a leader again.

use super::etcd::wait_until;
use crate::engine::change::UnitAction;
use crate::engine::phase::{plan_roles, HostPlan, Phase, PhasePlan};
use crate::engine::step::{Gate as StepGate, PlannedStep, Step};
use crate::engine::Ctx;
use async_trait::async_trait;
use miette::Result;
use std::time::Duration;

pub struct Haproxy;

/// Pure: from HAProxy's stats CSV, the servers of `backend` that are UP.
pub fn servers_up(csv: &str, backend: &str) -> Vec<String> {
    let mut lines = csv.lines();
    let Some(header) = lines.next() else {
        return vec![];
    };
    let cols: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
    let idx = |name: &str| cols.iter().position(|c| *c == name);
    let (Some(px), Some(sv), Some(st)) = (idx("pxname"), idx("svname"), idx("status")) else {
        return vec![];
    };
    lines
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let (p, s, status) = (*f.get(px)?, *f.get(sv)?, *f.get(st)?);
            (p == backend && s != "BACKEND" && s != "FRONTEND" && status.starts_with("UP"))
                .then(|| s.to_string())
        })
        .collect()
}

/// Where HAProxy's stats CSV is read: on the host's loopback, through its SSH connection.
pub const STATS_CSV_PATH: &str = "/;csv";

/// The stats CSV of HAProxy on `host` (its stats port on the host's loopback).
pub async fn stats_csv(s: &crate::ssh::Session, port: u16) -> Option<String> {
    s.http_get(
        None,
        "127.0.0.1",
        port,
        STATS_CSV_PATH,
        crate::engine::REST_TIMEOUT,
    )
    .await
    .ok()
    .filter(|r| r.ok())
    .map(|r| r.body_str())
}

/// Gate: HAProxy on `host` routes writes to exactly one leader.
pub(crate) async fn wait_routes_to_leader(ctx: &Ctx, host: &str) -> Result<()> {
    {
        let s = ctx.session(host)?;
        let port = ctx.inv.haproxy.stats_port;
        wait_until(
            &format!("HAProxy on {host} routes writes to exactly one leader"),
            Duration::from_secs(60),
            || async {
                Ok(stats_csv(s, port)
                    .await
                    .is_some_and(|csv| servers_up(&csv, "primary").len() == 1))
            },
        )
        .await
    }
}

/// Pure: the load balancers' reloads and restarts as steps, one host at a time (inventory
/// order), each followed by a wait until that host routes writes to one leader again; then
/// the same wait for every other host that changed. Starts and enables of a first deployment
/// stay with the host's own changes, which run first and in parallel.
pub fn plan_steps(hosts: &mut [HostPlan]) -> Vec<PlannedStep> {
    let mut steps = Vec::new();
    let mut gated = Vec::new();
    let changed: Vec<String> = hosts
        .iter()
        .filter(|h| !h.changes.is_empty())
        .map(|h| h.host.clone())
        .collect();
    for hp in hosts.iter_mut() {
        let host = hp.host.clone();
        let mut mine = Vec::new();
        hp.changes.retain(|c| match Step::from_unit_change(c) {
            Some(
                step @ Step::Unit {
                    action: UnitAction::Restart | UnitAction::Reload,
                    ..
                },
            ) => {
                mine.push(PlannedStep::new(&host, step));
                false
            }
            _ => true,
        });
        if !mine.is_empty() {
            steps.extend(mine);
            steps.push(routes(&host));
            gated.push(host);
        }
    }
    for h in changed.iter().filter(|h| !gated.contains(h)) {
        steps.push(routes(h));
    }
    steps
}

fn routes(host: &str) -> PlannedStep {
    PlannedStep::new(
        host,
        Step::Wait {
            gate: StepGate::RoutesToLeader {
                member: host.to_string(),
            },
        },
    )
}

#[async_trait]
impl Phase for Haproxy {
    fn name(&self) -> &str {
        "haproxy"
    }
    async fn plan(&self, ctx: &Ctx) -> Result<PhasePlan> {
        let mut hosts = plan_roles(ctx, &["haproxy".to_string()], false).await?;
        let steps = plan_steps(&mut hosts);
        let mut plan = PhasePlan::new("haproxy", hosts);
        plan.steps = steps;
        Ok(plan)
    }
    async fn apply(&self, ctx: &Ctx, plan: &PhasePlan) -> Result<()> {
        super::steps::apply_plan(ctx, plan).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::change::Change;

    #[test]
    fn reloads_one_load_balancer_at_a_time_each_gated() {
        let unit = |action| Change::Unit {
            unit: "haproxy.service".into(),
            action,
            reason: "config changed".into(),
        };
        let file = Change::Deferred {
            what: "w".into(),
            why: "y".into(),
        };
        let mut hosts = vec![
            HostPlan {
                host: "haproxy1".into(),
                changes: vec![file.clone(), unit(UnitAction::Reload)],
            },
            HostPlan {
                host: "haproxy2".into(),
                changes: vec![],
            },
            HostPlan {
                host: "haproxy3".into(),
                changes: vec![unit(UnitAction::Enable), unit(UnitAction::Restart)],
            },
        ];
        let steps: Vec<String> = plan_steps(&mut hosts)
            .iter()
            .map(|s| format!("{}: {}", s.host, s.step.summary()))
            .collect();
        assert_eq!(
            steps,
            vec![
                "haproxy1: ! unit reload haproxy.service (config changed)",
                "haproxy1: ? wait: HAProxy on haproxy1 routes writes to exactly one leader",
                "haproxy3: ! unit restart haproxy.service (config changed)",
                "haproxy3: ? wait: HAProxy on haproxy3 routes writes to exactly one leader",
            ]
        );
        // What is left runs on the hosts first, in parallel.
        assert_eq!(hosts[0].changes, vec![file]);
        assert_eq!(hosts[2].changes, vec![unit(UnitAction::Enable)]);
    }

    #[test]
    fn finds_up_servers_of_a_backend() {
        let csv = "# pxname,svname,qcur,status,weight\nprimary,FRONTEND,0,OPEN,\nprimary,pg1,0,UP,1\nprimary,pg2,0,DOWN,1\nprimary,pg3,0,DOWN,1\nprimary,BACKEND,0,UP,1\nreplicas,pg2,0,UP,1\nreplicas,pg3,0,UP 1/2,1\n";
        assert_eq!(servers_up(csv, "primary"), vec!["pg1"]);
        assert_eq!(servers_up(csv, "replicas"), vec!["pg2", "pg3"]);
        assert!(servers_up("", "primary").is_empty());
    }
}
