//! Benchmark: the full deployment on a lab of nine real Debian hosts, with figures printed.
//!
//!   cargo bench --bench cluster            (root; takes several minutes)
//!
//! Prints: full `apply` total and per phase, peak memory of pgdeploy during it, `check` on the
//! converged cluster, a no-op `apply`, the cost of TLS (pgbench: connection setup, and insert
//! latency p50/p99 on a kept connection, through HAProxy with TLS and, as the baseline, on the
//! leader's loopback with and without TLS), `check` with a dozen more declared roles and
//! databases, and failover time after powering off the leader.

#[path = "../tests/it/e2e.rs"]
#[allow(dead_code)]
mod e2e;
#[path = "../tests/it/support.rs"]
mod support;

use e2e::*;
use std::time::{Duration, Instant};
use support::machine_busy;

fn peak_rss_of_children_mb() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    ru.ru_maxrss as f64 / 1024.0
}

/// Wait until the new cluster has settled (its first checkpoints, autovacuum and HA loops
/// done): the machine busy for less than a quarter of its cores over 3 s, within 5 minutes.
/// Returns how long it took. `check` is then measured as a user runs it on a cluster in
/// service, not while the hosts are still busy with their first minutes.
fn wait_settled() -> f64 {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    let t = Instant::now();
    loop {
        let b0 = machine_busy();
        std::thread::sleep(Duration::from_secs(3));
        let load = (machine_busy() - b0) / 3.0 / cores;
        if load < 0.25 || t.elapsed() > Duration::from_secs(300) {
            return t.elapsed().as_secs_f64();
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median wall time of 11 runs of pgdeploy `args`, each of which must find nothing to change.
fn median_check(args: &[&str]) -> f64 {
    median(
        (0..11)
            .map(|_| {
                let t = Instant::now();
                let o = pgdeploy(args);
                assert_eq!(o.code, 0, "{}", o.all());
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn main() {
    // The Debian release of the lab hosts: PGDEPLOY_BENCH_DEBIAN=12 or 13 (the default).
    let debian = std::env::var("PGDEPLOY_BENCH_DEBIAN").unwrap_or_else(|_| "13".into());
    let lab = LabGuard::up("production", &debian);
    let inv = lab.inventory();
    let inv_s = inv.to_str().unwrap();
    use_shared_bundle(&inv);
    let t = Instant::now();
    pgdeploy_ok(&["bundle", inv_s]);
    figure("bundle (s)", t.elapsed().as_secs_f64());

    let t = Instant::now();
    let out = pgdeploy_ok(&["apply", inv_s]);
    figure("full apply, nine bare hosts (s)", t.elapsed().as_secs_f64());
    for line in out
        .stderr
        .lines()
        .filter(|l| l.starts_with("phase ") && l.contains(" s)"))
    {
        println!("FIGURE   {line}");
    }
    figure("peak RSS of pgdeploy apply (MB)", peak_rss_of_children_mb());

    figure("cluster settled after (s)", wait_settled());
    figure(
        "check on the converged, settled cluster, median of 11 (s)",
        median_check(&["check", inv_s]),
    );
    let noops: Vec<f64> = (0..11)
        .map(|_| {
            let t = Instant::now();
            pgdeploy_ok(&["apply", inv_s]);
            t.elapsed().as_secs_f64()
        })
        .collect();
    figure("no-op apply on it, median of 11 (s)", median(noops));
    // The same check with every connection made anew (ssh.persist: 0), as the first command
    // after a pause sees it.
    let text = std::fs::read_to_string(&inv).expect("read the lab's inventory");
    let cold = inv.with_file_name("inventory-no-persist.yaml");
    std::fs::write(
        &cold,
        text.replacen("\nssh:\n", "\nssh:\n  persist: 0\n", 1),
    )
    .expect("write the inventory without persisted connections");
    let cold_s = cold.to_str().unwrap();
    figure(
        "check with new connections every time (ssh.persist: 0), median of 11 (s)",
        median_check(&["check", cold_s]),
    );

    let pw = lab.app_password();
    psql(
        "10.231.0.31",
        5000,
        &pw,
        "create table if not exists pgdeploy_bench (id bigserial primary key)",
    )
    .expect("create the benchmark's table");
    tls_cost(&lab, &pw);
    catalog_check_cost(inv_s);
    let leader = wait_leader(&lab);
    let t = Instant::now();
    lab.kill(&leader);
    while psql(
        "10.231.0.32",
        5000,
        &pw,
        "insert into pgdeploy_bench default values returning id",
    )
    .is_err()
    {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no failover within 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    figure(
        "failover after power-off of the leader (s)",
        t.elapsed().as_secs_f64(),
    );
}

/// The p-th percentile of `v` (0..=100).
fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p / 100.0).round() as usize]
}

/// pgbench on `host` against `conninfo`: the average connection setup (ms, a new connection
/// per transaction of `SELECT 1`), then insert latency p50 and p99 (ms) on one kept connection.
fn pgbench(lab: &LabGuard, host: &str, pw: &str, conninfo: &str) -> (f64, f64, f64) {
    lab.ssh(
        host,
        "printf 'SELECT 1;\\n' > /tmp/pgb-select.sql; \
         printf 'INSERT INTO pgdeploy_bench DEFAULT VALUES;\\n' > /tmp/pgb-insert.sql; rm -f /tmp/pgb-log*",
    );
    let setup = lab.ssh(
        host,
        &format!("PGPASSWORD={pw} pgbench -n -C -T 10 -f /tmp/pgb-select.sql '{conninfo}' 2>&1"),
    );
    let ms = |out: &str, key: &str| -> f64 {
        out.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {key:?} in:\n{out}"))
    };
    let connect = ms(&setup, "average connection time =");
    lab.ssh(
        host,
        &format!(
            "PGPASSWORD={pw} pgbench -n -T 10 -f /tmp/pgb-insert.sql -l --log-prefix=/tmp/pgb-log '{conninfo}' >/dev/null 2>&1"
        ),
    );
    let log = lab.ssh(host, "cat /tmp/pgb-log*");
    let mut lat: Vec<f64> = log
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<f64>().ok())
        .map(|us| us / 1000.0)
        .collect();
    assert!(lat.len() > 100, "too few inserts: {}", lat.len());
    let p50 = percentile(&mut lat, 50.0);
    let p99 = percentile(&mut lat, 99.0);
    (connect, p50, p99)
}

/// What TLS costs applications: through HAProxy with TLS (verify-full by the DNS name, from a
/// replica host), and on the leader's loopback without and with TLS (the baseline: the same
/// server, only TLS differs).
fn tls_cost(lab: &LabGuard, pw: &str) {
    let leader = wait_leader(lab);
    let client = ["pg1", "pg2", "pg3"]
        .into_iter()
        .find(|h| *h != leader)
        .unwrap();
    let cases = [
        (
            leader.as_str(),
            "loopback, no TLS",
            "host=127.0.0.1 port=5432 user=app dbname=app sslmode=disable".to_string(),
        ),
        (
            leader.as_str(),
            "loopback, TLS",
            "host=127.0.0.1 port=5432 user=app dbname=app sslmode=require".to_string(),
        ),
        (
            client,
            "through HAProxy, TLS verify-full",
            "host=pg.db.lab.test hostaddr=10.231.0.31 port=5000 user=app dbname=app \
             sslmode=verify-full sslrootcert=/etc/pgdeploy/tls/ca.crt"
                .to_string(),
        ),
    ];
    for (host, what, conninfo) in cases {
        let (connect, p50, p99) = pgbench(lab, host, pw, &conninfo);
        figure(&format!("{what}: connection setup (ms)"), connect);
        figure(&format!("{what}: insert latency p50 (ms)"), p50);
        figure(&format!("{what}: insert latency p99 (ms)"), p99);
    }
}

/// `check` with a dozen more declared roles and databases than the lab's (each database owned
/// by its role, with a reader), against the check before (both medians of 11).
fn catalog_check_cost(inv_s: &str) {
    let before = median_check(&["check", inv_s]);
    let others = "preflight,common,packages,etcd,patroni,haproxy,retire,verify,dns";
    let without = median_check(&["check", inv_s, "--only", others]);
    let ro = "  - { name: app_ro, login: false }\n";
    let mut users = String::from(ro);
    let mut dbs = String::new();
    for i in 1..=12 {
        users.push_str(&format!(
            "  - {{ name: svc{i}, password_file: app.password, connection_limit: 5 }}\n"
        ));
        dbs.push_str(&format!(
            "  - {{ name: svc{i}, owner: svc{i}, readers: [app_ro] }}\n"
        ));
    }
    let inv = std::path::Path::new(inv_s);
    edit_inventory(inv, ro, &users);
    edit_inventory(inv, "databases:\n", &format!("databases:\n{dbs}"));
    let t = Instant::now();
    pgdeploy_ok(&["apply", inv_s]);
    figure(
        "apply of 12 more roles and databases (s)",
        t.elapsed().as_secs_f64(),
    );
    let after = median_check(&["check", inv_s]);
    figure(
        "check without the catalog phase (--only the others), median of 11 (s)",
        without,
    );
    figure(
        "check, the lab's 2 roles and 1 database, median of 11 (s)",
        before,
    );
    figure(
        "check with 12 more roles and databases, median of 11 (s)",
        after,
    );
    figure(
        "check: cost of the 12 roles and databases (s)",
        after - before,
    );
}
