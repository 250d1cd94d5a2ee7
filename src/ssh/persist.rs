//! Connections that outlive one command, as OpenSSH's ControlPersist: the first command that
//! reaches a host starts a small process of pgdeploy's own (`pgdeploy ssh-persist`, hidden)
//! that makes the connection, verifies the host key and authenticates exactly as a direct
//! connection does, and then holds it for `ssh.persist` seconds after its last channel closed.
//! The commands that follow within that time open their channels through it, over a Unix
//! socket only this user can reach, instead of paying a new SSH handshake, login and PAM
//! session on every host (about 50 ms of the host's CPU each on Debian 13).
//!
//! What keys a persisted connection: every connection setting of the host (address, port,
//! user, key, jump host, ...), the known_hosts file's path and content, the key file's size
//! and time, the ssh-agent socket and the pgdeploy executable. When any of them changes, the
//! next command makes a new connection (and verifies the host key again). A persisted
//! connection that stopped answering is dropped and replaced.
//!
//! When the connection needs something only a terminal can give (a key's passphrase), no
//! connection persists: the command connects directly and asks, as before.
//!
//! Only the `pgdeploy` program itself enables this ([`enable`]); the library's other users
//! (tests) always connect directly.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::ChannelMsg;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::{ConnectOptions, Handle, Session, SshError};
use crate::inventory::{Host, Ssh};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Let [`Session::connect`] persist connections (the `pgdeploy` program calls this once).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// What the persisting process needs to connect as the command would.
#[derive(Serialize, Deserialize)]
struct Params {
    name: String,
    address: String,
    ssh: Ssh,
    accept_new_host_keys: bool,
    known_hosts: Option<PathBuf>,
    agent: Option<PathBuf>,
}

/// An [`SshError`] as it crosses the socket.
#[derive(Serialize, Deserialize)]
struct WireError {
    host: String,
    message: String,
    help: Option<String>,
}

impl From<&SshError> for WireError {
    fn from(e: &SshError) -> Self {
        WireError {
            host: e.host().to_string(),
            message: e.message().to_string(),
            help: e.help().map(str::to_string),
        }
    }
}

impl From<WireError> for SshError {
    fn from(w: WireError) -> Self {
        SshError::new(&w.host, w.message, w.help)
    }
}

/// The directory of this user's sockets: `$XDG_RUNTIME_DIR/pgdeploy`, else
/// `~/.cache/pgdeploy/ssh`, created 0700 and refused when another user owns it.
fn socket_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("pgdeploy"),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/pgdeploy/ssh"),
    };
    std::fs::create_dir_all(&dir).ok()?;
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != uid {
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).ok()?;
    }
    Some(dir)
}

fn file_identity(h: &mut Sha256, p: &Path) {
    use std::os::unix::fs::MetadataExt;
    h.update(p.as_os_str().as_encoded_bytes());
    if let Ok(m) = std::fs::metadata(p) {
        h.update(m.size().to_le_bytes());
        h.update(m.mtime().to_le_bytes());
        h.update(m.mtime_nsec().to_le_bytes());
        h.update(m.ino().to_le_bytes());
    }
    h.update([0]);
}

/// The socket of a connection with these settings (see the module's comment).
fn socket_path(dir: &Path, p: &Params, kh: &Path) -> Option<PathBuf> {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(p).ok()?);
    h.update(std::fs::read(kh).unwrap_or_default());
    file_identity(&mut h, kh);
    if let Some(k) = &p.ssh.private_key {
        file_identity(&mut h, &super::auth::resolve_path(k));
    }
    file_identity(&mut h, &std::env::current_exe().ok()?);
    let path = dir.join(format!("{}.sock", &hex::encode(h.finalize())[..20]));
    // A Unix socket's path must fit sockaddr_un.
    (path.as_os_str().len() < 100).then_some(path)
}

/// The persisted connection to `host`: Ok(None) when none can be used (persistence off, or a
/// terminal is needed), then the caller connects directly.
pub(super) async fn connect(
    host: &Host,
    opts: &ConnectOptions,
    agent: Option<&Path>,
    kh: &Path,
) -> Result<Option<PathBuf>, SshError> {
    if !ENABLED.load(Ordering::Relaxed) || host.ssh.persist == 0 {
        return Ok(None);
    }
    let Some(dir) = socket_dir() else {
        return Ok(None);
    };
    let params = Params {
        name: host.name.clone(),
        address: host.address.clone(),
        ssh: host.ssh.clone(),
        accept_new_host_keys: opts.accept_new_host_keys,
        known_hosts: opts.known_hosts.clone(),
        agent: agent.map(Path::to_path_buf),
    };
    let Some(sock) = socket_path(&dir, &params, kh) else {
        return Ok(None);
    };
    if ping(&sock, &host.ssh).await {
        return Ok(Some(sock));
    }
    let _ = std::fs::remove_file(&sock);
    start(&sock, &params).await
}

/// Whether the process behind `sock` still holds a connection that answers.
async fn ping(sock: &Path, ssh: &Ssh) -> bool {
    // Short: a false "no" costs only a new connection; a host that lost power answers never.
    let limit = Duration::from_secs(ssh.connect_timeout.clamp(1, 2));
    let work = async {
        let mut s = UnixStream::connect(sock).await.ok()?;
        write_frame(&mut s, REQUEST, br#"{"op":"ping"}"#)
            .await
            .ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).await.ok()?;
        (line.trim_end() == "ok").then_some(())
    };
    matches!(tokio::time::timeout(limit, work).await, Ok(Some(())))
}

/// Start the persisting process and wait until it is connected (or failed as a direct
/// connection would, with the same error).
async fn start(sock: &Path, params: &Params) -> Result<Option<PathBuf>, SshError> {
    let Ok(exe) = std::env::current_exe() else {
        return Ok(None);
    };
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("ssh-persist")
        .arg(sock)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        // Its own process group: a Ctrl-C of this command does not end it.
        .process_group(0)
        .kill_on_drop(false);
    let Ok(mut child) = cmd.spawn() else {
        return Ok(None);
    };
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Ok(None);
    };
    let Ok(body) = serde_json::to_vec(params) else {
        return Ok(None);
    };
    let limit = Duration::from_secs(params.ssh.connect_timeout.max(1) + 60);
    let work = async {
        stdin.write_all(&body).await.ok()?;
        drop(stdin);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).await.ok()?;
        Some(line)
    };
    let line = match tokio::time::timeout(limit, work).await {
        Ok(Some(l)) => l,
        _ => {
            let _ = child.start_kill();
            return Ok(None);
        }
    };
    // The process lives on by itself; reap it if it ends while this command runs.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    if line.trim_end() == "ok" {
        return Ok(Some(sock.to_path_buf()));
    }
    match line
        .strip_prefix("err ")
        .and_then(|j| serde_json::from_str::<WireError>(j).ok())
    {
        // A passphrase to type: only a direct connection can ask for it.
        Some(w) if w.message.contains(super::auth::NO_TERMINAL) => Ok(None),
        Some(w) => Err(w.into()),
        None => Ok(None),
    }
}

/// What one channel through the persisting process ended with.
pub(super) struct Ended {
    pub status: Option<u32>,
    pub signal: Option<String>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Why the channel broke, when it did (the connection was lost).
    pub lost: Option<String>,
}

const REQUEST: u8 = b'q';
const STDIN: u8 = b'i';
const EOF: u8 = b'e';
const STDOUT: u8 = b'o';
const STDERR: u8 = b'r';
const STATUS: u8 = b'x';
const SIGNAL: u8 = b's';
const LOST: u8 = b'l';

async fn write_frame<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    kind: u8,
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&(body.len() as u32).to_be_bytes());
    w.write_all(&head).await?;
    w.write_all(body).await
}

/// One frame, or None at the end of the stream.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some((head[0], body)))
}

/// Run `cmd` through the persisting process behind `sock`, feeding `prefix` then `stdin`.
pub(super) async fn exec<R: AsyncRead + Unpin + Send>(
    sock: &Path,
    cmd: &str,
    prefix: Option<&[u8]>,
    stdin: Option<R>,
) -> Result<Ended, String> {
    let s = UnixStream::connect(sock)
        .await
        .map_err(|e| format!("the persisted connection is gone: {e}"))?;
    let (mut rd, mut wr) = s.into_split();
    let head = serde_json::json!({"op": "exec", "cmd": cmd}).to_string();
    write_frame(&mut wr, REQUEST, head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let writer = async move {
        if let Some(p) = prefix {
            write_frame(&mut wr, STDIN, p).await?;
        }
        if let Some(mut r) = stdin {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                let n = r.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                write_frame(&mut wr, STDIN, &buf[..n]).await?;
            }
        }
        write_frame(&mut wr, EOF, &[]).await?;
        // Keep the write half open: closing it would read as this command going away.
        Ok::<_, std::io::Error>(wr)
    };
    // Input and output run side by side, each a future of its own to the end: a frame is
    // never read halfway by a future that is then dropped (read_frame is not cancel-safe).
    let reader = async {
        let mut end = Ended {
            status: None,
            signal: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
            lost: None,
        };
        loop {
            match read_frame(&mut rd).await {
                Ok(Some((STDOUT, b))) => end.stdout.extend_from_slice(&b),
                Ok(Some((STDERR, b))) => end.stderr.extend_from_slice(&b),
                Ok(Some((STATUS, b))) if b.len() == 4 => {
                    end.status = Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                }
                Ok(Some((SIGNAL, b))) => {
                    end.signal = Some(String::from_utf8_lossy(&b).into_owned())
                }
                Ok(Some((LOST, b))) => end.lost = Some(String::from_utf8_lossy(&b).into_owned()),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    end.lost = Some(e.to_string());
                    break;
                }
            }
        }
        end
    };
    let (written, mut end) = tokio::join!(writer, reader);
    if let Err(e) = written {
        end.lost.get_or_insert(format!("while sending input: {e}"));
    }
    Ok(end)
}

/// A TCP connection to `address:port` as the host reaches it, through the persisting process.
pub(super) async fn direct_tcpip(
    sock: &Path,
    address: &str,
    port: u16,
) -> Result<UnixStream, String> {
    let mut s = UnixStream::connect(sock)
        .await
        .map_err(|e| format!("the persisted connection is gone: {e}"))?;
    let head = serde_json::json!({"op": "tcpip", "address": address, "port": port}).to_string();
    write_frame(&mut s, REQUEST, head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    // One status line, then the raw stream.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let n = s.read(&mut b).await.map_err(|e| e.to_string())?;
        if n == 0 || b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
    }
    let line = String::from_utf8_lossy(&line);
    match line.strip_prefix("err ") {
        Some(why) => Err(why.to_string()),
        None if line == "ok" => Ok(s),
        None => Err("the persisted connection did not answer".into()),
    }
}

#[derive(Deserialize)]
struct Request {
    op: String,
    #[serde(default)]
    cmd: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
}

/// The persisting process (`pgdeploy ssh-persist SOCKET`): read the settings on stdin,
/// connect, answer `ok` or `err {json}` on stdout, then serve channels on `sock` until the
/// connection is idle for `ssh.persist` seconds or lost. Returns the exit code.
pub fn serve(sock: &Path) -> u8 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return 1,
    };
    rt.block_on(serve_async(sock))
}

fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = out.write_all(line.as_bytes());
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// Point stdin and stdout at /dev/null, so that nothing waits on the pipes of the command that
/// started this process.
fn detach() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto the standard descriptors, with a descriptor that stays open for
        // the call.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
        }
    }
}

async fn serve_async(sock: &Path) -> u8 {
    let mut body = Vec::new();
    if tokio::io::stdin().read_to_end(&mut body).await.is_err() {
        return 1;
    }
    let Ok(p) = serde_json::from_slice::<Params>(&body) else {
        say("err {\"host\":\"?\",\"message\":\"bad settings\",\"help\":null}");
        return 1;
    };
    let host = Host {
        name: p.name.clone(),
        address: p.address.clone(),
        address6: None,
        groups: Vec::new(),
        ssh: p.ssh.clone(),
        postgres_parameters: Default::default(),
        vars: Default::default(),
    };
    let opts = ConnectOptions {
        accept_new_host_keys: p.accept_new_host_keys,
        known_hosts: p.known_hosts.clone(),
    };
    let session = match Session::connect_direct(&host, &opts, p.agent.as_deref()).await {
        Ok(s) => s,
        Err(e) => {
            let w = serde_json::to_string(&WireError::from(&e)).unwrap_or_default();
            say(&format!("err {w}"));
            return 1;
        }
    };
    if session.inner.handle.is_none() {
        return 1;
    }
    let tmp = sock.with_extension(format!("{}.new", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let Ok(listener) = UnixListener::bind(&tmp) else {
        say("err {\"host\":\"?\",\"message\":\"cannot listen\",\"help\":null}");
        return 1;
    };
    let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600));
    if std::fs::rename(&tmp, sock).is_err() {
        let _ = std::fs::remove_file(&tmp);
        return 1;
    }
    let ours = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(sock).map(|m| m.ino()).ok()
    };
    say("ok");
    detach();
    let _ = std::env::set_current_dir("/");

    let state = Arc::new(State {
        session: session.clone(),
        active: AtomicUsize::new(0),
        last: Mutex::new(Instant::now()),
    });
    let idle = Duration::from_secs(p.ssh.persist);
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            a = listener.accept() => {
                let Ok((s, _)) = a else { continue };
                // Only this user may use the connection (the directory is 0700 too).
                if s.peer_cred().map(|c| c.uid()).ok() != Some(uid) {
                    continue;
                }
                let st = state.clone();
                st.active.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    // Counted down however the channel ends.
                    let _active = Active(&st);
                    serve_one(&st, s).await;
                });
            }
            _ = tick.tick() => {
                let idle_for = state.last.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
                let quiet = state.active.load(Ordering::SeqCst) == 0 && idle_for >= idle;
                if quiet || state.session.is_closed() {
                    break;
                }
            }
        }
    }
    // Remove the socket only while it is still this process's (another may have replaced it).
    {
        use std::os::unix::fs::MetadataExt;
        if ours.is_some() && std::fs::metadata(sock).map(|m| m.ino()).ok() == ours {
            let _ = std::fs::remove_file(sock);
        }
    }
    session.close().await;
    0
}

struct State {
    /// The connection; its channel cap (sshd's MaxSessions) holds over all the commands that
    /// use it: a second command waits for a free channel.
    session: Session,
    active: AtomicUsize,
    last: Mutex<Instant>,
}

/// One channel in use; its end (even by a panic) counts as the connection's last use.
struct Active<'a>(&'a State);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl State {
    fn handle(&self) -> Option<&Handle> {
        self.session.inner.handle.as_ref()
    }
}

async fn serve_one(st: &State, mut s: UnixStream) {
    let Some(h) = st.handle() else {
        return;
    };
    // The request is a frame of its own: what follows it (input) stays unread in the socket.
    let Ok(Some((REQUEST, head))) = read_frame(&mut s).await else {
        return;
    };
    let Ok(req) = serde_json::from_slice::<Request>(&head) else {
        return;
    };
    match req.op.as_str() {
        "ping" => {
            let ok = tokio::time::timeout(Duration::from_secs(5), h.send_ping())
                .await
                .is_ok_and(|r| r.is_ok())
                && !h.is_closed();
            let mut s = s;
            let _ = s.write_all(if ok { b"ok\n" } else { b"no\n" }).await;
        }
        "exec" => {
            let Ok(_permit) = st.session.inner.channels.acquire().await else {
                return;
            };
            relay_exec(&st.session, &req.cmd, s).await
        }
        "tcpip" => relay_tcpip(h, &req.address, req.port, s).await,
        _ => {}
    }
}

async fn relay_exec(session: &Session, cmd: &str, s: UnixStream) {
    let (mut crd, mut cwr) = s.into_split();
    let ch = match session.open_channel(cmd).await {
        Ok(ch) => ch,
        Err(e) => {
            let _ = write_frame(&mut cwr, LOST, e.message().as_bytes()).await;
            return;
        }
    };
    if let Err(e) = ch.exec(true, cmd).await {
        let _ = write_frame(&mut cwr, LOST, e.to_string().as_bytes()).await;
        return;
    }
    let (mut rd, wr) = ch.split();
    // The command's input, until its EOF frame; the client going away ends the channel.
    let input = async {
        loop {
            match read_frame(&mut crd).await {
                Ok(Some((STDIN, b))) => {
                    if wr.data_bytes(b).await.is_err() {
                        return false;
                    }
                }
                Ok(Some((EOF, _))) => {
                    let _ = wr.eof().await;
                    break;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return false,
            }
        }
        // Input done: wait for the client to go away (or never, while output flows).
        let mut b = [0u8; 1];
        let _ = crd.read(&mut b).await;
        false
    };
    tokio::pin!(input);
    let mut client_here = true;
    loop {
        tokio::select! {
            here = &mut input, if client_here => {
                client_here = here;
                if !client_here {
                    // The command that asked went away (killed): close the channel as its
                    // own connection's end would.
                    let _ = wr.close().await;
                    return;
                }
            }
            msg = rd.wait() => {
                let sent = match msg {
                    Some(ChannelMsg::Data { data }) => write_frame(&mut cwr, STDOUT, &data).await,
                    Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                        write_frame(&mut cwr, STDERR, &data).await
                    }
                    Some(ChannelMsg::ExitStatus { exit_status }) => {
                        write_frame(&mut cwr, STATUS, &exit_status.to_be_bytes()).await
                    }
                    Some(ChannelMsg::ExitSignal { signal_name, error_message, .. }) => {
                        let s = format!("{signal_name:?} {error_message}");
                        write_frame(&mut cwr, SIGNAL, s.trim().as_bytes()).await
                    }
                    Some(_) => Ok(()),
                    None => break,
                };
                if sent.is_err() {
                    let _ = wr.close().await;
                    return;
                }
            }
        }
    }
    let _ = cwr.shutdown().await;
}

async fn relay_tcpip(h: &Handle, address: &str, port: u16, mut s: UnixStream) {
    let ch = match h
        .channel_open_direct_tcpip(address, u32::from(port), "127.0.0.1", 0)
        .await
    {
        Ok(ch) => ch,
        Err(e) => {
            let _ = s
                .write_all(format!("err the host could not connect: {e}\n").as_bytes())
                .await;
            return;
        }
    };
    if s.write_all(b"ok\n").await.is_err() {
        return;
    }
    let mut stream = ch.into_stream();
    let _ = tokio::io::copy_bidirectional(&mut s, &mut stream).await;
}
