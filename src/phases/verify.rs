//! Verify, after an apply that changed something: through every HAProxy, the write port (5000)
//! reaches a writable leader and the read port (5001) a replica that has replayed the leader's
//! WAL; so has every replica, asked directly. Nothing is left in the user's databases: the
//! write is a transaction that gets a transaction ID and is rolled back.

use super::etcd::wait_until;
use super::patroni::members;
use crate::engine::phase::{Phase, PhasePlan};
use crate::engine::Ctx;
use crate::inventory::Group;
use crate::shell::sh_quote;
use crate::ssh::Session;
use async_trait::async_trait;
use miette::{miette, Result};
use std::time::Duration;

pub struct Verify;

/// Run SQL with psql on `s` against host:port as pgdeploy's check role (it may log in and
/// nothing more: the superuser is refused through the load balancers); the password goes over
/// stdin.
pub async fn psql(ctx: &Ctx, s: &Session, host: &str, port: u16, sql: &str) -> Result<String> {
    let password = super::catalog::check_password(ctx);
    let cmd = format!(
        "read -r PGPASSWORD; export PGPASSWORD; {} {} -AtXq -v ON_ERROR_STOP=1 -c {}",
        super::psql_bin(&ctx.inv),
        sh_quote(&format!(
            "{} port={port} user={} dbname=postgres connect_timeout=5",
            tls_target(ctx, host),
            crate::catalog::CHECK_ROLE
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

/// libpq's target and TLS settings for a connection to `host` (a load balancer's or a
/// member's address): TLS verified against the cluster CA, and, when the inventory names the
/// DNS name that clients use and `host` is an address, the certificate verified against that
/// name (`sslmode=verify-full`, as a client that connects by the name does).
pub fn tls_target(ctx: &Ctx, host: &str) -> String {
    let ca = format!("{}/ca.crt", crate::pki::TLS_DIR);
    let name = ctx
        .inv
        .dns
        .as_ref()
        .map(|d| d.name.trim_end_matches('.').to_string());
    match name {
        Some(n) if host.parse::<std::net::IpAddr>().is_ok() => {
            format!("host={n} hostaddr={host} sslmode=verify-full sslrootcert={ca}")
        }
        _ => format!("host={host} sslmode=verify-ca sslrootcert={ca}"),
    }
}

/// SQL as the postgres OS user over the local socket (no password).
pub async fn local_sql(ctx: &Ctx, s: &Session, sql: &str) -> Result<String> {
    let out = s
        .exec(
            &format!(
                "{} -AtXq -c {}",
                super::superuser_psql(&ctx.inv),
                sh_quote(sql)
            ),
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
            steps: Vec::new(),
            phase: "verify".into(),
            hosts: vec![],
        })
    }
    async fn apply(&self, _ctx: &Ctx, _plan: &PhasePlan) -> Result<()> {
        Ok(())
    }
    async fn after_apply(&self, ctx: &Ctx, changed: bool) -> Result<()> {
        // A no-op apply touches nothing, not even to prove the routing (check and status do).
        if !changed {
            return Ok(());
        }
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
        let checks = lbs.iter().map(|lb| {
            let replicas = &replicas;
            async move {
                ctx.observe(&lb.name, "checking writes through port 5000");
                // Writable: a transaction that gets a transaction ID (a replica refuses one),
                // rolled back, so nothing is left in the user's databases. Then the leader's
                // WAL position, which the replicas must reach.
                let out = psql(
                    ctx,
                    ls,
                    &lb.address,
                    p.primary_port,
                    "SELECT CASE WHEN pg_is_in_recovery() THEN 'replica' ELSE 'leader' END;\
                     BEGIN; SELECT txid_current() > 0; ROLLBACK;\
                     SELECT pg_current_wal_lsn()",
                )
                .await;
                let out = match out {
                    Ok(o) => o,
                    Err(e) => {
                        return Err(miette!(
                            "verify: no writable leader through {}:{}: {e}",
                            lb.name,
                            p.primary_port
                        ))
                    }
                };
                let lines: Vec<&str> = out.lines().map(str::trim).collect();
                if lines.first() != Some(&"leader") {
                    return Err(miette!(
                        "verify: port {} of {} reaches a replica, not the leader",
                        p.primary_port,
                        lb.name
                    ));
                }
                let lsn = lines
                    .last()
                    .filter(|l| l.contains('/'))
                    .ok_or_else(|| miette!("verify: no WAL position from the leader: {out:?}"))?
                    .to_string();
                let caught_up = format!(
                    "SELECT pg_is_in_recovery() AND pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"
                );
                if !replicas.is_empty() {
                    ctx.observe(&lb.name, "checking a replica through port 5001");
                    wait_until(
                        &format!(
                            "a replica through {}:{} has replayed the leader's WAL up to {lsn}",
                            lb.name, p.replica_port
                        ),
                        Duration::from_secs(30),
                        || async {
                            Ok(
                                psql(ctx, ls, &lb.address, p.replica_port, &caught_up).await?
                                    == "t",
                            )
                        },
                    )
                    .await?;
                }
                let on_replicas = replicas.iter().map(|r| {
                    let caught_up = &caught_up;
                    let lsn = &lsn;
                    async move {
                        let rs = ctx.session(r)?;
                        wait_until(
                            &format!("replica {r} has replayed the leader's WAL up to {lsn}"),
                            Duration::from_secs(30),
                            || async { Ok(local_sql(ctx, rs, caught_up).await? == "t") },
                        )
                        .await
                    }
                });
                futures::future::try_join_all(on_replicas).await?;
                Ok::<_, miette::Report>(())
            }
        });
        futures::future::try_join_all(checks).await?;
        Ok(())
    }
}
