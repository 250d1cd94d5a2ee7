//! `postgres` and the per-host `postgres_parameters`: version, data directory, parameters.

use std::collections::{BTreeMap, HashMap};

use super::Checker;
use crate::inventory::diag::Problem;
use crate::inventory::tree::Seg;
use crate::inventory::{Inventory, ParamValue};

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

/// Directories of the system (and of the tools pgdeploy installs) that a data directory must
/// neither be nor contain: Patroni creates, empties and `chmod 700`s its data directory.
const SYSTEM_DIRS: [&str; 22] = [
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib64",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/var",
    "/var/lib",
    "/var/log",
    "/var/lib/postgresql",
    "/var/lib/etcd",
    "/var/lib/pgdeploy",
];

/// Pure: why `dir` cannot be a data directory (None: it can, as far as the path goes).
pub fn unsafe_data_dir(dir: &str) -> Option<String> {
    if !dir.starts_with('/') {
        return None; // reported as a relative path
    }
    if dir.split('/').any(|c| c == ".." || c == ".") {
        return Some("`.` and `..` are not allowed in it; write the path plainly".into());
    }
    let norm = dir.trim_end_matches('/');
    if norm.is_empty() {
        return Some("it is the root directory".into());
    }
    if let Some(sys) = SYSTEM_DIRS
        .iter()
        .find(|s| **s == norm || s.starts_with(&format!("{norm}/")))
    {
        return Some(if *sys == norm {
            format!("{sys} is a system directory")
        } else {
            format!("it contains the system directory {sys}")
        });
    }
    for volatile in ["/proc", "/sys", "/dev", "/run", "/tmp"] {
        if norm.starts_with(&format!("{volatile}/")) {
            return Some(format!(
                "it is under {volatile}, which does not keep data across a reboot"
            ));
        }
    }
    None
}

fn describe_params(host: Option<&str>) -> String {
    match host {
        Some(h) => format!("the `postgres_parameters` of host `{h}`"),
        None => "`postgres.parameters`".to_string(),
    }
}

impl Checker<'_> {
    pub(super) fn postgres(&mut self, inv: &Inventory) {
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
            if let Some(why) = unsafe_data_dir(dir) {
                self.push(
                    Problem::new(format!("postgres data_dir `{dir}` cannot be used: {why}"))
                        .label(
                            self.exact(&[Seg::Key("postgres"), Seg::Key("data_dir")]),
                            "unsafe data directory",
                        )
                        .help(format!(
                            "give a directory of its own for the cluster's data, e.g. /var/lib/postgresql/{}/main (the default) or /srv/postgresql/main",
                            inv.platform.postgres_major()
                        )),
                );
            } else if !dir.starts_with('/') {
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
    pub(super) fn parameters(
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
            let text = value.to_string();
            if let Some(c) = text.chars().find(|c| c.is_control()) {
                self.push(
                    Problem::new(format!(
                        "PostgreSQL parameter `{name}` contains a control character ({}): it \
                         would break postgresql.conf and the DCS",
                        match c {
                            '\n' => "a newline".to_string(),
                            '\t' => "a tab".to_string(),
                            '\r' => "a carriage return".to_string(),
                            c => format!("U+{:04X}", c as u32),
                        }
                    ))
                    .label(self.exact(&path), "control character")
                    .help("write the value on one line, without control characters"),
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::validate::tests::{check, GROUPS_COLOCATED};

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
    fn control_characters_in_values_and_unsafe_data_dirs_are_refused() {
        let text = format!(
            "cluster: {{name: c}}\npostgres:\n  data_dir: /var/lib\n  parameters:\n    work_mem: \"4MB\\nshared_buffers = 1GB\"\n{GROUPS_COLOCATED}"
        );
        let (errors, _) = check(&text);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors
                .iter()
                .any(|e| e.contains("`work_mem` contains a control character (a newline)")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("/var/lib is a system directory")),
            "{errors:?}"
        );
        for bad in [
            "/",
            "/var",
            "/var/lib/",
            "/usr/../x",
            "/run/pg",
            "/tmp/pg",
            "/var/lib/postgresql",
        ] {
            assert!(unsafe_data_dir(bad).is_some(), "{bad}");
        }
        for ok in [
            "/var/lib/postgresql/17/main",
            "/srv/postgresql/main",
            "/data/pg",
            "/var/lib/pg",
        ] {
            assert_eq!(unsafe_data_dir(ok), None, "{ok}");
        }
        assert!(unsafe_data_dir("/").unwrap().contains("root directory"));
        assert!(unsafe_data_dir("/var")
            .unwrap()
            .contains("system directory"));
        assert!(unsafe_data_dir("/srv").is_some());
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
    fn names_and_sizes() {
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
