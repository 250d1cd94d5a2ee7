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

/// Rows of `tag` in the writer's table, read through HAProxy (None: the table is gone).
fn ids(pw: &str, tag: &str) -> Option<std::collections::BTreeSet<i64>> {
    psql(
        "10.231.0.32",
        5000,
        pw,
        &format!("select id from pgdeploy_writer where tag = '{tag}'"),
    )
    .ok()
    .map(|out| out.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Write under `tag` until `n` rows are acknowledged; their ids.
fn write_rows(pw: &str, tag: &str, n: usize) -> Vec<i64> {
    let writer = Writer::start("10.231.0.31", pw, tag);
    let t = Instant::now();
    while ids(pw, tag).map(|s| s.len()).unwrap_or(0) < n {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the writer does not write"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let w = writer.stop();
    assert_eq!(w.errors, 0, "writes failed");
    w.acknowledged
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn rfc3339(secs: i64) -> String {
    let o = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Point-in-time recovery after an operator's mistake: rows written before a time T, more
/// after it, then the table dropped; `restore --to T` brings back exactly what was committed
/// before T, on a healthy cluster (one leader, two replicas streaming) that `check` finds
/// converged and that archives again. Bad targets are refused before anything stops.
pub fn restore_scenario(lab: &LabGuard, inv: &std::path::Path, pw: &str) {
    let inv_s = inv.to_str().unwrap();
    let leader = wait_leader(lab);
    // Refused before anything stops: out of range, an unknown set, no confirmation.
    let out = pgdeploy(&["restore", inv_s, "--to", "2001-01-01T00:00:00Z", "--yes"]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.all().contains("outside the restorable range"),
        "{}",
        out.all()
    );
    let out = pgdeploy(&["restore", inv_s, "--set", "20000101-000000F", "--yes"]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.all().contains("no such backup set"), "{}", out.all());
    let out = pgdeploy(&["restore", inv_s, "--latest"]);
    assert_eq!(
        out.code,
        1,
        "a restore without a terminal or --yes:\n{}",
        out.all()
    );
    assert!(out.all().contains("nothing was changed"), "{}", out.all());
    assert_eq!(
        wait_leader(lab),
        leader,
        "a refused restore changed the leader"
    );

    let before = write_rows(pw, "pitr_before", 40);
    // T: a whole second after the last acknowledged commit before it.
    let t = now_secs() + 1;
    while now_secs() <= t {
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = write_rows(pw, "pitr_after", 40);
    psql("10.231.0.31", 5000, pw, "drop table pgdeploy_writer").expect("drop the table");
    assert!(ids(pw, "pitr_before").is_none(), "the table is still there");

    let target = rfc3339(t);
    let out = pgdeploy(&["restore", inv_s, "--to", &target, "--check"]);
    assert_eq!(out.code, 2, "{}", out.all());
    for step in [
        "unit stop patroni.service",
        "patronictl remove lab",
        "pgbackrest restore of set",
        "rm -rf",
    ] {
        assert!(
            out.stdout.contains(step),
            "restore --check lacks {step:?}:\n{}",
            out.stdout
        );
    }
    let started = Instant::now();
    let out = pgdeploy(&["restore", inv_s, "--to", &target, "--yes"]);
    assert_eq!(out.code, 0, "restore --to {target}:\n{}", out.all());
    figure(
        "restore to a point in time (s)",
        started.elapsed().as_secs_f64(),
    );
    loop {
        if psql("10.231.0.31", 5000, pw, "select 1").is_ok() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "no write path after the restore"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    figure(
        "restore: seconds from the command until writes through HAProxy succeed",
        started.elapsed().as_secs_f64(),
    );
    let have = ids(pw, "pitr_before").expect("the table is back");
    let missing: Vec<&i64> = before.iter().filter(|id| !have.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged before T but not restored: {missing:?}"
    );
    let later = ids(pw, "pitr_after").unwrap_or_default();
    assert!(
        later.is_empty(),
        "committed after T but restored: {later:?} (of {})",
        after.len()
    );
    wait_members_running(lab, 3);
    let leader = wait_leader(lab);
    wait_two_streaming(lab, &leader, "after the restore");
    let out = pgdeploy(&["check", inv_s]);
    assert_eq!(out.code, 0, "check after the restore:\n{}", out.all());
    // The timeline history is kept and archiving resumes on the new timeline.
    let history = lab.ssh(
        "backup1",
        "ls /var/lib/pgbackrest/archive/lab/*/ | grep -c history",
    );
    assert!(
        history.trim().parse::<u32>().unwrap_or(0) >= 1,
        "no timeline history: {history}"
    );
    let left = lab.ssh(
        &leader,
        "ls -d /var/lib/postgresql/17/main.pgdeploy-before-restore-* 2>/dev/null | wc -l",
    );
    assert_eq!(left.trim(), "0", "the moved-aside data was not removed");
    let out = pgdeploy(&["backup", inv_s, "--type", "incr"]);
    assert_eq!(out.code, 0, "a backup after the restore:\n{}", out.all());
    interrupted_restore(lab, inv, pw);

    // The drill restores the latest backup and the archive on backup1 and reaches the writes
    // made just before it.
    let mark = now_secs();
    write_rows(pw, "drill", 20);
    let t = Instant::now();
    let out = pgdeploy(&["backup", "verify", inv_s, "--format", "json"]);
    figure(
        "restore drill on the repository host (s)",
        t.elapsed().as_secs_f64(),
    );
    assert_eq!(out.code, 0, "backup verify:\n{}", out.all());
    let d: serde_json::Value = serde_json::from_str(&out.stdout).expect("drill JSON");
    assert_eq!(d["ok"], true, "{d}");
    assert_eq!(d["amcheck"], "passed", "{d}");
    let last = d["last_transaction"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let o = std::process::Command::new("date")
        .args(["-u", "-d", &last, "+%s"])
        .output()
        .expect("date");
    let last_secs: i64 = String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(
        last_secs >= mark,
        "the drill reached {last}, before the writes at {mark}: {d}"
    );
    assert!(
        d["databases"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["name"] == "app")),
        "{d}"
    );
    let left = lab.ssh("backup1", "ls /var/lib/pgdeploy/drill 2>/dev/null | wc -l");
    assert_eq!(left.trim(), "0", "the drill's instance was not removed");
    let st = pgdeploy(&["status", inv_s, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&st.stdout).expect("status json");
    assert_eq!(v["drill"]["ok"], true, "{v}");
    assert!(
        v["drill"]["age_secs"].as_i64().is_some_and(|a| a < 600),
        "{v}"
    );
}

const DATA_DIR: &str = "/var/lib/postgresql/17/main";

/// The members that hold what a restore leaves beside the data directory: (moved aside,
/// restore marker).
fn restore_left(lab: &LabGuard) -> (usize, usize) {
    let mut n = (0, 0);
    for m in ["pg1", "pg2", "pg3"] {
        let out = lab.ssh(
            m,
            &format!("ls -d {DATA_DIR}.pgdeploy-before-restore-* 2>/dev/null | wc -l; ls {DATA_DIR}.pgdeploy-restored 2>/dev/null | wc -l"),
        );
        let mut l = out.lines().map(|x| x.trim().parse::<usize>().unwrap_or(0));
        n.0 += l.next().unwrap_or(0);
        n.1 += l.next().unwrap_or(0);
    }
    n
}

/// A restore killed at two points (while pgBackRest restores, then once the member restored
/// and Patroni starts on it) is finished by the same command run again, without a second
/// restore; in between, `check` (and so `apply`) refuses to touch the cluster.
fn interrupted_restore(lab: &LabGuard, inv: &std::path::Path, pw: &str) {
    let inv_s = inv.to_str().unwrap();
    let before = write_rows(pw, "interrupted", 20);
    let restore = ["restore", inv_s, "--latest", "--yes"];
    // 1. Killed while pgBackRest writes into the restorer's empty data directory (or
    //    PostgreSQL replays the archive there).
    let mut child = spawn_pgdeploy(&restore);
    // (The step as it starts, not the plan printed first.)
    wait_for_output(
        &mut child,
        "restore: ! pgbackrest restore of set",
        Duration::from_secs(300),
    );
    let t = Instant::now();
    while !["pg1", "pg2", "pg3"].iter().any(|m| {
        !lab.ssh(m, &format!("ls -A {DATA_DIR} 2>/dev/null | head -1"))
            .trim()
            .is_empty()
    }) {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the restore wrote nothing"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().expect("kill pgdeploy");
    let _ = child.wait();
    assert_eq!(
        restore_left(lab),
        (3, 0),
        "moved aside on every member, not restored yet"
    );
    let out = pgdeploy(&["check", inv_s]);
    assert_eq!(
        out.code,
        1,
        "check during an unfinished restore:\n{}",
        out.all()
    );
    assert!(
        out.all().contains("run the same restore again"),
        "{}",
        out.all()
    );
    // 2. Run again, killed once a member restored and Patroni starts on it.
    let mut child = spawn_pgdeploy(&restore);
    wait_for_output(
        &mut child,
        "restore: it leads from the restored data",
        Duration::from_secs(600),
    );
    child.kill().expect("kill pgdeploy");
    let _ = child.wait();
    assert_eq!(restore_left(lab).1, 1, "the restorer's marker");
    // 3. Run again: it finishes without restoring a second time.
    let t = Instant::now();
    let out = pgdeploy(&restore);
    assert_eq!(out.code, 0, "restore run again:\n{}", out.all());
    figure(
        "restore run again after an interruption, to the end (s)",
        t.elapsed().as_secs_f64(),
    );
    assert!(
        !out.all().contains("pgbackrest restore of set"),
        "a second restore:\n{}",
        out.all()
    );
    assert_eq!(restore_left(lab), (0, 0), "old data and marker removed");
    wait_members_running(lab, 3);
    let have = ids(pw, "interrupted").expect("the writer's table");
    let missing: Vec<&i64> = before.iter().filter(|id| !have.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged before the restore but lost: {missing:?}"
    );
    let leader = wait_leader(lab);
    wait_two_streaming(lab, &leader, "after the interrupted restore");
    let out = pgdeploy(&["check", inv_s]);
    assert_eq!(
        out.code,
        0,
        "check after the interrupted restore:\n{}",
        out.all()
    );
}

/// Debian 12's pgBackRest (2.45) in the PoC layout: apply created the stanza; a full backup
/// through pgdeploy after rows written through HAProxy on pg1; `backup list` shows it; the
/// restore drill on backup1 restores it with the archive, reaches those rows' commit and
/// passes pg_amcheck.
pub fn poc_backup_scenario(lab: &LabGuard, inv: &std::path::Path, pw: &str) {
    let inv_s = inv.to_str().unwrap();
    let info = repo_info(lab);
    assert_eq!(
        info["status"]["code"], 2,
        "a new stanza, no backup yet: {info}"
    );
    psql(
        "10.231.0.21",
        5000,
        pw,
        "create table poc_backup (id int); insert into poc_backup select generate_series(1, 100)",
    )
    .expect("write through HAProxy");
    let t = Instant::now();
    let out = pgdeploy(&["backup", inv_s, "--type", "full"]);
    assert_eq!(
        out.code,
        0,
        "backup --type full on Debian 12:\n{}",
        out.all()
    );
    figure(
        "Debian 12: full backup of the PoC database (s)",
        t.elapsed().as_secs_f64(),
    );
    assert_eq!(backup_labels(lab).len(), 1);
    let out = pgdeploy(&["backup", "list", inv_s, "--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.all());
    let mark = now_secs();
    psql(
        "10.231.0.21",
        5000,
        pw,
        "insert into poc_backup values (101)",
    )
    .expect("a later write");
    let t = Instant::now();
    let out = pgdeploy(&["backup", "verify", inv_s, "--format", "json"]);
    figure(
        "Debian 12: restore drill on the repository host (s)",
        t.elapsed().as_secs_f64(),
    );
    assert_eq!(out.code, 0, "backup verify on Debian 12:\n{}", out.all());
    let d: serde_json::Value = serde_json::from_str(&out.stdout).expect("drill JSON");
    assert_eq!(d["ok"], true, "{d}");
    assert_eq!(d["amcheck"], "passed", "{d}");
    let last = d["last_transaction"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let o = std::process::Command::new("date")
        .args(["-u", "-d", &last, "+%s"])
        .output()
        .expect("date");
    let last_secs: i64 = String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(
        last_secs >= mark,
        "the drill reached {last}, before the write at {mark}: {d}"
    );
    let out = pgdeploy(&["check", inv_s]);
    assert_eq!(out.code, 0, "check after the backup:\n{}", out.all());
}

/// Patroni's log on `host` since `since` (seconds since the epoch).
fn patroni_log_since(lab: &LabGuard, host: &str, since: i64) -> String {
    lab.ssh(
        host,
        &format!("journalctl -u patroni --no-pager -o cat --since @{since}"),
    )
}

/// `patronictl reinit` of `member`, then wait until Patroni says how it created the replica
/// (its log since `since`) and the member runs again; that log.
fn reinit(lab: &LabGuard, member: &str, since: i64) -> String {
    lab.ssh(
        member,
        &format!(
            "patronictl -c /etc/patroni/config.yml reinit lab {member} --force --wait >/dev/null"
        ),
    );
    let t = Instant::now();
    loop {
        let log = patroni_log_since(lab, member, since);
        if log.contains("replica has been created using") {
            wait_members_running(lab, 3);
            return log;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "{member} was not created again:\n{log}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The segment number of a WAL file name (its last 16 hex digits).
fn segno(name: &str) -> u64 {
    u64::from_str_radix(name.get(8..24).unwrap_or("0"), 16).unwrap_or(0)
}

/// A replica is created from the repository only when the member it is cloned from still
/// holds the WAL since the backup (it streams the rest, and never reads the archive); once the
/// leader's WAL has moved past the backup, the replica is copied from the leader instead, and
/// streams.
pub fn replica_from_backup_scenario(lab: &LabGuard, inv: &std::path::Path) {
    let inv_s = inv.to_str().unwrap();
    let out = pgdeploy(&["backup", inv_s, "--type", "full"]);
    assert_eq!(out.code, 0, "{}", out.all());
    let leader = wait_leader(lab);
    let replica = ["pg1", "pg2", "pg3"]
        .into_iter()
        .find(|m| *m != leader)
        .unwrap();
    let since = now_secs();
    let log = reinit(lab, replica, since);
    assert!(
        log.contains("replica has been created using pgbackrest"),
        "a fresh backup, the leader holds its WAL:\n{log}"
    );
    // The leader's WAL moves past the backup's start: records, segment switches, checkpoints.
    let info = repo_info(lab);
    let start = info["backup"]
        .as_array()
        .and_then(|a| a.last())
        .and_then(|b| b["archive"]["start"].as_str())
        .expect("the backup's first WAL segment")
        .to_string();
    let sql = |q: &str| {
        lab.ssh(
            &leader,
            &format!("runuser -u postgres -- psql -AtXc \"{q}\""),
        )
    };
    let t = Instant::now();
    loop {
        for _ in 0..4 {
            sql("select pg_logical_emit_message(false, 'pgdeploy-test', 'x')");
            sql("select pg_switch_wal()");
        }
        sql("checkpoint");
        let oldest = sql("select min(name) from pg_ls_waldir() where name ~ '^[0-9A-F]{24}$'");
        if segno(oldest.trim()) > segno(&start) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the leader still holds {start} (oldest {oldest})"
        );
    }
    let since = now_secs();
    let log = reinit(lab, replica, since);
    assert!(
        log.contains("older than the WAL the member keeps")
            && log.contains("replica has been created using basebackup"),
        "the backup's WAL gone from the leader:\n{log}"
    );
    wait_two_streaming(lab, &leader, &format!("after basebackup of {replica}"));
    let out = pgdeploy(&["check", inv_s]);
    assert_eq!(out.code, 0, "check after the reinit:\n{}", out.all());
}

/// Wait (300 s at most) until both replicas stream from `leader`.
fn wait_two_streaming(lab: &LabGuard, leader: &str, when: &str) {
    let t = Instant::now();
    loop {
        let n = lab.ssh(leader, "runuser -u postgres -- psql -AtXc \"select count(*) from pg_stat_replication where state = 'streaming'\"");
        if n.trim() == "2" {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "replicas do not stream {when}: {n}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}
