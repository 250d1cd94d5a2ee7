//! Catalog: the applications' roles and databases on the leader (see [`crate::catalog`]), and
//! pgdeploy's own check role. Planned against the leader's catalog; on a cluster with no
//! leader yet it stays deferred until one runs.

use super::patroni::Member;
use crate::catalog::{self, Passwords};
use crate::engine::phase::{Phase, PhasePlan};
use crate::engine::step::{Expand, PlannedStep, Step};
use crate::engine::Ctx;
use crate::inventory::Group;
use crate::shell::sh_quote;
use async_trait::async_trait;
use miette::{miette, Result};

pub struct Catalog;

/// psql as the superuser over the member's local socket, the script on stdin.
fn psql_command(ctx: &Ctx, database: &str) -> String {
    format!(
        "{} -X -q -p {} -d {} -v ON_ERROR_STOP=1 -f -",
        super::superuser_psql(&ctx.inv),
        ctx.inv.postgres.port,
        sh_quote(database)
    )
}

/// The password of pgdeploy's check role (from the generated secrets).
pub fn check_password(ctx: &Ctx) -> String {
    ctx.vars()["secrets"]["check_password"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Rows of one query as the superuser in `database` (unaligned, `|` between columns).
async fn query(ctx: &Ctx, host: &str, database: &str, sql: &str) -> Result<String> {
    let out = ctx
        .session(host)?
        .exec(
            &psql_command(ctx, database),
            Some(format!("\\pset tuples_only on\n\\pset format unaligned\n{sql}\n").as_bytes()),
        )
        .await?;
    if !out.ok() {
        return Err(miette!(
            "{host}: in database {database}: {}",
            ctx.redact(out.stderr_str().trim())
        ));
    }
    Ok(out.stdout_str())
}

async fn leader(ctx: &Ctx) -> Result<Option<String>> {
    Ok(super::patroni::members(ctx)
        .await?
        .and_then(|ms| leader_of(&ms)))
}

fn leader_of(ms: &[Member]) -> Option<String> {
    ms.iter()
        .find(|m| m.is_leader() && m.is_running())
        .map(|m| m.name.clone())
}

/// The line that ends a complete read of [`read_if_primary`].
const READ_DONE: &str = "@@PGDEPLOY-CATALOG-DONE";

/// The catalog as `host` has it if it is the primary, read before it is known which member
/// leads: a standby (`standby.signal`, or in recovery) skips the read at once. `None` when it
/// did not read in full: not the primary, or anything failed (left to [`read_catalog`]).
async fn read_if_primary(ctx: &Ctx, host: &str) -> Option<String> {
    let standby = format!("{}/standby.signal", ctx.inv.postgres.data_directory());
    let cmd = format!(
        r#"[ -e {standby} ] || {psql} <<'PGDEPLOY_CATALOG'
SELECT pg_is_in_recovery() AS pgdeploy_standby \gset
\if :pgdeploy_standby
\q
\endif
{script}\echo {READ_DONE}
PGDEPLOY_CATALOG"#,
        standby = sh_quote(&standby),
        psql = psql_command(ctx, "postgres"),
        script = catalog::probe_script(&ctx.inv),
    );
    let out = ctx.session(host).ok()?.exec(&cmd, None).await.ok()?;
    let text = out.stdout_str();
    (out.ok() && text.trim_end().ends_with(READ_DONE)).then_some(text)
}

/// The catalog steps against `leader`'s catalog in `text` (see [`catalog::probe_script`]).
fn plan_from(ctx: &Ctx, leader: &str, text: &str) -> Result<Vec<PlannedStep>> {
    let facts = catalog::parse_probe(text).map_err(|e| miette!("{leader}: {e}"))?;
    let check = check_password(ctx);
    let pw = Passwords {
        roles: &ctx.role_passwords,
        check: &check,
    };
    catalog::plan(&ctx.inv, leader, &facts, &pw)
}

/// The catalog steps against `leader`'s catalog as it is now.
async fn plan_on(ctx: &Ctx, leader: &str) -> Result<Vec<PlannedStep>> {
    plan_from(ctx, leader, &read_catalog(ctx, leader).await?)
}

/// The leader's catalog, read with a psql of its own.
async fn read_catalog(ctx: &Ctx, leader: &str) -> Result<String> {
    let script = catalog::probe_script(&ctx.inv);
    let out = ctx
        .session(leader)?
        .exec(&psql_command(ctx, "postgres"), Some(script.as_bytes()))
        .await?;
    if !out.ok() {
        return Err(miette!(
            "{leader}: cannot read the roles and databases: {}",
            ctx.redact(out.stderr_str().trim())
        ));
    }
    Ok(out.stdout_str())
}

/// What a deferred catalog step becomes once the cluster leads.
pub async fn expand(ctx: &Ctx, ms: &[Member]) -> Result<Vec<PlannedStep>> {
    let leader =
        leader_of(ms).ok_or_else(|| miette!("no PostgreSQL leader runs: cannot set up roles"))?;
    if !ctx.sessions.contains_key(&leader) {
        return Err(miette!(
            help = "switch over to a member the inventory lists first (patronictl switchover)",
            "the leader {leader} is not in the inventory: its roles and databases cannot be managed"
        ));
    }
    plan_on(ctx, &leader).await
}

#[async_trait]
impl Phase for Catalog {
    fn name(&self) -> &str {
        "catalog"
    }

    async fn plan(&self, ctx: &Ctx) -> Result<PhasePlan> {
        // Who leads is known only once Patroni answers: meanwhile every member reads its
        // catalog if it is the primary (the others skip at once), and the leader's is taken.
        let members: Vec<String> = ctx
            .inv
            .group_hosts(Group::Patroni)
            .iter()
            .map(|h| h.name.clone())
            .filter(|h| ctx.sessions.contains_key(h))
            .collect();
        let (leader, mut reads) = tokio::join!(
            leader(ctx),
            futures::future::join_all(members.iter().map(|h| read_if_primary(ctx, h)))
        );
        let leader = leader?;
        let steps = match leader {
            Some(l) if ctx.sessions.contains_key(&l) => {
                let read = members.iter().position(|h| *h == l).and_then(|i| reads[i].take());
                match read {
                    Some(text) => plan_from(ctx, &l, &text)?,
                    None => plan_on(ctx, &l).await?,
                }
            }
            // A leader the inventory no longer lists: the retire phase refuses that plan (with
            // the switchover to run first), so nothing here is known yet.
            Some(l) => vec![PlannedStep::new(
                "leader",
                Step::Deferred {
                    expand: Expand::Catalog,
                    what: "roles and databases".into(),
                    why: format!("the leader {l} is not in the inventory"),
                },
            )],
            None => vec![PlannedStep::new(
                "leader",
                Step::Deferred {
                    expand: Expand::Catalog,
                    what: format!(
                        "roles and databases: {} and {} declared role(s), {} database(s)",
                        catalog::CHECK_ROLE,
                        ctx.inv.users.len(),
                        ctx.inv.databases.len()
                    ),
                    why: "no PostgreSQL leader runs yet: they are compared with its catalog once one does"
                        .into(),
                },
            )],
        };
        Ok(PhasePlan {
            phase: "catalog".into(),
            hosts: vec![],
            steps,
        })
    }

    async fn apply(&self, ctx: &Ctx, plan: &PhasePlan) -> Result<()> {
        super::steps::run_all(ctx, &plan.steps).await
    }
}

const NOT_LEADER: &str = "pgdeploy: this member no longer leads";

/// Run one catalog step on `host`: refused if it no longer leads; a new verifier for
/// `password_of`; a role to drop must own nothing, and loses its privileges first.
pub async fn run_step(
    ctx: &Ctx,
    host: &str,
    database: &str,
    sql: &str,
    password_of: &Option<String>,
    drop_role: &Option<String>,
) -> Result<()> {
    let guard = format!(
        "DO $$BEGIN IF pg_is_in_recovery() THEN RAISE EXCEPTION '{NOT_LEADER}'; END IF; END$$;\n"
    );
    let mut script = guard.clone();
    if let Some(role) = password_of {
        let password = if role == catalog::CHECK_ROLE {
            check_password(ctx)
        } else {
            ctx.role_passwords
                .get(role)
                .map(|p| p.expose().to_string())
                .ok_or_else(|| miette!("role {role}: no password was read"))?
        };
        script.push_str(&format!(
            "\\set pw '{}'\n",
            catalog::new_verifier(&password)
        ));
    }
    if let Some(role) = drop_role {
        // It owns nothing: DROP OWNED only revokes its privileges, database by database.
        for db in prepare_drop(ctx, host, role).await? {
            let sql = format!("{guard}DROP OWNED BY \"{role}\";\n");
            run_sql(ctx, host, &db, &sql).await?;
        }
    }
    script.push_str(sql);
    script.push('\n');
    run_sql(ctx, host, database, &script).await
}

async fn run_sql(ctx: &Ctx, host: &str, database: &str, script: &str) -> Result<()> {
    let s = ctx.session(host)?;
    let out = s
        .exec(&psql_command(ctx, database), Some(script.as_bytes()))
        .await?;
    if out.ok() {
        return Ok(());
    }
    let err = ctx.redact(out.stderr_str().trim());
    if err.contains(NOT_LEADER) {
        return Err(super::steps::moved(format!(
            "{host} no longer leads the cluster"
        )));
    }
    Err(miette!("{host}: in database {database}: {err}"))
}

/// Refuse to drop `role` while it owns anything (saying what, database by database); else the
/// databases where it still holds privileges (which `DROP OWNED` revokes there).
async fn prepare_drop(ctx: &Ctx, host: &str, role: &str) -> Result<Vec<String>> {
    let q = format!(
        "SELECT coalesce(d.datname, ''), x.deptype, x.classid::regclass, x.objid, x.dbid \
         FROM pg_shdepend x LEFT JOIN pg_database d ON d.oid = x.dbid \
         WHERE x.refobjid = (SELECT oid FROM pg_roles WHERE rolname = '{role}') \
         AND x.refclassid = 'pg_authid'::regclass;"
    );
    let rows = query(ctx, host, "postgres", &q).await?;
    let mut owned: Vec<(String, String, String)> = Vec::new();
    let mut privileged: Vec<String> = Vec::new();
    for l in rows.lines() {
        let f: Vec<&str> = l.split('|').collect();
        if f.len() < 5 {
            continue;
        }
        let (db, deptype, class, objid) = (f[0], f[1], f[2], f[3]);
        if deptype == "o" && class != "pg_default_acl" {
            owned.push((db.into(), class.into(), objid.into()));
        } else if !db.is_empty() && !privileged.iter().any(|p| p == db) {
            privileged.push(db.to_string());
        }
    }
    if owned.is_empty() {
        return Ok(privileged);
    }
    // Name each object in its own database.
    let mut what: Vec<String> = Vec::new();
    for (db, class, objid) in &owned {
        // Shared objects (databases) are named from any database.
        let in_db = if db.is_empty() {
            "postgres"
        } else {
            db.as_str()
        };
        let sql = format!("SELECT pg_describe_object('{class}'::regclass, {objid}, 0);");
        let mut name = query(ctx, host, in_db, &sql)
            .await
            .map(|n| n.trim().to_string())
            .unwrap_or_default();
        if name.is_empty() {
            name = format!("{class} {objid}");
        }
        if !db.is_empty() {
            name.push_str(&format!(" in database {db}"));
        }
        what.push(name);
    }
    Err(miette!(
        help = format!("drop them or give them another owner (REASSIGN OWNED BY {role} TO ...), then apply again; the role is kept"),
        "role {role} still owns {} object(s): {}",
        owned.len(),
        what.join(", ")
    ))
}
