//! End-to-end scenarios of backups with pgBackRest, run by the production end-to-end test on
//! its cluster (the repository is the lab's backup1). Facts come from pgBackRest and
//! PostgreSQL themselves: the repository's `info` on backup1, `pg_stat_archiver` on the leader.

use crate::e2e::*;
use std::time::{Duration, Instant};

/// The repository's `info`, as pgBackRest itself reports it on backup1.
fn repo_info(lab: &LabGuard) -> serde_json::Value {
    let out = lab.ssh(
        "backup1",
        "runuser -u postgres -- pgbackrest --stanza=lab --output=json --log-level-file=off info",
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("pgbackrest info JSON");
    v[0].clone()
}

fn backup_labels(lab: &LabGuard) -> Vec<String> {
    repo_info(lab)["backup"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|b| b["label"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The leader's `pg_stat_archiver`: (archived_count, seconds since the last archived segment).
fn archiver(lab: &LabGuard, leader: &str) -> (u64, Option<f64>) {
    let out = lab.ssh(
        leader,
        "runuser -u postgres -- psql -AtXc \"select archived_count, coalesce(extract(epoch from now() - last_archived_time)::text, '') from pg_stat_archiver\"",
    );
    let mut f = out.trim().split('|');
    let n = f.next().and_then(|x| x.parse().ok()).unwrap_or(0);
    let age = f.next().and_then(|x| x.parse().ok());
    (n, age)
}

/// A fresh cluster: apply created the stanza and archiving works (`pgbackrest check` passed
/// in apply); a full backup taken through pgdeploy while a writer writes, the writer never
/// failing; `backup list` shows it; the age of the newest archived WAL (the RPO if every
/// database host were lost) stays within archive_timeout while the writer runs.
pub fn backup_scenario(lab: &LabGuard, inv: &std::path::Path, pw: &str) {
    let inv_s = inv.to_str().unwrap();
    let info = repo_info(lab);
    assert_eq!(
        info["status"]["code"], 2,
        "a new stanza, no backup yet: {info}"
    );
    let out = pgdeploy(&["backup", "list", inv_s]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("no backup yet"), "{}", out.stdout);

    let writer = Writer::start("10.231.0.31", pw, "backup_full");
    let t = Instant::now();
    let out = pgdeploy(&["backup", inv_s, "--type", "full"]);
    figure(
        "full backup of the lab database (s)",
        t.elapsed().as_secs_f64(),
    );
    assert_eq!(out.code, 0, "backup --type full:\n{}", out.all());
    // The RPO while the writer runs: sampled on the leader for a little over archive_timeout.
    let leader = wait_leader(lab);
    let mut worst: f64 = 0.0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(75) {
        if let (_, Some(age)) = archiver(lab, &leader) {
            worst = worst.max(age);
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    let w = writer.stop();
    figure(
        "RPO with the writer running: oldest newest-archived-WAL age seen (s)",
        worst,
    );
    assert!(
        worst <= 70.0,
        "archiving lags {worst} s behind with archive_timeout 60"
    );
    assert_eq!(w.errors, 0, "writes failed during the backup");
    let labels = backup_labels(lab);
    assert_eq!(labels.len(), 1, "{labels:?}");
    assert!(labels[0].ends_with('F'), "{labels:?}");
    let json = pgdeploy(&["backup", "list", inv_s, "--format", "json"]);
    assert_eq!(json.code, 0, "{}", json.all());
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("backup list JSON");
    assert_eq!(v["backups"][0]["label"], labels[0].as_str(), "{v}");
    assert_eq!(v["backups"][0]["kind"], "full", "{v}");
    assert!(v["backups"][0]["restore_to"].as_i64() >= v["backups"][0]["restore_from"].as_i64());
    // The backup was taken from a replica: the leader only started and stopped it.
    let log = lab.ssh(
        "backup1",
        "grep -h 'replay on the standby' /var/log/pgbackrest/lab-backup.log | tail -1",
    );
    assert!(log.contains("reached"), "backup not from a standby: {log}");
    let st = pgdeploy(&["status", inv_s, "--format", "json"]);
    let s: serde_json::Value = serde_json::from_str(&st.stdout).expect("status json");
    assert!(s["archive"]["archived_count"].as_u64() > Some(0), "{s}");
}

/// After failovers: the new leader archives, and an incremental backup on top of the full one
/// works. Then the repository host is powered off: writes keep working, `status` shows the
/// archive failing, `backup` fails with a clear error; when it is back, archiving catches up
/// by itself.
pub fn backup_after_failover_scenario(lab: &LabGuard, inv: &std::path::Path, pw: &str) {
    let inv_s = inv.to_str().unwrap();
    let leader = wait_leader(lab);
    let (before, _) = archiver(lab, &leader);
    let _ = psql("10.231.0.31", 5000, pw, "select pg_switch_wal()");
    let out = pgdeploy(&["backup", inv_s, "--type", "incr"]);
    assert_eq!(
        out.code,
        0,
        "incremental backup after the failovers:\n{}",
        out.all()
    );
    let (after, _) = archiver(lab, &leader);
    assert!(
        after > before,
        "the new leader {leader} archived nothing ({before} -> {after})"
    );
    let info = repo_info(lab);
    let last = info["backup"]
        .as_array()
        .and_then(|a| a.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(last["type"], "incr", "{info}");
    assert!(last["prior"].as_str().is_some(), "{info}");

    // The repository host loses power.
    lab.kill("backup1");
    let writer = Writer::start("10.231.0.31", pw, "repo_down");
    let t = Instant::now();
    let failing = loop {
        let _ = psql("10.231.0.31", 5000, pw, "select pg_switch_wal()");
        let st = pgdeploy(&["status", inv_s]);
        if st.code == 1 && st.stdout.contains("archiving to the repository is failing") {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(240),
            "status never showed the archive failing:\n{}",
            st.all()
        );
        std::thread::sleep(Duration::from_secs(5));
    };
    figure(
        "repository down: seconds until status shows the archive failing",
        t.elapsed().as_secs_f64(),
    );
    assert!(failing.stdout.contains("archive"), "{}", failing.stdout);
    let out = pgdeploy(&["backup", inv_s]);
    assert_eq!(
        out.code,
        1,
        "a backup with the repository down:\n{}",
        out.all()
    );
    assert!(out.all().contains("backup1"), "{}", out.all());
    lab.start("backup1");
    let t = Instant::now();
    loop {
        let _ = psql("10.231.0.31", 5000, pw, "select pg_switch_wal()");
        let st = pgdeploy(&["status", inv_s, "--format", "json"]);
        let v: serde_json::Value = serde_json::from_str(&st.stdout).unwrap_or_default();
        let a = &v["archive"];
        let recent = a["last_archived_age_secs"]
            .as_f64()
            .is_some_and(|s| s < 30.0);
        if a["failing"] == false && recent {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "archiving never caught up after the repository came back:\n{}",
            st.all()
        );
        std::thread::sleep(Duration::from_secs(5));
    }
    figure(
        "repository back: seconds until archiving caught up",
        t.elapsed().as_secs_f64(),
    );
    let w = writer.stop();
    assert_eq!(w.errors, 0, "writes failed while the repository was down");
    assert_eq!(
        pgdeploy(&["check", inv_s]).code,
        0,
        "check after the repository came back"
    );
}
