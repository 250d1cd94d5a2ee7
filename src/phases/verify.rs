//! Verify: the seed's own "Uso" scenario, automated. Through every HAProxy, write on the leader
//! (port 5000) and read the rows back on the replicas (port 5001) and directly on each replica.

use super::etcd::wait_until;
use super::patroni::members;
use crate::engine::facts::sh_quote;
use crate::engine::phase::{Phase, PhasePlan};
use crate::engine::Ctx;
use crate::inventory::Group;
use crate::ssh::Session;
use async_trait::async_trait;
use miette::{miette, Result};
use std::time::Duration;

pub struct Verify;

pub const SUPERUSER: &str = "postgres";

/// Run SQL with psql on `s` against host:port as the superuser; the password goes over stdin.
pub async fn psql(ctx: &Ctx, s: &Session, host: &str, port: u16, sql: &str) -> Result<String> {
    let password = ctx.vars()["secrets"]["superuser_password"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let cmd = format!(
        "read -r PGPASSWORD; export PGPASSWORD; psql {} -AtXq -v ON_ERROR_STOP=1 -c {}",
        sh_quote(&format!(
            "host={host} port={port} user={SUPERUSER} dbname=postgres connect_timeout=5 sslmode=prefer"
        )),
        sh_quote(sql)
    );
    let out = s
        .exec(&cmd, Some(format!("{password}\n").as_bytes()))
        .await?;
    if !out.ok() {
        return Err(miette!(
            "{}: psql to {host}:{port} failed: {}",
            s.host(),
            ctx.redact(out.stderr_str().trim())
        ));
    }
    Ok(out.stdout_str().trim().to_string())
}

/// SQL as the postgres OS user over the local socket (no password).
pub async fn local_sql(s: &Session, sql: &str) -> Result<String> {
    let out = s
        .exec(
            &format!("runuser -u postgres -- psql -AtXq -c {}", sh_quote(sql)),
            None,
        )
        .await?;
    if !out.ok() {
        return Err(miette!(
            "{}: local psql failed: {}",
            s.host(),
            out.stderr_str().trim()
        ));
    }
    Ok(out.stdout_str().trim().to_string())
}

#[async_trait]
impl Phase for Verify {
    fn name(&self) -> &str {
        "verify"
    }
    async fn plan(&self, _ctx: &Ctx) -> Result<PhasePlan> {
        Ok(PhasePlan {
            phase: "verify".into(),
            hosts: vec![],
        })
    }
    async fn apply(&self, _ctx: &Ctx, _plan: &PhasePlan) -> Result<()> {
        Ok(())
    }
    async fn after_apply(&self, ctx: &Ctx) -> Result<()> {
        let ms = members(ctx)
            .await?
            .ok_or_else(|| miette!("verify: Patroni does not answer"))?;
        let leader = ms
            .iter()
            .find(|m| m.is_leader())
            .ok_or_else(|| miette!("verify: the cluster has no leader"))?
            .name
            .clone();
        let replicas: Vec<String> = ms
            .iter()
            .filter(|m| !m.is_leader())
            .map(|m| m.name.clone())
            .collect();
        let ls = ctx.session(&leader)?;
        let p = &ctx.inv.haproxy;
        let lbs = ctx.inv.group_hosts(Group::Haproxy);
        // The table first (concurrent CREATE TABLE IF NOT EXISTS can collide), then every
        // HAProxy host at once.
        if let Some(first) = lbs.first() {
            psql(
                ctx,
                ls,
                &first.address,
                p.primary_port,
                "CREATE TABLE IF NOT EXISTS pgdeploy_verify (id bigserial PRIMARY KEY, via text NOT NULL, at timestamptz NOT NULL DEFAULT now());\
                 DELETE FROM pgdeploy_verify WHERE at < now() - interval '1 day'",
            )
            .await?;
        }
        let checks = lbs.iter().map(|lb| {
            let replicas = &replicas;
            async move {
                ctx.observe(&lb.name, "writing through port 5000");
                let id = psql(
                    ctx,
                    ls,
                    &lb.address,
                    p.primary_port,
                    &format!(
                        "INSERT INTO pgdeploy_verify (via) SELECT {} WHERE NOT pg_is_in_recovery() RETURNING id",
                        sh_sql_str(&lb.name)
                    ),
                )
                .await?;
                let id: i64 = id
                    .lines()
                    .last()
                    .and_then(|l| l.trim().parse().ok())
                    .ok_or_else(|| {
                        miette!(
                            "verify: the write through {}:{} did not reach the leader",
                            lb.name,
                            p.primary_port
                        )
                    })?;
                if !replicas.is_empty() {
                    ctx.observe(&lb.name, "reading back through port 5001");
                    let q = format!(
                        "SELECT count(*) FROM pgdeploy_verify WHERE id = {id} AND pg_is_in_recovery()"
                    );
                    wait_until(
                        &format!(
                            "row {id} is readable on a replica through {}:{}",
                            lb.name, p.replica_port
                        ),
                        Duration::from_secs(30),
                        || async { Ok(psql(ctx, ls, &lb.address, p.replica_port, &q).await? == "1") },
                    )
                    .await?;
                }
                let on_replicas = replicas.iter().map(|r| async move {
                    let rs = ctx.session(r)?;
                    let q = format!("SELECT count(*) FROM pgdeploy_verify WHERE id = {id}");
                    wait_until(
                        &format!("row {id} is on replica {r}"),
                        Duration::from_secs(30),
                        || async { Ok(local_sql(rs, &q).await? == "1") },
                    )
                    .await
                });
                futures::future::try_join_all(on_replicas).await?;
                Ok::<_, miette::Report>(())
            }
        });
        futures::future::try_join_all(checks).await?;
        Ok(())
    }
}

fn sh_sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
