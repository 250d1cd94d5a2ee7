//! The run journal: a record of every `apply`, `upgrade` and `dns sync`.
//!
//! `<state dir>/journal.jsonl` holds one JSON object per line: a `start` line when a run begins
//! (before any host is contacted), a `change` line for every change made on a host (with its
//! result and duration), and an `end` line when the run ends (ok, failed, interrupted). Lines of
//! concurrent runs may interleave; each names its run. The file is opened with `O_APPEND` and
//! every line is written with one `write` call, so lines never mix. Everything recorded is
//! redacted with the run's secret values first.
//!
//! A run holds an exclusive `flock` on `<state dir>/runs/<id>.lock` while it runs: a start line
//! without an end line is "running" while that lock is held and "interrupted" otherwise (killed,
//! crashed, host lost power).

use crate::engine::change::redact;
use crate::engine::record::Done;
use crate::engine::Observer;
use miette::{miette, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The journal's file name in the state directory.
pub const FILE: &str = "journal.jsonl";
/// Directory (in the state directory) of the lock files of runs in progress.
const LOCK_DIR: &str = "runs";
/// Longest error message kept for one change (its first line is what listings show).
const MAX_ERROR: usize = 4000;

/// How a run ended (or that it has not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Failed,
    Interrupted,
    /// Only in summaries: no end line yet and the run's lock is held.
    Running,
}

impl Outcome {
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Interrupted => "interrupted",
            Outcome::Running => "running",
        }
    }
}

/// The result of one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeResult {
    Ok,
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartLine {
    pub run: String,
    pub time: String,
    pub command: String,
    pub inventory: String,
    pub version: String,
    pub user: String,
    pub pid: u32,
    /// The arguments that change what the run does (`--only`, `--forks`, versions...).
    #[serde(default)]
    pub args: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeLine {
    pub run: String,
    pub time: String,
    pub phase: String,
    pub host: String,
    /// The change's one-line summary, as `check` prints it.
    pub change: String,
    pub result: ChangeResult,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndLine {
    pub run: String,
    pub time: String,
    pub result: Outcome,
    /// The first line of the error that ended the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub seconds: f64,
    pub changes: usize,
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Line {
    Start(StartLine),
    Change(ChangeLine),
    End(EndLine),
}

impl Line {
    pub fn run(&self) -> &str {
        match self {
            Line::Start(l) => &l.run,
            Line::Change(l) => &l.run,
            Line::End(l) => &l.run,
        }
    }
}

/// The journal's path in a state directory.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

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

// ---------------------------------------------------------------------------------------------
// Reading: `pgdeploy history`

/// The parsed lines of a journal.
#[derive(Debug, Default)]
pub struct Journal {
    pub lines: Vec<Line>,
    /// Lines that could not be read (e.g. the last line of a run killed while writing it).
    pub unreadable: usize,
}

/// Parse journal text; unreadable lines are counted and skipped.
pub fn parse(text: &str) -> Journal {
    let mut j = Journal::default();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Line>(l) {
            Ok(line) => j.lines.push(line),
            Err(_) => j.unreadable += 1,
        }
    }
    j
}

/// Read the journal of a state directory (empty when there is none yet).
pub fn read(state_dir: &Path) -> Result<Journal> {
    let p = path(state_dir);
    match std::fs::read(&p) {
        Ok(bytes) => Ok(parse(&String::from_utf8_lossy(&bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Journal::default()),
        Err(e) => Err(miette!("cannot read the run journal {}: {e}", p.display())),
    }
}

/// Whether the run `id` is in progress: its lock file exists and is locked.
pub fn is_running(state_dir: &Path, id: &str) -> bool {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return false;
    }
    let Ok(f) = File::open(state_dir.join(LOCK_DIR).join(format!("{id}.lock"))) else {
        return false;
    };
    // SAFETY: flock on a file descriptor we own; a shared lock fails only while a run holds
    // its exclusive one. Ours is released when `f` closes.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) != 0 }
}

/// One run, as `pgdeploy history` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub id: String,
    pub started: String,
    pub command: String,
    pub user: String,
    pub version: String,
    pub inventory: String,
    pub args: Value,
    pub result: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// None while running or when the run was interrupted without an end line.
    pub seconds: Option<f64>,
    pub changes: usize,
    pub failed_changes: usize,
}

/// Summarize the runs of a journal, oldest first. A run without an end line is running when
/// `running(id)` says so, interrupted otherwise. Lines of runs without a start line are ignored.
pub fn summarize(j: &Journal, running: &dyn Fn(&str) -> bool) -> Vec<RunSummary> {
    let mut runs: Vec<RunSummary> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut ended = vec![];
    for line in &j.lines {
        match line {
            Line::Start(s) => {
                index.insert(&s.run, runs.len());
                ended.push(false);
                runs.push(RunSummary {
                    id: s.run.clone(),
                    started: s.time.clone(),
                    command: s.command.clone(),
                    user: s.user.clone(),
                    version: s.version.clone(),
                    inventory: s.inventory.clone(),
                    args: s.args.clone(),
                    result: Outcome::Interrupted,
                    error: None,
                    seconds: None,
                    changes: 0,
                    failed_changes: 0,
                });
            }
            Line::Change(c) => {
                if let Some(&i) = index.get(c.run.as_str()) {
                    runs[i].changes += 1;
                    if c.result == ChangeResult::Error {
                        runs[i].failed_changes += 1;
                    }
                }
            }
            Line::End(e) => {
                if let Some(&i) = index.get(e.run.as_str()) {
                    ended[i] = true;
                    runs[i].result = e.result;
                    runs[i].error = e.error.clone();
                    runs[i].seconds = Some(e.seconds);
                }
            }
        }
    }
    for (r, ended) in runs.iter_mut().zip(ended) {
        if !ended && running(&r.id) {
            r.result = Outcome::Running;
        }
    }
    runs
}

/// The journal of a state directory and its runs, each in progress or not as its lock says.
pub fn history(state_dir: &Path) -> Result<(Journal, Vec<RunSummary>)> {
    // Probe the locks of the open runs, then read again: a run ends by writing its end line
    // before it lets its lock go, so a run found unlocked has its end line in the second read
    // unless it really was interrupted.
    let first = read(state_dir)?;
    let probed: HashMap<String, bool> = summarize(&first, &|_| false)
        .into_iter()
        .filter(|r| r.result == Outcome::Interrupted && r.seconds.is_none())
        .map(|r| {
            let running = is_running(state_dir, &r.id);
            (r.id, running)
        })
        .collect();
    let j = read(state_dir)?;
    let runs = summarize(&j, &|id| {
        probed
            .get(id)
            .copied()
            .unwrap_or_else(|| is_running(state_dir, id))
    });
    Ok((j, runs))
}

/// Find a run by id, unique id prefix, or `last`.
pub fn select<'a>(runs: &'a [RunSummary], query: &str) -> Result<&'a RunSummary> {
    if runs.is_empty() {
        return Err(miette!("no runs are recorded yet"));
    }
    if query == "last" {
        return runs
            .last()
            .ok_or_else(|| miette!("no runs are recorded yet"));
    }
    if let Some(r) = runs.iter().find(|r| r.id == query) {
        return Ok(r);
    }
    let q = query.to_ascii_lowercase();
    let matches: Vec<&RunSummary> = runs.iter().filter(|r| r.id.starts_with(&q)).collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(miette!(
            help = "`pgdeploy history` lists the runs; give an id, a prefix of one, or `last`",
            "no run {query:?} in the journal"
        )),
        many => Err(miette!(
            help = "give more digits of the id",
            "{query:?} matches {} runs: {}",
            many.len(),
            many.iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// One change of a run, as `pgdeploy history RUN` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeEntry {
    pub time: String,
    pub change: String,
    pub result: ChangeResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostDetail {
    pub host: String,
    pub changes: Vec<ChangeEntry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseDetail {
    pub phase: String,
    pub hosts: Vec<HostDetail>,
}

/// What one run changed, per phase (in the order they ran) and host.
#[derive(Debug, Clone, Serialize)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunSummary,
    pub phases: Vec<PhaseDetail>,
}

pub fn detail(j: &Journal, run: &RunSummary) -> RunDetail {
    let mut phases: Vec<PhaseDetail> = Vec::new();
    for line in &j.lines {
        let Line::Change(c) = line else { continue };
        if c.run != run.id {
            continue;
        }
        let pi = match phases.iter().position(|p| p.phase == c.phase) {
            Some(i) => i,
            None => {
                phases.push(PhaseDetail {
                    phase: c.phase.clone(),
                    hosts: vec![],
                });
                phases.len() - 1
            }
        };
        let hosts = &mut phases[pi].hosts;
        let hi = match hosts.iter().position(|h| h.host == c.host) {
            Some(i) => i,
            None => {
                hosts.push(HostDetail {
                    host: c.host.clone(),
                    changes: vec![],
                });
                hosts.len() - 1
            }
        };
        hosts[hi].changes.push(ChangeEntry {
            time: c.time.clone(),
            change: c.change.clone(),
            result: c.result,
            error: c.error.clone(),
            seconds: c.seconds,
        });
    }
    RunDetail {
        run: run.clone(),
        phases,
    }
}

/// `2024-06-01T15:30:12.345Z` -> `2024-06-01 15:30:12`.
fn short_time(t: &str) -> String {
    t.get(..19).unwrap_or(t).replacen('T', " ", 1)
}

/// A duration for people: `0.4 s`, `12.3 s`, `4 min 05 s`, `1 h 02 min`.
pub fn duration_text(secs: f64) -> String {
    if secs < 60.0 {
        return format!("{secs:.1} s");
    }
    let s = secs.round() as u64;
    if s < 3600 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{} h {:02} min", s / 3600, s % 3600 / 60)
    }
}

fn result_text(r: &RunSummary) -> String {
    match (&r.result, &r.error) {
        (Outcome::Failed, Some(e)) => format!("failed: {e}"),
        (o, _) => o.word().to_string(),
    }
}

fn changes_text(r: &RunSummary) -> String {
    if r.failed_changes > 0 {
        format!("{} ({} failed)", r.changes, r.failed_changes)
    } else {
        r.changes.to_string()
    }
}

/// `key=value` pairs of a run's arguments.
fn args_text(args: &Value) -> String {
    let Value::Object(m) = args else {
        return String::new();
    };
    let mut parts = Vec::new();
    for (k, v) in m {
        let v = match v {
            Value::Bool(false) | Value::Null => continue,
            Value::Bool(true) => {
                parts.push(k.clone());
                continue;
            }
            Value::String(s) => s.clone(),
            Value::Array(a) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(String::from)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        };
        parts.push(format!("{k}={v}"));
    }
    parts.join(" ")
}

/// The table of runs, oldest first.
pub fn list_text(runs: &[RunSummary]) -> String {
    let header = [
        "RUN",
        "STARTED (UTC)",
        "USER",
        "COMMAND",
        "DURATION",
        "CHANGES",
        "RESULT",
    ];
    let rows: Vec<[String; 7]> = runs
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                short_time(&r.started),
                r.user.clone(),
                r.command.clone(),
                r.seconds.map(duration_text).unwrap_or_else(|| "-".into()),
                changes_text(r),
                result_text(r),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let fmt_row = |cells: Vec<&str>| {
        let mut line = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        line.trim_end().to_string() + "\n"
    };
    let mut t = fmt_row(header.to_vec());
    for row in &rows {
        t.push_str(&fmt_row(row.iter().map(String::as_str).collect()));
    }
    t
}

/// One run: its facts, then its changes per phase and host.
pub fn detail_text(d: &RunDetail) -> String {
    let r = &d.run;
    let mut t = format!("run {}: {} {}\n", r.id, r.command, result_text(r));
    t.push_str(&format!(
        "  started    {} UTC by {} (pgdeploy {})\n",
        short_time(&r.started),
        r.user,
        r.version
    ));
    t.push_str(&format!("  inventory  {}\n", r.inventory));
    let args = args_text(&r.args);
    if !args.is_empty() {
        t.push_str(&format!("  arguments  {args}\n"));
    }
    t.push_str(&format!(
        "  duration   {}\n  changes    {}\n",
        r.seconds
            .map(duration_text)
            .unwrap_or_else(|| match r.result {
                Outcome::Running => "(still running)".into(),
                _ => "unknown (no end recorded)".into(),
            }),
        changes_text(r)
    ));
    if d.phases.is_empty() {
        t.push_str("\nNo changes were made.\n");
    }
    for p in &d.phases {
        t.push_str(&format!("\nphase {}\n", p.phase));
        for h in &p.hosts {
            t.push_str(&format!("  {}\n", h.host));
            for c in &h.changes {
                let word = match c.result {
                    ChangeResult::Ok => "ok",
                    ChangeResult::Error => "ERROR",
                };
                t.push_str(&format!(
                    "    {word:<5} {:>8}  {}\n",
                    duration_text(c.seconds),
                    c.change
                ));
                if let Some(e) = &c.error {
                    for l in e.lines().filter(|l| !l.trim().is_empty()) {
                        t.push_str(&format!("                    {l}\n"));
                    }
                }
            }
        }
    }
    t
}

/// The summaries as JSON (for `--format json`).
pub fn list_json(runs: &[RunSummary]) -> String {
    serde_json::to_string_pretty(runs).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// One run as JSON.
pub fn detail_json(d: &RunDetail) -> String {
    serde_json::to_string_pretty(d).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(run: &str) -> String {
        format!(
            r#"{{"type":"start","run":"{run}","time":"2024-06-01T10:00:00.000Z","command":"apply","inventory":"/x/inventory.yaml","version":"0.1.0","user":"ann","pid":1,"args":{{"forks":10}}}}"#
        )
    }
    fn change(run: &str, phase: &str, host: &str, ok: bool) -> String {
        if ok {
            format!(
                r#"{{"type":"change","run":"{run}","time":"2024-06-01T10:00:01.000Z","phase":"{phase}","host":"{host}","change":"+ file /etc/a (root:root 0644)","result":"ok","seconds":0.25}}"#
            )
        } else {
            format!(
                r#"{{"type":"change","run":"{run}","time":"2024-06-01T10:00:01.000Z","phase":"{phase}","host":"{host}","change":"~ file /etc/b (root:root 0644)","result":"error","error":"h1: the new /etc/b failed validation\nline two","seconds":0.5}}"#
            )
        }
    }
    fn end(run: &str, result: &str, changes: usize) -> String {
        let err = if result == "failed" {
            r#","error":"phase common: h1: the new /etc/b failed validation""#
        } else {
            ""
        };
        format!(
            r#"{{"type":"end","run":"{run}","time":"2024-06-01T10:00:05.000Z","result":"{result}"{err},"seconds":5.0,"changes":{changes}}}"#
        )
    }

    fn journal() -> Journal {
        let text = [
            start("aaaa1111"),
            change("aaaa1111", "common", "h0", true),
            start("bbbb2222"), // interleaved with the first run
            change("aaaa1111", "common", "h1", true),
            end("aaaa1111", "ok", 2),
            change("bbbb2222", "common", "h1", false),
            end("bbbb2222", "failed", 1),
            start("aaab3333"),
            change("aaab3333", "etcd", "h0", true),
            start("cccc4444"),
            // the last line was cut short by a crash
            r#"{"type":"change","run":"cccc4444","time":"2024-06-01T1"#.to_string(),
        ]
        .join("\n");
        parse(&text)
    }

    #[test]
    fn summaries_of_ok_failed_interrupted_and_running_runs() {
        let j = journal();
        assert_eq!(j.unreadable, 1, "the truncated last line is skipped");
        let runs = summarize(&j, &|id| id == "cccc4444");
        let got: Vec<(&str, Outcome, usize, usize, Option<f64>)> = runs
            .iter()
            .map(|r| {
                (
                    r.id.as_str(),
                    r.result,
                    r.changes,
                    r.failed_changes,
                    r.seconds,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("aaaa1111", Outcome::Ok, 2, 0, Some(5.0)),
                ("bbbb2222", Outcome::Failed, 1, 1, Some(5.0)),
                ("aaab3333", Outcome::Interrupted, 1, 0, None),
                ("cccc4444", Outcome::Running, 0, 0, None),
            ]
        );
        assert_eq!(
            runs[1].error.as_deref(),
            Some("phase common: h1: the new /etc/b failed validation")
        );
        let t = list_text(&runs);
        assert!(t.starts_with("RUN "), "{t}");
        assert!(t.contains("aaab3333  2024-06-01 10:00:00"), "{t}");
        assert!(t.contains("1 (1 failed)"), "{t}");
        assert!(t.contains("failed: phase common"), "{t}");
        assert!(t.lines().nth(3).unwrap().ends_with("interrupted"), "{t}");
        assert!(t.lines().nth(4).unwrap().ends_with("running"), "{t}");
    }

    #[test]
    fn select_by_id_prefix_or_last() {
        let runs = summarize(&journal(), &|_| false);
        assert_eq!(select(&runs, "last").unwrap().id, "cccc4444");
        assert_eq!(select(&runs, "bbbb2222").unwrap().id, "bbbb2222");
        assert_eq!(select(&runs, "BB").unwrap().id, "bbbb2222");
        let e = format!("{:?}", select(&runs, "aaa").unwrap_err());
        assert!(e.contains("matches 2 runs: aaaa1111, aaab3333"), "{e}");
        let e = format!("{:?}", select(&runs, "dd").unwrap_err());
        assert!(e.contains("no run \"dd\""), "{e}");
        assert!(select(&[], "last").is_err());
    }

    #[test]
    fn detail_groups_changes_by_phase_and_host_of_one_run() {
        let j = journal();
        let runs = summarize(&j, &|_| false);
        let d = detail(&j, select(&runs, "aaaa").unwrap());
        assert_eq!(d.phases.len(), 1);
        let hosts: Vec<&str> = d.phases[0].hosts.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(hosts, vec!["h0", "h1"]);
        let d = detail(&j, select(&runs, "bbbb").unwrap());
        let t = detail_text(&d);
        assert!(
            t.contains("run bbbb2222: apply failed: phase common"),
            "{t}"
        );
        assert!(t.contains("arguments  forks=10"), "{t}");
        assert!(
            t.contains("ERROR    0.5 s  ~ file /etc/b (root:root 0644)"),
            "{t}"
        );
        assert!(t.contains("  line two\n"), "{t}");
        let v: Value = serde_json::from_str(&detail_json(&d)).unwrap();
        assert_eq!(v["id"], "bbbb2222");
        assert_eq!(v["result"], "failed");
        assert_eq!(v["phases"][0]["hosts"][0]["changes"][0]["result"], "error");
    }

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
    fn durations_and_escapes() {
        assert_eq!(duration_text(0.04), "0.0 s");
        assert_eq!(duration_text(12.34), "12.3 s");
        assert_eq!(duration_text(245.0), "4 min 05 s");
        assert_eq!(duration_text(3725.0), "1 h 02 min");
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
