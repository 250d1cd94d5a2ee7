//! `dns`: provider, name and zone, server, TTL and the TSIG key; A/AAAA records need the
//! HAProxy hosts' IP addresses.

use std::net::IpAddr;

use super::address::{check_address, is_label, split_host_port};
use super::{is_env_var_name, Checker};
use crate::inventory::diag::Problem;
use crate::inventory::tree::Seg;
use crate::inventory::Inventory;

/// DNS update providers the DNS phase implements.
pub const DNS_PROVIDERS: [&str; 2] = ["rfc2136", "dyndns2"];
/// TSIG algorithms accepted for RFC 2136 updates.
pub const TSIG_ALGORITHMS: [&str; 3] = ["hmac-sha256", "hmac-sha384", "hmac-sha512"];

/// A fully qualified DNS name: labels (letters, digits, `-`, `_`) and a trailing dot.
pub fn is_valid_fqdn(s: &str) -> bool {
    match s.strip_suffix('.') {
        Some(body) => {
            !body.is_empty() && s.len() <= 254 && body.split('.').all(|l| is_label(l, true))
        }
        None => false,
    }
}

/// `name` with a trailing dot (DNS names in the inventory are absolute).
pub fn fqdn(name: &str) -> String {
    let n = name.trim();
    if n.ends_with('.') {
        n.to_string()
    } else {
        format!("{n}.")
    }
}

/// Whether the absolute `name` is `zone` itself or inside it (case-insensitive).
pub fn in_zone(name: &str, zone: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let zone = zone.to_ascii_lowercase();
    zone == "." || name == zone || name.ends_with(&format!(".{zone}"))
}

/// Parse the DNS server setting `ADDRESS[:PORT]` (`[v6]:port` for IPv6); port 53 by default.
pub fn parse_dns_server(s: &str) -> Result<(String, u16), String> {
    let (host, port) = split_host_port(s.trim(), 53)?;
    check_address(&host)?;
    Ok((host, port))
}

impl Checker<'_> {
    pub(super) fn dns(&mut self, inv: &Inventory) {
        let Some(dns) = &inv.dns else { return };
        let at = |k: &'static str| [Seg::Key("dns"), Seg::Key(k)];
        if !DNS_PROVIDERS.contains(&dns.provider.as_str()) {
            let suggestion = crate::inventory::load::nearest(&dns.provider, &DNS_PROVIDERS)
                .map(|b| format!("did you mean `{b}`? "))
                .unwrap_or_default();
            self.push(
                Problem::new(format!("DNS provider `{}` is not supported", dns.provider))
                    .label(self.exact(&at("provider")), "unknown provider")
                    .help(format!(
                        "{suggestion}use `rfc2136` (dynamic updates, e.g. BIND, with TSIG) or \
                         `dyndns2` (HTTP update protocol)"
                    )),
            );
        }
        let mut names_ok = true;
        for (key, value) in [("name", &dns.name), ("zone", &dns.zone)] {
            if !is_valid_fqdn(value) {
                names_ok = false;
                self.push(
                    Problem::new(format!("`dns.{key}` `{value}` is not a valid DNS name"))
                        .label(self.exact(&at(key)), "invalid DNS name")
                        .help("write a fully qualified name of dot-separated labels (letters, digits, `-`), e.g. `pg.db.example.com.`"),
                );
            }
        }
        if names_ok && !in_zone(&dns.name, &dns.zone) {
            self.push(
                Problem::new(format!(
                    "`dns.name` `{}` is outside the zone `{}`",
                    dns.name, dns.zone
                ))
                .label(self.exact(&at("name")), "not in the zone")
                .label(self.exact(&at("zone")), "zone")
                .help("the name must end with the zone (e.g. name `pg.db.example.com.` in zone `db.example.com.`): fix one of them"),
            );
        }
        if let Err(why) = parse_dns_server(&dns.server) {
            self.push(
                Problem::new(format!("`dns.server` `{}` is not valid: {why}", dns.server))
                    .label(self.exact(&at("server")), "expected ADDRESS[:PORT]")
                    .help("give the DNS server as ADDRESS or ADDRESS:PORT, e.g. `10.0.0.53` or `[fd00::53]:53` (port 53 by default)"),
            );
        }
        if dns.ttl == 0 {
            self.push(
                Problem::new("`dns.ttl` is 0: resolvers would not cache the name at all")
                    .label(self.exact(&at("ttl")), "0 seconds")
                    .help("use a short TTL such as 30 so that clients notice a failed HAProxy quickly"),
            );
        }
        match (&dns.tsig, dns.provider.as_str()) {
            (Some(_), "dyndns2") => self.push(
                Problem::new("`dns.tsig` applies to RFC 2136 updates, not to `dyndns2`")
                    .label(self.key(&at("tsig")), "not used by dyndns2")
                    .help("remove `tsig`, or set `provider: rfc2136`"),
            ),
            (None, "rfc2136") => self.warn(
                self.key(&at("provider"))
                    .or_else(|| self.key(&[Seg::Key("dns")])),
                "dns has no `tsig` key: updates are unsigned and the DNS server must accept them \
                 by address"
                    .to_string(),
            ),
            _ => {}
        }
        if let Some(t) = &dns.tsig {
            let tat = |k: &'static str| [Seg::Key("dns"), Seg::Key("tsig"), Seg::Key(k)];
            let key_name = t.key_name.strip_suffix('.').unwrap_or(&t.key_name);
            if key_name.is_empty() || !key_name.split('.').all(|l| is_label(l, true)) {
                self.push(
                    Problem::new(format!("TSIG key name `{}` is not a valid DNS name", t.key_name))
                        .label(self.exact(&tat("key_name")), "invalid key name")
                        .help("give the key's name as configured on the DNS server (`key \"NAME\" { ... }` in BIND)"),
                );
            }
            if !TSIG_ALGORITHMS.contains(&t.algorithm.as_str()) {
                let lower = t.algorithm.to_ascii_lowercase();
                let hint = if TSIG_ALGORITHMS.contains(&lower.as_str()) {
                    format!("write it in lowercase: `{lower}`")
                } else {
                    format!(
                        "use {} (the key on the DNS server must use the same)",
                        TSIG_ALGORITHMS
                            .iter()
                            .map(|a| format!("`{a}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                self.push(
                    Problem::new(format!("TSIG algorithm `{}` is not supported", t.algorithm))
                        .label(self.exact(&tat("algorithm")), "unsupported algorithm")
                        .help(hint),
                );
            }
            match (&t.secret_file, &t.secret_env) {
                (None, None) => self.push(
                    Problem::new("the TSIG key has no secret source")
                        .label(self.key(&[Seg::Key("dns"), Seg::Key("tsig")]), "no secret_file or secret_env")
                        .help("set `secret_file` (a file holding the base64 secret or a BIND key file, mode 0600) or `secret_env` (an environment variable); the secret itself never goes in the inventory"),
                ),
                (Some(_), Some(_)) => self.push(
                    Problem::new("the TSIG key has both `secret_file` and `secret_env`")
                        .label(self.key(&tat("secret_file")), "secret_file")
                        .label(self.key(&tat("secret_env")), "secret_env")
                        .help("keep exactly one of them, so it is clear where the secret comes from"),
                ),
                (Some(f), None) if f.trim().is_empty() => self.push(
                    Problem::new("`dns.tsig.secret_file` is empty")
                        .label(self.exact(&tat("secret_file")), "empty path")
                        .help("give the path of the key file (relative to the inventory)"),
                ),
                (None, Some(v)) if !is_env_var_name(v) => self.push(
                    Problem::new(format!("`dns.tsig.secret_env` must name an environment variable, not `{}`", redact_if_secret(v)))
                        .label(self.exact(&tat("secret_env")), "not a variable name")
                        .help("give the variable's name (letters, digits, `_`), e.g. PGDEPLOY_TSIG_SECRET; never the secret itself"),
                ),
                _ => {}
            }
        }
        // A/AAAA records need IP addresses.
        for (i, e) in inv.groups.haproxy.iter().enumerate() {
            if check_address(&e.address).is_ok() && e.address.parse::<IpAddr>().is_err() {
                self.push(
                    Problem::new(format!(
                        "HAProxy host `{}` needs an IP address for `{}` (its A record), not the name `{}`",
                        e.name, dns.name, e.address
                    ))
                    .label(
                        self.exact(&[Seg::Key("groups"), Seg::Key("haproxy"), Seg::Index(i), Seg::Key("address")]),
                        "not an IP address",
                    )
                    .help("give the HAProxy hosts' IPv4 addresses (and `address6` for AAAA records)"),
                );
            }
        }
    }
}

/// A value that looks like a base64 secret rather than a variable name is not echoed.
fn redact_if_secret(v: &str) -> String {
    if v.len() >= 16 && v.ends_with('=') || v.len() >= 24 {
        "<redacted>".into()
    } else {
        v.to_string()
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert!(is_valid_fqdn("pg.db.example.com."));
        assert!(is_valid_fqdn("_tcp.example."));
        assert!(!is_valid_fqdn("pg.db.example.com"));
        assert!(!is_valid_fqdn("."));
        assert!(!is_valid_fqdn("a..b."));
        assert_eq!(fqdn("db.example.com"), "db.example.com.");
        assert_eq!(fqdn("db.example.com."), "db.example.com.");
        assert!(in_zone("pg.db.example.com.", "db.example.com."));
        assert!(in_zone("db.example.com.", "db.example.com."));
        assert!(in_zone("PG.DB.example.com.", "db.EXAMPLE.com."));
        assert!(!in_zone("pg.xdb.example.com.", "db.example.com."));
        assert!(!in_zone("pg.example.org.", "db.example.com."));
    }

    #[test]
    fn dns_servers() {
        assert_eq!(parse_dns_server("10.0.0.53"), Ok(("10.0.0.53".into(), 53)));
        assert_eq!(
            parse_dns_server("10.0.0.53:5353"),
            Ok(("10.0.0.53".into(), 5353))
        );
        assert_eq!(
            parse_dns_server("[fd00::53]:53"),
            Ok(("fd00::53".into(), 53))
        );
        assert_eq!(
            parse_dns_server("ns1.example.com"),
            Ok(("ns1.example.com".into(), 53))
        );
        assert!(parse_dns_server("10.0.0.53:").is_err());
        assert!(parse_dns_server("").is_err());
    }
}
