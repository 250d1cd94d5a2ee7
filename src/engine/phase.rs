//! Phases: ordered steps of a run. Each phase plans (probe + pure plan) and applies.

use super::change::{Change, UnitAction};
use super::exec::apply_changes;
use super::facts::{
    content_command, parse_contents, parse_probe, probe_command, split_extras, with_extras,
    HostFacts, ProbeRequest,
};
use super::plan::{plan_packages, plan_resources, Desired};
use super::render::{context, desired_for, role_applies};
use super::step::PlannedStep;
use super::{bounded, Ctx};
use async_trait::async_trait;
use miette::{miette, Result};
use serde::Serialize;

/// The plan of one host in one phase.
#[derive(Debug, Clone, Serialize)]
pub struct HostPlan {
    pub host: String,
    pub changes: Vec<Change>,
}

/// The plan of one phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhasePlan {
    pub phase: String,
    pub hosts: Vec<HostPlan>,
    /// Orchestration steps, run in this order after the hosts' own changes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<PlannedStep>,
}

impl PhasePlan {
    /// A plan of host changes only.
    pub fn new(phase: &str, hosts: Vec<HostPlan>) -> Self {
        PhasePlan {
            phase: phase.to_string(),
            hosts,
            steps: Vec::new(),
        }
    }
    /// Number of real changes: host changes and steps that change something (not deferred
    /// notes, waits or gates).
    pub fn change_count(&self) -> usize {
        self.hosts
            .iter()
            .map(|h| h.changes.iter().filter(|c| !c.is_deferred()).count())
            .sum::<usize>()
            + self.steps.iter().filter(|s| s.step.is_change()).count()
    }
    pub fn is_empty(&self) -> bool {
        self.hosts.iter().all(|h| h.changes.is_empty()) && self.steps.is_empty()
    }
}

#[async_trait]
pub trait Phase: Send + Sync {
    fn name(&self) -> &str;
    /// Read-only: probe the hosts and compute the changes.
    async fn plan(&self, ctx: &Ctx) -> Result<PhasePlan>;
    /// Execute a plan made by `plan` in this same run.
    async fn apply(&self, ctx: &Ctx, plan: &PhasePlan) -> Result<()>;
    /// Read-only commands this phase's plan will run on `host`, as `(tag, command)`: while
    /// phases are planned together they ride along in the host's one shared probe, and the
    /// phase reads their output with [`Ctx::probed_extra`] instead of a round trip of its own.
    fn probe_extras(&self, _ctx: &Ctx, _host: &str) -> Vec<(String, String)> {
        Vec::new()
    }
    /// Paths beyond its roles' that this phase's plan reads on `host` (files it writes itself,
    /// such as the bundle's index): while phases are planned together the shared probe stats
    /// and hashes them too, so that [`probe`] answers the phase from it.
    fn probe_paths(&self, _ctx: &Ctx, _host: &str) -> Vec<String> {
        Vec::new()
    }
    /// Run by `apply` after the phase converged, even when it had nothing to change
    /// (end-to-end checks such as the verify phase); `changed` says whether this or an earlier
    /// phase of the run changed anything. Never run by `check`.
    async fn after_apply(&self, _ctx: &Ctx, _changed: bool) -> Result<()> {
        Ok(())
    }
}

/// A phase made of role data: directories, files, sysctls, units (not packages).
pub struct RolePhase {
    pub name: String,
    pub roles: Vec<String>,
}

impl RolePhase {
    pub fn new(name: &str, roles: &[&str]) -> Self {
        RolePhase {
            name: name.to_string(),
            roles: roles.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// Render every role of `roles` that applies to `host` into one Desired.
pub fn desired_for_host(ctx: &Ctx, roles: &[String], host_name: &str) -> Result<Desired> {
    let host = ctx.host(host_name)?;
    let vars = ctx.vars_for(host_name);
    let tctx = context(&ctx.inv, host, &vars);
    let mut d = Desired::default();
    for r in roles {
        let Some(spec) = ctx.roles.role(r)? else {
            continue;
        };
        if !role_applies(&spec, &ctx.inv, host) {
            continue;
        }
        let one = desired_for(&ctx.roles, r, &spec, &tctx, host)?;
        d.dirs.extend(one.dirs);
        d.files.extend(one.files);
        d.packages.extend(one.packages);
        d.sysctls.extend(one.sysctls);
        d.units.extend(one.units);
    }
    Ok(d)
}

/// Probe what `desired` needs on one host (two round trips at most). While phases are planned
/// together, a host is probed once for every role at the first request, and each phase reads
/// its part from that (when it covers the phase's request).
pub async fn probe(ctx: &Ctx, host: &str, desired: &Desired) -> Result<HostFacts> {
    if let Some(cell) = ctx.planning_facts(host) {
        let got = cell
            .get_or_try_init(|| async {
                // Every role that renders for this host now (a role that needs a value not
                // known yet is left to its phase's own probe).
                let mut all = Desired::default();
                for r in ctx.roles.role_names() {
                    if let Ok(d) = desired_for_host(ctx, std::slice::from_ref(&r), host) {
                        all.dirs.extend(d.dirs);
                        all.files.extend(d.files);
                        all.packages.extend(d.packages);
                        all.sysctls.extend(d.sysctls);
                        all.units.extend(d.units);
                    }
                }
                let extras = ctx.planned_extras(host);
                let mut req = all.probe_request();
                req.paths.extend(ctx.planned_paths(host));
                let facts = probe_host(ctx, host, &all, &req, &extras).await?;
                Ok::<_, miette::Report>((req, facts))
            })
            .await?;
        let (req, facts) = got;
        let contents_known = desired
            .differing_files(facts)
            .iter()
            .all(|p| facts.paths.get(p).is_some_and(|f| f.content.is_some()));
        if req.covers(&desired.probe_request()) && contents_known {
            return Ok(facts.clone());
        }
    }
    probe_host(ctx, host, desired, &desired.probe_request(), &[]).await
}

/// Probe `req` (at least what `desired` needs) and run `extras` in the same round trip.
async fn probe_host(
    ctx: &Ctx,
    host: &str,
    desired: &Desired,
    req: &ProbeRequest,
    extras: &[(String, String)],
) -> Result<HostFacts> {
    let s = ctx.session(host)?;
    let t0 = unix_now();
    let out = s
        .exec(&with_extras(&probe_command(req), extras), None)
        .await?;
    let t1 = unix_now();
    let (main, extra) = split_extras(&out.stdout_str());
    let mut facts = parse_probe(req, &main)
        .map_err(|e| miette!("{host}: cannot read the host's state: {e}"))?;
    facts.extra = extra;
    facts.probed_at = Some((t0, t1));
    let differing = desired.differing_files(&facts);
    if !differing.is_empty() {
        let out = s.exec(&content_command(&differing), None).await?;
        let contents = parse_contents(&differing, &out.stdout_str())
            .map_err(|e| miette!("{host}: cannot read current files: {e}"))?;
        for (p, c) in contents {
            if let Some(f) = facts.paths.get_mut(&p) {
                f.content = Some(c);
            }
        }
    }
    Ok(facts)
}

/// Hosts to which any of `roles` applies, in inventory order.
pub fn hosts_for_roles(ctx: &Ctx, roles: &[String]) -> Result<Vec<String>> {
    let mut specs = Vec::new();
    for r in roles {
        if let Some(s) = ctx.roles.role(r)? {
            specs.push(s);
        }
    }
    Ok(ctx
        .hosts
        .iter()
        .filter(|h| specs.iter().any(|s| role_applies(s, &ctx.inv, h)))
        .map(|h| h.name.clone())
        .collect())
}

/// Plan the role resources of a set of hosts, in parallel (bounded by --forks).
pub async fn plan_roles(ctx: &Ctx, roles: &[String], packages: bool) -> Result<Vec<HostPlan>> {
    let hosts = hosts_for_roles(ctx, roles)?;
    let mut futs = Vec::new();
    for h in hosts {
        futs.push(async move {
            ctx.observe(&h, "probing");
            let desired = desired_for_host(ctx, roles, &h)?;
            let facts = probe(ctx, &h, &desired).await?;
            let changes = if packages {
                plan_packages(&desired.packages, &facts)
            } else {
                plan_resources(&desired, &facts, &ctx.secret_values)
            };
            Ok::<_, miette::Report>(HostPlan { host: h, changes })
        });
    }
    bounded(ctx.forks, futs).await
}

fn is_restart(c: &Change) -> bool {
    matches!(
        c,
        Change::Unit {
            action: UnitAction::Restart | UnitAction::Reload,
            ..
        }
    )
}

/// Apply host plans in parallel: everything but restarts, then the restarts (orchestrated
/// restarts, one host at a time behind a gate, are steps instead: see [`super::step`]).
pub async fn apply_host_plans(ctx: &Ctx, plans: &[HostPlan]) -> Result<()> {
    let mut futs = Vec::new();
    for p in plans {
        if p.changes.is_empty() {
            continue;
        }
        let host = p.host.clone();
        let now: Vec<Change> = p
            .changes
            .iter()
            .filter(|c| !is_restart(c))
            .cloned()
            .collect();
        futs.push(async move {
            ctx.observe(&host, "applying");
            let s = ctx.session(&host)?;
            apply_changes(s, &now).await
        });
    }
    bounded(ctx.forks, futs).await?;
    let mut restarts: Vec<(String, Vec<Change>)> = Vec::new();
    for p in plans {
        let r: Vec<Change> = p
            .changes
            .iter()
            .filter(|c| is_restart(c))
            .cloned()
            .collect();
        if !r.is_empty() {
            restarts.push((p.host.clone(), r));
        }
    }
    let mut futs = Vec::new();
    for (h, rs) in restarts {
        futs.push(async move { restart_all(ctx, &h, &rs).await });
    }
    bounded(ctx.forks, futs).await?;
    Ok(())
}

async fn restart_all(ctx: &Ctx, host: &str, rs: &[Change]) -> Result<()> {
    let s = ctx.session(host)?;
    for c in rs {
        if let Change::Unit { unit, action, .. } = c {
            ctx.observe(host, &format!("{} {unit}", action.verb()));
            apply_changes(s, std::slice::from_ref(c)).await?;
        }
    }
    Ok(())
}

#[async_trait]
impl Phase for RolePhase {
    fn name(&self) -> &str {
        &self.name
    }
    async fn plan(&self, ctx: &Ctx) -> Result<PhasePlan> {
        Ok(PhasePlan {
            steps: Vec::new(),
            phase: self.name.clone(),
            hosts: plan_roles(ctx, &self.roles, false).await?,
        })
    }
    async fn apply(&self, ctx: &Ctx, plan: &PhasePlan) -> Result<()> {
        apply_host_plans(ctx, &plan.hosts).await
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
