//! Writing the journal: a [`Run`] appends its start, change and end lines while it runs and
//! holds the run's lock; a [`Recorder`] records the changes an engine run reports.

use super::{path, ChangeLine, ChangeResult, EndLine, Line, Outcome, StartLine, LOCK_DIR};
use crate::engine::change::redact;
use crate::engine::record::Done;
use crate::engine::Observer;
use miette::{miette, Result};
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Longest error message kept for one change (its first line is what listings show).
const MAX_ERROR: usize = 4000;

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// A run being recorded. Dropping it without [`Run::finish`] leaves a start line without an
/// end line: the run shows as interrupted.
pub struct Run {
    id: String,
    path: PathBuf,
    file: File,
    lock_path: PathBuf,
    _lock: File,
    started: Instant,
    changes: AtomicUsize,
    secrets: RwLock<Vec<String>>,
    write_error: Mutex<Option<String>>,
    ended: AtomicBool,
}

impl Run {
    /// Start recording a run: create the state directory (0700) and the journal (0600), take
    /// the run's lock and write the start line. Any failure is an error, before hosts are
    /// contacted: a run is never made without its record.
    pub fn start(state_dir: &Path, command: &str, inventory: &Path, args: Value) -> Result<Run> {
        let path = path(state_dir);
        let fail = |what: &str, p: &Path, e: std::io::Error| {
            miette!(
                help = "pgdeploy records every run there before it changes anything; fix the directory's permissions or free some space, then run again",
                "cannot {what} {}: {e}",
                p.display()
            )
        };
        let lock_dir = state_dir.join(LOCK_DIR);
        create_private_dir(&lock_dir).map_err(|e| fail("create", &lock_dir, e))?;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| fail("open the run journal", &path, e))?;
        // A run killed while writing may have left its last line unfinished: start on a new
        // line so that this run's start line stays readable.
        let newline_first = ends_unfinished(&file).map_err(|e| fail("read", &path, e))?;
        let id = new_id();
        let lock_path = lock_dir.join(format!("{id}.lock"));
        let lock = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| fail("create the run's lock", &lock_path, e))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            let _ = std::fs::remove_file(&lock_path);
            return Err(fail("lock", &lock_path, e));
        }
        let run = Run {
            id,
            path,
            file,
            lock_path,
            _lock: lock,
            started: Instant::now(),
            changes: AtomicUsize::new(0),
            secrets: RwLock::new(Vec::new()),
            write_error: Mutex::new(None),
            ended: AtomicBool::new(false),
        };
        let inventory = std::fs::canonicalize(inventory).unwrap_or_else(|_| inventory.into());
        run.write_prefixed(
            if newline_first { "\n" } else { "" },
            &Line::Start(StartLine {
                run: run.id.clone(),
                time: crate::clock::utc_now(),
                command: command.to_string(),
                inventory: inventory.display().to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                user: user(),
                pid: std::process::id(),
                args: without_nulls(args),
            }),
        )
        .map_err(|e| fail("write to the run journal", &run.path, e))?;
        Ok(run)
    }

    /// The run's id (8 hex digits).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Values to redact from everything recorded from now on.
    pub fn add_secrets(&self, values: &[String]) {
        if let Ok(mut s) = self.secrets.write() {
            s.extend(values.iter().cloned());
        }
    }

    fn redact(&self, text: &str) -> String {
        let secrets = self.secrets.read().map(|s| s.clone()).unwrap_or_default();
        strip_ansi(&redact(text, &secrets))
    }

    /// Record one change.
    pub fn change(&self, d: &Done) {
        self.changes.fetch_add(1, Ordering::SeqCst);
        let line = Line::Change(ChangeLine {
            run: self.id.clone(),
            time: crate::clock::utc_now(),
            phase: d.phase.to_string(),
            host: d.host.to_string(),
            change: self.redact(d.change),
            result: if d.error.is_some() {
                ChangeResult::Error
            } else {
                ChangeResult::Ok
            },
            error: d.error.map(|e| truncate(&self.redact(e), MAX_ERROR)),
            seconds: round_ms(d.elapsed),
        });
        self.write_or_remember(&line);
    }

    /// Write the end line (once) and release the run's lock file. `error`: the error that
    /// ended the run; its first line is kept.
    pub fn finish(&self, result: Outcome, error: Option<&str>) {
        if self.ended.swap(true, Ordering::SeqCst) {
            return;
        }
        let line = Line::End(EndLine {
            run: self.id.clone(),
            time: crate::clock::utc_now(),
            result,
            error: error.map(|e| first_line(&self.redact(e))),
            seconds: round_ms(self.started.elapsed()),
            changes: self.changes.load(Ordering::SeqCst),
        });
        self.write_or_remember(&line);
        // The end line is written before the lock goes: a reader that finds the lock free
        // and then reads the journal sees the end line.
        let _ = std::fs::remove_file(&self.lock_path);
    }

    /// The first failure to write a line after the start line, if any.
    pub fn write_error(&self) -> Option<String> {
        self.write_error.lock().ok().and_then(|e| e.clone())
    }

    fn write_or_remember(&self, line: &Line) {
        if let Err(e) = self.write(line) {
            if let Ok(mut w) = self.write_error.lock() {
                w.get_or_insert_with(|| format!("{}: {e}", self.path.display()));
            }
        }
    }

    fn write(&self, line: &Line) -> std::io::Result<()> {
        self.write_prefixed("", line)
    }

    /// One line, one `write` call (O_APPEND: lines of concurrent runs never mix).
    fn write_prefixed(&self, prefix: &str, line: &Line) -> std::io::Result<()> {
        let mut buf = prefix.as_bytes().to_vec();
        serde_json::to_writer(&mut buf, line).map_err(std::io::Error::other)?;
        buf.push(b'\n');
        let n = (&self.file).write(&buf)?;
        if n != buf.len() {
            return Err(std::io::Error::other(format!(
                "short write ({n} of {} bytes)",
                buf.len()
            )));
        }
        Ok(())
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // Unlocked anyway when the file closes; removing it keeps the directory clean.
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// An observer that records changes in a run's journal and passes everything on to `inner`.
pub struct Recorder {
    inner: Arc<dyn Observer>,
    run: Arc<Run>,
}

impl Recorder {
    pub fn new(inner: Arc<dyn Observer>, run: Arc<Run>) -> Self {
        Recorder { inner, run }
    }
}

impl Observer for Recorder {
    fn phase_started(&self, phase: &str, hosts: usize) {
        self.inner.phase_started(phase, hosts)
    }
    fn host_status(&self, host: &str, status: &str) {
        self.inner.host_status(host, status)
    }
    fn phase_finished(&self, phase: &str, changes: usize, elapsed: Duration) {
        self.inner.phase_finished(phase, changes, elapsed)
    }
    fn message(&self, text: &str) {
        self.inner.message(text)
    }
    fn change_done(&self, done: &Done) {
        self.run.change(done);
        self.inner.change_done(done)
    }
}

/// Whether the file is not empty and its last byte is not a newline.
fn ends_unfinished(f: &File) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    let mut last = [0u8];
    f.read_exact_at(&mut last, len - 1)?;
    Ok(last[0] != b'\n')
}

fn new_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// The name of the user running pgdeploy (from the password database, else $USER).
fn user() -> String {
    // SAFETY: getuid cannot fail; getpwuid_r writes only into `pw` and `buf`, which we own,
    // and the name it points to lives in `buf`.
    unsafe {
        let uid = libc::getuid();
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 4096];
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        if libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) == 0
            && !out.is_null()
            && !pw.pw_name.is_null()
        {
            let name = std::ffi::CStr::from_ptr(pw.pw_name).to_string_lossy();
            if !name.is_empty() {
                return name.into_owned();
            }
        }
        for v in ["USER", "LOGNAME"] {
            if let Ok(u) = std::env::var(v) {
                if !u.is_empty() {
                    return u;
                }
            }
        }
        format!("uid {uid}")
    }
}

fn without_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null() && v != &Value::Array(vec![]))
                .collect(),
        ),
        other => other,
    }
}

fn round_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The first non-empty line of an error message, without terminal colours, and without the
/// marker (`x`, `×`) that a rendered inner error starts with ("phase etcd:   x h1: ...").
pub fn first_line(text: &str) -> String {
    let plain = strip_ansi(text);
    let line = plain
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    for marker in [":   x ", ":   × ", ":  x ", ":  × "] {
        if let Some((head, tail)) = line.split_once(marker) {
            return format!("{head}: {tail}");
        }
    }
    line.to_string()
}

/// Remove terminal escape sequences (colours, hyperlinks) from a rendered error.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.next() {
            // CSI: parameters up to a final byte in @..~
            Some('[') => {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            // OSC: up to BEL or ESC \
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\u{7}' {
                        break;
                    }
                    if c == '\u{1b}' {
                        chars.next();
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::tests::start;
    use crate::journal::{history, is_running, read, summarize, FILE};

    #[test]
    fn a_run_is_recorded_with_secrets_redacted_and_its_lock_released() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join(".pgdeploy/c1");
        let inv = dir.path().join("inventory.yaml");
        let run = Run::start(
            &state,
            "apply",
            &inv,
            serde_json::json!({"only": ["common"], "roles_dir": null}),
        )
        .unwrap();
        let id = run.id().to_string();
        assert!(is_running(&state, &id));
        let (_, runs) = history(&state).unwrap();
        assert_eq!(runs[0].result, Outcome::Running);
        run.add_secrets(&["hunter2-secret".into()]);
        run.change(&Done {
            phase: "common",
            host: "h0",
            change: "! run `psql -c \"ALTER ROLE x PASSWORD 'hunter2-secret'\"` (why)",
            error: Some("\u{1b}[31mfailed\u{1b}[0m: hunter2-secret rejected"),
            elapsed: Duration::from_millis(1500),
        });
        run.finish(Outcome::Failed, Some("phase common: boom\n  detail"));
        run.finish(Outcome::Ok, None); // only the first end counts
        drop(run);
        let text = std::fs::read_to_string(state.join(FILE)).unwrap();
        assert!(!text.contains("hunter2-secret"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        assert_eq!(text.lines().count(), 3, "{text}");
        let (_, runs) = history(&state).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].result, Outcome::Failed);
        assert_eq!(runs[0].error.as_deref(), Some("phase common: boom"));
        assert_eq!(runs[0].changes, 1);
        assert_eq!(runs[0].args, serde_json::json!({"only": ["common"]}));
        assert!(!is_running(&state, &id));
        assert!(!state.join(LOCK_DIR).join(format!("{id}.lock")).exists());

        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join(FILE)), 0o600);
    }

    #[test]
    fn a_run_after_a_truncated_line_starts_on_a_new_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE),
            start("aaaa1111") + "\n{\"type\":\"chan",
        )
        .unwrap();
        let run = Run::start(dir.path(), "apply", Path::new("i.yaml"), Value::Null).unwrap();
        run.finish(Outcome::Ok, None);
        let j = read(dir.path()).unwrap();
        assert_eq!(j.unreadable, 1);
        let runs = summarize(&j, &|_| false);
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[1].id, run.id());
        assert_eq!(runs[1].result, Outcome::Ok);
    }

    #[test]
    fn a_journal_that_cannot_be_written_is_an_error_at_the_start() {
        let dir = tempfile::tempdir().unwrap();
        // The state directory's place is taken by a file.
        let state = dir.path().join("state");
        std::fs::write(&state, "").unwrap();
        let e = Run::start(&state, "apply", Path::new("inventory.yaml"), Value::Null)
            .err()
            .expect("an error");
        let msg = format!("{e:?}");
        assert!(msg.contains("cannot create"), "{msg}");
        assert!(msg.contains("before it changes anything"), "{msg}");
    }

    #[test]
    fn escapes() {
        assert_eq!(
            strip_ansi("\u{1b}[1;31merror\u{1b}[0m \u{1b}]8;;http://x\u{1b}\\link\u{1b}]8;;\u{7}"),
            "error link"
        );
        assert_eq!(first_line("\n  first\nsecond"), "first");
        assert_eq!(
            first_line("phase common:   x h0: the new /x failed validation\n  help: fix it"),
            "phase common: h0: the new /x failed validation"
        );
        assert_eq!(
            first_line("phase etcd:   \u{d7} h1: down"),
            "phase etcd: h1: down"
        );
    }
}
