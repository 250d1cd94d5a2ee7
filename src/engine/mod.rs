//! The engine: probe (read-only) -> plan (pure) -> apply (the only mutator).
//!
//! `check` and `apply` call the same `Phase::plan`, so they cannot disagree; after `apply`
//! each phase is planned again and must be empty, or the run fails with "did not converge".

pub mod change;
pub mod exec;
pub mod facts;
pub mod phase;
pub mod plan;
pub mod record;
pub mod render;
pub mod roles;
pub mod step;

use crate::inventory::{Host, Inventory};
use crate::ssh::{ConnectOptions, Output, Session};
use facts::{HostFacts, ProbeRequest};
use futures::stream::{self, StreamExt};
use miette::{miette, Result};
use phase::{Phase, PhasePlan};
use roles::RoleSource;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Progress events, rendered by the CLI edge (bars on a terminal, lines otherwise).
pub trait Observer: Send + Sync {
    fn phase_started(&self, _phase: &str, _hosts: usize) {}
    fn host_status(&self, _host: &str, _status: &str) {}
    fn phase_finished(&self, _phase: &str, _changes: usize, _elapsed: Duration) {}
    fn message(&self, _text: &str) {}
    /// A change was made on a host (or failed): the run's journal records it. Called by the
    /// engine's primitives while a phase is applied (see [`record`]).
    fn change_done(&self, _done: &record::Done) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// Everything a run shares: inventory, connections, roles, generated values.
pub struct Ctx {
    pub inv: Inventory,
    pub hosts: Vec<Host>,
    pub sessions: BTreeMap<String, Session>,
    pub roles: RoleSource,
    /// Values merged into every template context (secrets, tls paths, resolved versions).
    pub vars: RwLock<Value>,
    /// Per-host values merged over `vars` (e.g. the host's certificate paths).
    pub host_vars: RwLock<BTreeMap<String, Value>>,
    /// Secret values to redact from any output.
    pub secret_values: Vec<String>,
    /// The declared login roles' passwords (from their files or variables), by role.
    pub role_passwords: BTreeMap<String, crate::secrets::Secret>,
    pub forks: usize,
    pub observer: Arc<dyn Observer>,
    /// How hosts are reached (also hosts found in the cluster but no longer in the inventory).
    pub connect: ConnectOptions,
    /// Read-only results shared by the phases while they are planned together (None otherwise).
    pub planning: Mutex<Option<PlanningCache>>,
}

type Shared<T> = Arc<tokio::sync::OnceCell<T>>;

/// How long a REST call through a host may take.
pub const REST_TIMEOUT: Duration = Duration::from_secs(3);

/// What phases planned at the same time share: one probe of every role per host, and the
/// output of read-only commands (cluster membership, Patroni's REST API).
#[derive(Default)]
pub struct PlanningCache {
    facts: HashMap<String, Shared<(ProbeRequest, HostFacts)>>,
    reads: HashMap<(String, String), Shared<Output>>,
    /// Every phase's read-only commands per host, run inside the shared probe.
    extras: HashMap<String, Vec<(String, String)>>,
    /// Every phase's paths beyond its roles' per host, probed in the shared probe too.
    paths: HashMap<String, Vec<String>>,
}

impl Ctx {
    pub fn host(&self, name: &str) -> Result<&Host> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| miette!("internal: unknown host {name}"))
    }
    pub fn session(&self, name: &str) -> Result<&Session> {
        self.sessions
            .get(name)
            .ok_or_else(|| miette!("{name}: not connected"))
    }
    pub fn vars(&self) -> Value {
        self.vars.read().map(|v| v.clone()).unwrap_or(Value::Null)
    }
    /// `vars` with the host's own values merged over them.
    pub fn vars_for(&self, host: &str) -> Value {
        let mut v = self.vars();
        if let Ok(hv) = self.host_vars.read() {
            if let Some(extra) = hv.get(host) {
                render::merge(&mut v, extra);
            }
        }
        v
    }
    /// Set (or with `Value::Null`, clear) a value for one host's templates.
    pub fn set_host_var(&self, host: &str, key: &str, value: Value) {
        if let Ok(mut hv) = self.host_vars.write() {
            let e = hv
                .entry(host.to_string())
                .or_insert_with(|| Value::Object(Default::default()));
            if let Value::Object(m) = e {
                if value.is_null() {
                    m.remove(key);
                } else {
                    m.insert(key.to_string(), value);
                }
            }
        }
    }
    /// Set a value visible to later templates, e.g. `set_var(&["postgres","debian_version"], ..)`.
    pub fn set_var(&self, path: &[&str], value: Value) {
        if let Ok(mut v) = self.vars.write() {
            let mut cur = &mut *v;
            for (i, k) in path.iter().enumerate() {
                if !cur.is_object() {
                    *cur = Value::Object(Default::default());
                }
                let Value::Object(m) = cur else { return };
                if i + 1 == path.len() {
                    m.insert(k.to_string(), value);
                    return;
                }
                cur = m
                    .entry(k.to_string())
                    .or_insert(Value::Object(Default::default()));
            }
        }
    }
    /// GET `path` from the HTTPS service at `address:port` as `host` reaches it (Patroni's REST
    /// API), through `host`'s SSH connection, verified against the cluster CA. The answer comes
    /// as an [`Output`]: status 0 and the body for a 2xx answer, else the HTTP status (or 1
    /// when there was no answer, with the reason on stderr). Shared between phases while they
    /// are planned together, like [`Ctx::read`].
    pub async fn https_get(
        &self,
        host: &str,
        address: &str,
        port: u16,
        path: &str,
    ) -> Result<Output> {
        let tls = self.ca_tls()?;
        self.https(host, tls, address, port, path, None).await
    }

    /// POST the JSON `body` to `path` of the HTTPS service at `address:port` as `host` reaches
    /// it, presenting `host`'s own certificate (etcd's JSON gateway, which wants a client
    /// certificate). Answers as [`Ctx::https_get`] does; shared while planning.
    pub async fn https_post_as_host(
        &self,
        host: &str,
        address: &str,
        port: u16,
        path: &str,
        body: &str,
    ) -> Result<Output> {
        let tls = self.host_tls(host)?;
        self.https(host, tls, address, port, path, Some(body)).await
    }

    async fn https(
        &self,
        host: &str,
        tls: Arc<rustls::ClientConfig>,
        address: &str,
        port: u16,
        path: &str,
        body: Option<&str>,
    ) -> Result<Output> {
        let key = match body {
            None => format!("\0GET https://{address}:{port}{path}"),
            Some(b) => format!("\0POST https://{address}:{port}{path} {b}"),
        };
        let cell = self.shared_read(host, &key);
        let s = self.session(host)?;
        let get = || async {
            Ok::<Output, crate::ssh::SshError>(
                match s
                    .http_request(
                        Some(tls.clone()),
                        address,
                        port,
                        path,
                        body.map(str::as_bytes),
                        REST_TIMEOUT,
                    )
                    .await
                {
                    Ok(r) => Output {
                        status: if r.ok() { 0 } else { u32::from(r.status) },
                        stdout: r.body,
                        stderr: Vec::new(),
                    },
                    // The service not answering is an answer here (a member that is down).
                    Err(e) => Output {
                        status: 1,
                        stdout: Vec::new(),
                        stderr: e.to_string().into_bytes(),
                    },
                },
            )
        };
        match cell {
            Some(c) => Ok(c.get_or_try_init(get).await?.clone()),
            None => Ok(get().await?),
        }
    }

    /// TLS client settings trusting the cluster CA and presenting `host`'s certificate.
    fn host_tls(&self, host: &str) -> Result<Arc<rustls::ClientConfig>> {
        let hv = self
            .host_vars
            .read()
            .map_err(|_| miette!("host variables poisoned"))?;
        let tls = hv
            .get(host)
            .map(|v| &v["tls"])
            .ok_or_else(|| miette!("{host}: no TLS material loaded"))?;
        let (Some(ca), Some(cert), Some(key)) = (
            tls["ca_pem"].as_str(),
            tls["cert_pem"].as_str(),
            tls["key_pem"].as_str(),
        ) else {
            return Err(miette!("{host}: no TLS material loaded"));
        };
        crate::ssh::tls_client_config(ca, cert, key).map_err(|e| miette!("{e}"))
    }

    /// TLS client settings trusting the cluster CA (from the run's host variables).
    fn ca_tls(&self) -> Result<Arc<rustls::ClientConfig>> {
        let hv = self
            .host_vars
            .read()
            .map_err(|_| miette!("host variables poisoned"))?;
        let pem = hv
            .values()
            .find_map(|v| v["tls"]["ca_pem"].as_str().map(str::to_string))
            .ok_or_else(|| miette!("the cluster CA is not loaded"))?;
        crate::ssh::tls_config(&pem).map_err(|e| miette!("{e}"))
    }

    /// The shared result of the read `key` on `host` while planning (None otherwise).
    fn shared_read(&self, host: &str, key: &str) -> Option<Shared<Output>> {
        self.planning.lock().ok().and_then(|mut p| {
            p.as_mut().map(|p| {
                p.reads
                    .entry((host.to_string(), key.to_string()))
                    .or_default()
                    .clone()
            })
        })
    }

    /// Run a read-only command on `host`; while phases are planned together, the same command
    /// on the same host runs once and its output is shared.
    pub async fn read(&self, host: &str, cmd: &str) -> Result<Output> {
        let cell = self.shared_read(host, cmd);
        let s = self.session(host)?;
        match cell {
            Some(c) => Ok(c
                .get_or_try_init(|| async { s.exec(cmd, None).await })
                .await?
                .clone()),
            None => Ok(s.exec(cmd, None).await?),
        }
    }

    /// The shared all-roles probe of `host`, while planning.
    pub fn planning_facts(&self, host: &str) -> Option<Shared<(ProbeRequest, HostFacts)>> {
        self.planning.lock().ok().and_then(|mut p| {
            p.as_mut()
                .map(|p| p.facts.entry(host.to_string()).or_default().clone())
        })
    }

    /// The phases' extra commands for `host`'s shared probe (see [`Phase::probe_extras`]).
    pub fn planned_extras(&self, host: &str) -> Vec<(String, String)> {
        self.planning
            .lock()
            .ok()
            .and_then(|p| p.as_ref().and_then(|p| p.extras.get(host).cloned()))
            .unwrap_or_default()
    }

    /// The phases' paths beyond their roles' for `host`'s shared probe (see
    /// [`Phase::probe_paths`]).
    pub fn planned_paths(&self, host: &str) -> Vec<String> {
        self.planning
            .lock()
            .ok()
            .and_then(|p| p.as_ref().and_then(|p| p.paths.get(host).cloned()))
            .unwrap_or_default()
    }

    /// While phases are planned together: the output of the extra command `tag` that ran in
    /// `host`'s shared probe, with the control machine's clock before and after that round
    /// trip. None otherwise (the phase then runs its command itself).
    /// `cmd` must be the command the phase registered: anything else runs on its own.
    pub async fn probed_extra(
        &self,
        host: &str,
        tag: &str,
        cmd: &str,
    ) -> Option<(String, (f64, f64))> {
        if !self
            .planned_extras(host)
            .iter()
            .any(|(t, c)| t == tag && c == cmd)
        {
            return None;
        }
        // A probe that failed is left to the phase's own command and its own error message.
        let facts = phase::probe(self, host, &plan::Desired::default())
            .await
            .ok()?;
        facts.extra.get(tag).cloned().zip(facts.probed_at)
    }

    fn set_planning(&self, on: bool) {
        if let Ok(mut p) = self.planning.lock() {
            *p = on.then(PlanningCache::default);
        }
    }

    pub fn observe(&self, host: &str, status: &str) {
        self.observer.host_status(host, status);
    }
    pub fn redact(&self, text: &str) -> String {
        change::redact(text, &self.secret_values)
    }
    /// Run one orchestration step on `host` that does not go through the engine's primitives
    /// (a switchover, a DCS edit) and record it, with its result and duration, in the run's
    /// journal: `ctx.step(leader, "switchover to pg2", async { .. }).await?`.
    pub async fn step<T>(
        &self,
        host: &str,
        what: &str,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let t = Instant::now();
        let r = fut.await;
        record::result(host, &self.redact(what), &r, t.elapsed());
        r
    }
}

/// Run futures with at most `limit` at once; the first error wins, results keep their order.
pub async fn bounded<T, F>(limit: usize, futs: Vec<F>) -> Result<Vec<T>>
where
    F: std::future::Future<Output = Result<T>>,
{
    let sem = tokio::sync::Semaphore::new(limit.max(1));
    let sem = &sem;
    let mut wrapped = Vec::with_capacity(futs.len());
    for f in futs {
        wrapped.push(async move {
            let _permit = sem
                .acquire()
                .await
                .map_err(|_| miette!("internal: semaphore closed"))?;
            f.await
        });
    }
    futures::future::try_join_all(wrapped).await
}

/// Connect to every host in parallel. All failures are reported at once.
pub async fn connect_all(
    hosts: &[Host],
    opts: &ConnectOptions,
    forks: usize,
) -> Result<BTreeMap<String, Session>> {
    let results: Vec<(String, std::result::Result<Session, crate::ssh::SshError>)> =
        stream::iter(hosts.iter())
            .map(|h| async move { (h.name.clone(), Session::connect(h, opts).await) })
            .buffer_unordered(forks.max(1))
            .collect()
            .await;
    let mut ok = BTreeMap::new();
    let mut errors = Vec::new();
    for (name, r) in results {
        match r {
            Ok(s) => {
                ok.insert(name, s);
            }
            Err(e) => errors.push(format!("  - {e}{}", help_of(&e))),
        }
    }
    if !errors.is_empty() {
        errors.sort();
        return Err(miette!(
            help = "nothing was changed on any host",
            "cannot connect to {} of {} hosts:\n{}",
            errors.len(),
            hosts.len(),
            errors.join("\n")
        ));
    }
    Ok(ok)
}

fn help_of(e: &dyn miette::Diagnostic) -> String {
    e.help()
        .map(|h| format!("\n      hint: {h}"))
        .unwrap_or_default()
}

/// Plan every phase (read-only). Every phase sees the hosts as they are now, so the phases
/// are planned concurrently; the result keeps their order.
pub async fn check(ctx: &Ctx, phases: &[Box<dyn Phase>]) -> Result<Vec<PhasePlan>> {
    ctx.set_planning(true);
    // What every phase adds to each host's shared probe: commands, and paths beyond its roles'.
    let mut extras: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let mut paths: HashMap<String, Vec<String>> = HashMap::new();
    for h in &ctx.hosts {
        for p in phases {
            extras
                .entry(h.name.clone())
                .or_default()
                .extend(p.probe_extras(ctx, &h.name));
            paths
                .entry(h.name.clone())
                .or_default()
                .extend(p.probe_paths(ctx, &h.name));
        }
    }
    if let Ok(mut p) = ctx.planning.lock() {
        if let Some(p) = p.as_mut() {
            p.extras = extras;
            p.paths = paths;
        }
    }
    let plans = plan_all(ctx, phases).await;
    ctx.set_planning(false);
    plans
}

async fn plan_all(ctx: &Ctx, phases: &[Box<dyn Phase>]) -> Result<Vec<PhasePlan>> {
    let mut futs = Vec::new();
    for p in phases {
        futs.push(async move {
            let t = Instant::now();
            ctx.observer.phase_started(p.name(), ctx.hosts.len());
            let plan = p.plan(ctx).await?;
            ctx.observer
                .phase_finished(p.name(), plan.change_count(), t.elapsed());
            Ok::<_, miette::Report>(plan)
        });
    }
    // Every phase runs to its end, and the first error in phase order is the one reported:
    // preflight's (wrong release, another state) explains more than what a later phase met.
    futures::future::join_all(futs).await.into_iter().collect()
}

/// What one phase of `apply` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PhaseOutcome {
    pub plan: PhasePlan,
    pub seconds: f64,
}

/// Apply phase by phase (a barrier between phases); re-plan each phase after applying it and
/// fail with "did not converge" if anything is left. `on_plan` is told each phase's plan
/// before it is applied.
pub async fn apply(
    ctx: &Ctx,
    phases: &[Box<dyn Phase>],
    on_plan: &(dyn Fn(&PhasePlan) + Sync),
) -> Result<Vec<PhaseOutcome>> {
    let mut out = Vec::new();
    // Every phase is planned at once first (as `check` does). A phase is planned again just
    // before it runs only when an earlier phase changed something.
    let initial = check(ctx, phases).await?;
    let mut changed_before = false;
    for (p, first) in phases.iter().zip(initial) {
        let t = Instant::now();
        ctx.observer.phase_started(p.name(), ctx.hosts.len());
        let plan = if changed_before {
            p.plan(ctx).await?
        } else {
            first
        };
        if plan.change_count() > 0 {
            changed_before = true;
            on_plan(&plan);
            record::in_phase(ctx.observer.clone(), p.name(), p.apply(ctx, &plan))
                .await
                .map_err(|e| miette!("phase {}: {}", p.name(), ctx.redact(&format!("{e:?}"))))?;
            let again = p.plan(ctx).await?;
            if again.change_count() > 0 {
                let left: Vec<String> = again
                    .hosts
                    .iter()
                    .flat_map(|h| {
                        h.changes
                            .iter()
                            .filter(|c| !c.is_deferred())
                            .map(move |c| format!("  {}: {}", h.host, c.summary()))
                    })
                    .chain(
                        again
                            .steps
                            .iter()
                            .filter(|s| s.step.is_change())
                            .map(|s| format!("  {}: {}", s.host, s.step.summary())),
                    )
                    .collect();
                return Err(miette!(
                    help = "something on the hosts changes what pgdeploy writes (another tool, or a package script); see the changes above",
                    "phase {} did not converge: after apply, the plan still has {} change(s):\n{}",
                    p.name(),
                    left.len(),
                    left.join("\n")
                ));
            }
        }
        record::in_phase(
            ctx.observer.clone(),
            p.name(),
            p.after_apply(ctx, changed_before),
        )
        .await
        .map_err(|e| miette!("phase {}: {}", p.name(), ctx.redact(&format!("{e:?}"))))?;
        ctx.observer
            .phase_finished(p.name(), plan.change_count(), t.elapsed());
        out.push(PhaseOutcome {
            plan,
            seconds: t.elapsed().as_secs_f64(),
        });
    }
    Ok(out)
}
