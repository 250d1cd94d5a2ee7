//! Rendering a role for one host: role data + template context -> [`Desired`].

use super::plan::{Desired, DesiredDir, DesiredFile, DesiredPackage, DesiredUnit};
use super::roles::{parse_mode, render, RoleSource, RoleSpec, Stage};
use crate::cluster::host_json;
use crate::inventory::{Group, Host, Inventory};
use miette::{miette, Result, WrapErr};
use serde_json::{json, Value};

/// Persistent sysctl file written for a role's sysctls.
pub fn sysctl_file(role: &str) -> String {
    format!("/etc/sysctl.d/90-pgdeploy-{role}.conf")
}

/// Whether a role applies to a host.
pub fn role_applies(spec: &RoleSpec, host: &Host) -> bool {
    match spec.hosts.as_str() {
        "all" => true,
        g => host.groups.iter().any(|hg| hg.as_str() == g),
    }
}

/// The template context for one host. `extra` is merged at the top level (secrets, tls, facts
/// from earlier phases such as `postgres.debian_version`).
pub fn context(inv: &Inventory, host: &Host, extra: &Value) -> Value {
    let mut groups = serde_json::Map::new();
    for g in Group::ALL {
        groups.insert(
            g.as_str().to_string(),
            Value::Array(inv.group_hosts(g).iter().map(host_json).collect()),
        );
    }
    let mut postgres = serde_json::to_value(&inv.postgres).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut postgres {
        m.insert(
            "major".into(),
            Value::String(
                inv.postgres
                    .version
                    .split('.')
                    .next()
                    .unwrap_or("")
                    .to_string(),
            ),
        );
        let params: serde_json::Map<_, _> = inv
            .postgres
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.to_string())))
            .collect();
        m.insert("parameters".into(), Value::Object(params));
    }
    let mut ctx = json!({
        "cluster": inv.cluster,
        "platform": inv.platform.template_json(),
        "postgres": postgres,
        "patroni": inv.patroni,
        "etcd": inv.etcd,
        "haproxy": inv.haproxy,
        "dns": inv.dns,
        "host": host_json(host),
        "groups": groups,
    });
    merge(&mut ctx, extra);
    ctx
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
        });
    }
    for u in &spec.units {
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
