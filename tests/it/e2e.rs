//! Helpers for end-to-end tests on the lab: run the pgdeploy binary, reach lab hosts with the
//! system's OpenSSH client and psql, measure write availability.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Only one lab at a time on this machine (one bridge, one subnet).
pub fn lab_lock() -> tokio::sync::MutexGuard<'static, ()> {
    pgdeploy::lab::exclusive_blocking()
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_pgdeploy")
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn all(&self) -> String {
        format!("--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr)
    }
}

pub fn pgdeploy(args: &[&str]) -> Out {
    let o = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run pgdeploy");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

pub fn pgdeploy_ok(args: &[&str]) -> Out {
    let o = pgdeploy(args);
    assert_eq!(o.code, 0, "pgdeploy {args:?} failed:\n{}", o.all());
    o
}

pub fn spawn_pgdeploy(args: &[&str]) -> Child {
    Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pgdeploy")
}

/// Read the child's stderr until a line contains `needle`.
pub fn wait_for_output(child: &mut Child, needle: &str, deadline: Duration) {
    let err = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let want = needle.to_string();
    let seen = Arc::new(std::sync::Mutex::new(String::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Ok(mut s) = seen2.lock() {
                s.push_str(&line);
                s.push('\n');
            }
            if line.contains(&want) {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(deadline).is_err() {
        let status = child.try_wait().ok().flatten();
        let text = seen.lock().map(|s| s.clone()).unwrap_or_default();
        panic!("pgdeploy never printed {needle:?} within {deadline:?} (exit: {status:?}); it printed:\n{text}");
    }
}

/// Largest resident set of any child process waited for so far, in MB.
pub fn peak_child_rss_mb() -> f64 {
    // SAFETY: getrusage only writes into the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    ru.ru_maxrss as f64 / 1024.0
}

/// A figure for the benchmark record, printed in the test output.
pub fn figure(what: &str, value: f64) {
    println!("FIGURE {what}: {value:.2}");
}

/// The lab, brought up through the CLI and always torn down.
pub struct LabGuard {
    pub dir: PathBuf,
    /// The inventory as `lab up` wrote it (every host's address).
    initial_inventory: String,
    _tmp: tempfile::TempDir,
}

impl LabGuard {
    /// The lab on Debian `debian` ("12" or "13").
    pub fn up(topology: &str, debian: &str) -> LabGuard {
        Self::up_with_spares(topology, debian, 0)
    }
    /// The lab plus `spares` bare hosts spare1.. (not in the inventory) to grow onto.
    pub fn up_with_spares(topology: &str, debian: &str, spares: usize) -> LabGuard {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("lab");
        // A lab left over by a crashed run is removed first.
        let _ = pgdeploy(&["lab", "down"]);
        let t = Instant::now();
        pgdeploy_ok(&[
            "lab",
            "up",
            "--topology",
            topology,
            "--dir",
            dir.to_str().unwrap(),
            "--spares",
            &spares.to_string(),
            "--debian",
            debian,
        ]);
        figure(
            &format!("lab up {topology} on Debian {debian} (s)"),
            t.elapsed().as_secs_f64(),
        );
        let initial_inventory =
            std::fs::read_to_string(dir.join("inventory.yaml")).unwrap_or_default();
        LabGuard {
            dir,
            initial_inventory,
            _tmp: tmp,
        }
    }
    pub fn inventory(&self) -> PathBuf {
        self.dir.join("inventory.yaml")
    }
    /// pgdeploy's state directory of the lab's cluster (`.pgdeploy/<cluster>/`).
    pub fn state_dir(&self) -> PathBuf {
        let state = self.dir.join(".pgdeploy");
        std::fs::read_dir(&state)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| !p.to_string_lossy().contains(".replaced-"))
            .find(|p| p.join("tls").is_dir())
            .unwrap_or_else(|| panic!("no cluster state under {}", state.display()))
    }
    /// The lab application role's password (`app`, from the file `lab up` wrote).
    pub fn app_password(&self) -> String {
        std::fs::read_to_string(self.dir.join("app.password"))
            .expect("app.password")
            .trim()
            .to_string()
    }
    /// A generated secret, read from pgdeploy's state next to the inventory.
    pub fn secret(&self, name: &str) -> String {
        let state = self.dir.join(".pgdeploy");
        for e in std::fs::read_dir(&state).into_iter().flatten().flatten() {
            if e.path().to_string_lossy().contains(".replaced-") {
                continue;
            }
            if let Ok(t) = std::fs::read_to_string(e.path().join("secrets.json")) {
                let v: serde_json::Value = serde_json::from_str(&t).expect("secrets.json");
                return v[name].as_str().unwrap_or_default().to_string();
            }
        }
        "<no secret yet>".into()
    }
    /// A lab host's address: from the inventory as it is now, else as `lab up` wrote it (a
    /// test may have taken the host out of the inventory, as the scaling scenario does).
    pub fn address(&self, host: &str) -> String {
        let now = std::fs::read_to_string(self.inventory()).expect("inventory");
        address_in(&now, host)
            .or_else(|| address_in(&self.initial_inventory, host))
            .unwrap_or_else(|| panic!("host {host} not in the lab inventory"))
    }

    /// Run a command on a lab host as root with OpenSSH (host key verified).
    pub fn ssh(&self, host: &str, cmd: &str) -> String {
        let o = self.ssh_out(host, cmd);
        assert_eq!(o.code, 0, "ssh {host} {cmd:?} failed:\n{}", o.all());
        o.stdout
    }
    pub fn ssh_out(&self, host: &str, cmd: &str) -> Out {
        let addr = self.address(host);
        let o = Command::new("ssh")
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "ConnectTimeout=5",
                "-o",
            ])
            .arg(format!(
                "UserKnownHostsFile={}",
                self.dir.join("known_hosts").display()
            ))
            .arg("-i")
            .arg(self.dir.join("id_ed25519"))
            .arg(format!("root@{addr}"))
            .arg(cmd)
            .stdin(Stdio::null())
            .output()
            .expect("run ssh");
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
    pub fn kill(&self, host: &str) {
        pgdeploy_ok(&["lab", "kill", host]);
    }
    pub fn start(&self, host: &str) {
        pgdeploy_ok(&["lab", "start", host]);
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let o = pgdeploy(&["lab", "down"]);
        if o.code != 0 {
            eprintln!("lab down failed:\n{}", o.all());
        }
    }
}

/// Keep the bundle between runs in one cache directory (it is keyed by its content).
pub fn use_shared_bundle(inv: &Path) {
    let text = std::fs::read_to_string(inv).expect("inventory");
    // One bundle directory per release (its private apt state keeps the downloads).
    let release = text
        .lines()
        .find_map(|l| l.strip_prefix("platform:"))
        .map(|p| p.trim().to_string())
        .unwrap_or_else(|| "debian-13".into());
    let cache = format!("/var/cache/pgdeploy/test-bundle-{release}");
    let _ = std::fs::create_dir_all("/var/cache/pgdeploy");
    let new = if text.contains("bundle_dir:") {
        text.lines()
            .map(|l| {
                if l.trim_start().starts_with("bundle_dir:") {
                    let indent = &l[..l.len() - l.trim_start().len()];
                    format!("{indent}bundle_dir: {cache}")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        text.replacen("packages:", &format!("packages:\n  bundle_dir: {cache}"), 1)
    };
    std::fs::write(inv, new).expect("write inventory");
}

pub fn edit_inventory(inv: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(inv).expect("inventory");
    assert!(text.contains(from), "inventory has no {from:?}:\n{text}");
    std::fs::write(inv, text.replacen(from, to, 1)).expect("write inventory");
}

/// psql from this machine (through HAProxy) as the lab's application role `app`, in its
/// database `app` (the superuser may not connect through HAProxy).
pub fn psql(host: &str, port: u16, password: &str, sql: &str) -> Result<String, String> {
    psql_conn(
        &format!("host={host} port={port} user=app dbname=app connect_timeout=3 sslmode=require"),
        password,
        sql,
    )
}

/// psql with a libpq connection string of the caller's.
pub fn psql_conn(conninfo: &str, password: &str, sql: &str) -> Result<String, String> {
    let o = Command::new("psql")
        .arg(conninfo)
        .args(["-AtXq", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", password)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// Poll until Patroni reports a running leader; returns its member name.
pub fn wait_leader(lab: &LabGuard) -> String {
    let t = Instant::now();
    loop {
        for pg in ["pg1", "pg2", "pg3"] {
            let o = lab.ssh_out(pg, "patronictl -c /etc/patroni/config.yml list -f json");
            if o.code == 0 {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&o.stdout) {
                    for m in v.as_array().into_iter().flatten() {
                        if m["Role"] == "Leader" && m["State"] == "running" {
                            return m["Member"].as_str().unwrap_or_default().to_string();
                        }
                    }
                }
            }
        }
        assert!(t.elapsed() < Duration::from_secs(180), "no Patroni leader");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Poll until `n` Patroni members run.
pub fn wait_members_running(lab: &LabGuard, n: usize) {
    let t = Instant::now();
    loop {
        for pg in ["pg1", "pg2", "pg3"] {
            let o = lab.ssh_out(pg, "patronictl -c /etc/patroni/config.yml list -f json");
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&o.stdout) {
                let running = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter(|m| m["State"] == "running" || m["State"] == "streaming")
                            .count()
                    })
                    .unwrap_or(0);
                if running >= n {
                    return;
                }
            }
        }
        if t.elapsed() > Duration::from_secs(240) {
            let list = lab.ssh_out("pg2", "patronictl -c /etc/patroni/config.yml list");
            let logs: Vec<String> = ["pg1", "pg2", "pg3"]
                .iter()
                .map(|pg| {
                    let o = lab.ssh_out(pg, "journalctl -u patroni --no-pager -n 15 | cut -c1-220");
                    format!("--- {pg}\n{}", o.stdout)
                })
                .collect();
            panic!(
                "{n} members never ran:\n{}\n{}",
                list.all(),
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// When each managed service last started, on every host (to prove nothing restarted).
pub fn service_starts(lab: &LabGuard) -> Vec<String> {
    let mut v = Vec::new();
    for (h, units) in [
        ("etcd1", "etcd"),
        ("etcd2", "etcd"),
        ("etcd3", "etcd"),
        ("pg1", "patroni"),
        ("pg2", "patroni"),
        ("pg3", "patroni"),
        ("haproxy1", "haproxy"),
        ("haproxy2", "haproxy"),
        ("haproxy3", "haproxy"),
    ] {
        let pm = lab.ssh(
            h,
            &format!("systemctl show -p ActiveEnterTimestampMonotonic -p MainPID {units}"),
        );
        let pg = if units == "patroni" {
            // Not answering (say, starting up after a restart) is a difference too.
            let out = lab.ssh_out(
                h,
                "runuser -u postgres -- psql -AtXc 'select pg_postmaster_start_time()'",
            );
            if out.code == 0 {
                out.stdout
            } else {
                format!("(PostgreSQL does not answer: {})", out.stderr.trim())
            }
        } else {
            String::new()
        };
        v.push(format!(
            "{h}: {} {}",
            pm.trim().replace('\n', " "),
            pg.trim()
        ));
    }
    v
}

/// A writer that inserts rows through HAProxy continuously and records every acknowledged id.
pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<WriterReport>,
}

pub struct WriterReport {
    pub acknowledged: Vec<i64>,
    pub errors: usize,
    /// When each failed insert was tried.
    pub error_times: Vec<Instant>,
    pub longest_gap: Duration,
}

impl Writer {
    pub fn start(lb: &str, password: &str, tag: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let (lb, pw, tag) = (lb.to_string(), password.to_string(), tag.to_string());
        let _ = psql(&lb, 5000, &pw, "create table if not exists pgdeploy_writer (id bigserial primary key, tag text, at timestamptz default now())");
        let handle = std::thread::spawn(move || {
            let mut r = WriterReport {
                acknowledged: vec![],
                errors: 0,
                error_times: vec![],
                longest_gap: Duration::ZERO,
            };
            let mut last_ok = Instant::now();
            let started = Instant::now();
            // Bounded in time and count: at most 30 minutes, 200k inserts.
            while !s2.load(Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(1800)
                && r.acknowledged.len() < 200_000
            {
                match psql(
                    &lb,
                    5000,
                    &pw,
                    &format!("insert into pgdeploy_writer (tag) values ('{tag}') returning id"),
                ) {
                    Ok(id) => {
                        match id.lines().next().and_then(|l| l.trim().parse().ok()) {
                            Some(id) => r.acknowledged.push(id),
                            None => panic!("an acknowledged insert returned no id: {id:?}"),
                        }
                        r.longest_gap = r.longest_gap.max(last_ok.elapsed());
                        last_ok = Instant::now();
                    }
                    Err(_) => {
                        r.errors += 1;
                        r.error_times.push(Instant::now());
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
            r.longest_gap = r.longest_gap.max(last_ok.elapsed());
            r
        });
        Writer { stop, handle }
    }
    pub fn stop(self) -> WriterReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("writer thread")
    }
}

/// The address of `host` in an inventory text (flow or block style, or a spare's comment).
fn address_in(inv: &str, host: &str) -> Option<String> {
    let mut lines = inv.lines();
    while let Some(l) = lines.next() {
        if l.contains(&format!("name: {host}")) {
            if let Some(a) = l.split("address:").nth(1) {
                return Some(
                    a.trim()
                        .trim_end_matches('}')
                        .trim()
                        .trim_matches('"')
                        .to_string(),
                );
            }
            if let Some(next) = lines.next() {
                if let Some(a) = next.split("address:").nth(1) {
                    return Some(a.trim().trim_matches('"').to_string());
                }
            }
        }
    }
    None
}
