//! Integration tests: lab. Real Debian hosts in systemd-nspawn (needs root, systemd-container,
//! debootstrap, bind9, bind9-utils, bind9-dnsutils, openssh-client).
//!
//! One test function runs the scenarios in sequence: there is one lab per machine.

use pgdeploy::lab::{self, Lab, LabError, LabOptions, Topology};
use std::process::Command;
use std::time::{Duration, Instant};

/// Poll `cond` until it holds or `secs` pass.
async fn eventually<F, Fut>(secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < end,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// ssh to a lab host with host-key verification against the lab's known_hosts.
async fn ssh(lab: &Lab, host: &str, cmd: &str) -> (i32, String) {
    let mut c = lab.ssh_command(host).expect("known host");
    c.arg(cmd);
    let out = tokio::time::timeout(Duration::from_secs(30), c.output())
        .await
        .expect("ssh did not finish in 30 s")
        .expect("run ssh");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

fn sh(cmd: &str) -> (bool, String) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn assert_clean(when: &str) {
    let left = lab::leftovers();
    assert!(left.is_empty(), "{when}: lab leftovers: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lab_end_to_end() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("lab_end_to_end: skipped (needs root)");
        return;
    }
    let _guard = lab::exclusive().await;
    assert!(
        Lab::open().is_err(),
        "a lab is already up on this machine; run `pgdeploy lab down` before these tests"
    );
    assert_clean("before the test");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("lab");

    // --- a foreign bridge or subnet is refused and left alone
    assert!(sh("ip link add pgdlab0 type bridge").0);
    let r = Lab::up(LabOptions::new(Topology::Hosts(1), &dir)).await;
    let (deleted, _) = sh("ip link del pgdlab0");
    assert!(matches!(r, Err(LabError::BridgeInUse(_))), "{r:?}");
    assert!(
        deleted,
        "the foreign bridge must still exist after the refused up"
    );
    assert!(sh("ip link add pgdtest9 type veth peer name pgdtest8 && ip addr add 10.231.0.77/32 dev pgdtest9").0);
    let r = Lab::up(LabOptions::new(Topology::Hosts(1), &dir)).await;
    sh("ip link del pgdtest9");
    assert!(matches!(r, Err(LabError::SubnetInUse { .. })), "{r:?}");
    assert_clean("after refused ups");

    // --- a partial `up` (interrupted mid-way, nothing torn down) is cleaned by `down`
    let mut opts = LabOptions::new(Topology::Hosts(2), &dir);
    opts.down_on_failure = false;
    // base image first, so the interruption lands in the host setup or boot
    lab::ensure_base(&opts.cache_dir, opts.platform)
        .await
        .expect("base image");
    let cut = tokio::time::timeout(Duration::from_millis(700), Lab::up(opts)).await;
    if let Ok(Ok(l)) = cut {
        // it finished within the time: still a good test of down
        drop(l);
    }
    let rep = lab::teardown().expect("down after a partial up");
    assert!(!rep.nothing(), "the partial up created something to remove");
    assert_clean("after down of a partial up");

    // --- the real lab
    let mut opts = LabOptions::new(Topology::Poc, &dir);
    opts.down_on_drop = true; // torn down even if an assertion below panics
    let started = Instant::now();
    let mut lab = Lab::up(opts).await.expect("lab up");
    eprintln!(
        "poc lab (4 hosts) up in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let again = Lab::up(LabOptions::new(Topology::Poc, tmp.path().join("other"))).await;
    assert!(matches!(again, Err(LabError::AlreadyUp(_))), "{again:?}");

    // the inventory loads and points at the generated files
    let inv_path = lab.inventory_path().expect("poc has an inventory");
    let (inv, _) = pgdeploy::inventory::load(&inv_path).expect("inventory loads");
    assert_eq!(inv.groups.patroni.len(), 3);
    assert_eq!(inv.groups.etcd.len(), 1);
    assert_eq!(inv.groups.haproxy.len(), 1);
    assert_eq!(inv.groups.etcd[0].name, "pg1");
    assert_eq!(inv.ssh.user, "root");
    let key = inv.resolve_path(inv.ssh.private_key.as_deref().expect("private_key"));
    let kh = inv.resolve_path(inv.ssh.known_hosts.as_deref().expect("known_hosts"));
    assert_eq!(key, lab.private_key_path());
    assert_eq!(kh, lab.known_hosts_path());
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let dns = inv.dns.as_ref().expect("dns section");
    assert_eq!(dns.name, "pg.db.lab.test.");
    assert_eq!(dns.zone, "db.lab.test.");
    assert_eq!(dns.server, "10.231.0.1:53");
    let tsig = dns.tsig.as_ref().expect("tsig");
    let tsig_file = inv.resolve_path(tsig.secret_file.as_deref().expect("secret_file"));
    assert_eq!(tsig_file, lab.tsig_key_path());

    // every host: SSH with strict host-key checking, its own name, its own host key
    let known = std::fs::read_to_string(lab.known_hosts_path()).expect("known_hosts");
    let mut keys: Vec<&str> = known
        .lines()
        .filter(|l| l.contains("ssh-ed25519"))
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), 4, "each host has its own host key:\n{known}");
    for h in lab.hosts() {
        let (code, out) = ssh(&lab, &h.name, "hostname; systemctl is-system-running").await;
        assert_eq!(code, 0, "{}: {out}", h.name);
        assert_eq!(out, format!("{}\nrunning", h.name));
    }
    // verification is really on: an empty known_hosts is refused
    let empty = tmp.path().join("empty_known_hosts");
    std::fs::write(&empty, "").expect("write");
    let (ok, out) = sh(&format!(
        "ssh -F /dev/null -o BatchMode=yes -o ConnectTimeout=5 -o StrictHostKeyChecking=yes \
         -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null -i {} root@10.231.0.21 true",
        empty.display(),
        lab.private_key_path().display()
    ));
    assert!(!ok, "ssh with an empty known_hosts must fail: {out}");
    let out = lab
        .ssh("pg1", "cat /etc/machine-id")
        .await
        .expect("ssh pg1");
    let out2 = lab
        .ssh("pg2", "cat /etc/machine-id")
        .await
        .expect("ssh pg2");
    assert_eq!((out.code, out2.code), (0, 0), "{out:?} {out2:?}");
    assert_ne!(out.stdout, out2.stdout, "each host has its own machine id");
    // files from an earlier lab are never overwritten
    let r = Lab::up(LabOptions::new(Topology::Poc, &dir)).await;
    assert!(matches!(r, Err(LabError::AlreadyUp(_))), "{r:?}");
    // hosts reach each other
    let (code, out) = ssh(
        &lab,
        "pg2",
        "timeout 5 bash -c 'echo > /dev/tcp/10.231.0.23/22'",
    )
    .await;
    assert_eq!(code, 0, "pg2 -> pg3:22: {out}");

    // DNS: answers, accepts an update signed with the lab's key, refuses an unknown key
    let (ok, out) = sh("dig +short +time=2 +tries=3 @10.231.0.1 db.lab.test. SOA");
    assert!(ok && out.contains("ns1.db.lab.test."), "SOA: {out}");
    let (ok, out) = sh(&format!(
        "printf 'server 10.231.0.1\\nzone db.lab.test.\\nupdate add pg.db.lab.test. 30 A 10.231.0.21\\nsend\\n' \
         | nsupdate -t 10 -k {}",
        lab.tsig_key_path().display()
    ));
    assert!(ok, "signed update: {out}");
    let (_, out) = sh("dig +short +time=2 +tries=3 @10.231.0.1 pg.db.lab.test. A");
    assert_eq!(out.trim(), "10.231.0.21");
    let other_key = tmp.path().join("other.key");
    assert!(
        sh(&format!(
            "tsig-keygen -a hmac-sha256 pgdeploy-lab > {}",
            other_key.display()
        ))
        .0
    );
    let (ok, _) = sh(&format!(
        "printf 'server 10.231.0.1\\nzone db.lab.test.\\nupdate add evil.db.lab.test. 30 A 10.231.0.99\\nsend\\n' \
         | nsupdate -t 10 -k {}",
        other_key.display()
    ));
    assert!(!ok, "an update signed with another secret must be refused");
    let (_, out) = sh("dig +short +time=2 +tries=3 @10.231.0.1 evil.db.lab.test. A");
    assert_eq!(out.trim(), "");

    // kill = power loss; start = boot on the same disk
    let (code, _) = ssh(&lab, "pg2", "echo before-kill > /root/marker && sync").await;
    assert_eq!(code, 0);
    lab.kill("pg2").await.expect("kill pg2");
    let st = lab.status().await;
    let pg2 = st.iter().find(|s| s.name == "pg2").expect("pg2");
    assert!(!pg2.running && !pg2.ssh, "{pg2:?}");
    let (code, _) = ssh(&lab, "pg2", "true").await;
    assert_ne!(code, 0, "a killed host must not answer");
    assert!(matches!(
        lab.start("pg1").await,
        Err(LabError::HostRunning(_))
    ));
    lab.start("pg2").await.expect("start pg2");
    let (code, out) = ssh(&lab, "pg2", "cat /root/marker").await;
    assert_eq!((code, out.as_str()), (0, "before-kill"));

    // partition: cut off, processes keep running, heal
    let (code, pid) = ssh(
        &lab,
        "pg3",
        "setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $!",
    )
    .await;
    assert_eq!(code, 0);
    lab.partition("pg3").await.expect("partition");
    let (code, _) = ssh(
        &lab,
        "pg1",
        "timeout 3 bash -c 'echo > /dev/tcp/10.231.0.23/22'",
    )
    .await;
    assert_ne!(code, 0, "pg1 must not reach a partitioned pg3");
    let st = lab.status().await;
    let pg3 = st.iter().find(|s| s.name == "pg3").expect("pg3");
    assert!(pg3.running && pg3.partitioned && !pg3.ssh, "{pg3:?}");
    lab.heal("pg3").await.expect("heal");
    let l = &lab;
    eventually(60, "pg3 answers SSH after heal", || async move {
        ssh(l, "pg3", "true").await.0 == 0
    })
    .await;
    let (code, out) = ssh(&lab, "pg3", &format!("kill -0 {pid} && echo alive")).await;
    assert_eq!(
        (code, out.as_str()),
        (0, "alive"),
        "the process started before the partition"
    );
    let (code, _) = ssh(
        &lab,
        "pg1",
        "timeout 5 bash -c 'echo > /dev/tcp/10.231.0.23/22'",
    )
    .await;
    assert_eq!(code, 0, "pg1 reaches pg3 again");

    let st = lab.status().await;
    assert!(
        st.iter().all(|s| s.running && s.ssh && !s.partitioned),
        "{st:?}"
    );
    assert!(lab.named_running());

    // down leaves nothing; a second down is a no-op
    let rep = lab.down().await.expect("down");
    assert_eq!(rep.netns_removed.len(), 4);
    assert!(rep.bridge_removed);
    assert_clean("after down");
    assert!(!dir.join("inventory.yaml").exists());
    let rep = lab::teardown().expect("second down");
    assert!(rep.nothing(), "{rep:?}");

    // `up` refuses to overwrite a key it did not create
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("id_ed25519"), "not ours").expect("write");
    let r = Lab::up(LabOptions::new(Topology::Hosts(1), &dir)).await;
    assert!(matches!(r, Err(LabError::FileExists(_))), "{r:?}");
    assert_eq!(
        std::fs::read_to_string(dir.join("id_ed25519")).expect("read"),
        "not ours"
    );
    assert_clean("after a refused up");
}
