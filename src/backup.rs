//! Backups on demand and what the repository holds: `pgdeploy backup` and `pgdeploy backup
//! list`. Both run on the repository host (`groups.backup`) over SSH and change nothing on the
//! cluster. A backup on demand runs the same systemd unit as the timers, so two backups never
//! run at once and the host's journal has every run.

use crate::clock::utc_rfc3339_secs;
use crate::inventory::Inventory;
use crate::phases::backup::pgbackrest;
use crate::ssh::{ConnectOptions, Session};
use miette::{miette, Result};
use serde::Serialize;
use serde_json::Value;

/// The restore drill's scratch directory on the repository host, its result file, and the
/// port of its private PostgreSQL (on its own socket directory only).
pub const DRILL_DIR: &str = "/var/lib/pgdeploy/drill";
pub const DRILL_RESULT: &str = "/var/lib/pgdeploy/drill-result.json";
pub const DRILL_PORT: u16 = 5499;
/// The drill script (role data: templates/pgbackrest/drill.sh.j2).
pub const DRILL_SCRIPT: &str = "/usr/local/lib/pgdeploy/drill";

/// What the last restore drill found.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, Serialize)]
pub struct Drill {
    pub ok: bool,
    /// When it started (seconds since the epoch) and how long it took.
    pub at: i64,
    pub seconds: i64,
    pub message: String,
    /// The newest transaction the restored copy replayed.
    pub last_transaction: String,
    pub databases: Vec<DrillDatabase>,
    pub amcheck: String,
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize, Serialize)]
pub struct DrillDatabase {
    pub name: String,
    pub bytes: u64,
}

/// Pure: a drill's result line (the script's JSON).
pub fn parse_drill(out: &str) -> Option<Drill> {
    out.lines()
        .rev()
        .find_map(|l| serde_json::from_str(l.trim()).ok())
}

/// Run a restore drill on the repository host now (to `to`, seconds since the epoch, or the
/// end of the archive) and wait for it.
pub async fn drill(inv: &Inventory, to: Option<i64>, opts: &ConnectOptions) -> Result<Drill> {
    let (name, s) = connect_repo(inv, opts).await?;
    let args = match to {
        Some(t) => format!(
            " --type=time {}",
            crate::shell::sh_quote(&format!("--target={}", crate::phases::restore::pg_time(t)))
        ),
        None => String::new(),
    };
    // The leader's current WAL first, so that the drill reaches the latest writes (when a
    // leader runs; the drill goes on without).
    let check = pgbackrest(&inv.cluster.name, "check");
    let out = async {
        s.exec(
            &format!("{check} >/dev/null 2>&1; {DRILL_SCRIPT}{args}"),
            None,
        )
        .await
    }
    .await;
    s.close().await;
    let out = out?;
    match parse_drill(&out.stdout_str()) {
        Some(d) => Ok(d),
        None => Err(miette!(
            help = "run `pgdeploy apply` if the drill script is missing",
            "the restore drill on {name} gave no result (exit {}): {}",
            out.status,
            out.stderr_str().trim()
        )),
    }
}

/// A drill's result as text.
pub fn drill_text(d: &Drill) -> String {
    let mut t = format!(
        "restore drill {} at {} ({} s): {}\n",
        if d.ok { "passed" } else { "FAILED" },
        utc_rfc3339_secs(d.at),
        d.seconds,
        d.message
    );
    if !d.last_transaction.is_empty() {
        t.push_str(&format!(
            "  last transaction reached: {}\n",
            d.last_transaction
        ));
    }
    for db in &d.databases {
        t.push_str(&format!("  database {:<20} {}\n", db.name, mb(db.bytes)));
    }
    if !d.amcheck.is_empty() {
        t.push_str(&format!("  pg_amcheck: {}\n", d.amcheck));
    }
    t
}

/// A backup type, as pgBackRest names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Full,
    Diff,
    Incr,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Diff => "diff",
            Kind::Incr => "incr",
        }
    }
    /// The systemd unit on the repository host that takes one backup of this type.
    pub fn unit(self) -> String {
        format!("pgdeploy-backup-{}.service", self.as_str())
    }
}

/// One backup set in the repository.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackupSet {
    pub label: String,
    pub kind: String,
    /// Start and end of the backup (seconds since the epoch, UTC).
    pub start: i64,
    pub stop: i64,
    /// Size of the database, and what this set added to the repository (bytes, compressed).
    pub database_bytes: u64,
    pub repo_bytes: u64,
    /// The WAL it needs to be consistent.
    pub wal_start: String,
    pub wal_stop: String,
    /// The set it depends on (diff and incr).
    pub prior: Option<String>,
    /// The times it can restore to: from its end to the newest archived WAL.
    pub restore_from: i64,
    pub restore_to: Option<i64>,
}

/// What the repository holds for the cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Repository {
    pub host: String,
    pub stanza: String,
    /// pgBackRest's status of the stanza ("ok", "no valid backups", ...).
    pub status: String,
    pub backups: Vec<BackupSet>,
    /// Oldest and newest WAL segment in the archive.
    pub wal_min: Option<String>,
    pub wal_max: Option<String>,
    /// When the newest WAL segment reached the archive (seconds since the epoch).
    pub newest_wal_at: Option<i64>,
}

impl Repository {
    /// The earliest and latest time a point-in-time restore can reach.
    pub fn restorable(&self) -> Option<(i64, i64)> {
        let from = self.backups.iter().map(|b| b.restore_from).min()?;
        let to = self.newest_wal_at?.max(from);
        Some((from, to))
    }
}

/// Printed before the newest archived segment's time, to find it in the output.
const NEWEST_MARK: &str = "@@PGDEPLOY-NEWEST-WAL";

/// One command: the stanza's info as JSON, then the time the newest WAL segment was archived.
fn info_command(inv: &Inventory) -> String {
    let stanza = &inv.cluster.name;
    format!(
        "{}; echo; echo {NEWEST_MARK}; find {}/archive/{} -type f -name '0000*' -printf '%T@\\n' 2>/dev/null | sort -n | tail -1",
        pgbackrest(stanza, "--log-level-file=off --output=json info"),
        crate::shell::sh_quote(&inv.backup.repo_path),
        crate::shell::sh_quote(stanza),
    )
}

/// Pure: the repository from [`info_command`]'s output.
pub fn parse_info(out: &str, host: &str, stanza: &str) -> Result<Repository> {
    let (json, newest) = out.split_once(NEWEST_MARK).unwrap_or((out, ""));
    let v: Value = serde_json::from_str(json.trim()).map_err(|e| {
        miette!(
            "pgBackRest on {host} did not answer its info ({e}): {}",
            json.trim()
        )
    })?;
    let s = v
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == stanza))
        .ok_or_else(|| {
            miette!(
                help = "run `pgdeploy apply`: it creates the stanza",
                "the repository on {host} has no stanza {stanza}"
            )
        })?;
    let newest_wal_at = newest
        .trim()
        .split('.')
        .next()
        .and_then(|t| t.parse::<i64>().ok());
    let str_at = |v: &Value| v.as_str().map(str::to_string);
    let archive = s["archive"].as_array().and_then(|a| a.last()).cloned();
    let mut backups: Vec<BackupSet> = s["backup"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|b| b["error"] != true)
        .map(|b| BackupSet {
            label: b["label"].as_str().unwrap_or_default().to_string(),
            kind: b["type"].as_str().unwrap_or_default().to_string(),
            start: b["timestamp"]["start"].as_i64().unwrap_or_default(),
            stop: b["timestamp"]["stop"].as_i64().unwrap_or_default(),
            database_bytes: b["info"]["size"].as_u64().unwrap_or_default(),
            repo_bytes: b["info"]["repository"]["delta"]
                .as_u64()
                .unwrap_or_default(),
            wal_start: b["archive"]["start"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            wal_stop: b["archive"]["stop"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            prior: str_at(&b["prior"]),
            restore_from: b["timestamp"]["stop"].as_i64().unwrap_or_default(),
            restore_to: None,
        })
        .collect();
    backups.sort_by_key(|b| b.stop);
    for b in &mut backups {
        b.restore_to = newest_wal_at.map(|t| t.max(b.restore_from));
    }
    Ok(Repository {
        host: host.to_string(),
        stanza: stanza.to_string(),
        status: s["status"]["message"]
            .as_str()
            .unwrap_or("unknown")
            .to_string(),
        backups,
        wal_min: archive.as_ref().and_then(|a| str_at(&a["min"])),
        wal_max: archive.as_ref().and_then(|a| str_at(&a["max"])),
        newest_wal_at,
    })
}

/// The repository host, connected.
async fn connect_repo(inv: &Inventory, opts: &ConnectOptions) -> Result<(String, Session)> {
    let Some(h) = inv
        .hosts_to_connect()
        .into_iter()
        .find(|h| h.in_group(crate::inventory::Group::Backup))
    else {
        return Err(miette!(
            help = "name the pgBackRest repository host under `groups.backup` and run `pgdeploy apply`",
            "{} has no backup host",
            inv.path.display()
        ));
    };
    let s = Session::connect(&h, opts).await.map_err(|e| {
        miette!(
            help = "nothing was changed; check that the host is up and reachable over SSH",
            "the repository host {} cannot be reached: {e}",
            h.name
        )
    })?;
    Ok((h.name, s))
}

/// What the repository on `name` holds, through its session `s`.
pub async fn read(inv: &Inventory, name: &str, s: &Session) -> Result<Repository> {
    let out = s.exec(&info_command(inv), None).await?;
    parse_info(&out.stdout_str(), name, &inv.cluster.name)
}

/// What the repository holds.
pub async fn list(inv: &Inventory, opts: &ConnectOptions) -> Result<Repository> {
    let (name, s) = connect_repo(inv, opts).await?;
    let r = read(inv, &name, &s).await;
    s.close().await;
    r
}

/// Take one backup of type `kind` now and wait for it; the new set.
pub async fn take(inv: &Inventory, kind: Kind, opts: &ConnectOptions) -> Result<BackupSet> {
    let (name, s) = connect_repo(inv, opts).await?;
    let r = async {
        let before = read(inv, &name, &s).await?;
        let unit = kind.unit();
        let out = s
            .exec(&format!("systemctl start {unit}"), None)
            .await?;
        if !out.ok() {
            let log = s
                .exec(
                    &format!("journalctl -u {unit} -n 40 --no-pager -o cat | grep -E 'ERROR|WARN' | tail -5"),
                    None,
                )
                .await
                .map(|o| o.stdout_str())
                .unwrap_or_default();
            return Err(miette!(
                help = format!("the cluster was not changed; `journalctl -u {unit}` on {name} has the whole run"),
                "the {} backup on {name} failed: {}",
                kind.as_str(),
                if log.trim().is_empty() { out.stderr_str() } else { log }.trim()
            ));
        }
        let after = read(inv, &name, &s).await?;
        after
            .backups
            .iter()
            .rev()
            .find(|b| !before.backups.iter().any(|o| o.label == b.label))
            .cloned()
            .ok_or_else(|| miette!("the backup on {name} ended, but the repository shows no new backup set"))
    }
    .await;
    s.close().await;
    r
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_000_000.0)
}

/// One line for a backup set.
pub fn set_line(b: &BackupSet) -> String {
    format!(
        "{:<34} {:<4} {} .. {}  {:>9} (repo +{})  WAL {}..{}",
        b.label,
        b.kind,
        utc_rfc3339_secs(b.start),
        utc_rfc3339_secs(b.stop),
        mb(b.database_bytes),
        mb(b.repo_bytes),
        b.wal_start,
        b.wal_stop,
    )
}

/// `backup list` as text.
pub fn list_text(r: &Repository) -> String {
    let mut t = format!(
        "repository {} on {} ({}); archive {}..{}\n",
        r.stanza,
        r.host,
        r.status,
        r.wal_min.as_deref().unwrap_or("(empty)"),
        r.wal_max.as_deref().unwrap_or("(empty)")
    );
    if r.backups.is_empty() {
        t.push_str("no backup yet: `pgdeploy backup` takes one\n");
        return t;
    }
    for b in &r.backups {
        t.push_str(&format!("  {}\n", set_line(b)));
    }
    if let Some((from, to)) = r.restorable() {
        t.push_str(&format!(
            "restorable to any time from {} to {}\n",
            utc_rfc3339_secs(from),
            utc_rfc3339_secs(to)
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = r#"[{"archive":[{"id":"17-1","max":"00000002000000000000000C","min":"000000010000000000000001"}],
 "backup":[
  {"archive":{"start":"00000001000000000000000A","stop":"00000001000000000000000A"},"error":false,
   "info":{"size":900,"repository":{"delta":100,"size":100}},"label":"20261204-191800F_20261204-192000I",
   "prior":"20261204-191800F","timestamp":{"start":1796412000,"stop":1796412003},"type":"incr"},
  {"archive":{"start":"000000010000000000000009","stop":"000000010000000000000009"},"error":false,
   "info":{"size":31253413,"repository":{"delta":6033734,"size":6033734}},"label":"20261204-191800F",
   "prior":null,"timestamp":{"start":1796411880,"stop":1796411890},"type":"full"}],
 "name":"lab","status":{"code":0,"message":"ok"}}]
@@PGDEPLOY-NEWEST-WAL
1796412100.1356052760
"#;

    #[test]
    fn reads_sets_and_the_restorable_range() {
        let r = parse_info(INFO, "backup1", "lab").unwrap();
        let labels: Vec<&str> = r.backups.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(
            labels,
            ["20261204-191800F", "20261204-191800F_20261204-192000I"]
        );
        assert_eq!(r.backups[0].kind, "full");
        assert_eq!(r.backups[0].repo_bytes, 6033734);
        assert_eq!(r.backups[1].prior.as_deref(), Some("20261204-191800F"));
        assert_eq!(r.backups[1].restore_to, Some(1796412100));
        assert_eq!(r.wal_max.as_deref(), Some("00000002000000000000000C"));
        assert_eq!(r.restorable(), Some((1796411890, 1796412100)));
        let t = list_text(&r);
        assert!(
            t.contains("restorable to any time from 2026-12-04T19:18:10Z"),
            "{t}"
        );
    }

    #[test]
    fn an_empty_repository_says_how_to_take_a_backup() {
        let out = r#"[{"archive":[],"backup":[],"name":"lab","status":{"code":2,"message":"no valid backups"}}]"#;
        let r = parse_info(out, "backup1", "lab").unwrap();
        assert!(r.backups.is_empty() && r.restorable().is_none());
        assert!(list_text(&r).contains("no backup yet"));
        let e = parse_info("[]", "backup1", "lab").unwrap_err();
        assert!(e.to_string().contains("no stanza lab"), "{e}");
    }
}
