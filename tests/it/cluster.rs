//! End-to-end: the production topology on a local lab of nine real Debian hosts, deployed by
//! `pgdeploy apply`, then many scenarios in sequence on that one cluster; then the
//! proof-of-concept topology. Facts are checked with the real tools (etcdctl, patronictl,
//! psql), not with pgdeploy's own code. Needs root (the lab).

use crate::e2e::*;
use std::time::{Duration, Instant};

#[test]
fn production_cluster_end_to_end() {
    let _lock = lab_lock();
    let lab = LabGuard::up("production");
    let inv = lab.inventory();
    use_shared_bundle(&inv);

    // A bundle of the pinned packages, built on this machine.
    let t = Instant::now();
    pgdeploy_ok(&["bundle", inv.to_str().unwrap()]);
    figure("bundle build (s)", t.elapsed().as_secs_f64());

    // check on bare hosts: changes (exit 2), with diffs.
    let out = pgdeploy(&["check", inv.to_str().unwrap()]);
    assert_eq!(
        out.code,
        2,
        "check on bare hosts must report changes:\n{}",
        out.all()
    );
    assert!(
        out.stdout.contains("+++ /etc/patroni/config.yml (desired)"),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains(&lab.secret("superuser_password")),
        "secret printed"
    );

    // The full apply.
    let t = Instant::now();
    let out = pgdeploy(&["apply", inv.to_str().unwrap()]);
    assert_eq!(out.code, 0, "apply failed:\n{}", out.all());
    figure(
        "full apply on nine bare hosts (s)",
        t.elapsed().as_secs_f64(),
    );
    for line in out
        .stderr
        .lines()
        .filter(|l| l.starts_with("phase ") && l.contains(" s)"))
    {
        println!("FIGURE apply {line}");
    }
    let pw = lab.secret("superuser_password");
    assert!(!out.all().contains(&pw), "a secret was printed by apply");

    // etcd: three healthy members (asked with etcdctl on the host).
    let members = lab.ssh(
        "etcd1",
        "ETCDCTL_API=3 etcdctl --endpoints=https://10.231.0.11:2379,https://10.231.0.12:2379,https://10.231.0.13:2379 \
         --cacert=/etc/pgdeploy/tls/ca.crt --cert=/etc/pgdeploy/tls/etcd1.crt --key=/etc/pgdeploy/tls/etcd1.key \
         endpoint health 2>&1",
    );
    assert_eq!(members.matches("is healthy").count(), 3, "{members}");

    // Patroni: one leader, two replicas streaming.
    let leader = wait_leader(&lab);
    let streaming = lab.ssh(&leader, "runuser -u postgres -- psql -AtXc \"select count(*) from pg_stat_replication where state='streaming'\"");
    assert_eq!(streaming.trim(), "2", "replicas streaming from {leader}");

    // Every HAProxy routes writes to the leader and reads to replicas.
    for lb in ["10.231.0.31", "10.231.0.32", "10.231.0.33"] {
        assert_eq!(
            psql(lb, 5000, &pw, "select pg_is_in_recovery()").unwrap(),
            "f",
            "{lb}:5000"
        );
        assert_eq!(
            psql(lb, 5001, &pw, "select pg_is_in_recovery()").unwrap(),
            "t",
            "{lb}:5001"
        );
    }

    // Converged: check is empty (exit 0) and a second apply changes and restarts nothing.
    let t = Instant::now();
    let out = pgdeploy(&["check", inv.to_str().unwrap()]);
    figure(
        "check on the converged cluster (s)",
        t.elapsed().as_secs_f64(),
    );
    assert_eq!(
        out.code,
        0,
        "check after apply must be empty:\n{}",
        out.all()
    );
    assert!(out.stdout.contains("No changes"), "{}", out.stdout);
    let before = service_starts(&lab);
    let t = Instant::now();
    let out = pgdeploy(&["apply", inv.to_str().unwrap()]);
    figure("no-op apply (s)", t.elapsed().as_secs_f64());
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("No changes"), "{}", out.stdout);
    assert_eq!(
        before,
        service_starts(&lab),
        "a no-op apply restarted a service"
    );

    // A changed PostgreSQL parameter: check shows it, apply rolls it out while a writer writes.
    edit_inventory(&inv, "max_connections: 100", "max_connections: 120");
    let out = pgdeploy(&["check", inv.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(out.stdout.contains("max_connections"), "{}", out.stdout);
    let writer = Writer::start("10.231.0.31", &pw, "param_change");
    let out = pgdeploy(&["apply", inv.to_str().unwrap()]);
    let w = writer.stop();
    assert_eq!(out.code, 0, "{}", out.all());
    figure(
        "parameter rollout: longest write gap (s)",
        w.longest_gap.as_secs_f64(),
    );
    for pg in ["pg1", "pg2", "pg3"] {
        let v = lab.ssh(
            pg,
            "runuser -u postgres -- psql -AtXc 'show max_connections'",
        );
        assert_eq!(v.trim(), "120", "{pg}");
    }
    assert_eq!(pgdeploy(&["check", inv.to_str().unwrap()]).code, 0);

    // Power off the leader: writes through HAProxy succeed again on a new leader.
    let leader = wait_leader(&lab);
    let t = Instant::now();
    lab.kill(&leader);
    let deadline = Duration::from_secs(120);
    loop {
        if psql(
            "10.231.0.32",
            5000,
            &pw,
            "insert into pgdeploy_verify (via) values ('failover') returning id",
        )
        .is_ok()
        {
            break;
        }
        assert!(
            t.elapsed() < deadline,
            "no write succeeded within {deadline:?} after killing {leader}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    figure(
        "failover: seconds until a write through HAProxy succeeds",
        t.elapsed().as_secs_f64(),
    );
    lab.start(&leader);
    wait_members_running(&lab, 3);

    // An apply killed in the middle, then run again, converges.
    edit_inventory(&inv, "max_connections: 120", "max_connections: 110");
    let mut child = spawn_pgdeploy(&["apply", inv.to_str().unwrap()]);
    wait_for_output(&mut child, "patroni: applying", Duration::from_secs(120));
    let _ = child.kill();
    let _ = child.wait();
    let out = pgdeploy(&["apply", inv.to_str().unwrap()]);
    assert_eq!(
        out.code,
        0,
        "apply after an interrupted apply:\n{}",
        out.all()
    );
    let out = pgdeploy(&["check", inv.to_str().unwrap()]);
    assert_eq!(
        out.code,
        0,
        "check after the repaired apply:\n{}",
        out.all()
    );
}
