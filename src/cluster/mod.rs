//! Cluster phases (preflight, packages, etcd, patroni, haproxy, verify).

use crate::engine::phase::Phase;
use crate::inventory::Inventory;
use miette::Result;
use serde_json::Value;

/// The cluster phases after `common`.
pub fn phases(_inv: &Inventory) -> Vec<Box<dyn Phase>> {
    Vec::new()
}

/// Values for templates (secrets, tls) and the secret values to redact.
pub fn run_vars(_inv: &Inventory, _full: bool) -> Result<(Value, Vec<String>)> {
    Ok((Value::Object(Default::default()), Vec::new()))
}
