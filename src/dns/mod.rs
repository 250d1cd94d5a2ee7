//! DNS: the HAProxy name's A/AAAA records are exactly the HAProxy hosts that pass a health check.
//!
//! Layers: [`health`] (probe), [`plan()`] (pure), a [`Provider`] (apply): [`rfc2136`] (DNS UPDATE
//! signed with TSIG, prerequisite-guarded) or [`dyndns2`] (HTTP). A new provider is one file that
//! implements [`Provider`] plus one arm in [`DnsConfig::provider`].

pub mod dyndns2;
pub mod error;
pub mod health;
pub mod plan;
pub mod rfc2136;
pub mod tsig;

pub use error::DnsError;
pub use health::{check_all, HealthPorts, HealthTarget, HostHealth};
pub use plan::{plan, DnsPlan, RecordSet};
pub use tsig::{Algorithm, Secret, TsigKey};

use crate::engine::{Observer, Quiet};
use crate::inventory::{Group, Inventory, Warning};
use crate::journal::{Outcome, Recorder, Run};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A place where the records of the name live.
#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// Short description for messages, e.g. "rfc2136 10.0.0.1:53 (zone db.example.)".
    fn describe(&self) -> String;
    /// The records as they are now.
    async fn query(&self) -> Result<RecordSet, DnsError>;
    /// Apply `plan`, computed from `current` (as returned by `query`). An empty plan sends nothing.
    /// A provider that can guard the update fails with [`DnsError::PrerequisiteFailed`] when the
    /// records are no longer `current`.
    async fn apply(&self, current: &RecordSet, plan: &DnsPlan) -> Result<(), DnsError>;
}

/// Credentials of the provider.
#[derive(Debug, Clone)]
pub enum Credentials {
    None,
    Tsig(TsigKey),
    /// dyndns2: user name (`tsig.key_name`) and password (`tsig.secret_file`/`secret_env`, raw).
    Basic {
        username: String,
        password: Secret,
    },
}

/// The inventory's `dns` section with its secret loaded.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    pub provider: String,
    pub name: String,
    pub zone: String,
    pub server: String,
    pub ttl: u32,
    pub credentials: Credentials,
    /// Timeout of each DNS/HTTP exchange.
    pub timeout: Duration,
}

impl DnsConfig {
    /// Build from the inventory; `Ok(None)` when it has no `dns` section. Checks that the name is
    /// inside the zone and loads the secret (nothing is sent).
    pub fn from_inventory(inv: &Inventory) -> Result<Option<Self>, DnsError> {
        let Some(d) = &inv.dns else { return Ok(None) };
        if d.provider != "dyndns2" {
            rfc2136::check_name_in_zone(&d.name, &d.zone)?;
        }
        let secret_path = d
            .tsig
            .as_ref()
            .and_then(|t| t.secret_file.as_deref())
            .map(|p| inv.resolve_path(p));
        let credentials = match (d.provider.as_str(), &d.tsig) {
            (_, None) => Credentials::None,
            ("dyndns2", Some(t)) => Credentials::Basic {
                username: t.key_name.clone(),
                password: load_password(
                    &t.key_name,
                    secret_path.as_deref(),
                    t.secret_env.as_deref(),
                )?,
            },
            (_, Some(t)) => Credentials::Tsig(tsig::load_key(
                &t.key_name,
                &t.algorithm,
                secret_path.as_deref(),
                t.secret_env.as_deref(),
            )?),
        };
        let cfg = DnsConfig {
            provider: d.provider.clone(),
            name: d.name.clone(),
            zone: d.zone.clone(),
            server: d.server.clone(),
            ttl: d.ttl,
            credentials,
            timeout: Duration::from_secs(5),
        };
        Ok(Some(cfg))
    }

    /// The provider this configuration names.
    pub fn provider(&self) -> Result<Box<dyn Provider>, DnsError> {
        match self.provider.as_str() {
            "rfc2136" => {
                let key = match &self.credentials {
                    Credentials::Tsig(k) => Some(k.clone()),
                    Credentials::None => None,
                    Credentials::Basic { .. } => None,
                };
                Ok(Box::new(rfc2136::Rfc2136::new(
                    &self.server,
                    &self.name,
                    &self.zone,
                    key,
                    self.timeout,
                )?))
            }
            "dyndns2" => {
                let Credentials::Basic { username, password } = &self.credentials else {
                    return Err(DnsError::Config {
                        msg: "dyndns2 needs a user name and password".into(),
                        help: "set `dns.tsig.key_name` (user name) and `dns.tsig.secret_file` or `secret_env` (password)".into(),
                    });
                };
                Ok(Box::new(dyndns2::Dyndns2::new(
                    &self.server,
                    &self.name,
                    username,
                    password.clone(),
                    self.timeout,
                )?))
            }
            other => Err(DnsError::Config {
                msg: format!("unknown provider `{other}`"),
                help: "set `dns.provider` to rfc2136 or dyndns2".into(),
            }),
        }
    }
}

fn load_password(
    user: &str,
    file: Option<&std::path::Path>,
    env: Option<&str>,
) -> Result<Secret, DnsError> {
    let err = |msg: String| DnsError::Secret {
        key: user.to_string(),
        msg,
    };
    let raw = if let Some(p) = file {
        std::fs::read_to_string(p).map_err(|e| err(format!("cannot read {}: {e}", p.display())))?
    } else if let Some(v) = env {
        std::env::var(v).map_err(|_| err(format!("environment variable {v} is not set")))?
    } else {
        return Err(err("neither secret_file nor secret_env is set".into()));
    };
    let pw = raw.trim_end_matches(['\r', '\n']).to_string();
    if pw.is_empty() {
        return Err(err("the password is empty".into()));
    }
    Ok(Secret::new(pw.into_bytes()))
}

/// The current records of the name, read from the provider (for rfc2136: the authoritative
/// server itself, not a recursive cache).
pub async fn query(cfg: &DnsConfig) -> Result<RecordSet, DnsError> {
    cfg.provider()?.query().await
}

/// The HAProxy hosts of the inventory as health-check targets.
pub fn haproxy_targets(inv: &Inventory) -> Result<Vec<HealthTarget>, DnsError> {
    let mut out = Vec::new();
    for h in inv.group_hosts(Group::Haproxy) {
        let ip: IpAddr = h.address.parse().map_err(|_| DnsError::Config {
            msg: format!(
                "HAProxy host {}: address `{}` is not an IP address",
                h.name, h.address
            ),
            help: "the DNS records need IP addresses: write the host's `address` as an IP".into(),
        })?;
        let mut publish = vec![ip];
        if let Some(a6) = &h.address6 {
            let ip6: IpAddr = a6.parse().map_err(|_| DnsError::Config {
                msg: format!(
                    "HAProxy host {}: address6 `{a6}` is not an IPv6 address",
                    h.name
                ),
                help: "write `address6` as an IPv6 address or leave it out".into(),
            })?;
            publish.push(ip6);
        }
        out.push(HealthTarget {
            name: h.name.clone(),
            check_addr: ip,
            publish,
        });
    }
    Ok(out)
}

/// What one sync did.
#[derive(Debug, Clone)]
pub struct SyncReport {
    /// The records read before the (last) plan.
    pub before: RecordSet,
    pub plan: DnsPlan,
    /// True when an update was sent and accepted.
    pub applied: bool,
    /// Things worth telling (e.g. a failed prerequisite that caused a re-read).
    pub notes: Vec<String>,
}

/// Read, plan and (unless `dry_run`) apply; an update sent is recorded in the run's journal
/// (see [`crate::engine::record`]). A failed prerequisite (someone changed the records
/// between our read and our update) is reported in `notes`, and the records are read again; after
/// `3` such failures the error is returned.
pub async fn sync(
    provider: &dyn Provider,
    health: &[HostHealth],
    ttl: u32,
    dry_run: bool,
) -> Result<SyncReport, DnsError> {
    let healthy: Vec<IpAddr> = health
        .iter()
        .filter(|h| h.healthy)
        .flat_map(|h| h.publish.iter().copied())
        .collect();
    let all: Vec<IpAddr> = health
        .iter()
        .flat_map(|h| h.publish.iter().copied())
        .collect();
    let mut notes = Vec::new();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let before = provider.query().await?;
        let p = plan(&before, &healthy, &all, ttl);
        if p.is_empty() || dry_run {
            return Ok(SyncReport {
                before,
                plan: p,
                applied: false,
                notes,
            });
        }
        let t = Instant::now();
        let applied = provider.apply(&before, &p).await;
        let summary = format!(
            "~ dns {}",
            p.to_string().lines().collect::<Vec<_>>().join(", ")
        );
        let error = applied.as_ref().err().map(|e| e.to_string());
        crate::engine::record::done(
            &provider.describe(),
            &summary,
            error.as_deref(),
            t.elapsed(),
        );
        match applied {
            Ok(()) => {
                return Ok(SyncReport {
                    before,
                    plan: p,
                    applied: true,
                    notes,
                })
            }
            Err(e) if e.is_prerequisite_failure() && attempt < 3 => {
                notes.push(format!("{e}; reading the records again"));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Options of `pgdeploy dns sync`.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// The inventory file, as given (messages and the journal name it so).
    pub inventory: PathBuf,
    /// Keep syncing every `interval` seconds (recorded in the journal's arguments).
    pub watch: bool,
    pub interval: u64,
    /// Plan only: send nothing, record nothing.
    pub dry_run: bool,
}

/// A `dns sync` ready to run: the inventory's DNS configuration and HAProxy hosts checked, the
/// provider built and (unless a dry run) the run journal started. Each [`Syncer::sync`] is one
/// read-plan-apply; [`Syncer::finish`] ends the journal's run.
pub struct Syncer {
    cfg: DnsConfig,
    provider: Box<dyn Provider>,
    targets: Vec<HealthTarget>,
    ports: HealthPorts,
    dry_run: bool,
    run: Option<Arc<Run>>,
    observer: Arc<dyn Observer>,
}

impl Syncer {
    /// Nothing is sent; a sync that may send updates is recorded in the run journal of `inv`
    /// (a dry run changes nothing and is not recorded).
    pub fn new(inv: &Inventory, opts: &SyncOptions) -> miette::Result<Syncer> {
        let cfg = DnsConfig::from_inventory(inv)?.ok_or_else(|| {
            miette::miette!(
                help = "add a `dns:` section (provider, name, zone, server, ttl, tsig) to the \
                        inventory",
                "{} has no `dns` section",
                opts.inventory.display()
            )
        })?;
        let provider = cfg.provider()?;
        let targets = haproxy_targets(inv)?;
        if targets.is_empty() {
            return Err(miette::miette!(
                help = "list the HAProxy hosts under `groups.haproxy`",
                "{} has no HAProxy hosts",
                opts.inventory.display()
            ));
        }
        let run = if opts.dry_run {
            None
        } else {
            Some(Arc::new(Run::start(
                &inv.state_dir(),
                "dns sync",
                &opts.inventory,
                serde_json::json!({
                    "watch": opts.watch,
                    "interval": opts.watch.then_some(opts.interval),
                }),
            )?))
        };
        let observer: Arc<dyn Observer> = match &run {
            Some(r) => Arc::new(Recorder::new(Arc::new(Quiet), r.clone())),
            None => Arc::new(Quiet),
        };
        let ports = HealthPorts {
            primary: inv.haproxy.primary_port,
            stats: inv.haproxy.stats_port,
            timeout: Duration::from_secs(2),
        };
        Ok(Syncer {
            cfg,
            provider,
            targets,
            ports,
            dry_run: opts.dry_run,
            run,
            observer,
        })
    }

    /// The DNS name whose records are synced.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// The provider, for messages (see [`Provider::describe`]).
    pub fn describe(&self) -> String {
        self.provider.describe()
    }

    /// True for a dry run: [`Syncer::sync`] plans and sends nothing.
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Health-check every HAProxy host.
    pub async fn health(&self) -> Vec<HostHealth> {
        check_all(&self.targets, self.ports).await
    }

    /// Read, plan and (unless a dry run) apply for `health` (see [`sync`]); an update sent is
    /// recorded in the run journal.
    pub async fn sync(&self, health: Vec<HostHealth>) -> Result<SyncReport, DnsError> {
        let provider = self.provider.as_ref();
        let (ttl, dry_run) = (self.cfg.ttl, self.dry_run);
        crate::engine::record::in_phase(self.observer.clone(), "dns", async move {
            sync(provider, &health, ttl, dry_run).await
        })
        .await
    }

    /// End the journal's run with `result`; a warning when the journal could not be written.
    pub fn finish(self, result: &miette::Result<()>) -> Option<Warning> {
        let run = self.run?;
        match result {
            Ok(()) => run.finish(Outcome::Ok, None),
            Err(e) => run.finish(Outcome::Failed, Some(&e.to_string())),
        }
        run.write_error()
            .map(|e| Warning(format!("the run journal is incomplete: cannot write {e}")))
    }
}
