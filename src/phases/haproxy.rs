//! HAProxy: writes to the leader (port 5000), reads to replicas (5001), a stats page. The
//! config is validated with `haproxy -c` on the host before it replaces the live one (role
//! data: `validate`), and reloads go one load balancer at a time, each gated on it routing
//! writes to a leader again.

use super::etcd::wait_until;
use crate::engine::phase::{apply_host_plans, plan_roles, Gate, Phase, PhasePlan, RestartPolicy};
use crate::engine::Ctx;
use async_trait::async_trait;
use miette::Result;
use std::sync::Arc;
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

struct RoutesToLeader;

#[async_trait]
impl Gate for RoutesToLeader {
    async fn wait_healthy(&self, ctx: &Ctx, host: &str) -> Result<()> {
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

#[async_trait]
impl Phase for Haproxy {
    fn name(&self) -> &str {
        "haproxy"
    }
    async fn plan(&self, ctx: &Ctx) -> Result<PhasePlan> {
        Ok(PhasePlan {
            steps: Vec::new(),
            phase: "haproxy".into(),
            hosts: plan_roles(ctx, &["haproxy".to_string()], false).await?,
        })
    }
    async fn apply(&self, ctx: &Ctx, plan: &PhasePlan) -> Result<()> {
        apply_host_plans(
            ctx,
            &plan.hosts,
            &RestartPolicy::Rolling(Some(Arc::new(RoutesToLeader))),
        )
        .await?;
        for hp in &plan.hosts {
            RoutesToLeader.wait_healthy(ctx, &hp.host).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_up_servers_of_a_backend() {
        let csv = "# pxname,svname,qcur,status,weight\nprimary,FRONTEND,0,OPEN,\nprimary,pg1,0,UP,1\nprimary,pg2,0,DOWN,1\nprimary,pg3,0,DOWN,1\nprimary,BACKEND,0,UP,1\nreplicas,pg2,0,UP,1\nreplicas,pg3,0,UP 1/2,1\n";
        assert_eq!(servers_up(csv, "primary"), vec!["pg1"]);
        assert_eq!(servers_up(csv, "replicas"), vec!["pg2", "pg3"]);
        assert!(servers_up("", "primary").is_empty());
    }
}
