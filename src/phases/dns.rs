//! DNS: the inventory's name holds exactly the addresses of the HAProxy hosts that pass the
//! health check (port 5000 answers and routes to one leader). Never an empty record set,
//! never the last healthy address removed; an unchanged set sends no update at all.

use crate::dns::{check_all, haproxy_targets, plan, sync, DnsConfig, HealthPorts, HostHealth};
use crate::engine::change::Change;
use crate::engine::phase::{HostPlan, Phase, PhasePlan};
use crate::engine::Ctx;
use async_trait::async_trait;
use miette::{miette, Result};
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
        let mut changes = Vec::new();
        if !p.add.is_empty() || !p.remove.is_empty() || p.ttl_change.is_some() {
            changes.push(Change::Dns {
                name: cfg.name.clone(),
                add: p.add.iter().map(|a| a.to_string()).collect(),
                remove: p.remove.iter().map(|a| a.to_string()).collect(),
                ttl: p.ttl,
            });
        }
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
            steps: Vec::new(),
            phase: "dns".into(),
            hosts: vec![HostPlan {
                host: format!("{} @ {}", cfg.zone, cfg.server),
                changes,
            }],
        })
    }

    async fn apply(&self, ctx: &Ctx, _plan: &PhasePlan) -> Result<()> {
        let Some(cfg) = config(ctx)? else {
            return Ok(());
        };
        let provider = cfg.provider().map_err(miette::Report::new)?;
        let h = health(ctx).await?;
        let report = sync(provider.as_ref(), &h, cfg.ttl, false)
            .await
            .map_err(|e| {
                miette!(
                    help = "the records were left as they were",
                    "DNS update of {}: {e}",
                    cfg.name
                )
            })?;
        for n in report.notes {
            ctx.observer.message(&format!("dns: {n}"));
        }
        Ok(())
    }
}
