//! The cluster phases, in order, after `common`: preflight, packages, etcd, patroni, haproxy,
//! verify, dns. Orchestration (bootstrap order, health gates, one-at-a-time restarts) lives here;
//! what files, packages and units a role has is data under `roles/`.

pub mod dns;
pub mod etcd;
pub mod haproxy;
pub mod packages;
pub mod patroni;
pub mod preflight;
pub mod retire;
pub mod steps;
pub mod upgrade;
pub mod verify;

/// Where the bundle lives on hosts.
pub const REPO_DIR: &str = "/var/lib/pgdeploy/repo";
/// The apt source that names only the bundle.
pub const REPO_LIST: &str = "/etc/pgdeploy/apt/sources.list";

use crate::cluster;
use crate::engine::phase::{Phase, RolePhase};
use crate::inventory::Inventory;
use crate::pki::Pki;
use crate::secrets::Secrets;
use miette::Result;
use serde_json::{json, Value};
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
        Box::new(retire::Retire),
        Box::new(verify::Verify),
        Box::new(dns::Dns),
    ]
}

pub use packages::resolve_postgres_version;

/// Values for templates: shared ones (secrets, client addresses, PostgreSQL paths), per-host
/// ones (TLS material), and the secret values to redact from every output. The CA, host
/// certificates and passwords are generated once and kept in the inventory's state directory.
pub fn run_vars(inv: &Inventory) -> Result<(Value, BTreeMap<String, Value>, Vec<String>)> {
    let state = inv.state_dir();
    let secrets = Secrets::load_or_create(&state)?;
    let pki = Pki::load_or_create(&state)?;
    let mut redact: Vec<String> = secrets
        .values()
        .iter()
        .map(|s| s.expose().to_string())
        .collect();
    let hosts = inv.hosts();
    let mut host_vars = BTreeMap::new();
    for h in &hosts {
        let (ips, names) = cluster::cert_request(h);
        let cert = pki.issue(&h.name, &ips, &names)?;
        let pem = cluster::TlsPem {
            ca_pem: pki.ca_cert_pem(),
            host: &cert,
        };
        let c = cluster::template_context(inv, h, &secrets, Some(&pem));
        host_vars.insert(h.name.clone(), json!({ "tls": c["tls"] }));
        redact.push(cert.key_pem.clone());
    }
    let mut vars = json!({ "patroni_tags": { "nofailover": false, "noloadbalance": false } });
    if let Some(first) = hosts.first() {
        let c = cluster::template_context(inv, first, &secrets, None);
        let mut pg = c["postgres"].clone();
        if let Value::Object(m) = &mut pg {
            // Resolved from the package source before the phases that need it.
            m.remove("debian_version");
        }
        vars["secrets"] = c["secrets"].clone();
        vars["client_addresses"] = c["client_addresses"].clone();
        vars["postgres"] = pg;
        vars["sysctls"] = json!([]);
    }
    vars["etcd_initial_env"] = json!(etcd::INITIAL_ENV);
    vars["etcd_join_env"] = json!(etcd::JOIN_ENV);
    Ok((vars, host_vars, redact))
}
