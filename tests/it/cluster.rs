//! End-to-end: the production topology on a local lab of nine real Debian hosts, deployed by
//! `pgdeploy apply`, then many scenarios in sequence on that one cluster; then the
//! proof-of-concept topology. Facts are checked with the real tools (etcdctl, patronictl,
//! psql), not with pgdeploy's own code. Needs root (the lab).

use crate::e2e::*;
use std::time::{Duration, Instant};

#[test]
fn production_cluster_end_to_end() {
    let _lock = lab_lock();
    let lab = LabGuard::up_with_spares("production", "13", 3);
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
    figure(
        "peak RSS of any child so far, i.e. pgdeploy apply (MB)",
        peak_child_rss_mb(),
    );
    let su = lab.secret("superuser_password");
    assert!(!out.all().contains(&su), "a secret was printed by apply");
    // Applications connect as the declared role `app`, whose password apply never prints.
    let pw = lab.app_password();
    assert!(
        !out.all().contains(&pw),
        "the application's password was printed"
    );

    // etcd: three healthy members (asked with etcdctl on the host).
    let members = lab.ssh(
        "etcd1",
        "ETCDCTL_API=3 etcdctl --endpoints=https://10.231.0.11:2379,https://10.231.0.12:2379,https://10.231.0.13:2379 \
         --cacert=/etc/pgdeploy/tls/ca.crt --cert=/etc/pgdeploy/tls/etcd-root.pem --key=/etc/pgdeploy/tls/etcd-root-key.pem \
         endpoint health 2>&1",
    );
    assert_eq!(members.matches("is healthy").count(), 3, "{members}");
    etcd_auth_scenario(&lab, "10.231.0.11", Some("haproxy1"));

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

    tls_scenario(&lab, &inv, &pw, &leader);
    catalog_scenario(&lab, &inv, &pw, &leader);

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
    // Nothing pgdeploy did is left in the user's databases (verify's write was rolled back).
    let leader = wait_leader(&lab);
    let tables = lab.ssh(
        &leader,
        "runuser -u postgres -- psql -AtXc \"select count(*) from pg_tables where schemaname = 'public'\"",
    );
    assert_eq!(tables.trim(), "0", "tables left in the postgres database");
    unit_drift_scenario(&lab, &inv, &leader);
    crate::backup::backup_scenario(&lab, &inv, &pw);
    crate::backup::replica_from_backup_scenario(&lab, &inv);

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

    // Power off the leader, three times: writes through HAProxy succeed again on a new leader.
    let mut failovers = Vec::new();
    for round in 1..=3 {
        let leader = wait_leader(&lab);
        let t = Instant::now();
        lab.kill(&leader);
        let deadline = Duration::from_secs(120);
        loop {
            if psql(
                "10.231.0.32",
                5000,
                &pw,
                "insert into pgdeploy_writer (tag) values ('failover') returning id",
            )
            .is_ok()
            {
                break;
            }
            assert!(
                t.elapsed() < deadline,
                "round {round}: no write succeeded within {deadline:?} after killing {leader}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let secs = t.elapsed().as_secs_f64();
        figure(
            &format!("failover {round}: seconds until a write through HAProxy succeeds"),
            secs,
        );
        failovers.push(secs);
        lab.start(&leader);
        wait_members_running(&lab, 3);
    }
    // After the failovers, TLS against the DNS name still verifies, for writes and reads.
    let ca = inv.parent().unwrap().join("client-ca.crt");
    for (port, recovery) in [(5000, "f"), (5001, "t")] {
        let kw = format!(
            "host=pg.db.lab.test hostaddr=10.231.0.33 port={port} user=app dbname=app \
             connect_timeout=5 sslmode=verify-full sslrootcert={}",
            ca.display()
        );
        assert_eq!(
            psql_conn(&kw, &pw, "select pg_is_in_recovery()"),
            Ok(recovery.to_string()),
            "after the failovers: {kw}"
        );
    }
    failovers.sort_by(|a, b| a.total_cmp(b));
    figure("failover (Debian 13): min (s)", failovers[0]);
    figure("failover (Debian 13): median (s)", failovers[1]);
    figure("failover (Debian 13): max (s)", failovers[2]);
    crate::backup::backup_after_failover_scenario(&lab, &inv, &pw);
    crate::backup::restore_scenario(&lab, &inv, &pw);

    store_outage_scenario(&lab, &pw);
    cert_reissue_scenario(&lab, &inv, &pw);
    other_state_scenario(&lab, &inv, &su);
    second_dcs_scenario(&lab, &inv);

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
    // The journal shows the killed run as interrupted and the one that repaired it as ok.
    let out = pgdeploy(&["history", inv.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.all());
    let runs: serde_json::Value = serde_json::from_str(&out.stdout).expect("history JSON");
    let results: Vec<&str> = runs
        .as_array()
        .expect("a list of runs")
        .iter()
        .map(|r| r["result"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        results[results.len() - 2..],
        ["interrupted", "ok"],
        "{}",
        out.stdout
    );

    scaling_scenario(&lab, &inv, &pw);
    dns_scenarios(&lab, &inv, &pw);
    status_scenario(&lab, &inv);
    no_newer_minor_scenario(&lab, &inv);
}

/// Debian 13 carries one PostgreSQL 17 minor: `upgrade` without `--postgres` says there is
/// nothing newer and changes nothing; a minor that does not exist is refused before any host
/// changes.
/// Units changed by hand on a replica: Patroni disabled, Debian's PostgreSQL unit enabled, and
/// pgBackRest's own server unit masked (pgdeploy wants it disabled, so masked is fine). check
/// names exactly the first two (the probe reads enabling symlinks, and asks systemd only about
/// the unit it wants enabled and finds unlinked); apply repairs them and restarts nothing.
fn unit_drift_scenario(lab: &LabGuard, inv: &std::path::Path, leader: &str) {
    let replica = ["pg1", "pg2", "pg3"]
        .into_iter()
        .find(|h| *h != leader)
        .unwrap();
    lab.ssh(
        replica,
        "systemctl disable patroni.service && systemctl enable postgresql.service && systemctl mask pgbackrest.service",
    );
    let out = pgdeploy(&["check", inv.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{}", out.all());
    let units: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains(" unit "))
        .map(str::trim)
        .collect();
    assert_eq!(units.len(), 2, "{}", out.stdout);
    assert!(
        units.iter().any(|l| l.contains(&format!(
            "{replica}: ! unit enable patroni.service (is disabled)"
        ))),
        "{}",
        out.stdout
    );
    assert!(
        units.iter().any(|l| l.contains(&format!(
            "{replica}: ! unit disable postgresql.service (is enabled)"
        ))),
        "{}",
        out.stdout
    );
    let before = service_starts(lab);
    let out = pgdeploy(&["apply", inv.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(
        lab.ssh(
            replica,
            "systemctl is-enabled patroni.service postgresql.service pgbackrest.service; true"
        )
        .split_whitespace()
        .collect::<Vec<_>>(),
        ["enabled", "disabled", "masked"]
    );
    assert_eq!(
        before,
        service_starts(lab),
        "repairing units restarted a service"
    );
    lab.ssh(replica, "systemctl unmask pgbackrest.service");
    let out = pgdeploy(&["check", inv.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.all());
}

fn no_newer_minor_scenario(lab: &LabGuard, inv: &std::path::Path) {
    let inv_s = inv.to_str().unwrap();
    let before = service_starts(lab);
    let out = pgdeploy(&["upgrade", inv_s]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout
            .contains("Nothing to upgrade: PostgreSQL 17.12 is the newest 17 minor"),
        "{}",
        out.all()
    );
    let out = pgdeploy(&["upgrade", inv_s, "--postgres", "17.99"]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.all()
            .contains("has PostgreSQL 17.12 but 17.99 is asked for"),
        "{}",
        out.all()
    );
    let out = pgdeploy(&["bundle", inv_s, "--also-postgres", "17.99"]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.all().contains("17.99 not found in the package sources"),
        "{}",
        out.all()
    );
    assert_eq!(
        before,
        service_starts(lab),
        "a refused upgrade restarted a service"
    );
    for pg in ["pg1", "pg2", "pg3"] {
        let v = lab.ssh(
            pg,
            "runuser -u postgres -- psql -AtXc 'show server_version'",
        );
        assert!(v.trim().starts_with("17.12"), "{pg} runs {v}");
    }
    assert_eq!(
        pgdeploy(&["check", inv_s]).code,
        0,
        "check after the refused upgrade"
    );
}

/// Records of the lab's name at the lab's authoritative server.
fn dns_records(lab: &LabGuard) -> Vec<String> {
    let _ = lab;
    let o = std::process::Command::new("dig")
        .args([
            "+short",
            "+norecurse",
            "@10.231.0.1",
            "pg.db.lab.test.",
            "A",
        ])
        .output()
        .expect("dig");
    let mut v: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    v
}

fn soa_serial() -> String {
    let o = std::process::Command::new("dig")
        .args(["+short", "+norecurse", "@10.231.0.1", "db.lab.test.", "SOA"])
        .output()
        .expect("dig");
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .nth(2)
        .unwrap_or("")
        .to_string()
}

fn wait_records(lab: &LabGuard, inv: &std::path::Path, want: &[&str]) {
    let t = Instant::now();
    loop {
        let out = pgdeploy(&["dns", "sync", inv.to_str().unwrap()]);
        let got = dns_records(lab);
        if got == want {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "records {got:?}, want {want:?}; last sync:\n{}",
            out.all()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn dns_scenarios(lab: &LabGuard, inv: &std::path::Path, pw: &str) {
    let all = ["10.231.0.31", "10.231.0.32", "10.231.0.33"];
    // After apply the name holds the three HAProxy addresses.
    assert_eq!(dns_records(lab), all, "records after apply");
    // A client resolving the name (on a lab host whose resolver is the lab's DNS) writes to
    // the leader through it.
    lab.ssh("pg1", "cp /etc/resolv.conf /etc/resolv.conf.pgdeploy-test 2>/dev/null; echo 'nameserver 10.231.0.1' > /etc/resolv.conf");
    let o = lab.ssh_out(
        "pg1",
        &format!("PGPASSWORD='{pw}' psql 'host=pg.db.lab.test port=5000 user=app dbname=app sslmode=verify-full sslrootcert=/etc/pgdeploy/tls/ca.crt' -AtXc 'select not pg_is_in_recovery()'"),
    );
    lab.ssh(
        "pg1",
        "mv -f /etc/resolv.conf.pgdeploy-test /etc/resolv.conf 2>/dev/null || true",
    );
    assert_eq!(
        o.stdout.trim(),
        "t",
        "write by name went to a non-leader:\n{}",
        o.all()
    );
    // A no-op apply sends no DNS update (the zone's serial does not move).
    let serial = soa_serial();
    assert_eq!(pgdeploy(&["apply", inv.to_str().unwrap()]).code, 0);
    assert_eq!(serial, soa_serial(), "a no-op apply changed the zone");
    // One load balancer powered off: it leaves the round robin; back when healthy.
    lab.kill("haproxy1");
    wait_records(lab, inv, &all[1..]);
    lab.start("haproxy1");
    wait_records(lab, inv, &all);
    // All three down: the record set is left as it was, with a warning.
    for h in ["haproxy1", "haproxy2", "haproxy3"] {
        lab.kill(h);
    }
    let out = pgdeploy(&["dns", "sync", inv.to_str().unwrap()]);
    assert_eq!(
        dns_records(lab),
        all,
        "records must stay when all are down:\n{}",
        out.all()
    );
    assert!(
        out.all().to_lowercase().contains("warning"),
        "{}",
        out.all()
    );
    for h in ["haproxy1", "haproxy2", "haproxy3"] {
        lab.start(h);
    }
    wait_records(lab, inv, &all);
    // A wrong TSIG key: a clear error, nothing changed.
    let bad_dir = tempfile::tempdir().unwrap();
    let bad_inv = bad_dir.path().join("inventory.yaml");
    let text = std::fs::read_to_string(inv).unwrap();
    let key_abs = inv.parent().unwrap().join("tsig.key");
    std::fs::write(
        &bad_inv,
        text.replace(
            "secret_file: tsig.key",
            &format!("secret_file: {}", bad_dir.path().join("bad.key").display()),
        ),
    )
    .unwrap();
    let _ = key_abs;
    let key_name = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("key_name:"))
        .map(|k| k.trim().trim_matches('"').to_string())
        .expect("key_name in the lab inventory");
    // Same key name and algorithm, another secret.
    let fresh = std::process::Command::new("tsig-keygen")
        .args(["-a", "hmac-sha256", &key_name])
        .output()
        .expect("tsig-keygen");
    std::fs::write(bad_dir.path().join("bad.key"), &fresh.stdout).unwrap();
    // Make the wrong key matter: take one address out by hand first, so an update is needed.
    lab.kill("haproxy3");
    let serial = soa_serial();
    let out = pgdeploy(&["dns", "sync", bad_inv.to_str().unwrap()]);
    assert_ne!(out.code, 0, "{}", out.all());
    assert!(out.all().contains("TSIG key rejected"), "{}", out.all());
    assert_eq!(serial, soa_serial(), "a rejected key changed the zone");
    lab.start("haproxy3");
    wait_records(lab, inv, &all);
}

/// Rolling minor upgrade 15.18 -> 15.20 while a writer writes through HAProxy; every
/// acknowledged row must exist on the new leader and every replica afterwards.
fn upgrade_scenario(lab: &LabGuard, inv: &std::path::Path, pw: &str, lb: &str, synchronous: bool) {
    let inv_s = inv.to_str().unwrap();
    if synchronous {
        edit_inventory(inv, "synchronous_mode: false", "synchronous_mode: true");
        pgdeploy_ok(&["apply", inv_s]);
    }
    // Without --postgres: the newer minor the sources offer is named, nothing changes yet.
    let out = pgdeploy(&["upgrade", inv_s]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.all()
            .contains("PostgreSQL 15.20 is available but not in the bundle"),
        "{}",
        out.all()
    );
    pgdeploy_ok(&["bundle", inv_s, "--also-postgres", "15.20"]);
    let out = pgdeploy(&["upgrade", inv_s, "--postgres", "15.20", "--check"]);
    assert_eq!(out.code, 2, "{}", out.all());
    // The whole rolling upgrade is in the plan, step by step: the old leader goes last,
    // after a switchover, and every member is tagged out of failover while it restarts.
    let leader = wait_leader(lab);
    assert!(
        out.stdout.contains("steps, in this order:"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains(&format!("{leader}: ! switchover from {leader} to pg")),
        "{}",
        out.stdout
    );
    for pg in ["pg1", "pg2", "pg3"] {
        for on in ["true", "false"] {
            assert!(
                out.stdout.contains(&format!(
                    "{pg}: ~ tags of {pg}: nofailover, noloadbalance = {on}"
                )),
                "{}",
                out.stdout
            );
        }
        assert!(
            out.stdout
                .contains(&format!("{pg}: ? wait: {pg} runs 15.20 and streams")),
            "{}",
            out.stdout
        );
    }
    let switchover = out.stdout.find("! switchover from").unwrap();
    let leader_tagged = out
        .stdout
        .find(&format!(
            "~ tags of {leader}: nofailover, noloadbalance = true"
        ))
        .unwrap();
    assert!(switchover < leader_tagged, "{}", out.stdout);
    assert!(
        out.stdout.contains("15.18-0+deb12u1 -> 15.20-0+deb12u1"),
        "{}",
        out.stdout
    );
    let writer = Writer::start(lb, pw, "upgrade");
    let t = Instant::now();
    let out = pgdeploy(&["upgrade", inv_s, "--postgres", "15.20"]);
    let elapsed = t.elapsed();
    let w = writer.stop();
    assert_eq!(out.code, 0, "upgrade failed:\n{}", out.all());
    assert!(
        w.acknowledged.len() > 10,
        "the writer got almost no inserts acknowledged ({} errors)",
        w.errors
    );
    let mode = if synchronous { "sync" } else { "async" };
    figure(
        &format!("upgrade ({mode}): total seconds for three members"),
        elapsed.as_secs_f64(),
    );
    figure(
        &format!("upgrade ({mode}): longest gap between successful inserts (s)"),
        w.longest_gap.as_secs_f64(),
    );
    figure(
        &format!("upgrade ({mode}): acknowledged inserts"),
        w.acknowledged.len() as f64,
    );
    // Every acknowledged row is on the leader and on every replica.
    let leader = wait_leader(lab);
    wait_members_running(lab, 3);
    let acked: std::collections::BTreeSet<i64> = w.acknowledged.iter().copied().collect();
    let mut lost_max = 0;
    for pg in ["pg1", "pg2", "pg3"] {
        let t = Instant::now();
        let lost = loop {
            let have: std::collections::BTreeSet<i64> = lab
                .ssh(pg, "runuser -u postgres -- psql -d app -AtXc \"select id from pgdeploy_writer where tag = 'upgrade'\"")
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            let lost = acked.difference(&have).count();
            if lost == 0 || t.elapsed() > Duration::from_secs(60) {
                break lost;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        lost_max = lost_max.max(lost);
    }
    figure(
        &format!("upgrade ({mode}): acknowledged writes lost"),
        lost_max as f64,
    );
    if synchronous {
        assert_eq!(lost_max, 0, "acknowledged writes lost in synchronous mode");
    }
    for pg in ["pg1", "pg2", "pg3"] {
        let v = lab.ssh(
            pg,
            "runuser -u postgres -- psql -AtXc 'show server_version'",
        );
        assert!(v.trim().starts_with("15.20"), "{pg} runs {v}");
        let held = lab.ssh(pg, "apt-mark showhold");
        assert!(held.contains("postgresql-15"), "{pg}: not held: {held}");
    }
    let _ = leader;
    assert!(
        std::fs::read_to_string(inv)
            .unwrap()
            .contains("version: \"15.20\""),
        "inventory not updated"
    );
    let out = pgdeploy(&["check", inv_s]);
    assert_eq!(out.code, 0, "check after the upgrade:\n{}", out.all());
}

/// The seed's proof of concept: 1 etcd, 3 Patroni, 1 HAProxy, colocated on three hosts, and a
/// pgBackRest repository host, on Debian 12 (which keeps its end-to-end run: two PostgreSQL 15
/// minors to upgrade between, and pgBackRest 2.45); a backup and a restore drill; then a
/// rolling upgrade 15.18 -> 15.20 in synchronous mode, with no acknowledged write lost.
#[test]
fn poc_cluster_end_to_end() {
    let _lock = lab_lock();
    let lab = LabGuard::up("poc", "12");
    let inv = lab.inventory();
    let inv_s = inv.to_str().unwrap();
    use_shared_bundle(&inv);
    pgdeploy_ok(&["bundle", inv_s]);
    // A Debian 12 inventory written before `platform` existed is refused with the line to
    // add, before anything is touched: by the loader when it pins PostgreSQL 15, by preflight
    // (which reads the hosts' /etc/os-release) when it leaves the version to the release.
    let old_dir = tempfile::tempdir().unwrap();
    let old_inv = old_dir.path().join("inventory.yaml");
    let abs = |f: &str| lab.dir.join(f).to_string_lossy().into_owned();
    let text = std::fs::read_to_string(&inv)
        .unwrap()
        .replace("platform: debian-12\n", "")
        .replace(
            "private_key: id_ed25519",
            &format!("private_key: {}", abs("id_ed25519")),
        )
        .replace(
            "known_hosts: known_hosts",
            &format!("known_hosts: {}", abs("known_hosts")),
        )
        .replace(
            "secret_file: tsig.key",
            &format!("secret_file: {}", abs("tsig.key")),
        )
        .replace(
            "password_file: app.password",
            &format!("password_file: {}", abs("app.password")),
        );
    std::fs::write(&old_inv, &text).unwrap();
    let out = pgdeploy(&["check", old_inv.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.all()
            .contains("PostgreSQL 15, but Debian 13 (trixie) carries PostgreSQL 17 only")
            && out.all().contains("add `platform:"),
        "{}",
        out.all()
    );
    std::fs::write(&old_inv, text.replace("  version: \"15.18\"\n", "")).unwrap();
    let out = pgdeploy(&["check", old_inv.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.all().contains("Debian GNU/Linux 12 (bookworm)")
            && out.all().contains("add `platform: debian-12`"),
        "{}",
        out.all()
    );
    assert!(
        lab.ssh("pg1", "ls /etc/pgdeploy 2>/dev/null | wc -l")
            .trim()
            == "0",
        "the refused check touched pg1"
    );
    let t = Instant::now();
    let out = pgdeploy(&["apply", inv_s]);
    assert_eq!(out.code, 0, "apply of the PoC failed:\n{}", out.all());
    figure(
        "PoC apply on four bare hosts (three members and the repository) (s)",
        t.elapsed().as_secs_f64(),
    );
    let pw = lab.app_password();
    assert_eq!(
        psql("10.231.0.21", 5000, &pw, "select pg_is_in_recovery()").unwrap(),
        "f"
    );
    assert_eq!(
        psql("10.231.0.21", 5001, &pw, "select pg_is_in_recovery()").unwrap(),
        "t"
    );
    let out = pgdeploy(&["check", inv_s]);
    assert_eq!(out.code, 0, "check after the PoC apply:\n{}", out.all());
    crate::backup::poc_backup_scenario(&lab, &inv, &pw);
    etcd_auth_scenario(&lab, "10.231.0.21", None);
    upgrade_scenario(&lab, &inv, &pw, "10.231.0.21", true);
}

/// Least privilege in etcd, asked of the etcd at `etcd_ip` from pg1: authentication is on;
/// Patroni's own certificate alone reads nothing; with its etcd user it reads and writes its
/// cluster's prefix and nothing else, and cannot change the membership; root is pgdeploy's
/// administrator certificate. A load balancer's certificate (`lb`) is refused at the TLS
/// handshake.
fn etcd_auth_scenario(lab: &LabGuard, etcd_ip: &str, lb: Option<&str>) {
    let state = lab.state_dir();
    let cluster = state.file_name().unwrap().to_string_lossy().into_owned();
    let root = "ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/pgdeploy/tls/ca.crt \
                --cert=/etc/pgdeploy/tls/etcd-root.pem --key=/etc/pgdeploy/tls/etcd-root-key.pem";
    let etcd_host = if lb.is_some() { "etcd1" } else { "pg1" };
    let users = lab.ssh(etcd_host, &format!("{root} user list"));
    let mut users: Vec<&str> = users.lines().map(str::trim).collect();
    users.sort();
    assert_eq!(
        users,
        ["patroni-".to_string() + &cluster, "root".into()],
        "etcd users"
    );
    let role = lab.ssh(etcd_host, &format!("{root} role get patroni-{cluster}"));
    assert!(
        role.contains(&format!("[/service/{cluster}/, /service/{cluster}0)")),
        "the role's permission: {role}"
    );
    if let Some(lb) = lb {
        let tls = state.join("tls");
        let crt = std::fs::read_to_string(tls.join(format!("{lb}.crt"))).unwrap();
        let key = std::fs::read_to_string(tls.join(format!("{lb}.key"))).unwrap();
        lab.ssh(
            "pg1",
            &format!(
                "umask 077; cat > /tmp/lb.crt <<'EOF'\n{crt}EOF\ncat > /tmp/lb.key <<'EOF'\n{key}EOF\n"
            ),
        );
    }
    let py = format!(
        r#"import base64, http.client, json, ssl, yaml
def post(pair, path, body, token=None):
    try:
        c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        c.load_verify_locations('/etc/pgdeploy/tls/ca.crt')
        c.load_cert_chain(*pair)
        h = http.client.HTTPSConnection('{etcd_ip}', 2379, context=c, timeout=10)
        hd = {{'Content-Type': 'application/json'}}
        if token:
            hd['Authorization'] = token
        h.request('POST', path, json.dumps(body), hd)
        r = h.getresponse()
        return [r.status, r.read().decode()]
    except Exception as e:
        return [0, type(e).__name__ + ': ' + str(e)]
b64 = lambda s: base64.b64encode(s.encode()).decode()
me = ('/etc/pgdeploy/tls/patroni.crt', '/etc/pgdeploy/tls/patroni.key')
e = yaml.safe_load(open('/etc/patroni/config.yml'))['etcd3']
out = {{}}
out['no_token'] = post(me, '/v3/kv/range', {{'key': b64('/service/{cluster}/leader')}})
s, b = post(me, '/v3/auth/authenticate', {{'name': e['username'], 'password': e['password']}})
tok = json.loads(b).get('token') if s == 200 else None
out['authenticate'] = [s, 'token' if tok else b]
out['own_read'] = post(me, '/v3/kv/range', {{'key': b64('/service/{cluster}/leader')}}, tok)
out['own_write'] = post(me, '/v3/kv/put', {{'key': b64('/service/{cluster}/pgdeploy-test'), 'value': b64('x')}}, tok)
out['own_delete'] = post(me, '/v3/kv/deleterange', {{'key': b64('/service/{cluster}/pgdeploy-test')}}, tok)
out['other_read'] = post(me, '/v3/kv/range', {{'key': b64('/service/other/leader')}}, tok)
out['other_write'] = post(me, '/v3/kv/put', {{'key': b64('/pgdeploy-test'), 'value': b64('x')}}, tok)
out['member_add'] = post(me, '/v3/cluster/member/add', {{'peerURLs': ['https://10.231.0.99:2380']}}, tok)
def handshake(pair):
    # Only read after the handshake: etcd's alert then arrives as such (a write could meet
    # the closed connection first, as a broken pipe).
    try:
        c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        c.load_verify_locations('/etc/pgdeploy/tls/ca.crt')
        c.load_cert_chain(*pair)
        s = c.wrap_socket(socket.create_connection(('{etcd_ip}', 2379), timeout=5), server_hostname='{etcd_ip}')
        s.settimeout(3)
        try:
            s.recv(1)
        except socket.timeout:
            pass
        return [1, 'accepted']
    except Exception as e:
        return [0, type(e).__name__ + ': ' + str(e)]
import os, socket
if os.path.exists('/tmp/lb.crt'):
    out['lb'] = handshake(('/tmp/lb.crt', '/tmp/lb.key'))
    out['patroni_handshake'] = handshake(me)
print(json.dumps(out))
"#
    );
    let text = lab.ssh(
        "pg1",
        &format!("python3 - <<'PY'\n{py}PY\nrm -f /tmp/lb.crt /tmp/lb.key"),
    );
    let v: serde_json::Value =
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    let status = |k: &str| v[k][0].as_u64().unwrap();
    let body = |k: &str| v[k][1].as_str().unwrap().to_string();
    assert!(
        status("no_token") != 200
            && (body("no_token").contains("user name is empty")
                || body("no_token").contains("permission denied")),
        "a read with Patroni's certificate and no etcd user: {}",
        v["no_token"]
    );
    assert_eq!(v["authenticate"], serde_json::json!([200, "token"]));
    assert_eq!(status("own_read"), 200, "{}", v["own_read"]);
    assert!(
        body("own_read").contains("\"kvs\""),
        "the leader key: {}",
        v["own_read"]
    );
    assert_eq!(status("own_write"), 200, "{}", v["own_write"]);
    assert_eq!(status("own_delete"), 200, "{}", v["own_delete"]);
    for k in ["other_read", "other_write", "member_add"] {
        assert!(
            status(k) != 200 && body(k).contains("permission denied"),
            "{k} as Patroni's etcd user: {}",
            v[k]
        );
    }
    if lb.is_some() {
        assert_eq!(
            v["patroni_handshake"],
            serde_json::json!([1, "accepted"]),
            "the same handshake with Patroni's certificate"
        );
        assert_eq!(
            status("lb"),
            0,
            "a load balancer's certificate: {}",
            v["lb"]
        );
        assert!(
            body("lb").to_lowercase().contains("certificate"),
            "refused at the handshake: {}",
            v["lb"]
        );
        println!("etcd refuses a load balancer's certificate: {}", body("lb"));
    }
}

/// `pgdeploy status`: healthy (exit 0) on the converged lab; a replica powered off shows as a
/// problem (exit 1); healthy again after it boots.
fn status_scenario(lab: &LabGuard, inv: &std::path::Path) {
    let inv_s = inv.to_str().unwrap();
    let t = Instant::now();
    let out = pgdeploy(&["status", inv_s]);
    figure(
        "status on the converged nine-host lab (s)",
        t.elapsed().as_secs_f64(),
    );
    assert_eq!(out.code, 0, "status of a healthy cluster:\n{}", out.all());
    assert!(out.stdout.contains("healthy"), "{}", out.stdout);
    let json = pgdeploy(&["status", inv_s, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("status json");
    assert_eq!(v["patroni"].as_array().map(|a| a.len()), Some(3), "{v}");
    let leader = wait_leader(lab);
    let replica = ["pg1", "pg2", "pg3"]
        .into_iter()
        .find(|p| *p != leader)
        .unwrap();
    lab.kill(replica);
    let out = pgdeploy(&["status", inv_s]);
    assert_eq!(out.code, 1, "status with {replica} down:\n{}", out.all());
    assert!(
        out.stdout.contains(&format!("{replica}: unreachable")),
        "{}",
        out.stdout
    );
    lab.start(replica);
    let t = Instant::now();
    loop {
        let out = pgdeploy(&["status", inv_s]);
        if out.code == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "status never healthy again:\n{}",
            out.all()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Byte range of a host's entry (`- name:` line and the address line after it).
fn host_entry(text: &str, name: &str) -> std::ops::Range<usize> {
    let anchor = format!("    - name: {name}\n");
    let at = text
        .find(&anchor)
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"));
    // The end of the entry's address line (the last line may have no newline).
    let rest = at + anchor.len();
    at..text[rest..].find('\n').map_or(text.len(), |i| rest + i + 1)
}

/// A host entry for the lab inventory, after `after` in its group.
fn add_host(inv: &std::path::Path, after: &str, name: &str, address: &str) {
    let mut text = std::fs::read_to_string(inv).unwrap();
    let end = host_entry(&text, after).end;
    let sep = if text[..end].ends_with('\n') {
        ""
    } else {
        "\n"
    };
    text.insert_str(
        end,
        &format!("{sep}    - name: {name}\n      address: \"{address}\"\n"),
    );
    std::fs::write(inv, text).unwrap();
}

fn remove_host(inv: &std::path::Path, name: &str) {
    let mut text = std::fs::read_to_string(inv).unwrap();
    text.replace_range(host_entry(&text, name), "");
    std::fs::write(inv, text).unwrap();
}

fn etcd_members(lab: &LabGuard) -> Vec<String> {
    let out = lab.ssh(
        "etcd1",
        "ETCDCTL_API=3 etcdctl --endpoints=https://10.231.0.11:2379 --cacert=/etc/pgdeploy/tls/ca.crt \
         --cert=/etc/pgdeploy/tls/etcd-root.pem --key=/etc/pgdeploy/tls/etcd-root-key.pem member list -w simple",
    );
    let mut v: Vec<String> = out
        .lines()
        .filter_map(|l| l.split(", ").nth(2).map(String::from))
        .collect();
    v.sort();
    v
}

fn etcd_healthy_count(lab: &LabGuard) -> usize {
    lab.ssh_out(
        "etcd1",
        "ETCDCTL_API=3 etcdctl --endpoints=https://10.231.0.11:2379 --cacert=/etc/pgdeploy/tls/ca.crt \
         --cert=/etc/pgdeploy/tls/etcd-root.pem --key=/etc/pgdeploy/tls/etcd-root-key.pem endpoint health --cluster 2>&1",
    )
    .stdout
    .matches("is healthy")
    .count()
}

fn replication_slots(lab: &LabGuard, leader: &str) -> String {
    lab.ssh(
        leader,
        "runuser -u postgres -- psql -AtXc 'select slot_name from pg_replication_slots order by 1'",
    )
}

/// Grow and shrink by editing the inventory, while a writer writes through HAProxy:
/// Patroni 3 -> 4 -> 3, the leader's removal refused, etcd 3 -> 5 -> 3, an even etcd size
/// refused without --allow-even-etcd. After each step `check` is empty.
fn scaling_scenario(lab: &LabGuard, inv: &std::path::Path, pw: &str) {
    let inv_s = inv.to_str().unwrap();
    let base = std::fs::read_to_string(inv).unwrap();
    let spare1 = lab.address("spare1");
    let spare2 = lab.address("spare2");
    let spare3 = lab.address("spare3");
    let writer = Writer::start("10.231.0.31", pw, "scaling");
    let before = service_starts(lab);

    // Patroni 3 -> 4: check shows the new member, reloads elsewhere, and no restart.
    add_host(inv, "pg3", "pg4", &spare1);
    let out = pgdeploy(&["check", inv_s]);
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(out.stdout.contains("  pg4:"), "{}", out.stdout);
    assert!(
        out.stdout.contains("unit reload haproxy.service"),
        "{}",
        out.stdout
    );
    // Only the repository's pgBackRest TLS server restarts: it reads its authorized clients
    // (now pg4 too) when it starts. No database, etcd or HAProxy service restarts.
    let restarts: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains("unit restart") && !l.contains("pgdeploy-pgbackrest.service"))
        .collect();
    assert!(restarts.is_empty(), "{restarts:?}\n{}", out.stdout);
    assert!(
        !out.stdout.contains("! restart PostgreSQL"),
        "{}",
        out.stdout
    );
    let t = Instant::now();
    let out = pgdeploy(&["apply", inv_s]);
    assert_eq!(out.code, 0, "adding pg4:\n{}", out.all());
    let grow_output = out.all();
    figure("grow Patroni 3 -> 4: apply (s)", t.elapsed().as_secs_f64());
    let leader = wait_leader(lab);
    let streaming = lab.ssh(
        &leader,
        "runuser -u postgres -- psql -AtXc \"select application_name from pg_stat_replication where state = 'streaming'\"",
    );
    assert!(streaming.lines().any(|l| l == "pg4"), "{streaming}");
    for lb in ["haproxy1", "haproxy2", "haproxy3"] {
        let cfg = lab.ssh(lb, "cat /etc/haproxy/haproxy.cfg");
        assert_eq!(
            cfg.matches(&format!("server pg4 {spare1}:5432")).count(),
            2,
            "{lb}"
        );
    }
    assert_eq!(
        before,
        service_starts(lab),
        "adding a Patroni member restarted another service:\n{grow_output}"
    );
    let out = pgdeploy(&["check", inv_s]);
    assert_eq!(out.code, 0, "check after adding pg4:\n{}", out.all());

    // Removing the leader is refused, with the way out, and changes nothing.
    let leader = wait_leader(lab);
    std::fs::write(inv, &base).unwrap();
    add_host(inv, "pg3", "pg4", &spare1);
    remove_host(inv, &leader);
    let out = pgdeploy(&["apply", inv_s]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.all().contains("leads the Patroni cluster") && out.all().contains("switchover"),
        "{}",
        out.all()
    );
    assert_eq!(wait_leader(lab), leader);

    // Patroni 4 -> 3: pg4 leaves HAProxy, then Patroni, and its slot goes.
    std::fs::write(inv, &base).unwrap();
    let out = pgdeploy(&["check", inv_s]);
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stdout.contains("== retire ==") && out.stdout.contains("disable --now patroni"),
        "{}",
        out.stdout
    );
    let t = Instant::now();
    let out = pgdeploy(&["apply", inv_s]);
    assert_eq!(out.code, 0, "removing pg4:\n{}", out.all());
    figure(
        "shrink Patroni 4 -> 3: apply (s)",
        t.elapsed().as_secs_f64(),
    );
    let list = lab.ssh(
        &leader,
        "patronictl -c /etc/patroni/config.yml list -f json",
    );
    assert!(!list.contains("\"pg4\""), "{list}");
    assert!(!replication_slots(lab, &leader).contains("pg4"));
    assert_eq!(
        lab.ssh("spare1", "systemctl is-enabled patroni || true")
            .trim(),
        "disabled"
    );
    let cfg = lab.ssh("haproxy2", "cat /etc/haproxy/haproxy.cfg");
    assert!(!cfg.contains("server pg4"), "{cfg}");
    let out = pgdeploy(&["check", inv_s]);
    assert_eq!(out.code, 0, "check after removing pg4:\n{}", out.all());

    // etcd 3 -> 5, one member at a time, no restart of the others.
    let before = service_starts(lab);
    add_host(inv, "etcd3", "etcd4", &spare2);
    add_host(inv, "etcd4", "etcd5", &spare3);
    let t = Instant::now();
    let out = pgdeploy(&["apply", inv_s]);
    assert_eq!(out.code, 0, "etcd 3 -> 5:\n{}", out.all());
    figure("grow etcd 3 -> 5: apply (s)", t.elapsed().as_secs_f64());
    assert_eq!(
        etcd_members(lab),
        ["etcd1", "etcd2", "etcd3", "etcd4", "etcd5"]
    );
    assert_eq!(etcd_healthy_count(lab), 5);
    assert_eq!(
        before,
        service_starts(lab),
        "growing etcd restarted a service"
    );
    let out = pgdeploy(&["check", inv_s]);
    assert_eq!(out.code, 0, "check after etcd 3 -> 5:\n{}", out.all());

    // 5 -> 4 is refused without the flag.
    remove_host(inv, "etcd5");
    let out = pgdeploy(&["check", inv_s]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.all().contains("--allow-even-etcd"), "{}", out.all());
    // status reads the membership from the cluster and flags the member left out.
    let out = pgdeploy(&["status", inv_s]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stdout
            .contains("etcd member etcd5 is in the cluster but not in the inventory"),
        "{}",
        out.all()
    );

    // etcd 5 -> 3.
    std::fs::write(inv, &base).unwrap();
    let t = Instant::now();
    let out = pgdeploy(&["apply", inv_s]);
    assert_eq!(out.code, 0, "etcd 5 -> 3:\n{}", out.all());
    figure("shrink etcd 5 -> 3: apply (s)", t.elapsed().as_secs_f64());
    assert_eq!(etcd_members(lab), ["etcd1", "etcd2", "etcd3"]);
    assert_eq!(etcd_healthy_count(lab), 3);
    let out = pgdeploy(&["history", inv_s, "last"]);
    assert!(
        out.stdout.contains("etcdctl member remove") && out.stdout.contains("etcd5"),
        "the journal of the last run:\n{}",
        out.all()
    );
    for spare in ["spare2", "spare3"] {
        assert_eq!(
            lab.ssh(spare, "systemctl is-active etcd || true").trim(),
            "inactive"
        );
    }
    let out = pgdeploy(&["check", inv_s]);
    assert_eq!(out.code, 0, "check after etcd 5 -> 3:\n{}", out.all());

    // HAProxy 3 -> 2 -> 3: the DNS record set follows the inventory.
    remove_host(inv, "haproxy3");
    let out = pgdeploy(&["apply", inv_s]);
    assert_eq!(out.code, 0, "haproxy 3 -> 2:\n{}", out.all());
    assert_eq!(dns_records(lab), ["10.231.0.31", "10.231.0.32"]);
    assert_eq!(pgdeploy(&["check", inv_s]).code, 0);
    std::fs::write(inv, &base).unwrap();
    let out = pgdeploy(&["apply", inv_s]);
    assert_eq!(out.code, 0, "haproxy 2 -> 3:\n{}", out.all());
    assert_eq!(
        dns_records(lab),
        ["10.231.0.31", "10.231.0.32", "10.231.0.33"]
    );
    assert_eq!(pgdeploy(&["check", inv_s]).code, 0);

    let w = writer.stop();
    assert!(w.acknowledged.len() > 10, "writer: {} errors", w.errors);
    figure(
        "scaling: longest gap between acknowledged inserts (s)",
        w.longest_gap.as_secs_f64(),
    );
    assert!(
        w.longest_gap < Duration::from_secs(15),
        "writes failed for {:?} while scaling",
        w.longest_gap
    );
    // Every acknowledged insert is on the leader.
    let leader = wait_leader(lab);
    let have: std::collections::BTreeSet<i64> = lab
        .ssh(&leader, "runuser -u postgres -- psql -d app -AtXc \"select id from pgdeploy_writer where tag = 'scaling'\"")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let lost = w
        .acknowledged
        .iter()
        .filter(|id| !have.contains(id))
        .count();
    figure("scaling: acknowledged inserts", w.acknowledged.len() as f64);
    assert_eq!(lost, 0, "acknowledged inserts lost while scaling");
}

/// Wait until the writer has `n` more inserts acknowledged under `tag` (a condition, so the
/// outage starts while writes flow).
fn wait_rows(pw: &str, tag: &str, n: i64) {
    let count = || {
        psql(
            "10.231.0.32",
            5000,
            pw,
            &format!("select count(*) from pgdeploy_writer where tag = '{tag}'"),
        )
        .ok()
        .and_then(|c| c.trim().parse::<i64>().ok())
    };
    let start = count().unwrap_or(0);
    let t = Instant::now();
    while count().unwrap_or(0) < start + n {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the writer does not write"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Power hosts back on together (each `lab start` waits for its host to boot).
fn start_all(lab: &LabGuard, hosts: &[&str]) {
    std::thread::scope(|sc| {
        for h in hosts {
            sc.spawn(move || lab.start(h));
        }
    });
}

fn wait_etcd_healthy(lab: &LabGuard, n: usize) {
    let t = Instant::now();
    while etcd_healthy_count(lab) < n {
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "etcd never had {n} healthy members again"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Every acknowledged id of `w` is in the table, read on the leader.
fn lost_writes(lab: &LabGuard, tag: &str, w: &WriterReport) -> usize {
    let leader = wait_leader(lab);
    let rows = lab.ssh(
        &leader,
        &format!("runuser -u postgres -- psql -d app -AtXc \"select id from pgdeploy_writer where tag = '{tag}'\""),
    );
    let have: std::collections::BTreeSet<i64> =
        rows.lines().filter_map(|l| l.trim().parse().ok()).collect();
    w.acknowledged
        .iter()
        .filter(|id| !have.contains(id))
        .count()
}

/// A store outage (Patroni's failsafe mode, on by default). etcd2 and etcd3 are powered off
/// for 60 s, so etcd has no quorum: with every Patroni member reachable, the leader stays
/// primary and writes through HAProxy go on (none fails after the first HA loop), and nothing
/// acknowledged is lost. Then the same outage with a replica powered off too: the leader
/// cannot confirm that every member stays a replica, and demotes, as Patroni intends.
fn store_outage_scenario(lab: &LabGuard, pw: &str) {
    let leader = wait_leader(lab);
    let dcs = lab.ssh(&leader, "patronictl -c /etc/patroni/config.yml show-config");
    assert!(dcs.contains("failsafe_mode: true"), "{dcs}");

    let writer = Writer::start("10.231.0.31", pw, "store_outage");
    wait_rows(pw, "store_outage", 5);
    let t0 = Instant::now();
    lab.kill("etcd2");
    lab.kill("etcd3");
    // The outage's length is the scenario itself (60 s), not a wait for a condition.
    std::thread::sleep(Duration::from_secs(60).saturating_sub(t0.elapsed()));
    let during = psql(
        "10.231.0.33",
        5000,
        pw,
        "insert into pgdeploy_writer (tag) values ('store_outage') returning id",
    );
    start_all(lab, &["etcd2", "etcd3"]);
    wait_etcd_healthy(lab, 3);
    wait_members_running(lab, 3);
    wait_rows(pw, "store_outage", 5);
    let w = writer.stop();
    // Patroni notices the DCS is gone within one loop and its retries (loop_wait 2 s +
    // retry_timeout 3 s); from then on failsafe mode keeps the leader.
    let first_loop = t0 + Duration::from_secs(2 + 3 + 2);
    let late: Vec<f64> = w
        .error_times
        .iter()
        .filter(|t| **t > first_loop)
        .map(|t| t.duration_since(t0).as_secs_f64())
        .collect();
    figure(
        "etcd quorum lost 60 s: longest write gap (s)",
        w.longest_gap.as_secs_f64(),
    );
    figure(
        "etcd quorum lost 60 s: failed writes after the first HA loop",
        late.len() as f64,
    );
    figure(
        "etcd quorum lost 60 s: acknowledged writes",
        w.acknowledged.len() as f64,
    );
    let lost = lost_writes(lab, "store_outage", &w);
    figure(
        "etcd quorum lost 60 s: acknowledged writes lost",
        lost as f64,
    );
    assert!(
        during.is_ok(),
        "a write 60 s into the outage failed: {during:?}"
    );
    assert!(
        late.is_empty(),
        "writes failed during the store outage, at (s after it began): {late:?}"
    );
    assert_eq!(lost, 0, "acknowledged writes lost");

    // The same outage with a replica powered off too: the leader must demote.
    let leader = wait_leader(lab);
    let replica = ["pg1", "pg2", "pg3"]
        .into_iter()
        .find(|p| *p != leader)
        .unwrap();
    let writer = Writer::start("10.231.0.31", pw, "store_outage_2");
    wait_rows(pw, "store_outage_2", 5);
    let t0 = Instant::now();
    lab.kill(replica);
    lab.kill("etcd2");
    lab.kill("etcd3");
    loop {
        let o = lab.ssh_out(
            &leader,
            "runuser -u postgres -- psql -AtXc 'select pg_is_in_recovery()'",
        );
        if o.code != 0 || o.stdout.trim() != "f" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{leader} still runs as primary {:?} after losing etcd and {replica}",
            t0.elapsed()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    figure(
        "etcd quorum lost and a replica down: seconds until the leader demoted",
        t0.elapsed().as_secs_f64(),
    );
    start_all(lab, &[replica, "etcd2", "etcd3"]);
    wait_etcd_healthy(lab, 3);
    wait_leader(lab);
    wait_members_running(lab, 3);
    wait_rows(pw, "store_outage_2", 5);
    let w = writer.stop();
    figure(
        "etcd quorum lost and a replica down: longest write gap (s)",
        w.longest_gap.as_secs_f64(),
    );
    // Asynchronous replication: the member that leads afterwards may miss the last writes
    // of the one that demoted (at most maximum_lag_on_failover), so this is a figure only.
    figure(
        "etcd quorum lost and a replica down: acknowledged writes lost (asynchronous)",
        lost_writes(lab, "store_outage_2", &w) as f64,
    );
}

/// The PEM certificate that `host:port` presents, as seen from pg1 (TLS with pg1's client
/// certificate, verified against the cluster CA).
fn served_cert(lab: &LabGuard, addr: &str, port: u16) -> String {
    let py = format!(
        "import socket, ssl\n\
         c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)\n\
         c.check_hostname = False\n\
         c.load_verify_locations('/etc/pgdeploy/tls/ca.crt')\n\
         c.load_cert_chain('/etc/pgdeploy/tls/pg1.crt', '/etc/pgdeploy/tls/pg1.key')\n\
         s = c.wrap_socket(socket.create_connection(('{addr}', {port}), timeout=10))\n\
         print(ssl.DER_cert_to_PEM_cert(s.getpeercert(True)))\n"
    );
    lab.ssh("pg1", &format!("python3 - <<'PY'\n{py}PY\n"))
        .split_whitespace()
        .collect()
}

fn pem_text(s: &str) -> String {
    s.split_whitespace().collect()
}

/// Every host certificate is re-issued (here: the local copies are deleted, as an operator
/// does to renew them before they expire) and applied while a writer writes through HAProxy.
/// A re-issue keeps each host's key, so only certificates change: etcd serves the new one at
/// its next handshake with no restart, Patroni after a reload. Nothing restarts, no write
/// fails, no member demotes, nothing is lost.
fn cert_reissue_scenario(lab: &LabGuard, inv: &std::path::Path, pw: &str) {
    let tls = lab.state_dir().join("tls");
    let hosts = [
        "etcd1", "etcd2", "etcd3", "pg1", "pg2", "pg3", "haproxy1", "haproxy2", "haproxy3",
    ];
    let keys_before: Vec<String> = hosts
        .iter()
        .map(|h| std::fs::read_to_string(tls.join(format!("{h}.key"))).unwrap())
        .collect();
    let served_before = served_cert(lab, "10.231.0.11", 2379);
    for h in hosts {
        std::fs::remove_file(tls.join(format!("{h}.crt"))).unwrap();
    }
    let out = pgdeploy(&["check", inv.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stdout.contains("~ file /etc/pgdeploy/tls/etcd.crt")
            && out.stdout.contains("~ file /etc/pgdeploy/tls/patroni.crt")
            && out.stdout.contains("~ file /etc/pgdeploy/tls/haproxy1.crt"),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains(".key ("),
        "a re-issue changed a key file:\n{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains("restart etcd.service") && !out.stdout.contains("restart patroni"),
        "a certificate re-issue must restart nothing:\n{}",
        out.stdout
    );

    let leader = wait_leader(lab);
    let timeline = lab.ssh(
        &leader,
        "runuser -u postgres -- psql -AtXc 'select timeline_id from pg_control_checkpoint()'",
    );
    let starts = service_starts(lab);
    let writer = Writer::start("10.231.0.31", pw, "cert_reissue");
    wait_rows(pw, "cert_reissue", 5);
    let t = Instant::now();
    let out = pgdeploy(&["apply", inv.to_str().unwrap()]);
    let secs = t.elapsed().as_secs_f64();
    wait_rows(pw, "cert_reissue", 5);
    let w = writer.stop();
    assert_eq!(out.code, 0, "{}", out.all());
    figure("every certificate re-issued: apply (s)", secs);
    figure(
        "every certificate re-issued: longest write gap (s)",
        w.longest_gap.as_secs_f64(),
    );
    figure(
        "every certificate re-issued: failed writes",
        w.errors as f64,
    );
    let lost = lost_writes(lab, "cert_reissue", &w);
    assert_eq!(
        w.errors, 0,
        "writes failed while certificates were replaced"
    );
    assert_eq!(lost, 0, "acknowledged writes lost");
    assert_eq!(wait_leader(lab), leader, "the leader changed");
    assert_eq!(
        lab.ssh(
            &leader,
            "runuser -u postgres -- psql -AtXc 'select timeline_id from pg_control_checkpoint()'",
        ),
        timeline,
        "a member was promoted"
    );
    assert_eq!(starts, service_starts(lab), "a service restarted");
    for (h, before) in hosts.iter().zip(&keys_before) {
        let now = std::fs::read_to_string(tls.join(format!("{h}.key"))).unwrap();
        assert_eq!(&now, before, "{h}: the key changed");
    }
    // etcd (client and peer port) and Patroni's REST API present the new certificates.
    let new_etcd1 = pem_text(&std::fs::read_to_string(tls.join("etcd1.crt")).unwrap());
    assert_ne!(served_before, new_etcd1);
    assert_eq!(served_cert(lab, "10.231.0.11", 2379), new_etcd1);
    assert_eq!(served_cert(lab, "10.231.0.11", 2380), new_etcd1);
    for (pg, addr) in [
        ("pg1", "10.231.0.21"),
        ("pg2", "10.231.0.22"),
        ("pg3", "10.231.0.23"),
    ] {
        let want = pem_text(&std::fs::read_to_string(tls.join(format!("{pg}.crt"))).unwrap());
        assert_eq!(served_cert(lab, addr, 8008), want, "{pg}'s REST API");
    }
    assert_eq!(pgdeploy(&["check", inv.to_str().unwrap()]).code, 0);
}

/// A workstation without the state that deployed the cluster (here: the state directory moved
/// away, as on a fresh checkout): `check` and `apply` refuse before any change, name the CA
/// fingerprints and print no secret, old or new. `state export` there and `state import
/// --replace` here bring the right state, and `check` is empty again.
fn other_state_scenario(lab: &LabGuard, inv: &std::path::Path, pw: &str) {
    let state = lab.state_dir();
    let moved = state.with_file_name("moved-away");
    std::fs::rename(&state, &moved).unwrap();
    let starts = service_starts(lab);
    let config_before = lab.ssh(
        "pg1",
        "sha256sum /etc/patroni/config.yml /etc/pgdeploy/tls/*",
    );
    for cmd in ["check", "apply"] {
        let out = pgdeploy(&[cmd, inv.to_str().unwrap()]);
        assert_eq!(out.code, 1, "{cmd} from another state:\n{}", out.all());
        let text = out.all();
        assert!(
            text.contains("the local state does not match the cluster on 10 host(s)")
                && text.contains("trusts the cluster CA sha256")
                && text.contains("state import"),
            "{cmd}:\n{text}"
        );
        assert!(!text.contains(pw), "{cmd} printed the deployed password");
        let new_pw = lab.secret("superuser_password");
        assert!(!text.contains(&new_pw), "{cmd} printed the new password");
    }
    assert_eq!(
        starts,
        service_starts(lab),
        "a refused run restarted a service"
    );
    assert_eq!(
        config_before,
        lab.ssh(
            "pg1",
            "sha256sum /etc/patroni/config.yml /etc/pgdeploy/tls/*"
        ),
        "a refused run changed a file"
    );
    // Bring the right state: export it where it is (here: the moved directory, under a
    // scratch inventory of the same cluster), import it with --replace.
    let scratch = tempfile::tempdir().unwrap();
    let scratch_inv = scratch.path().join("inventory.yaml");
    std::fs::copy(inv, &scratch_inv).unwrap();
    let scratch_state = scratch
        .path()
        .join(".pgdeploy")
        .join(state.file_name().unwrap());
    std::fs::create_dir_all(scratch_state.parent().unwrap()).unwrap();
    std::fs::rename(&moved, &scratch_state).unwrap();
    let file = scratch.path().join("cluster.state");
    let out = pgdeploy(&[
        "state",
        "export",
        scratch_inv.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(!out.all().contains(pw), "export printed a secret");
    let out = pgdeploy(&[
        "state",
        "import",
        inv.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    assert_eq!(
        out.code,
        1,
        "import over another state must be refused:\n{}",
        out.all()
    );
    let out = pgdeploy(&[
        "state",
        "import",
        inv.to_str().unwrap(),
        file.to_str().unwrap(),
        "--replace",
    ]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(!out.all().contains(pw), "import printed a secret");
    assert_eq!(lab.secret("superuser_password"), pw);
    let out = pgdeploy(&["check", inv.to_str().unwrap()]);
    assert_eq!(out.code, 0, "check after the import:\n{}", out.all());
}

/// The etcd group replaced by three bare hosts in one edit (as when moving from the PoC
/// layout to dedicated etcd hosts): pgdeploy sees that the Patroni members use another etcd
/// and refuses to bootstrap a second, empty one, with zero changes and the steps to take.
fn second_dcs_scenario(lab: &LabGuard, inv: &std::path::Path) {
    let base = std::fs::read_to_string(inv).unwrap();
    for (i, old) in ["etcd1", "etcd2", "etcd3"].iter().enumerate() {
        let spare = format!("spare{}", i + 1);
        add_host(inv, old, &format!("etcd{}", i + 4), &lab.address(&spare));
        remove_host(inv, old);
    }
    let starts = service_starts(lab);
    for cmd in ["check", "apply"] {
        let out = pgdeploy(&[cmd, inv.to_str().unwrap()]);
        assert_eq!(out.code, 1, "{cmd} with another etcd group:\n{}", out.all());
        assert!(
            out.all().contains("already use another etcd")
                && out.all().contains("pg1 uses etcd at 10.231.0.11:2379")
                && out.all().contains("member add"),
            "{cmd}:\n{}",
            out.all()
        );
    }
    assert_eq!(
        starts,
        service_starts(lab),
        "a refused run restarted a service"
    );
    for i in 1..=3 {
        let spare = format!("spare{i}");
        let o = lab.ssh_out(&spare, "test -e /etc/pgdeploy || test -e /var/lib/etcd");
        assert_ne!(o.code, 0, "a refused run changed {spare}");
    }
    std::fs::write(inv, base).unwrap();
    assert_eq!(pgdeploy(&["check", inv.to_str().unwrap()]).code, 0);
}

/// PostgreSQL speaks TLS: through every HAProxy, a client that verifies the certificate against
/// the DNS name with the CA from `pgdeploy ca` (`sslmode=verify-full`) gets in; one without TLS
/// is refused by pg_hba; the replicas stream over TLS.
fn tls_scenario(lab: &LabGuard, inv: &std::path::Path, pw: &str, leader: &str) {
    let out = pgdeploy(&["ca", inv.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout.starts_with("-----BEGIN CERTIFICATE-----"),
        "{}",
        out.stdout
    );
    let ca = inv.parent().unwrap().join("client-ca.crt");
    std::fs::write(&ca, &out.stdout).unwrap();
    let su = lab.secret("superuser_password");
    for lb in ["10.231.0.31", "10.231.0.32", "10.231.0.33"] {
        let verified = format!(
            "host=pg.db.lab.test hostaddr={lb} port=5000 user=app dbname=app \
             connect_timeout=5 sslmode=verify-full sslrootcert={}",
            ca.display()
        );
        assert_eq!(
            psql_conn(
                &verified,
                pw,
                "select ssl from pg_stat_ssl where pid = pg_backend_pid()"
            ),
            Ok("t".to_string()),
            "{lb}: verify-full against the DNS name"
        );
        let plain =
            format!("host={lb} port=5000 user=app dbname=app connect_timeout=5 sslmode=disable");
        let e = psql_conn(&plain, pw, "select 1").expect_err("a connection without TLS got in");
        assert!(e.contains("no encryption"), "{lb}: {e}");
        // The superuser stays home: refused through HAProxy even with TLS and its password.
        let superuser = format!(
            "host={lb} port=5000 user=postgres dbname=postgres connect_timeout=5 sslmode=require"
        );
        let e = psql_conn(&superuser, &su, "select 1")
            .expect_err("the superuser got in through HAProxy");
        assert!(e.contains("rejects connection"), "{lb}: {e}");
        // A CA that did not sign the member's certificate fails verification.
        let wrong_ca = verified.replace(
            &format!("sslrootcert={}", ca.display()),
            "sslrootcert=/etc/ssl/certs/ca-certificates.crt",
        );
        let e = psql_conn(&wrong_ca, pw, "select 1").expect_err("a wrong CA verified");
        assert!(e.contains("certificate verify failed"), "{lb}: {e}");
    }
    // What `connect-info` prints works as printed (plus hostaddr: the lab's name is served by
    // the lab's BIND, not by this machine's resolver): writes reach the leader, reads a
    // replica, both verified against the DNS name.
    let out = pgdeploy(&[
        "connect-info",
        inv.to_str().unwrap(),
        "--sslrootcert",
        ca.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(!out.all().contains(pw), "connect-info printed the password");
    let info: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        (info["user"].as_str(), info["dbname"].as_str()),
        (Some("app"), Some("app"))
    );
    assert!(
        info["password"]
            .as_str()
            .unwrap_or_default()
            .contains("app.password"),
        "{}",
        out.stdout
    );
    for (i, recovery) in [(0, "f"), (1, "t")] {
        let e = &info["endpoints"][i];
        let kw = e["keywords"].as_str().unwrap();
        assert!(
            kw.contains("host=pg.db.lab.test") && kw.contains("sslmode=verify-full"),
            "{kw}"
        );
        assert_eq!(
            psql_conn(
                &format!("{kw} hostaddr=10.231.0.32 connect_timeout=5"),
                pw,
                "select pg_is_in_recovery()"
            ),
            Ok(recovery.to_string()),
            "{}: {kw}",
            e["role"]
        );
    }
    let tls_streams = lab.ssh(
        leader,
        "runuser -u postgres -- psql -AtXc \"select count(*) from pg_stat_replication r join pg_stat_ssl s using (pid) where s.ssl and r.state = 'streaming'\"",
    );
    assert_eq!(tls_streams.trim(), "2", "replication over TLS");
}

/// SQL as the superuser on `host` over its local socket, in `db`.
fn local_sql(lab: &LabGuard, host: &str, db: &str, sql: &str) -> String {
    lab.ssh(
        host,
        &format!(
            "runuser -u postgres -- psql -d {db} -AtX -v ON_ERROR_STOP=1 -c {}",
            pgdeploy::shell::sh_quote(sql)
        ),
    )
    .trim()
    .to_string()
}

/// Roles and databases as code: the lab's declared `app` (owner of database `app`, with
/// pg_trgm) and `app_ro` (its reader) are there; a changed connection limit and a new
/// extension show in `check` and `apply` applies them; a role left out of the inventory is
/// kept and `check` says so; a role marked absent that owns a table is refused until the table
/// is gone; a password changed by hand is put back, one set to the same value is left alone; a
/// password file readable by others is refused before any host is contacted.
fn catalog_scenario(lab: &LabGuard, inv: &std::path::Path, pw: &str, leader: &str) {
    let inv_s = inv.to_str().unwrap();
    // The reader reads what the owner creates later, and writes nothing.
    psql(
        "10.231.0.31",
        5000,
        pw,
        "create table catalog_probe (x int); insert into catalog_probe values (1)",
    )
    .unwrap();
    let leader = {
        let l = wait_leader(lab);
        if l != leader {
            println!("leader moved from {leader} to {l}");
        }
        l
    };
    assert_eq!(
        local_sql(
            lab,
            &leader,
            "app",
            "select has_table_privilege('app_ro', 'catalog_probe', 'SELECT'), \
             has_table_privilege('app_ro', 'catalog_probe', 'INSERT'), \
             has_database_privilege('pgdeploy_check', 'app', 'CONNECT'), \
             shobj_description((select oid from pg_roles where rolname = 'app'), 'pg_authid'), \
             (select count(*) from pg_extension where extname = 'pg_trgm')"
        ),
        "t|f|f|managed by pgdeploy|1"
    );
    local_sql(lab, &leader, "app", "drop table catalog_probe");

    // A new connection limit and a new extension: check shows both, apply applies them.
    edit_inventory(inv, "connection_limit: 20", "connection_limit: 50");
    edit_inventory(
        inv,
        "extensions: [pg_trgm]",
        "extensions: [pg_trgm, citext]",
    );
    let t = Instant::now();
    let out = pgdeploy(&["check", inv_s]);
    figure(
        "check with a changed role and extension (s)",
        t.elapsed().as_secs_f64(),
    );
    assert_eq!(out.code, 2, "{}", out.all());
    for want in [
        "~ role app connection limit 20 -> 50",
        "+ extension citext in database app",
    ] {
        assert!(out.stdout.contains(want), "{want}:\n{}", out.stdout);
    }
    let out = pgdeploy(&["apply", inv_s]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(pgdeploy(&["check", inv_s]).code, 0);
    assert_eq!(
        local_sql(
            lab,
            &leader,
            "app",
            "select (select rolconnlimit from pg_roles where rolname = 'app'), \
             (select count(*) from pg_extension where extname = 'citext')"
        ),
        "50|1"
    );

    // A role left out of the inventory is kept, and check says so.
    let ro = "  - { name: app_ro, login: false }\n";
    edit_inventory(
        inv,
        ro,
        &format!("{ro}  - {{ name: report, login: false }}\n"),
    );
    assert_eq!(pgdeploy(&["apply", inv_s]).code, 0);
    edit_inventory(inv, "  - { name: report, login: false }\n", "");
    let out = pgdeploy(&["check", inv_s]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout
            .contains("= role report is not in the inventory: kept"),
        "{}",
        out.stdout
    );
    // Marked absent while it owns a table: refused, saying what it owns; dropped once the
    // table is gone.
    local_sql(
        lab,
        &leader,
        "app",
        "create table report_t (x int); alter table report_t owner to report",
    );
    edit_inventory(
        inv,
        ro,
        &format!("{ro}  - {{ name: report, state: absent }}\n"),
    );
    let out = pgdeploy(&["check", inv_s]);
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stdout
            .contains("- role report (refused while it owns 1 object(s) in database app"),
        "{}",
        out.stdout
    );
    let out = pgdeploy(&["apply", inv_s]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.all()
            .contains("role report still owns 1 object(s): table report_t in database app"),
        "{}",
        out.all()
    );
    let exists = "select count(*) from pg_roles where rolname = 'report'";
    assert_eq!(local_sql(lab, &leader, "postgres", exists), "1");
    local_sql(lab, &leader, "app", "drop table report_t");
    let out = pgdeploy(&["apply", inv_s]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(local_sql(lab, &leader, "postgres", exists), "0");
    assert_eq!(pgdeploy(&["check", inv_s]).code, 0);
    edit_inventory(inv, "  - { name: report, state: absent }\n", "");

    // A password set by hand: to the same value, nothing to do; to another, put back.
    local_sql(
        lab,
        &leader,
        "postgres",
        &format!("alter role app password '{pw}'"),
    );
    let out = pgdeploy(&["check", inv_s]);
    assert_eq!(out.code, 0, "{}", out.all());
    local_sql(
        lab,
        &leader,
        "postgres",
        "alter role app password 'changed-by-hand'",
    );
    let out = pgdeploy(&["check", inv_s]);
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(out.stdout.contains("~ role app password"), "{}", out.stdout);
    assert!(!out.all().contains(pw) && !out.all().contains("SCRAM-SHA-256$"));
    let out = pgdeploy(&["apply", inv_s]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(!out.all().contains(pw), "apply printed the password");
    assert_eq!(
        psql("10.231.0.33", 5000, pw, "select current_user").unwrap(),
        "app"
    );

    // A password file others can read: refused before any host is contacted.
    let file = inv.parent().unwrap().join("app.password");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = pgdeploy(&["check", inv_s]);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.all().contains("is readable by others") && !out.all().contains("connecting to"),
        "{}",
        out.all()
    );

    // Back to the lab's inventory: the limit goes back; citext stays (never dropped), noted.
    edit_inventory(inv, "connection_limit: 50", "connection_limit: 20");
    edit_inventory(
        inv,
        "extensions: [pg_trgm, citext]",
        "extensions: [pg_trgm]",
    );
    let out = pgdeploy(&["apply", inv_s]);
    assert_eq!(out.code, 0, "{}", out.all());
    let out = pgdeploy(&["check", inv_s]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout
            .contains("= extension citext in database app is not in the inventory: kept"),
        "{}",
        out.stdout
    );
    local_sql(lab, &leader, "app", "drop extension citext");
}
