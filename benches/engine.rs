//! Benchmark: wall time of `check` and of a no-op `apply` against N loopback sshd hosts
//! (N = 1, 10, 50), with a small role rooted in a temporary directory.
//!
//!   cargo bench --bench engine        (needs /usr/sbin/sshd; as root)

#[path = "../tests/it/support.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::Instant;
use support::{machine_busy, TestSshd};

fn run(args: &[&str]) -> (i32, f64) {
    let t = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_pgdeploy"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run pgdeploy");
    let code = o.status.code().unwrap_or(-1);
    if code != 0 && code != 2 {
        panic!("pgdeploy {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    (code, t.elapsed().as_secs_f64())
}

/// CPU seconds used by finished children (pgdeploy) so far.
fn children_cpu() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // Root's login shell on a developer machine may run heavy rc files for every command; a
    // plain user with passwordless sudo (as in .ci/setup-ssh-users.sh) measures pgdeploy.
    let user = std::env::var("PGDEPLOY_BENCH_USER").unwrap_or_else(|_| {
        let exists = Command::new("id")
            .arg("pgdtest")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if exists {
            "pgdtest".into()
        } else {
            "root".into()
        }
    });
    println!("user: {user}");
    println!(
        "{:>6} {:>14} {:>14} {:>16} {:>18} {:>18}",
        "hosts",
        "first apply s",
        "check s",
        "no-op apply s",
        "check cpu pgdeploy",
        "check cpu machine"
    );
    for n in [1usize, 10, 50] {
        let dir = tempfile::tempdir().unwrap();
        let sshd: Vec<TestSshd> = (0..n)
            .map(|i| {
                TestSshd::start_with(support::SshdOptions {
                    user: user.clone(),
                    extra_config: vec![format!("ListenAddress 127.0.1.{}", i + 1)],
                })
            })
            .collect();
        let mut kh = String::new();
        let mut hosts = String::new();
        for (i, s) in sshd.iter().enumerate() {
            let mut p = s.host_key_pub.split_whitespace();
            let (kt, k) = (p.next().unwrap(), p.next().unwrap());
            kh.push_str(&format!("[127.0.1.{}]:{} {kt} {k}\n", i + 1, s.port));
            hosts.push_str(&format!(
                "    - {{ name: h{i}, address: 127.0.1.{}, ssh: {{ port: {}, private_key: {} }} }}\n",
                i + 1,
                s.port,
                s.client_key.display()
            ));
        }
        std::fs::write(dir.path().join("known_hosts"), kh).unwrap();
        let inv = dir.path().join("inventory.yaml");
        std::fs::write(
            &inv,
            format!(
                "cluster: {{ name: bench }}\nssh: {{ user: {user}, known_hosts: known_hosts{become} }}\ngroups:\n  etcd:\n    - {{ name: h0, address: 127.0.1.1, ssh: {{ port: {}, private_key: {} }} }}\n  patroni:\n{hosts}  haproxy:\n    - {{ name: h0, address: 127.0.1.1, ssh: {{ port: {}, private_key: {} }} }}\n",
                sshd[0].port,
                sshd[0].client_key.display(),
                sshd[0].port,
                sshd[0].client_key.display(),
                user = user,
                become = if user == "root" { "" } else { ", become: sudo" },
            ),
        )
        .unwrap();
        let roles = dir.path().join("roles/common");
        std::fs::create_dir_all(&roles).unwrap();
        let root = dir.path().join("root");
        std::fs::write(
            roles.join("role.yaml"),
            format!(
                "hosts: all\ndirectories:\n  - {{ path: \"{r}/{{{{ host.name }}}}\" }}\nfiles:\n{}",
                (0..5)
                    .map(|i| format!("  - {{ path: \"{r}/{{{{ host.name }}}}/f{i}.conf\", content: \"host={{{{ host.name }}}} n={i}\\n\" }}\n", r = root.display()))
                    .collect::<String>(),
                r = root.display()
            ),
        )
        .unwrap();
        let inv_s = inv.to_str().unwrap();
        let roles_s = dir.path().join("roles");
        let args = |cmd: &'static str| -> Vec<String> {
            vec![
                cmd.into(),
                inv_s.into(),
                "--roles-dir".into(),
                roles_s.to_str().unwrap().into(),
                "--only".into(),
                "common".into(),
                "--forks".into(),
                "50".into(),
            ]
        };
        let a = |cmd: &'static str| {
            let v = args(cmd);
            let r: Vec<&str> = v.iter().map(|s| s.as_str()).collect();
            run(&r)
        };
        let (_, first) = a("apply");
        let (cpu0, busy0) = (children_cpu(), machine_busy());
        let checks: Vec<f64> = (0..3)
            .map(|_| {
                let (c, t) = a("check");
                assert_eq!(c, 0);
                t
            })
            .collect();
        let cpu = (children_cpu() - cpu0) / 3.0;
        let busy = (machine_busy() - busy0) / 3.0;
        let noops: Vec<f64> = (0..3).map(|_| a("apply").1).collect();
        println!(
            "{n:>6} {first:>14.3} {:>14.3} {:>16.3} {cpu:>18.3} {busy:>18.3}",
            median(checks),
            median(noops)
        );
    }
}
