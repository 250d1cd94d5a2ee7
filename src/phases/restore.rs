//! `pgdeploy restore`: point-in-time recovery of the whole cluster from the pgBackRest
//! repository, as typed steps that `restore --check` shows and `restore` runs.
//!
//! The order keeps the old data until the restored cluster runs:
//! 1. the leader's current WAL reaches the archive (`pgbackrest check`), when a leader runs;
//! 2. Patroni stops on the replicas, then on the leader (no failover happens);
//! 3. the cluster's state in the DCS is removed (the restored data is a new history);
//! 4. every member's data directory is moved aside (kept, not deleted);
//! 5. one member (the leader, if there was one) restores the backup and replays the archive up
//!    to the target, as a standalone PostgreSQL that promotes there, and stops cleanly;
//! 6. Patroni starts there and takes the lead from that data; then on the others, which
//!    rebuild as replicas (from the repository first) and stream from it;
//! 7. only then are the moved-aside directories removed, and last the marker that step 5
//!    wrote.
//!
//! A restore interrupted at any point (pgdeploy killed, a host lost) is finished by the same
//! command run again: the moved-aside data is found and kept under its first name, and what
//! the interrupted run left in the data directories is its own work, done again. Once the
//! marker says a member restored, the run again does not restore a second time (the restored
//! cluster may have taken writes): it starts what is stopped, waits, and removes the old data.
//!
//! HAProxy and DNS need no change: they follow Patroni's leader.

use crate::engine::change::UnitAction;
use crate::engine::phase::{Phase, PhasePlan};
use crate::engine::step::{Gate, PlannedStep, Step};
use crate::engine::Ctx;
use crate::inventory::Group;
use crate::shell::sh_quote;
use async_trait::async_trait;
use miette::{miette, Result};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// What to restore to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Target {
    /// A point in time (seconds since the epoch, and as given).
    Time { at: i64, text: String },
    /// The end of the archive: everything archived.
    Latest,
    /// The consistent end of one backup set.
    Set { label: String },
}

impl Target {
    /// pgBackRest's options for this target.
    pub fn pgbackrest_args(&self) -> String {
        match self {
            Target::Time { at, .. } => format!(
                "--type=time --target={} --target-action=promote",
                sh_quote(&pg_time(*at))
            ),
            Target::Latest => "--type=default".into(),
            Target::Set { label } => format!(
                "--set={} --type=immediate --target-action=promote",
                sh_quote(label)
            ),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Target::Time { at, .. } => format!("the state at {}", pg_time(*at)),
            Target::Latest => "the end of the archive (everything archived)".into(),
            Target::Set { label } => format!("the end of backup set {label}"),
        }
    }
}

/// `secs` as PostgreSQL reads a timestamp with time zone, in UTC.
pub fn pg_time(secs: i64) -> String {
    crate::clock::utc_rfc3339_secs(secs)
        .replace('T', " ")
        .replace('Z', "+00")
}

/// Parse `--to`: RFC 3339 (`2026-12-04T19:30:00Z`, `2026-12-04 19:30:00+01:00`) with an
/// explicit offset; seconds since the epoch.
pub fn parse_time(s: &str) -> Result<i64> {
    let t = s.trim().replacen(' ', "T", 1);
    time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|_| {
            miette!(
                help = "write the time with its offset, e.g. 2026-12-04T19:30:00Z or \"2026-12-04 20:30:00+01:00\"",
                "--to {s:?} is not a time pgdeploy can read"
            )
        })
}

/// The facts a restore plan is made from.
#[derive(Debug, Clone)]
pub struct Facts {
    pub stanza: String,
    pub repo: String,
    /// The Patroni members, in inventory order, and the current leader if one runs.
    pub members: Vec<String>,
    pub leader: Option<String>,
    pub data_dir: String,
    pub backups: Vec<crate::backup::BackupSet>,
    /// When the newest WAL segment reached the archive.
    pub newest_wal_at: Option<i64>,
    /// Now, on this machine (a running leader archives up to now before the restore).
    pub now: i64,
    /// Moved-aside data directories on the members, (member, path): only an interrupted
    /// restore leaves them (a finished one removes them).
    pub asides: Vec<(String, String)>,
    /// The member whose marker says an interrupted restore restored there, and its target.
    pub restored: Option<(String, String)>,
}

/// Where the restorer records that its restore is done (beside the data directory).
pub fn marker_path(data_dir: &str) -> String {
    format!("{data_dir}.pgdeploy-restored")
}

/// Where a restore moves a data directory aside.
pub fn aside_prefix(data_dir: &str) -> String {
    format!("{data_dir}.pgdeploy-before-restore-")
}

/// Pure: the steps of a restore to `target`, or why it cannot be done (before anything
/// stops). `stamp` names the moved-aside directories.
pub fn plan_steps(f: &Facts, target: &Target, stamp: &str) -> Result<Vec<PlannedStep>> {
    let mut names: Vec<&str> = f.asides.iter().map(|(_, a)| a.as_str()).collect();
    names.sort();
    names.dedup();
    if names.len() > 1 {
        return Err(miette!(
            help = "keep the one that holds the data you want and move the others away, then run the restore again",
            "data moved aside by more than one restore is beside {}: {}; nothing was changed",
            f.data_dir,
            names.join(", ")
        ));
    }
    if let Some((member, done)) = &f.restored {
        return finish_steps(f, member, done, target);
    }
    if let (Some(leader), Some(aside)) = (&f.leader, names.first()) {
        // Someone started the cluster after the interruption: its data directories hold what
        // it wrote since, which a resumed restore would empty.
        let hosts: Vec<&str> = f.asides.iter().map(|(h, _)| h.as_str()).collect();
        return Err(miette!(
            help = format!(
                "if the running cluster is the one to keep, move {aside} away on {} (or remove it), then run the restore again",
                hosts.join(", ")
            ),
            "an interrupted restore left data moved aside at {aside}, but the cluster runs again ({leader} leads): its data directories are not the restore's work; nothing was changed"
        ));
    }
    if f.backups.is_empty() {
        return Err(miette!(
            help = "take one with `pgdeploy backup`",
            "the repository on {} has no backup of {} yet: there is nothing to restore",
            f.repo,
            f.stanza
        ));
    }
    let t = crate::clock::utc_rfc3339_secs;
    let from = f.backups.iter().map(|b| b.restore_from).min().unwrap_or(0);
    // With a leader running, the archive reaches now once its current WAL is archived.
    let to = match &f.leader {
        Some(_) => f.now,
        None => f.newest_wal_at.unwrap_or(from).max(from),
    };
    let set = match target {
        Target::Time { at, text } => {
            if *at < from || *at > to {
                return Err(miette!(
                    help = format!(
                        "give a time from {} to {} (`pgdeploy backup list` shows the backups)",
                        t(from),
                        t(to)
                    ),
                    "--to {text}: outside the restorable range {} .. {}; nothing was changed",
                    t(from),
                    t(to)
                ));
            }
            f.backups
                .iter()
                .filter(|b| b.restore_from <= *at)
                .max_by_key(|b| b.stop)
                .map(|b| b.label.clone())
        }
        Target::Set { label } => {
            if !f.backups.iter().any(|b| &b.label == label) {
                let labels: Vec<&str> = f.backups.iter().map(|b| b.label.as_str()).collect();
                return Err(miette!(
                    help = format!("the backup sets are: {}", labels.join(", ")),
                    "--set {label}: no such backup set in the repository on {}; nothing was changed",
                    f.repo
                ));
            }
            Some(label.clone())
        }
        Target::Latest => f
            .backups
            .iter()
            .max_by_key(|b| b.stop)
            .map(|b| b.label.clone()),
    };
    let restorer = f.leader.clone().unwrap_or_else(|| f.members[0].clone());
    let others: Vec<&String> = f.members.iter().filter(|m| **m != restorer).collect();
    let aside = match names.first() {
        Some(a) => a.to_string(),
        None => format!("{}{stamp}", aside_prefix(&f.data_dir)),
    };
    let mut s = vec![PlannedStep::new(
        &f.repo,
        Step::Note {
            text: format!(
                "restore {} to {} from backup set {} (restorable {} .. {}); {restorer} restores, the others rebuild from it",
                f.stanza,
                target.describe(),
                set.as_deref().unwrap_or("?"),
                t(from),
                t(to)
            ),
        },
    )];
    if !names.is_empty() {
        s.push(PlannedStep::new(
            &f.repo,
            Step::Note {
                text: format!(
                    "an interrupted restore left the data moved aside at {aside}: it is kept, and the restore is done again"
                ),
            },
        ));
    }
    if f.leader.is_some() {
        s.push(PlannedStep::new(
            &f.repo,
            Step::ArchiveCheck {
                stanza: f.stanza.clone(),
            },
        ));
    }
    for m in others.iter().map(|m| m.as_str()).chain([restorer.as_str()]) {
        s.push(unit(
            m,
            UnitAction::Stop,
            "restore: replicas first, then the leader",
        ));
    }
    s.push(PlannedStep::new(
        &restorer,
        Step::DcsRemove {
            cluster: f.stanza.clone(),
        },
    ));
    for m in &f.members {
        s.push(PlannedStep::new(
            m,
            Step::DataAside {
                data_dir: f.data_dir.clone(),
                aside: aside.clone(),
                resume: f.asides.iter().any(|(h, a)| h == m && *a == aside),
            },
        ));
    }
    s.push(PlannedStep::new(
        &restorer,
        Step::Restore {
            target: target.clone(),
            set,
            data_dir: f.data_dir.clone(),
        },
    ));
    s.extend(rejoin_steps(f, &restorer, true));
    let asides: Vec<(String, String)> = f
        .members
        .iter()
        .map(|m| (m.clone(), aside.clone()))
        .collect();
    s.extend(cleanup_steps(f, &restorer, &asides));
    Ok(s)
}

fn unit(m: &str, action: UnitAction, reason: &str) -> PlannedStep {
    PlannedStep::new(
        m,
        Step::Unit {
            unit: "patroni.service".into(),
            action,
            reason: reason.into(),
        },
    )
}

/// Patroni starts on the restorer and leads (unless `lead` is false: a leader runs), then on
/// the others, which rebuild as its replicas; then every member runs and streams.
fn rejoin_steps(f: &Facts, restorer: &str, lead: bool) -> Vec<PlannedStep> {
    let mut s = Vec::new();
    if !lead {
        s.push(unit(
            restorer,
            UnitAction::Start,
            "restore: it runs in the restored cluster",
        ));
    } else {
        s.push(unit(
            restorer,
            UnitAction::Start,
            "restore: it leads from the restored data",
        ));
        s.push(PlannedStep::new(
            restorer,
            Step::Wait {
                gate: Gate::Leads {
                    member: restorer.to_string(),
                },
            },
        ));
    }
    for m in f.members.iter().filter(|m| *m != restorer) {
        s.push(unit(
            m,
            UnitAction::Start,
            "restore: it rebuilds as a replica of the restored leader",
        ));
    }
    s.push(PlannedStep::new(
        restorer,
        Step::Wait {
            gate: Gate::Converged,
        },
    ));
    s
}

/// The old data goes only now, and the marker last: a run again after an interruption here
/// still knows that the restore was done.
fn cleanup_steps(f: &Facts, restorer: &str, asides: &[(String, String)]) -> Vec<PlannedStep> {
    let mut s: Vec<PlannedStep> = asides
        .iter()
        .map(|(m, a)| PlannedStep::new(m, Step::DataAsideRemove { aside: a.clone() }))
        .collect();
    s.push(PlannedStep::new(
        restorer,
        Step::RestoreDone {
            marker: marker_path(&f.data_dir),
        },
    ));
    s
}

/// A run again after an interruption once `member` had restored `done`: no second restore,
/// only what the interrupted run had left to do.
fn finish_steps(f: &Facts, member: &str, done: &str, target: &Target) -> Result<Vec<PlannedStep>> {
    if done != target.describe() {
        return Err(miette!(
            help = format!(
                "run the same restore again to finish it (to {done}); a new restore can follow once it is finished"
            ),
            "an interrupted restore to {done} already restored on {member}, not to {}; nothing was changed",
            target.describe()
        ));
    }
    let mut s = vec![PlannedStep::new(
        &f.repo,
        Step::Note {
            text: format!(
                "finish the interrupted restore of {} to {done}: {member} restored it already (no second restore); the others rebuild from it and the old data is removed",
                f.stanza
            ),
        },
    )];
    s.extend(rejoin_steps(f, member, f.leader.is_none()));
    s.extend(cleanup_steps(f, member, &f.asides));
    Ok(s)
}

/// The restore as a phase: planned from the repository and Patroni, run once.
pub struct Restore {
    pub target: Target,
    done: AtomicBool,
}

impl Restore {
    pub fn new(target: Target) -> Self {
        Restore {
            target,
            done: AtomicBool::new(false),
        }
    }
}

async fn facts(ctx: &Ctx) -> Result<Facts> {
    let inv = &ctx.inv;
    let repo = inv.backup_host().ok_or_else(|| {
        miette!(
            help = "name the pgBackRest repository host under `groups.backup`, apply, and take a backup",
            "{} has no backup host: there is nothing to restore from",
            inv.path.display()
        )
    })?;
    let members: Vec<String> = inv
        .group_hosts(Group::Patroni)
        .into_iter()
        .map(|h| h.name)
        .collect();
    let data_dir = inv.postgres.data_directory();
    let (r, ms, left) = tokio::join!(
        crate::backup::read(inv, &repo.name, ctx.session(&repo.name)?),
        super::patroni::members(ctx),
        futures::future::join_all(members.iter().map(|m| left_behind(ctx, m, &data_dir)))
    );
    let r = r?;
    let mut asides = Vec::new();
    let mut restored = None;
    for (m, l) in members.iter().zip(left) {
        let (a, done) = l?;
        asides.extend(a.into_iter().map(|a| (m.clone(), a)));
        if let Some(done) = done {
            restored = Some((m.clone(), done));
        }
    }
    let leader = ms
        .ok()
        .flatten()
        .and_then(|ms| ms.into_iter().find(|m| m.is_leader() && m.is_running()))
        .map(|m| m.name);
    Ok(Facts {
        stanza: inv.cluster.name.clone(),
        repo: repo.name,
        members,
        leader,
        data_dir,
        backups: r.backups,
        newest_wal_at: r.newest_wal_at,
        now: time::OffsetDateTime::now_utc().unix_timestamp(),
        asides,
        restored,
    })
}

/// What an interrupted restore left on `host`: moved-aside data directories, and its marker's
/// target if it had restored there.
async fn left_behind(
    ctx: &Ctx,
    host: &str,
    data_dir: &str,
) -> Result<(Vec<String>, Option<String>)> {
    let cmd = format!(
        "for a in {p}*; do [ -e \"$a\" ] && echo \"aside $a\"; done; m={m}; [ -f \"$m\" ] && printf 'restored %s\\n' \"$(cat \"$m\")\"; true",
        p = sh_quote(&aside_prefix(data_dir)),
        m = sh_quote(&marker_path(data_dir))
    );
    let out = ctx.session(host)?.exec(&cmd, None).await?;
    if !out.ok() {
        return Err(miette!(
            "reading what an earlier restore left on {host} failed: {}",
            out.stderr_str().trim()
        ));
    }
    let text = out.stdout_str();
    let asides = text
        .lines()
        .filter_map(|l| l.strip_prefix("aside "))
        .map(str::to_string)
        .collect();
    let done = text
        .lines()
        .find_map(|l| l.strip_prefix("restored "))
        .map(str::to_string);
    Ok((asides, done))
}

#[async_trait]
impl Phase for Restore {
    fn name(&self) -> &str {
        "restore"
    }

    async fn plan(&self, ctx: &Ctx) -> Result<PhasePlan> {
        let mut plan = PhasePlan::new("restore", Vec::new());
        if self.done.load(Ordering::SeqCst) {
            return Ok(plan);
        }
        let f = facts(ctx).await?;
        let stamp = crate::clock::utc_rfc3339_secs(f.now)
            .replace(['-', ':'], "")
            .trim_end_matches('Z')
            .to_string();
        plan.steps = plan_steps(&f, &self.target, &stamp)?;
        Ok(plan)
    }

    async fn apply(&self, ctx: &Ctx, plan: &PhasePlan) -> Result<()> {
        super::steps::run_all(ctx, &plan.steps).await?;
        self.done.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// How long replaying the archive may take.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(3600);

/// Execute [`Step::DcsRemove`]: Patroni's own `remove`, answering its two confirmations.
pub async fn dcs_remove(ctx: &Ctx, host: &str, cluster: &str) -> Result<()> {
    let cmd = format!(
        "printf '%s\\nYes I am aware\\n' {c} | patronictl -c /etc/patroni/config.yml remove {c}",
        c = sh_quote(cluster)
    );
    let out = ctx.session(host)?.exec(&cmd, None).await?;
    if !out.ok() {
        return Err(miette!(
            "patronictl remove {cluster} failed on {host}: {}{}",
            out.stderr_str().trim(),
            out.stdout_str().trim()
        ));
    }
    Ok(())
}

/// Execute [`Step::DataAside`]: the data directory moves aside (once) and an empty one takes
/// its place. When the aside is there already, an interrupted restore moved it: what the data
/// directory holds is that restore's own work (a PostgreSQL it left running is stopped first).
pub async fn data_aside(ctx: &Ctx, host: &str, data_dir: &str, aside: &str) -> Result<()> {
    let (d, a) = (sh_quote(data_dir), sh_quote(aside));
    let pg_ctl = format!(
        "runuser -u postgres -- /usr/lib/postgresql/{}/bin/pg_ctl -D {d}",
        ctx.inv.postgres.major()
    );
    // A pgBackRest restore that the interrupted run started may still write into the data
    // directory (it outlives the connection): it is ended first, and waited for.
    let restoring = sh_quote(&format!(
        "pgbackrest --stanza={} .*restore$",
        ctx.inv.cluster.name
    ));
    let cmd = format!(
        "set -e; if [ -e {a} ]; then if pkill -u postgres -f -- {restoring}; then i=0; while pgrep -u postgres -f -- {restoring} >/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; fi; if [ -f {d}/postmaster.pid ] && {pg_ctl} status >/dev/null 2>&1; then {pg_ctl} -m immediate -w stop; fi; rm -rf {d}; elif [ -e {d} ]; then mv {d} {a}; fi; install -d -o postgres -g postgres -m 0700 {d}; [ -z \"$(ls -A {d})\" ] || {{ echo 'the data directory is not empty' >&2; exit 1; }}"
    );
    run(ctx, host, &cmd, "move the data directory aside").await
}

/// Execute [`Step::RestoreDone`].
pub async fn restore_done(ctx: &Ctx, host: &str, marker: &str) -> Result<()> {
    run(
        ctx,
        host,
        &format!("rm -f {}", sh_quote(marker)),
        "remove the restore's marker",
    )
    .await
}

/// Execute [`Step::DataAsideRemove`].
pub async fn data_aside_remove(ctx: &Ctx, host: &str, aside: &str) -> Result<()> {
    run(
        ctx,
        host,
        &format!("rm -rf {}", sh_quote(aside)),
        "remove the old data",
    )
    .await
}

async fn run(ctx: &Ctx, host: &str, cmd: &str, what: &str) -> Result<()> {
    let out = ctx.session(host)?.exec(cmd, None).await?;
    if !out.ok() {
        return Err(miette!(
            "{what} on {host} failed (exit {}): {}",
            out.status,
            out.stderr_str().trim()
        ));
    }
    Ok(())
}

/// Execute [`Step::Restore`]: pgBackRest restores into the empty data directory; PostgreSQL
/// then runs alone (not under Patroni) until it has replayed the archive to the target and
/// promoted; the recovery settings pgBackRest wrote are reset, and it stops cleanly, so that
/// Patroni finds a primary's data directory.
pub async fn restore(ctx: &Ctx, host: &str, target: &Target, data_dir: &str) -> Result<()> {
    let inv = &ctx.inv;
    let s = ctx.session(host)?;
    let bin = format!("/usr/lib/postgresql/{}/bin", inv.postgres.major());
    let restore = super::backup::pgbackrest(
        &inv.cluster.name,
        &format!("{} restore", target.pgbackrest_args()),
    );
    run(ctx, host, &restore, "pgbackrest restore").await?;
    let log = "/var/log/postgresql/pgdeploy-restore.log";
    let d = sh_quote(data_dir);
    // `-w`: pg_ctl returns once the server accepts connections (consistent, or promoted) or
    // has died. With `-W` the liveness check below could run before the postmaster wrote its
    // pid file and report a starting server as stopped.
    let start = format!(
        "install -d -o postgres -g postgres /var/log/postgresql && runuser -u postgres -- {bin}/pg_ctl -D {d} -l {log} -w -t {} start",
        RECOVERY_DEADLINE.as_secs()
    );
    let log_tail = || async {
        s.exec(&format!("tail -n 5 {log}"), None)
            .await
            .map(|o| o.stdout_str().trim().to_string())
            .unwrap_or_default()
    };
    if !s.exec(&start, None).await?.ok() {
        return Err(miette!(
            help = "the data directories are moved aside, not gone: see the steps above",
            "PostgreSQL on {host} did not start for recovery:\n{}",
            log_tail().await
        ));
    }
    let psql = format!("{} -XAtc", super::superuser_psql(inv));
    let probe = format!("{psql} 'select pg_is_in_recovery()' 2>/dev/null");
    let alive = format!("runuser -u postgres -- {bin}/pg_ctl -D {d} status >/dev/null");
    super::etcd::wait_until(
        &format!("{host} replays the archive to the target and promotes"),
        RECOVERY_DEADLINE,
        || async {
            let out = s.exec(&probe, None).await?;
            if out.stdout_str().trim() == "f" {
                return Ok(true);
            }
            if !s.exec(&alive, None).await?.ok() {
                return Err(miette!(
                    help = "the data directories are moved aside, not gone: see the steps above",
                    "PostgreSQL on {host} stopped during recovery:\n{}",
                    log_tail().await
                ));
            }
            Ok(false)
        },
    )
    .await?;
    let reset: Vec<String> = [
        "restore_command",
        "recovery_target",
        "recovery_target_time",
        "recovery_target_name",
        "recovery_target_xid",
        "recovery_target_lsn",
        "recovery_target_inclusive",
        "recovery_target_timeline",
        "recovery_target_action",
    ]
    .iter()
    .map(|p| format!("-c {}", sh_quote(&format!("alter system reset {p}"))))
    .collect();
    let m = sh_quote(&marker_path(data_dir));
    let cmd = format!(
        "{} -X {} && runuser -u postgres -- {bin}/pg_ctl -D {d} -m fast -w stop && printf '%s' {} > {m}.tmp && sync {m}.tmp && mv {m}.tmp {m}",
        super::superuser_psql(inv),
        reset.join(" "),
        sh_quote(&target.describe())
    );
    run(
        ctx,
        host,
        &cmd,
        "reset the recovery settings and stop PostgreSQL",
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::BackupSet;

    fn set(label: &str, stop: i64) -> BackupSet {
        BackupSet {
            label: label.into(),
            kind: "full".into(),
            start: stop - 5,
            stop,
            database_bytes: 1,
            repo_bytes: 1,
            wal_start: String::new(),
            wal_stop: String::new(),
            prior: None,
            restore_from: stop,
            restore_to: Some(2000),
        }
    }

    fn facts(leader: Option<&str>) -> Facts {
        Facts {
            stanza: "lab".into(),
            repo: "backup1".into(),
            members: vec!["pg1".into(), "pg2".into(), "pg3".into()],
            leader: leader.map(str::to_string),
            data_dir: "/var/lib/postgresql/17/main".into(),
            backups: vec![set("F1", 1000), set("F2", 1500)],
            newest_wal_at: Some(1800),
            now: 2000,
            asides: Vec::new(),
            restored: None,
        }
    }

    fn lines(steps: &[PlannedStep]) -> Vec<String> {
        steps
            .iter()
            .map(|s| format!("{}: {}", s.host, s.step.summary()))
            .collect()
    }

    #[test]
    fn restores_on_the_leader_keeping_the_old_data_until_the_cluster_runs() {
        let target = Target::Time {
            at: 1600,
            text: "x".into(),
        };
        let s = plan_steps(&facts(Some("pg2")), &target, "20261204T193000").unwrap();
        let aside = "/var/lib/postgresql/17/main.pgdeploy-before-restore-20261204T193000";
        let l = lines(&s);
        assert!(l[0].contains("from backup set F2"), "{l:#?}");
        assert!(l[0].contains("pg2 restores"), "{l:#?}");
        assert_eq!(
            l[1..9],
            [
                "backup1: ? gate: pgbackrest check lab (the leader's next WAL segment reaches the archive)".to_string(),
                "pg1: ! unit stop patroni.service (restore: replicas first, then the leader)".into(),
                "pg3: ! unit stop patroni.service (restore: replicas first, then the leader)".into(),
                "pg2: ! unit stop patroni.service (restore: replicas first, then the leader)".into(),
                "pg2: ! patronictl remove lab: the cluster's state in the DCS is removed".into(),
                format!("pg1: ! mv /var/lib/postgresql/17/main {aside} (kept until the restored cluster runs)"),
                format!("pg2: ! mv /var/lib/postgresql/17/main {aside} (kept until the restored cluster runs)"),
                format!("pg3: ! mv /var/lib/postgresql/17/main {aside} (kept until the restored cluster runs)"),
            ]
        );
        assert!(l[9].starts_with("pg2: ! pgbackrest restore"), "{l:#?}");
        assert!(l[9].contains("1970-01-01 00:26:40+00"), "{l:#?}");
        assert_eq!(
            l[10],
            "pg2: ! unit start patroni.service (restore: it leads from the restored data)"
        );
        assert_eq!(l[11], "pg2: ? wait: pg2 leads the cluster");
        assert!(l[12].starts_with("pg1: ! unit start") && l[13].starts_with("pg3: ! unit start"));
        assert_eq!(
            l[14],
            "pg2: ? wait: one leader runs and every replica streams from it"
        );
        assert_eq!(
            l[15],
            format!("pg1: ! rm -rf {aside} (the restored cluster runs)")
        );
        assert_eq!(
            l[18],
            "pg2: ! rm /var/lib/postgresql/17/main.pgdeploy-restored: the restore is finished"
        );
        assert_eq!(l.len(), 19);
    }

    #[test]
    fn a_run_again_before_the_restore_finished_keeps_the_first_aside_and_restores_again() {
        let aside = "/var/lib/postgresql/17/main.pgdeploy-before-restore-20261204T193000";
        let mut f = facts(None);
        f.asides = vec![("pg1".into(), aside.into()), ("pg2".into(), aside.into())];
        let s = plan_steps(&f, &Target::Latest, "20261206T220000").unwrap();
        let l = lines(&s);
        assert!(
            l[1].contains(&format!("left the data moved aside at {aside}")),
            "{l:#?}"
        );
        let moves: Vec<&String> = l
            .iter()
            .filter(|x| x.contains("main.pgdeploy-before"))
            .collect();
        assert!(
            moves.iter().all(|x| !x.contains("20261206T220000")),
            "{l:#?}"
        );
        // pg1 and pg2 were moved already: their data directories hold the interrupted
        // restore's work; pg3 was not, and moves now.
        assert!(l.contains(&format!("pg1: ! empty /var/lib/postgresql/17/main: the interrupted restore's work is done again ({aside} is kept until the restored cluster runs)")), "{l:#?}");
        assert!(l.contains(&format!("pg3: ! mv /var/lib/postgresql/17/main {aside} (kept until the restored cluster runs)")), "{l:#?}");
        assert!(
            l.iter().any(|x| x.starts_with("pg1: ! pgbackrest restore")),
            "{l:#?}"
        );
        // A cluster started again by hand after the interruption: its data is not emptied.
        f.leader = Some("pg2".into());
        let e = plan_steps(&f, &Target::Latest, "s")
            .unwrap_err()
            .to_string();
        assert!(e.contains("the cluster runs again"), "{e}");
        f.leader = None;
        // Two different asides: refused, nothing touched.
        f.asides.push(("pg3".into(), format!("{aside}x")));
        let e = plan_steps(&f, &Target::Latest, "s")
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than one restore"), "{e}");
    }

    #[test]
    fn a_run_again_after_the_member_restored_does_not_restore_twice() {
        let aside = "/var/lib/postgresql/17/main.pgdeploy-before-restore-20261204T193000";
        let target = Target::Time {
            at: 1600,
            text: "x".into(),
        };
        let mut f = facts(None);
        f.asides = vec![("pg1".into(), aside.into()), ("pg3".into(), aside.into())];
        f.restored = Some(("pg2".into(), target.describe()));
        // Even with no backup listed any more, and the target now out of range.
        f.backups.clear();
        let l = lines(&plan_steps(&f, &target, "s").unwrap());
        assert!(l[0].contains("pg2 restored it already"), "{l:#?}");
        assert!(
            !l.iter().any(|x| x.contains("pgbackrest restore")
                || x.contains("unit stop")
                || x.contains("patronictl remove")),
            "{l:#?}"
        );
        assert_eq!(
            l[1..],
            [
                "pg2: ! unit start patroni.service (restore: it leads from the restored data)".to_string(),
                "pg2: ? wait: pg2 leads the cluster".into(),
                "pg1: ! unit start patroni.service (restore: it rebuilds as a replica of the restored leader)".into(),
                "pg3: ! unit start patroni.service (restore: it rebuilds as a replica of the restored leader)".into(),
                "pg2: ? wait: one leader runs and every replica streams from it".into(),
                format!("pg1: ! rm -rf {aside} (the restored cluster runs)"),
                format!("pg3: ! rm -rf {aside} (the restored cluster runs)"),
                "pg2: ! rm /var/lib/postgresql/17/main.pgdeploy-restored: the restore is finished".into(),
            ]
        );
        // With a leader running, nothing waits for pg2 to lead.
        f.leader = Some("pg2".into());
        let l = lines(&plan_steps(&f, &target, "s").unwrap());
        assert!(!l.iter().any(|x| x.contains("leads the cluster")), "{l:#?}");
        // Another target is refused until the interrupted one is finished.
        let e = plan_steps(&f, &Target::Latest, "s")
            .unwrap_err()
            .to_string();
        assert!(e.contains("already restored on pg2"), "{e}");
    }

    #[test]
    fn refuses_what_cannot_be_restored_before_anything_stops() {
        let f = facts(None);
        let too_late = Target::Time {
            at: 1900,
            text: "late".into(),
        };
        let e = plan_steps(&f, &too_late, "s").unwrap_err().to_string();
        assert!(
            e.contains("outside the restorable range 1970-01-01T00:16:40Z .. 1970-01-01T00:30:00Z"),
            "{e}"
        );
        let too_early = Target::Time {
            at: 999,
            text: "early".into(),
        };
        assert!(plan_steps(&f, &too_early, "s").is_err());
        let e = plan_steps(&f, &Target::Set { label: "F9".into() }, "s")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such backup set"), "{e}");
        let mut empty = facts(Some("pg1"));
        empty.backups.clear();
        let e = plan_steps(&empty, &Target::Latest, "s")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no backup"), "{e}");
        // Without a leader, pg1 restores and no archive check runs.
        let s = plan_steps(&f, &Target::Latest, "s").unwrap();
        assert!(lines(&s)[0].contains("pg1 restores"));
        assert!(!s
            .iter()
            .any(|x| matches!(x.step, Step::ArchiveCheck { .. })));
    }

    #[test]
    fn reads_times_with_their_offset_only() {
        assert_eq!(parse_time("1970-01-01T00:26:40Z").unwrap(), 1600);
        assert_eq!(parse_time("1970-01-01 01:26:40+01:00").unwrap(), 1600);
        assert!(parse_time("1970-01-01 00:26:40").is_err());
        assert!(parse_time("yesterday").is_err());
    }
}
