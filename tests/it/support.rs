//! Integration tests: support.
//!
//! [`TestSshd`]: a real OpenSSH server on 127.0.0.1 with everything (host key, client key,
//! authorized_keys, known_hosts, config, log) in its own temp dir, killed on Drop.

#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgdeploy::inventory::{Become, Host, Ssh};

/// Poll `cond` until it is true or `deadline` passes.
/// CPU seconds the whole machine has been busy (all cores) since boot, from /proc/stat (for
/// benchmarks: take the difference around what they measure).
pub fn machine_busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system (idle) iowait irq softirq steal
    [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|i| f.get(*i))
        .sum::<f64>()
        / 100.0
}

pub fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run a command, panic with its output if it fails.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// A free TCP port on 127.0.0.1, never the same twice in this test process (another process
/// may still take it; [`TestSshd`] checks that its own sshd got it and retries otherwise).
pub fn free_port() -> u16 {
    let mut used = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind 127.0.0.1:0");
        if !used.contains(&port) {
            used.push(port);
            return port;
        }
    }
}

/// Generate an ed25519 key pair at `path` (+ `.pub`); `passphrase` "" = unencrypted.
pub fn keygen(path: &Path, passphrase: &str, comment: &str) {
    sh(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", passphrase, "-C", comment, "-f"])
        .arg(path));
}

/// Options for [`TestSshd::start_with`].
#[derive(Clone, Debug)]
pub struct SshdOptions {
    /// Login user ("root" or e.g. "pgdtest", which must exist).
    pub user: String,
    /// Extra sshd_config lines.
    pub extra_config: Vec<String>,
}

impl Default for SshdOptions {
    fn default() -> Self {
        SshdOptions {
            user: "root".into(),
            extra_config: Vec::new(),
        }
    }
}

/// A running `/usr/sbin/sshd -D -e` on 127.0.0.1.
pub struct TestSshd {
    pub port: u16,
    pub user: String,
    /// Temp dir holding every file below (removed on Drop).
    pub dir: tempfile::TempDir,
    /// Client private key (unencrypted ed25519), authorized for `user`.
    pub client_key: PathBuf,
    /// known_hosts with this server's host key as `[127.0.0.1]:port`.
    pub known_hosts: PathBuf,
    pub authorized_keys: PathBuf,
    /// The server's public host key line ("ssh-ed25519 AAAA...").
    pub host_key_pub: String,
    /// sshd's stderr (-e).
    pub log: PathBuf,
    child: Option<Child>,
}

fn sshd_available() {
    assert!(
        Path::new("/usr/sbin/sshd").exists(),
        "/usr/sbin/sshd is missing: install openssh-server (or run .ci/setup-ssh-users.sh as root)"
    );
}

/// Panics with a helpful message unless `user` exists (created by .ci/setup-ssh-users.sh).
pub fn require_user(user: &str) {
    let ok = Command::new("id")
        .arg(user)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "test user {user} does not exist: run `sudo .ci/setup-ssh-users.sh` once on this machine"
    );
}

/// Sudo password of the `pgdtestpw` user: $PGDEPLOY_TEST_SUDO_PASSWORD, else the file written by
/// .ci/setup-ssh-users.sh.
pub fn test_sudo_password() -> String {
    if let Ok(p) = std::env::var("PGDEPLOY_TEST_SUDO_PASSWORD") {
        return p;
    }
    let file = "/var/lib/pgdeploy-test/pgdtestpw.password";
    std::fs::read_to_string(file)
        .map(|s| s.lines().next().unwrap_or_default().to_string())
        .unwrap_or_else(|e| {
            panic!(
                "cannot read {file} ({e}): run `sudo .ci/setup-ssh-users.sh` once on this machine"
            )
        })
}

impl TestSshd {
    /// sshd for root.
    pub fn start() -> TestSshd {
        TestSshd::start_with(SshdOptions::default())
    }

    /// sshd for a named user (must exist).
    pub fn start_for_user(user: &str) -> TestSshd {
        TestSshd::start_with(SshdOptions {
            user: user.into(),
            ..Default::default()
        })
    }

    /// `n` sshds for root, started in parallel.
    pub fn start_many(n: usize) -> Vec<TestSshd> {
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..n).map(|_| s.spawn(TestSshd::start)).collect();
            hs.into_iter()
                .map(|h| h.join().expect("sshd start thread"))
                .collect()
        })
    }

    pub fn start_with(opts: SshdOptions) -> TestSshd {
        sshd_available();
        if opts.user != "root" {
            require_user(&opts.user);
        }
        std::fs::create_dir_all("/run/sshd").expect("mkdir -p /run/sshd");
        let dir = tempfile::Builder::new()
            .prefix("pgd-sshd-")
            .tempdir()
            .expect("temp dir");
        // sshd reads authorized_keys as the target user: make the dir traversable.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        let hostkey = dir.path().join("ssh_host_ed25519_key");
        keygen(&hostkey, "", "pgdeploy-test-host");
        let client_key = dir.path().join("id_ed25519");
        keygen(&client_key, "", "pgdeploy-test-client");
        let authorized_keys = dir.path().join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized_keys).expect("authorized_keys");
        std::fs::set_permissions(&authorized_keys, std::fs::Permissions::from_mode(0o644))
            .expect("chmod authorized_keys");
        let host_key_pub = std::fs::read_to_string(hostkey.with_extension("pub"))
            .expect("host pub")
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let cfg = dir.path().join("sshd_config");
        let log = dir.path().join("sshd.log");
        // The commands run as this machine's own users. Under sshd, bash reads the user's
        // ~/.bashrc unless it is a nested shell (SHLVL above 1 after its own increment): a
        // machine's dotfiles (pyenv's rehash takes a lock and waits up to 60 s for a stale one)
        // must not decide how long a test's commands take. `SetEnv SHLVL=1` makes every
        // session's shell a nested one.
        let mut text = format!(
            "ListenAddress 127.0.0.1\n\
             HostKey {}\n\
             AuthorizedKeysFile {}\n\
             PidFile none\n\
             UsePAM no\n\
             StrictModes no\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\n\
             AllowTcpForwarding yes\n\
             SetEnv SHLVL=1\n\
             MaxStartups 200:30:400\n\
             AllowUsers {}\n",
            hostkey.display(),
            authorized_keys.display(),
            opts.user
        );
        for l in &opts.extra_config {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(&cfg, text).expect("sshd_config");

        let mut last_err = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let logf = std::fs::File::create(&log).expect("sshd log");
            let mut cmd = Command::new("/usr/sbin/sshd");
            cmd.arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&cfg)
                .arg("-p")
                .arg(port.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(logf)
                // Own process group: a Ctrl-C on the test run does not reach it first.
                .process_group(0);
            let mut child = cmd.spawn().expect("spawn /usr/sbin/sshd");
            // Ready when *this* sshd says it listens (a bare TCP connect could reach another
            // process that owns the port).
            let mut exited = false;
            let ready = format!("Server listening on 127.0.0.1 port {port}");
            let up = wait_until(Duration::from_secs(20), || {
                if let Ok(Some(_)) = child.try_wait() {
                    exited = true;
                    return true;
                }
                std::fs::read_to_string(&log)
                    .map(|l| l.contains(&ready))
                    .unwrap_or(false)
            });
            if up && !exited {
                let known_hosts = dir.path().join("known_hosts");
                std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_key_pub}\n"))
                    .expect("known_hosts");
                return TestSshd {
                    port,
                    user: opts.user.clone(),
                    client_key,
                    known_hosts,
                    authorized_keys,
                    host_key_pub,
                    log,
                    child: Some(child),
                    dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            last_err = std::fs::read_to_string(&log).unwrap_or_default();
        }
        panic!("sshd did not start: {last_err}");
    }

    /// Inventory host for this server: address 127.0.0.1, its port, key, known_hosts, user;
    /// `become: sudo` for non-root users.
    pub fn host(&self, name: &str) -> Host {
        Host {
            name: name.into(),
            address: "127.0.0.1".into(),
            address6: None,
            groups: Vec::new(),
            ssh: Ssh {
                user: self.user.clone(),
                port: self.port,
                private_key: Some(self.client_key.display().to_string()),
                passphrase_env: None,
                known_hosts: Some(self.known_hosts.display().to_string()),
                become_: if self.user == "root" {
                    Become::None
                } else {
                    Become::Sudo
                },
                sudo_password_env: None,
                jump_host: None,
                connect_timeout: 10,
                persist: 60,
            },
            postgres_parameters: Default::default(),
            vars: Default::default(),
        }
    }

    /// Authorize one more public key (file `.pub` contents).
    pub fn authorize(&self, pubkey_file: &Path) {
        let key = std::fs::read_to_string(pubkey_file).expect("read pub key");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.authorized_keys)
            .expect("open authorized_keys");
        f.write_all(key.as_bytes()).expect("append authorized_keys");
    }

    /// The sshd log so far (for assertion messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Simulate sshd dying (or the network dropping): SIGKILL the listener and every sshd
    /// process serving a connection. Commands running on the "host" are not killed; like on a
    /// real host, they see their input end and exit. (sshd puts each connection in its own
    /// session, so a process-group kill would not reach them.)
    pub fn kill(&mut self) {
        self.kill_where(|p| comm(p).as_deref() == Some("sshd"));
    }

    /// Kill the server, its connections and everything they started.
    pub fn kill_all(&mut self) {
        self.kill_where(|_| true);
    }

    fn kill_where(&mut self, pred: impl Fn(i32) -> bool) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id() as i32;
            let mut victims: Vec<i32> = descendants(pid).into_iter().filter(|p| pred(*p)).collect();
            victims.push(pid);
            for p in victims {
                // SAFETY: plain kill(2) on processes started by this sshd (found by PPID).
                unsafe {
                    libc::kill(p, libc::SIGKILL);
                }
            }
            let _ = c.wait();
        }
    }

    /// PID of the listening sshd (None once killed).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

/// All descendants of `pid` (from /proc), children first found first.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut parents: Vec<(i32, i32)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may contain spaces; parse after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|x| x.parse::<i32>().ok());
            if let Some(pp) = ppid {
                parents.push((p, pp));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(cur) = frontier.pop() {
        for (p, pp) in &parents {
            if *pp == cur && !out.contains(p) {
                out.push(*p);
                frontier.push(*p);
            }
        }
    }
    out
}

fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

impl Drop for TestSshd {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// An ssh-agent started for one test, killed on Drop by its PID.
pub struct TestAgent {
    pub socket: PathBuf,
    pub pid: i32,
    _dir: tempfile::TempDir,
}

impl TestAgent {
    pub fn start() -> TestAgent {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("agent.sock");
        let out = sh(Command::new("ssh-agent").arg("-s").arg("-a").arg(&socket));
        let pid = out
            .split(';')
            .find_map(|p| p.trim().strip_prefix("SSH_AGENT_PID="))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no SSH_AGENT_PID in ssh-agent output: {out}"));
        TestAgent {
            socket,
            pid,
            _dir: dir,
        }
    }

    pub fn add(&self, key: &Path) {
        sh(Command::new("ssh-add")
            .arg(key)
            .env("SSH_AUTH_SOCK", &self.socket)
            .stdin(Stdio::null()));
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the agent we started.
        unsafe {
            libc::kill(self.pid, libc::SIGTERM);
        }
    }
}
