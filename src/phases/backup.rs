//! Backups with pgBackRest, when the inventory names a repository host (`groups.backup`):
//! pgBackRest on the database hosts and on the repository host (role data: `pgbackrest` and
//! `backup`: packages, configuration, TLS, its TLS server, the backup timers), then the stanza.
//! A repository without this cluster's stanza gets it (`stanza-create`), and the stanza is then
//! checked (`pgbackrest check`: the leader switches to a new WAL segment and the run waits until
//! the archive has it), so a broken archive_command fails the apply instead of going unseen.
//! WAL archiving itself is Patroni's configuration (`archive_command`), so whichever member
//! leads archives, also after a failover.

use crate::engine::phase::{plan_roles, Phase, PhasePlan};
use crate::engine::step::{PlannedStep, Step};
use crate::engine::Ctx;
use crate::inventory::Inventory;
use crate::shell::sh_quote;
use async_trait::async_trait;
use miette::{miette, Result};
use serde_json::Value;

pub struct Backup;

/// The roles of this phase.
pub const ROLES: [&str; 2] = ["pgbackrest", "backup"];

/// Tag of the repository's `info` in the shared probe.
const INFO_TAG: &str = "pgbackrest-info";

/// Printed when the repository host has no pgBackRest (or no configuration) yet.
const NOT_SET_UP: &str = "@@PGDEPLOY-NO-PGBACKREST";

/// pgBackRest as the repository's owner (postgres), with `args`.
pub fn pgbackrest(stanza: &str, args: &str) -> String {
    format!(
        "runuser -u postgres -- pgbackrest --stanza={} {args}",
        sh_quote(stanza)
    )
}

/// The repository's view of the stanza, as JSON (read-only: no log file either).
pub fn info_command(stanza: &str) -> String {
    format!(
        "if [ -x /usr/bin/pgbackrest ] && [ -e /etc/pgbackrest/pgbackrest.conf ]; then {}; else echo {NOT_SET_UP}; fi",
        pgbackrest(stanza, "--log-level-file=off --log-level-console=off --output=json info")
    )
}

/// What the repository holds for this cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StanzaState {
    /// pgBackRest or its configuration is not on the repository host yet.
    NotSetUp,
    /// The repository has no stanza for this cluster.
    Missing,
    /// The stanza exists (`backups`: how many backup sets it holds).
    Present { backups: usize },
}

/// Pure: the stanza's state from `info --output=json` (or [`NOT_SET_UP`]).
pub fn stanza_state(out: &str, stanza: &str) -> Result<StanzaState> {
    if out.trim() == NOT_SET_UP {
        return Ok(StanzaState::NotSetUp);
    }
    let v: Value = serde_json::from_str(out.trim()).map_err(|e| {
        miette!(
            "pgBackRest's `info` on the repository host did not answer JSON ({e}): {}",
            out.trim()
        )
    })?;
    let Some(s) = v
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == stanza))
    else {
        return Ok(StanzaState::Missing);
    };
    let code = s["status"]["code"].as_i64().unwrap_or(99);
    let backups = s["backup"].as_array().map(Vec::len).unwrap_or(0);
    match code {
        // 0: ok; 2: no valid backup yet (the stanza is there).
        0 | 2 => Ok(StanzaState::Present { backups }),
        // 1: missing stanza path; 3: missing stanza data.
        1 | 3 => Ok(StanzaState::Missing),
        _ => Err(miette!(
            help = "see `pgbackrest --stanza={stanza} info` on the repository host",
            "the repository's stanza {stanza} is not usable: {} (pgBackRest status {code})",
            s["status"]["message"].as_str().unwrap_or("unknown")
        )),
    }
}

/// Pure: the steps for a stanza in state `state`, on the repository host `repo`.
pub fn plan_steps(repo: &str, stanza: &str, state: &StanzaState) -> Vec<PlannedStep> {
    match state {
        StanzaState::Present { .. } => Vec::new(),
        StanzaState::NotSetUp | StanzaState::Missing => vec![
            PlannedStep::new(
                repo,
                Step::StanzaCreate {
                    stanza: stanza.to_string(),
                },
            ),
            PlannedStep::new(
                repo,
                Step::ArchiveCheck {
                    stanza: stanza.to_string(),
                },
            ),
        ],
    }
}

/// The repository's stanza, from the shared probe when it rode along.
async fn read_state(ctx: &Ctx, repo: &str) -> Result<StanzaState> {
    let cmd = info_command(&ctx.inv.cluster.name);
    let out = match ctx.probed_extra(repo, INFO_TAG, &cmd).await {
        Some((out, _)) => out,
        None => ctx.read(repo, &cmd).await?.stdout_str(),
    };
    stanza_state(&out, &ctx.inv.cluster.name)
}

/// Run `pgbackrest ARGS` on the repository host; its error output in the error.
pub async fn run_pgbackrest(ctx: &Ctx, host: &str, args: &str) -> Result<String> {
    let out = ctx
        .session(host)?
        .exec(&pgbackrest(&ctx.inv.cluster.name, args), None)
        .await?;
    if !out.ok() {
        return Err(miette!(
            "pgbackrest {args} failed on {host} (exit {}): {}{}",
            out.status,
            out.stderr_str().trim(),
            out.stdout_str().trim()
        ));
    }
    Ok(out.stdout_str())
}

/// Execute [`Step::StanzaCreate`]: idempotent (an existing, matching stanza is kept).
pub async fn stanza_create(ctx: &Ctx, host: &str) -> Result<()> {
    run_pgbackrest(ctx, host, "stanza-create").await.map(|_| ())
}

/// Execute [`Step::ArchiveCheck`].
pub async fn archive_check(ctx: &Ctx, host: &str) -> Result<()> {
    run_pgbackrest(ctx, host, "check").await.map(|_| ())
}

fn repo_name(inv: &Inventory) -> Option<String> {
    inv.backup_host().map(|h| h.name)
}

#[async_trait]
impl Phase for Backup {
    fn name(&self) -> &str {
        "backup"
    }

    fn probe_extras(&self, ctx: &Ctx, host: &str) -> Vec<(String, String)> {
        if repo_name(&ctx.inv).as_deref() == Some(host) {
            vec![(INFO_TAG.into(), info_command(&ctx.inv.cluster.name))]
        } else {
            Vec::new()
        }
    }

    async fn plan(&self, ctx: &Ctx) -> Result<PhasePlan> {
        let Some(repo) = repo_name(&ctx.inv) else {
            return Ok(PhasePlan::new("backup", Vec::new()));
        };
        let roles: Vec<String> = ROLES.iter().map(|r| r.to_string()).collect();
        let (hosts, state) = tokio::join!(plan_roles(ctx, &roles, false), read_state(ctx, &repo));
        let mut plan = PhasePlan::new("backup", hosts?);
        plan.steps = plan_steps(&repo, &ctx.inv.cluster.name, &state?);
        Ok(plan)
    }

    async fn apply(&self, ctx: &Ctx, plan: &PhasePlan) -> Result<()> {
        super::steps::apply_plan(ctx, plan).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_stanza_from_info() {
        let s = "lab";
        assert_eq!(stanza_state(NOT_SET_UP, s).unwrap(), StanzaState::NotSetUp);
        assert_eq!(stanza_state("[]", s).unwrap(), StanzaState::Missing);
        let missing =
            r#"[{"name":"lab","status":{"code":1,"message":"missing stanza path"},"backup":[]}]"#;
        assert_eq!(stanza_state(missing, s).unwrap(), StanzaState::Missing);
        let empty =
            r#"[{"name":"lab","status":{"code":2,"message":"no valid backups"},"backup":[]}]"#;
        assert_eq!(
            stanza_state(empty, s).unwrap(),
            StanzaState::Present { backups: 0 }
        );
        let two = r#"[{"name":"other","status":{"code":1}},{"name":"lab","status":{"code":0,"message":"ok"},"backup":[{},{}]}]"#;
        assert_eq!(
            stanza_state(two, s).unwrap(),
            StanzaState::Present { backups: 2 }
        );
        let bad = r#"[{"name":"lab","status":{"code":99,"message":"other"}}]"#;
        assert!(stanza_state(bad, s)
            .unwrap_err()
            .to_string()
            .contains("other"));
        assert!(stanza_state("ERROR: [029]", s).is_err());
    }

    #[test]
    fn creates_and_checks_a_missing_stanza_only() {
        let steps: Vec<String> = plan_steps("backup1", "lab", &StanzaState::Missing)
            .iter()
            .map(|s| format!("{}: {}", s.host, s.step.summary()))
            .collect();
        assert_eq!(
            steps,
            [
                "backup1: + pgbackrest stanza-create lab (the repository has no stanza for this cluster)",
                "backup1: ? gate: pgbackrest check lab (the leader's next WAL segment reaches the archive)",
            ]
        );
        assert!(plan_steps("backup1", "lab", &StanzaState::Present { backups: 0 }).is_empty());
    }
}
