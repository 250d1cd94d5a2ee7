//! etcd: a static three-member cluster with TLS for client and peer traffic.
//!
//! Files and the unit are role data (`roles/etcd`). Orchestration: on first bootstrap every
//! member starts at once (a static cluster needs a quorum to form); later restarts go one
//! member at a time, each gated on that member's health; the phase ends when the whole
//! cluster is healthy.

use crate::engine::change::{Change, UnitAction};
use crate::engine::facts::{sh_quote, PENDING_DIR};
use crate::engine::phase::{
    apply_host_plans, plan_roles, Gate, HostPlan, Phase, PhasePlan, RestartPolicy,
};
use crate::engine::Ctx;
use crate::inventory::Group;
use async_trait::async_trait;
use miette::{miette, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const TLS_DIR: &str = "/etc/pgdeploy/tls";

pub struct Etcd;

/// etcdctl with our client certificate, run on an etcd host.
pub fn etcdctl(ctx: &Ctx, on_host: &str, endpoints: &[String], args: &str) -> String {
    let _ = ctx;
    format!(
        "ETCDCTL_API=3 etcdctl --dial-timeout=2s --command-timeout=4s --endpoints={} \
         --cacert={TLS_DIR}/ca.crt --cert={TLS_DIR}/{on_host}.crt --key={TLS_DIR}/{on_host}.key {args}",
        endpoints.join(",")
    )
}

pub fn client_url(ctx: &Ctx, address: &str) -> String {
    let a = if address.contains(':') {
        format!("[{address}]")
    } else {
        address.to_string()
    };
    format!("https://{a}:{}", ctx.inv.etcd.client_port)
}

/// Poll `check` until it returns Ok(true), or fail after `deadline` with `what`.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let start = Instant::now();
    let mut last_err = String::new();
    let mut delay = Duration::from_millis(200);
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = format!(" (last error: {e})"),
        }
        if start.elapsed() > deadline {
            return Err(miette!(
                "timed out after {} s waiting until {what}{last_err}",
                deadline.as_secs()
            ));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 3 / 2).min(Duration::from_secs(2));
    }
}

struct MemberHealthy;

#[async_trait]
impl Gate for MemberHealthy {
    async fn wait_healthy(&self, ctx: &Ctx, host: &str) -> Result<()> {
        let h = ctx.host(host)?;
        let s = ctx.session(host)?;
        let cmd = etcdctl(ctx, host, &[client_url(ctx, &h.address)], "endpoint health");
        wait_until(
            &format!("etcd member {host} is healthy"),
            Duration::from_secs(90),
            || async { Ok(s.exec(&cmd, None).await?.ok()) },
        )
        .await
    }
}

/// Wait until every member answers healthy (the cluster has quorum and all members).
pub async fn wait_cluster_healthy(ctx: &Ctx) -> Result<()> {
    let members = ctx.inv.group_hosts(Group::Etcd);
    if let Some(first) = members.first() {
        ctx.observe(&first.name, "waiting until every etcd member is healthy");
    }
    wait_until(
        &format!("all {} etcd members are healthy", members.len()),
        Duration::from_secs(120),
        || async { check_cluster_healthy(ctx).await.map(|()| true) },
    )
    .await
}

/// One quick health check of every member (no waiting).
pub async fn check_cluster_healthy(ctx: &Ctx) -> Result<()> {
    let members = ctx.inv.group_hosts(Group::Etcd);
    let Some(first) = members.first() else {
        return Ok(());
    };
    let s = ctx.session(&first.name)?;
    let eps: Vec<String> = members
        .iter()
        .map(|m| client_url(ctx, &m.address))
        .collect();
    let out = s
        .exec(&etcdctl(ctx, &first.name, &eps, "endpoint health"), None)
        .await?;
    if out.ok() {
        Ok(())
    } else {
        Err(miette!(
            "{}",
            (out.stdout_str() + &out.stderr_str()).trim().to_string()
        ))
    }
}

#[async_trait]
impl Phase for Etcd {
    fn name(&self) -> &str {
        "etcd"
    }
    async fn plan(&self, ctx: &Ctx) -> Result<PhasePlan> {
        Ok(PhasePlan {
            phase: "etcd".into(),
            hosts: plan_roles(ctx, &["etcd".to_string()], false).await?,
        })
    }
    async fn apply(&self, ctx: &Ctx, plan: &PhasePlan) -> Result<()> {
        // A new member's start blocks until a quorum is up, so members start without
        // waiting (all at once) and the phase then waits for health; restarts of running
        // members go one at a time, each gated on that member's health.
        let hosts: Vec<HostPlan> = plan
            .hosts
            .iter()
            .map(|hp| HostPlan {
                host: hp.host.clone(),
                changes: hp
                    .changes
                    .iter()
                    .map(|c| match c {
                        Change::Unit {
                            unit,
                            action: UnitAction::Start,
                            reason,
                        } => Change::Command {
                            command: format!(
                                "systemctl start --no-block {u} && rm -f {PENDING_DIR}/{u}",
                                u = sh_quote(unit)
                            ),
                            reason: reason.clone(),
                        },
                        other => other.clone(),
                    })
                    .collect(),
            })
            .collect();
        apply_host_plans(
            ctx,
            &hosts,
            &RestartPolicy::Rolling(Some(Arc::new(MemberHealthy))),
        )
        .await?;
        wait_cluster_healthy(ctx).await
    }
}
