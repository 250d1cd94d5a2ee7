//! The cluster phases, in order, after `common`: preflight, packages, etcd, patroni, haproxy,
//! verify, dns. Orchestration (bootstrap order, health gates, one-at-a-time restarts) lives here;
//! what files, packages and units a role has is data under `roles/`.

pub mod etcd;
pub mod haproxy;
pub mod packages;
pub mod patroni;
pub mod preflight;
pub mod upgrade;
pub mod verify;

/// Where the bundle lives on hosts.
pub const REPO_DIR: &str = "/var/lib/pgdeploy/repo";
/// The apt source that names only the bundle.
pub const REPO_LIST: &str = "/etc/apt/sources.list.d/pgdeploy.list";

use crate::engine::phase::{Phase, RolePhase};
use crate::inventory::Inventory;
use miette::Result;
use serde_json::Value;
use std::collections::BTreeMap;

/// The phases of a full run, in order.
pub fn all(_inv: &Inventory) -> Vec<Box<dyn Phase>> {
    vec![
        Box::new(preflight::Preflight),
        Box::new(RolePhase::new("common", &["common"])),
        Box::new(packages::Packages {
            roles: ["common", "etcd", "patroni", "haproxy"]
                .map(String::from)
                .to_vec(),
        }),
        Box::new(etcd::Etcd),
        Box::new(patroni::Patroni),
        Box::new(haproxy::Haproxy),
        Box::new(verify::Verify),
    ]
}

pub use packages::resolve_postgres_version;

/// Values for templates: shared ones, per-host ones, and the secret values to redact.
pub fn run_vars(_inv: &Inventory) -> Result<(Value, BTreeMap<String, Value>, Vec<String>)> {
    Ok((
        Value::Object(Default::default()),
        BTreeMap::new(),
        Vec::new(),
    ))
}
