//! Patroni / PostgreSQL: the first member bootstraps; the others join after it leads and
//! stream from it. Later configuration changes are applied through Patroni: its own settings
//! by a reload, PostgreSQL parameters through the DCS, and a rolling restart (replicas first,
//! the leader last) when PostgreSQL reports `pending_restart`.

use super::etcd::wait_until;
use crate::engine::change::{Change, UnitAction};
use crate::engine::exec::{apply_changes, run_unit};
use crate::engine::phase::{plan_roles, HostPlan, Phase, PhasePlan};
use crate::engine::{bounded, Ctx};
use crate::inventory::{Group, ParamValue};
use crate::shell::sh_quote;
use async_trait::async_trait;
use miette::{miette, Result};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub const CONFIG: &str = "/etc/patroni/config.yml";
pub const UNIT: &str = "patroni.service";

pub struct Patroni;

/// One member as `patronictl list -f json` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub name: String,
    /// The PostgreSQL host address the member advertises.
    pub host: String,
    pub role: String,
    pub state: String,
    pub timeline: Option<i64>,
    pub lag_mb: Option<f64>,
    pub pending_restart: bool,
}

impl Member {
    pub fn is_leader(&self) -> bool {
        self.role == "Leader" || self.role == "Standby Leader"
    }
    pub fn is_running(&self) -> bool {
        self.state == "running" || self.state == "streaming"
    }
}

/// Pure: parse `patronictl list -f json`.
pub fn parse_members(json: &str) -> Result<Vec<Member>, String> {
    let v: Value = serde_json::from_str(json.trim()).map_err(|e| format!("not JSON: {e}"))?;
    let arr = v.as_array().ok_or("not a JSON list")?;
    Ok(arr
        .iter()
        .map(|m| Member {
            name: m["Member"].as_str().unwrap_or("").to_string(),
            host: m["Host"].as_str().unwrap_or("").to_string(),
            role: m["Role"].as_str().unwrap_or("").to_string(),
            state: m["State"].as_str().unwrap_or("").to_string(),
            timeline: m["TL"].as_i64(),
            lag_mb: m["Lag in MB"].as_f64(),
            pending_restart: m
                .get("Pending restart")
                .map(|p| {
                    p.as_str()
                        .map(|s| !s.is_empty())
                        .unwrap_or(p.as_bool().unwrap_or(false))
                })
                .unwrap_or(false),
        })
        .collect())
}

fn param_str(v: &ParamValue) -> String {
    v.to_string()
}

/// The DCS settings pgdeploy owns.
pub fn desired_dcs(ctx: &Ctx) -> BTreeMap<String, String> {
    let inv = &ctx.inv;
    let mut m = BTreeMap::new();
    m.insert("ttl".into(), inv.patroni.ttl.to_string());
    m.insert("loop_wait".into(), inv.patroni.loop_wait.to_string());
    m.insert(
        "retry_timeout".into(),
        inv.patroni.retry_timeout.to_string(),
    );
    m.insert(
        "maximum_lag_on_failover".into(),
        inv.patroni.maximum_lag_on_failover.to_string(),
    );
    m.insert(
        "synchronous_mode".into(),
        inv.postgres.synchronous_mode.to_string(),
    );
    if inv.platform.patroni_major() >= 4 {
        // Patroni 4 keeps a departed member's replication slot for member_slots_ttl (30 min
        // by default) on every node; pgdeploy retires members explicitly and drops their
        // slot then, as Patroni 3 did.
        m.insert("member_slots_ttl".into(), "0".into());
    }
    for (k, v) in &inv.postgres.parameters {
        m.insert(format!("postgresql.parameters.{k}"), param_str(v));
    }
    m
}

fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, x, out);
            }
        }
        Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        Value::Bool(b) => {
            out.insert(prefix.to_string(), b.to_string());
        }
        Value::Number(n) => {
            out.insert(prefix.to_string(), n.to_string());
        }
        Value::Null => {}
        Value::Array(_) => {
            out.insert(prefix.to_string(), v.to_string());
        }
    }
}

fn same_value(a: &str, b: &str) -> bool {
    let norm = |s: &str| match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" => "true".to_string(),
        "off" | "false" | "no" => "false".to_string(),
        x => x.to_string(),
    };
    norm(a) == norm(b)
}

/// Pure: which DCS keys differ (key, current, desired).
pub fn dcs_diff(
    current: &Value,
    desired: &BTreeMap<String, String>,
) -> Vec<(String, Option<String>, String)> {
    let mut flat = BTreeMap::new();
    flatten("", current, &mut flat);
    desired
        .iter()
        .filter(|(k, v)| !flat.get(*k).map(|c| same_value(c, v)).unwrap_or(false))
        .map(|(k, v)| (k.clone(), flat.get(k).cloned(), v.clone()))
        .collect()
}

/// A JSON patch (for `patronictl edit-config --apply -`) from dotted keys.
pub fn dcs_patch(diff: &[(String, Option<String>, String)]) -> Value {
    let mut root = serde_json::Map::new();
    for (k, _, v) in diff {
        let parts: Vec<&str> = if let Some(p) = k.strip_prefix("postgresql.parameters.") {
            vec!["postgresql", "parameters", p]
        } else {
            k.split('.').collect()
        };
        let mut cur = &mut root;
        for (i, p) in parts.iter().enumerate() {
            if i + 1 == parts.len() {
                let val = if let Ok(n) = v.parse::<i64>() {
                    Value::from(n)
                } else if v == "true" || v == "false" {
                    Value::Bool(v == "true")
                } else {
                    Value::String(v.clone())
                };
                cur.insert(p.to_string(), val);
            } else {
                cur = cur
                    .entry(p.to_string())
                    .or_insert_with(|| Value::Object(Default::default()))
                    .as_object_mut()
                    .expect("object just inserted");
            }
        }
    }
    Value::Object(root)
}

fn patronictl(args: &str) -> String {
    format!("patronictl -c {CONFIG} {args}")
}

/// Pure: parse Patroni's GET /cluster.
pub fn parse_cluster(json: &str) -> Result<Vec<Member>, String> {
    let v: Value = serde_json::from_str(json.trim()).map_err(|e| format!("not JSON: {e}"))?;
    let arr = v["members"].as_array().ok_or("no members list")?;
    Ok(arr
        .iter()
        .map(|m| {
            let role = match m["role"].as_str().unwrap_or("") {
                "leader" | "master" | "primary" => "Leader",
                "standby_leader" => "Standby Leader",
                "sync_standby" => "Sync Standby",
                "replica" => "Replica",
                other => other,
            };
            Member {
                name: m["name"].as_str().unwrap_or("").to_string(),
                host: m["host"].as_str().unwrap_or("").to_string(),
                role: role.to_string(),
                state: m["state"].as_str().unwrap_or("").to_string(),
                timeline: m["timeline"].as_i64(),
                lag_mb: m["lag"].as_f64().map(|b| b / 1_048_576.0),
                pending_restart: m["pending_restart"].as_bool().unwrap_or(false),
            }
        })
        .collect())
}

/// The cluster as Patroni sees it, asked on the first Patroni host that can answer.
pub async fn members(ctx: &Ctx) -> Result<Option<Vec<Member>>> {
    Ok(cluster_json(ctx, "/cluster")
        .await?
        .and_then(|(_, j)| parse_cluster(&j).ok()))
}

/// GET `path` from the first Patroni member that answers: (member, body).
pub async fn cluster_json(ctx: &Ctx, path: &str) -> Result<Option<(String, String)>> {
    for h in ctx.inv.group_hosts(Group::Patroni) {
        let out = ctx
            .https_get(&h.name, &h.address, ctx.inv.patroni.restapi_port, path)
            .await?;
        if out.ok() {
            return Ok(Some((h.name.clone(), out.stdout_str())));
        }
    }
    Ok(None)
}

/// Members that the leader sees streaming (application names in pg_stat_replication).
pub async fn streaming(ctx: &Ctx, leader: &str) -> Result<BTreeSet<String>> {
    let s = ctx.session(leader)?;
    let out = s
        .exec(
            "runuser -u postgres -- psql -AtX -c \"select application_name from pg_stat_replication where state = 'streaming'\" 2>/dev/null",
            None,
        )
        .await?;
    Ok(out
        .stdout_str()
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// Wait until one leader runs and every other member streams from it.
pub async fn wait_converged(ctx: &Ctx, deadline: Duration) -> Result<()> {
    let names: Vec<String> = ctx
        .inv
        .group_hosts(Group::Patroni)
        .iter()
        .map(|h| h.name.clone())
        .collect();
    ctx.observe(&names[0], "waiting for a leader and streaming replicas");
    wait_until(
        "a Patroni leader runs and every replica streams from it",
        deadline,
        || async {
            let Some(ms) = members(ctx).await? else {
                return Ok(false);
            };
            let Some(leader) = ms.iter().find(|m| m.is_leader() && m.is_running()) else {
                return Ok(false);
            };
            if ms.len() < names.len() || !ms.iter().all(|m| m.is_running()) {
                return Ok(false);
            }
            let st = streaming(ctx, &leader.name).await?;
            Ok(names
                .iter()
                .filter(|n| **n != leader.name)
                .all(|n| st.contains(n)))
        },
    )
    .await
}

async fn wait_member_running(ctx: &Ctx, name: &str) -> Result<()> {
    wait_until(
        &format!("Patroni member {name} is running"),
        Duration::from_secs(180),
        || async {
            Ok(members(ctx)
                .await?
                .map(|ms| ms.iter().any(|m| m.name == name && m.is_running()))
                .unwrap_or(false))
        },
    )
    .await
}

#[async_trait]
impl Phase for Patroni {
    fn name(&self) -> &str {
        "patroni"
    }

    async fn plan(&self, ctx: &Ctx) -> Result<PhasePlan> {
        let roles = ["patroni".to_string()];
        let (hosts, ms, config, states) = tokio::join!(
            plan_roles(ctx, &roles, false),
            members(ctx),
            cluster_json(ctx, "/config"),
            super::upgrade::states(ctx)
        );
        let (mut hosts, ms, config, states) = (hosts?, ms?, config?, states?);
        let Some(ms) = ms else {
            if let Some(first) = hosts.first_mut() {
                first.changes.push(Change::Deferred {
                    what: "bootstrap: this member initialises the cluster, then the others join and stream from it".into(),
                    why: "Patroni is not running yet".into(),
                });
            }
            return Ok(PhasePlan {
                phase: "patroni".into(),
                hosts,
            });
        };
        let leader = ms.iter().find(|m| m.is_leader()).map(|m| m.name.clone());
        // DCS settings (PostgreSQL parameters and Patroni timing) live in etcd.
        if let Some(l) = &leader {
            if let Some((_, body)) = &config {
                let current: Value = serde_json::from_str(body).unwrap_or(Value::Null);
                let diff = dcs_diff(&current, &desired_dcs(ctx));
                if !diff.is_empty() {
                    let what: Vec<String> = diff
                        .iter()
                        .map(|(k, c, d)| {
                            format!("{k}: {} -> {d}", c.as_deref().unwrap_or("(unset)"))
                        })
                        .collect();
                    if let Some(hp) = hosts.iter_mut().find(|h| &h.host == l) {
                        hp.changes.push(Change::Command {
                            command: format!(
                                "patronictl edit-config --apply - ({})",
                                what.join(", ")
                            ),
                            reason:
                                "the cluster-wide settings in the DCS differ from the inventory"
                                    .into(),
                        });
                        hp.changes.push(Change::Deferred {
                            what: "rolling restart (replicas first, the leader last) of members that report pending_restart".into(),
                            why: "PostgreSQL tells which parameters need a restart only after they are applied".into(),
                        });
                    }
                }
            }
        }
        // A pinned minor that differs from what members run: the rolling upgrade.
        for (member, changes) in super::upgrade::plan_changes(&states, &ctx.inv.postgres.version) {
            if let Some(hp) = hosts.iter_mut().find(|h| h.host == member) {
                hp.changes.extend(changes);
            }
        }
        for m in &ms {
            if m.pending_restart {
                if let Some(hp) = hosts.iter_mut().find(|h| h.host == m.name) {
                    hp.changes.push(Change::Unit {
                        unit: format!("postgresql (member {})", m.name),
                        action: UnitAction::Restart,
                        reason: "PostgreSQL reports pending_restart".into(),
                    });
                }
            }
        }
        Ok(PhasePlan {
            phase: "patroni".into(),
            hosts,
        })
    }

    async fn apply(&self, ctx: &Ctx, plan: &PhasePlan) -> Result<()> {
        // 1. Files on every member.
        let mut futs = Vec::new();
        for hp in &plan.hosts {
            let files: Vec<Change> = hp
                .changes
                .iter()
                .filter(|c| {
                    matches!(
                        c,
                        Change::File { .. } | Change::Directory { .. } | Change::Sysctl { .. }
                    )
                })
                .cloned()
                .collect();
            futs.push(async move {
                if !files.is_empty() {
                    ctx.observe(&hp.host, "applying");
                }
                apply_changes(ctx.session(&hp.host)?, &files).await
            });
        }
        bounded(ctx.forks, futs).await?;
        let units_of = |hp: &HostPlan| -> Vec<(UnitAction, String)> {
            hp.changes
                .iter()
                .filter_map(|c| match c {
                    Change::Unit { unit, action, .. } if !unit.starts_with("postgresql (") => {
                        Some((*action, unit.clone()))
                    }
                    _ => None,
                })
                .collect()
        };
        let ms = members(ctx).await?.unwrap_or_default();
        let leader = ms
            .iter()
            .find(|m| m.is_leader() && m.is_running())
            .map(|m| m.name.clone());
        // 2. Units. Without a leader: bootstrap the first member alone, then the others.
        let order: Vec<&HostPlan> = {
            let mut v: Vec<&HostPlan> = plan.hosts.iter().collect();
            // Replicas first, the leader last (for restarts); on bootstrap the first member first.
            // Members new to the cluster start after every reload, the leader's included: its
            // pg_hba must let them replicate before they clone from it.
            if let Some(l) = &leader {
                v.sort_by_key(|h| (!ms.iter().any(|m| m.name == h.host), &h.host == l));
            }
            v
        };
        if leader.is_none() {
            if let Some(first) = order.first() {
                ctx.observe(&first.host, "bootstrapping the cluster");
                let s = ctx.session(&first.host)?;
                for (a, u) in units_of(first) {
                    run_unit(s, &u, a).await?;
                }
                wait_until(
                    &format!("{} leads the new cluster", first.host),
                    Duration::from_secs(180),
                    || async {
                        Ok(members(ctx)
                            .await?
                            .map(|ms| {
                                ms.iter().any(|m| {
                                    m.name == first.host && m.is_leader() && m.is_running()
                                })
                            })
                            .unwrap_or(false))
                    },
                )
                .await?;
            }
            let mut futs = Vec::new();
            for hp in order.iter().skip(1) {
                futs.push(async move {
                    ctx.observe(&hp.host, "joining as a replica");
                    let s = ctx.session(&hp.host)?;
                    for (a, u) in units_of(hp) {
                        run_unit(s, &u, a).await?;
                    }
                    Ok::<_, miette::Report>(())
                });
            }
            bounded(ctx.forks, futs).await?;
        } else {
            let mut reloaded_at = None;
            for hp in &order {
                let acts = units_of(hp);
                if acts.is_empty() {
                    continue;
                }
                let s = ctx.session(&hp.host)?;
                for (a, u) in acts {
                    ctx.observe(&hp.host, &format!("{} {u}", a.verb()));
                    run_unit(s, &u, a).await?;
                    if a == UnitAction::Reload {
                        reloaded_at = Some(&hp.host);
                    }
                }
                wait_member_running(ctx, &hp.host).await?;
            }
            // A reload takes effect in the member's next HA loop (pg_hba rewritten, PostgreSQL
            // reloaded): wait for it, so that later phases see the new access rules.
            if let Some(host) = reloaded_at {
                let since = loop_deadline(ctx, host).await?;
                wait_all_looped_since(ctx, since, "its reloaded configuration").await?;
            }
        }
        wait_converged(ctx, Duration::from_secs(300)).await?;
        // 3. A rolling minor upgrade, when members run another minor than the inventory pins.
        super::upgrade::run(ctx, &upgrade_bounds(ctx)).await?;
        // 4. DCS settings, then restarts that PostgreSQL asks for.
        let ms = members(ctx)
            .await?
            .ok_or_else(|| miette!("Patroni does not answer after start"))?;
        let leader = ms
            .iter()
            .find(|m| m.is_leader())
            .map(|m| m.name.clone())
            .ok_or_else(|| miette!("no Patroni leader"))?;
        let s = ctx.session(&leader)?;
        let (_, body) = cluster_json(ctx, "/config")
            .await?
            .ok_or_else(|| miette!("Patroni's REST API does not answer"))?;
        let current: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let diff = dcs_diff(&current, &desired_dcs(ctx));
        if !diff.is_empty() {
            ctx.observe(&leader, "updating the cluster-wide settings");
            let patch = dcs_patch(&diff).to_string();
            let keys: Vec<&str> = diff.iter().map(|(k, _, _)| k.as_str()).collect();
            ctx.step(
                &leader,
                &format!("~ patroni cluster settings: {}", keys.join(", ")),
                async {
                    let out = s
                        .exec(
                            &patronictl("edit-config --force --apply -"),
                            Some(patch.as_bytes()),
                        )
                        .await?;
                    if !out.ok() {
                        return Err(miette!(
                            "{leader}: patronictl edit-config failed: {}",
                            ctx.redact(&out.stderr_str())
                        ));
                    }
                    Ok(())
                },
            )
            .await?;
            // Every member applies the new settings in its next HA loop; wait until each one
            // has been through a loop that started after the change.
            let since = loop_deadline(ctx, &leader).await?;
            wait_all_looped_since(ctx, since, "the new cluster-wide settings").await?;
        }
        restart_pending(ctx).await?;
        wait_converged(ctx, Duration::from_secs(300)).await
    }
}

/// Upgrade bounds, from `pgdeploy upgrade` options when given.
pub fn upgrade_bounds(ctx: &Ctx) -> super::upgrade::Bounds {
    let v = ctx.vars();
    let mut b = super::upgrade::Bounds::default();
    if let Some(x) = v["upgrade"]["max_lag_bytes"].as_u64() {
        b.max_lag_bytes = x;
    }
    if let Some(x) = v["upgrade"]["max_xact_age_secs"].as_u64() {
        b.max_xact_age_secs = x;
    }
    b
}

/// Restart members with pending_restart: replicas one at a time, then the leader.
pub async fn restart_pending(ctx: &Ctx) -> Result<()> {
    for _round in 0..4 {
        let Some(ms) = members(ctx).await? else {
            return Ok(());
        };
        if !ms.iter().any(|m| m.pending_restart) {
            return Ok(());
        }
        restart_pending_once(ctx, &ms).await?;
    }
    Ok(())
}

/// Wait until every member's Patroni has talked to the DCS after `since` (epoch seconds).
/// The host's clock now plus one Patroni loop: a member seen in the DCS after that has run a
/// whole HA loop that started after now.
async fn loop_deadline(ctx: &Ctx, host: &str) -> Result<f64> {
    Ok(ctx
        .session(host)?
        .run("date +%s.%N")
        .await?
        .stdout_str()
        .trim()
        .parse::<f64>()
        .unwrap_or(0.0)
        + f64::from(ctx.inv.patroni.loop_wait))
}

async fn wait_all_looped_since(ctx: &Ctx, since: f64, what: &str) -> Result<()> {
    for h in ctx.inv.group_hosts(Group::Patroni) {
        let port = ctx.inv.patroni.restapi_port;
        wait_until(
            &format!("Patroni on {} applied {what}", h.name),
            Duration::from_secs(60),
            || async {
                let out = ctx.https_get(&h.name, &h.address, port, "/patroni").await?;
                let v: Value = serde_json::from_str(&out.stdout_str()).unwrap_or(Value::Null);
                Ok(v["dcs_last_seen"]
                    .as_f64()
                    .map(|t| t > since)
                    .unwrap_or(false))
            },
        )
        .await?;
    }
    Ok(())
}

async fn restart_pending_once(ctx: &Ctx, ms: &[Member]) -> Result<()> {
    let mut pending: Vec<&Member> = ms.iter().filter(|m| m.pending_restart).collect();
    pending.sort_by_key(|m| m.is_leader());
    for m in pending {
        ctx.observe(&m.name, "restarting PostgreSQL (pending_restart)");
        let s = ctx.session(&m.name)?;
        ctx.step(
            &m.name,
            "! restart PostgreSQL (pending_restart) through Patroni",
            async {
                let out = s
                    .exec(
                        &patronictl(&format!(
                            "restart {} {} --pending --force",
                            sh_quote(&ctx.inv.cluster.name),
                            sh_quote(&m.name)
                        )),
                        None,
                    )
                    .await?;
                if !out.ok() {
                    return Err(miette!(
                        "{}: restart through Patroni failed: {}",
                        m.name,
                        out.stderr_str()
                    ));
                }
                Ok(())
            },
        )
        .await?;
        // Running again (and streaming, for a replica). It may still report pending_restart:
        // a replica keeps the leader's higher value of max_connections and the like until
        // the leader has restarted with the lower one; the next round restarts it again.
        wait_until(
            &format!("{} runs again after its restart", m.name),
            Duration::from_secs(180),
            || async {
                let Some(ms) = members(ctx).await? else {
                    return Ok(false);
                };
                let Some(me) = ms.iter().find(|x| x.name == m.name) else {
                    return Ok(false);
                };
                if !me.is_running() {
                    return Ok(false);
                }
                if me.is_leader() {
                    return Ok(true);
                }
                let Some(leader) = ms.iter().find(|x| x.is_leader()) else {
                    return Ok(false);
                };
                Ok(streaming(ctx, &leader.name).await?.contains(&m.name))
            },
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_patronictl_list() {
        let j = r#"[{"Cluster": "pg", "Member": "pg1", "Host": "10.0.0.21", "Role": "Leader", "State": "running", "TL": 1},
                   {"Cluster": "pg", "Member": "pg2", "Host": "10.0.0.22", "Role": "Replica", "State": "streaming", "TL": 1, "Lag in MB": 0, "Pending restart": "*"}]"#;
        let m = parse_members(j).unwrap();
        assert_eq!(m.len(), 2);
        assert!(m[0].is_leader() && m[0].is_running());
        assert!(!m[1].is_leader() && m[1].is_running() && m[1].pending_restart);
        assert_eq!(m[1].lag_mb, Some(0.0));
    }

    #[test]
    fn parses_rest_cluster() {
        let j = r#"{"members": [{"name": "pg1", "role": "leader", "state": "running", "api_url": "https://10.0.0.21:8008/patroni", "host": "10.0.0.21", "port": 5432, "timeline": 2},
            {"name": "pg2", "role": "replica", "state": "streaming", "host": "10.0.0.22", "port": 5432, "timeline": 2, "lag": 2097152, "pending_restart": true}], "scope": "pg"}"#;
        let m = parse_cluster(j).unwrap();
        assert!(m[0].is_leader() && m[0].is_running());
        assert_eq!(m[0].timeline, Some(2));
        assert_eq!(m[1].role, "Replica");
        assert_eq!(m[1].lag_mb, Some(2.0));
        assert!(m[1].pending_restart);
        assert!(parse_cluster("{}").is_err());
    }

    #[test]
    fn dcs_diff_finds_changed_and_missing_parameters() {
        let current: Value = serde_json::json!({
            "ttl": 10, "loop_wait": 2,
            "postgresql": {"parameters": {"max_connections": 100, "hot_standby": "on"}}
        });
        let mut want = BTreeMap::new();
        want.insert("ttl".to_string(), "10".to_string());
        want.insert(
            "postgresql.parameters.max_connections".to_string(),
            "200".to_string(),
        );
        want.insert(
            "postgresql.parameters.hot_standby".to_string(),
            "true".to_string(),
        );
        want.insert(
            "postgresql.parameters.work_mem".to_string(),
            "8MB".to_string(),
        );
        let d = dcs_diff(&current, &want);
        assert_eq!(
            d,
            vec![
                (
                    "postgresql.parameters.max_connections".into(),
                    Some("100".into()),
                    "200".into()
                ),
                ("postgresql.parameters.work_mem".into(), None, "8MB".into()),
            ]
        );
        let p = dcs_patch(&d);
        assert_eq!(
            p,
            serde_json::json!({"postgresql": {"parameters": {"max_connections": 200, "work_mem": "8MB"}}})
        );
    }
}
