//! Operations: what the commands do, given parsed options. No printing here except through
//! the observer and the returned values.

use crate::engine::phase::{Phase, PhasePlan};
use crate::engine::roles::RoleSource;
use crate::engine::{self, Ctx, Observer, PhaseOutcome};
use crate::inventory::{self, Inventory, Warning};
use crate::ssh::ConnectOptions;
use miette::{miette, Result};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// Options shared by `check` and `apply`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub inventory: PathBuf,
    pub roles_dir: Option<PathBuf>,
    pub forks: usize,
    pub connect: ConnectOptions,
    /// Only these phases (empty: all).
    pub only: Vec<String>,
}

/// The ordered phases of a full run.
pub fn phases(inv: &Inventory) -> Vec<Box<dyn Phase>> {
    crate::phases::all(inv)
}

pub fn phase_names(inv: &Inventory) -> Vec<String> {
    phases(inv).iter().map(|p| p.name().to_string()).collect()
}

fn select(inv: &Inventory, only: &[String]) -> Result<Vec<Box<dyn Phase>>> {
    let all = phases(inv);
    if only.is_empty() {
        return Ok(all);
    }
    let names: Vec<String> = all.iter().map(|p| p.name().to_string()).collect();
    for o in only {
        if !names.contains(o) {
            return Err(miette!(
                help = format!("phases are: {}", names.join(", ")),
                "unknown phase {o:?} in --only"
            ));
        }
    }
    Ok(all
        .into_iter()
        .filter(|p| only.iter().any(|o| o == p.name()))
        .collect())
}

/// Load the inventory, connect to every host and build the run context.
pub async fn prepare(
    opts: &RunOptions,
    observer: Arc<dyn Observer>,
) -> Result<(Ctx, Vec<Warning>, Vec<Box<dyn Phase>>)> {
    let (inv, warnings) = inventory::load(&opts.inventory)?;
    let phases = select(&inv, &opts.only)?;
    let roles = RoleSource::new(opts.roles_dir.clone());
    // Every role must load and every template render before any host is contacted.
    for name in roles.role_names() {
        roles.role(&name)?;
    }
    let hosts = inv.hosts();
    observer.message(&format!("connecting to {} hosts", hosts.len()));
    let sessions = engine::connect_all(&hosts, &opts.connect, opts.forks.max(1)).await?;
    let (vars, host_vars, secret_values) = crate::phases::run_vars(&inv)?;
    let ctx = Ctx {
        inv,
        hosts,
        sessions,
        roles,
        vars: RwLock::new(vars),
        host_vars: RwLock::new(host_vars),
        secret_values,
        forks: opts.forks.max(1),
        observer,
    };
    Ok((ctx, warnings, phases))
}

/// `pgdeploy check`: the plan of every phase.
pub async fn check(
    opts: &RunOptions,
    observer: Arc<dyn Observer>,
) -> Result<(Vec<PhasePlan>, Vec<Warning>)> {
    let (ctx, warnings, phases) = prepare(opts, observer).await?;
    let plans = engine::check(&ctx, &phases).await;
    close(&ctx).await;
    Ok((plans?, warnings))
}

/// `pgdeploy apply`: execute the plan phase by phase.
pub async fn apply(
    opts: &RunOptions,
    observer: Arc<dyn Observer>,
    on_plan: &(dyn Fn(&PhasePlan) + Sync),
) -> Result<(Vec<PhaseOutcome>, Vec<Warning>)> {
    let (ctx, warnings, phases) = prepare(opts, observer).await?;
    let out = engine::apply(&ctx, &phases, on_plan).await;
    close(&ctx).await;
    Ok((out?, warnings))
}

async fn close(ctx: &Ctx) {
    for s in ctx.sessions.values() {
        s.close().await;
    }
}
