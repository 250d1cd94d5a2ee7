//! Benchmark: backups and point-in-time recovery with pgBackRest on the ten-host lab (three
//! etcd, three Patroni, three HAProxy, the repository host backup1), with figures printed.
//!
//!   cargo bench --bench backup            (root; takes about a quarter of an hour)
//!
//! Prints:
//! - the extra write latency from WAL archiving: pgbench's TPC-B-like transactions (4 clients,
//!   on the leader's loopback) p50/p99 with pgBackRest's `archive-push` and with an archiver
//!   that does nothing (`archive_command = '/bin/true'`, set with ALTER SYSTEM and reset after),
//!   in alternating rounds;
//! - a full backup of the database after loading about 1 GB (pgbench scale 70): time and
//!   throughput in MB/s of database size;
//! - `restore --to T` of that database, until a write through HAProxy succeeds, and until
//!   every replica streams again.
//!
//! PGDEPLOY_BENCH_SCALE sets the pgbench scale (default 70).

#[path = "../tests/it/e2e.rs"]
#[allow(dead_code)]
mod e2e;
#[path = "../tests/it/support.rs"]
mod support;

use e2e::*;
use std::time::{Duration, Instant};

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p / 100.0).round() as usize]
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn superuser_sql(lab: &LabGuard, host: &str, sql: &str) -> String {
    lab.ssh(
        host,
        &format!("runuser -u postgres -- psql -AtX -c \"{sql}\""),
    )
}

/// pgbench's TPC-B-like transactions on the leader's loopback for `secs`: latencies (ms).
fn tpcb(lab: &LabGuard, leader: &str, pw: &str, secs: u32) -> Vec<f64> {
    lab.ssh(
        leader,
        &format!(
            "rm -f /tmp/pgb-arch*; cd /tmp && PGPASSWORD={pw} pgbench -n -c 4 -j 2 -T {secs} -l --log-prefix=/tmp/pgb-arch 'host=127.0.0.1 port=5432 user=app dbname=app sslmode=disable' >/dev/null 2>&1"
        ),
    );
    lab.ssh(leader, "cat /tmp/pgb-arch*")
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<f64>().ok())
        .map(|us| us / 1000.0)
        .collect()
}

/// The leader's archived segment count.
fn archived(lab: &LabGuard, leader: &str) -> u64 {
    superuser_sql(lab, leader, "select archived_count from pg_stat_archiver")
        .trim()
        .parse()
        .unwrap_or(0)
}

fn set_archive_command(lab: &LabGuard, leader: &str, noop: bool) {
    let sql = if noop {
        "alter system set archive_command = '/bin/true'"
    } else {
        "alter system reset archive_command"
    };
    superuser_sql(lab, leader, sql);
    superuser_sql(lab, leader, "select pg_reload_conf()");
}

fn main() {
    let scale: u32 = std::env::var("PGDEPLOY_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(70);
    let lab = LabGuard::up("production", "13");
    let inv = lab.inventory();
    let inv_s = inv.to_str().unwrap();
    use_shared_bundle(&inv);
    pgdeploy_ok(&["bundle", inv_s]);
    let t = Instant::now();
    pgdeploy_ok(&["apply", inv_s]);
    figure("full apply, ten bare hosts (s)", t.elapsed().as_secs_f64());
    let pw = lab.app_password();
    let leader = wait_leader(&lab);

    // 1. Load about 1 GB (scale 70) into the app database, as the app role.
    let t = Instant::now();
    lab.ssh(
        &leader,
        &format!(
            "cd /tmp && PGPASSWORD={pw} pgbench -i -q -s {scale} 'host=127.0.0.1 port=5432 user=app dbname=app sslmode=disable' >/dev/null 2>&1"
        ),
    );
    figure(
        &format!("pgbench -i -s {scale} (s)"),
        t.elapsed().as_secs_f64(),
    );
    let db_bytes: f64 = superuser_sql(&lab, &leader, "select pg_database_size('app')")
        .trim()
        .parse()
        .expect("database size");
    figure("database app size (MB)", db_bytes / 1e6);
    // Archiving catches up on the load before anything is measured.
    let out = pgdeploy(&["backup", inv_s, "--type", "full"]);
    assert_eq!(out.code, 0, "first full backup:\n{}", out.all());

    // 2. Write latency with and without archiving, alternating (three rounds of 20 s each).
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let mut segments = 0;
    for _ in 0..3 {
        let a0 = archived(&lab, &leader);
        with.extend(tpcb(&lab, &leader, &pw, 20));
        segments += archived(&lab, &leader) - a0;
        set_archive_command(&lab, &leader, true);
        without.extend(tpcb(&lab, &leader, &pw, 20));
        set_archive_command(&lab, &leader, false);
    }
    figure(
        "WAL segments archived by pgBackRest during the measured rounds",
        segments as f64,
    );
    for (what, v) in [
        ("archiving on", &mut with),
        ("archiver a no-op", &mut without),
    ] {
        figure(
            &format!("TPC-B, 4 clients, {what}: transactions"),
            v.len() as f64,
        );
        figure(
            &format!("TPC-B, {what}: latency p50 (ms)"),
            percentile(v, 50.0),
        );
        figure(
            &format!("TPC-B, {what}: latency p99 (ms)"),
            percentile(v, 99.0),
        );
    }

    // 3. A full backup of the loaded database, from a replica.
    let t = Instant::now();
    let out = pgdeploy(&["backup", inv_s, "--type", "full"]);
    assert_eq!(out.code, 0, "full backup:\n{}", out.all());
    let secs = t.elapsed().as_secs_f64();
    figure("full backup after the load (s)", secs);
    // The set as pgBackRest records it: its type and the sizes it read and stored.
    let list = pgdeploy_ok(&["backup", "list", inv_s, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&list.stdout).expect("backup list JSON");
    let newest = v["backups"]
        .as_array()
        .and_then(|a| a.iter().max_by_key(|b| b["stop"].as_i64()))
        .cloned()
        .expect("a backup set");
    assert_eq!(newest["kind"], "full", "{newest}");
    let read = newest["database_bytes"].as_f64().unwrap_or(0.0);
    let stored = newest["repo_bytes"].as_f64().unwrap_or(0.0);
    assert!(
        read >= db_bytes * 0.9,
        "the set read {read} bytes of {db_bytes}"
    );
    figure("full backup: database size read (MB)", read / 1e6);
    figure(
        "full backup: stored in the repository, compressed (MB)",
        stored / 1e6,
    );
    figure(
        "full backup throughput (MB/s of database size)",
        read / 1e6 / secs,
    );

    // 4. Point-in-time recovery of it: T after the backup, writes after T, then restore.
    psql(
        "10.231.0.31",
        5000,
        &pw,
        "create table if not exists bench_pitr (id int); insert into bench_pitr values (1)",
    )
    .expect("write before T");
    let target = now_secs() + 1;
    while now_secs() <= target {
        std::thread::sleep(Duration::from_millis(100));
    }
    psql(
        "10.231.0.31",
        5000,
        &pw,
        "insert into bench_pitr values (2)",
    )
    .expect("write after T");
    let to = String::from_utf8_lossy(
        &std::process::Command::new("date")
            .args(["-u", "-d", &format!("@{target}"), "+%Y-%m-%dT%H:%M:%SZ"])
            .output()
            .expect("date")
            .stdout,
    )
    .trim()
    .to_string();
    let t = Instant::now();
    let out = pgdeploy(&["restore", inv_s, "--to", &to, "--yes"]);
    assert_eq!(out.code, 0, "restore:\n{}", out.all());
    figure(
        "restore --to T of the loaded database, command (s)",
        t.elapsed().as_secs_f64(),
    );
    while psql(
        "10.231.0.31",
        5000,
        &pw,
        "insert into bench_pitr values (3)",
    )
    .is_err()
    {
        assert!(
            t.elapsed() < Duration::from_secs(1800),
            "no writes after the restore"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    figure(
        "restore --to T: until a write through HAProxy succeeds (s)",
        t.elapsed().as_secs_f64(),
    );
    let rows = psql(
        "10.231.0.31",
        5000,
        &pw,
        "select string_agg(id::text, ',' order by id) from bench_pitr",
    )
    .expect("read back");
    assert_eq!(rows.trim(), "1,3", "the state at T, then the new write");
    let leader = wait_leader(&lab);
    loop {
        let n = superuser_sql(
            &lab,
            &leader,
            "select count(*) from pg_stat_replication where state = 'streaming'",
        );
        if n.trim() == "2" {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(3600),
            "replicas do not stream"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    figure(
        "restore --to T: until both replicas stream again (s)",
        t.elapsed().as_secs_f64(),
    );
}
