//! What applications need to connect: the libpq keyword form and the URI for writes (HAProxy's
//! primary port) and reads (its replica port), with TLS verified against the cluster CA. Pure:
//! from the inventory alone, no host is contacted, and no password is ever part of it.
//!
//! With a DNS name in the inventory, clients connect by that name and `sslmode=verify-full`
//! holds whichever member leads (every member's certificate names it; HAProxy passes TCP
//! through). Without one, they connect to the HAProxy addresses, which no member certificate
//! names: the CA is verified (`verify-ca`), not the name.

use crate::inventory::{Group, Inventory};
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

/// The connection details of `user` on `dbname`, with the CA certificate at `sslrootcert` on
/// the client (as saved from `pgdeploy ca`).
pub fn connect_info(inv: &Inventory, user: &str, dbname: &str, sslrootcert: &str) -> ConnectInfo {
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
    let password = if user == "postgres" {
        format!(
            "the superuser's: `superuser_password` in {}/secrets.json (give it to psql as \
             PGPASSWORD or in ~/.pgpass)",
            inv.state_dir().display()
        )
    } else {
        format!(
            "role {user} is not managed by pgdeploy: give its password as PGPASSWORD or in \
             ~/.pgpass"
        )
    };
    ConnectInfo {
        user: user.to_string(),
        dbname: dbname.to_string(),
        hosts,
        sslmode: sslmode.to_string(),
        sslrootcert: sslrootcert.to_string(),
        endpoints,
        password,
    }
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
        let c = connect_info(&inv, "app", "app", "pgdeploy-ca.crt");
        assert_eq!(c.hosts, ["pg.db.example.com"]);
        assert_eq!(
            c.endpoints[0].keywords,
            "host=pg.db.example.com port=5000 user=app dbname=app sslmode=verify-full sslrootcert=pgdeploy-ca.crt"
        );
        assert_eq!(
            c.endpoints[1].uri,
            "postgresql://app@pg.db.example.com:5001/app?sslmode=verify-full&sslrootcert=pgdeploy-ca.crt"
        );
        assert!(c.password.contains("not managed by pgdeploy"));
    }

    #[test]
    fn by_addresses_with_verify_ca_and_quoting() {
        let inv = load("");
        let c = connect_info(&inv, "postgres", "my db", "/etc/ssl/ca it.crt");
        assert_eq!(c.sslmode, "verify-ca");
        assert_eq!(
            c.endpoints[0].keywords,
            "host=10.0.0.31,10.0.0.32 port=5000 user=postgres dbname='my db' sslmode=verify-ca sslrootcert='/etc/ssl/ca it.crt'"
        );
        assert_eq!(
            c.endpoints[0].uri,
            "postgresql://postgres@10.0.0.31:5000,10.0.0.32:5000/my%20db?sslmode=verify-ca&sslrootcert=/etc/ssl/ca%20it.crt"
        );
        assert!(c.password.contains("superuser_password"));
    }
}
