//! The inventory: one YAML file that describes a whole cluster.
//!
//! These types are the contract shared by every module. Loading, defaults and
//! validation live in `load.rs` and `validate.rs`.

pub use crate::platform::Platform;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The whole inventory file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    pub cluster: Cluster,
    /// The Debian release of every host (`debian-13` unless written).
    #[serde(default)]
    pub platform: Platform,
    #[serde(default)]
    pub postgres: Postgres,
    #[serde(default)]
    pub patroni: Patroni,
    #[serde(default)]
    pub etcd: Etcd,
    #[serde(default)]
    pub haproxy: Haproxy,
    #[serde(default)]
    pub packages: Packages,
    #[serde(default)]
    pub dns: Option<Dns>,
    /// Backups with pgBackRest (used when `groups.backup` names the repository host).
    #[serde(default)]
    pub backup: Backup,
    #[serde(default)]
    pub ssh: Ssh,
    pub groups: Groups,
    /// The applications' PostgreSQL roles, created and kept as declared on the leader.
    #[serde(default)]
    pub users: Vec<UserSpec>,
    /// The applications' databases.
    #[serde(default)]
    pub databases: Vec<DatabaseSpec>,
    /// Directory that holds the inventory file (filled in by the loader; relative paths resolve here).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// Path of the inventory file (filled in by the loader).
    #[serde(skip)]
    pub path: PathBuf,
    /// Whether `platform` was written in the file (filled in by the loader; messages say how
    /// the release was chosen).
    #[serde(skip)]
    pub platform_written: bool,
}

/// pgBackRest: the repository on the `backup` host, WAL archiving from whichever member leads,
/// scheduled backups (systemd calendar expressions) and retention.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Backup {
    /// Repository directory on the backup host.
    pub repo_path: String,
    /// Full backups kept (older ones expire, with the WAL only they need).
    pub retention_full: u32,
    /// Differential backups kept.
    pub retention_diff: u32,
    /// When the timers run each backup type (none: not scheduled).
    pub full_schedule: Option<String>,
    pub diff_schedule: Option<String>,
    pub incr_schedule: Option<String>,
    /// When the restore drill runs (it restores the latest backup on the repository host and
    /// checks it; none: only on demand, `pgdeploy backup verify`).
    pub drill_schedule: Option<String>,
    /// Take backups from a replica (the leader only sends the WAL and a few files).
    pub from_replica: bool,
    /// PostgreSQL's archive_timeout in seconds: the longest a WAL segment waits before it is
    /// archived, so the most writes lost if every database host is lost at once.
    pub archive_timeout: u32,
    /// WAL kept waiting on a member while the repository cannot take it; beyond this it is
    /// dropped (writes go on, and the archive has a gap until the next backup).
    pub archive_queue_max: String,
    /// Port of pgBackRest's TLS server on the repository and database hosts.
    pub tls_port: u16,
}

impl Default for Backup {
    fn default() -> Self {
        Backup {
            repo_path: "/var/lib/pgbackrest".into(),
            retention_full: 2,
            retention_diff: 7,
            full_schedule: Some("Sun *-*-* 01:00:00".into()),
            diff_schedule: Some("Mon..Sat *-*-* 01:00:00".into()),
            incr_schedule: None,
            drill_schedule: Some("Sun *-*-* 05:00:00".into()),
            from_replica: true,
            archive_timeout: 60,
            archive_queue_max: "4GiB".into(),
            tls_port: 8432,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Cluster name; also Patroni's `scope` and etcd's cluster token.
    pub name: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Postgres {
    /// "MAJOR.MINOR", e.g. "17.12". Resolved to the Debian version by the packages phase.
    /// Defaults to the release's own PostgreSQL (filled in by the loader).
    pub version: String,
    pub port: u16,
    /// PostgreSQL parameters (postgresql.conf), applied through Patroni.
    pub parameters: BTreeMap<String, ParamValue>,
    /// Patroni synchronous_mode.
    pub synchronous_mode: bool,
    pub data_dir: Option<String>,
}

impl Default for Postgres {
    fn default() -> Self {
        Postgres {
            version: Platform::default().default_postgres().into(),
            port: 5432,
            parameters: BTreeMap::new(),
            synchronous_mode: false,
            data_dir: None,
        }
    }
}

impl Postgres {
    /// The major of `version`: "15.18" -> "15".
    pub fn major(&self) -> &str {
        self.version
            .split(['.', '-'])
            .next()
            .unwrap_or(&self.version)
    }

    /// The data directory: `data_dir`, or Debian's `/var/lib/postgresql/MAJOR/main`.
    pub fn data_directory(&self) -> String {
        self.data_dir
            .clone()
            .unwrap_or_else(|| format!("/var/lib/postgresql/{}/main", self.major()))
    }
}

/// A scalar parameter value as written in YAML.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ParamValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl std::fmt::Display for ParamValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamValue::Bool(b) => write!(f, "{}", if *b { "on" } else { "off" }),
            ParamValue::Int(i) => write!(f, "{i}"),
            ParamValue::Float(x) => write!(f, "{x}"),
            ParamValue::Str(s) => write!(f, "{s}"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Patroni {
    pub restapi_port: u16,
    /// Leader key TTL in seconds (failover detection). Patroni's default is 30; pgdeploy's
    /// depends on the release (filled in by the loader, see `Platform::default_patroni_timings`).
    pub ttl: u32,
    pub loop_wait: u32,
    pub retry_timeout: u32,
    pub maximum_lag_on_failover: u64,
    /// Patroni's failsafe mode: with the DCS unreachable (etcd lost its quorum or is down), the
    /// leader stays primary as long as every other member answers its REST call; without it,
    /// the leader demotes and every write fails until etcd is back.
    pub failsafe_mode: bool,
}

impl Default for Patroni {
    fn default() -> Self {
        let t = Platform::default().default_patroni_timings();
        Patroni {
            restapi_port: 8008,
            ttl: t.ttl,
            loop_wait: t.loop_wait,
            retry_timeout: t.retry_timeout,
            maximum_lag_on_failover: 1_048_576,
            failsafe_mode: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Etcd {
    pub client_port: u16,
    pub peer_port: u16,
}

impl Default for Etcd {
    fn default() -> Self {
        Etcd {
            client_port: 2379,
            peer_port: 2380,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Haproxy {
    pub primary_port: u16,
    pub replica_port: u16,
    pub stats_port: u16,
}

impl Default for Haproxy {
    fn default() -> Self {
        Haproxy {
            primary_port: 5000,
            replica_port: 5001,
            stats_port: 7000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PackageSource {
    /// Hosts install from their own configured apt repositories.
    Apt,
    /// Air-gapped: a local repository built by `pgdeploy bundle` is pushed to the hosts.
    #[default]
    Bundle,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Packages {
    pub source: PackageSource,
    /// Where `pgdeploy bundle` writes the local repository (relative to the inventory).
    pub bundle_dir: String,
    /// Optional deb822 or one-line apt sources to resolve the bundle from; empty means the
    /// control machine's configured Debian sources.
    pub debian_sources: Vec<String>,
}

impl Default for Packages {
    fn default() -> Self {
        Packages {
            source: PackageSource::Bundle,
            bundle_dir: "bundle".into(),
            debian_sources: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// `rfc2136` or `dyndns2`.
    #[serde(default = "default_dns_provider")]
    pub provider: String,
    /// Fully qualified name that gets the HAProxy A/AAAA records, e.g. "pg.db.example.com.".
    pub name: String,
    /// Zone the name lives in, e.g. "db.example.com.".
    pub zone: String,
    /// DNS server "ADDRESS:PORT" (port defaults to 53).
    pub server: String,
    #[serde(default = "default_dns_ttl")]
    pub ttl: u32,
    #[serde(default)]
    pub tsig: Option<Tsig>,
}

/// Whether a declared role or database should exist. A role or database that is only left out
/// of the inventory is kept (and `check` says so); dropping needs `state: absent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    #[default]
    Present,
    Absent,
}

/// An application role (`users:`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub name: String,
    /// May log in (a role without login groups privileges, e.g. a read-only role).
    #[serde(default = "yes")]
    pub login: bool,
    /// File that holds the password (one line; mode 0600 or stricter); relative to the
    /// inventory. The password is stored as a SCRAM-SHA-256 verifier, never in clear.
    #[serde(default)]
    pub password_file: Option<String>,
    /// Environment variable that holds the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Roles whose privileges it has (`GRANT <role> TO <name>`).
    #[serde(default)]
    pub member_of: Vec<String>,
    /// Concurrent connections it may hold (-1: no limit).
    #[serde(default = "no_limit")]
    pub connection_limit: i32,
    #[serde(default)]
    pub createdb: bool,
    #[serde(default)]
    pub createrole: bool,
    #[serde(default)]
    pub state: Presence,
}

/// An application database (`databases:`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSpec {
    pub name: String,
    /// Owns the database and its `public` schema (a declared role).
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default = "default_encoding")]
    pub encoding: String,
    #[serde(default = "default_locale")]
    pub locale: String,
    /// Extensions from what the release ships (contrib), created in the database.
    #[serde(default)]
    pub extensions: Vec<String>,
    /// Roles that may connect and read every table of its `public` schema, also the tables
    /// the owner creates later.
    #[serde(default)]
    pub readers: Vec<String>,
    #[serde(default)]
    pub state: Presence,
    /// With `state: absent`: drop it even though it holds tables (the second confirmation).
    #[serde(default)]
    pub drop_data: bool,
}

fn yes() -> bool {
    true
}
fn no_limit() -> i32 {
    -1
}
fn default_encoding() -> String {
    "UTF8".into()
}
fn default_locale() -> String {
    "C.UTF-8".into()
}

fn default_dns_provider() -> String {
    "rfc2136".into()
}
fn default_dns_ttl() -> u32 {
    30
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tsig {
    pub key_name: String,
    #[serde(default = "default_tsig_alg")]
    pub algorithm: String,
    /// File holding the base64 secret (or a BIND key file); relative to the inventory.
    #[serde(default)]
    pub secret_file: Option<String>,
    /// Environment variable holding the base64 secret.
    #[serde(default)]
    pub secret_env: Option<String>,
}

fn default_tsig_alg() -> String {
    "hmac-sha256".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Become {
    /// Commands run as the SSH user (it must be root).
    #[default]
    None,
    /// Commands run through `sudo`.
    Sudo,
}

/// SSH settings; every field may be overridden per host.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ssh {
    pub user: String,
    pub port: u16,
    /// Private key file; `None` means ssh-agent, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa.
    pub private_key: Option<String>,
    /// Environment variable that holds the passphrase of an encrypted key.
    pub passphrase_env: Option<String>,
    /// known_hosts file; default ~/.ssh/known_hosts.
    pub known_hosts: Option<String>,
    #[serde(rename = "become")]
    pub become_: Become,
    /// Environment variable with the sudo password (otherwise prompted once when needed).
    pub sudo_password_env: Option<String>,
    /// Jump host, "[user@]host[:port]".
    pub jump_host: Option<String>,
    pub connect_timeout: u64,
    /// Seconds a connection is kept after a command's last use of it, for the next command
    /// (like OpenSSH's ControlPersist); 0: every command connects anew.
    pub persist: u64,
}

impl Default for Ssh {
    fn default() -> Self {
        Ssh {
            user: "root".into(),
            port: 22,
            private_key: None,
            passphrase_env: None,
            known_hosts: None,
            become_: Become::None,
            sudo_password_env: None,
            jump_host: None,
            connect_timeout: 10,
            persist: 60,
        }
    }
}

/// Per-host SSH overrides (any field left out comes from the inventory's `ssh`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SshOverride {
    pub user: Option<String>,
    pub port: Option<u16>,
    pub private_key: Option<String>,
    #[serde(rename = "become")]
    pub become_: Option<Become>,
    pub jump_host: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    pub name: String,
    pub address: String,
    /// Optional IPv6 address (published as AAAA by the DNS phase for HAProxy hosts).
    #[serde(default)]
    pub address6: Option<String>,
    #[serde(default)]
    pub ssh: Option<SshOverride>,
    /// PostgreSQL parameters for this host only (Patroni hosts).
    #[serde(default)]
    pub postgres_parameters: BTreeMap<String, ParamValue>,
    /// Free-form variables for templates.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Groups {
    #[serde(default)]
    pub etcd: Vec<HostEntry>,
    #[serde(default)]
    pub patroni: Vec<HostEntry>,
    #[serde(default)]
    pub haproxy: Vec<HostEntry>,
    /// The pgBackRest repository host (at most one; none: no backups).
    #[serde(default)]
    pub backup: Vec<HostEntry>,
}

/// A role a host plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    Etcd,
    Patroni,
    Haproxy,
    Backup,
}

impl Group {
    pub const ALL: [Group; 4] = [Group::Etcd, Group::Patroni, Group::Haproxy, Group::Backup];
    pub fn as_str(&self) -> &'static str {
        match self {
            Group::Etcd => "etcd",
            Group::Patroni => "patroni",
            Group::Haproxy => "haproxy",
            Group::Backup => "backup",
        }
    }
}

/// One machine after merging its group entries (a host may be in several groups).
#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub name: String,
    pub address: String,
    pub address6: Option<String>,
    pub groups: Vec<Group>,
    /// Effective SSH settings (inventory `ssh` merged with the host's overrides).
    pub ssh: Ssh,
    pub postgres_parameters: BTreeMap<String, ParamValue>,
    pub vars: BTreeMap<String, String>,
}

impl Host {
    pub fn in_group(&self, g: Group) -> bool {
        self.groups.contains(&g)
    }
}

impl Groups {
    pub fn get(&self, g: Group) -> &[HostEntry] {
        match g {
            Group::Etcd => &self.etcd,
            Group::Patroni => &self.patroni,
            Group::Haproxy => &self.haproxy,
            Group::Backup => &self.backup,
        }
    }
}

impl Inventory {
    /// Every distinct host, in first-appearance order (etcd, patroni, haproxy), merged across
    /// groups: groups, parameters and vars accumulate; `address6` comes from the first entry that
    /// has one; `ssh` overrides come from the host's first entry (the validator rejects
    /// different ones on later entries).
    pub fn hosts(&self) -> Vec<Host> {
        let mut out: Vec<Host> = Vec::new();
        for g in Group::ALL {
            for e in self.groups.get(g) {
                if let Some(h) = out.iter_mut().find(|h| h.name == e.name) {
                    if !h.groups.contains(&g) {
                        h.groups.push(g);
                    }
                    // address6 may be written on any of the host's entries (typically the
                    // haproxy one, where it becomes an AAAA record).
                    if h.address6.is_none() {
                        h.address6 = e.address6.clone();
                    }
                    for (k, v) in &e.postgres_parameters {
                        h.postgres_parameters.insert(k.clone(), v.clone());
                    }
                    for (k, v) in &e.vars {
                        h.vars.insert(k.clone(), v.clone());
                    }
                    continue;
                }
                let mut ssh = self.ssh.clone();
                if let Some(o) = &e.ssh {
                    if let Some(u) = &o.user {
                        ssh.user = u.clone();
                    }
                    if let Some(p) = o.port {
                        ssh.port = p;
                    }
                    if let Some(k) = &o.private_key {
                        ssh.private_key = Some(k.clone());
                    }
                    if let Some(b) = o.become_ {
                        ssh.become_ = b;
                    }
                    if let Some(j) = &o.jump_host {
                        ssh.jump_host = Some(j.clone());
                    }
                }
                out.push(Host {
                    name: e.name.clone(),
                    address: e.address.clone(),
                    address6: e.address6.clone(),
                    groups: vec![g],
                    ssh,
                    postgres_parameters: e.postgres_parameters.clone(),
                    vars: e.vars.clone(),
                });
            }
        }
        out
    }

    /// [`Inventory::hosts`] with their SSH key and known_hosts paths resolved against the
    /// inventory's directory, ready to connect.
    pub fn hosts_to_connect(&self) -> Vec<Host> {
        let mut hosts = self.hosts();
        for h in &mut hosts {
            if let Some(k) = &h.ssh.private_key {
                h.ssh.private_key = Some(self.resolve_path(k).to_string_lossy().into_owned());
            }
            if let Some(k) = &h.ssh.known_hosts {
                h.ssh.known_hosts = Some(self.resolve_path(k).to_string_lossy().into_owned());
            }
        }
        hosts
    }

    /// A host that is no longer in the inventory but still in the cluster (found in etcd's or
    /// Patroni's membership): reached at `address` with the inventory's `ssh` settings.
    pub fn former_host(&self, name: &str, address: &str) -> Host {
        let mut ssh = self.ssh.clone();
        if let Some(k) = &ssh.private_key {
            ssh.private_key = Some(self.resolve_path(k).to_string_lossy().into_owned());
        }
        if let Some(k) = &ssh.known_hosts {
            ssh.known_hosts = Some(self.resolve_path(k).to_string_lossy().into_owned());
        }
        Host {
            name: name.to_string(),
            address: address.to_string(),
            address6: None,
            groups: Vec::new(),
            ssh,
            postgres_parameters: BTreeMap::new(),
            vars: BTreeMap::new(),
        }
    }

    /// Hosts of one group, in inventory order.
    pub fn group_hosts(&self, g: Group) -> Vec<Host> {
        self.hosts().into_iter().filter(|h| h.in_group(g)).collect()
    }

    /// The pgBackRest repository host, when backups are configured.
    pub fn backup_host(&self) -> Option<Host> {
        self.group_hosts(Group::Backup).into_iter().next()
    }

    /// Whether `host` runs pgBackRest: the repository host, and the database hosts when there
    /// is one.
    pub fn backs_up(&self, host: &Host) -> bool {
        host.in_group(Group::Backup)
            || (host.in_group(Group::Patroni) && self.backup_host().is_some())
    }

    /// Resolve a path from the inventory relative to the inventory's directory (and `~/`).
    pub fn resolve_path(&self, p: &str) -> PathBuf {
        if let Some(rest) = p.strip_prefix("~/") {
            if let Some(home) = std::env::var_os("HOME") {
                return PathBuf::from(home).join(rest);
            }
        }
        let pb = PathBuf::from(p);
        if pb.is_absolute() {
            pb
        } else {
            self.base_dir.join(pb)
        }
    }

    /// Directory where pgdeploy keeps this cluster's generated state (CA, secrets): next to
    /// the inventory, `.pgdeploy/<cluster>/`.
    pub fn state_dir(&self) -> PathBuf {
        self.base_dir.join(".pgdeploy").join(&self.cluster.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_major() {
        let pg = |v: &str| Postgres {
            version: v.into(),
            ..Postgres::default()
        };
        assert_eq!(pg("15.18").major(), "15");
        assert_eq!(pg("17.12").major(), "17");
        assert_eq!(pg("15.20-0+deb12u1").major(), "15");
    }
}
