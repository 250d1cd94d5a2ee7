//! DNS: the inventory's name holds exactly the addresses of the HAProxy hosts that pass the
//! health check (port 5000 answers and routes to one leader). Never an empty record set,
//! never the last healthy address removed; an unchanged set sends no update at all.

use crate::dns::plan::{DnsPlan, RecordSet};
use crate::dns::{check_all, haproxy_targets, plan, DnsConfig, HealthPorts, HostHealth};
use crate::engine::change::Change;
use crate::engine::phase::{HostPlan, Phase, PhasePlan};
use crate::engine::step::{PlannedStep, Step};
use crate::engine::Ctx;
use async_trait::async_trait;
use miette::{miette, Result};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

pub struct Dns;

fn ports(ctx: &Ctx) -> HealthPorts {
    HealthPorts {
        primary: ctx.inv.haproxy.primary_port,
        stats: ctx.inv.haproxy.stats_port,
        timeout: Duration::from_secs(2),
    }
}

async fn health(ctx: &Ctx) -> Result<Vec<HostHealth>> {
    let targets = haproxy_targets(&ctx.inv).map_err(miette::Report::new)?;
    Ok(check_all(&targets, ports(ctx)).await)
}

fn config(ctx: &Ctx) -> Result<Option<DnsConfig>> {
    DnsConfig::from_inventory(&ctx.inv)
        .map_err(|e| miette!(help = "see the `dns` section of the inventory", "{e}"))
}

#[async_trait]
impl Phase for Dns {
    fn name(&self) -> &str {
        "dns"
    }

    async fn plan(&self, ctx: &Ctx) -> Result<PhasePlan> {
        let Some(cfg) = config(ctx)? else {
            return Ok(PhasePlan {
                steps: Vec::new(),
                phase: "dns".into(),
                hosts: vec![],
            });
        };
        let provider = cfg.provider().map_err(miette::Report::new)?;
        let h = health(ctx).await?;
        let current = provider.query().await.map_err(miette::Report::new)?;
        let healthy: Vec<IpAddr> = h
            .iter()
            .filter(|x| x.healthy)
            .flat_map(|x| x.publish.clone())
            .collect();
        let all: Vec<IpAddr> = h.iter().flat_map(|x| x.publish.clone()).collect();
        let p = plan(&current, &healthy, &all, cfg.ttl);
        let where_ = format!("{} @ {}", cfg.zone, cfg.server);
        let mut steps = Vec::new();
        if !p.is_empty() {
            steps.push(PlannedStep::new(
                &where_,
                Step::DnsRecordSet {
                    name: cfg.name.clone(),
                    before: current.addrs.iter().map(|a| a.to_string()).collect(),
                    add: p.add.iter().map(|a| a.to_string()).collect(),
                    remove: p.remove.iter().map(|a| a.to_string()).collect(),
                    ttl: p.ttl,
                    ttl_from: p.ttl_change.map(|(old, _)| old),
                },
            ));
        }
        let mut changes = Vec::new();
        for w in &p.warnings {
            let unhealthy: Vec<String> = h
                .iter()
                .filter(|x| !x.healthy)
                .map(|x| format!("{}: {}", x.name, x.reason))
                .collect();
            changes.push(Change::Deferred {
                what: w.clone(),
                why: if unhealthy.is_empty() {
                    "the record set follows the HAProxy hosts once they route to a leader".into()
                } else {
                    format!("unhealthy: {}", unhealthy.join("; "))
                },
            });
        }
        Ok(PhasePlan {
            steps,
            phase: "dns".into(),
            hosts: vec![HostPlan {
                host: where_,
                changes,
            }],
        })
    }

    async fn apply(&self, ctx: &Ctx, plan: &PhasePlan) -> Result<()> {
        super::steps::run_all(ctx, &plan.steps).await
    }
}

/// Run a planned record-set change: read the records again; if they already are what the plan
/// wants, nothing is sent; if they are neither that nor what the plan saw, the run stops;
/// otherwise one update, with the planned records as its prerequisite.
pub async fn record_set_step(
    ctx: &Ctx,
    before: &[String],
    add: &[String],
    remove: &[String],
    ttl: u32,
    ttl_from: Option<u32>,
) -> Result<()> {
    let cfg = config(ctx)?.ok_or_else(|| miette!("the inventory has no `dns` section"))?;
    let provider = cfg.provider().map_err(miette::Report::new)?;
    let parse = |v: &[String]| -> Result<BTreeSet<IpAddr>> {
        v.iter()
            .map(|a| {
                a.parse::<IpAddr>()
                    .map_err(|e| miette!("address {a} in the plan: {e}"))
            })
            .collect()
    };
    let (before, add, remove) = (parse(before)?, parse(add)?, parse(remove)?);
    let mut after = before.clone();
    after.retain(|a| !remove.contains(a));
    after.extend(add.iter().copied());
    let current = provider.query().await.map_err(miette::Report::new)?;
    if current.addrs == after && (ttl_from.is_none() || current.ttl == Some(ttl)) {
        return Ok(());
    }
    if current.addrs != before {
        return Err(super::steps::moved(format!(
            "the records of {} are {current} now; the plan saw {}",
            cfg.name,
            RecordSet::new(before, None)
        )));
    }
    let p = DnsPlan {
        add: add.into_iter().collect(),
        remove: remove.into_iter().collect(),
        ttl_change: ttl_from.map(|old| (old, ttl)),
        ttl,
        warnings: Vec::new(),
    };
    provider.apply(&current, &p).await.map_err(|e| {
        if e.is_prerequisite_failure() {
            super::steps::moved(format!(
                "the records of {} changed during the update: {e}",
                cfg.name
            ))
        } else {
            miette!(
                help = "the records were left as they were",
                "DNS update of {}: {e}",
                cfg.name
            )
        }
    })
}
