//! Small system helpers: running commands, process identity, mounts.

use super::error::{io, LabError, Result};
use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Render a command line for error messages.
fn show(prog: &str, args: &[&OsStr]) -> String {
    let mut s = prog.to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run a command to completion; stdout on success, an error with stderr otherwise.
pub(crate) fn run<S: AsRef<OsStr>>(prog: &str, args: &[S]) -> Result<String> {
    let args: Vec<&OsStr> = args.iter().map(|a| a.as_ref()).collect();
    let out = Command::new(prog)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LabError::Command {
            cmd: show(prog, &args),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: show(prog, &args),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Async variant for long-running commands (debootstrap, ssh).
pub(crate) async fn run_async<S: AsRef<OsStr>>(prog: &str, args: &[S]) -> Result<String> {
    let args: Vec<&OsStr> = args.iter().map(|a| a.as_ref()).collect();
    let out = tokio::process::Command::new(prog)
        .args(&args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| LabError::Command {
            cmd: show(prog, &args),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: show(prog, &args),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Is `tool` in PATH?
pub(crate) fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    // root's usual sbin directories, in case PATH lacks them
    for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        dirs.push(PathBuf::from(d));
    }
    dirs.into_iter().map(|d| d.join(tool)).find(|p| p.is_file())
}

/// A process we started, identified by PID and start time (so a reused PID is never mistaken
/// for ours).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: i32,
    pub starttime: u64,
}

/// (state, starttime) of a process from /proc/PID/stat.
fn stat(pid: i32) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Reap `pid` if it is our exited child (harmless otherwise).
fn reap(pid: i32) {
    // SAFETY: waitpid with WNOHANG on a specific pid only reaps that child, if it is ours.
    unsafe {
        libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG);
    }
}

impl ProcId {
    pub fn of(pid: i32) -> Option<ProcId> {
        stat(pid).map(|(_, starttime)| ProcId { pid, starttime })
    }

    /// Still running (not exited, not a zombie, same process as recorded)?
    pub fn alive(&self) -> bool {
        reap(self.pid);
        match stat(self.pid) {
            Some((st, start)) => start == self.starttime && st != 'Z' && st != 'X',
            None => false,
        }
    }

    /// Send a signal if the process is still the one recorded.
    pub fn signal(&self, sig: i32) {
        if self.alive() {
            // SAFETY: plain kill(2) on a pid whose identity we just checked.
            unsafe {
                libc::kill(self.pid, sig);
            }
        }
    }

    /// SIGKILL and wait until it is gone.
    pub fn kill_wait(&self, timeout: Duration) -> bool {
        self.signal(libc::SIGKILL);
        wait_until(timeout, || !self.alive())
    }
}

/// Poll `cond` every 50 ms until it holds or `timeout` passes.
pub(crate) fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Start a detached child in its own session (survives the CLI's exit and Ctrl-C),
/// with stdout and stderr appended to `log`.
pub(crate) fn spawn_detached(prog: &str, args: &[String], log: &Path) -> Result<ProcId> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io(format!("cannot open log {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(io(format!("cannot open log {}", log.display())))?;
    let mut cmd = Command::new(prog);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| LabError::Command {
        cmd: format!("{prog} {}", args.join(" ")),
        detail: e.to_string(),
    })?;
    let pid = child.id() as i32;
    // The Child handle is dropped on purpose: the process lives on; ProcId::alive reaps it.
    drop(child);
    ProcId::of(pid).ok_or_else(|| LabError::Command {
        cmd: format!("{prog} {}", args.join(" ")),
        detail: "exited immediately".into(),
    })
}

/// Processes whose command line contains `needle` as one of its arguments' prefix.
pub(crate) fn procs_with_arg_prefix(needle: &str) -> Vec<ProcId> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if cmdline
            .split(|b| *b == 0)
            .any(|a| a.starts_with(needle.as_bytes()))
        {
            if let Some(p) = ProcId::of(pid) {
                out.push(p);
            }
        }
    }
    out
}

/// Mount points at or under `dir` (deepest first), from /proc/self/mountinfo.
pub(crate) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

fn unescape_mount(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmount everything at or under `dir`; lazily as a last resort.
pub(crate) fn unmount_all_under(dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for m in mounts_under(dir) {
        let ok = wait_until(Duration::from_secs(10), || {
            run("umount", &[&m]).is_ok() || !mounts_under(dir).contains(&m)
        });
        if !ok {
            if let Err(e) = run("umount", &[OsStr::new("-l"), m.as_os_str()]) {
                problems.push(format!("cannot unmount {}: {e}", m.display()));
            }
        }
    }
    problems
}

/// Atomically write a file with the given mode.
pub(crate) fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(format!("cannot write {}", tmp.display())))?;
    f.write_all(content)
        .map_err(io(format!("cannot write {}", tmp.display())))?;
    f.sync_all().ok();
    drop(f);
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("cannot chmod {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("cannot write {}", path.display())))
}

/// Last `n` lines of a text file (for error messages).
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Name of the lab's own cgroup subtree (one child per host).
pub(crate) const CGROUP_DIR: &str = "pgdeploy-lab";

/// The cgroup hierarchies a container's systemd uses: the cgroup2 mount(s) and the v1
/// `name=systemd` hierarchy (on a hybrid layout).
pub(crate) fn cgroup_roots() -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for l in info.lines() {
        let Some((left, right)) = l.split_once(" - ") else {
            continue;
        };
        let mnt = left.split(' ').nth(4).map(unescape_mount);
        let mut r = right.split(' ');
        let fstype = r.next().unwrap_or("");
        let superopts = r.nth(1).unwrap_or("");
        let wanted = fstype == "cgroup2"
            || (fstype == "cgroup" && superopts.split(',').any(|o| o == "name=systemd"));
        if let (true, Some(m)) = (wanted, mnt) {
            out.push(PathBuf::from(m));
        }
    }
    out
}

/// The per-host cgroup directories (one per hierarchy).
pub(crate) fn host_cgroups(host: &str) -> Vec<PathBuf> {
    cgroup_roots()
        .into_iter()
        .map(|r| r.join(CGROUP_DIR).join(host))
        .collect()
}

/// Every PID in a cgroup tree.
pub(crate) fn cgroup_pids(dir: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(t) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(t.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(cgroup_pids(&e.path()));
            }
        }
    }
    out
}

/// Remove a cgroup tree bottom-up (only empty cgroups can go; errors are ignored).
pub(crate) fn remove_cgroup_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
