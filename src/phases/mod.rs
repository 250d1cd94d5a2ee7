//! The cluster phases, in order, after `common`: preflight, packages, etcd, patroni, catalog,
//! backup, haproxy, retire, verify, dns. Orchestration (bootstrap order, health gates, one-at-a-time restarts) lives here;
//! what files, packages and units a role has is data under `roles/`.

pub mod backup;
pub mod catalog;
pub mod dns;
pub mod etcd;
pub mod haproxy;
pub mod packages;
pub mod patroni;
pub mod preflight;
pub mod restore;
pub mod retire;
pub mod steps;
pub mod upgrade;
pub mod verify;

/// Where the bundle lives on hosts.
pub const REPO_DIR: &str = "/var/lib/pgdeploy/repo";
/// The apt source that names only the bundle.
pub const REPO_LIST: &str = "/etc/pgdeploy/apt/sources.list";

use crate::engine::phase::{Phase, RolePhase};
use crate::inventory::Inventory;
use crate::pki::{self, Pki};
use crate::secrets::Secrets;
use miette::Result;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The release's own psql on a member, not Debian's `psql` wrapper: that one is a Perl script,
/// which costs about 40 ms of the host's CPU at every call.
pub fn psql_bin(inv: &Inventory) -> String {
    let major = inv.postgres.version.split('.').next().unwrap_or_default();
    format!("/usr/lib/postgresql/{major}/bin/psql")
}

/// [`psql_bin`] as the superuser over the member's local socket.
pub fn superuser_psql(inv: &Inventory) -> String {
    format!("runuser -u postgres -- {}", psql_bin(inv))
}

/// The phases of a full run, in order.
pub fn all(_inv: &Inventory) -> Vec<Box<dyn Phase>> {
    vec![
        Box::new(preflight::Preflight),
        Box::new(RolePhase::new("common", &["common"])),
        Box::new(packages::Packages {
            roles: [
                "common",
                "etcd",
                "patroni",
                "haproxy",
                "pgbackrest",
                "backup",
            ]
            .map(String::from)
            .to_vec(),
        }),
        Box::new(etcd::Etcd),
        Box::new(patroni::Patroni),
        Box::new(catalog::Catalog),
        Box::new(backup::Backup),
        Box::new(haproxy::Haproxy),
        Box::new(retire::Retire),
        Box::new(verify::Verify),
        Box::new(dns::Dns),
    ]
}

pub use packages::resolve_postgres_version;

/// The run's values for templates, merged over what the engine takes from the inventory (see
/// [`crate::engine::render::context`]): shared ones (`secrets`, `patroni_tags`, the etcd
/// environment files), per-host ones (`tls`: paths and PEM material), and the secret values to
/// redact from every output. The CA, host certificates and passwords are generated once and
/// kept in the inventory's state directory.
pub fn run_vars(inv: &Inventory) -> Result<(Value, BTreeMap<String, Value>, Vec<String>)> {
    let state = inv.state_dir();
    let secrets = Secrets::load_or_create(&state)?;
    let pki = Pki::load_or_create(&state)?;
    let mut redact: Vec<String> = secrets
        .values()
        .iter()
        .map(|s| s.expose().to_string())
        .collect();
    // pgdeploy's etcd root identity, for etcdctl on the etcd hosts (root-only files there).
    let admin = pki.issue_admin()?;
    redact.push(admin.key_pem.clone());
    let mut host_vars = BTreeMap::new();
    for h in &inv.hosts() {
        let (ips, names, usage) = pki::cert_request(inv, h);
        let cert = pki.issue(&h.name, &ips, &names, usage)?;
        let mut tls = json!(pki::tls_paths(&h.name));
        tls["ca_pem"] = json!(pki.ca_cert_pem());
        tls["cert_pem"] = json!(cert.cert_pem);
        tls["key_pem"] = json!(cert.key_pem);
        if h.groups.contains(&crate::inventory::Group::Etcd) {
            tls["admin_cert_pem"] = json!(admin.cert_pem);
            tls["admin_key_pem"] = json!(admin.key_pem);
        }
        if inv.backs_up(h) {
            // pgBackRest connects by address: where it matches addresses against DNS names
            // only, the addresses are DNS names of its certificate too.
            let mut names = names.clone();
            if !inv.platform.pgbackrest_matches_ip_names() {
                names.extend(ips.iter().map(|i| i.to_string()));
            }
            let pb = pki.issue_pgbackrest(&h.name, &ips, &names)?;
            tls["pgbackrest_cert_pem"] = json!(pb.cert_pem);
            tls["pgbackrest_key_pem"] = json!(pb.key_pem);
            redact.push(pb.key_pem);
        }
        host_vars.insert(h.name.clone(), json!({ "tls": tls }));
        redact.push(cert.key_pem.clone());
    }
    let secrets_json = json!(secrets);
    let vars = json!({
        "state_marker": crate::state::marker(&inv.cluster.name, pki.ca_cert_pem(), &secrets_json),
        "secrets": secrets_json,
        // Set per member during a rolling upgrade (keeps it out of failover and of the
        // replica pool while it restarts).
        "patroni_tags": { "nofailover": false, "noloadbalance": false },
        "etcd_initial_env": etcd::INITIAL_ENV,
        "etcd_join_env": etcd::JOIN_ENV,
        "etcd_user": etcd::patroni_user(&inv.cluster.name),
    });
    Ok((vars, host_vars, redact))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::plan::Desired;
    use crate::engine::render::{context, desired_for, merge, role_applies};
    use crate::engine::roles::RoleSource;
    use crate::inventory::Host;

    const INV: &str = r#"
cluster: { name: demo }
platform: debian-12
postgres:
  version: "15.18"
  parameters: { max_connections: 200, shared_buffers: 256MB, log_checkpoints: true, wal_keep_size: 128MB }
patroni: { ttl: 10, loop_wait: 2, retry_timeout: 3 }
groups:
  etcd:
    - { name: n1, address: 10.9.0.11 }
    - { name: n2, address: 10.9.0.12 }
    - { name: n3, address: 10.9.0.13 }
  patroni:
    - { name: n1, address: 10.9.0.11, postgres_parameters: { work_mem: 8MB } }
    - { name: n2, address: 10.9.0.12 }
    - { name: n3, address: 10.9.0.13 }
  haproxy:
    - { name: lb1, address: 10.9.0.31 }
"#;

    fn inv(dir: &std::path::Path) -> Inventory {
        crate::inventory::load_str(INV, "inv.yaml", dir).unwrap().0
    }

    /// A host's template context as a run builds it: the engine's context from the inventory,
    /// with [`run_vars`] (and the host's own values) merged over it, and `extra` (facts of
    /// earlier phases) over that.
    fn host_context(inv: &Inventory, h: &Host, extra: &Value) -> Value {
        let (mut vars, host_vars, _) = run_vars(inv).unwrap();
        merge(&mut vars, &host_vars[&h.name]);
        merge(&mut vars, extra);
        context(inv, h, &vars)
    }

    /// Every role rendered for every host, once the packages phase has resolved
    /// `postgres.debian_version`.
    fn render_all(inv: &Inventory) -> BTreeMap<String, Desired> {
        let src = RoleSource::default();
        let resolved = json!({ "postgres": { "debian_version": "15.18-0+deb12u1" } });
        let mut out = BTreeMap::new();
        for h in inv.hosts() {
            let ctx = host_context(inv, &h, &resolved);
            let mut d = Desired::default();
            for role in src.role_names() {
                let spec = src.role(&role).unwrap().unwrap();
                if !role_applies(&spec, inv, &h) {
                    continue;
                }
                let one = desired_for(&src, &role, &spec, &ctx, &h)
                    .unwrap_or_else(|e| panic!("{role} for {}: {e:?}", h.name));
                d.dirs.extend(one.dirs);
                d.files.extend(one.files);
                d.packages.extend(one.packages);
                d.units.extend(one.units);
            }
            out.insert(h.name.clone(), d);
        }
        out
    }

    fn keys(v: &Value) -> Vec<&str> {
        v.as_object().unwrap().keys().map(String::as_str).collect()
    }

    /// pgBackRest 2.45 (Debian 12) matches the address it connects to against DNS names only:
    /// there its certificate names the address as a DNS name too; on Debian 13 it does not.
    #[test]
    fn pgbackrest_certificates_name_the_address_as_pgbackrest_matches_it() {
        use x509_parser::extensions::GeneralName;
        for (platform, want) in [("debian-12", true), ("debian-13", false)] {
            let d = tempfile::tempdir().unwrap();
            let text = INV
                .replace("platform: debian-12", &format!("platform: {platform}"))
                .replace("  version: \"15.18\"\n", "")
                .replace("ttl: 10,", "ttl: 20,")
                + "  backup:\n    - { name: b1, address: 10.9.0.51 }\n";
            let inv = crate::inventory::load_str(&text, "inv.yaml", d.path())
                .unwrap()
                .0;
            let (_, host_vars, _) = run_vars(&inv).unwrap();
            for (h, addr) in [("b1", "10.9.0.51"), ("n2", "10.9.0.12")] {
                let pem = host_vars[h]["tls"]["pgbackrest_cert_pem"].as_str().unwrap();
                let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
                let x = p.parse_x509().unwrap();
                let san = x.subject_alternative_name().unwrap().unwrap();
                let dns: Vec<&str> = san
                    .value
                    .general_names
                    .iter()
                    .filter_map(|g| match g {
                        GeneralName::DNSName(n) => Some(*n),
                        _ => None,
                    })
                    .collect();
                assert_eq!(dns.contains(&addr), want, "{platform} {h}: {dns:?}");
                assert!(san
                    .value
                    .general_names
                    .iter()
                    .any(|g| matches!(g, GeneralName::IPAddress(_))));
            }
        }
    }

    /// The keys templates can use (also those of roles in a `--roles-dir`).
    #[test]
    fn context_keys() {
        let d = tempfile::tempdir().unwrap();
        let inv = inv(d.path());
        let h = &inv.hosts()[0];
        let c = host_context(&inv, h, &json!({}));
        assert_eq!(
            keys(&c),
            [
                "backup",
                "client_addresses",
                "cluster",
                "dns",
                "drill",
                "etcd",
                "etcd_initial_env",
                "etcd_join_env",
                "etcd_user",
                "groups",
                "haproxy",
                "host",
                "patroni",
                "patroni_tags",
                "platform",
                "postgres",
                "secrets",
                "state_marker",
                "sysctls",
                "tls"
            ]
        );
        assert_eq!(
            c["postgres"],
            json!({
                "version": "15.18",
                "major": "15",
                "port": 5432,
                "parameters": {
                    "log_checkpoints": "on",
                    "max_connections": "200",
                    "shared_buffers": "256MB",
                    "wal_keep_size": "128MB"
                },
                "synchronous_mode": false,
                "data_dir": "/var/lib/postgresql/15/main",
                "bin_dir": "/usr/lib/postgresql/15/bin",
            })
        );
        // An etcd host has pgdeploy's administrator certificate; a load balancer has not.
        let lb = inv.hosts().into_iter().find(|h| h.name == "lb1").unwrap();
        let lb_tls = host_context(&inv, &lb, &json!({}))["tls"].clone();
        assert!(lb_tls.get("admin_key_pem").is_none() && lb_tls.get("admin_cert_pem").is_none());
        assert_eq!(
            keys(&c["tls"]),
            [
                "admin_cert",
                "admin_cert_pem",
                "admin_key",
                "admin_key_pem",
                "ca",
                "ca_pem",
                "cert",
                "cert_pem",
                "etcd_cert",
                "etcd_key",
                "key",
                "key_pem",
                "patroni_cert",
                "patroni_key",
                "pgbackrest_cert",
                "pgbackrest_key"
            ]
        );
        assert_eq!(c["tls"]["cert"], "/etc/pgdeploy/tls/n1.crt");
        assert_eq!(
            keys(&c["host"]),
            [
                "address",
                "address6",
                "cidr",
                "groups",
                "name",
                "postgres_parameters",
                "url_address",
                "vars"
            ]
        );
        assert_eq!(
            c["host"]["postgres_parameters"],
            json!({ "work_mem": "8MB" })
        );
        assert_eq!(keys(&c["groups"]), ["backup", "etcd", "haproxy", "patroni"]);
        assert_eq!(c["groups"]["patroni"][0], c["host"]);
        assert_eq!(
            keys(&c["secrets"]),
            [
                "check_password",
                "etcd_password",
                "replication_password",
                "rest_password",
                "superuser_password"
            ]
        );
        assert_eq!(c["cluster"], json!({ "name": "demo" }));
        assert_eq!(
            c["client_addresses"],
            json!([
                "10.9.0.11/32",
                "10.9.0.12/32",
                "10.9.0.13/32",
                "10.9.0.31/32"
            ])
        );
        assert_eq!(c["sysctls"], json!([]));
        assert_eq!(c["etcd_initial_env"], "/etc/pgdeploy/etcd-initial.env");
        assert_eq!(c["etcd_join_env"], "/run/pgdeploy/etcd-join.env");
        assert_eq!(
            c["patroni_tags"],
            json!({ "nofailover": false, "noloadbalance": false })
        );
        // A fact from a later phase lands next to the inventory's values.
        let c = host_context(&inv, h, &json!({ "postgres": { "debian_version": "x" } }));
        assert_eq!(c["postgres"]["debian_version"], "x");
        assert_eq!(c["postgres"]["major"], "15");
    }

    #[test]
    fn every_role_renders_and_parses() {
        let d = tempfile::tempdir().unwrap();
        let inv = inv(d.path());
        let secrets = Secrets::load_or_create(&inv.state_dir()).unwrap();
        let out = render_all(&inv);
        let get = |h: &str, path: &str| {
            let f = out[h].files.iter().find(|f| f.path == path);
            String::from_utf8(
                f.unwrap_or_else(|| panic!("{h}: no {path}"))
                    .content
                    .clone(),
            )
            .unwrap()
        };

        // Every templated path, package name and version rendered to something.
        for (h, d) in &out {
            let rendered = d.dirs.iter().map(|x| x.path.as_str()).chain(
                d.files.iter().map(|x| x.path.as_str()).chain(
                    d.packages
                        .iter()
                        .flat_map(|p| std::iter::once(&p.name).chain(p.version.iter()))
                        .map(String::as_str),
                ),
            );
            for s in rendered {
                assert!(!s.is_empty() && !s.contains("{{"), "{h}: {s}");
            }
        }

        // Patroni config: valid YAML with the expected structure.
        let cfg: Value = serde_saphyr::from_str(&get("n1", "/etc/patroni/config.yml")).unwrap();
        assert_eq!(cfg["scope"], "demo");
        assert_eq!(cfg["name"], "n1");
        assert_eq!(cfg["restapi"]["listen"], "10.9.0.11:8008");
        assert_eq!(
            cfg["restapi"]["authentication"]["password"],
            secrets.rest_password.expose()
        );
        assert_eq!(cfg["etcd3"]["protocol"], "https");
        assert_eq!(cfg["etcd3"]["hosts"].as_array().unwrap().len(), 3);
        assert_eq!(cfg["etcd3"]["username"], "patroni-demo");
        assert_eq!(cfg["etcd3"]["password"], secrets.etcd_password.expose());
        assert_eq!(cfg["bootstrap"]["dcs"]["ttl"], 10);
        assert_eq!(cfg["bootstrap"]["dcs"]["loop_wait"], 2);
        // Patroni 3 has no member_slots_ttl: nothing is written for it on Debian 12.
        assert!(cfg["bootstrap"]["dcs"].get("member_slots_ttl").is_none());
        let p = &cfg["bootstrap"]["dcs"]["postgresql"]["parameters"];
        assert_eq!(p["max_connections"], "200");
        assert_eq!(p["log_checkpoints"], "on");
        assert_eq!(cfg["postgresql"]["parameters"]["work_mem"], "8MB");
        assert_eq!(cfg["postgresql"]["data_dir"], "/var/lib/postgresql/15/main");
        assert_eq!(cfg["postgresql"]["bin_dir"], "/usr/lib/postgresql/15/bin");
        let hba: Vec<&str> = cfg["postgresql"]["pg_hba"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(hba.contains(&"hostssl replication replicator 10.9.0.12/32 scram-sha-256"));
        assert!(hba.contains(&"host replication replicator 127.0.0.1/32 scram-sha-256"));
        assert!(hba.contains(&"hostssl all all 10.9.0.31/32 scram-sha-256"));
        // The superuser and replicator stay home: only from the members, before any client
        // line can admit them.
        let pos = |l: &str| {
            hba.iter()
                .position(|x| *x == l)
                .unwrap_or_else(|| panic!("{l}"))
        };
        assert!(
            pos("hostssl postgres postgres 10.9.0.12/32 scram-sha-256")
                < pos("hostssl all postgres all reject")
        );
        assert!(
            pos("hostssl all replicator all reject")
                < pos("hostssl all all 10.9.0.31/32 scram-sha-256")
        );
        assert!(!hba.iter().any(|l| l.contains("0.0.0.0")));
        // Remote connections only with TLS, which the member's own certificate serves.
        assert!(hba
            .iter()
            .filter(|l| l.starts_with("host ") && !l.contains(" 127.0.0.1/32 "))
            .all(|l| l.is_empty()));
        let local = &cfg["postgresql"]["parameters"];
        assert_eq!(local["ssl"], "on");
        assert_eq!(local["ssl_cert_file"], "/etc/pgdeploy/tls/patroni.crt");
        assert_eq!(local["ssl_min_protocol_version"], "TLSv1.2");
        assert_eq!(
            cfg["postgresql"]["authentication"]["replication"]["sslmode"],
            "verify-full"
        );
        // n2 has no per-host parameters.
        let cfg2: Value = serde_saphyr::from_str(&get("n2", "/etc/patroni/config.yml")).unwrap();
        assert!(cfg2["postgresql"]["parameters"].get("work_mem").is_none());

        // /etc/default/etcd and the bootstrap file: KEY="value" lines only.
        let default = get("n2", "/etc/default/etcd");
        assert!(!default.contains("INITIAL_CLUSTER="));
        let env = default + &get("n2", "/etc/pgdeploy/etcd-initial.env");
        let mut kv = BTreeMap::new();
        for l in env.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (k, v) = l.split_once('=').unwrap();
            assert!(v.starts_with('"') && v.ends_with('"'), "{l}");
            kv.insert(k.to_string(), v.trim_matches('"').to_string());
        }
        assert_eq!(kv["ETCD_NAME"], "n2");
        assert_eq!(
            kv["ETCD_INITIAL_CLUSTER"],
            "n1=https://10.9.0.11:2380,n2=https://10.9.0.12:2380,n3=https://10.9.0.13:2380"
        );
        assert_eq!(kv["ETCD_INITIAL_CLUSTER_TOKEN"], "demo");
        assert_eq!(kv["ETCD_KEY_FILE"], "/etc/pgdeploy/tls/etcd.key");
        assert_eq!(kv["ETCD_CLIENT_CERT_AUTH"], "true");

        // haproxy.cfg: both listeners check every Patroni member.
        let hc = get("lb1", "/etc/haproxy/haproxy.cfg");
        assert!(hc.contains("bind *:5000") && hc.contains("bind *:5001"));
        assert!(hc.contains("bind *:7000") && hc.contains("stats uri /"));
        assert_eq!(hc.matches("option httpchk GET /primary").count(), 1);
        assert_eq!(hc.matches("option httpchk GET /replica").count(), 1);
        assert_eq!(hc.matches("server n").count(), 6);
        assert!(hc.contains("server n3 10.9.0.13:5432 maxconn 500 check port 8008 check-ssl"));

        // PEMs land intact.
        let ca = get("n1", "/etc/pgdeploy/tls/ca.crt");
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(
            ca.ends_with("-----END CERTIFICATE-----\n"),
            "exactly the PEM, no extra line"
        );
        assert!(get("n1", "/etc/pgdeploy/tls/n1.key").contains("PRIVATE KEY"));
        assert!(get("lb1", "/etc/pgdeploy/host.conf").contains("PGDEPLOY_GROUPS=\"haproxy\""));
        assert!(get("n1", "/etc/pgdeploy/host.conf").contains("PGDEPLOY_GROUPS=\"etcd patroni\""));

        // Optional: dump for pushing to real hosts by hand.
        if let Some(dir) = std::env::var_os("PGDEPLOY_RENDER_DIR") {
            for (h, d) in &out {
                for f in &d.files {
                    let p = std::path::Path::new(&dir)
                        .join(h)
                        .join(f.path.trim_start_matches('/'));
                    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                    std::fs::write(p, &f.content).unwrap();
                }
            }
        }
    }

    /// With a repository host: the database hosts get pgBackRest, the repository its units;
    /// a timer whose schedule is unset stays disabled and stopped and gets no file; one
    /// template serves each backup type. Without one, no host gets pgBackRest.
    #[test]
    fn backup_roles_follow_the_repository_and_its_schedules() {
        let d = tempfile::tempdir().unwrap();
        let text = format!("{INV}  backup:\n    - {{ name: b1, address: 10.9.0.41 }}\n");
        let with = crate::inventory::load_str(&text, "inv.yaml", d.path())
            .unwrap()
            .0;
        let all = render_all(&with);
        let b1 = &all["b1"];
        let unit = |name: &str| b1.units.iter().find(|u| u.name == name).cloned();
        let incr = unit("pgdeploy-backup-incr.timer").expect("the incr timer is managed");
        assert!(!incr.enabled && incr.state == crate::engine::roles::UnitState::Stopped);
        let file = |host: &Desired, path: &str| {
            host.files
                .iter()
                .find(|f| f.path == path)
                .map(|f| String::from_utf8_lossy(&f.content).into_owned())
        };
        assert!(file(b1, "/etc/systemd/system/pgdeploy-backup-incr.timer").is_none());
        let full = file(b1, "/etc/systemd/system/pgdeploy-backup-full.timer").unwrap();
        assert!(full.contains("OnCalendar=Sun *-*-* 01:00:00"), "{full}");
        assert!(full.contains("Unit=pgdeploy-backup-full.service"), "{full}");
        let diff = file(b1, "/etc/systemd/system/pgdeploy-backup-diff.service").unwrap();
        assert!(diff.contains("--type=diff backup"), "{diff}");
        assert!(unit("pgdeploy-backup-full.timer").unwrap().enabled);
        let repo = file(b1, "/etc/pgbackrest/pgbackrest.conf").unwrap();
        for n in ["n1", "n2", "n3"] {
            assert!(
                repo.contains(&format!("tls-server-auth={n}=demo")),
                "{repo}"
            );
        }
        let member = file(&all["n1"], "/etc/pgbackrest/pgbackrest.conf").unwrap();
        assert!(
            member.contains("repo1-host=10.9.0.41") && member.contains("tls-server-auth=b1=demo"),
            "{member}"
        );
        assert!(all["n1"].packages.iter().any(|p| p.name == "pgbackrest"));
        assert!(!all["lb1"].packages.iter().any(|p| p.name == "pgbackrest"));
        let patroni = file(&all["n1"], "/etc/patroni/config.yml").unwrap();
        assert!(
            patroni.contains("archive-push %p") && !patroni.contains("restore_command:"),
            "{patroni}"
        );

        let without = inv(d.path());
        for (h, desired) in render_all(&without) {
            assert!(
                !desired.packages.iter().any(|p| p.name == "pgbackrest"),
                "{h} got pgBackRest"
            );
            let conf = file(&desired, "/etc/patroni/config.yml").unwrap_or_default();
            assert!(!conf.contains("archive_command"), "{h}: {conf}");
        }
    }
}
