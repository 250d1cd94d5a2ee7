//! etcd: a static three-member cluster with TLS for client and peer traffic.
//!
//! Files and the unit are role data (`roles/etcd`). Orchestration: on first bootstrap every
//! member starts at once (a static cluster needs a quorum to form); later restarts go one
//! member at a time, each gated on that member's health; the phase ends when the whole
//! cluster is healthy.

use crate::engine::change::{Change, UnitAction};
use crate::engine::facts::PENDING_DIR;
use crate::engine::phase::{plan_roles, HostPlan, Phase, PhasePlan};
use crate::engine::step::{Gate as StepGate, PlannedStep, Step};
use crate::engine::Ctx;
use crate::inventory::Group;
use crate::pki::{HOST_ADMIN_CERT, HOST_ADMIN_KEY, TLS_DIR};
use crate::shell::sh_quote;
use async_trait::async_trait;
use miette::{miette, Result};
use std::time::{Duration, Instant};

/// Bootstrap settings (initial cluster), read only at a member's first start.
pub const INITIAL_ENV: &str = "/etc/pgdeploy/etcd-initial.env";
/// Written while a new member joins a running cluster (from `etcdctl member add`).
pub const JOIN_ENV: &str = "/run/pgdeploy/etcd-join.env";

pub struct Etcd;

/// etcdctl as pgdeploy's administrator (etcd's root user, by its certificate), run on an etcd
/// host. A host that does not have that certificate yet (deployed by an older release, before
/// etcd authentication) uses its own certificate, which is all such a cluster asks for. One
/// group (`{ ...; }`), so that pipes and redirections apply to etcdctl itself.
pub fn etcdctl(on_host: &str, endpoints: &[String], args: &str) -> String {
    format!(
        "{{ c={TLS_DIR}/{HOST_ADMIN_CERT} k={TLS_DIR}/{HOST_ADMIN_KEY}; \
         [ -r $c ] || {{ c={TLS_DIR}/{on_host}.crt k={TLS_DIR}/{on_host}.key; }}; \
         ETCDCTL_API=3 etcdctl --dial-timeout=2s --command-timeout=4s --endpoints={} \
         --cacert={TLS_DIR}/ca.crt --cert=$c --key=$k {args}; }}",
        endpoints.join(",")
    )
}

/// Patroni's etcd user (and role) for `cluster`.
pub fn patroni_user(cluster: &str) -> String {
    format!("patroni-{cluster}")
}

/// The keys Patroni's etcd user may read and write: the cluster's own (`namespace` /service/,
/// `scope` = the cluster's name).
pub fn patroni_prefix(cluster: &str) -> String {
    format!("/service/{cluster}/")
}

/// Is etcd authentication on? Asked from etcd's JSON gateway on the first etcd host that
/// answers, as that host and without a token: a read that etcd refuses for want of a user
/// means yes, one it answers means no (None: no member answers).
pub async fn auth_enabled(ctx: &Ctx) -> Result<Option<bool>> {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD
        .encode(patroni_prefix(&ctx.inv.cluster.name).as_bytes());
    let body = format!(r#"{{"key":"{key}","limit":1,"keys_only":true}}"#);
    ask_gateway(ctx, "/v3/kv/range", &body, |out| {
        auth_answer(out.status, &out.stdout_str())
    })
    .await
}

/// POST `body` to `path` of etcd's JSON gateway on each etcd host in turn, as that host,
/// until `judge` makes something of an answer (None: no member gave such an answer).
async fn ask_gateway<T>(
    ctx: &Ctx,
    path: &str,
    body: &str,
    judge: impl Fn(&crate::ssh::Output) -> Option<T>,
) -> Result<Option<T>> {
    for h in ctx.inv.group_hosts(Group::Etcd) {
        let out = ctx
            .https_post_as_host(&h.name, &h.address, ctx.inv.etcd.client_port, path, body)
            .await?;
        if let Some(v) = judge(&out) {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// While authentication is off: does etcd already have Patroni's user, its role with exactly
/// read and write on the cluster's prefix, and root with role root? Asked through the JSON
/// gateway (its auth API needs no user while authentication is off); false when no member
/// answers.
async fn access_in_place(ctx: &Ctx) -> Result<bool> {
    let user = patroni_user(&ctx.inv.cluster.name);
    let prefix = patroni_prefix(&ctx.inv.cluster.name);
    let asks = [
        ("/v3/auth/user/get", format!(r#"{{"name":"{user}"}}"#)),
        ("/v3/auth/user/get", r#"{"name":"root"}"#.to_string()),
        ("/v3/auth/role/get", format!(r#"{{"role":"{user}"}}"#)),
    ];
    for h in ctx.inv.group_hosts(Group::Etcd) {
        let mut answers = Vec::new();
        for (path, body) in &asks {
            let out = ctx
                .https_post_as_host(&h.name, &h.address, ctx.inv.etcd.client_port, path, body)
                .await?;
            answers.push(out);
        }
        // A member that does not answer at all: ask the next one.
        if answers.iter().any(|o| o.status == 1) {
            continue;
        }
        let json = |o: &crate::ssh::Output| -> serde_json::Value {
            if o.ok() {
                serde_json::from_str(&o.stdout_str()).unwrap_or_default()
            } else {
                serde_json::Value::Null
            }
        };
        return Ok(access_matches(
            &json(&answers[0]),
            &json(&answers[1]),
            &json(&answers[2]),
            &user,
            &prefix,
        ));
    }
    Ok(false)
}

/// Pure: the gateway's answers to user get (Patroni's user, root) and role get (Patroni's
/// role) show the access [`access`] sets up.
pub fn access_matches(
    user: &serde_json::Value,
    root: &serde_json::Value,
    role: &serde_json::Value,
    name: &str,
    prefix: &str,
) -> bool {
    use base64::Engine;
    let has_role = |v: &serde_json::Value, r: &str| {
        v["roles"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(r)))
    };
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let end = format!("{}0", prefix.trim_end_matches('/'));
    let perms = role["perm"].as_array().cloned().unwrap_or_default();
    let exact = perms.len() == 1
        && perms.iter().all(|p| {
            matches!(p["permType"].as_str(), Some("READWRITE")) || p["permType"].as_u64() == Some(2)
        })
        && perms[0]["key"].as_str() == Some(b64(prefix).as_str())
        && perms[0]["range_end"].as_str() == Some(b64(&end).as_str());
    has_role(user, name) && has_role(root, "root") && exact
}

/// With authentication on: does etcd take Patroni's password from the state? (None: no member
/// answers.) The password travels in the request body, over the TLS connection.
async fn password_accepted(ctx: &Ctx) -> Result<Option<bool>> {
    let pw = ctx.vars()["secrets"]["etcd_password"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let body = serde_json::json!({
        "name": patroni_user(&ctx.inv.cluster.name),
        "password": pw,
    })
    .to_string();
    ask_gateway(ctx, "/v3/auth/authenticate", &body, |out| {
        if out.ok() {
            Some(true)
        } else if out.stdout_str().contains("invalid user ID or password") {
            Some(false)
        } else {
            None
        }
    })
    .await
}

/// Pure: what a token-less read through the gateway says about authentication (status 0: it
/// answered 2xx; else the HTTP status, or 1 for no answer).
pub fn auth_answer(status: u32, body: &str) -> Option<bool> {
    if status == 0 {
        return Some(false);
    }
    let refused = [
        "user name is empty",
        "invalid auth token",
        "permission denied",
        "CommonName",
    ];
    if (400..500).contains(&status) && refused.iter().any(|r| body.contains(r)) {
        return Some(true);
    }
    None
}

/// Step: give Patroni its etcd identity (see [`Step::EtcdAccess`]), as etcd's root, through
/// the etcd host `host`. Idempotent; the password goes through stdin, never a command line.
pub(crate) async fn access(ctx: &Ctx, host: &str, user: &str, prefix: &str) -> Result<()> {
    let eps = [client_url(ctx, "127.0.0.1")];
    let ctl = |args: &str| etcdctl(host, &eps, args);
    let (u, p) = (sh_quote(user), sh_quote(prefix));
    let cmd = format!(
        "set -e; pw=$(cat); \
         {role_get} >/dev/null 2>&1 || {role_add} >/dev/null; \
         {grant} >/dev/null; \
         {root_get} >/dev/null 2>&1 || {root_add} >/dev/null; \
         {root_get} | grep '^Roles:' | grep -qw root || {root_role} >/dev/null; \
         {user_get} >/dev/null 2>&1 || printf '%s\n' \"$pw\" | {user_add} >/dev/null; \
         printf '%s\n' \"$pw\" | {passwd} >/dev/null; \
         {user_get} | grep '^Roles:' | grep -qw -- {u} || {user_role} >/dev/null",
        role_get = ctl(&format!("role get {u}")),
        role_add = ctl(&format!("role add {u}")),
        grant = ctl(&format!(
            "role grant-permission {u} --prefix=true readwrite {p}"
        )),
        root_get = ctl("user get root"),
        root_add = ctl("user add root --no-password"),
        root_role = ctl("user grant-role root root"),
        user_get = ctl(&format!("user get {u}")),
        user_add = ctl(&format!("user add {u} --interactive=false")),
        passwd = ctl(&format!("user passwd {u} --interactive=false")),
        user_role = ctl(&format!("user grant-role {u} {u}")),
    );
    let pw = ctx.vars()["secrets"]["etcd_password"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if pw.is_empty() {
        return Err(miette!("no etcd password for {user} in the secrets"));
    }
    let out = ctx.session(host)?.exec(&cmd, Some(pw.as_bytes())).await?;
    if !out.ok() {
        return Err(miette!(
            "setting up etcd user {user} failed: {}",
            (out.stdout_str() + &out.stderr_str()).trim()
        ));
    }
    Ok(())
}

/// Step: turn etcd authentication on (see [`Step::EtcdAuthEnable`]), once etcd knows `user`
/// and every Patroni that runs has `user` in its configuration: otherwise that Patroni would
/// lose the DCS.
pub(crate) async fn auth_enable(ctx: &Ctx, host: &str, user: &str) -> Result<()> {
    let line = format!("  username: {}", serde_json::Value::from(user));
    let patroni = ctx.inv.group_hosts(Group::Patroni);
    for h in &patroni {
        let out = ctx
            .session(&h.name)?
            .exec(
                &format!(
                    "! systemctl is-active -q patroni.service || grep -qxF {} /etc/patroni/config.yml",
                    sh_quote(&line)
                ),
                None,
            )
            .await?;
        if !out.ok() {
            return Err(super::steps::moved(format!(
                "{}: Patroni runs, and its configuration does not name the etcd user {user}; \
                 turning etcd authentication on would cut it off from the DCS",
                h.name
            )));
        }
    }
    let eps = [client_url(ctx, "127.0.0.1")];
    let s = ctx.session(host)?;
    let out = s
        .exec(
            &etcdctl(host, &eps, &format!("user get {}", sh_quote(user))),
            None,
        )
        .await?;
    if !out.ok() {
        return Err(super::steps::moved(format!(
            "etcd has no user {user}: {}",
            out.stderr_str().trim()
        )));
    }
    let out = s.exec(&etcdctl(host, &eps, "auth enable"), None).await?;
    if !out.ok() {
        return Err(miette!(
            "etcdctl auth enable failed: {}",
            (out.stdout_str() + &out.stderr_str()).trim()
        ));
    }
    Ok(())
}

pub fn client_url(ctx: &Ctx, address: &str) -> String {
    https_url(address, ctx.inv.etcd.client_port)
}

fn https_url(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("https://[{address}]:{port}")
    } else {
        format!("https://{address}:{port}")
    }
}

/// Poll `check` until it returns Ok(true), or fail after `deadline` with `what`.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let start = Instant::now();
    let mut last_err = String::new();
    let mut delay = Duration::from_millis(200);
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = format!(" (last error: {e})"),
        }
        if start.elapsed() > deadline {
            return Err(miette!(
                "timed out after {} s waiting until {what}{last_err}",
                deadline.as_secs()
            ));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 3 / 2).min(Duration::from_secs(2));
    }
}

/// Gate: the etcd member on `host` answers healthy.
pub(crate) async fn wait_member_healthy(ctx: &Ctx, host: &str) -> Result<()> {
    {
        let h = ctx.host(host)?;
        let s = ctx.session(host)?;
        let cmd = etcdctl(host, &[client_url(ctx, &h.address)], "endpoint health");
        wait_until(
            &format!("etcd member {host} is healthy"),
            Duration::from_secs(90),
            || async { Ok(s.exec(&cmd, None).await?.ok()) },
        )
        .await
    }
}

/// Wait until every member answers healthy (the cluster has quorum and all members).
pub async fn wait_cluster_healthy(ctx: &Ctx) -> Result<()> {
    let members = ctx.inv.group_hosts(Group::Etcd);
    if let Some(first) = members.first() {
        ctx.observe(&first.name, "waiting until every etcd member is healthy");
    }
    wait_until(
        &format!("all {} etcd members are healthy", members.len()),
        Duration::from_secs(120),
        || async { check_cluster_healthy(ctx).await.map(|()| true) },
    )
    .await
}

/// One quick health check of every member (no waiting).
pub async fn check_cluster_healthy(ctx: &Ctx) -> Result<()> {
    let members = ctx.inv.group_hosts(Group::Etcd);
    let Some(first) = members.first() else {
        return Ok(());
    };
    let s = ctx.session(&first.name)?;
    let eps: Vec<String> = members
        .iter()
        .map(|m| client_url(ctx, &m.address))
        .collect();
    let out = s
        .exec(&etcdctl(&first.name, &eps, "endpoint health"), None)
        .await?;
    if out.ok() {
        Ok(())
    } else {
        Err(miette!(
            "{}",
            (out.stdout_str() + &out.stderr_str()).trim().to_string()
        ))
    }
}

#[async_trait]
impl Phase for Etcd {
    fn name(&self) -> &str {
        "etcd"
    }
    fn probe_extras(&self, ctx: &Ctx, host: &str) -> Vec<(String, String)> {
        let mut v = Vec::new();
        if ctx
            .inv
            .group_hosts(Group::Etcd)
            .iter()
            .any(|h| h.name == host)
        {
            v.push(("etcd-data".into(), has_data_command(ctx)));
        }
        if ctx
            .inv
            .group_hosts(Group::Patroni)
            .iter()
            .any(|h| h.name == host)
        {
            v.push(("patroni-dcs".into(), PATRONI_DCS_COMMAND.into()));
        }
        v
    }

    async fn plan(&self, ctx: &Ctx) -> Result<PhasePlan> {
        // A running cluster (its member list answers) grows by `member add`, one host at a
        // time; members that left the inventory are removed later, by the retire phase. The
        // reads do not depend on each other, so they run together (etcd's password check is
        // a bcrypt on its side, the slowest read of a check).
        let roles = ["etcd".to_string()];
        let (hosts, facts, used, access) = tokio::join!(
            plan_roles(ctx, &roles, false),
            probe_membership(ctx),
            patroni_dcs(ctx),
            access_needed(ctx)
        );
        let (mut hosts, facts, used, access) = (hosts?, facts?, used?, access?);
        if !facts.foreign_data.is_empty() {
            let lines: Vec<String> = facts
                .foreign_data
                .iter()
                .map(|(h, d)| format!("  {h}: {d}"))
                .collect();
            return Err(miette!(
                help = "nothing was changed. pgdeploy starts no second etcd beside another \
                        cluster's data: if that data is no longer needed, move it out of \
                        /var/lib/etcd on these hosts; otherwise use other hosts",
                "etcd hosts hold the data of another etcd cluster (this cluster's is {}):\n{}",
                data_dir(ctx),
                lines.join("\n")
            ));
        }
        let inventory_eps: Vec<String> = ctx
            .inv
            .group_hosts(Group::Etcd)
            .iter()
            .map(|h| {
                client_url(ctx, &h.address)
                    .trim_start_matches("https://")
                    .to_string()
            })
            .collect();
        let fresh = facts.members.is_none() && facts.has_data.is_empty();
        if let Some(why) = dcs_conflict(&inventory_eps, &used, fresh) {
            return Err(miette!(help = MOVE_DCS_HELP, "{why}"));
        }
        let mut joins = Vec::new();
        let mut endpoints = Vec::new();
        if let Some(members) = &facts.members {
            let wanted = wanted_members(ctx);
            let allow_even = ctx.vars()["allow_even_etcd"].as_bool().unwrap_or(false);
            check_size_change(members.len(), wanted.len(), allow_even)
                .map_err(|e| miette!("{e}"))?;
            joins = plan_membership(&wanted, members).0;
            endpoints = members
                .iter()
                .filter(|m| !m.name.is_empty())
                .flat_map(|m| m.client_urls.iter().take(1).cloned())
                .collect();
        }
        let mut steps = plan_steps(&mut hosts, &joins, &endpoints);
        let (user, prefix) = (
            patroni_user(&ctx.inv.cluster.name),
            patroni_prefix(&ctx.inv.cluster.name),
        );
        if let Some((set_up, enable)) = access {
            steps.extend(access_steps(&hosts, &steps, &user, &prefix, set_up, enable));
        }
        Ok(PhasePlan {
            phase: "etcd".into(),
            hosts,
            steps,
        })
    }
    async fn apply(&self, ctx: &Ctx, plan: &PhasePlan) -> Result<()> {
        super::steps::apply_plan(ctx, plan).await
    }
}

/// What Patroni's etcd access needs, as the two flags of [`access_steps`] (set up the user and
/// role; turn authentication on, as nothing runs on etcd yet); None with authentication on and
/// the password taken.
async fn access_needed(ctx: &Ctx) -> Result<Option<(bool, bool)>> {
    Ok(match auth_enabled(ctx).await? {
        // Authentication on: Patroni's user must still take the password of the state (else
        // Patroni cannot log in; root sets it again).
        Some(true) => (password_accepted(ctx).await? == Some(false)).then_some((true, false)),
        // Patroni answering means a cluster deployed before etcd authentication: the patroni
        // phase turns it on once the members have their etcd user.
        _ => {
            let (access, patroni) =
                tokio::join!(access_in_place(ctx), super::patroni::members(ctx));
            let patroni_runs = patroni?.is_some_and(|ms| !ms.is_empty());
            Some((!access?, !patroni_runs))
        }
    })
}

/// Pure: the ordered steps of the etcd phase; the members' unit actions move out of `hosts`.
/// A start does not wait for the unit (a new static cluster forms only once a quorum of
/// members started, so they start together); restarts of running members go one at a time,
/// each gated on that member's health; new members join one at a time, each healthy, with the
/// whole cluster, before the next is added; the phase ends when every member is healthy.
pub fn plan_steps(
    hosts: &mut [HostPlan],
    joins: &[Join],
    endpoints: &[String],
) -> Vec<PlannedStep> {
    let mut starts = Vec::new();
    let mut restarts = Vec::new();
    let mut joined = Vec::new();
    for hp in hosts.iter_mut() {
        let join = joins.iter().find(|j| j.host == hp.host);
        let host = hp.host.clone();
        let mut mine_restarts = Vec::new();
        hp.changes.retain(|c| {
            let Change::Unit {
                unit,
                action,
                reason,
            } = c
            else {
                return true;
            };
            let restart = matches!(action, UnitAction::Restart | UnitAction::Reload);
            if join.is_some() && (restart || *action == UnitAction::Start) {
                return false; // the join starts etcd itself
            }
            let action = if *action == UnitAction::Start {
                UnitAction::StartNoBlock
            } else {
                *action
            };
            let step = PlannedStep::new(
                &host,
                Step::Unit {
                    unit: unit.clone(),
                    action,
                    reason: reason.clone(),
                },
            );
            if restart {
                mine_restarts.push(step);
            } else {
                starts.push(step);
            }
            false
        });
        if !mine_restarts.is_empty() {
            restarts.extend(mine_restarts);
            restarts.push(PlannedStep::new(
                &host,
                Step::Wait {
                    gate: StepGate::EtcdMemberHealthy {
                        member: host.clone(),
                    },
                },
            ));
        }
    }
    for j in joins {
        joined.push(PlannedStep::new(
            &j.host,
            Step::EtcdMemberAdd {
                member: j.host.clone(),
                peer_url: j.peer_url.clone(),
                endpoints: endpoints.to_vec(),
                stale_id: j.stale_id.map(|id| format!("{id:x}")),
            },
        ));
    }
    let mut steps = starts;
    steps.extend(restarts);
    steps.extend(joined);
    if let Some(first) = hosts.first() {
        if !steps.is_empty() {
            steps.push(PlannedStep::new(
                &first.host,
                Step::Wait {
                    gate: StepGate::EtcdHealthy,
                },
            ));
        }
    }
    steps
}

/// Pure: while etcd authentication is off, the phase ends, on a healthy cluster, by giving
/// Patroni its etcd user (when etcd lacks it) and, when no Patroni uses this etcd yet (a new
/// cluster), by turning authentication on: Patroni then starts with its user. (Patroni 4.0
/// given a user while etcd 3.5 has authentication off does not start: it takes etcd's
/// "authentication is not enabled" for a failure.)
pub fn access_steps(
    hosts: &[HostPlan],
    steps: &[PlannedStep],
    user: &str,
    prefix: &str,
    access_missing: bool,
    enable: bool,
) -> Vec<PlannedStep> {
    let Some(first) = hosts.first() else {
        return Vec::new();
    };
    if !access_missing && !enable {
        return Vec::new();
    }
    let mut out = Vec::new();
    let healthy_last = steps.last().is_some_and(|s| {
        matches!(
            s.step,
            Step::Wait {
                gate: StepGate::EtcdHealthy
            }
        )
    });
    if !healthy_last {
        out.push(PlannedStep::new(
            &first.host,
            Step::Wait {
                gate: StepGate::EtcdHealthy,
            },
        ));
    }
    let (user, prefix) = (user.to_string(), prefix.to_string());
    if access_missing {
        out.push(PlannedStep::new(
            &first.host,
            Step::EtcdAccess {
                user: user.clone(),
                prefix: prefix.clone(),
            },
        ));
    }
    if enable {
        out.push(PlannedStep::new(
            &first.host,
            Step::EtcdAuthEnable { user, prefix },
        ));
    }
    out
}

/// Step: add `member` to the running cluster and start it (see [`Step::EtcdMemberAdd`]).
pub(crate) async fn join(
    ctx: &Ctx,
    member: &str,
    peer_url: &str,
    endpoints: &[String],
    stale_id: Option<&str>,
) -> Result<()> {
    let now = probe_membership(ctx).await?;
    let Some(ms) = now.members else {
        return Err(miette!(
            help = "run `pgdeploy check` to see the new plan",
            "the etcd cluster does not answer any more: {member} cannot join it"
        ));
    };
    if ms.iter().any(|m| m.name == member) {
        return Ok(()); // joined meanwhile
    }
    let j = Join {
        host: member.to_string(),
        peer_url: peer_url.to_string(),
        stale_id: stale_id.and_then(|id| u64::from_str_radix(id, 16).ok()),
    };
    let s = ctx.session(member)?;
    s.run(&join_command(ctx, &j, endpoints)).await?;
    wait_member_healthy(ctx, member).await?;
    let all = etcdctl(
        member,
        &[client_url(ctx, "127.0.0.1")],
        "endpoint health --cluster",
    );
    wait_until(
        &format!("every etcd member is healthy after {member} joined"),
        Duration::from_secs(120),
        || async { Ok(s.exec(&all, None).await?.ok()) },
    )
    .await?;
    s.run(&format!("rm -f {JOIN_ENV}")).await?;
    Ok(())
}

/// The command that adds `j` to the running cluster and starts it (run on the joining host).
/// etcd refuses a new voting member ("unhealthy cluster") until the leader has seen every
/// member connected for a few seconds, e.g. right after the previous join: the add is retried
/// for that reason only, up to 60 s.
fn join_command(ctx: &Ctx, j: &Join, endpoints: &[String]) -> String {
    let dir = data_dir(ctx);
    let ctl = |args: &str| etcdctl(&j.host, endpoints, args);
    let remove = j
        .stale_id
        .map(|id| format!("{}; ", ctl(&format!("member remove {id:x}"))))
        .unwrap_or_default();
    format!(
        "set -e; systemctl stop etcd.service; \
         if [ -e {dir} ]; then mv {dir} {dir}.stale-$(date +%Y%m%d%H%M%S); fi; \
         mkdir -p /run/pgdeploy; {remove}n=0; \
         until {add} > {JOIN_ENV}.out 2> {JOIN_ENV}.err; do n=$((n+1)); \
         if [ $n -ge 30 ] || ! grep -q 'unhealthy cluster' {JOIN_ENV}.err; then cat {JOIN_ENV}.err >&2; exit 1; fi; \
         sleep 2; done; \
         grep '^ETCD_INITIAL_CLUSTER' {JOIN_ENV}.out > {JOIN_ENV}; rm -f {JOIN_ENV}.out {JOIN_ENV}.err; \
         systemctl start --no-block etcd.service; rm -f {PENDING_DIR}/etcd.service",
        add = ctl(&format!(
            "member add {} --peer-urls={}",
            sh_quote(&j.host),
            j.peer_url
        )),
    )
}

/// One member as etcd's member list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdMember {
    pub id: u64,
    /// Empty while an added member has not started yet.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

/// Pure: parse `etcdctl member list -w json`.
pub fn parse_member_list(json: &str) -> std::result::Result<Vec<EtcdMember>, String> {
    let v: serde_json::Value =
        serde_json::from_str(json.trim()).map_err(|e| format!("not JSON: {e}"))?;
    let arr = v["members"].as_array().ok_or("no members list")?;
    let strings = |x: &serde_json::Value| -> Vec<String> {
        x.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    arr.iter()
        .map(|m| {
            Ok(EtcdMember {
                // etcdctl prints IDs as numbers; the JSON gateway as strings.
                id: m["ID"]
                    .as_u64()
                    .or_else(|| m["ID"].as_str().and_then(|s| s.parse().ok()))
                    .ok_or("a member without an ID")?,
                name: m["name"].as_str().unwrap_or("").to_string(),
                peer_urls: strings(&m["peerURLs"]),
                client_urls: strings(&m["clientURLs"]),
            })
        })
        .collect()
}

/// What the etcd hosts say about the cluster: which inventory hosts hold a data directory, and
/// the member list (None when no member answers: nothing bootstrapped yet, or no quorum).
#[derive(Debug, Clone, Default)]
pub struct EtcdFacts {
    pub has_data: std::collections::BTreeSet<String>,
    pub members: Option<Vec<EtcdMember>>,
    /// (host, directory): etcd data directories of other clusters on the inventory's etcd
    /// hosts (another `cluster.name`, or Debian's default one).
    pub foreign_data: Vec<(String, String)>,
}

const HAS_DATA: &str = "PGDEPLOY_ETCD_HAS_DATA";
const DATA_IN: &str = "PGDEPLOY_ETCD_DATA_IN=";

pub fn data_dir(ctx: &Ctx) -> String {
    format!("/var/lib/etcd/{}", ctx.inv.cluster.name)
}

/// Prints [`HAS_DATA`] when the host holds an etcd data directory of this cluster, and
/// [`DATA_IN`] with the directory of every etcd data directory under /var/lib/etcd.
fn has_data_command(ctx: &Ctx) -> String {
    format!(
        "if [ -d {}/member ]; then echo {HAS_DATA}; fi; \
         for d in /var/lib/etcd/*/member; do [ -d \"$d\" ] && echo \"{DATA_IN}${{d%/member}}\"; done; true",
        data_dir(ctx)
    )
}

/// Pure: the data directories in `out` (of [`has_data_command`]) that belong to no run of
/// this cluster: not `own`, nor one that an earlier join moved aside (`own.stale-…`).
fn foreign_data_dirs(out: &str, own: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix(DATA_IN))
        .filter(|d| *d != own && !d.starts_with(&format!("{own}.stale-")))
        .map(String::from)
        .collect()
}

/// Prints the etcd endpoints (`host:port`) that Patroni's configuration on this host names
/// (nothing when Patroni is not configured here). One sed: the list items of the `etcd3:` block.
const PATRONI_DCS_COMMAND: &str =
    "sed -n '/^etcd3:/,/^[^ ]/{s/^ *- *\"\\{0,1\\}\\([^\" ]*\\)\"\\{0,1\\} *$/\\1/p;}' /etc/patroni/config.yml 2>/dev/null; true";

/// The etcd endpoints each Patroni host of the inventory is configured with now.
async fn patroni_dcs(ctx: &Ctx) -> Result<Vec<(String, Vec<String>)>> {
    let hosts = ctx.inv.group_hosts(Group::Patroni);
    let futs = hosts.iter().map(|h| async move {
        let out = match ctx
            .probed_extra(&h.name, "patroni-dcs", PATRONI_DCS_COMMAND)
            .await
        {
            Some((out, _)) => out,
            None => ctx.read(&h.name, PATRONI_DCS_COMMAND).await?.stdout_str(),
        };
        let eps: Vec<String> = out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        Ok::<_, miette::Report>((h.name.clone(), eps))
    });
    crate::engine::bounded(ctx.forks, futs.collect()).await
}

/// Pure: why planning this etcd would give Patroni a second cluster, if it would.
/// `inventory`: the client endpoints (`host:port`) of the inventory's etcd group; `used`: what
/// each Patroni host is configured with now; `fresh`: no etcd member answers and no etcd host
/// holds data, so the plan bootstraps a new, empty etcd.
pub fn dcs_conflict(
    inventory: &[String],
    used: &[(String, Vec<String>)],
    fresh: bool,
) -> Option<String> {
    let users: Vec<&(String, Vec<String>)> = used.iter().filter(|(_, e)| !e.is_empty()).collect();
    let foreign: Vec<String> = users
        .iter()
        .filter(|(_, eps)| {
            let none_shared = !eps.iter().any(|e| inventory.contains(e));
            let some_elsewhere = eps.iter().any(|e| !inventory.contains(e));
            none_shared || (fresh && some_elsewhere)
        })
        .map(|(h, eps)| format!("  {h} uses etcd at {}", eps.join(", ")))
        .collect();
    if foreign.is_empty() {
        return None;
    }
    Some(format!(
        "the Patroni members already use another etcd than the inventory's etcd group ({}):\n{}\n\
         {} would give them a second, empty DCS, in which each side can elect its own leader",
        inventory.join(", "),
        foreign.join("\n"),
        if fresh {
            "bootstrapping the inventory's etcd"
        } else {
            "pointing them at the inventory's etcd"
        }
    ))
}

const MOVE_DCS_HELP: &str = "nothing was changed. To move the DCS to other hosts, keep quorum \
throughout: 1) list the new etcd hosts in the etcd group next to the ones Patroni uses now \
(an odd number in all) and apply: each joins the running etcd with `member add`, and Patroni is \
pointed at all of them; 2) take the old hosts out of the etcd group and apply: they leave one \
at a time. If Patroni really should use a new DCS, this is a new cluster: give it another \
cluster.name";

/// Probe every inventory etcd host at once: its data directory (a tiny shell test), and the
/// member list, asked by pgdeploy itself from etcd's JSON gateway on each host, through the
/// host's SSH connection with the host's own client certificate (no etcdctl: starting it costs
/// about 0.25 s of CPU on a small host). A member that does not answer is not an error (etcd
/// is not bootstrapped yet, or has no quorum); one that answers with a certificate the local CA
/// did not sign, or refuses pgdeploy's, is: the local state is not the cluster's, and planning
/// a new cluster from that would split it.
pub async fn probe_membership(ctx: &Ctx) -> Result<EtcdFacts> {
    let hosts = ctx.inv.group_hosts(Group::Etcd);
    let has_data = has_data_command(ctx);
    let futs = hosts.iter().map(|h| {
        let has_data = &has_data;
        async move {
            let data = async {
                match ctx.probed_extra(&h.name, "etcd-data", has_data).await {
                    Some((out, _)) => Ok(out),
                    None => ctx.read(&h.name, has_data).await.map(|o| o.stdout_str()),
                }
            };
            let (data, list) = tokio::join!(
                data,
                ctx.https_post_as_host(
                    &h.name,
                    &h.address,
                    ctx.inv.etcd.client_port,
                    "/v3/cluster/member/list",
                    "{}",
                )
            );
            Ok::<_, miette::Report>((h.name.clone(), data?, list?))
        }
    });
    let outs = crate::engine::bounded(ctx.forks, futs.collect()).await?;
    let mut facts = EtcdFacts::default();
    let mut refused = Vec::new();
    for (name, data, list) in outs {
        if data.lines().any(|l| l.trim() == HAS_DATA) {
            facts.has_data.insert(name.clone());
        }
        for d in foreign_data_dirs(&data, &data_dir(ctx)) {
            facts.foreign_data.push((name.clone(), d));
        }
        if facts.members.is_some() {
            continue;
        }
        if list.ok() {
            facts.members = parse_member_list(&list.stdout_str()).ok();
        } else if list.stderr_str().contains("TLS:") {
            refused.push(format!("  {name}: {}", list.stderr_str().trim()));
        }
    }
    if facts.members.is_none() && !refused.is_empty() {
        return Err(miette!(
            help = format!(
                "the local state ({}) must be the one this cluster was deployed with: bring it \
                 back from where the cluster was deployed; nothing was changed",
                ctx.inv.state_dir().display()
            ),
            "etcd answers, but not with pgdeploy's cluster CA:\n{}",
            refused.join("\n")
        ));
    }
    Ok(facts)
}

/// A host of the inventory's etcd group that must join the running cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    pub host: String,
    pub peer_url: String,
    /// An earlier join that added the member but never started it: removed and added again.
    pub stale_id: Option<u64>,
}

/// Members of the running cluster that are no longer in the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leave {
    pub id: u64,
    pub name: String,
    /// The host address from the member's peer URL (to stop etcd there).
    pub address: String,
}

/// Pure: which inventory hosts join and which members leave, given the member list.
/// `wanted`: (name, peer URL) of the inventory's etcd hosts, in inventory order.
pub fn plan_membership(
    wanted: &[(String, String)],
    members: &[EtcdMember],
) -> (Vec<Join>, Vec<Leave>) {
    let mut joins = Vec::new();
    for (name, peer) in wanted {
        let by_name = members.iter().find(|m| &m.name == name);
        let by_url = members.iter().find(|m| m.peer_urls.contains(peer));
        match (by_name, by_url) {
            (Some(_), _) => {}
            (None, Some(m)) if m.name.is_empty() => joins.push(Join {
                host: name.clone(),
                peer_url: peer.clone(),
                stale_id: Some(m.id),
            }),
            _ => joins.push(Join {
                host: name.clone(),
                peer_url: peer.clone(),
                stale_id: None,
            }),
        }
    }
    let mut leaves = Vec::new();
    for m in members {
        let wanted_here = wanted
            .iter()
            .any(|(n, p)| n == &m.name || (m.name.is_empty() && m.peer_urls.contains(p)));
        if !wanted_here {
            let address = m
                .peer_urls
                .first()
                .and_then(|u| u.split("://").nth(1))
                .map(|rest| {
                    let hostport = rest.split('/').next().unwrap_or(rest);
                    match hostport.rsplit_once(':') {
                        Some((h, _)) => h.trim_matches(['[', ']']).to_string(),
                        None => hostport.to_string(),
                    }
                })
                .unwrap_or_default();
            let name = if m.name.is_empty() {
                format!("{:x}", m.id)
            } else {
                m.name.clone()
            };
            leaves.push(Leave {
                id: m.id,
                name,
                address,
            });
        }
    }
    (joins, leaves)
}

pub fn peer_url(ctx: &Ctx, address: &str) -> String {
    https_url(address, ctx.inv.etcd.peer_port)
}

/// Inventory etcd hosts as (name, peer URL).
pub fn wanted_members(ctx: &Ctx) -> Vec<(String, String)> {
    ctx.inv
        .group_hosts(Group::Etcd)
        .iter()
        .map(|h| (h.name.clone(), peer_url(ctx, &h.address)))
        .collect()
}

/// Refuse to change a running cluster's size to an even number unless allowed.
pub fn check_size_change(
    current: usize,
    target: usize,
    allow_even: bool,
) -> std::result::Result<(), String> {
    if current != target && target.is_multiple_of(2) && !allow_even {
        return Err(format!(
            "the inventory takes the etcd cluster from {current} to {target} members: an even \
             number adds no fault tolerance ({target} members stop with {} down, like {}); \
             list an odd number of etcd hosts, or pass --allow-even-etcd",
            target / 2,
            target - 1
        ));
    }
    Ok(())
}

#[cfg(test)]
mod membership_tests {
    use super::*;

    /// How a token-less read through the gateway is read: answered = off; refused for want
    /// of a user = on; anything else (no answer, a 5xx) = unknown.
    #[test]
    fn auth_state_from_a_gateway_read() {
        assert_eq!(auth_answer(0, r#"{"header":{}}"#), Some(false));
        assert_eq!(
            auth_answer(
                400,
                r#"{"error":"etcdserver: user name is empty","code":3}"#
            ),
            Some(true)
        );
        assert_eq!(
            auth_answer(403, "etcdserver: permission denied"),
            Some(true)
        );
        assert_eq!(auth_answer(1, "connection refused"), None);
        assert_eq!(auth_answer(503, "etcdserver: user name is empty"), None);
    }

    /// The gateway's user and role answers, as etcd 3.4 and 3.5 give them.
    #[test]
    fn access_is_recognized_from_the_gateway() {
        use serde_json::json;
        let user = json!({"header": {}, "roles": ["patroni-demo"]});
        let root = json!({"header": {}, "roles": ["root"]});
        let role = json!({"header": {}, "perm": [{"permType": "READWRITE",
            "key": "L3NlcnZpY2UvZGVtby8=", "range_end": "L3NlcnZpY2UvZGVtbzA="}]});
        let ok = |u: &serde_json::Value, r: &serde_json::Value, p: &serde_json::Value| {
            access_matches(u, r, p, "patroni-demo", "/service/demo/")
        };
        assert!(ok(&user, &root, &role));
        assert!(!ok(&json!({"roles": []}), &root, &role));
        assert!(!ok(&user, &json!(null), &role));
        let read_only = json!({"perm": [{"permType": "READ", "key": "L3NlcnZpY2UvZGVtby8=",
            "range_end": "L3NlcnZpY2UvZGVtbzA="}]});
        assert!(!ok(&user, &root, &read_only));
        let wider = json!({"perm": [{"permType": "READWRITE", "key": "L3NlcnZpY2Uv",
            "range_end": "L3NlcnZpY2Uw"}]});
        assert!(!ok(&user, &root, &wider));
    }

    /// While authentication is off the phase ends with Patroni's etcd identity, on a healthy
    /// cluster; a healthy-gate already last is not repeated.
    #[test]
    fn access_comes_last_on_a_healthy_cluster() {
        let hosts = vec![
            HostPlan {
                host: "etcd1".into(),
                changes: vec![],
            },
            HostPlan {
                host: "etcd2".into(),
                changes: vec![],
            },
        ];
        let lines = |v: &[PlannedStep]| -> Vec<String> {
            v.iter()
                .map(|s| format!("{}: {}", s.host, s.step.summary()))
                .collect()
        };
        // A new cluster: the user, then authentication on, before any Patroni starts.
        let got = lines(&access_steps(
            &hosts,
            &[],
            "patroni-demo",
            "/service/demo/",
            true,
            true,
        ));
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], "etcd1: ? wait: every etcd member is healthy");
        assert!(got[1].starts_with(
            "etcd1: ~ etcd access: role patroni-demo may read and write /service/demo/* only"
        ));
        assert!(got[2].starts_with("etcd1: ! etcdctl auth enable"));
        let healthy = [PlannedStep::new(
            "etcd1",
            Step::Wait {
                gate: StepGate::EtcdHealthy,
            },
        )];
        // A running cluster of an older release: the user only (the patroni phase enables).
        let got = lines(&access_steps(
            &hosts,
            &healthy,
            "patroni-demo",
            "/service/demo/",
            true,
            false,
        ));
        assert_eq!(got.len(), 1);
        assert!(got[0].contains("etcd access"));
        // The user in place and Patroni running: nothing (the patroni phase enables).
        assert!(access_steps(&hosts, &[], "u", "/p/", false, false).is_empty());
        assert!(access_steps(&[], &[], "u", "/p/", true, true).is_empty());
    }

    /// etcdctl runs as pgdeploy's administrator where that certificate is, else as the host.
    #[test]
    fn etcdctl_prefers_the_administrator_certificate() {
        let c = etcdctl("etcd1", &["https://127.0.0.1:2379".into()], "auth enable");
        assert!(
            c.starts_with(
                "{ c=/etc/pgdeploy/tls/etcd-root.pem k=/etc/pgdeploy/tls/etcd-root-key.pem; \
                 [ -r $c ] || { c=/etc/pgdeploy/tls/etcd1.crt k=/etc/pgdeploy/tls/etcd1.key; };"
            ),
            "{c}"
        );
        assert!(c.ends_with("--cert=$c --key=$k auth enable; }"), "{c}");
        // A password piped into it reaches etcdctl, not the assignments before it.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo secret | {}",
                etcdctl("x", &[], "").replace("ETCDCTL_API=3 etcdctl", "cat; : ")
            ))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "secret\n");
    }

    #[test]
    fn a_second_dcs_is_refused() {
        let inv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let used = |v: &[(&str, &[&str])]| {
            v.iter()
                .map(|(h, e)| (h.to_string(), inv(e)))
                .collect::<Vec<_>>()
        };
        let dedicated = inv(&["10.0.0.11:2379", "10.0.0.12:2379", "10.0.0.13:2379"]);
        let poc: &[&str] = &["10.0.0.21:2379", "10.0.0.22:2379", "10.0.0.23:2379"];
        // Fresh hosts: Patroni is not configured anywhere.
        assert_eq!(dcs_conflict(&dedicated, &used(&[("pg1", &[])]), true), None);
        // Patroni uses the inventory's etcd: fine, also when it must be bootstrapped again.
        let same: &[&str] = &["10.0.0.11:2379", "10.0.0.12:2379", "10.0.0.13:2379"];
        assert_eq!(
            dcs_conflict(&dedicated, &used(&[("pg1", same)]), true),
            None
        );
        // PoC layout -> dedicated etcd hosts in one step: refused, bootstrapping or not.
        let e = dcs_conflict(&dedicated, &used(&[("pg1", poc), ("pg2", poc)]), true).unwrap();
        assert!(e.contains("pg1 uses etcd at 10.0.0.21:2379"), "{e}");
        assert!(e.contains("bootstrapping"), "{e}");
        assert!(dcs_conflict(&dedicated, &used(&[("pg1", poc)]), false).is_some());
        // Step by step: new hosts listed next to the old ones, the running etcd grows.
        let both = inv(&[
            "10.0.0.21:2379",
            "10.0.0.22:2379",
            "10.0.0.23:2379",
            "10.0.0.11:2379",
            "10.0.0.12:2379",
        ]);
        assert_eq!(dcs_conflict(&both, &used(&[("pg1", poc)]), false), None);
        // ... but not a fresh bootstrap that leaves some of Patroni's etcd out.
        let partly = inv(&["10.0.0.21:2379", "10.0.0.11:2379", "10.0.0.12:2379"]);
        assert!(dcs_conflict(&partly, &used(&[("pg1", poc)]), true).is_some());
    }

    #[test]
    fn data_of_other_clusters_is_found() {
        let out = "PGDEPLOY_ETCD_HAS_DATA\n\
                   PGDEPLOY_ETCD_DATA_IN=/var/lib/etcd/lab\n\
                   PGDEPLOY_ETCD_DATA_IN=/var/lib/etcd/lab.stale-20261201101010\n\
                   PGDEPLOY_ETCD_DATA_IN=/var/lib/etcd/default\n\
                   PGDEPLOY_ETCD_DATA_IN=/var/lib/etcd/other\n";
        assert_eq!(
            foreign_data_dirs(out, "/var/lib/etcd/lab"),
            ["/var/lib/etcd/default", "/var/lib/etcd/other"]
        );
        assert!(foreign_data_dirs("", "/var/lib/etcd/lab").is_empty());
    }

    fn m(id: u64, name: &str, last: u8) -> EtcdMember {
        EtcdMember {
            id,
            name: name.into(),
            peer_urls: vec![format!("https://10.0.0.{last}:2380")],
            client_urls: vec![],
        }
    }
    fn w(name: &str, last: u8) -> (String, String) {
        (name.into(), format!("https://10.0.0.{last}:2380"))
    }

    #[test]
    fn parses_member_list() {
        let j = r#"{"header":{"cluster_id":1,"member_id":2,"raft_term":3},"members":[
          {"ID":10501334649042878790,"name":"etcd1","peerURLs":["https://10.0.0.1:2380"],"clientURLs":["https://10.0.0.1:2379"]},
          {"ID":42,"peerURLs":["https://10.0.0.4:2380"]}]}"#;
        let ms = parse_member_list(j).unwrap();
        assert_eq!(ms.len(), 2);
        assert_eq!(ms[0].id, 10501334649042878790);
        assert_eq!(ms[0].name, "etcd1");
        assert_eq!(ms[1].name, "");
        assert!(parse_member_list("Error: context deadline exceeded").is_err());
        // etcd 3.5's JSON gateway, as the lab's etcd answered (IDs as strings).
        let g = r#"{"header":{"cluster_id":"3251156430381751718", "member_id":"8213170275449593321", "raft_term":"2"}, "members":[{"ID":"588207446281639789", "name":"etcd3", "peerURLs":["https://10.231.0.13:2380"], "clientURLs":["https://10.231.0.13:2379"]}, {"ID":"8213170275449593321", "name":"etcd1", "peerURLs":["https://10.231.0.11:2380"], "clientURLs":["https://10.231.0.11:2379"]}]}"#;
        let ms = parse_member_list(g).unwrap();
        assert_eq!(ms[0].id, 588207446281639789);
        assert_eq!(ms[1].name, "etcd1");
        assert_eq!(ms[1].client_urls, vec!["https://10.231.0.11:2379"]);
    }

    #[test]
    fn same_members_means_nothing_to_do() {
        let ms = [m(1, "a", 1), m(2, "b", 2), m(3, "c", 3)];
        let (j, l) = plan_membership(&[w("a", 1), w("b", 2), w("c", 3)], &ms);
        assert!(j.is_empty() && l.is_empty());
    }

    #[test]
    fn grow_shrink_and_unstarted_members() {
        let ms = [m(1, "a", 1), m(2, "b", 2), m(3, "c", 3), m(4, "", 4)];
        let (j, l) = plan_membership(&[w("a", 1), w("b", 2), w("d", 4), w("e", 5)], &ms);
        assert_eq!(
            j,
            vec![
                Join {
                    host: "d".into(),
                    peer_url: "https://10.0.0.4:2380".into(),
                    stale_id: Some(4)
                },
                Join {
                    host: "e".into(),
                    peer_url: "https://10.0.0.5:2380".into(),
                    stale_id: None
                },
            ]
        );
        assert_eq!(
            l,
            vec![Leave {
                id: 3,
                name: "c".into(),
                address: "10.0.0.3".into()
            }]
        );
    }

    #[test]
    fn even_sizes_need_the_flag() {
        assert!(check_size_change(3, 5, false).is_ok());
        assert!(check_size_change(3, 3, false).is_ok());
        assert!(check_size_change(4, 4, false).is_ok());
        let e = check_size_change(3, 4, false).unwrap_err();
        assert!(e.contains("--allow-even-etcd"), "{e}");
        assert!(check_size_change(3, 4, true).is_ok());
    }
}
