//! Benchmark: the full deployment on a lab of nine real Debian hosts, with figures printed.
//!
//!   cargo bench --bench cluster            (root; takes several minutes)
//!
//! Prints: full `apply` total and per phase, peak memory of pgdeploy during it, `check` on the
//! converged cluster, a no-op `apply`, and failover time after powering off the leader.

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
    let checks: Vec<f64> = (0..11)
        .map(|_| {
            let t = Instant::now();
            let o = pgdeploy(&["check", inv_s]);
            assert_eq!(o.code, 0, "{}", o.all());
            t.elapsed().as_secs_f64()
        })
        .collect();
    figure(
        "check on the converged, settled cluster, median of 11 (s)",
        median(checks),
    );
    let noops: Vec<f64> = (0..11)
        .map(|_| {
            let t = Instant::now();
            pgdeploy_ok(&["apply", inv_s]);
            t.elapsed().as_secs_f64()
        })
        .collect();
    figure("no-op apply on it, median of 11 (s)", median(noops));

    let pw = lab.secret("superuser_password");
    psql(
        "10.231.0.31",
        5000,
        &pw,
        "create table if not exists pgdeploy_bench (id bigserial primary key)",
    )
    .expect("create the benchmark's table");
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
