//! The lab itself: bring hosts up, power them off and on, cut their network, tear it all down.

use super::base::{self, BaseImage};
use super::error::{io, LabError, Result};
use super::named;
use super::net::{self, GATEWAY};
use super::sys::{self, ProcId};
use crate::platform::Platform;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the lab keeps its state file, overlays and DNS server files.
pub const STATE_DIR: &str = "/var/lib/pgdeploy/lab";

/// Which hosts to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// etcd1-3 (.11-.13), pg1-3 (.21-.23), haproxy1-3 (.31-.33), backup1 (.51): the
    /// pgBackRest repository.
    Production,
    /// pg1-3 (.21-.23); etcd and HAProxy on pg1; backup1 (.51), the pgBackRest repository.
    Poc,
    /// h1..hN (.11 upward), no cluster inventory.
    Hosts(usize),
}

impl Topology {
    /// (name, address, groups) of every host.
    pub fn hosts(&self) -> Vec<(String, Ipv4Addr, Vec<String>)> {
        let a = |last: u8| Ipv4Addr::new(10, 231, 0, last);
        let mut out = Vec::new();
        match self {
            Topology::Production => {
                for i in 1..=3u8 {
                    out.push((format!("etcd{i}"), a(10 + i), vec!["etcd".to_string()]));
                }
                for i in 1..=3u8 {
                    out.push((format!("pg{i}"), a(20 + i), vec!["patroni".to_string()]));
                }
                for i in 1..=3u8 {
                    out.push((
                        format!("haproxy{i}"),
                        a(30 + i),
                        vec!["haproxy".to_string()],
                    ));
                }
                out.push(("backup1".into(), a(51), vec!["backup".to_string()]));
            }
            Topology::Poc => {
                out.push((
                    "pg1".into(),
                    a(21),
                    vec!["etcd".into(), "patroni".into(), "haproxy".into()],
                ));
                out.push(("pg2".into(), a(22), vec!["patroni".into()]));
                out.push(("pg3".into(), a(23), vec!["patroni".into()]));
                out.push(("backup1".into(), a(51), vec!["backup".to_string()]));
            }
            Topology::Hosts(n) => {
                for i in 1..=*n {
                    out.push((format!("h{i}"), a(10 + i as u8), Vec::new()));
                }
            }
        }
        out
    }

    fn label(&self) -> String {
        match self {
            Topology::Production => "production".into(),
            Topology::Poc => "poc".into(),
            Topology::Hosts(n) => format!("hosts:{n}"),
        }
    }
}

/// Options of [`Lab::up`].
#[derive(Debug, Clone)]
pub struct LabOptions {
    pub topology: Topology,
    /// Where inventory.yaml, the SSH key pair, known_hosts and the TSIG key are written.
    pub dir: PathBuf,
    /// Where the base image is cached.
    pub cache_dir: PathBuf,
    /// How long to wait for every host to answer SSH and finish booting.
    pub boot_timeout: Duration,
    /// Tear everything down if `up` fails (default true).
    pub down_on_failure: bool,
    /// Tear everything down when the [`Lab`] value is dropped without `down()` (for tests:
    /// cleanup happens even when a test panics). Default false.
    pub down_on_drop: bool,
    /// Extra bare hosts spare1..N (.41 upward), reachable and in known_hosts but not in the
    /// inventory: hosts to grow the cluster onto.
    pub spares: usize,
    /// The Debian release the hosts run (default: Debian 13).
    pub platform: Platform,
}

impl LabOptions {
    pub fn new(topology: Topology, dir: impl Into<PathBuf>) -> LabOptions {
        LabOptions {
            topology,
            dir: dir.into(),
            cache_dir: PathBuf::from(base::CACHE_DIR),
            boot_timeout: Duration::from_secs(180),
            down_on_failure: true,
            down_on_drop: false,
            spares: 0,
            platform: Platform::default(),
        }
    }
}

/// What the state file records for one host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostState {
    pub name: String,
    pub address: Ipv4Addr,
    pub groups: Vec<String>,
    pub netns: String,
    pub veth: String,
    /// Host directory: upper/, work/, merged/ (the overlay) and console.log.
    pub root: PathBuf,
    pub nspawn: Option<ProcId>,
}

impl HostState {
    pub fn merged(&self) -> PathBuf {
        self.root.join("merged")
    }
    pub fn console_log(&self) -> PathBuf {
        self.root.join("console.log")
    }
}

/// The state file (JSON) under [`STATE_DIR`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub topology: String,
    /// Output directory (absolute).
    pub dir: PathBuf,
    /// Files written into `dir` (removed by `down`).
    pub files: Vec<PathBuf>,
    pub base: PathBuf,
    pub bridge: bool,
    pub named: Option<ProcId>,
    pub hosts: Vec<HostState>,
}

fn state_path() -> PathBuf {
    Path::new(STATE_DIR).join("state.json")
}

impl State {
    fn save(&self) -> Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| LabError::BadState {
            path: state_path(),
            detail: e.to_string(),
        })?;
        sys::write_file(&state_path(), &text, 0o600)
    }

    fn load() -> Result<Option<State>> {
        let p = state_path();
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| LabError::BadState {
                    path: p,
                    detail: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LabError::Io {
                what: format!("cannot read {}", p.display()),
                source: e,
            }),
        }
    }
}

/// One host as seen by callers.
#[derive(Debug, Clone, Serialize)]
pub struct LabHost {
    pub name: String,
    pub address: Ipv4Addr,
    pub groups: Vec<String>,
}

/// `pgdeploy lab status` for one host.
#[derive(Debug, Clone, Serialize)]
pub struct HostStatus {
    pub name: String,
    pub address: Ipv4Addr,
    pub running: bool,
    pub ssh: bool,
    pub partitioned: bool,
}

/// What `up` did (figures).
#[derive(Debug, Clone)]
pub struct UpReport {
    pub base: BaseImage,
    /// From the start of `up` until every host answered SSH and finished booting.
    pub total: Duration,
    /// From the first nspawn start until every host answered SSH and finished booting.
    pub boot: Duration,
}

/// What `down` removed.
#[derive(Debug, Clone, Default)]
pub struct DownReport {
    pub killed: Vec<String>,
    pub unmounted: Vec<String>,
    pub netns_removed: Vec<String>,
    pub bridge_removed: bool,
    pub files_removed: Vec<String>,
}

impl DownReport {
    pub fn nothing(&self) -> bool {
        self.killed.is_empty()
            && self.unmounted.is_empty()
            && self.netns_removed.is_empty()
            && !self.bridge_removed
            && self.files_removed.is_empty()
    }
}

/// Files `up` writes into the output directory.
const OUTPUT_FILES: &[&str] = &[
    "inventory.yaml",
    "id_ed25519",
    "id_ed25519.pub",
    "known_hosts",
    "tsig.key",
    APP_PASSWORD_FILE,
];

/// The lab application role's password file (generated, mode 0600), next to the inventory.
pub const APP_PASSWORD_FILE: &str = "app.password";

/// Output of [`Lab::ssh`].
#[derive(Debug, Clone)]
pub struct SshOutput {
    /// Exit status of the remote command (255: SSH itself failed).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Required tools and the Debian packages that provide them.
const TOOLS: &[(&str, &str)] = &[
    ("systemd-nspawn", "systemd-container"),
    ("debootstrap", "debootstrap"),
    ("named", "bind9"),
    ("tsig-keygen", "bind9"),
    ("ssh", "openssh-client"),
    ("ssh-keygen", "openssh-client"),
    ("ip", "iproute2"),
    ("mount", "mount"),
];

/// Fail clearly unless running as root with every tool installed.
pub fn preflight_tools() -> Result<()> {
    if !sys::is_root() {
        return Err(LabError::NotRoot);
    }
    for (tool, package) in TOOLS {
        if sys::which(tool).is_none() {
            return Err(LabError::MissingTool {
                tool: (*tool).into(),
                package: (*package).into(),
            });
        }
    }
    Ok(())
}

/// A running lab.
#[derive(Debug)]
pub struct Lab {
    state: State,
    down_on_drop: bool,
    done: bool,
}

impl Lab {
    /// Boot the lab: base image (cached), bridge, DNS server, one host per netns; returns once
    /// every host answers SSH with its known host key and systemd finished booting.
    pub async fn up(opts: LabOptions) -> Result<Lab> {
        Self::up_with_report(opts).await.map(|(lab, _)| lab)
    }

    /// [`Lab::up`] that also returns timings.
    pub async fn up_with_report(opts: LabOptions) -> Result<(Lab, UpReport)> {
        preflight_tools()?;
        if opts.spares > 0 && matches!(opts.topology, Topology::Hosts(_)) {
            return Err(LabError::Invalid(
                "spare hosts go with the production or poc topology, not --hosts".into(),
            ));
        }
        if opts.spares > 9 {
            return Err(LabError::Invalid(format!(
                "--spares must be at most 9, not {}",
                opts.spares
            )));
        }
        if let Topology::Hosts(n) = opts.topology {
            if n == 0 || n > 200 {
                return Err(LabError::Invalid(format!(
                    "--hosts must be between 1 and 200, not {n}"
                )));
            }
        }
        if state_path().exists() {
            return Err(LabError::AlreadyUp(state_path()));
        }
        net::preflight()?;
        let leftovers = sys::mounts_under(Path::new(STATE_DIR));
        if !leftovers.is_empty() {
            return Err(LabError::Leftovers(format!(
                "mounts {}",
                leftovers
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        for f in OUTPUT_FILES {
            let p = opts.dir.join(f);
            if p.exists() {
                return Err(LabError::FileExists(p));
            }
        }
        // Nothing is mounted under the state directory (checked above): whatever an earlier,
        // crashed lab left there is stale.
        for sub in ["hosts", "named"] {
            let p = Path::new(STATE_DIR).join(sub);
            if p.exists() {
                std::fs::remove_dir_all(&p)
                    .map_err(io(format!("cannot remove {}", p.display())))?;
            }
        }
        let started = Instant::now();
        std::fs::create_dir_all(&opts.dir)
            .map_err(io(format!("cannot create {}", opts.dir.display())))?;
        let dir = std::fs::canonicalize(&opts.dir)
            .map_err(io(format!("cannot resolve {}", opts.dir.display())))?;
        std::fs::create_dir_all(STATE_DIR).map_err(io(format!("cannot create {STATE_DIR}")))?;
        let mut lab = Lab {
            state: State {
                version: 1,
                topology: opts.topology.label(),
                dir,
                files: Vec::new(),
                base: PathBuf::new(),
                bridge: false,
                named: None,
                hosts: Vec::new(),
            },
            down_on_drop: opts.down_on_drop,
            done: false,
        };
        lab.state.save()?;
        match lab.bring_up(&opts, started).await {
            Ok(report) => Ok((lab, report)),
            Err(e) => {
                if opts.down_on_failure {
                    lab.done = true;
                    let _ = tokio::task::spawn_blocking(teardown).await;
                } else {
                    lab.done = true; // leave it for `pgdeploy lab down`
                }
                Err(e)
            }
        }
    }

    async fn bring_up(&mut self, opts: &LabOptions, started: Instant) -> Result<UpReport> {
        let base = base::ensure_base(&opts.cache_dir, opts.platform).await?;
        self.state.base = base.path.clone();
        let dir = self.state.dir.clone();

        // keys for the control side
        let key = dir.join("id_ed25519");
        self.state.files.extend([
            key.clone(),
            dir.join("id_ed25519.pub"),
            dir.join("known_hosts"),
            dir.join("tsig.key"),
            dir.join(APP_PASSWORD_FILE),
        ]);
        if !matches!(opts.topology, Topology::Hosts(_)) {
            self.state.files.push(dir.join("inventory.yaml"));
        }
        self.state.save()?;
        sys::run(
            "ssh-keygen",
            &[
                "-q".as_ref(),
                "-t".as_ref(),
                "ed25519".as_ref(),
                "-N".as_ref(),
                "".as_ref(),
                "-C".as_ref(),
                "pgdeploy-lab".as_ref(),
                "-f".as_ref(),
                key.as_os_str(),
            ],
        )?;
        set_mode(&key, 0o600)?;
        set_mode(&dir.join("id_ed25519.pub"), 0o600)?;
        let pubkey = std::fs::read_to_string(dir.join("id_ed25519.pub"))
            .map_err(io("cannot read the generated public key"))?;
        let tsig = named::generate_key()?;
        sys::write_file(&dir.join("tsig.key"), tsig.as_bytes(), 0o600)?;
        let app = crate::secrets::Secret::generate();
        sys::write_file(
            &dir.join(APP_PASSWORD_FILE),
            format!("{}\n", app.expose()).as_bytes(),
            0o600,
        )?;

        // network
        net::create_bridge()?;
        self.state.bridge = true;
        self.state.save()?;

        // DNS server
        let mut specs = opts.topology.hosts();
        for i in 1..=opts.spares as u8 {
            specs.push((
                format!("spare{i}"),
                Ipv4Addr::new(10, 231, 0, 40 + i),
                Vec::new(),
            ));
        }
        let pairs: Vec<(String, Ipv4Addr)> =
            specs.iter().map(|(n, a, _)| (n.clone(), *a)).collect();
        let named_dir = Path::new(STATE_DIR).join("named");
        let named = named::start(&named_dir, &tsig, &pairs)?;
        self.state.named = Some(named);
        self.state.save()?;

        // hosts: disk, identity, network
        let hosts_dir = Path::new(STATE_DIR).join("hosts");
        for (name, addr, groups) in &specs {
            let root = hosts_dir.join(name);
            let h = HostState {
                name: name.clone(),
                address: *addr,
                groups: groups.clone(),
                netns: net::netns_name(name),
                veth: net::veth_name(name),
                root: root.clone(),
                nspawn: None,
            };
            self.state.hosts.push(h.clone());
            self.state.save()?;
            prepare_host(&h, &base.path, &pubkey, &pairs)?;
            net::create_host_net(name, *addr)?;
        }
        keygen_all(&self.state.hosts).await?;
        self.write_known_hosts()?;
        if !matches!(opts.topology, Topology::Hosts(_)) {
            self.write_inventory(&opts.topology, opts.platform)?;
        }

        // boot
        let boot_started = Instant::now();
        for i in 0..self.state.hosts.len() {
            let p = boot(&self.state.hosts[i])?;
            self.state.hosts[i].nspawn = Some(p);
            self.state.save()?;
        }
        named::wait_ready(named, &named_dir.join("named.log"), Duration::from_secs(30)).await?;
        let deadline = Instant::now() + opts.boot_timeout;
        let waits = self
            .state
            .hosts
            .iter()
            .map(|h| wait_host(&self.state.dir, h, deadline, opts.boot_timeout));
        for r in futures::future::join_all(waits).await {
            r?;
        }
        Ok(UpReport {
            base,
            total: started.elapsed(),
            boot: boot_started.elapsed(),
        })
    }

    /// Open the lab that is up (from its state file).
    pub fn open() -> Result<Lab> {
        match State::load()? {
            Some(state) => Ok(Lab {
                state,
                down_on_drop: false,
                done: false,
            }),
            None => Err(LabError::NotUp(state_path())),
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }
    pub fn dir(&self) -> &Path {
        &self.state.dir
    }
    /// `inventory.yaml` (None for `--hosts N` labs, which have no cluster inventory).
    pub fn inventory_path(&self) -> Option<PathBuf> {
        let p = self.state.dir.join("inventory.yaml");
        self.state.files.contains(&p).then_some(p)
    }
    pub fn private_key_path(&self) -> PathBuf {
        self.state.dir.join("id_ed25519")
    }
    pub fn known_hosts_path(&self) -> PathBuf {
        self.state.dir.join("known_hosts")
    }
    pub fn tsig_key_path(&self) -> PathBuf {
        self.state.dir.join("tsig.key")
    }
    /// The lab application role's password.
    pub fn app_password(&self) -> Result<String> {
        let p = self.state.dir.join(APP_PASSWORD_FILE);
        Ok(std::fs::read_to_string(&p)
            .map_err(io("cannot read the application role's password file"))?
            .trim()
            .to_string())
    }
    /// DNS server address (the bridge address, port 53).
    pub fn dns_server(&self) -> std::net::SocketAddr {
        (GATEWAY, named::PORT).into()
    }
    pub fn hosts(&self) -> Vec<LabHost> {
        self.state
            .hosts
            .iter()
            .map(|h| LabHost {
                name: h.name.clone(),
                address: h.address,
                groups: h.groups.clone(),
            })
            .collect()
    }

    fn host(&self, name: &str) -> Result<usize> {
        self.state
            .hosts
            .iter()
            .position(|h| h.name == name)
            .ok_or_else(|| LabError::UnknownHost {
                host: name.into(),
                known: self
                    .state
                    .hosts
                    .iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// A system `ssh` command to a host that verifies its host key with the lab's known_hosts;
    /// append the remote command with `.arg(...)`.
    pub fn ssh_command(&self, host: &str) -> Result<tokio::process::Command> {
        let i = self.host(host)?;
        Ok(ssh_cmd(&self.state.dir, self.state.hosts[i].address, 10))
    }

    /// Run a shell command on a host with the system `ssh` client (strict host-key checking
    /// against the lab's known_hosts, 10 s connect timeout).
    pub async fn ssh(&self, host: &str, cmd: &str) -> Result<SshOutput> {
        let mut c = self.ssh_command(host)?;
        c.arg(cmd);
        let out = c.output().await.map_err(|e| LabError::Command {
            cmd: format!("ssh {host} {cmd}"),
            detail: e.to_string(),
        })?;
        Ok(SshOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Power loss: SIGKILL the host's systemd-nspawn; returns when none of its processes remain.
    pub async fn kill(&mut self, host: &str) -> Result<()> {
        let i = self.host(host)?;
        let h = self.state.hosts[i].clone();
        tokio::task::spawn_blocking(move || stop_host(&h))
            .await
            .map_err(|e| LabError::Invalid(e.to_string()))??;
        self.state.hosts[i].nspawn = None;
        self.state.save()
    }

    /// Boot a host again on its existing disk; returns when it answers SSH and finished booting.
    pub async fn start(&mut self, host: &str) -> Result<()> {
        let i = self.host(host)?;
        if self.state.hosts[i].nspawn.is_some_and(|p| p.alive()) {
            return Err(LabError::HostRunning(host.into()));
        }
        let h = self.state.hosts[i].clone();
        // nothing of the previous boot may remain in the namespace
        tokio::task::spawn_blocking(move || stop_host(&h))
            .await
            .map_err(|e| LabError::Invalid(e.to_string()))??;
        let p = boot(&self.state.hosts[i])?;
        self.state.hosts[i].nspawn = Some(p);
        self.state.save()?;
        let timeout = Duration::from_secs(180);
        wait_host(
            &self.state.dir,
            &self.state.hosts[i],
            Instant::now() + timeout,
            timeout,
        )
        .await
    }

    /// Cut a host off the network (its processes keep running).
    pub async fn partition(&mut self, host: &str) -> Result<()> {
        let i = self.host(host)?;
        net::set_link(&self.state.hosts[i].name, false)
    }

    /// Undo [`Lab::partition`].
    pub async fn heal(&mut self, host: &str) -> Result<()> {
        let i = self.host(host)?;
        net::set_link(&self.state.hosts[i].name, true)
    }

    /// Each host: running? answers SSH? partitioned?
    pub async fn status(&self) -> Vec<HostStatus> {
        let checks = self.state.hosts.iter().map(|h| async move {
            let running = h.nspawn.is_some_and(|p| p.alive());
            let partitioned = !net::link_up(&h.name);
            let ssh = running
                && !partitioned
                && ssh_probe(&self.state.dir, h.address, "true", 3)
                    .await
                    .is_some_and(|(code, _)| code == 0);
            HostStatus {
                name: h.name.clone(),
                address: h.address,
                running,
                ssh,
                partitioned,
            }
        });
        futures::future::join_all(checks).await
    }

    /// Is the DNS server running?
    pub fn named_running(&self) -> bool {
        self.state.named.is_some_and(|p| p.alive())
    }

    /// Remove everything the lab created.
    pub async fn down(mut self) -> Result<DownReport> {
        self.done = true;
        tokio::task::spawn_blocking(teardown)
            .await
            .map_err(|e| LabError::Invalid(e.to_string()))?
    }

    fn write_known_hosts(&self) -> Result<()> {
        let mut text = String::new();
        for h in &self.state.hosts {
            for t in ["ed25519", "ecdsa"] {
                let p = h.merged().join(format!("etc/ssh/ssh_host_{t}_key.pub"));
                let line = std::fs::read_to_string(&p).map_err(io(format!(
                    "host {}: cannot read {}",
                    h.name,
                    p.display()
                )))?;
                let mut f = line.split_whitespace();
                if let (Some(kt), Some(k)) = (f.next(), f.next()) {
                    text.push_str(&format!("{} {kt} {k}\n", h.address));
                }
            }
        }
        sys::write_file(&self.state.dir.join("known_hosts"), text.as_bytes(), 0o600)
    }

    fn write_inventory(&self, topology: &Topology, platform: Platform) -> Result<()> {
        let mut y = String::new();
        y.push_str(&format!(
            "# Generated by `pgdeploy lab up` ({} topology). Removed by `pgdeploy lab down`.\n",
            topology.label()
        ));
        y.push_str("cluster:\n  name: lab\n");
        y.push_str(&format!("platform: {platform}\n"));
        y.push_str(&format!(
            "postgres:\n  version: \"{}\"\n  synchronous_mode: false\n  parameters:\n    max_connections: 100\n    shared_buffers: 64MB\n    wal_keep_size: 256MB\n",
            platform.default_postgres()
        ));
        y.push_str("packages:\n  source: bundle\n  bundle_dir: bundle\n");
        y.push_str("ssh:\n  user: root\n  port: 22\n  private_key: id_ed25519\n  known_hosts: known_hosts\n");
        y.push_str(&format!(
            "dns:\n  provider: rfc2136\n  name: \"{}\"\n  zone: \"{}\"\n  server: \"{}:{}\"\n  ttl: 30\n  tsig:\n    key_name: {}\n    algorithm: {}\n    secret_file: tsig.key\n",
            named::NAME,
            named::ZONE,
            GATEWAY,
            named::PORT,
            named::KEY_NAME,
            named::KEY_ALG
        ));
        // The application's roles and database (the password in a generated file).
        y.push_str(&format!(
            "users:\n  - {{ name: app, password_file: {APP_PASSWORD_FILE}, connection_limit: 20 }}\n  - {{ name: app_ro, login: false }}\n"
        ));
        y.push_str(
            "databases:\n  - { name: app, owner: app, extensions: [pg_trgm], readers: [app_ro] }\n",
        );
        for h in self.state.hosts.iter().filter(|h| h.groups.is_empty()) {
            y.push_str(&format!(
                "# spare host, in no group yet: {{ name: {}, address: \"{}\" }}\n",
                h.name, h.address
            ));
        }
        y.push_str("groups:\n");
        for g in ["etcd", "patroni", "haproxy", "backup"] {
            let members: Vec<&HostState> = self
                .state
                .hosts
                .iter()
                .filter(|h| h.groups.iter().any(|x| x == g))
                .collect();
            if members.is_empty() {
                continue;
            }
            y.push_str(&format!("  {g}:\n"));
            for h in members {
                y.push_str(&format!(
                    "    - name: {}\n      address: \"{}\"\n",
                    h.name, h.address
                ));
            }
        }
        sys::write_file(&self.state.dir.join("inventory.yaml"), y.as_bytes(), 0o644)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.down_on_drop && !self.done {
            let _ = teardown();
        }
    }
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("cannot chmod {}", p.display())))
}

/// Overlay over the base image + the host's identity (hostname, hosts, machine id, key).
fn prepare_host(
    h: &HostState,
    base: &Path,
    pubkey: &str,
    all: &[(String, Ipv4Addr)],
) -> Result<()> {
    let (upper, work, merged) = (h.root.join("upper"), h.root.join("work"), h.merged());
    for d in [&upper, &work, &merged] {
        std::fs::create_dir_all(d).map_err(io(format!("cannot create {}", d.display())))?;
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        base.display(),
        upper.display(),
        work.display()
    );
    sys::run(
        "mount",
        &[
            "-t".as_ref(),
            "overlay".as_ref(),
            "overlay".as_ref(),
            "-o".as_ref(),
            std::ffi::OsStr::new(&opts),
            merged.as_os_str(),
        ],
    )?;
    sys::write_file(
        &merged.join("etc/hostname"),
        format!("{}\n", h.name).as_bytes(),
        0o644,
    )?;
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (n, a) in all {
        hosts.push_str(&format!("{a}\t{n}\n"));
    }
    sys::write_file(&merged.join("etc/hosts"), hosts.as_bytes(), 0o644)?;
    let id: u128 = rand::random();
    sys::write_file(
        &merged.join("etc/machine-id"),
        format!("{id:032x}\n").as_bytes(),
        0o444,
    )?;
    // resolv.conf may be a symlink in the base; replace it with a file
    let resolv = merged.join("etc/resolv.conf");
    let _ = std::fs::remove_file(&resolv);
    sys::write_file(&resolv, format!("nameserver {GATEWAY}\n").as_bytes(), 0o644)?;
    let ssh_dir = merged.join("root/.ssh");
    std::fs::create_dir_all(&ssh_dir)
        .map_err(io(format!("cannot create {}", ssh_dir.display())))?;
    set_mode(&ssh_dir, 0o700)?;
    sys::write_file(&ssh_dir.join("authorized_keys"), pubkey.as_bytes(), 0o600)?;
    Ok(())
}

/// Each host's own SSH host keys, generated in parallel.
async fn keygen_all(hosts: &[HostState]) -> Result<()> {
    let jobs = hosts.iter().flat_map(|h| {
        ["ed25519", "ecdsa"].into_iter().map(move |t| {
            let f = h.merged().join(format!("etc/ssh/ssh_host_{t}_key"));
            let comment = format!("root@{}", h.name);
            async move {
                let f = f.to_string_lossy().into_owned();
                sys::run_async(
                    "ssh-keygen",
                    &[
                        "-q",
                        "-t",
                        t,
                        "-N",
                        "",
                        "-C",
                        comment.as_str(),
                        "-f",
                        f.as_str(),
                    ],
                )
                .await
            }
        })
    });
    for r in futures::future::join_all(jobs).await {
        r?;
    }
    Ok(())
}

/// Start systemd-nspawn for a host (detached, own session).
fn boot(h: &HostState) -> Result<ProcId> {
    let args: Vec<String> = vec![
        "-D".into(),
        h.merged().to_string_lossy().into_owned(),
        "-b".into(),
        "--register=no".into(),
        "--keep-unit".into(),
        format!("--network-namespace-path=/run/netns/{}", h.netns),
        format!("--machine={}", h.name),
        "--resolv-conf=off".into(),
        "--timezone=off".into(),
        "--link-journal=no".into(),
    ];
    // Each container gets its own cgroup subtree. Without this every nspawn started by a
    // process outside systemd shares the caller's cgroup, and the containers' systemd
    // instances create and remove each other's unit cgroups (units then fail at random with
    // "Failed to attach to cgroup").
    let mut script = String::new();
    for cg in sys::host_cgroups(&h.name) {
        remove_cgroup_tree(&cg);
        std::fs::create_dir_all(&cg)
            .map_err(io(format!("cannot create cgroup {}", cg.display())))?;
        let procs = format!("{}/cgroup.procs", cg.display());
        script.push_str(&format!(
            "echo $$ > '{procs}' || echo 'pgdeploy lab: could not join cgroup {procs}' >&2; "
        ));
    }
    script.push_str("exec systemd-nspawn \"$@\"");
    let mut sh_args = vec!["-c".to_string(), script, "sh".to_string()];
    sh_args.extend(args);
    sys::spawn_detached("/bin/sh", &sh_args, &h.console_log())
}

use sys::remove_cgroup_tree;

fn ssh_cmd(dir: &Path, addr: Ipv4Addr, connect_timeout: u64) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("ssh");
    c.arg("-F")
        .arg("/dev/null")
        .arg("-o")
        .arg("BatchMode=yes")
        .arg("-o")
        .arg(format!("ConnectTimeout={connect_timeout}"))
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            dir.join("known_hosts").display()
        ))
        .arg("-o")
        .arg("GlobalKnownHostsFile=/dev/null")
        .arg("-o")
        .arg("StrictHostKeyChecking=yes")
        .arg("-o")
        .arg("LogLevel=ERROR")
        .arg("-i")
        .arg(dir.join("id_ed25519"))
        .arg(format!("root@{addr}"));
    c.stdin(std::process::Stdio::null()).kill_on_drop(true);
    c
}

/// Run a command over SSH; its exit code and stdout, or None when SSH itself failed (255).
async fn ssh_probe(dir: &Path, addr: Ipv4Addr, cmd: &str, timeout_s: u64) -> Option<(i32, String)> {
    let mut c = ssh_cmd(dir, addr, timeout_s);
    c.arg(cmd);
    let out = tokio::time::timeout(Duration::from_secs(timeout_s + 10), c.output())
        .await
        .ok()?
        .ok()?;
    let code = out.status.code()?;
    (code != 255).then(|| {
        (
            code,
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    })
}

/// Wait until the host answers SSH and `systemctl is-system-running` says running or degraded.
async fn wait_host(dir: &Path, h: &HostState, deadline: Instant, timeout: Duration) -> Result<()> {
    let addr = std::net::SocketAddr::from((h.address, 22));
    let mut last = String::from("no answer on port 22");
    loop {
        if !h.nspawn.is_some_and(|p| p.alive()) {
            return Err(LabError::HostDied {
                host: h.name.clone(),
                log: h.console_log(),
                tail: sys::tail(&h.console_log(), 20),
            });
        }
        let tcp = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        )
        .await;
        if matches!(tcp, Ok(Ok(_))) {
            match ssh_probe(dir, h.address, "systemctl is-system-running", 5).await {
                Some((_, s)) if s == "running" || s == "degraded" => return Ok(()),
                Some((_, s)) => last = format!("systemctl is-system-running: {s}"),
                None => last = "ssh did not succeed".into(),
            }
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout {
                what: format!(
                    "host {} ({}) to boot and answer SSH ({last})",
                    h.name, h.address
                ),
                secs: timeout.as_secs(),
                hint: format!("see the console log {}", h.console_log().display()),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Kill a host's nspawn (by recorded PID) and anything left in its network namespace.
fn stop_host(h: &HostState) -> Result<()> {
    if let Some(p) = h.nspawn {
        p.kill_wait(Duration::from_secs(20));
    }
    empty_netns(&h.netns);
    empty_cgroups(&h.name);
    if h.nspawn.is_some_and(|p| p.alive()) || !net::netns_pids(&h.netns).is_empty() {
        return Err(LabError::NotClean(format!(
            "processes of host {} are still running",
            h.name
        )));
    }
    Ok(())
}

/// SIGKILL every process left in a host's cgroups, wait until they are gone, remove the cgroups.
fn empty_cgroups(host: &str) {
    for cg in sys::host_cgroups(host) {
        sys::wait_until(Duration::from_secs(20), || {
            let pids = sys::cgroup_pids(&cg);
            for pid in &pids {
                if let Some(p) = ProcId::of(*pid) {
                    p.signal(libc::SIGKILL);
                }
            }
            pids.is_empty()
        });
        remove_cgroup_tree(&cg);
    }
}

/// SIGKILL every process inside one of the lab's network namespaces and wait until none is left.
fn empty_netns(ns: &str) {
    sys::wait_until(Duration::from_secs(20), || {
        let pids = net::netns_pids(ns);
        for pid in &pids {
            if let Some(p) = ProcId::of(*pid) {
                p.signal(libc::SIGKILL);
            }
        }
        pids.is_empty()
    });
}

/// Remove everything a lab created: from the state file when there is one, and by the lab's own
/// naming conventions (netns `pgdlab-*`, veth `pgdl-*`, mounts under the state directory, the
/// bridge marked as ours), so it also cleans up after a crash or a partial `up`. Idempotent.
pub fn teardown() -> Result<DownReport> {
    if !sys::is_root() {
        return Err(LabError::NotRoot);
    }
    let mut rep = DownReport::default();
    let state = State::load().unwrap_or(None);
    let state_dir = Path::new(STATE_DIR);

    // 1. processes: recorded PIDs, then anything started on the lab's own paths
    let mut procs: Vec<(String, ProcId)> = Vec::new();
    if let Some(s) = &state {
        for h in &s.hosts {
            if let Some(p) = h.nspawn {
                procs.push((format!("systemd-nspawn of {}", h.name), p));
            }
        }
        if let Some(p) = s.named {
            procs.push(("named".into(), p));
        }
    }
    let hosts_prefix = format!("{}/", state_dir.join("hosts").display());
    for p in sys::procs_with_arg_prefix(&hosts_prefix) {
        procs.push((format!("systemd-nspawn pid {}", p.pid), p));
    }
    let named_conf = state_dir.join("named/named.conf").display().to_string();
    for p in sys::procs_with_arg_prefix(&named_conf) {
        procs.push((format!("named pid {}", p.pid), p));
    }
    procs.dedup_by_key(|(_, p)| *p);
    for (what, p) in &procs {
        if p.alive() {
            p.kill_wait(Duration::from_secs(20));
            rep.killed.push(what.clone());
        }
    }
    let namespaces = net::lab_netns().unwrap_or_default();
    for ns in &namespaces {
        empty_netns(ns);
    }
    for root in sys::cgroup_roots() {
        let top = root.join(sys::CGROUP_DIR);
        if let Ok(rd) = std::fs::read_dir(&top) {
            for e in rd.flatten() {
                empty_cgroups(&e.file_name().to_string_lossy());
            }
        }
        remove_cgroup_tree(&top);
    }

    // 2. mounts
    let mounted = sys::mounts_under(state_dir);
    let mut problems = sys::unmount_all_under(state_dir);
    rep.unmounted = mounted.iter().map(|m| m.display().to_string()).collect();

    // 3. network
    for ns in &namespaces {
        match sys::run("ip", &["netns", "del", ns]) {
            Ok(_) => rep.netns_removed.push(ns.clone()),
            Err(e) => problems.push(e.to_string()),
        }
    }
    for v in net::lab_veths() {
        let _ = sys::run("ip", &["link", "del", &v]);
    }
    if net::link_exists(net::BRIDGE)
        && (net::bridge_is_ours() || state.as_ref().is_some_and(|s| s.bridge))
    {
        match sys::run("ip", &["link", "del", net::BRIDGE]) {
            Ok(_) => rep.bridge_removed = true,
            Err(e) => problems.push(e.to_string()),
        }
    }

    // 4. files (only once nothing is mounted under the state directory)
    if sys::mounts_under(state_dir).is_empty() {
        for sub in ["hosts", "named"] {
            let p = state_dir.join(sub);
            if p.exists() {
                if let Err(e) = std::fs::remove_dir_all(&p) {
                    problems.push(format!("cannot remove {}: {e}", p.display()));
                } else {
                    rep.files_removed.push(p.display().to_string());
                }
            }
        }
        if let Some(s) = &state {
            for f in &s.files {
                if f.exists() && std::fs::remove_file(f).is_ok() {
                    rep.files_removed.push(f.display().to_string());
                }
            }
            let _ = std::fs::remove_dir(&s.dir); // only if empty
        }
        if state_path().exists() {
            match std::fs::remove_file(state_path()) {
                Ok(()) => rep.files_removed.push(state_path().display().to_string()),
                Err(e) => problems.push(format!("cannot remove {}: {e}", state_path().display())),
            }
        }
    }

    // 5. verify
    let mut left = problems;
    for (what, p) in &procs {
        if p.alive() {
            left.push(format!("{what} still running"));
        }
    }
    left.extend(leftovers());
    if left.is_empty() {
        Ok(rep)
    } else {
        Err(LabError::NotClean(left.join("; ")))
    }
}

/// Is the base image already cached?
pub fn base_cached(cache_dir: &Path, platform: Platform) -> bool {
    base::base_path(cache_dir, platform)
        .join("etc/os-release")
        .exists()
}

/// What of a lab exists on this machine right now: lab processes (nspawn, named), mounts under
/// the state directory, network namespaces, veths, the bridge, cgroups, the state file.
/// Empty after a clean `down`.
pub fn leftovers() -> Vec<String> {
    let state_dir = Path::new(STATE_DIR);
    let mut left = Vec::new();
    let hosts_prefix = format!("{}/", state_dir.join("hosts").display());
    for p in sys::procs_with_arg_prefix(&hosts_prefix) {
        if p.alive() {
            left.push(format!("systemd-nspawn process {}", p.pid));
        }
    }
    let named_conf = state_dir.join("named/named.conf").display().to_string();
    for p in sys::procs_with_arg_prefix(&named_conf) {
        if p.alive() {
            left.push(format!("named process {}", p.pid));
        }
    }
    for m in sys::mounts_under(state_dir) {
        left.push(format!("mount {}", m.display()));
    }
    for ns in net::lab_netns().unwrap_or_default() {
        left.push(format!("netns {ns}"));
    }
    for v in net::lab_veths() {
        left.push(format!("veth {v}"));
    }
    if net::link_exists(net::BRIDGE) && net::bridge_is_ours() {
        left.push(format!("bridge {}", net::BRIDGE));
    }
    for root in sys::cgroup_roots() {
        let top = root.join(sys::CGROUP_DIR);
        if top.exists() {
            left.push(format!("cgroup {}", top.display()));
        }
    }
    if state_path().exists() {
        left.push(format!("state file {}", state_path().display()));
    }
    left
}

static EXCLUSIVE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A process-wide lock for tests: there is one lab per machine, so tests that bring one up
/// hold this guard for their whole scenario.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    EXCLUSIVE.lock().await
}

/// [`exclusive`] for code outside an async runtime (blocking tests).
pub fn exclusive_blocking() -> tokio::sync::MutexGuard<'static, ()> {
    EXCLUSIVE.blocking_lock()
}
