//! Reading the journal (`pgdeploy history`): parse it, summarize its runs (ok, failed,
//! interrupted or running, as their locks say), select one and group its changes.

use super::{path, ChangeResult, Line, Outcome, LOCK_DIR};
use miette::{miette, Result};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

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
#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::tests::journal;
    use crate::journal::{detail_json, detail_text, list_text};

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
}
