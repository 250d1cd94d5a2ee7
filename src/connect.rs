//! What applications need to connect: the libpq keyword form and the URI for writes (HAProxy's
//! primary port) and reads (its replica port), with TLS verified against the cluster CA. Pure:
//! from the inventory alone, no host is contacted, and no password is ever part of it.
//!
//! With a DNS name in the inventory, clients connect by that name and `sslmode=verify-full`
//! holds whichever member leads (every member's certificate names it; HAProxy passes TCP
//! through). Without one, they connect to the HAProxy addresses, which no member certificate
//! names: the CA is verified (`verify-ca`), not the name.

use crate::inventory::{Group, Inventory, Presence};
use serde::Serialize;

/// One way in: writes or reads.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    /// `write` (the leader) or `read` (the replicas, round robin).
    pub role: String,
    pub port: u16,
    pub uri: String,
    pub keywords: String,
}

/// Connection details for one role.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnectInfo {
    pub user: String,
    pub dbname: String,
    /// The host list clients use (the DNS name, or the HAProxy addresses).
    pub hosts: Vec<String>,
    pub sslmode: String,
    pub sslrootcert: String,
    pub endpoints: Vec<Endpoint>,
    /// Where the password is: never the password itself.
    pub password: String,
}

/// The connection details of `user` (default: the first declared login role) on `dbname`
/// (default: the database it owns, else one it reads, else its own name), with the CA
/// certificate at `sslrootcert` on the client (as saved from `pgdeploy ca`). The superuser,
/// replicator and pgdeploy's check role are refused: none of them may connect through HAProxy.
pub fn connect_info(
    inv: &Inventory,
    user: Option<&str>,
    dbname: Option<&str>,
    sslrootcert: &str,
) -> Result<ConnectInfo, String> {
    let present = || inv.users.iter().filter(|u| u.state == Presence::Present);
    let user = match user {
        Some(u) => u.to_string(),
        None => present().find(|u| u.login).map(|u| u.name.clone()).ok_or(
            "the inventory declares no login role: add one under `users:`, or give --user",
        )?,
    };
    if ["postgres", "replicator", crate::catalog::CHECK_ROLE].contains(&user.as_str()) {
        return Err(format!(
            "role {user} may not connect through HAProxy (the superuser, replicator and \
             pgdeploy's check role stay on the members): connect as an application role"
        ));
    }
    let dbname = match dbname {
        Some(d) => d.to_string(),
        None => {
            let dbs = || {
                inv.databases
                    .iter()
                    .filter(|d| d.state == Presence::Present)
            };
            dbs()
                .find(|d| d.owner.as_deref() == Some(user.as_str()))
                .or_else(|| dbs().find(|d| d.readers.contains(&user)))
                .map(|d| d.name.clone())
                .unwrap_or_else(|| user.clone())
        }
    };
    let (user, dbname) = (user.as_str(), dbname.as_str());
    let (hosts, sslmode) = match &inv.dns {
        Some(d) => (
            vec![d.name.trim_end_matches('.').to_string()],
            "verify-full",
        ),
        None => (
            inv.group_hosts(Group::Haproxy)
                .iter()
                .map(|h| h.address.clone())
                .collect(),
            "verify-ca",
        ),
    };
    let endpoints = [
        ("write", inv.haproxy.primary_port),
        ("read", inv.haproxy.replica_port),
    ]
    .iter()
    .map(|(role, port)| {
        let keywords = format!(
            "host={} port={port} user={} dbname={} sslmode={sslmode} sslrootcert={}",
            hosts.join(","),
            keyword_value(user),
            keyword_value(dbname),
            keyword_value(sslrootcert)
        );
        let authority: Vec<String> = hosts
            .iter()
            .map(|h| {
                if h.contains(':') {
                    format!("[{h}]:{port}")
                } else {
                    format!("{h}:{port}")
                }
            })
            .collect();
        let uri = format!(
            "postgresql://{}@{}/{}?sslmode={sslmode}&sslrootcert={}",
            uri_part(user),
            authority.join(","),
            uri_part(dbname),
            uri_part(sslrootcert)
        );
        Endpoint {
            role: role.to_string(),
            port: *port,
            uri,
            keywords,
        }
    })
    .collect();
    let declared = present().find(|u| u.name == user);
    let password = match declared {
        Some(u) if u.password_file.is_some() => format!(
            "in {} (the file the inventory names; give it to libpq as PGPASSWORD or in ~/.pgpass)",
            inv.resolve_path(u.password_file.as_deref().unwrap_or_default())
                .display()
        ),
        Some(u) if u.password_env.is_some() => format!(
            "in the environment variable {} (as the inventory says; give it to libpq as PGPASSWORD)",
            u.password_env.as_deref().unwrap_or_default()
        ),
        Some(_) => format!("role {user} may not log in (`login: false`)"),
        None => format!(
            "role {user} is not declared in the inventory: give its password as PGPASSWORD or \
             in ~/.pgpass"
        ),
    };
    Ok(ConnectInfo {
        user: user.to_string(),
        dbname: dbname.to_string(),
        hosts,
        sslmode: sslmode.to_string(),
        sslrootcert: sslrootcert.to_string(),
        endpoints,
        password,
    })
}

/// A libpq keyword value, quoted when it needs it.
fn keyword_value(v: &str) -> String {
    if !v.is_empty()
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\')
    {
        return v.to_string();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Percent-encoding for a URI's user, database and query values.
fn uri_part(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INV: &str = r#"
cluster: { name: demo }
groups:
  etcd: [{ name: e1, address: 10.0.0.11 }, { name: e2, address: 10.0.0.12 }, { name: e3, address: 10.0.0.13 }]
  patroni: [{ name: p1, address: 10.0.0.21 }, { name: p2, address: 10.0.0.22 }]
  haproxy: [{ name: lb1, address: 10.0.0.31 }, { name: lb2, address: 10.0.0.32 }]
"#;

    fn load(extra: &str) -> Inventory {
        let d = tempfile::tempdir().unwrap();
        crate::inventory::load_str(&format!("{INV}{extra}"), "inv.yaml", d.path())
            .unwrap()
            .0
    }

    #[test]
    fn by_dns_name_with_verify_full() {
        let inv = load(
            r#"dns:
  provider: rfc2136
  name: "pg.db.example.com."
  zone: "db.example.com."
  server: "10.0.0.1:53"
  tsig: { key_name: k, algorithm: hmac-sha256, secret_file: tsig.key }
"#,
        );
        let c = connect_info(&inv, Some("app"), None, "pgdeploy-ca.crt").unwrap();
        assert_eq!(c.hosts, ["pg.db.example.com"]);
        assert_eq!(
            c.endpoints[0].keywords,
            "host=pg.db.example.com port=5000 user=app dbname=app sslmode=verify-full sslrootcert=pgdeploy-ca.crt"
        );
        assert_eq!(
            c.endpoints[1].uri,
            "postgresql://app@pg.db.example.com:5001/app?sslmode=verify-full&sslrootcert=pgdeploy-ca.crt"
        );
        assert!(c.password.contains("not declared in the inventory"));
    }

    #[test]
    fn by_addresses_with_verify_ca_and_quoting() {
        let inv = load("");
        let c = connect_info(&inv, Some("web"), Some("my db"), "/etc/ssl/ca it.crt").unwrap();
        assert_eq!(c.sslmode, "verify-ca");
        assert_eq!(
            c.endpoints[0].keywords,
            "host=10.0.0.31,10.0.0.32 port=5000 user=web dbname='my db' sslmode=verify-ca sslrootcert='/etc/ssl/ca it.crt'"
        );
        assert_eq!(
            c.endpoints[0].uri,
            "postgresql://web@10.0.0.31:5000,10.0.0.32:5000/my%20db?sslmode=verify-ca&sslrootcert=/etc/ssl/ca%20it.crt"
        );
        for u in ["postgres", "replicator", "pgdeploy_check"] {
            let e = connect_info(&inv, Some(u), None, "ca.crt").unwrap_err();
            assert!(e.contains("may not connect through HAProxy"), "{e}");
        }
        assert!(connect_info(&inv, None, None, "ca.crt")
            .unwrap_err()
            .contains("declares no login role"));
    }

    #[test]
    fn defaults_to_the_declared_role_and_its_database() {
        let inv = load(
            "users:\n  - {name: ro, login: false}\n  - {name: app, password_env: APP_PW}\n\
             databases:\n  - {name: appdb, owner: app, readers: [ro]}\n",
        );
        let c = connect_info(&inv, None, None, "ca.crt").unwrap();
        assert_eq!((c.user.as_str(), c.dbname.as_str()), ("app", "appdb"));
        assert!(
            c.password.contains("environment variable APP_PW"),
            "{}",
            c.password
        );
        let c = connect_info(&inv, Some("ro"), None, "ca.crt").unwrap();
        assert_eq!(c.dbname, "appdb");
    }
}
