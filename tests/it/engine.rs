//! Integration tests: the engine through the `pgdeploy` binary, against real OpenSSH servers on
//! loopback. The test role is rooted in a temporary directory: nothing outside it is changed.

use crate::e2e::{bin, Out};
use crate::support::{require_user, TestSshd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Two loopback "hosts": each sshd also listens on its own 127.0.0.N address.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub sshd: Vec<TestSshd>,
    pub root: PathBuf,
}

pub fn address(i: usize) -> String {
    format!("127.0.0.{}", 41 + i)
}

impl Fixture {
    pub fn new(n: usize, user: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let sshd: Vec<TestSshd> = (0..n)
            .map(|i| {
                TestSshd::start_with(crate::support::SshdOptions {
                    user: user.into(),
                    extra_config: vec![format!("ListenAddress {}", address(i))],
                })
            })
            .collect();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let f = Fixture { dir, sshd, root };
        f.write_known_hosts();
        f.write_inventory(user);
        f.write_role("");
        f
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    pub fn write_known_hosts(&self) {
        let mut t = String::new();
        for (i, s) in self.sshd.iter().enumerate() {
            let mut parts = s.host_key_pub.split_whitespace();
            let (kt, k) = (parts.next().unwrap(), parts.next().unwrap());
            t.push_str(&format!("[{}]:{} {kt} {k}\n", address(i), s.port));
        }
        std::fs::write(self.known_hosts(), t).unwrap();
    }

    pub fn inventory(&self) -> PathBuf {
        self.dir.path().join("inventory.yaml")
    }

    fn write_inventory(&self, user: &str) {
        let key = self.sshd[0].client_key.display().to_string();
        let mut y = format!(
            "cluster: {{ name: enginetest }}\nssh:\n  user: {user}\n  private_key: {key}\n  known_hosts: known_hosts\n{}groups:\n",
            if user == "root" { "" } else { "  become: sudo\n" }
        );
        let host = |i: usize| {
            format!(
                "    - {{ name: h{i}, address: {}, ssh: {{ port: {}, private_key: {} }} }}\n",
                address(i),
                self.sshd[i].port,
                self.sshd[i].client_key.display()
            )
        };
        y.push_str("  etcd:\n");
        y.push_str(&host(0));
        y.push_str("  patroni:\n");
        for i in 0..self.sshd.len() {
            y.push_str(&host(i));
        }
        y.push_str("  haproxy:\n");
        y.push_str(&host(self.sshd.len() - 1));
        std::fs::write(self.inventory(), y).unwrap();
    }

    /// The test role: a directory, a rendered file, a secret file, all under `root`.
    pub fn write_role(&self, extra_files: &str) {
        let roles = self.dir.path().join("roles");
        std::fs::create_dir_all(roles.join("common")).unwrap();
        let r = self.root.display();
        std::fs::write(
            roles.join("common/role.yaml"),
            format!(
                "hosts: all\n\
                 directories:\n  - {{ path: \"{r}/{{{{ host.name }}}}/etc\", mode: \"0750\" }}\n\
                 files:\n\
                 \x20 - path: \"{r}/{{{{ host.name }}}}/etc/app.conf\"\n    template: app.conf.j2\n    mode: \"0640\"\n\
                 \x20 - path: \"{r}/{{{{ host.name }}}}/etc/secret.conf\"\n    content: \"password={{{{ secrets.superuser_password }}}}\\n\"\n    mode: \"0600\"\n    secret: true\n\
                 {extra_files}"
            ),
        )
        .unwrap();
        std::fs::write(
            roles.join("common/app.conf.j2"),
            "# managed by pgdeploy\ncluster={{ cluster.name }}\nhost={{ host.name }}\nroles={{ host.groups | join(\",\") }}\n",
        )
        .unwrap();
    }

    pub fn roles_dir(&self) -> PathBuf {
        self.dir.path().join("roles")
    }

    pub fn run(&self, cmd: &str, extra: &[&str]) -> Out {
        let inv = self.inventory();
        let roles = self.roles_dir();
        let mut args = vec![
            cmd,
            inv.to_str().unwrap(),
            "--roles-dir",
            roles.to_str().unwrap(),
            "--only",
            "common",
        ];
        args.extend_from_slice(extra);
        let o = Command::new(bin())
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    pub fn file(&self, host: &str, rel: &str) -> PathBuf {
        self.root.join(host).join(rel)
    }

    pub fn secret(&self) -> String {
        let t = std::fs::read_to_string(self.dir.path().join(".pgdeploy/enginetest/secrets.json"))
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        v["superuser_password"].as_str().unwrap().to_string()
    }
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn converge_cycle(f: &Fixture) {
    // check on a bare host: the diff, exit 2, secrets redacted.
    let out = f.run("check", &[]);
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(out.stdout.contains("+host=h0"), "{}", out.stdout);
    assert!(out.stdout.contains("+ directory"), "{}", out.stdout);
    assert!(out.stdout.contains("changes on 2 hosts"), "{}", out.stdout);
    let secret = f.secret();
    assert!(!out.stdout.contains(&secret), "secret printed by check");
    assert!(out.stdout.contains("password=<redacted>"), "{}", out.stdout);
    assert!(!f.file("h0", "etc").exists(), "check changed a host");

    // JSON carries the same plan.
    let out = f.run("check", &["--format", "json"]);
    assert_eq!(out.code, 2);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert!(v["changes"].as_u64().unwrap() >= 6, "{v}");
    assert!(!out.stdout.contains(&secret));

    // apply converges; files have content, mode; the secret is not printed.
    let out = f.run("apply", &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(!out.all().contains(&secret));
    let conf = std::fs::read_to_string(f.file("h1", "etc/app.conf")).unwrap();
    assert!(
        conf.contains("host=h1") && conf.contains("roles=patroni,haproxy"),
        "{conf}"
    );
    assert_eq!(mode(&f.file("h1", "etc/app.conf")), 0o640);
    assert_eq!(mode(&f.file("h1", "etc/secret.conf")), 0o600);
    assert_eq!(mode(&f.file("h0", "etc")), 0o750);

    // check is now empty, and a second apply changes nothing.
    let out = f.run("check", &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("No changes"), "{}", out.stdout);
    let out = f.run("apply", &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("No changes"), "{}", out.stdout);

    // Drift on a host shows as a diff against what is there, and apply repairs it.
    std::fs::write(f.file("h0", "etc/app.conf"), "edited by hand\n").unwrap();
    let out = f.run("check", &[]);
    assert_eq!(out.code, 2);
    assert!(out.stdout.contains("-edited by hand"), "{}", out.stdout);
    assert_eq!(f.run("apply", &[]).code, 0);
    assert!(std::fs::read_to_string(f.file("h0", "etc/app.conf"))
        .unwrap()
        .contains("host=h0"));
}

#[test]
fn check_apply_converge_as_root() {
    let f = Fixture::new(2, "root");
    converge_cycle(&f);
    // A written file carries the time it was written, not the archive's.
    let age = std::fs::metadata(f.file("h0", "etc/app.conf"))
        .unwrap()
        .modified()
        .unwrap()
        .elapsed()
        .unwrap_or_default();
    assert!(
        age < std::time::Duration::from_secs(3600),
        "mtime {age:?} ago"
    );
}

#[test]
fn check_apply_converge_as_sudo_user() {
    require_user("pgdtest");
    let f = Fixture::new(2, "pgdtest");
    converge_cycle(&f);
    // Written through sudo: owned by root although we logged in as pgdtest.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(f.file("h0", "etc/app.conf"))
            .unwrap()
            .uid(),
        0
    );
}

#[test]
fn a_file_failing_validation_never_goes_live() {
    let f = Fixture::new(1, "root");
    let r = f.root.display();
    f.write_role(&format!(
        "\x20 - path: \"{r}/{{{{ host.name }}}}/etc/checked.conf\"\n    content: \"x\\n\"\n    validate: \"grep -q never {{}}\"\n"
    ));
    let out = f.run("apply", &[]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.stderr.contains("failed validation"), "{}", out.stderr);
    assert!(!f.file("h0", "etc/checked.conf").exists());
    assert!(
        !f.file("h0", "etc/checked.conf.pgdeploy-new").exists(),
        "temp file left"
    );
}

#[test]
fn a_host_that_changes_what_we_write_does_not_converge() {
    let f = Fixture::new(1, "root");
    let r = f.root.display();
    // The "validation" appends to the file: the host ends up different from the plan.
    f.write_role(&format!(
        "\x20 - path: \"{r}/{{{{ host.name }}}}/etc/moving.conf\"\n    content: \"x\\n\"\n    validate: \"echo drift >> {{}}\"\n"
    ));
    let out = f.run("apply", &[]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.stderr.contains("did not converge"), "{}", out.stderr);
}

#[test]
fn unknown_host_key_is_refused_without_the_flag_and_recorded_with_it() {
    let f = Fixture::new(1, "root");
    std::fs::write(f.known_hosts(), "").unwrap();
    let out = f.run("check", &[]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stderr.contains("--accept-new-host-keys"),
        "{}",
        out.stderr
    );
    assert!(!f.file("h0", "etc").exists());
    let out = f.run("check", &["--accept-new-host-keys"]);
    assert_eq!(out.code, 2, "{}", out.all());
    let kh = std::fs::read_to_string(f.known_hosts()).unwrap();
    assert!(
        kh.contains(&format!("[{}]:{}", address(0), f.sshd[0].port)),
        "{kh}"
    );
    // Now recorded: accepted without the flag.
    assert_eq!(f.run("check", &[]).code, 2);
}

#[test]
fn changed_host_key_is_always_refused() {
    let f = Fixture::new(1, "root");
    // Another server's key recorded for this address: a changed key.
    let other = TestSshd::start();
    let mut parts = other.host_key_pub.split_whitespace();
    let (kt, k) = (parts.next().unwrap(), parts.next().unwrap());
    std::fs::write(
        f.known_hosts(),
        format!("[{}]:{} {kt} {k}\n", address(0), f.sshd[0].port),
    )
    .unwrap();
    for extra in [&[][..], &["--accept-new-host-keys"][..]] {
        let out = f.run("apply", extra);
        assert_eq!(out.code, 1, "{}", out.all());
        assert!(out.stderr.contains("HOST KEY CHANGED"), "{}", out.stderr);
    }
    assert!(
        !f.file("h0", "etc").exists(),
        "a host with a changed key was touched"
    );
}

#[test]
fn unreachable_host_is_reported_and_nothing_changes_anywhere() {
    let mut f = Fixture::new(2, "root");
    f.sshd[1].kill_all();
    let out = f.run("apply", &[]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stderr.contains("cannot connect to 1 of 2 hosts"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("h1"), "{}", out.stderr);
    assert!(
        !f.file("h0", "etc").exists(),
        "the reachable host was changed"
    );
}

/// How many logins the sshd has accepted so far.
fn logins(s: &TestSshd) -> usize {
    s.log_text().matches("Accepted publickey").count()
}

#[test]
fn a_connection_persists_for_the_next_command_and_a_lost_one_is_replaced() {
    let f = Fixture::new(1, "root");
    let out = f.run("apply", &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(logins(&f.sshd[0]), 1, "{}", f.sshd[0].log_text());
    // The next commands go through the same connection: no new login.
    for cmd in ["check", "apply", "check"] {
        let out = f.run(cmd, &[]);
        assert_eq!(out.code, 0, "{cmd}: {}", out.all());
    }
    assert_eq!(logins(&f.sshd[0]), 1, "{}", f.sshd[0].log_text());
    // A file changed by hand is still seen and repaired through it.
    std::fs::write(f.file("h0", "etc/app.conf"), "edited by hand\n").unwrap();
    assert_eq!(f.run("check", &[]).code, 2);
    assert_eq!(f.run("apply", &[]).code, 0);
    assert_eq!(f.run("check", &[]).code, 0);
    assert_eq!(logins(&f.sshd[0]), 1, "{}", f.sshd[0].log_text());

    // The connection dies (its sshd session is killed, the server stays): the next command
    // makes a new one, verified and logged in again, and works.
    let listener = f.sshd[0].pid().unwrap() as i32;
    for p in crate::support::descendants(listener) {
        // SAFETY: kill(2) on processes of this test's own sshd.
        unsafe {
            libc::kill(p, libc::SIGKILL);
        }
    }
    let out = f.run("check", &[]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(logins(&f.sshd[0]), 2, "{}", f.sshd[0].log_text());

    // A changed known_hosts is a new connection, with its host key verified again: a wrong
    // key there is refused even though a connection to the host persists.
    let good = std::fs::read_to_string(f.known_hosts()).unwrap();
    let mut t = String::new();
    for l in good.lines() {
        let mut p = l.split_whitespace();
        let (h, _) = (p.next().unwrap(), p.next().unwrap());
        t.push_str(&format!(
            "{h} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEz5Ih8Lw0K3z6yQ5lJ7x9Sx6D9m0m5kP2i6m0lQ7hG1\n"
        ));
    }
    std::fs::write(f.known_hosts(), t).unwrap();
    let out = f.run("check", &[]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.stderr.contains("h0"), "{}", out.stderr);
    assert!(
        out.stderr.to_lowercase().contains("host key"),
        "{}",
        out.stderr
    );
    std::fs::write(f.known_hosts(), good).unwrap();
    assert_eq!(f.run("check", &[]).code, 0);
}
