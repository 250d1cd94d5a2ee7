//! Semantic validation of a parsed inventory: every problem at once, each pointing at the
//! offending value when it is written in the file.
//!
//! The checks are plain functions over the typed [`Inventory`]; positions come from the
//! untyped tree of the same text (by path), so a defaulted setting (absent from the file)
//! simply has no snippet.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};

use super::diag::Problem;
use super::tree::{Kind, Node, Pos, Seg};
use super::{Group, Inventory, ParamValue, Warning};

/// DNS update providers the DNS phase implements.
pub const DNS_PROVIDERS: [&str; 2] = ["rfc2136", "dyndns2"];
/// TSIG algorithms accepted for RFC 2136 updates.
pub const TSIG_ALGORITHMS: [&str; 3] = ["hmac-sha256", "hmac-sha384", "hmac-sha512"];

/// PostgreSQL parameters that pgdeploy or Patroni set themselves, with the reason. Setting them
/// in the inventory would be ignored or would break the cluster, so it is an error.
pub const MANAGED_PARAMETERS: [(&str, &str); 13] = [
    ("port", "pgdeploy sets it from `postgres.port` (Patroni passes it on the command line); set `postgres.port` instead"),
    ("listen_addresses", "Patroni makes PostgreSQL listen on the host's own address from `groups.patroni`, where HAProxy and the replicas connect"),
    ("data_directory", "pgdeploy sets it from `postgres.data_dir`; set that instead"),
    ("hba_file", "Patroni writes pg_hba.conf itself from the rules pgdeploy generates"),
    ("ident_file", "Patroni writes pg_ident.conf itself"),
    ("config_file", "Patroni writes postgresql.conf itself"),
    ("unix_socket_directories", "Debian's PostgreSQL tools and Patroni expect the socket in /run/postgresql"),
    ("cluster_name", "Patroni always sets it to the cluster's name"),
    ("hot_standby", "Patroni always turns it on so that replicas serve read-only queries"),
    ("wal_log_hints", "Patroni always turns it on (pg_rewind needs it after a failover)"),
    ("primary_conninfo", "Patroni writes it on each replica so that it follows the current leader"),
    ("primary_slot_name", "Patroni manages the replication slots and sets it on each replica"),
    ("restore_command", "Patroni manages recovery settings; pgdeploy does not configure WAL archiving"),
];

/// Minimum Patroni 3.0 accepts for a cluster-wide parameter: a value below it is silently
/// dropped and Patroni keeps its own default.
#[derive(Debug, Clone, Copy)]
enum Minimum {
    Int(i64, i64),
    /// In megabytes (PostgreSQL's unit for wal_keep_size).
    SizeMb(i64, &'static str),
    OneOf(&'static [&'static str], &'static str),
    Bool(&'static str),
}

/// Parameters Patroni keeps in etcd for the whole cluster: they must be equal on every member,
/// Patroni ignores per-host values, and it drops values below its minimum (taken from Patroni
/// 3.0.2, the version in Debian 12; Patroni 4.0.7 in Debian 13 has the same minimums).
const CLUSTER_WIDE_PARAMETERS: [(&str, Minimum); 10] = [
    (
        "wal_level",
        Minimum::OneOf(&["replica", "hot_standby", "logical"], "replica"),
    ),
    ("max_connections", Minimum::Int(25, 100)),
    ("max_wal_senders", Minimum::Int(3, 10)),
    ("wal_keep_segments", Minimum::Int(1, 8)),
    ("wal_keep_size", Minimum::SizeMb(16, "128MB")),
    ("max_prepared_transactions", Minimum::Int(0, 0)),
    ("max_locks_per_transaction", Minimum::Int(32, 64)),
    ("track_commit_timestamp", Minimum::Bool("off")),
    ("max_replication_slots", Minimum::Int(4, 10)),
    ("max_worker_processes", Minimum::Int(2, 8)),
];

// ---------------------------------------------------------------------------------------------
// Validation helpers (pure; also used by other modules)
// ---------------------------------------------------------------------------------------------

/// `[a-z0-9][a-z0-9-]*`: the cluster name is Patroni's scope, etcd's cluster token and a
/// directory name on the control machine.
pub fn is_valid_cluster_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// "MAJOR.MINOR", digits only, e.g. "15.18".
pub fn is_valid_postgres_version(s: &str) -> bool {
    match s.split_once('.') {
        Some((major, minor)) => {
            !major.is_empty()
                && !minor.is_empty()
                && major.len() <= 3
                && minor.len() <= 3
                && major.bytes().all(|b| b.is_ascii_digit())
                && minor.bytes().all(|b| b.is_ascii_digit())
                && !major.starts_with('0')
        }
        None => false,
    }
}

/// The major version of a valid "MAJOR.MINOR" string.
pub fn postgres_major(s: &str) -> Option<u32> {
    s.split_once('.').and_then(|(m, _)| m.parse().ok())
}

fn is_label(l: &str, allow_underscore: bool) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && !l.starts_with('-')
        && !l.ends_with('-')
        && l.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || (allow_underscore && c == '_'))
}

/// A DNS host name (RFC 1123): dot-separated labels of letters, digits and `-`, at most 253
/// characters; an optional single trailing dot; the last label is not all digits.
pub fn is_valid_host_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() || s.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = s.split('.').collect();
    labels.iter().all(|l| is_label(l, false))
        && !labels
            .last()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

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

/// Check a host address: an IPv4 or IPv6 literal, or a DNS host name. `Err` says why not.
pub fn check_address(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        if ip.is_unspecified() {
            return Err(format!(
                "`{s}` is the unspecified address, not a host's address"
            ));
        }
        if ip.is_multicast() {
            return Err(format!(
                "`{s}` is a multicast address, not a host's address"
            ));
        }
        return Ok(());
    }
    if s.starts_with('[') && s.ends_with(']') {
        return Err("write an IPv6 address without brackets".into());
    }
    if s.contains(':') {
        if s.matches(':').count() == 1 {
            return Err("a port does not belong in the address (use `ssh: {port: ...}`)".into());
        }
        return Err(format!("`{s}` is not a valid IPv6 address"));
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("`{s}` is not a valid IPv4 address"));
    }
    if !is_valid_host_name(s) {
        return Err(format!(
            "`{s}` is neither an IP address nor a valid DNS host name"
        ));
    }
    Ok(())
}

/// Canonical form of an address for comparisons (IP literals normalized, names lowercased).
fn canonical_address(s: &str) -> String {
    match s.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => s.trim_end_matches('.').to_ascii_lowercase(),
    }
}

/// A parsed `ssh.jump_host`: `[user@]host[:port]` (IPv6 as `[addr]:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JumpHost {
    pub user: Option<String>,
    pub host: String,
    pub port: u16,
}

/// Parse `[user@]host[:port]`; the port defaults to 22.
pub fn parse_jump_host(s: &str) -> Result<JumpHost, String> {
    let s = s.trim();
    let (user, rest) = match s.rsplit_once('@') {
        Some((u, r)) => {
            if !is_valid_user_name(u) {
                return Err(format!("`{u}` is not a valid user name"));
            }
            (Some(u.to_string()), r)
        }
        None => (None, s),
    };
    let (host, port) = split_host_port(rest, 22)?;
    check_address(&host)?;
    Ok(JumpHost { user, host, port })
}

/// Split `host[:port]`, `[v6]:port` or a bare IPv6 literal; `default` when no port is given.
fn split_host_port(s: &str, default: u16) -> Result<(String, u16), String> {
    if s.is_empty() {
        return Err("the host is missing".into());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "missing `]` after the IPv6 address".to_string())?;
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(format!("`{host}` is not a valid IPv6 address"));
        }
        let port = match after {
            "" => default,
            p => parse_port(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("unexpected `{p}` after `]`"))?,
            )?,
        };
        return Ok((host.to_string(), port));
    }
    if s.parse::<Ipv6Addr>().is_ok() {
        return Ok((s.to_string(), default));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Ok((h.to_string(), parse_port(p)?)),
        Some(_) => Err(format!(
            "`{s}` is not a valid IPv6 address (write `[address]:port` to give a port)"
        )),
        None => Ok((s.to_string(), default)),
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u32>() {
        Ok(0) => Err("port 0 is not a usable port".into()),
        Ok(n) if n <= 65535 => Ok(n as u16),
        Ok(n) => Err(format!("port {n} is above 65535")),
        Err(_) => Err(format!("`{p}` is not a port number")),
    }
}

/// Parse the DNS server setting `ADDRESS[:PORT]` (`[v6]:port` for IPv6); port 53 by default.
pub fn parse_dns_server(s: &str) -> Result<(String, u16), String> {
    let (host, port) = split_host_port(s.trim(), 53)?;
    check_address(&host)?;
    Ok((host, port))
}

/// A POSIX-style user name: `[a-z_][a-z0-9_-]*[$]?`, up to 32 characters.
pub fn is_valid_user_name(s: &str) -> bool {
    let body = s.strip_suffix('$').unwrap_or(s);
    let mut chars = body.chars();
    s.len() <= 32
        && matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' || c == '.'
        })
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A PostgreSQL parameter name: `name` or `prefix.name` (extension parameters), letters,
/// digits and `_`, not starting with a digit.
pub fn is_valid_parameter_name(s: &str) -> bool {
    let part = |p: &str| {
        let mut c = p.chars();
        matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
    };
    match s.split_once('.') {
        Some((a, b)) => part(a) && part(b),
        None => part(s),
    }
}

/// Patroni's rule for its timings: the leader must be able to renew its key within `ttl` even
/// when a DCS call times out and is retried: `ttl >= loop_wait + 2 * retry_timeout`.
pub fn patroni_timing_ok(ttl: u32, loop_wait: u32, retry_timeout: u32) -> bool {
    u64::from(ttl) >= u64::from(loop_wait) + 2 * u64::from(retry_timeout)
}

/// A PostgreSQL size in megabytes: a plain number is in MB (wal_keep_size's unit); units
/// kB, MB, GB, TB.
fn size_in_mb(v: &ParamValue) -> Option<i64> {
    let text = v.to_string();
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: i64 = num.parse().ok()?;
    match unit.trim() {
        "" | "MB" => Some(n),
        "kB" => Some(n / 1024),
        "GB" => n.checked_mul(1024),
        "TB" => n.checked_mul(1024 * 1024),
        _ => None,
    }
}

fn as_int(v: &ParamValue) -> Option<i64> {
    match v {
        ParamValue::Int(i) => Some(*i),
        ParamValue::Str(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_bool(v: &ParamValue) -> Option<bool> {
    match v {
        ParamValue::Bool(b) => Some(*b),
        ParamValue::Int(0) => Some(false),
        ParamValue::Int(1) => Some(true),
        ParamValue::Str(s) => match s.trim().to_ascii_lowercase().as_str() {
            "on" | "true" | "yes" | "1" => Some(true),
            "off" | "false" | "no" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The checker
// ---------------------------------------------------------------------------------------------

struct Checker<'a> {
    tree: &'a Node,
    text: &'a str,
    file: &'a str,
    problems: Vec<Problem>,
    warnings: Vec<Warning>,
}

/// Validate (and normalize: DNS names get their trailing dot) a parsed inventory. Returns all
/// errors and all warnings.
pub(crate) fn validate(
    inv: &mut Inventory,
    tree: &Node,
    text: &str,
    file: &str,
) -> (Vec<Problem>, Vec<Warning>) {
    if let Some(dns) = inv.dns.as_mut() {
        dns.name = fqdn(&dns.name);
        dns.zone = fqdn(&dns.zone);
    }
    let mut c = Checker {
        tree,
        text,
        file,
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    c.cluster(inv);
    c.postgres(inv);
    c.patroni(inv);
    c.ssh(inv);
    c.packages(inv);
    c.groups(inv);
    c.ports(inv);
    c.dns(inv);
    (c.problems, c.warnings)
}

impl<'a> Checker<'a> {
    /// Position of the value at `path` when it is written in the file (else its key).
    fn exact(&self, path: &[Seg<'_>]) -> Option<Pos> {
        match self.tree.get(path) {
            Some(n) => match n.kind {
                Kind::Map(_) | Kind::Null => self.tree.key_pos(path).or(n.pos),
                _ => n
                    .pos
                    .filter(|p| p.len > 0)
                    .or_else(|| self.tree.key_pos(path)),
            },
            None => None,
        }
    }

    /// Position of the key at `path` (for "this setting must go" problems).
    fn key(&self, path: &[Seg<'_>]) -> Option<Pos> {
        self.tree.key_pos(path).or_else(|| self.exact(path))
    }

    /// Best position: the value, else the nearest written ancestor.
    fn near(&self, path: &[Seg<'_>]) -> Option<Pos> {
        self.tree.best_pos(path)
    }

    fn push(&mut self, p: Problem) {
        self.problems.push(p);
    }

    fn warn(&mut self, pos: Option<Pos>, message: String) {
        let text = match pos {
            Some(p) => {
                let before = self.text.get(..p.offset).unwrap_or(self.text);
                let line = before.matches('\n').count() + 1;
                let col = before
                    .rsplit('\n')
                    .next()
                    .map(|l| l.chars().count())
                    .unwrap_or(0)
                    + 1;
                format!("{}:{line}:{col}: {message}", self.file)
            }
            None => format!("{}: {message}", self.file),
        };
        self.warnings.push(Warning(text));
    }

    // -- cluster ----------------------------------------------------------------------------

    fn cluster(&mut self, inv: &Inventory) {
        let name = &inv.cluster.name;
        if !is_valid_cluster_name(name) {
            let path = [Seg::Key("cluster"), Seg::Key("name")];
            let why = if name.is_empty() {
                "it is empty".to_string()
            } else if name.chars().any(|c| c.is_ascii_uppercase()) {
                "it has uppercase letters".to_string()
            } else {
                "it may only hold lowercase letters, digits and `-`, and must start with a letter \
                 or digit"
                    .to_string()
            };
            self.push(
                Problem::new(format!("cluster name `{name}` is not valid: {why}"))
                    .label(self.exact(&path), "invalid cluster name")
                    .help(
                        "use lowercase letters, digits and `-` (e.g. `pg-main`): the name is \
                         Patroni's scope, etcd's cluster token and a directory name",
                    ),
            );
        }
    }

    // -- postgres ---------------------------------------------------------------------------

    fn postgres(&mut self, inv: &Inventory) {
        let pg = &inv.postgres;
        if !is_valid_postgres_version(&pg.version) {
            let path = [Seg::Key("postgres"), Seg::Key("version")];
            let hint = if pg.version.bytes().all(|b| b.is_ascii_digit()) && !pg.version.is_empty() {
                let example = if pg.version == inv.platform.postgres_major() {
                    inv.platform.default_postgres().to_string()
                } else {
                    format!("{}.N", pg.version)
                };
                format!(
                    "give the minor version too, quoted, e.g. \"{example}\" (pgdeploy pins \
                     exact packages so that every host runs the same build)"
                )
            } else {
                format!(
                    "write it as \"MAJOR.MINOR\" in quotes, e.g. \"{}\" (the minor {} ships)",
                    inv.platform.default_postgres(),
                    inv.platform.describe()
                )
            };
            self.push(
                Problem::new(format!(
                    "postgres version `{}` is not of the form MAJOR.MINOR",
                    pg.version
                ))
                .label(self.exact(&path), "expected e.g. \"15.18\"")
                .help(hint),
            );
        }
        if let Some(dir) = &pg.data_dir {
            if !dir.starts_with('/') {
                self.push(
                    Problem::new(format!(
                        "postgres data_dir `{dir}` is not an absolute path"
                    ))
                    .label(
                        self.exact(&[Seg::Key("postgres"), Seg::Key("data_dir")]),
                        "relative path",
                    )
                    .help("give the directory on the database hosts from `/`, e.g. /var/lib/postgresql/15/main"),
                );
            }
        }
        let major = postgres_major(&pg.version);
        let carried = inv.platform.postgres_major();
        let checked = is_valid_postgres_version(&pg.version)
            .then_some(major)
            .flatten();
        if let Some(m) = checked.filter(|m| m.to_string() != carried) {
            let path = [Seg::Key("postgres"), Seg::Key("version")];
            self.push(
                Problem::new(format!(
                    "postgres version `{}` is PostgreSQL {m}, but {} carries PostgreSQL {carried} \
                     only",
                    pg.version,
                    inv.platform.describe()
                ))
                .label(self.exact(&path), format!("expected {carried}.x"))
                .help(if inv.platform_written {
                    format!(
                        "write `version: \"{}\"` (or leave it out for the release's own \
                         minor), or choose the release that carries PostgreSQL {m} in `platform`",
                        inv.platform.default_postgres()
                    )
                } else {
                    format!(
                        "`platform` is not set, so it is {}; for PostgreSQL {m} on Debian 12 add \
                         `platform: debian-12` at the top of the inventory",
                        inv.platform
                    )
                }),
            );
        }
        self.parameters(
            &pg.parameters,
            &[Seg::Key("postgres"), Seg::Key("parameters")],
            None,
            major,
        );
    }

    /// Check a parameter map. `host` is `Some(name)` for a host's `postgres_parameters`.
    fn parameters(
        &mut self,
        params: &BTreeMap<String, ParamValue>,
        base: &[Seg<'_>],
        host: Option<&str>,
        major: Option<u32>,
    ) {
        let mut seen: HashMap<String, &str> = HashMap::new();
        for (name, value) in params {
            let mut path = base.to_vec();
            path.push(Seg::Key(name));
            let key_pos = self.key(&path);
            if !is_valid_parameter_name(name) {
                self.push(
                    Problem::new(format!("`{name}` is not a valid PostgreSQL parameter name"))
                        .label(key_pos, "invalid name")
                        .help("parameter names are letters, digits and `_` (extensions: `prefix.name`), as in postgresql.conf"),
                );
                continue;
            }
            let lower = name.to_ascii_lowercase();
            if let Some(first) = seen.insert(lower.clone(), name) {
                self.push(
                    Problem::new(format!(
                        "PostgreSQL parameter `{lower}` is set twice (`{first}` and `{name}`)"
                    ))
                    .label(key_pos, "second setting")
                    .help("parameter names are case-insensitive: keep one"),
                );
                continue;
            }
            if let Some((_, why)) = MANAGED_PARAMETERS.iter().find(|(n, _)| *n == lower) {
                self.push(
                    Problem::new(format!(
                        "PostgreSQL parameter `{name}` cannot be set in the inventory: {why}"
                    ))
                    .label(key_pos, "managed by pgdeploy/Patroni")
                    .help(format!("remove `{name}` from {}", describe_params(host))),
                );
                continue;
            }
            if lower == "wal_keep_segments" && major.is_some_and(|m| m >= 13) {
                self.push(
                    Problem::new(
                        "PostgreSQL parameter `wal_keep_segments` no longer exists (removed in \
                         PostgreSQL 13)",
                    )
                    .label(key_pos, "unknown to this PostgreSQL version")
                    .help("use `wal_keep_size` (in MB, e.g. `wal_keep_size: 1GB`) instead"),
                );
                continue;
            }
            let Some((_, minimum)) = CLUSTER_WIDE_PARAMETERS.iter().find(|(n, _)| *n == lower)
            else {
                continue;
            };
            if let Some(h) = host {
                self.push(
                    Problem::new(format!(
                        "PostgreSQL parameter `{name}` cannot be set for host `{h}` alone: Patroni \
                         keeps it cluster-wide and ignores per-host values"
                    ))
                    .label(key_pos, "per-host value")
                    .help(format!(
                        "set it once for all members in `postgres.parameters` (every member \
                         needs the same `{name}`, or replicas cannot follow the primary)"
                    )),
                );
                continue;
            }
            let vpos = self.exact(&path);
            let problem = match *minimum {
                Minimum::Int(min, default) => match as_int(value) {
                    None => Some((
                        format!("PostgreSQL parameter `{name}` must be a whole number, not `{value}`"),
                        "not a whole number".to_string(),
                        format!("write a number, e.g. `{name}: {default}`"),
                    )),
                    Some(v) if v < min => Some((
                        format!(
                            "PostgreSQL parameter `{name}` is {v}, below the minimum {min}: \
                             Patroni would silently ignore it and keep {default}"
                        ),
                        format!("below {min}"),
                        format!("set `{name}` to {min} or more"),
                    )),
                    _ => None,
                },
                Minimum::SizeMb(min, default) => match size_in_mb(value) {
                    None => Some((
                        format!("PostgreSQL parameter `{name}` must be a size, not `{value}`"),
                        "not a size".to_string(),
                        format!("write a size such as `{default}` (units kB, MB, GB, TB; plain numbers are MB)"),
                    )),
                    Some(v) if v < min => Some((
                        format!(
                            "PostgreSQL parameter `{name}` is below {min}MB: Patroni would \
                             silently ignore it and keep {default}"
                        ),
                        format!("below {min}MB"),
                        format!("set `{name}` to {min}MB or more"),
                    )),
                    _ => None,
                },
                Minimum::OneOf(allowed, default) => {
                    let v = value.to_string().to_ascii_lowercase();
                    if allowed.contains(&v.as_str()) {
                        None
                    } else {
                        Some((
                            format!(
                                "PostgreSQL parameter `{name}` is `{value}`: streaming replication \
                                 needs one of {}; Patroni would ignore it and keep {default}",
                                allowed.join(", ")
                            ),
                            "not usable for replication".to_string(),
                            format!("set `{name}: {default}` (or `logical` for logical decoding)"),
                        ))
                    }
                }
                Minimum::Bool(default) => match as_bool(value) {
                    Some(_) => None,
                    None => Some((
                        format!("PostgreSQL parameter `{name}` must be on or off, not `{value}`"),
                        "not a boolean".to_string(),
                        format!("write `{name}: on` or `{name}: off` (default {default})"),
                    )),
                },
            };
            if let Some((message, label, help)) = problem {
                self.push(Problem::new(message).label(vpos, label).help(help));
            }
        }
    }

    // -- patroni ----------------------------------------------------------------------------

    fn patroni(&mut self, inv: &Inventory) {
        let p = &inv.patroni;
        let path = |k: &'static str| [Seg::Key("patroni"), Seg::Key(k)];
        let defaults = inv.platform.default_patroni_timings();
        let min = inv.platform.min_patroni_timings();
        let mut any_zero = false;
        for (key, v, what) in [
            (
                "ttl",
                p.ttl,
                "how long the leader key lives without renewal",
            ),
            ("loop_wait", p.loop_wait, "the pause between two HA cycles"),
            (
                "retry_timeout",
                p.retry_timeout,
                "the time allowed for etcd and PostgreSQL operations",
            ),
        ] {
            if v == 0 {
                any_zero = true;
                self.push(
                    Problem::new(format!("`patroni.{key}` is 0 seconds; it is {what}"))
                        .label(self.exact(&path(key)), "must be at least 1")
                        .help(format!(
                            "set `patroni.{key}` to at least 1 (pgdeploy's default on {} is {})",
                            inv.platform,
                            match key {
                                "ttl" => defaults.ttl,
                                "loop_wait" => defaults.loop_wait,
                                _ => defaults.retry_timeout,
                            }
                        )),
                );
            }
        }
        if !any_zero {
            for (key, v, least) in [
                ("ttl", p.ttl, min.ttl),
                ("loop_wait", p.loop_wait, min.loop_wait),
                ("retry_timeout", p.retry_timeout, min.retry_timeout),
            ] {
                if v < least {
                    any_zero = true;
                    self.push(
                        Problem::new(format!(
                            "`patroni.{key}` is {v} s, below the {least} s that Patroni {} on \
                             {} accepts: it would silently run with {least} s instead",
                            inv.platform.patroni_major(),
                            inv.platform.describe(),
                        ))
                        .label(self.exact(&path(key)), format!("at least {least}"))
                        .help(format!(
                            "set `patroni.{key}: {least}` or more (pgdeploy's default on {} is \
                             {}), so that the timings in effect are the ones written here",
                            inv.platform,
                            match key {
                                "ttl" => defaults.ttl,
                                "loop_wait" => defaults.loop_wait,
                                _ => defaults.retry_timeout,
                            }
                        )),
                    );
                }
            }
        }
        if !any_zero && !patroni_timing_ok(p.ttl, p.loop_wait, p.retry_timeout) {
            let need = u64::from(p.loop_wait) + 2 * u64::from(p.retry_timeout);
            let mut problem = Problem::new(format!(
                "`patroni.ttl` ({}) is shorter than loop_wait + 2 × retry_timeout ({} + 2 × {} = \
                 {need})",
                p.ttl, p.loop_wait, p.retry_timeout
            ));
            problem = problem
                .label(self.exact(&path("ttl")), format!("ttl {}", p.ttl))
                .label(self.exact(&path("loop_wait")), "loop_wait")
                .label(self.exact(&path("retry_timeout")), "retry_timeout");
            if problem.labels.is_empty() {
                problem = problem.label(self.near(&path("ttl")), "patroni timings");
            }
            self.push(problem.help(format!(
                "a leader that hits one slow etcd call must still renew its key before it expires, \
                 or Patroni demotes a healthy primary: raise ttl to at least {need}, or lower \
                 loop_wait or retry_timeout"
            )));
        }
    }

    // -- ssh --------------------------------------------------------------------------------

    fn ssh(&mut self, inv: &Inventory) {
        let s = &inv.ssh;
        let path = |k: &'static str| [Seg::Key("ssh"), Seg::Key(k)];
        if !is_valid_user_name(&s.user) {
            self.push(
                Problem::new(format!("`ssh.user` `{}` is not a valid user name", s.user))
                    .label(self.exact(&path("user")), "invalid user name")
                    .help("give the login name on the hosts, e.g. `root` or `deploy`"),
            );
        }
        if s.connect_timeout == 0 {
            self.push(
                Problem::new("`ssh.connect_timeout` is 0: no connection could ever succeed")
                    .label(self.exact(&path("connect_timeout")), "must be at least 1")
                    .help("give the seconds to wait for a host to answer, e.g. 10"),
            );
        }
        if let Some(j) = &s.jump_host {
            self.jump_host(j, &path("jump_host"));
        }
        for (key, value) in [
            ("passphrase_env", &s.passphrase_env),
            ("sudo_password_env", &s.sudo_password_env),
        ] {
            if let Some(v) = value {
                if !is_env_var_name(v) {
                    self.push(
                        Problem::new(format!(
                            "`ssh.{key}` must name an environment variable, not `{v}`"
                        ))
                        .label(self.exact(&path(key)), "not a variable name")
                        .help("give the variable's name (letters, digits, `_`), e.g. PGDEPLOY_SUDO_PASSWORD; never the secret itself"),
                    );
                }
            }
        }
        for (key, value) in [
            ("private_key", &s.private_key),
            ("known_hosts", &s.known_hosts),
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                self.push(
                    Problem::new(format!("`ssh.{key}` is empty"))
                        .label(self.exact(&path(key)), "empty path")
                        .help(format!(
                            "give a file path or remove `{key}` to use the default"
                        )),
                );
            }
        }
    }

    fn jump_host(&mut self, j: &str, path: &[Seg<'_>]) {
        if let Err(why) = parse_jump_host(j) {
            self.push(
                Problem::new(format!("jump host `{j}` is not valid: {why}"))
                    .label(self.exact(path), "expected [user@]host[:port]")
                    .help("write it as `[user@]host[:port]`, e.g. `admin@bastion.example.com:2222` (IPv6: `[fd00::1]:22`)"),
            );
        }
    }

    // -- packages ---------------------------------------------------------------------------

    fn packages(&mut self, inv: &Inventory) {
        let p = &inv.packages;
        if p.source == super::PackageSource::Bundle && p.bundle_dir.trim().is_empty() {
            self.push(
                Problem::new("`packages.bundle_dir` is empty but `packages.source` is `bundle`")
                    .label(
                        self.exact(&[Seg::Key("packages"), Seg::Key("bundle_dir")]),
                        "empty",
                    )
                    .help("give the directory `pgdeploy bundle` writes to (relative to the inventory), e.g. `bundle`"),
            );
        }
        for (i, src) in p.debian_sources.iter().enumerate() {
            if src.trim().is_empty() {
                self.push(
                    Problem::new("an entry of `packages.debian_sources` is empty")
                        .label(
                            self.exact(&[
                                Seg::Key("packages"),
                                Seg::Key("debian_sources"),
                                Seg::Index(i),
                            ]),
                            "empty",
                        )
                        .help("remove it, or give an apt source line (deb URI SUITE COMPONENTS)"),
                );
            }
        }
    }

    // -- groups and hosts -------------------------------------------------------------------

    fn groups(&mut self, inv: &Inventory) {
        for g in Group::ALL {
            let n = inv.groups.get(g).len();
            let path = [Seg::Key("groups"), Seg::Key(g.as_str())];
            let pos = self.key(&path).or_else(|| self.key(&[Seg::Key("groups")]));
            if n == 0 {
                let (message, help) = empty_group(g);
                self.push(Problem::new(message).label(pos, "empty").help(help));
            } else if g == Group::Etcd && n.is_multiple_of(2) {
                self.warn(
                    pos,
                    format!(
                        "{n} etcd hosts: an even count tolerates no more failures than {} (quorum \
                         is {} of {n}); use an odd number, 3 or 5",
                        n - 1,
                        n / 2 + 1
                    ),
                );
            } else if g == Group::Patroni && n == 1 {
                self.warn(
                    pos,
                    "1 patroni host: there is no replica to fail over to".to_string(),
                );
            }
        }

        let patroni_names: Vec<&str> = inv.groups.patroni.iter().map(|e| e.name.as_str()).collect();
        // First entry of each host name, and first owner of each address.
        let mut by_name: HashMap<&str, (Group, usize)> = HashMap::new();
        let mut by_addr: HashMap<String, (&str, Group, usize, &'static str)> = HashMap::new();
        let major = postgres_major(&inv.postgres.version);

        for g in Group::ALL {
            for (i, e) in inv.groups.get(g).iter().enumerate() {
                let at = |k: &'static str| {
                    vec![
                        Seg::Key("groups"),
                        Seg::Key(g.as_str()),
                        Seg::Index(i),
                        Seg::Key(k),
                    ]
                };
                let name_ok = is_valid_host_name(&e.name) && !e.name.ends_with('.');
                if !name_ok {
                    self.push(
                        Problem::new(format!("host name `{}` is not valid", e.name))
                            .label(self.exact(&at("name")), "invalid host name")
                            .help(
                                "use letters, digits and `-` (dots between parts), e.g. `pg1`: \
                                 the name becomes the Patroni and etcd member name and the \
                                 certificate name",
                            ),
                    );
                }
                let addr_ok = match check_address(&e.address) {
                    Ok(()) => true,
                    Err(why) => {
                        self.push(
                            Problem::new(format!(
                                "address of host `{}` is not valid: {why}",
                                e.name
                            ))
                            .label(self.exact(&at("address")), "invalid address")
                            .help(
                                "write an IPv4 or IPv6 literal (10.0.0.21, fd00::21) or a DNS host \
                                 name (pg1.example.com)",
                            ),
                        );
                        false
                    }
                };
                if addr_ok && g == Group::Etcd && e.address.parse::<IpAddr>().is_err() {
                    self.push(
                        Problem::new(format!(
                            "etcd host `{}` must be given by IP address, not `{}`",
                            e.name, e.address
                        ))
                        .label(self.exact(&at("address")), "a name, not an IP address")
                        .help(
                            "etcd listens on this address (its listen URLs take IP addresses \
                             only): write the host's IP address, e.g. 10.0.0.11",
                        ),
                    );
                }
                let addr6_ok = match &e.address6 {
                    Some(a6) => match a6.parse::<Ipv6Addr>() {
                        Ok(ip) if !ip.is_unspecified() && !ip.is_multicast() => true,
                        _ => {
                            self.push(
                                Problem::new(format!(
                                    "address6 of host `{}` is not a usable IPv6 address: `{a6}`",
                                    e.name
                                ))
                                .label(self.exact(&at("address6")), "not an IPv6 address")
                                .help("give the host's IPv6 address as a literal, e.g. fd00::21 (it is published as AAAA)"),
                            );
                            false
                        }
                    },
                    None => true,
                };

                // Same name: colocation (same address) or a conflict.
                match by_name.get(e.name.as_str()).copied() {
                    Some((g0, i0)) if g0 == g => {
                        self.push(
                            Problem::new(format!(
                                "host `{}` is listed twice in `groups.{}`",
                                e.name,
                                g.as_str()
                            ))
                            .label(self.exact(&at("name")), "listed again")
                            .label(
                                self.exact(&[
                                    Seg::Key("groups"),
                                    Seg::Key(g.as_str()),
                                    Seg::Index(i0),
                                    Seg::Key("name"),
                                ]),
                                "first here",
                            )
                            .help("list each host once per group; remove one of the entries"),
                        );
                        continue;
                    }
                    Some((g0, i0)) => {
                        let first = &inv.groups.get(g0)[i0];
                        let first_at = |k: &'static str| {
                            vec![
                                Seg::Key("groups"),
                                Seg::Key(g0.as_str()),
                                Seg::Index(i0),
                                Seg::Key(k),
                            ]
                        };
                        if addr_ok
                            && canonical_address(&first.address) != canonical_address(&e.address)
                        {
                            self.push(
                                Problem::new(format!(
                                    "host `{}` has address `{}` in `groups.{}` but `{}` in \
                                     `groups.{}`",
                                    e.name,
                                    e.address,
                                    g.as_str(),
                                    first.address,
                                    g0.as_str()
                                ))
                                .label(self.exact(&at("address")), "this address")
                                .label(self.exact(&first_at("address")), "differs from this one")
                                .help(
                                    "a host in several groups is one machine (colocation) and has \
                                     one address; if these are two machines, give them different \
                                     names",
                                ),
                            );
                        }
                        let earlier6 =
                            earlier_entries(inv, g, i, &e.name).find_map(|x| x.address6.as_deref());
                        if let (true, Some(a6), Some(b6)) =
                            (addr6_ok, e.address6.as_deref(), earlier6)
                        {
                            if canonical_address(a6) != canonical_address(b6) {
                                self.push(
                                Problem::new(format!(
                                    "host `{}` has address6 `{a6}` in `groups.{}` but `{b6}` in \
                                     an earlier entry",
                                    e.name,
                                    g.as_str()
                                ))
                                .label(self.exact(&at("address6")), "differs")
                                .help("a host has one IPv6 address: write `address6` once (on any of its entries) or the same value everywhere"),
                            );
                            }
                        }
                        if e.ssh.is_some() && ssh_json(&e.ssh) != ssh_json(&first.ssh) {
                            self.push(
                                Problem::new(format!(
                                    "host `{}` has different `ssh` settings in `groups.{}` than in \
                                     its first entry (`groups.{}`)",
                                    e.name,
                                    g.as_str(),
                                    g0.as_str()
                                ))
                                .label(self.key(&at("ssh")), "ignored")
                                .help("pgdeploy connects once per host: give `ssh` on the host's first entry (it applies in every group), or the same settings"),
                            );
                        }
                    }
                    None => {
                        by_name.insert(e.name.as_str(), (g, i));
                    }
                }

                // Same address under another name.
                let mut addrs: Vec<(String, &'static str)> = Vec::new();
                if addr_ok {
                    addrs.push((canonical_address(&e.address), "address"));
                }
                if addr6_ok {
                    if let Some(a6) = &e.address6 {
                        addrs.push((canonical_address(a6), "address6"));
                    }
                }
                for (addr, key) in addrs {
                    match by_addr.get(&addr).copied() {
                        Some((other, g0, i0, key0)) if other != e.name => {
                            self.push(
                                Problem::new(format!(
                                    "address `{addr}` belongs to two hosts: `{other}` and `{}`",
                                    e.name
                                ))
                                .label(self.exact(&at(key)), format!("used by `{}`", e.name))
                                .label(
                                    self.exact(&[
                                        Seg::Key("groups"),
                                        Seg::Key(g0.as_str()),
                                        Seg::Index(i0),
                                        Seg::Key(key0),
                                    ]),
                                    format!("used by `{other}`"),
                                )
                                .help(format!(
                                    "if they are one machine, use one name in every group (same \
                                     name and address in several groups is how colocation is \
                                     written, e.g. `{other}` in both); otherwise fix the address"
                                )),
                            );
                        }
                        Some(_) => {}
                        None => {
                            by_addr.insert(addr, (e.name.as_str(), g, i, key));
                        }
                    }
                }

                // Per-host SSH overrides.
                if let Some(o) = &e.ssh {
                    let ssh_at = |k: &'static str| {
                        vec![
                            Seg::Key("groups"),
                            Seg::Key(g.as_str()),
                            Seg::Index(i),
                            Seg::Key("ssh"),
                            Seg::Key(k),
                        ]
                    };
                    if o.port == Some(0) {
                        self.push(
                            Problem::new(format!("SSH port of host `{}` is 0", e.name))
                                .label(self.exact(&ssh_at("port")), "must be 1-65535")
                                .help("give the port sshd listens on (usually 22)"),
                        );
                    }
                    if let Some(u) = &o.user {
                        if !is_valid_user_name(u) {
                            self.push(
                                Problem::new(format!(
                                    "SSH user `{u}` of host `{}` is not a valid user name",
                                    e.name
                                ))
                                .label(self.exact(&ssh_at("user")), "invalid user name")
                                .help("give the login name on the host, e.g. `root`"),
                            );
                        }
                    }
                    if let Some(j) = &o.jump_host {
                        self.jump_host(j, &ssh_at("jump_host"));
                    }
                    if o.private_key
                        .as_deref()
                        .is_some_and(|k| k.trim().is_empty())
                    {
                        self.push(
                            Problem::new(format!("SSH private_key of host `{}` is empty", e.name))
                                .label(self.exact(&ssh_at("private_key")), "empty path")
                                .help("give a key file or remove `private_key`"),
                        );
                    }
                }

                // Per-host PostgreSQL parameters.
                if !e.postgres_parameters.is_empty() {
                    if !patroni_names.contains(&e.name.as_str()) {
                        self.push(
                            Problem::new(format!(
                                "host `{}` has postgres_parameters but is not in `groups.patroni`",
                                e.name
                            ))
                            .label(self.key(&at("postgres_parameters")), "no PostgreSQL here")
                            .help("move them to a Patroni host, or to `postgres.parameters` for all members"),
                        );
                    } else {
                        let mut base = at("postgres_parameters");
                        base.truncate(5);
                        self.parameters(&e.postgres_parameters, &base, Some(&e.name), major);
                    }
                }
            }
        }

        // Effective SSH user and become, per host (one problem per place that sets the user).
        let mut not_root: Vec<(Option<Pos>, String, Vec<String>)> = Vec::new();
        for h in inv.hosts() {
            if h.ssh.user != "root" && h.ssh.become_ == super::Become::None {
                let pos = self
                    .host_ssh_pos(inv, &h.name, "user")
                    .or_else(|| self.exact(&[Seg::Key("ssh"), Seg::Key("user")]));
                match not_root
                    .iter_mut()
                    .find(|(p, u, _)| *p == pos && *u == h.ssh.user)
                {
                    Some((_, _, hosts)) => hosts.push(h.name.clone()),
                    None => not_root.push((pos, h.ssh.user.clone(), vec![h.name.clone()])),
                }
            }
        }
        let total = inv.hosts().len();
        for (pos, user, hosts) in not_root {
            let who = if hosts.len() == total && total > 1 {
                "every host is".to_string()
            } else if hosts.len() == 1 {
                format!("host `{}` is", hosts[0])
            } else {
                format!(
                    "hosts {} are",
                    hosts
                        .iter()
                        .map(|h| format!("`{h}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            self.push(
                Problem::new(format!(
                    "{who} reached as `{user}` without `become`: pgdeploy needs root there"
                ))
                .label(pos, "not root")
                .help("set `ssh.become: sudo` (the user needs sudo rights), or connect as root"),
            );
        }
    }

    /// Position of a per-host ssh override key on the host's first entry, when written.
    fn host_ssh_pos(&self, inv: &Inventory, name: &str, key: &str) -> Option<Pos> {
        for g in Group::ALL {
            if let Some(i) = inv.groups.get(g).iter().position(|e| e.name == name) {
                return self.exact(&[
                    Seg::Key("groups"),
                    Seg::Key(g.as_str()),
                    Seg::Index(i),
                    Seg::Key("ssh"),
                    Seg::Key(key),
                ]);
            }
        }
        None
    }

    // -- ports ------------------------------------------------------------------------------

    fn ports(&mut self, inv: &Inventory) {
        struct Setting {
            name: &'static str,
            path: [Seg<'static>; 2],
            port: u16,
            group: Group,
            default: u16,
        }
        let d_pg = super::Postgres::default();
        let d_pat = super::Patroni::default();
        let d_etcd = super::Etcd::default();
        let d_hap = super::Haproxy::default();
        let settings = [
            Setting {
                name: "postgres.port",
                path: [Seg::Key("postgres"), Seg::Key("port")],
                port: inv.postgres.port,
                group: Group::Patroni,
                default: d_pg.port,
            },
            Setting {
                name: "patroni.restapi_port",
                path: [Seg::Key("patroni"), Seg::Key("restapi_port")],
                port: inv.patroni.restapi_port,
                group: Group::Patroni,
                default: d_pat.restapi_port,
            },
            Setting {
                name: "etcd.client_port",
                path: [Seg::Key("etcd"), Seg::Key("client_port")],
                port: inv.etcd.client_port,
                group: Group::Etcd,
                default: d_etcd.client_port,
            },
            Setting {
                name: "etcd.peer_port",
                path: [Seg::Key("etcd"), Seg::Key("peer_port")],
                port: inv.etcd.peer_port,
                group: Group::Etcd,
                default: d_etcd.peer_port,
            },
            Setting {
                name: "haproxy.primary_port",
                path: [Seg::Key("haproxy"), Seg::Key("primary_port")],
                port: inv.haproxy.primary_port,
                group: Group::Haproxy,
                default: d_hap.primary_port,
            },
            Setting {
                name: "haproxy.replica_port",
                path: [Seg::Key("haproxy"), Seg::Key("replica_port")],
                port: inv.haproxy.replica_port,
                group: Group::Haproxy,
                default: d_hap.replica_port,
            },
            Setting {
                name: "haproxy.stats_port",
                path: [Seg::Key("haproxy"), Seg::Key("stats_port")],
                port: inv.haproxy.stats_port,
                group: Group::Haproxy,
                default: d_hap.stats_port,
            },
        ];
        for s in &settings {
            if s.port == 0 {
                self.push(
                    Problem::new(format!("`{}` is 0, which is not a usable port", s.name))
                        .label(self.exact(&s.path), "must be 1-65535")
                        .help(format!(
                            "give a port between 1 and 65535, or remove the setting for the \
                             default {}",
                            s.default
                        )),
                );
            }
        }
        if inv.ssh.port == 0 {
            self.push(
                Problem::new("`ssh.port` is 0, which is not a usable port")
                    .label(
                        self.exact(&[Seg::Key("ssh"), Seg::Key("port")]),
                        "must be 1-65535",
                    )
                    .help("give the port sshd listens on (22 by default)"),
            );
        }

        // Collisions on each host between the services it runs (and its sshd).
        // Key: the pair of settings; value: the hosts where they collide.
        let mut clashes: Vec<((usize, usize), u16, Vec<String>)> = Vec::new();
        const SSH: usize = usize::MAX;
        for h in inv.hosts() {
            let mut used: Vec<(usize, u16)> = settings
                .iter()
                .enumerate()
                .filter(|(_, s)| h.in_group(s.group) && s.port != 0)
                .map(|(i, s)| (i, s.port))
                .collect();
            if h.ssh.port != 0 {
                used.push((SSH, h.ssh.port));
            }
            for a in 0..used.len() {
                for b in a + 1..used.len() {
                    if used[a].1 == used[b].1 {
                        let key = (used[a].0, used[b].0);
                        match clashes.iter_mut().find(|(k, _, _)| *k == key) {
                            Some((_, _, hosts)) => hosts.push(h.name.clone()),
                            None => clashes.push((key, used[a].1, vec![h.name.clone()])),
                        }
                    }
                }
            }
        }
        for ((a, b), port, hosts) in clashes {
            let describe = |i: usize| -> (String, Option<Pos>) {
                if i == SSH {
                    (
                        "the SSH port".to_string(),
                        self.exact(&[Seg::Key("ssh"), Seg::Key("port")]),
                    )
                } else {
                    let s = &settings[i];
                    let pos = self.exact(&s.path);
                    let name = if pos.is_none() {
                        format!("`{}` (default)", s.name)
                    } else {
                        format!("`{}`", s.name)
                    };
                    (name, pos)
                }
            };
            let (name_a, pos_a) = describe(a);
            let (name_b, pos_b) = describe(b);
            let on = if hosts.len() == 1 {
                format!("host `{}`", hosts[0])
            } else {
                format!(
                    "hosts {}",
                    hosts
                        .iter()
                        .map(|h| format!("`{h}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            let mut problem = Problem::new(format!(
                "port {port} is used twice on {on}: by {name_a} and by {name_b}"
            ));
            if let Some(pb) = pos_b {
                problem = problem.label(Some(pb), format!("port {port}"));
            }
            if let Some(pa) = pos_a {
                problem = problem.label(Some(pa), format!("also port {port}"));
            }
            self.push(problem.help(
                "services on one host need distinct ports (a host in several groups runs all \
                 their services): change one of these ports",
            ));
        }
    }

    // -- dns --------------------------------------------------------------------------------

    fn dns(&mut self, inv: &Inventory) {
        let Some(dns) = &inv.dns else { return };
        let at = |k: &'static str| [Seg::Key("dns"), Seg::Key(k)];
        if !DNS_PROVIDERS.contains(&dns.provider.as_str()) {
            let suggestion = super::load::nearest(&dns.provider, &DNS_PROVIDERS)
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

/// What to say about a group without hosts.
pub(crate) fn empty_group(g: Group) -> (&'static str, &'static str) {
    match g {
        Group::Etcd => (
            "no etcd host: Patroni needs etcd to elect the primary",
            "list the etcd hosts under `groups.etcd` (name and address each): 3 for production, \
             1 for a test setup; they may be the Patroni hosts themselves",
        ),
        Group::Patroni => (
            "no patroni host: there is no PostgreSQL to deploy",
            "list the PostgreSQL hosts under `groups.patroni`: 3 for production (one primary, \
             two replicas)",
        ),
        Group::Haproxy => (
            "no haproxy host: clients reach the primary through HAProxy",
            "list the HAProxy hosts under `groups.haproxy`: 3 behind the DNS name for \
             production; 1, possibly on a Patroni host, for a test setup",
        ),
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

/// The entries of host `name` that come before entry `i` of group `g` (inventory order).
fn earlier_entries<'i>(
    inv: &'i Inventory,
    g: Group,
    i: usize,
    name: &'i str,
) -> impl Iterator<Item = &'i super::HostEntry> + 'i {
    Group::ALL
        .into_iter()
        .flat_map(move |g2| {
            let entries = inv.groups.get(g2);
            let end = match g2.cmp(&g) {
                std::cmp::Ordering::Less => entries.len(),
                std::cmp::Ordering::Equal => i,
                std::cmp::Ordering::Greater => 0,
            };
            entries[..end].iter()
        })
        .filter(move |e| e.name == name)
}

fn ssh_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn describe_params(host: Option<&str>) -> String {
    match host {
        Some(h) => format!("the `postgres_parameters` of host `{h}`"),
        None => "`postgres.parameters`".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Problems (messages) and warnings for an inventory given as text.
    fn check(text: &str) -> (Vec<String>, Vec<String>) {
        match crate::inventory::load_str(text, "t.yaml", std::path::Path::new(".")) {
            Ok((_, w)) => (Vec::new(), w.into_iter().map(|w| w.0).collect()),
            Err(r) => match r.downcast_ref::<crate::inventory::InventoryError>() {
                Some(e) => (
                    e.problems().iter().map(|p| p.message.clone()).collect(),
                    Vec::new(),
                ),
                None => (vec![r.to_string()], Vec::new()),
            },
        }
    }

    const GROUPS_COLOCATED: &str = "groups:\n  etcd: [{name: a, address: 192.0.2.1}]\n  \
        patroni: [{name: a, address: 192.0.2.1}, {name: b, address: 192.0.2.2}]\n  \
        haproxy: [{name: a, address: 192.0.2.1}]\n";

    #[test]
    fn colocation_is_allowed_and_checked_for_ports() {
        let base = format!("cluster: {{name: c}}\n{GROUPS_COLOCATED}");
        assert_eq!(check(&base), (vec![], vec![]));
        // etcd's client port equal to HAProxy's stats port clashes only because `a` runs both.
        let clash =
            format!("cluster: {{name: c}}\nhaproxy: {{stats_port: 2379}}\n{GROUPS_COLOCATED}");
        let (errors, _) = check(&clash);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("port 2379 is used twice on host `a`"),
            "{errors:?}"
        );
        // Without colocation the same ports are fine.
        let apart = "cluster: {name: c}\nhaproxy: {stats_port: 2379}\ngroups:\n  \
            etcd: [{name: e, address: 192.0.2.9}]\n  patroni: [{name: a, address: 192.0.2.1}]\n  \
            haproxy: [{name: h, address: 192.0.2.8}]\n";
        let (errors, warnings) = check(apart);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(warnings.len(), 1, "single patroni host warns: {warnings:?}");
    }

    #[test]
    fn every_problem_is_collected() {
        let text = "cluster: {name: X}\npostgres: {version: '15', port: 0}\n\
            patroni: {ttl: 1}\nssh: {connect_timeout: 0}\ngroups: {}\n";
        let (errors, _) = check(text);
        assert_eq!(errors.len(), 8, "{errors:#?}");
    }

    #[test]
    fn managed_parameters_are_rejected_case_insensitively() {
        let text = format!(
            "cluster: {{name: c}}\npostgres: {{parameters: {{Listen_Addresses: '*'}}}}\n{GROUPS_COLOCATED}"
        );
        let (errors, _) = check(&text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("`Listen_Addresses` cannot be set"),
            "{errors:?}"
        );
    }

    #[test]
    fn cluster_names() {
        for ok in ["pg", "pg-main", "0db", "a1-b2"] {
            assert!(is_valid_cluster_name(ok), "{ok}");
        }
        for bad in ["", "-pg", "Pg", "pg_main", "pg.main", "pg main", "ñ"] {
            assert!(!is_valid_cluster_name(bad), "{bad}");
        }
    }

    #[test]
    fn postgres_versions() {
        for ok in ["15.18", "15.0", "16.4", "9.6"] {
            assert!(is_valid_postgres_version(ok), "{ok}");
        }
        for bad in [
            "15", "15.", ".18", "15.18.1", "v15.18", "15,18", "", "015.1", "15.x",
        ] {
            assert!(!is_valid_postgres_version(bad), "{bad}");
        }
        assert_eq!(postgres_major("15.18"), Some(15));
    }

    #[test]
    fn addresses() {
        for ok in [
            "10.0.0.1",
            "fd00::21",
            "pg1",
            "pg1.example.com",
            "pg1.example.com.",
        ] {
            assert_eq!(check_address(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "10.0.0.256",
            "10.0.0",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "[fd00::1]",
            "pg1:22",
            "pg_1",
            "-pg",
            "fd00:::1",
            "host..example",
            "1.2.3.4.5",
        ] {
            assert!(check_address(bad).is_err(), "{bad}");
        }
        assert_eq!(canonical_address("FD00:0::21"), "fd00::21");
        assert_eq!(canonical_address("PG1.Example.com."), "pg1.example.com");
    }

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
    fn jump_hosts() {
        assert_eq!(
            parse_jump_host("admin@bastion.example.com:2222"),
            Ok(JumpHost {
                user: Some("admin".into()),
                host: "bastion.example.com".into(),
                port: 2222
            })
        );
        assert_eq!(
            parse_jump_host("10.0.0.5"),
            Ok(JumpHost {
                user: None,
                host: "10.0.0.5".into(),
                port: 22
            })
        );
        assert_eq!(
            parse_jump_host("root@[fd00::5]:22"),
            Ok(JumpHost {
                user: Some("root".into()),
                host: "fd00::5".into(),
                port: 22
            })
        );
        assert_eq!(parse_jump_host("fd00::5").map(|j| j.port), Ok(22));
        for bad in [
            "",
            "@host",
            "user@",
            "host:0",
            "host:70000",
            "host:ssh",
            "Bad User@h",
            "[fd00::5",
            "a b",
        ] {
            assert!(parse_jump_host(bad).is_err(), "{bad}");
        }
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

    #[test]
    fn timing_rule() {
        assert!(patroni_timing_ok(10, 2, 3));
        assert!(patroni_timing_ok(30, 10, 10));
        assert!(patroni_timing_ok(8, 2, 3));
        assert!(!patroni_timing_ok(7, 2, 3));
        assert!(!patroni_timing_ok(10, 5, 3));
        assert!(patroni_timing_ok(u32::MAX, u32::MAX, 0));
        assert!(!patroni_timing_ok(u32::MAX, u32::MAX, u32::MAX));
    }

    #[test]
    fn names_and_sizes() {
        assert!(is_valid_user_name("root"));
        assert!(is_valid_user_name("deploy-1"));
        assert!(!is_valid_user_name("Root"));
        assert!(!is_valid_user_name(""));
        assert!(is_env_var_name("PGDEPLOY_TSIG"));
        assert!(!is_env_var_name("1X"));
        assert!(!is_env_var_name("A-B"));
        assert!(is_valid_parameter_name("shared_buffers"));
        assert!(is_valid_parameter_name("pg_stat_statements.max"));
        assert!(!is_valid_parameter_name("shared-buffers"));
        assert!(!is_valid_parameter_name("a.b.c"));
        assert_eq!(size_in_mb(&ParamValue::Str("1GB".into())), Some(1024));
        assert_eq!(size_in_mb(&ParamValue::Int(64)), Some(64));
        assert_eq!(size_in_mb(&ParamValue::Str("8192kB".into())), Some(8));
        assert_eq!(size_in_mb(&ParamValue::Str("lots".into())), None);
        assert_eq!(as_bool(&ParamValue::Str("on".into())), Some(true));
        assert_eq!(as_int(&ParamValue::Str("100".into())), Some(100));
    }
}
