//! Rendering a role for one host: role data + template context -> [`Desired`].

use super::plan::{Desired, DesiredDir, DesiredFile, DesiredPackage, DesiredUnit};
use super::roles::{parse_mode, render, OnChange, RoleSource, RoleSpec, Stage, UnitState};
use crate::inventory::{Group, Host, Inventory, ParamValue};
use miette::{miette, Result, WrapErr};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Persistent sysctl file written for a role's sysctls.
pub fn sysctl_file(role: &str) -> String {
    format!("/etc/sysctl.d/90-pgdeploy-{role}.conf")
}

/// Whether a role applies to a host.
pub fn role_applies(spec: &RoleSpec, inv: &Inventory, host: &Host) -> bool {
    if let Some(req) = &spec.requires {
        let present = Group::ALL
            .iter()
            .any(|g| g.as_str() == req.as_str() && !inv.groups.get(*g).is_empty());
        if !present {
            return false;
        }
    }
    match spec.hosts.as_str() {
        "all" => true,
        list => list
            .split(',')
            .map(str::trim)
            .any(|g| host.groups.iter().any(|hg| hg.as_str() == g)),
    }
}

/// The template context for one host: the one builder of it. From the inventory: `cluster`,
/// `platform`, `postgres` (`version`, `major`, `port`, `parameters` as strings in PostgreSQL's
/// spelling, `synchronous_mode`, `data_dir` (defaulted), `bin_dir`), `patroni`, `etcd`,
/// `haproxy`, `dns`, `host`, `groups` (each a list of hosts as `host` is), `client_addresses`
/// and `sysctls` (empty). Then `vars` is deep-merged over it: the run's values, given as data
/// by whoever runs the phases (`secrets`, the host's `tls`, `etcd_initial_env`,
/// `etcd_join_env`, `patroni_tags`) and facts from earlier phases (`postgres.debian_version`).
pub fn context(inv: &Inventory, host: &Host, vars: &Value) -> Value {
    let pg = &inv.postgres;
    let major = pg.major();
    let data_dir = pg.data_directory();
    let groups: Map<String, Value> = Group::ALL
        .iter()
        .map(|g| {
            (
                g.as_str().to_string(),
                Value::Array(inv.group_hosts(*g).iter().map(host_json).collect()),
            )
        })
        .collect();
    let mut ctx = json!({
        "cluster": inv.cluster,
        "platform": inv.platform.template_json(),
        "postgres": {
            "version": pg.version,
            "major": major,
            "port": pg.port,
            "parameters": params_json(&pg.parameters),
            "synchronous_mode": pg.synchronous_mode,
            "data_dir": data_dir,
            "bin_dir": format!("/usr/lib/postgresql/{major}/bin"),
        },
        "patroni": inv.patroni,
        "etcd": inv.etcd,
        "haproxy": inv.haproxy,
        "dns": inv.dns,
        "backup": backup_json(inv),
        "drill": drill_json(),
        "host": host_json(host),
        "groups": groups,
        "client_addresses": client_addresses(inv),
        "sysctls": [],
    });
    merge(&mut ctx, vars);
    ctx
}

/// PostgreSQL parameters for templates: every value as a string in PostgreSQL's own spelling
/// (bool -> on/off). Patroni accepts strings for all parameters and YAML never reinterprets them.
fn params_json(p: &BTreeMap<String, ParamValue>) -> Value {
    Value::Object(
        p.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.to_string())))
            .collect(),
    )
}

/// `backup` for templates: the inventory's section, the repository host (`host`, null without
/// one), and the release's pgBackRest choices: `standby_mode` (2.55 can fall back to the leader
/// when no replica streams; 2.45 cannot) and `compress_type`.
fn backup_json(inv: &Inventory) -> Value {
    let mut b = json!(inv.backup);
    b["host"] = inv
        .backup_host()
        .as_ref()
        .map(host_json)
        .unwrap_or(Value::Null);
    b["stanza"] = json!(inv.cluster.name);
    let prefer = inv.platform.pgbackrest_standby_prefer();
    b["standby_mode"] = json!(if prefer { "prefer" } else { "y" });
    b["compress_type"] = json!("lz4");
    b
}

/// Where the restore drill works and reports on the repository host (`drill` for templates).
pub fn drill_json() -> Value {
    json!({
        "dir": crate::backup::DRILL_DIR,
        "result": crate::backup::DRILL_RESULT,
        "port": crate::backup::DRILL_PORT,
    })
}

/// A host as templates see it (`host`, and each entry of `groups.*`).
fn host_json(h: &Host) -> Value {
    let v6 = h.address.contains(':');
    json!({
        "name": h.name,
        "address": h.address,
        // For `address:port` (brackets around an IPv6 address) and for pg_hba (one host).
        "url_address": if v6 { format!("[{}]", h.address) } else { h.address.clone() },
        "cidr": format!("{}/{}", h.address, if v6 { 128 } else { 32 }),
        "address6": h.address6,
        "groups": h.groups.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
        "vars": h.vars,
        "postgres_parameters": params_json(&h.postgres_parameters),
    })
}

/// Hosts allowed to connect as clients, as pg_hba CIDRs (`10.0.0.31/32`, `fd00::31/128`):
/// every Patroni and HAProxy host, in inventory order, without duplicates.
fn client_addresses(inv: &Inventory) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for g in [Group::Patroni, Group::Haproxy] {
        for h in inv.group_hosts(g) {
            let cidr = format!(
                "{}/{}",
                h.address,
                if h.address.contains(':') { 128 } else { 32 }
            );
            if !out.contains(&cidr) {
                out.push(cidr);
            }
        }
    }
    out
}

/// Deep-merge `from` into `into` (objects merge, anything else replaces).
pub fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

/// Render a role for one host.
pub fn desired_for(
    src: &RoleSource,
    role: &str,
    spec: &RoleSpec,
    ctx: &Value,
    host: &Host,
) -> Result<Desired> {
    let mctx = minijinja::Value::from_serialize(ctx);
    let r = |label: &str, s: &str| render(label, s, &mctx);
    // The context of a file or unit with `item` values.
    let with_item = |item: &BTreeMap<String, String>| {
        if item.is_empty() {
            return mctx.clone();
        }
        let mut c = ctx.clone();
        c["item"] = json!(item);
        minijinja::Value::from_serialize(&c)
    };
    let mut d = Desired::default();
    for dir in &spec.directories {
        d.dirs.push(DesiredDir {
            path: r(&format!("{role}: directory path"), &dir.path)?,
            mode: parse_mode(&dir.mode)
                .wrap_err_with(|| format!("role {role}, directory {}", dir.path))?,
            owner: dir.owner.clone(),
            group: dir.group.clone(),
            before_packages: dir.stage == Some(Stage::BeforePackages),
        });
    }
    for f in &spec.files {
        if let Some(g) = &f.when_group {
            if !host.groups.iter().any(|hg| hg.as_str() == g) {
                continue;
            }
        }
        let fctx = with_item(&f.item);
        let r = |label: &str, s: &str| render(label, s, &fctx);
        let content = match (&f.template, &f.content) {
            (Some(t), None) => {
                let source = src.template(role, t)?;
                r(t, &source)?
            }
            (None, Some(c)) => r(&format!("{role}: content of {}", f.path), c)?,
            _ => {
                return Err(miette!(
                    "role {role}, file {}: give exactly one of `template` or `content`",
                    f.path
                ))
            }
        };
        d.files.push(DesiredFile {
            path: r(&format!("{role}: file path"), &f.path)?,
            content: content.into_bytes(),
            mode: parse_mode(&f.mode).wrap_err_with(|| format!("role {role}, file {}", f.path))?,
            owner: f.owner.clone(),
            group: f.group.clone(),
            secret: f.secret,
            notify: f.notify.clone(),
            validate: f.validate.clone(),
            before_packages: f.stage == Some(Stage::BeforePackages),
            summary: None,
            pair: f.pair.clone(),
        });
    }
    if !spec.sysctls.is_empty() {
        let mut body = String::from("# Managed by pgdeploy.\n");
        for s in &spec.sysctls {
            let v = r(&format!("{role}: sysctl {}", s.name), &s.value)?;
            body.push_str(&format!("{} = {}\n", s.name, v));
            d.sysctls.push((s.name.clone(), v));
        }
        d.files.push(DesiredFile {
            path: sysctl_file(role),
            content: body.into_bytes(),
            mode: 0o644,
            owner: "root".into(),
            group: "root".into(),
            secret: false,
            notify: vec![],
            validate: None,
            before_packages: false,
            summary: None,
            pair: None,
        });
    }
    for u in &spec.units {
        let uctx = with_item(&u.item);
        let r = |label: &str, s: &str| render(label, s, &uctx);
        let active = match &u.when {
            None => true,
            Some(w) => match r(&format!("{role}: when of {}", u.name), w)?
                .trim()
                .to_ascii_lowercase()
                .as_str()
            {
                "true" => true,
                "false" => false,
                other => {
                    return Err(miette!(
                    "role {role}, unit {}: `when` rendered {other:?}; it must render true or false",
                    u.name
                ))
                }
            },
        };
        if !active {
            d.units.push(DesiredUnit {
                name: u.name.clone(),
                enabled: false,
                state: UnitState::Stopped,
                on_change: OnChange::None,
            });
            continue;
        }
        if let Some(t) = &u.template {
            let source = src.template(role, t)?;
            let content = r(t, &source)?;
            let path = u
                .path
                .clone()
                .unwrap_or_else(|| format!("/etc/systemd/system/{}", u.name));
            d.files.push(DesiredFile {
                path,
                content: content.into_bytes(),
                mode: 0o644,
                owner: "root".into(),
                group: "root".into(),
                secret: false,
                notify: vec![u.name.clone()],
                validate: None,
                before_packages: false,
                summary: None,
                pair: None,
            });
        }
        d.units.push(DesiredUnit {
            name: u.name.clone(),
            enabled: u.enabled,
            state: u.state,
            on_change: u.on_change,
        });
    }
    for p in &spec.packages {
        d.packages.push(DesiredPackage {
            name: r(&format!("{role}: package name"), &p.name)?,
            version: match &p.version {
                Some(v) => Some(r(&format!("{role}: version of {}", p.name), v)?),
                None => None,
            },
            hold: p.hold,
        });
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the engine takes from the inventory; everything else comes in through `vars`.
    #[test]
    fn context_from_the_inventory_then_vars() {
        let d = tempfile::tempdir().unwrap();
        let text = r#"
cluster: { name: demo }
platform: debian-12
postgres: { version: "15.18", data_dir: /srv/pg, parameters: { jit: false } }
groups:
  etcd: [{ name: n1, address: 10.9.0.11 }]
  patroni: [{ name: n1, address: 10.9.0.11 }, { name: n2, address: 10.9.0.12 }]
  haproxy: [{ name: n2, address: 10.9.0.12 }]
"#;
        let (inv, _) = crate::inventory::load_str(text, "inv.yaml", d.path()).unwrap();
        let h = &inv.hosts()[0];
        let c = context(&inv, h, &json!({}));
        let keys: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "backup",
                "client_addresses",
                "cluster",
                "dns",
                "drill",
                "etcd",
                "groups",
                "haproxy",
                "host",
                "patroni",
                "platform",
                "postgres",
                "sysctls"
            ]
        );
        assert_eq!(c["postgres"]["data_dir"], "/srv/pg");
        assert_eq!(c["postgres"]["parameters"]["jit"], "off");
        assert_eq!(
            c["client_addresses"],
            json!(["10.9.0.11/32", "10.9.0.12/32"])
        );
        let c = context(
            &inv,
            h,
            &json!({ "postgres": { "debian_version": "x" }, "tls": { "ca": "/ca" } }),
        );
        assert_eq!(c["postgres"]["debian_version"], "x");
        assert_eq!(c["postgres"]["version"], "15.18");
        assert_eq!(c["tls"]["ca"], "/ca");
    }

    #[test]
    fn ipv6_hosts_get_brackets_in_host_port_and_128_in_pg_hba() {
        let d = tempfile::tempdir().unwrap();
        let text = r#"
cluster: { name: demo }
groups:
  etcd: [{ name: n1, address: "fd00::11" }]
  patroni: [{ name: n1, address: "fd00::11" }]
  haproxy: [{ name: n2, address: 10.9.0.12 }]
"#;
        let (inv, _) = crate::inventory::load_str(text, "inv.yaml", d.path()).unwrap();
        let h = &inv.hosts()[0];
        let c = context(&inv, h, &json!({}));
        assert_eq!(c["host"]["url_address"], "[fd00::11]");
        assert_eq!(c["host"]["cidr"], "fd00::11/128");
        assert_eq!(c["groups"]["haproxy"][0]["url_address"], "10.9.0.12");
        assert_eq!(
            c["client_addresses"],
            json!(["fd00::11/128", "10.9.0.12/32"])
        );
    }
}
