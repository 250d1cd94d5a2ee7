//! Patroni / PostgreSQL: the first member bootstraps; the others join after it leads and
//! stream from it. Later configuration changes are applied through Patroni: its own settings
//! by a reload, PostgreSQL parameters through the DCS, and a rolling restart (replicas first,
//! the leader last) when PostgreSQL reports `pending_restart`.

use super::etcd::wait_until;
use crate::engine::change::UnitAction;
use crate::engine::phase::{plan_roles, HostPlan, Phase, PhasePlan};
use crate::engine::step::{Expand, Gate, PlannedStep, Step};
use crate::engine::Ctx;
use crate::inventory::{Group, ParamValue};
use async_trait::async_trait;
use miette::Result;
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
    m.insert(
        "failsafe_mode".into(),
        inv.patroni.failsafe_mode.to_string(),
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

pub(crate) fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
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

pub(crate) fn same_value(a: &str, b: &str) -> bool {
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

pub(crate) fn patronictl(args: &str) -> String {
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
            &format!(
                "{} -AtX -c \"select application_name from pg_stat_replication where state = 'streaming'\" 2>/dev/null",
                super::superuser_psql(&ctx.inv)
            ),
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

pub(crate) async fn wait_member_running(ctx: &Ctx, name: &str) -> Result<()> {
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
        let config = config.map(|(_, body)| serde_json::from_str(&body).unwrap_or(Value::Null));
        // Patroni answers while etcd authentication is off: a cluster deployed before it (a
        // new cluster gets it from the etcd phase, before Patroni starts).
        let running = ms.as_deref().is_some_and(|ms| !ms.is_empty());
        let mut steps = plan_steps(
            &mut hosts,
            ms.as_deref(),
            config.as_ref(),
            &states,
            &desired_dcs(ctx),
            &ctx.inv.postgres.version,
            &upgrade_bounds(ctx),
        )?;
        if running && super::etcd::auth_enabled(ctx).await? != Some(true) {
            let etcd: Vec<String> = ctx
                .inv
                .group_hosts(crate::inventory::Group::Etcd)
                .iter()
                .map(|h| h.name.clone())
                .collect();
            let leader = ms
                .as_deref()
                .and_then(|ms| ms.iter().find(|m| m.is_leader()).map(|m| m.name.clone()))
                .or_else(|| hosts.first().map(|h| h.host.clone()));
            steps.extend(auth_steps(
                &etcd,
                leader.as_deref(),
                &super::etcd::patroni_user(&ctx.inv.cluster.name),
                &super::etcd::patroni_prefix(&ctx.inv.cluster.name),
            ));
        }
        Ok(PhasePlan {
            phase: "patroni".into(),
            hosts,
            steps,
        })
    }

    async fn apply(&self, ctx: &Ctx, plan: &PhasePlan) -> Result<()> {
        super::steps::apply_plan(ctx, plan).await
    }
}

/// Pure: a cluster deployed before etcd authentication gets it once every member runs with
/// its etcd user (the steps before these: a reload gives it, and Patroni logs in only when
/// etcd asks). First the etcd members restart one at a time: Patroni's open connections were
/// made with the certificates of that time, whose Common Name etcd's gateway refuses once
/// authentication is on; it reconnects with the new ones. Then every member must get through
/// an HA loop with authentication on.
pub fn auth_steps(
    etcd: &[String],
    leader: Option<&str>,
    user: &str,
    prefix: &str,
) -> Vec<PlannedStep> {
    let (Some(first), Some(leader)) = (etcd.first(), leader) else {
        return Vec::new();
    };
    let mut steps = Vec::new();
    for e in etcd {
        steps.push(PlannedStep::new(
            e,
            Step::Unit {
                unit: "etcd.service".into(),
                action: UnitAction::Restart,
                reason: "Patroni reconnects with its certificate without a Common Name \
                         before etcd authentication"
                    .into(),
            },
        ));
        steps.push(wait(e, Gate::EtcdMemberHealthy { member: e.clone() }));
    }
    steps.push(PlannedStep::new(
        first,
        Step::EtcdAuthEnable {
            user: user.to_string(),
            prefix: prefix.to_string(),
        },
    ));
    steps.push(wait(leader, Gate::NextLoop));
    steps.push(wait(leader, Gate::Converged));
    steps
}

fn wait(host: &str, gate: Gate) -> PlannedStep {
    PlannedStep::new(host, Step::Wait { gate })
}

/// Pure: the ordered steps of the patroni phase, from the members' own planned changes (their
/// unit actions move out of `hosts` into the steps), the cluster as Patroni reports it (None:
/// it does not answer), its DCS configuration, the members' PostgreSQL versions and packages,
/// the settings the inventory wants in the DCS, and the pinned minor.
///
/// - No leader yet: the first member starts alone and must lead, then the others start and
///   stream from it; the DCS is compared once the cluster runs.
/// - A running cluster: unit actions member by member (replicas first, the leader last, new
///   members after every reload), each followed by a wait until it runs; then the rolling
///   minor upgrade; then the DCS patch and the restarts PostgreSQL asks for.
pub fn plan_steps(
    hosts: &mut [HostPlan],
    ms: Option<&[Member]>,
    config: Option<&Value>,
    states: &[super::upgrade::MemberState],
    desired: &BTreeMap<String, String>,
    want_minor: &str,
    bounds: &super::upgrade::Bounds,
) -> Result<Vec<PlannedStep>> {
    // Unit actions leave the host plans: the steps order them across members.
    let mut units: BTreeMap<String, Vec<PlannedStep>> = BTreeMap::new();
    for hp in hosts.iter_mut() {
        let host = hp.host.clone();
        hp.changes.retain(|c| match Step::from_unit_change(c) {
            Some(step) => {
                units
                    .entry(host.clone())
                    .or_default()
                    .push(PlannedStep::new(&host, step));
                false
            }
            None => true,
        });
    }
    let ms = ms.unwrap_or(&[]);
    let leader = ms
        .iter()
        .find(|m| m.is_leader() && m.is_running())
        .map(|m| m.name.clone());
    let mut steps = Vec::new();
    let Some(leader) = leader else {
        // Bootstrap (or a cluster without a leader): the first member alone, then the others.
        let Some(first) = hosts.first().map(|h| h.host.clone()) else {
            return Ok(steps);
        };
        let first_units = units.remove(&first).unwrap_or_default();
        if first_units.is_empty() && units.is_empty() {
            return Ok(steps);
        }
        steps.extend(first_units);
        steps.push(wait(
            &first,
            Gate::Leads {
                member: first.clone(),
            },
        ));
        for hp in hosts.iter() {
            steps.extend(units.remove(&hp.host).unwrap_or_default());
        }
        steps.push(wait(&first, Gate::Converged));
        steps.push(PlannedStep::new(
            &first,
            Step::Deferred {
                expand: Expand::DcsAfterBootstrap,
                what: "compare the cluster-wide settings with the DCS, patch it if they differ"
                    .into(),
                why: "the new cluster writes its DCS settings when it bootstraps".into(),
            },
        ));
        return Ok(steps);
    };
    // 1. Unit actions: existing replicas, the leader, then members new to the cluster (the
    //    leader's pg_hba must let them replicate before they clone from it).
    let mut order: Vec<&HostPlan> = hosts.iter().collect();
    order.sort_by_key(|h| (!ms.iter().any(|m| m.name == h.host), h.host == leader));
    let mut reloaded = None;
    for hp in order {
        let Some(us) = units.remove(&hp.host) else {
            continue;
        };
        if us.iter().any(|s| {
            matches!(
                s.step,
                Step::Unit {
                    action: UnitAction::Reload,
                    ..
                }
            )
        }) {
            reloaded = Some(hp.host.clone());
        }
        steps.extend(us);
        steps.push(wait(
            &hp.host,
            Gate::MemberRunning {
                member: hp.host.clone(),
            },
        ));
    }
    // A reload takes effect in the member's next HA loop (pg_hba rewritten, PostgreSQL
    // reloaded): later phases must see the new access rules.
    if let Some(h) = &reloaded {
        steps.push(wait(h, Gate::NextLoop));
    }
    if !steps.is_empty() {
        steps.push(wait(&leader, Gate::Converged));
    }
    // 2. A pinned minor that differs from what members run: the rolling upgrade.
    let upgrade = super::upgrade::plan_steps(states, ms, want_minor, bounds)?;
    // 3. DCS settings, then the restarts PostgreSQL asks for.
    let dcs = config
        .map(|c| super::steps::dcs_steps(&leader, c, desired))
        .unwrap_or_default();
    let restarts = if dcs.is_empty() && upgrade.is_empty() {
        super::steps::pending_restarts(ms, "PostgreSQL reports pending_restart")
    } else {
        Vec::new()
    };
    let more = !upgrade.is_empty() || !dcs.is_empty() || !restarts.is_empty();
    steps.extend(upgrade);
    steps.extend(dcs);
    if !restarts.is_empty() {
        steps.extend(restarts);
        steps.push(PlannedStep::new(
            &leader,
            Step::Deferred {
                expand: Expand::PendingRestarts,
                what: "restart again members that still report pending_restart".into(),
                why: "a replica keeps the leader's higher value of some parameters until the leader restarted".into(),
            },
        ));
    }
    if more {
        steps.push(wait(&leader, Gate::Converged));
    }
    Ok(steps)
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

/// Wait until every member's Patroni has talked to the DCS after `since` (epoch seconds).
/// The host's clock now plus one Patroni loop: a member seen in the DCS after that has run a
/// whole HA loop that started after now.
pub(crate) async fn loop_deadline(ctx: &Ctx, host: &str) -> Result<f64> {
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

pub(crate) async fn wait_all_looped_since(ctx: &Ctx, since: f64, what: &str) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::change::Change;

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

    // `patronictl list -f json` captured from real hosts (Patroni 3.0.2).
    const LIST_BOOT: &str = r#"[{"Cluster": "protoc", "Member": "proto-pg1", "Host": "10.232.0.11", "Role": "Leader", "State": "running", "TL": 1}, {"Cluster": "protoc", "Member": "proto-pg2", "Host": "10.232.0.12", "Role": "Replica", "State": "running", "Lag in MB": 0}, {"Cluster": "protoc", "Member": "proto-pg3", "Host": "10.232.0.13", "Role": "Replica", "State": "running", "TL": 1, "Lag in MB": 0}]"#;
    const LIST_PENDING: &str = r#"[{"Cluster": "protoc", "Member": "proto-pg1", "Host": "10.232.0.11", "Role": "Leader", "State": "running", "TL": 1, "Pending restart": "*"}, {"Cluster": "protoc", "Member": "proto-pg2", "Host": "10.232.0.12", "Role": "Replica", "State": "running", "TL": 1, "Lag in MB": 0, "Pending restart": "*"}]"#;
    const LIST_DOWN: &str = r#"[{"Cluster": "protoc", "Member": "proto-pg1", "Host": "10.232.0.11", "Role": "Leader", "State": "running", "TL": 4}, {"Cluster": "protoc", "Member": "proto-pg2", "Host": "10.232.0.12", "Role": "Replica", "State": "running", "TL": 4, "Lag in MB": 0}, {"Cluster": "protoc", "Member": "proto-pg3", "Host": "10.232.0.13", "Role": "Replica", "State": "stopped", "Lag in MB": "unknown"}]"#;

    #[test]
    fn parses_real_patronictl_outputs() {
        let m = parse_members(LIST_BOOT).unwrap();
        assert_eq!(m.len(), 3);
        assert!(m[0].is_leader() && m[0].is_running() && !m[0].pending_restart);
        assert!(m[1..].iter().all(|r| !r.is_leader() && r.is_running()));
        assert_eq!((m[1].timeline, m[1].lag_mb), (None, Some(0.0)));

        let m = parse_members(LIST_PENDING).unwrap();
        assert!(m.iter().all(|x| x.pending_restart));

        // A member that is down: no lag ("unknown"), not running.
        let m = parse_members(LIST_DOWN).unwrap();
        assert_eq!(m[0].timeline, Some(4));
        assert!(!m[2].is_running() && m[2].lag_mb.is_none());
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

    fn m(name: &str, leader: bool, pending: bool) -> Member {
        Member {
            name: name.into(),
            host: String::new(),
            role: if leader { "Leader" } else { "Replica" }.into(),
            state: if leader { "running" } else { "streaming" }.into(),
            timeline: Some(1),
            lag_mb: Some(0.0),
            pending_restart: pending,
        }
    }

    fn unit(name: &str, action: UnitAction) -> Change {
        Change::Unit {
            unit: name.into(),
            action,
            reason: "r".into(),
        }
    }

    fn hosts(units: &[(&str, Vec<Change>)]) -> Vec<HostPlan> {
        units
            .iter()
            .map(|(h, c)| HostPlan {
                host: h.to_string(),
                changes: c.clone(),
            })
            .collect()
    }

    fn lines(steps: &[PlannedStep]) -> Vec<String> {
        steps
            .iter()
            .map(|s| format!("{}: {}", s.host, s.step.summary()))
            .collect()
    }

    fn plan(hp: &mut [HostPlan], ms: Option<&[Member]>, config: Option<&Value>) -> Vec<String> {
        let mut want = BTreeMap::new();
        want.insert("ttl".to_string(), "20".to_string());
        let b = crate::phases::upgrade::Bounds::default();
        lines(&plan_steps(hp, ms, config, &[], &want, "17.12", &b).unwrap())
    }

    #[test]
    fn bootstrap_starts_the_first_member_alone_then_the_others() {
        let start = || {
            vec![
                unit(UNIT, UnitAction::Enable),
                unit(UNIT, UnitAction::Start),
            ]
        };
        let mut hp = hosts(&[("pg1", start()), ("pg2", start()), ("pg3", start())]);
        let got = plan(&mut hp, None, None);
        assert_eq!(
            got,
            vec![
                "pg1: ! unit enable patroni.service (r)",
                "pg1: ! unit start patroni.service (r)",
                "pg1: ? wait: pg1 leads the cluster",
                "pg2: ! unit enable patroni.service (r)",
                "pg2: ! unit start patroni.service (r)",
                "pg3: ! unit enable patroni.service (r)",
                "pg3: ! unit start patroni.service (r)",
                "pg1: ? wait: one leader runs and every replica streams from it",
                "pg1: ? compare the cluster-wide settings with the DCS, patch it if they differ (deferred: the new cluster writes its DCS settings when it bootstraps)",
            ]
        );
        // The unit actions moved out of the host plans into the ordered steps.
        assert!(hp.iter().all(|h| h.changes.is_empty()));
    }

    /// On a cluster of an older release, etcd authentication goes on after the members run
    /// with their etcd user, and after its etcd members restarted one at a time (Patroni's old
    /// connections carry a certificate with a Common Name).
    #[test]
    fn etcd_authentication_comes_after_the_members() {
        let etcd = ["etcd1".to_string(), "etcd2".to_string()];
        let got = lines(&auth_steps(
            &etcd,
            Some("pg1"),
            "patroni-demo",
            "/service/demo/",
        ));
        assert_eq!(got.len(), 7, "{got:#?}");
        assert!(got[0].starts_with("etcd1: ! unit restart etcd.service (Patroni reconnects"));
        assert_eq!(got[1], "etcd1: ? wait: etcd member etcd1 is healthy");
        assert!(got[2].starts_with("etcd2: ! unit restart etcd.service"));
        assert_eq!(got[3], "etcd2: ? wait: etcd member etcd2 is healthy");
        assert!(got[4].starts_with(
            "etcd1: ! etcdctl auth enable: only root and patroni-demo (on /service/demo/*)"
        ));
        assert_eq!(
            got[5],
            "pg1: ? wait: every member has been through a new HA loop"
        );
        assert_eq!(
            got[6],
            "pg1: ? wait: one leader runs and every replica streams from it"
        );
        assert!(auth_steps(&[], Some("pg1"), "u", "/p/").is_empty());
        assert!(auth_steps(&etcd, None, "u", "/p/").is_empty());
    }

    #[test]
    fn reloads_replicas_first_leader_last_then_a_new_member_joins() {
        let cfg = serde_json::json!({"ttl": 20});
        let ms = [
            m("pg1", false, false),
            m("pg2", true, false),
            m("pg3", false, false),
        ];
        let mut hp = hosts(&[
            ("pg1", vec![unit(UNIT, UnitAction::Reload)]),
            ("pg2", vec![unit(UNIT, UnitAction::Reload)]),
            ("pg3", vec![unit(UNIT, UnitAction::Reload)]),
            ("pg4", vec![unit(UNIT, UnitAction::Start)]),
        ]);
        let got = plan(&mut hp, Some(&ms), Some(&cfg));
        assert_eq!(
            got,
            vec![
                "pg1: ! unit reload patroni.service (r)",
                "pg1: ? wait: member pg1 runs (and streams)",
                "pg3: ! unit reload patroni.service (r)",
                "pg3: ? wait: member pg3 runs (and streams)",
                "pg2: ! unit reload patroni.service (r)",
                "pg2: ? wait: member pg2 runs (and streams)",
                "pg4: ! unit start patroni.service (r)",
                "pg4: ? wait: member pg4 runs (and streams)",
                "pg2: ? wait: every member has been through a new HA loop",
                "pg2: ? wait: one leader runs and every replica streams from it",
            ]
        );
    }

    #[test]
    fn dcs_patch_then_deferred_restarts_or_known_restarts_replicas_first() {
        let ms = [m("pg1", true, false), m("pg2", false, false)];
        let cfg = serde_json::json!({"ttl": 10});
        let got = plan(&mut hosts(&[("pg1", vec![])]), Some(&ms), Some(&cfg));
        assert_eq!(got[0], "pg1: ~ patch DCS {\"ttl\":20} (ttl: 10 -> 20)");
        assert_eq!(
            got[1],
            "pg1: ? wait: every member has been through a new HA loop"
        );
        assert!(
            got[2].starts_with("pg1: ? restart, one at a time"),
            "{}",
            got[2]
        );
        assert_eq!(got.len(), 4, "{got:#?}");
        // Nothing to patch, but two members report pending_restart: the replica first.
        let ms = [m("pg1", true, true), m("pg2", false, true)];
        let cfg = serde_json::json!({"ttl": 20});
        let got = plan(&mut hosts(&[("pg1", vec![])]), Some(&ms), Some(&cfg));
        assert!(
            got[0].starts_with("pg2: ! restart PostgreSQL of pg2"),
            "{got:#?}"
        );
        assert_eq!(got[1], "pg2: ? wait: member pg2 runs (and streams)");
        assert!(
            got[2].starts_with("pg1: ! restart PostgreSQL of pg1"),
            "{got:#?}"
        );
        // A converged cluster plans nothing.
        let ms = [m("pg1", true, false), m("pg2", false, false)];
        assert!(plan(&mut hosts(&[("pg1", vec![])]), Some(&ms), Some(&cfg)).is_empty());
    }
}
