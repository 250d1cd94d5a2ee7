//! SSH transport: one connection per host, many channels on it.
//!
//! CONTRACT (implemented by the ssh module owner; the engine codes against exactly this API).
//!
//! - One russh connection per [`Session`] (cheap to clone, `Send + Sync`); at most
//!   [`MAX_CHANNELS`] channels are open on it at once (sshd's `MaxSessions` defaults to 10).
//! - Host keys are checked against known_hosts (see [`known_hosts`]); unknown keys are refused
//!   unless [`ConnectOptions::accept_new_host_keys`]; changed keys are always refused.
//! - `become: sudo` wraps every command in `sudo -n ... sh -c '<cmd>'`, or, when sudo needs a
//!   password, `sudo -k -S -p '' ... sh -c '<cmd>'` with the password as the first stdin line.
//! - Files are written atomically: temp file in the target's directory, checksum verified on
//!   the host, chown/chmod, then `mv -f` (a dropped connection never leaves a partial target).
//! - Paths in the host's `ssh` settings (`private_key`, `known_hosts`) are used as given, with
//!   `~/` expanded; the inventory loader is expected to make relative paths absolute.

mod auth;
pub mod double;
mod https;
pub mod known_hosts;
pub mod persist;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use russh::keys::PublicKeyOrCertificate;
use russh::ChannelMsg;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Semaphore;

use crate::inventory::{Become, Host, Ssh};
use crate::shell::sh_quote;

pub use auth::Secret;
pub use https::{parse_response, tls_client_config, tls_config, HttpResponse};

/// Concurrent channels per connection.
pub const MAX_CHANNELS: usize = 8;

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum SshError {
    #[error("{host}: {message}")]
    #[diagnostic(code(pgdeploy::ssh))]
    Other {
        host: String,
        message: String,
        #[help]
        help: Option<String>,
    },
}

impl SshError {
    pub fn new(host: &str, message: impl Into<String>, help: Option<String>) -> SshError {
        SshError::Other {
            host: host.to_string(),
            message: message.into(),
            help,
        }
    }
    /// The host the error is about.
    pub fn host(&self) -> &str {
        match self {
            SshError::Other { host, .. } => host,
        }
    }
    pub fn message(&self) -> &str {
        match self {
            SshError::Other { message, .. } => message,
        }
    }
    pub fn help(&self) -> Option<&str> {
        match self {
            SshError::Other { help, .. } => help.as_deref(),
        }
    }
}

/// Options that are not in the inventory (command-line flags).
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Accept and record unknown host keys (like OpenSSH's StrictHostKeyChecking=accept-new).
    pub accept_new_host_keys: bool,
    /// Override the known_hosts file for every host.
    pub known_hosts: Option<PathBuf>,
}

/// Result of one command.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.status == 0
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// russh client handler: verifies the server key; a refusal is kept for the error message.
pub(crate) struct Handler {
    label: String,
    addr: String,
    port: u16,
    known_hosts: PathBuf,
    accept_new: bool,
    failure: Arc<Mutex<Option<SshError>>>,
}

impl russh::client::Handler for Handler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let res = match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => known_hosts::verify(
                &known_hosts::Check {
                    label: &self.label,
                    addr: &self.addr,
                    port: self.port,
                    path: &self.known_hosts,
                    accept_new: self.accept_new,
                },
                key,
            ),
            PublicKeyOrCertificate::Certificate(_) => Err(SshError::new(
                &self.label,
                "the host presented a host certificate; pgdeploy verifies plain host keys only",
                None,
            )),
        };
        match res {
            Ok(()) => Ok(true),
            Err(e) => {
                *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                Ok(false)
            }
        }
    }
}

type Handle = russh::client::Handle<Handler>;

#[derive(Debug, Clone)]
enum SudoMode {
    /// Commands run as the SSH user.
    Direct,
    /// `sudo -n`.
    NoPassword,
    /// `sudo -S` with the password fed on stdin.
    Password(Secret),
}

struct Inner {
    /// None for a test double's session.
    handle: Option<Handle>,
    /// Answers instead of a connection (see [`double`]).
    double: Option<Arc<dyn double::HostDouble>>,
    /// Keeps the jump host's connection (which carries ours) alive.
    jump: Option<Handle>,
    /// The socket of a persisted connection (see [`persist`]): channels go through it.
    persisted: Option<PathBuf>,
    channels: Semaphore,
    /// How commands get root: set at the first command when `become: sudo` (see
    /// [`Session::exec`]); unset and no `sudo_cfg` means commands run directly.
    sudo: OnceLock<SudoMode>,
    /// The host's SSH settings when its commands go through sudo (for a sudo password).
    sudo_cfg: Option<Ssh>,
    /// Held while the sudo mode is being found out, so it is asked for once.
    sudo_init: tokio::sync::Mutex<()>,
    user: String,
}

/// One live connection to a host. Cheap to clone (shares the connection).
#[derive(Clone)]
pub struct Session {
    host: String,
    _become: Become,
    inner: Arc<Inner>,
}

fn short(cmd: &str) -> String {
    let one = cmd.trim();
    let mut s: String = one.chars().take(160).collect();
    if s.len() < one.len() {
        s.push_str("...");
    }
    s
}

fn tail(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = s.trim_end().lines().collect();
    let start = lines.len().saturating_sub(15);
    let mut t = lines[start..].join("\n");
    if t.len() > 3000 {
        let cut = t.len() - 3000;
        let cut = (cut..t.len()).find(|i| t.is_char_boundary(*i)).unwrap_or(0);
        t = t[cut..].to_string();
    }
    t
}

/// A parsed jump host "[user@]host[:port]".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JumpHost {
    pub user: Option<String>,
    pub host: String,
    pub port: u16,
}

impl JumpHost {
    pub fn parse(spec: &str) -> Option<JumpHost> {
        let spec = spec.trim();
        let (user, rest) = match spec.rsplit_once('@') {
            Some((u, r)) if !u.is_empty() => (Some(u.to_string()), r),
            Some(_) => return None,
            None => (None, spec),
        };
        let (host, port) = if let Some(r) = rest.strip_prefix('[') {
            let (h, after) = r.split_once(']')?;
            match after.strip_prefix(':') {
                Some(p) => (h.to_string(), p.parse().ok()?),
                None if after.is_empty() => (h.to_string(), 22),
                None => return None,
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h.to_string(), p.parse().ok()?),
                _ => (rest.to_string(), 22),
            }
        };
        if host.is_empty() {
            return None;
        }
        Some(JumpHost { user, host, port })
    }
}

/// The known_hosts file of `host`: --known-hosts overrides the inventory's, as its help says.
fn known_hosts_file(host: &Host, opts: &ConnectOptions) -> Result<PathBuf, SshError> {
    match (&opts.known_hosts, &host.ssh.known_hosts) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(p)) => Ok(auth::resolve_path(p)),
        (None, None) => known_hosts::default_path().ok_or_else(|| {
            SshError::new(
                &host.name,
                "no known_hosts file: HOME is not set",
                Some("set ssh.known_hosts in the inventory or pass --known-hosts".into()),
            )
        }),
    }
}

struct Target<'a> {
    label: &'a str,
    addr: &'a str,
    port: u16,
}

fn client_config(known: &[known_hosts::Known]) -> Arc<russh::client::Config> {
    let mut preferred = russh::Preferred::default();
    preferred.key = known_hosts::preferred_for(known, &preferred.key).into();
    Arc::new(russh::client::Config {
        keepalive_interval: Some(default_keepalive()),
        keepalive_max: 4,
        inactivity_timeout: None,
        nodelay: true,
        preferred,
        ..Default::default()
    })
}

/// Handshake + host key check over an established stream (authentication is separate: it may
/// prompt on the terminal, which must not count against the connect timeout).
async fn handshake<S>(
    stream: S,
    t: &Target<'_>,
    kh: &Path,
    opts: &ConnectOptions,
) -> Result<Handle, SshError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let pattern = known_hosts::host_pattern(t.addr, t.port);
    let known = known_hosts::lookup(kh, &pattern).unwrap_or_default();
    let failure = Arc::new(Mutex::new(None));
    let handler = Handler {
        label: t.label.to_string(),
        addr: t.addr.to_string(),
        port: t.port,
        known_hosts: kh.to_path_buf(),
        accept_new: opts.accept_new_host_keys,
        failure: failure.clone(),
    };
    let res = russh::client::connect_stream(client_config(&known), stream, handler).await;
    match res {
        Ok(h) => Ok(h),
        Err(e) => {
            if let Some(err) = failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return Err(err);
            }
            Err(SshError::new(
                t.label,
                format!("SSH handshake with {}:{} failed: {e}", t.addr, t.port),
                Some(
                    "check that an SSH server (OpenSSH) listens there and that ssh.port is right"
                        .into(),
                ),
            ))
        }
    }
}

async fn tcp(label: &str, addr: &str, port: u16) -> Result<tokio::net::TcpStream, SshError> {
    let s = tokio::net::TcpStream::connect((addr, port))
        .await
        .map_err(|e| {
            let help = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => format!(
                    "nothing listens on {addr}:{port}: is sshd running on the host, and is ssh.port right?"
                ),
                _ => "check the address in the inventory, DNS and the network path to the host".into(),
            };
            SshError::new(label, format!("cannot connect to {addr}:{port}: {e}"), Some(help))
        })?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

impl Session {
    /// Connect using the ssh-agent named by `SSH_AUTH_SOCK` (if any) and the key files.
    pub async fn connect(host: &Host, opts: &ConnectOptions) -> Result<Session, SshError> {
        let agent = std::env::var_os("SSH_AUTH_SOCK")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        Session::connect_with_agent(host, opts, agent.as_deref()).await
    }

    /// Like [`Session::connect`] with an explicit ssh-agent socket (None: no agent).
    pub async fn connect_with_agent(
        host: &Host,
        opts: &ConnectOptions,
        agent: Option<&Path>,
    ) -> Result<Session, SshError> {
        let kh = known_hosts_file(host, opts)?;
        match persist::connect(host, opts, agent, &kh).await? {
            Some(sock) => Ok(Session::over(host, None, None, Some(sock))),
            None => Session::connect_direct(host, opts, agent).await,
        }
    }

    /// A session for `host` over its own connection (`handle`, and the jump host's that
    /// carries it), or through the persisted connection behind `persisted`.
    fn over(
        host: &Host,
        handle: Option<Handle>,
        jump: Option<Handle>,
        persisted: Option<PathBuf>,
    ) -> Session {
        let ssh = &host.ssh;
        Session {
            host: host.name.clone(),
            _become: ssh.become_,
            inner: Arc::new(Inner {
                handle,
                double: None,
                jump,
                persisted,
                channels: Semaphore::new(MAX_CHANNELS),
                sudo: OnceLock::new(),
                // Found out at the first command, not with a round trip of its own: the
                // first command is tried with `sudo -n`, and only a refusal asks more.
                sudo_cfg: (ssh.become_ == Become::Sudo && ssh.user != "root").then(|| ssh.clone()),
                sudo_init: tokio::sync::Mutex::new(()),
                user: ssh.user.clone(),
            }),
        }
    }

    /// A connection of this process's own (no persisted one).
    pub(crate) async fn connect_direct(
        host: &Host,
        opts: &ConnectOptions,
        agent: Option<&Path>,
    ) -> Result<Session, SshError> {
        let ssh = &host.ssh;
        let name = host.name.as_str();
        let kh = known_hosts_file(host, opts)?;
        let secs = ssh.connect_timeout.max(1);
        let limit = Duration::from_secs(secs);
        let target = Target {
            label: name,
            addr: &host.address,
            port: ssh.port,
        };
        let timeout_err = |what: &str| {
            SshError::new(
                name,
                format!("timed out after {secs} s {what}"),
                Some("check that the host is up and reachable (firewall?), or raise ssh.connect_timeout".into()),
            )
        };

        let (handle, jump) = match ssh.jump_host.as_deref().filter(|j| !j.trim().is_empty()) {
            None => {
                let fut = async {
                    let s = tcp(name, &host.address, ssh.port).await?;
                    handshake(s, &target, &kh, opts).await
                };
                let what = format!("connecting to {}:{}", host.address, ssh.port);
                let mut h = tokio::time::timeout(limit, fut)
                    .await
                    .map_err(|_| timeout_err(&what))??;
                auth::authenticate(&mut h, name, &ssh.user, ssh, agent).await?;
                (h, None)
            }
            Some(spec) => {
                let j = JumpHost::parse(spec).ok_or_else(|| {
                    SshError::new(
                        name,
                        format!("invalid jump host {spec:?}"),
                        Some("write ssh.jump_host as [user@]host[:port]".into()),
                    )
                })?;
                let jlabel = format!("{name} (via jump host {spec})");
                let juser = j.user.clone().unwrap_or_else(|| ssh.user.clone());
                let jt = Target {
                    label: &jlabel,
                    addr: &j.host,
                    port: j.port,
                };
                let what = format!("connecting to jump host {}:{}", j.host, j.port);
                let fut = async {
                    let s = tcp(&jlabel, &j.host, j.port).await?;
                    handshake(s, &jt, &kh, opts).await
                };
                let mut jh = tokio::time::timeout(limit, fut)
                    .await
                    .map_err(|_| timeout_err(&what))??;
                auth::authenticate(&mut jh, &jlabel, &juser, ssh, agent).await?;
                let fut = async {
                    let ch = jh
                        .channel_open_direct_tcpip(host.address.clone(), ssh.port as u32, "127.0.0.1", 0)
                        .await
                        .map_err(|e| {
                            SshError::new(
                                &jlabel,
                                format!(
                                    "the jump host could not open a connection to {}:{}: {e}",
                                    host.address, ssh.port
                                ),
                                Some("check that the jump host can reach the target and allows TCP forwarding (AllowTcpForwarding)".into()),
                            )
                        })?;
                    handshake(ch.into_stream(), &target, &kh, opts).await
                };
                let what = format!(
                    "connecting to {}:{} through jump host {spec}",
                    host.address, ssh.port
                );
                let mut h = tokio::time::timeout(limit, fut)
                    .await
                    .map_err(|_| timeout_err(&what))??;
                auth::authenticate(&mut h, name, &ssh.user, ssh, agent).await?;
                (h, Some(jh))
            }
        };

        Ok(Session::over(host, Some(handle), jump, None))
    }

    async fn probe_sudo(&self, ssh: &Ssh) -> Result<SudoMode, SshError> {
        let user = &ssh.user;
        let out = self
            .exec_raw("sudo -n true", "sudo -n true", None, None::<&[u8]>)
            .await?;
        if out.ok() {
            return Ok(SudoMode::NoPassword);
        }
        let err = out.stderr_str();
        if !err.contains("password is required") {
            return Err(SshError::new(
                &self.host,
                format!("`become: sudo` does not work for {user}: {}", tail(&out.stderr)),
                Some(format!(
                    "install sudo on the host and allow {user} to use it (/etc/sudoers.d), or connect as root with become: none"
                )),
            ));
        }
        let (pw, source) = auth::sudo_password(&self.host, user, ssh).await?;
        let mut stdin = pw.0.clone().into_bytes();
        stdin.push(b'\n');
        let out = self
            .exec_raw(
                "sudo -k -S -p '' true",
                "sudo -k -S -p '' true",
                Some(&stdin),
                None::<&[u8]>,
            )
            .await?;
        if out.ok() {
            if matches!(source, auth::SudoSource::Prompt) {
                auth::remember_sudo_password(&pw);
            }
            return Ok(SudoMode::Password(pw));
        }
        let whence = match source {
            auth::SudoSource::Env(v) => format!("the password in ${v}"),
            auth::SudoSource::Prompt => {
                auth::forget_sudo_password();
                "the password that was typed".to_string()
            }
        };
        let detail = tail(&out.stderr).replace(&pw.0, "<redacted>");
        Err(SshError::new(
            &self.host,
            format!("sudo rejected {whence} for {user}{}", if detail.is_empty() { String::new() } else { format!(": {detail}") }),
            Some("check the sudo password (ssh.sudo_password_env) or allow passwordless sudo for this user".into()),
        ))
    }

    /// A session whose commands and requests go to `d` (tests of orchestration, see
    /// [`double`]), as user root.
    pub fn double(host: &str, d: Arc<dyn double::HostDouble>) -> Session {
        Session {
            host: host.to_string(),
            _become: Become::None,
            inner: Arc::new(Inner {
                handle: None,
                double: Some(d),
                jump: None,
                persisted: None,
                channels: Semaphore::new(MAX_CHANNELS),
                sudo: OnceLock::new(),
                sudo_cfg: None,
                sudo_init: tokio::sync::Mutex::new(()),
                user: "root".into(),
            }),
        }
    }

    fn handle(&self) -> Result<&Handle, SshError> {
        self.inner
            .handle
            .as_ref()
            .ok_or_else(|| SshError::new(&self.host, "internal: no connection", None))
    }

    /// Host name (from the inventory), for messages.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The SSH user of this connection.
    pub fn user(&self) -> &str {
        &self.inner.user
    }

    /// Whether commands go through sudo but how is not known yet.
    fn sudo_unknown(&self) -> bool {
        self.inner.sudo_cfg.is_some() && self.inner.sudo.get().is_none()
    }

    /// Find out how sudo works for this user (once per connection): without a password, or
    /// with the one from `ssh.sudo_password_env` or a prompt. A sudo that does not work is an
    /// error naming the user and what to do.
    async fn resolve_sudo(&self) -> Result<(), SshError> {
        let Some(cfg) = &self.inner.sudo_cfg else {
            return Ok(());
        };
        let _g = self.inner.sudo_init.lock().await;
        if self.inner.sudo.get().is_none() {
            let mode = self.probe_sudo(cfg).await?;
            let _ = self.inner.sudo.set(mode);
        }
        Ok(())
    }

    fn wrap(&self, cmd: &str) -> (String, Option<Vec<u8>>) {
        let unknown = SudoMode::NoPassword; // tried first; a refusal is handled by the caller
        let mode = match self.inner.sudo.get() {
            Some(m) => m,
            None if self.inner.sudo_cfg.is_some() => &unknown,
            None => &SudoMode::Direct,
        };
        match mode {
            SudoMode::Direct => (cmd.to_string(), None),
            SudoMode::NoPassword => (format!("sudo -n -- sh -c {}", sh_quote(cmd)), None),
            SudoMode::Password(pw) => {
                let mut pre = pw.0.clone().into_bytes();
                pre.push(b'\n');
                (
                    format!("sudo -k -S -p '' -- sh -c {}", sh_quote(cmd)),
                    Some(pre),
                )
            }
        }
    }

    fn lost(&self, cmd: &str, e: impl std::fmt::Display) -> SshError {
        SshError::new(
            &self.host,
            format!("connection lost while running `{}`: {e}", short(cmd)),
            Some(
                "check that the host is up and reachable, then run again (pgdeploy is idempotent)"
                    .into(),
            ),
        )
    }

    /// Open a session channel. sshd frees a closed session only at the end of its event-loop
    /// pass, so an open that arrives in the same batch as the previous closes can be refused
    /// even below MaxSessions: retry such refusals briefly.
    async fn open_channel(
        &self,
        shown: &str,
    ) -> Result<russh::Channel<russh::client::Msg>, SshError> {
        let mut attempt: u64 = 0;
        loop {
            let handle = self.handle()?;
            match handle.channel_open_session().await {
                Ok(ch) => return Ok(ch),
                Err(russh::Error::ChannelOpenFailure(_))
                    if attempt < 20 && !handle.is_closed() =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(10 * attempt)).await;
                }
                Err(russh::Error::ChannelOpenFailure(f)) => {
                    return Err(SshError::new(
                        &self.host,
                        format!("the host refused to open a channel for `{}`: {f:?}", short(shown)),
                        Some("check sshd's MaxSessions (pgdeploy uses up to 8 channels per connection) and the host's sshd logs".into()),
                    ))
                }
                Err(e) => return Err(self.lost(shown, e)),
            }
        }
    }

    /// One channel: exec `wrapped`, feed `prefix` then `stdin`, collect output until the channel
    /// closes. `shown` is what error messages call the command.
    async fn exec_raw<R: AsyncRead + Unpin + Send>(
        &self,
        wrapped: &str,
        shown: &str,
        prefix: Option<&[u8]>,
        stdin: Option<R>,
    ) -> Result<Output, SshError> {
        if let Some(d) = &self.inner.double {
            let mut input = prefix.map(<[u8]>::to_vec).unwrap_or_default();
            if let Some(mut r) = stdin {
                use tokio::io::AsyncReadExt;
                r.read_to_end(&mut input)
                    .await
                    .map_err(|e| self.lost(shown, e))?;
            }
            // The double sees the command the host would run.
            return double::exec(d, &self.host, wrapped, input);
        }
        let _permit = self
            .inner
            .channels
            .acquire()
            .await
            .map_err(|e| self.lost(shown, e))?;
        if let Some(sock) = &self.inner.persisted {
            let e = persist::exec(sock, wrapped, prefix, stdin)
                .await
                .map_err(|e| self.lost(shown, e))?;
            return self.ended(shown, (e.status, e.signal), e.stdout, e.stderr, e.lost);
        }
        let ch = self.open_channel(shown).await?;
        ch.exec(true, wrapped)
            .await
            .map_err(|e| self.lost(shown, e))?;
        let (mut rd, wr) = ch.split();
        let writer = async {
            if let Some(p) = prefix {
                wr.data(p).await?;
            }
            if let Some(r) = stdin {
                wr.data(r).await?;
            }
            wr.eof().await?;
            Ok::<(), russh::Error>(())
        };
        tokio::pin!(writer);
        let mut writing = true;
        let mut write_err: Option<russh::Error> = None;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let mut status: Option<u32> = None;
        let mut signal: Option<String> = None;
        loop {
            tokio::select! {
                r = &mut writer, if writing => {
                    writing = false;
                    if let Err(e) = r { write_err = Some(e); }
                }
                msg = rd.wait() => match msg {
                    Some(ChannelMsg::Data { data }) => stdout.extend_from_slice(&data),
                    Some(ChannelMsg::ExtendedData { data, ext }) => {
                        if ext == 1 { stderr.extend_from_slice(&data) }
                    }
                    Some(ChannelMsg::ExitStatus { exit_status }) => status = Some(exit_status),
                    Some(ChannelMsg::ExitSignal { signal_name, error_message, .. }) => {
                        signal = Some(format!("{signal_name:?} {error_message}").trim().to_string());
                    }
                    Some(_) => {}
                    None => break,
                }
            }
        }
        let write_err = write_err.map(|e| format!("while sending input: {e}"));
        self.ended(shown, (status, signal), stdout, stderr, write_err)
    }

    /// The [`Output`] of a channel that ended with `status` or `signal`; without either, the
    /// connection was lost (`lost` says how, when known).
    fn ended(
        &self,
        shown: &str,
        (status, signal): (Option<u32>, Option<String>),
        stdout: Vec<u8>,
        mut stderr: Vec<u8>,
        lost: Option<String>,
    ) -> Result<Output, SshError> {
        match (status, signal) {
            (Some(s), _) => Ok(Output {
                status: s,
                stdout,
                stderr,
            }),
            (None, Some(sig)) => {
                stderr.extend_from_slice(format!("\n[killed by signal {sig}]\n").as_bytes());
                Ok(Output {
                    status: 255,
                    stdout,
                    stderr,
                })
            }
            (None, None) => Err(match lost {
                Some(e) => self.lost(shown, e),
                None => self.lost(shown, "the channel closed without an exit status"),
            }),
        }
    }

    /// Run a shell command (through `sudo` when the host's `become` is sudo). Non-zero exit is
    /// NOT an error here; transport failures are.
    pub async fn exec(&self, cmd: &str, stdin: Option<&[u8]>) -> Result<Output, SshError> {
        self.exec_shown(cmd, cmd, stdin).await
    }

    /// [`Session::exec`], with `shown` in the errors instead of the command.
    pub async fn exec_shown(
        &self,
        cmd: &str,
        shown: &str,
        stdin: Option<&[u8]>,
    ) -> Result<Output, SshError> {
        let optimistic = self.sudo_unknown();
        let (wrapped, prefix) = self.wrap(cmd);
        let out = self
            .exec_raw(&wrapped, shown, prefix.as_deref(), stdin)
            .await?;
        if !optimistic {
            return Ok(out);
        }
        if out.ok() || !out.stderr_str().contains("sudo:") {
            // sudo -n ran the command (whatever the command itself answered).
            let _ = self.inner.sudo.set(SudoMode::NoPassword);
            return Ok(out);
        }
        self.resolve_sudo().await?;
        match self.inner.sudo.get() {
            // sudo -n works after all: that failure was the command's own.
            Some(SudoMode::NoPassword) | None => Ok(out),
            // sudo -n refused, so the command did not run: run it with the password.
            Some(_) => {
                let (wrapped, prefix) = self.wrap(cmd);
                self.exec_raw(&wrapped, shown, prefix.as_deref(), stdin)
                    .await
            }
        }
    }

    fn failed(&self, cmd: &str, out: &Output) -> SshError {
        let err = tail(&out.stderr);
        let err = if err.is_empty() {
            tail(&out.stdout)
        } else {
            err
        };
        SshError::new(
            &self.host,
            format!(
                "`{}` failed with exit status {}{}",
                short(cmd),
                out.status,
                if err.is_empty() {
                    String::new()
                } else {
                    format!(":\n{err}")
                }
            ),
            Some("the command failed on the host; fix the cause shown above and run again".into()),
        )
    }

    /// Like exec but a non-zero exit becomes an SshError naming the host, the command and stderr.
    pub async fn run(&self, cmd: &str) -> Result<Output, SshError> {
        let out = self.exec(cmd, None).await?;
        if out.ok() {
            Ok(out)
        } else {
            Err(self.failed(cmd, &out))
        }
    }

    /// Read a file; Ok(None) if it does not exist.
    pub async fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, SshError> {
        let q = sh_quote(path);
        let cmd = format!("if [ -e {q} ]; then exec cat -- {q}; else exit 100; fi");
        let out = self.exec(&cmd, None).await?;
        match out.status {
            0 => Ok(Some(out.stdout)),
            100 => Ok(None),
            _ => Err(self.failed(&format!("cat {path}"), &out)),
        }
    }

    /// Remote state of `path`: None if absent, else (mode "644", owner, group, uid, gid, sha256).
    async fn stat(&self, path: &str) -> Result<Option<RemoteStat>, SshError> {
        let q = sh_quote(path);
        let cmd = format!(
            "if [ -f {q} ]; then stat -L -c '%a %U %G %u %g' -- {q} && sha256sum < {q}; else echo absent; fi"
        );
        let out = self.exec(&cmd, None).await?;
        if !out.ok() {
            return Err(self.failed(&format!("stat {path}"), &out));
        }
        let text = out.stdout_str();
        let mut lines = text.lines();
        let first = lines.next().unwrap_or_default();
        if first.trim() == "absent" {
            return Ok(None);
        }
        let f: Vec<&str> = first.split_whitespace().collect();
        let hash = lines
            .next()
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_default();
        if f.len() != 5 || hash.len() != 64 {
            return Err(SshError::new(
                &self.host,
                format!("unexpected output from stat/sha256sum for {path}: {text:?}"),
                Some("the host needs GNU coreutils (stat, sha256sum)".into()),
            ));
        }
        Ok(Some(RemoteStat {
            mode: u32::from_str_radix(f[0], 8).unwrap_or(u32::MAX),
            owner: f[1].to_string(),
            group: f[2].to_string(),
            uid: f[3].to_string(),
            gid: f[4].to_string(),
            sha256: hash.to_string(),
        }))
    }

    /// Atomically write a file (temp file in the same dir + rename) with mode/owner/group.
    /// Compares SHA-256 first; returns Ok(false) if content, mode and owner were already right.
    pub async fn write_file(
        &self,
        path: &str,
        content: &[u8],
        mode: u32,
        owner: &str,
        group: &str,
    ) -> Result<bool, SshError> {
        let hash = hex::encode(Sha256::digest(content));
        let cur = self.stat(path).await?;
        if let Some(c) = &cur {
            let owner_ok =
                (c.owner == owner || c.uid == owner) && (c.group == group || c.gid == group);
            if owner_ok && c.mode == (mode & 0o7777) && c.sha256 == hash {
                return Ok(false);
            }
            if c.sha256 == hash {
                // Same content: fix ownership and mode in place.
                let q = sh_quote(path);
                let cmd = format!(
                    "chown {}:{} -- {q} && chmod {:o} -- {q}",
                    sh_quote(owner),
                    sh_quote(group),
                    mode & 0o7777
                );
                self.run(&cmd).await?;
                return Ok(true);
            }
        }
        let cmd = atomic_write_cmd(path, &hash, mode, (owner, group));
        self.resolve_sudo().await?;
        let (wrapped, prefix) = self.wrap(&cmd);
        let shown = format!("write {path} ({} bytes)", content.len());
        let out = self
            .exec_raw(&wrapped, &shown, prefix.as_deref(), Some(content))
            .await?;
        if !out.ok() {
            return Err(self.write_failed(path, &out));
        }
        Ok(true)
    }

    fn write_failed(&self, path: &str, out: &Output) -> SshError {
        SshError::new(
            &self.host,
            format!(
                "could not write {path} (exit status {}): {}",
                out.status,
                tail(&out.stderr)
            ),
            Some(format!(
                "check that the directory of {path} exists, has free space, and that the user may write there (become: sudo?); the previous file, if any, was left untouched"
            )),
        )
    }

    /// Stream `files` from `local_dir` into the existing directory `remote_dir` as one tar
    /// stream through one command, without holding them in memory: a round trip and a few
    /// processes for the lot, not two commands per file. The host unpacks them into a scratch
    /// directory beside `remote_dir`, checks every file against its SHA-256, and only then
    /// renames them into place; on any failure (a dropped connection included) nothing of
    /// this upload is moved in and the scratch directory is removed.
    pub async fn upload_all(
        &self,
        local_dir: &Path,
        files: &[UploadFile],
        remote_dir: &str,
        mode: u32,
    ) -> Result<(), SshError> {
        if let Some(bad) = files.iter().find(|f| !plain_file_name(&f.name)) {
            return Err(SshError::new(
                &self.host,
                format!("cannot upload {:?}: not a plain file name", bad.name),
                None,
            ));
        }
        if files.is_empty() {
            return Ok(());
        }
        let (reader, writer) = tokio::io::duplex(256 * 1024);
        let feeder = tokio::spawn(tar_stream(
            writer,
            local_dir.to_path_buf(),
            files.to_vec(),
            mode & 0o7777,
        ));
        let cmd = upload_all_cmd(remote_dir, files);
        let (wrapped, prefix) = match self.resolve_sudo().await {
            Ok(()) => self.wrap(&cmd),
            Err(e) => {
                feeder.abort();
                return Err(e);
            }
        };
        let shown = format!(
            "upload {} files from {} to {remote_dir}",
            files.len(),
            local_dir.display()
        );
        let out = self
            .exec_raw(&wrapped, &shown, prefix.as_deref(), Some(reader))
            .await;
        // A local file that cannot be read, or differs from what it must be, explains the
        // host's complaint (a short or corrupt stream): say that first.
        match feeder.await {
            Ok(Err(TarError::Local(msg))) => {
                return Err(SshError::new(
                    &self.host,
                    msg,
                    Some(
                        "check the bundle on the control machine (`pgdeploy bundle` builds it again); nothing was moved into place on the host"
                            .into(),
                    ),
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(self.lost(&shown, e)),
        }
        let out = out?;
        if !out.ok() {
            return Err(self.write_failed(remote_dir, &out));
        }
        Ok(())
    }

    /// Close the connection.
    pub async fn close(&self) {
        if let Some(h) = &self.inner.handle {
            let _ = h
                .disconnect(russh::Disconnect::ByApplication, "", "en")
                .await;
        }
        if let Some(j) = &self.inner.jump {
            let _ = j
                .disconnect(russh::Disconnect::ByApplication, "", "en")
                .await;
        }
    }

    /// True once the connection is gone.
    pub fn is_closed(&self) -> bool {
        if let Some(sock) = &self.inner.persisted {
            return !sock.exists();
        }
        self.inner.handle.as_ref().is_some_and(|h| h.is_closed())
    }
}

struct RemoteStat {
    mode: u32,
    owner: String,
    group: String,
    uid: String,
    gid: String,
    sha256: String,
}

/// Shell script that receives a file on stdin into a temp file next to `path`, checks its
/// SHA-256, applies owner/mode and renames it over `path`; the temp file is removed on any
/// failure (including a dropped connection: stdin ends early and the checksum differs).
fn atomic_write_cmd(path: &str, sha256: &str, mode: u32, (owner, group): (&str, &str)) -> String {
    let q = sh_quote(path);
    let chown = format!(
        "chown {}:{} -- \"$t\" || exit 1\n",
        sh_quote(owner),
        sh_quote(group)
    );
    format!(
        "f={q}\n\
         d=$(dirname -- \"$f\") && b=$(basename -- \"$f\") || exit 1\n\
         umask 077\n\
         t=$(mktemp \"$d/.$b.pgdeploy-XXXXXX\") || exit 1\n\
         trap 'rm -f -- \"$t\"' EXIT\n\
         trap 'exit 1' HUP INT TERM PIPE\n\
         cat > \"$t\" || exit 1\n\
         s=$(sha256sum < \"$t\") || exit 1\n\
         if [ \"${{s%% *}}\" != {sha256} ]; then echo \"pgdeploy: $f: received data is incomplete or corrupt (checksum mismatch); target left untouched\" >&2; exit 1; fi\n\
         {chown}chmod {mode:o} -- \"$t\" || exit 1\n\
         mv -f -- \"$t\" \"$f\" || exit 1\n\
         trap - EXIT\n",
        mode = mode & 0o7777
    )
}

/// A file for [`Session::upload_all`]: its name in the local and the remote directory, and the
/// size and SHA-256 it must have.
#[derive(Debug, Clone)]
pub struct UploadFile {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// A name that stays inside its directory and that a shell glob or option parser cannot
/// mistake: no slash, no leading dot or dash, not empty.
fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('/')
        && !name.contains('\0')
        && !name.starts_with('.')
        && !name.starts_with('-')
}

enum TarError {
    /// A local file could not be read or is not what it must be.
    Local(String),
    /// The host stopped reading (its command failed or the connection went).
    Pipe,
}

/// Write `files` as a tar stream (ustar headers from the `tar` crate, contents streamed),
/// checking each file's size and SHA-256 as it is sent.
async fn tar_stream(
    mut w: tokio::io::DuplexStream,
    dir: PathBuf,
    files: Vec<UploadFile>,
    mode: u32,
) -> Result<(), TarError> {
    use tokio::io::AsyncWriteExt;
    let pipe = |_| TarError::Pipe;
    let mut buf = vec![0u8; 256 * 1024];
    for f in &files {
        let path = dir.join(&f.name);
        let local = |e: std::io::Error| {
            TarError::Local(format!("cannot read local file {}: {e}", path.display()))
        };
        let mut file = tokio::fs::File::open(&path).await.map_err(local)?;
        let len = file.metadata().await.map_err(local)?.len();
        if len != f.size {
            return Err(TarError::Local(format!(
                "local file {} has {len} bytes; the bundle's manifest says {}",
                path.display(),
                f.size
            )));
        }
        let mut h = tar::Header::new_ustar();
        h.set_path(&f.name)
            .map_err(|e| TarError::Local(format!("{}: {e}", f.name)))?;
        h.set_size(len);
        h.set_mode(mode);
        // The host stamps each file with the time it is unpacked (`--touch`).
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        w.write_all(h.as_bytes()).await.map_err(pipe)?;
        let mut sha = Sha256::new();
        let mut left = len;
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = file.read(&mut buf[..want]).await.map_err(local)?;
            if n == 0 {
                return Err(TarError::Local(format!(
                    "local file {} shrank while it was sent",
                    path.display()
                )));
            }
            sha.update(&buf[..n]);
            w.write_all(&buf[..n]).await.map_err(pipe)?;
            left -= n as u64;
        }
        if hex::encode(sha.finalize()) != f.sha256 {
            return Err(TarError::Local(format!(
                "local file {} differs from the SHA-256 in the bundle's manifest",
                path.display()
            )));
        }
        let pad = (512 - (len % 512) as usize) % 512;
        w.write_all(&[0u8; 512][..pad]).await.map_err(pipe)?;
    }
    // The end of the archive: two zero blocks.
    w.write_all(&[0u8; 1024]).await.map_err(pipe)?;
    w.shutdown().await.map_err(pipe)
}

/// Shell script for [`Session::upload_all`]: unpack the tar stream on stdin into a scratch
/// directory inside `dir` (so that the renames stay on one file system), check every file's
/// SHA-256, then rename them all into `dir`. Scratch directories an earlier, killed upload
/// left behind are removed after an hour.
fn upload_all_cmd(dir: &str, files: &[UploadFile]) -> String {
    let q = sh_quote(dir);
    let sums: Vec<String> = files
        .iter()
        .map(|f| sh_quote(&format!("{}  {}", f.sha256, f.name)))
        .collect();
    let names: Vec<String> = files
        .iter()
        .map(|f| format!("\"$t\"/{}", sh_quote(&f.name)))
        .collect();
    format!(
        "d={q}\n\
         find \"$d\" -maxdepth 1 -name '.pgdeploy-upload-*' -mmin +60 -exec rm -rf -- {{}} + 2>/dev/null\n\
         t=$(mktemp -d \"$d/.pgdeploy-upload-XXXXXX\") || exit 1\n\
         trap 'rm -rf -- \"$t\"' EXIT\n\
         trap 'exit 1' HUP INT TERM PIPE\n\
         tar -x --no-same-owner --touch -C \"$t\" -f - || exit 1\n\
         printf '%s\\n' {sums} | (cd \"$t\" && sha256sum --quiet --strict -c -) >&2 || \
         {{ echo \"pgdeploy: the files received in $d are incomplete or corrupt (checksum mismatch); none was moved into place\" >&2; exit 1; }}\n\
         mv -f -- {names} \"$d\"/ || exit 1\n",
        sums = sums.join(" "),
        names = names.join(" ")
    )
}

pub fn default_keepalive() -> Duration {
    Duration::from_secs(15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_specs() {
        assert_eq!(
            JumpHost::parse("admin@bastion:2222"),
            Some(JumpHost {
                user: Some("admin".into()),
                host: "bastion".into(),
                port: 2222
            })
        );
        assert_eq!(JumpHost::parse("10.0.0.1").map(|j| j.port), Some(22));
        assert_eq!(
            JumpHost::parse("[fe80::1]:2200").map(|j| (j.host, j.port)),
            Some(("fe80::1".into(), 2200))
        );
        assert!(JumpHost::parse("u@").is_none());
        assert!(JumpHost::parse("h:notaport").is_none());
    }

    fn assert_send_sync<T: Send + Sync + Clone>() {}
    #[test]
    fn session_is_send_sync() {
        assert_send_sync::<Session>();
    }
}
