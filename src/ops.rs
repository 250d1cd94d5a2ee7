//! Operations: what the commands do, given parsed options. No printing here except through
//! the observer and the returned values.

use crate::engine::phase::{Phase, PhasePlan};
use crate::engine::roles::RoleSource;
use crate::engine::{self, Ctx, Observer, PhaseOutcome};
use crate::inventory::{self, Inventory, Warning};
use crate::journal::{Outcome, Recorder, Run};
use crate::ssh::ConnectOptions;
use miette::{miette, Result};
use serde_json::Value;
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
    /// Override the inventory's pinned PostgreSQL minor (`pgdeploy upgrade --postgres`).
    pub postgres_version: Option<String>,
    /// Upgrade bounds (`pgdeploy upgrade`).
    pub max_lag_bytes: Option<u64>,
    pub max_xact_age_secs: Option<u64>,
    /// Allow changing a running etcd cluster to an even number of members.
    pub allow_even_etcd: bool,
    /// Restore the cluster from the repository to this target (`pgdeploy restore`): the run
    /// is the restore alone.
    pub restore: Option<crate::phases::restore::Target>,
}

impl RunOptions {
    /// The command these options run, as the journal records it.
    pub fn command(&self) -> &'static str {
        if self.restore.is_some() {
            "restore"
        } else if self.postgres_version.is_some() {
            "upgrade"
        } else {
            "apply"
        }
    }

    /// The arguments that change what a run does, for the journal.
    pub fn journal_args(&self) -> Value {
        serde_json::json!({
            "only": self.only,
            "forks": self.forks,
            "roles_dir": self.roles_dir,
            "known_hosts": self.connect.known_hosts,
            "accept_new_host_keys": self.connect.accept_new_host_keys,
            "postgres": self.postgres_version,
            "max_lag_bytes": self.max_lag_bytes,
            "max_xact_age_secs": self.max_xact_age_secs,
            "restore": self.restore,
        })
    }

    pub fn new(inventory: PathBuf) -> Self {
        RunOptions {
            inventory,
            roles_dir: None,
            forks: 10,
            connect: ConnectOptions::default(),
            only: vec![],
            postgres_version: None,
            max_lag_bytes: None,
            max_xact_age_secs: None,
            allow_even_etcd: false,
            restore: None,
        }
    }
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
    let (ctx, phases) = prepare_loaded(opts, inv, observer).await?;
    Ok((ctx, warnings, phases))
}

/// `prepare` with the inventory already loaded.
async fn prepare_loaded(
    opts: &RunOptions,
    mut inv: Inventory,
    observer: Arc<dyn Observer>,
) -> Result<(Ctx, Vec<Box<dyn Phase>>)> {
    if let Some(v) = &opts.postgres_version {
        let ok = v.split('.').count() == 2
            && v.split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
        if !ok {
            return Err(miette!("--postgres {v:?}: give MAJOR.MINOR, like 15.20"));
        }
        if v.split('.').next() != inv.postgres.version.split('.').next() {
            return Err(miette!(
                help = "a major upgrade needs pg_upgrade and is not a rolling operation",
                "--postgres {v}: only minor upgrades within PostgreSQL {} are supported",
                inv.postgres.version.split('.').next().unwrap_or("")
            ));
        }
        inv.postgres.version = v.clone();
    }
    let phases: Vec<Box<dyn Phase>> = match &opts.restore {
        Some(t) => vec![Box::new(crate::phases::restore::Restore::new(t.clone()))],
        None => select(&inv, &opts.only)?,
    };
    let roles = RoleSource::new(opts.roles_dir.clone());
    // Every role must load and every template render before any host is contacted.
    for name in roles.role_names() {
        roles.role(&name)?;
    }
    // Every declared password must be readable before any host is contacted.
    let role_passwords = crate::catalog::load_passwords(&inv)?;
    let hosts = inv.hosts_to_connect();
    observer.message(&format!("connecting to {} hosts", hosts.len()));
    let sessions = engine::connect_all(&hosts, &opts.connect, opts.forks.max(1)).await?;
    let (vars, host_vars, mut secret_values) = crate::phases::run_vars(&inv)?;
    secret_values.extend(role_passwords.values().map(|p| p.expose().to_string()));
    let mut vars = vars;
    if let Value::Object(m) = &mut vars {
        m.insert(
            "upgrade".into(),
            serde_json::json!({
                "max_lag_bytes": opts.max_lag_bytes,
                "max_xact_age_secs": opts.max_xact_age_secs,
            }),
        );
        m.insert("allow_even_etcd".into(), Value::Bool(opts.allow_even_etcd));
    }
    let ctx = Ctx {
        inv,
        hosts,
        sessions,
        roles,
        vars: RwLock::new(vars),
        host_vars: RwLock::new(host_vars),
        secret_values,
        role_passwords,
        forks: opts.forks.max(1),
        observer,
        connect: opts.connect.clone(),
        planning: Default::default(),
    };
    if phases
        .iter()
        .any(|p| matches!(p.name(), "packages" | "patroni" | "verify"))
    {
        if let Err(e) = crate::phases::resolve_postgres_version(&ctx).await {
            // A host of another release (say a Debian 12 host under an inventory that defaults
            // to Debian 13) explains a missing PostgreSQL build better: say that first.
            if phases.iter().any(|p| p.name() == "preflight") {
                crate::phases::preflight::Preflight.plan(&ctx).await?;
            }
            return Err(e);
        }
    }
    Ok((ctx, phases))
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

/// The run was stopped by `interrupt` (Ctrl-C) before it ended.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("interrupted: the run stopped before it ended (run {run})")]
#[diagnostic(help(
    "a phase may be part-way done, and a command already started on a host may still finish there; `pgdeploy history {inventory} last` shows what was changed, and `pgdeploy apply` finishes the job"
))]
pub struct Interrupted {
    pub run: String,
    pub inventory: String,
}

/// `pgdeploy apply` (and `upgrade`): execute the plan phase by phase, recorded in the run
/// journal (see [`crate::journal`]). The run stops when `interrupt` completes (the CLI passes
/// Ctrl-C): the journal then ends the run as interrupted and the error is [`Interrupted`].
pub async fn apply_until(
    opts: &RunOptions,
    observer: Arc<dyn Observer>,
    on_plan: &(dyn Fn(&PhasePlan) + Sync),
    interrupt: impl std::future::Future<Output = ()>,
) -> Result<(Vec<PhaseOutcome>, Vec<Warning>)> {
    let (inv, mut warnings) = inventory::load(&opts.inventory)?;
    // The journal is written before any host is contacted; if it cannot be, nothing runs.
    let run = Arc::new(Run::start(
        &inv.state_dir(),
        opts.command(),
        &opts.inventory,
        opts.journal_args(),
    )?);
    let observer: Arc<dyn Observer> = Arc::new(Recorder::new(observer, run.clone()));
    let work = async {
        let (ctx, phases) = prepare_loaded(opts, inv, observer).await?;
        run.add_secrets(&ctx.secret_values);
        let out = engine::apply(&ctx, &phases, on_plan).await;
        close(&ctx).await;
        out
    };
    let result = tokio::select! {
        r = work => Some(r),
        _ = interrupt => None,
    };
    match &result {
        Some(Ok(_)) => run.finish(Outcome::Ok, None),
        Some(Err(e)) => run.finish(Outcome::Failed, Some(&e.to_string())),
        None => run.finish(Outcome::Interrupted, Some("interrupted (Ctrl-C)")),
    }
    if let Some(e) = run.write_error() {
        warnings.push(Warning(format!(
            "the run journal is incomplete: cannot write {e}"
        )));
    }
    match result {
        Some(r) => Ok((r?, warnings)),
        None => Err(Interrupted {
            run: run.id().to_string(),
            inventory: opts.inventory.display().to_string(),
        }
        .into()),
    }
}

/// The upgrade target when `--postgres` is not given.
#[derive(Debug, Clone, PartialEq)]
pub enum UpgradeTarget {
    /// The newest minor of the inventory's major in the bundle, newer than the inventory's.
    Bundled(String),
    /// The bundle has nothing newer, but the Debian sources it was built from offer this minor.
    NotBundled(String),
    /// Nothing newer in the bundle nor in the sources it was built from (as of its build).
    Newest,
}

/// The upgrade target when `--postgres` is not given: the newest minor of the inventory's
/// PostgreSQL major in the bundle, else what the bundle's apt state (the sources as of the
/// bundle's build) offers. Read on this machine: no host is contacted, nothing downloaded.
pub fn upgrade_target(inv: &Inventory) -> Result<UpgradeTarget> {
    if inv.packages.source != inventory::PackageSource::Bundle {
        return Err(miette!(
            help = "give the minor to upgrade to, e.g. --postgres 17.13",
            "with `packages.source: apt` pgdeploy does not know which minors the hosts' sources \
             offer"
        ));
    }
    let dir = inv.resolve_path(&inv.packages.bundle_dir);
    let m = crate::bundle::Manifest::load(&dir).map_err(|e| {
        miette!(
            help = format!("build it first: pgdeploy bundle {}", inv.path.display()),
            "no usable package bundle in {}: {e}",
            dir.display()
        )
    })?;
    let major = inv.postgres.major().to_string();
    let current = minor_key(&inv.postgres.version);
    let newer = |vs: Vec<String>| {
        vs.into_iter()
            .filter(|v| minor_key(v) > current)
            .max_by_key(|v| minor_key(v))
    };
    let bundled = m
        .postgres
        .iter()
        .filter(|p| p.major == major)
        .map(|p| p.version.clone())
        .collect();
    if let Some(v) = newer(bundled) {
        return Ok(UpgradeTarget::Bundled(v));
    }
    let apt = crate::bundle::PrivateApt::new(
        &dir.join(crate::bundle::APT_STATE_DIR),
        crate::bundle::ARCHITECTURE,
    );
    let package = format!("postgresql-{major}");
    let offered = apt
        .madison(&package)
        .map(|out| crate::bundle::madison_versions(&out, &package))
        .unwrap_or_default()
        .into_iter()
        .map(|debian| debian.split('-').next().unwrap_or("").to_string())
        .collect();
    Ok(match newer(offered) {
        Some(v) => UpgradeTarget::NotBundled(v),
        None => UpgradeTarget::Newest,
    })
}

/// (major, minor) of a "MAJOR.MINOR" for ordering; unparsable parts count as 0.
fn minor_key(v: &str) -> (u32, u32) {
    let mut it = v.split('.').map(|p| p.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Replace the pinned PostgreSQL version in the inventory file, keeping everything else
/// (comments, layout) as it is. False when the file pins no `postgres.version` (nothing written).
pub fn pin_postgres_version(path: &std::path::Path, new: &str) -> Result<bool> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| miette!("cannot read {}: {e}", path.display()))?;
    let mut in_postgres = false;
    let mut changed = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        if indent == 0 && !line.trim().is_empty() && !line.trim_start().starts_with('#') {
            in_postgres = line.trim_start().starts_with("postgres:");
        }
        if in_postgres && !changed && indent > 0 && line.trim_start().starts_with("version:") {
            let comment = line.find(" #").map(|i| &line[i..]).unwrap_or("");
            out.push(format!("{}version: \"{new}\"{comment}", &line[..indent]));
            changed = true;
            continue;
        }
        out.push(line.to_string());
    }
    if changed {
        let mut body = out.join("\n");
        if text.ends_with('\n') {
            body.push('\n');
        }
        let tmp = path.with_extension("yaml.pgdeploy-tmp");
        std::fs::write(&tmp, body).map_err(|e| miette!("cannot write {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| miette!("cannot replace {}: {e}", path.display()))?;
    }
    Ok(changed)
}

async fn close(ctx: &Ctx) {
    for s in ctx.sessions.values() {
        s.close().await;
    }
}
